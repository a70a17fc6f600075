"""`make package`: the stack's template and its Lambda package, under build/.

    build/template.json          Chalice's SAM template with chalicelib/deployment.py merged in
    build/notebooks-lambda.zip   the API function's code (app.py, chalicelib/, dependencies)
    build/runner-image/          the runner image's Docker context: deploy/Dockerfile, and
                                 task/, what it copies into /var/task: the same code, with
                                 the notebook libraries of requirements-runner.txt too

Needs no AWS account or credentials. The dependencies are the pinned ones that `make
test` tests: requirements.txt (and, in the image, requirements-runner.txt) under
constraints.txt, installed by pip for Lambda's python3.13 on Amazon Linux 2023 (glibc 2.34),
x86_64, whatever machine builds: a library with no such wheel fails the build, named by pip. Every module is
compiled to bytecode in the package (unchecked hashes, as the zip's timestamps are not
exact): /var/task is read-only, so Python could cache nothing itself and would compile
IPython again at every cold start and in every fresh kernel.

The installed dependencies are kept under build/cache/, keyed by the pins, so a second
build only zips and links. No Docker is needed here: `sam build` builds the image from
build/runner-image/ (the template's Metadata), and `sam deploy` pushes it.
"""

import argparse
import compileall
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from deploy.template import ARCHITECTURE, CODE_URI, IMAGE_CONTEXT, RUNTIME, TASK_ROOT, image_runner, merge_template

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
TEMPLATE_NAME = "template.json"
PACKAGE_NAME = CODE_URI.rsplit("/", 1)[-1]
CHALICE_STAGE = "dev"

# Lambda's python3.13 runs on Amazon Linux 2023: glibc 2.34. pip accepts a wheel for any
# glibc up to that (manylinux2014 is 2.17), on x86_64 only. The patch version matters to
# wheels that require one: the first, so that none needs a later patch than Lambda's (the
# simulation, tests/test_lambda_sim.py, runs 3.13.0 too).
LAMBDA_PYTHON = RUNTIME.removeprefix("python") + ".0"
LAMBDA_GLIBC_MINOR = 34
PLATFORMS = ["manylinux2014_x86_64"] + [
    f"manylinux_2_{minor}_{ARCHITECTURE}" for minor in range(17, LAMBDA_GLIBC_MINOR + 1)
]
PIP_TARGET_OPTIONS = [
    *(option for platform in PLATFORMS for option in ("--platform", platform)),
    "--only-binary=:all:",
    "--implementation",
    "cp",
    "--python-version",
    LAMBDA_PYTHON,
    "--no-compile",
]
# Lambda's limits for a .zip package: zipped when uploaded directly (the deploy commands
# upload it to S3, where this limit does not apply), and unzipped, always.
ZIPPED_LIMIT_MB, UNZIPPED_LIMIT_MB = 50, 250
IMAGE_LIMIT_GB = 10  # a Lambda container image, uncompressed, all layers
_MB = 1024 * 1024
# Entry-point scripts name the building machine's Python: of no use on Lambda.
_NOT_PACKAGED = {"bin"}
# What each package holds: the zip, the app's code and the runtime; the runner image,
# the notebook libraries too (installed apart, so that the runtime is installed once).
ZIP_REQUIREMENTS = ("requirements.txt",)
RUNNER_REQUIREMENTS = ("requirements-runner.txt",)
IMAGE_REQUIREMENTS = ZIP_REQUIREMENTS + RUNNER_REQUIREMENTS
IMAGE_TASK = "task"  # the Dockerfile copies this folder of the context into /var/task
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# This repository's packages that never ship: the local stack, the template generator and
# smoke test, the tests and the benchmarks. (Only a top-level name counts: numpy/tests/ is numpy's.)
NOT_SHIPPED = ("devstack", "deploy", "tests", "bench")


def _compile(folder: Path) -> None:
    """Bytecode beside every module, trusted without checking the source's time stamp,
    naming the source where Lambda has it (so builds in different folders are alike)."""
    if not compileall.compile_dir(
        str(folder),
        quiet=2,
        workers=0,
        ddir=TASK_ROOT,
        invalidation_mode=compileall.py_compile.PycInvalidationMode.UNCHECKED_HASH,
    ):
        raise SystemExit(f"compiling {folder} failed")


def dependencies(requirements=ZIP_REQUIREMENTS, cache: Path = BUILD / "cache") -> Path:
    """A folder with the pinned dependencies of the `requirements` files for Lambda,
    compiled; installed once per set of files, pins and options."""
    inputs = [(ROOT / name).read_bytes() for name in (*requirements, "constraints.txt")]
    options = " ".join([*PIP_TARGET_OPTIONS, TASK_ROOT])
    key = hashlib.sha256(b"\0".join(inputs + [options.encode()])).hexdigest()[:16]
    label = "site-" + "+".join(name.removesuffix(".txt") for name in requirements)
    site = cache / f"{label}-{key}"
    if (site / ".complete").exists():
        return site
    shutil.rmtree(site, ignore_errors=True)
    site.parent.mkdir(parents=True, exist_ok=True)
    files = [option for name in requirements for option in ("-r", str(ROOT / name))]
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(site),
            *PIP_TARGET_OPTIONS,
            *files,
            "-c",
            str(ROOT / "constraints.txt"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    sys.stderr.write(installed.stderr)  # pip's warnings, or why it failed
    if installed.returncode != 0:
        raise SystemExit(_not_installable(installed.stderr))
    _compile(site)
    (site / ".complete").touch()
    for stale in cache.glob(f"{label}-*"):  # installed for other pins
        if stale != site:
            shutil.rmtree(stale)
    return site


def _not_installable(pip_errors: str) -> str:
    """Why `make package` stops when pip could not install the pins, naming the libraries
    pip names. Most often a release publishes wheels for a newer glibc only."""
    names = sorted(set(re.findall(r"(?:No matching distribution found for|Cannot install) ([\w.\-]+)", pip_errors)))
    return (
        f"pip could not install {', '.join(names) or 'the pins'} as wheels for CPython {LAMBDA_PYTHON} on "
        f"glibc 2.{LAMBDA_GLIBC_MINOR} or older ({PLATFORMS[-1]} or older tags), which is what Lambda's {RUNTIME} "
        "runs (pip's own message is above). A release with wheels for a newer glibc only "
        f"(manylinux_2_{LAMBDA_GLIBC_MINOR + 1} or later), or with no wheel for this platform, cannot ship: pin "
        "one that has such a wheel, then `make constraints`."
    )


def chalice_package(out: Path) -> tuple:
    """(template, code): Chalice's SAM template for app.py with
    deploy.template.merge_template() merged in, and a folder with the code Chalice packages
    (app.py, chalicelib/ and Chalice's own runtime module), in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        project = Path(scratch) / "project"
        (project / ".chalice").mkdir(parents=True)
        shutil.copy(ROOT / "app.py", project / "app.py")
        shutil.copytree(
            ROOT / "chalicelib", project / "chalicelib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        shutil.copy(ROOT / ".chalice" / "config.json", project / ".chalice" / "config.json")
        merge = Path(scratch) / "resources.json"
        merge.write_text(json.dumps(merge_template()))
        # Chalice wants a region even to write a template; the template names none.
        env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
        subprocess.run(
            [
                str(Path(sys.executable).parent / "chalice"),
                "package",
                "--stage",
                CHALICE_STAGE,
                "--merge-template",
                str(merge),
                str(Path(scratch) / "out"),
            ],
            cwd=project,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        template = out / TEMPLATE_NAME
        chalice_template = json.loads((Path(scratch) / "out" / "sam.json").read_text())
        template.write_text(json.dumps(image_runner(chalice_template), indent=2) + "\n")
        code = out / "code"
        shutil.rmtree(code, ignore_errors=True)
        with zipfile.ZipFile(Path(scratch) / "out" / "deployment.zip") as chalice_zip:
            chalice_zip.extractall(code)
    return template, code


def _add_tree(archive: zipfile.ZipFile, folder: Path, skip=frozenset()) -> None:
    """Every file under `folder`, in a stable order, readable by Lambda's user."""
    for directory, subdirectories, files in os.walk(folder):
        top = Path(directory) == folder
        subdirectories[:] = sorted(d for d in subdirectories if not (top and d in skip))
        for name in sorted(files):
            path = Path(directory, name)
            if top and name.startswith("."):
                continue  # the cache's own marker
            entry = zipfile.ZipInfo(str(path.relative_to(folder)), date_time=(2020, 1, 1, 0, 0, 0))
            entry.external_attr = 0o100644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            with open(path, "rb") as source, archive.open(entry, "w") as target:
                shutil.copyfileobj(source, target, 1 << 20)


def write_package(out: Path, code: Path, site: Path) -> Path:
    """The .zip the API function runs: Chalice's package of the app (compiled) and the
    dependencies."""
    target = out / PACKAGE_NAME
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", compresslevel=6) as archive:
        _add_tree(archive, code)
        _add_tree(archive, site, skip=_NOT_PACKAGED)
    partial.replace(target)
    return target


def _link_or_copy(source: str, target: str) -> None:
    # The cache is read, never written, through the tree: a hard link spares copying it.
    try:
        os.link(source, target)
    except FileExistsError:
        pass  # the same file of the same pinned wheel, from another site
    except OSError:
        shutil.copy2(source, target)


def write_image_tree(out: Path, code: Path, sites: list) -> Path:
    """The runner image's Docker context: the Dockerfile, and the task tree it copies into
    /var/task, laid out as the zip (the app's code and the dependencies of all `sites`,
    compiled). Sites may share a dependency: the same pinned wheel, the same files."""
    context = out / IMAGE_CONTEXT
    task, partial = context / IMAGE_TASK, context / (IMAGE_TASK + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(code, partial)
    for site in sites:

        def unpackaged(folder, names, top=site):  # as _add_tree skips them
            return (
                [name for name in names if name in _NOT_PACKAGED or name.startswith(".")] if Path(folder) == top else []
            )

        shutil.copytree(site, partial, ignore=unpackaged, copy_function=_link_or_copy, dirs_exist_ok=True)
    shutil.rmtree(task, ignore_errors=True)
    partial.rename(task)
    shutil.copy(DOCKERFILE, context / "Dockerfile")
    return task


def sizes(package: Path) -> tuple:
    """(zipped, unzipped) size of the package in bytes."""
    with zipfile.ZipFile(package) as archive:
        return package.stat().st_size, sum(entry.file_size for entry in archive.infolist())


def size_report(package: Path) -> str:
    """The package's sizes against Lambda's limits, one line."""
    zipped, unzipped = sizes(package)
    return (
        f"{package.name} (the API function): {zipped / _MB:.1f} MB zipped "
        f"(Lambda: {ZIPPED_LIMIT_MB} MB for a direct upload; the deploy commands upload to S3), "
        f"{unzipped / _MB:.1f} MB unzipped of Lambda's {UNZIPPED_LIMIT_MB} MB"
    )


def unshipped(names) -> list:
    """The paths among `names` (relative to a package's root) of a module of NOT_SHIPPED."""
    return [name for name in names if name.split("/")[0].removesuffix(".py") in NOT_SHIPPED]


def check_contents(package: Path) -> None:
    """Refuse a package (.zip, or the image's task tree) that holds a module of NOT_SHIPPED,
    naming the first such file (SystemExit: `make package` fails)."""
    if package.is_dir():
        names = [path.relative_to(package).as_posix() for path in package.rglob("*") if path.is_file()]
    else:
        with zipfile.ZipFile(package) as archive:
            names = archive.namelist()
    found = unshipped(names)
    if found:
        raise SystemExit(
            f"{package} holds {found[0]} ({len(found)} file(s) of {', '.join(NOT_SHIPPED)}), which must not ship"
        )


def build(out: Path = BUILD) -> tuple:
    """(template, package, image task tree): everything `sam build` and `sam deploy`
    need, in `out`. Either package holding a module that must not ship fails the build
    (check_contents) and is removed."""
    template, code = chalice_package(out)
    _compile(code)
    runtime = dependencies(ZIP_REQUIREMENTS)
    package = write_package(out, code, runtime)
    task = write_image_tree(out, code, [runtime, dependencies(RUNNER_REQUIREMENTS)])
    shutil.rmtree(code)
    for built, remove in ((package, package.unlink), (task, lambda: shutil.rmtree(task))):
        try:
            check_contents(built)
        except SystemExit:
            remove()
            raise
    return template, package, task


def tree_size(folder: Path) -> int:
    """Bytes of the files under `folder`."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BUILD, help="where to write (default: build/)")
    args = parser.parse_args(argv)
    template, package, task = build(args.out)
    print(f"{template}: the stack's template (SAM)")
    print(f"{package}: {size_report(package)}")
    print(
        f"{task}: the runner image's /var/task, {tree_size(task) / _MB:.0f} MB unpacked "
        f"(a Lambda image may be {IMAGE_LIMIT_GB} GB); `sam build` builds the image"
    )
    if sizes(package)[1] > UNZIPPED_LIMIT_MB * _MB:
        print("The package is over Lambda's unzipped limit: it cannot be deployed.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
