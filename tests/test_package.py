"""deploy/package.py's check of what ships: a package holding the dev stack, the deploy
tooling, the tests or the benchmarks is refused, naming the file. (The real package, as
`make package` builds it, is checked in test_lambda_sim.py.)"""

import zipfile

import pytest

from deploy import package


def tiny_zip(path, names):
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, "")
    return path


PRODUCTION = ["app.py", "chalicelib/__init__.py", "chalicelib/services.py", "numpy/tests/test_core.py"]


def test_a_package_of_production_code_passes(tmp_path):
    package.check_contents(tiny_zip(tmp_path / "ok.zip", PRODUCTION))


@pytest.mark.parametrize(
    "intruder", ["devstack/stack.py", "deploy/template.py", "tests/conftest.py", "bench/bench.py", "devstack.py"]
)
def test_a_zip_holding_a_module_that_must_not_ship_is_refused_naming_it(tmp_path, intruder):
    zipped = tiny_zip(tmp_path / "bad.zip", [*PRODUCTION, intruder])
    with pytest.raises(SystemExit, match=intruder.replace(".", r"\.")) as refusal:
        package.check_contents(zipped)
    assert "must not ship" in str(refusal.value)


def test_an_image_tree_holding_the_dev_stack_is_refused_naming_the_file(tmp_path):
    for name in [*PRODUCTION, "devstack/embedded_aws.py"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    with pytest.raises(SystemExit, match=r"devstack/embedded_aws\.py"):
        package.check_contents(tmp_path)


@pytest.mark.parametrize("constrained", [False, True], ids=["pinned", "pinned and constrained"])
def test_a_library_with_wheels_for_a_newer_glibc_only_is_refused_naming_it(tmp_path, monkeypatch, capfd, constrained):
    """Lambda's python3.13 runs on glibc 2.34: a release whose wheels need 2.35 stops
    `make package`, naming the library, whether constraints.txt pins it too (pip then says
    the pins conflict) or not (pip finds no distribution)."""
    wheels, root = tmp_path / "wheels", tmp_path / "repository"
    wheels.mkdir()
    root.mkdir()
    tiny_zip(wheels / "newglibc-1.0-cp313-cp313-manylinux_2_35_x86_64.whl", [])
    (root / "requirements-new.txt").write_text("newglibc==1.0\n")
    (root / "constraints.txt").write_text("newglibc==1.0\n" if constrained else "")
    monkeypatch.setattr(package, "ROOT", root)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    with pytest.raises(SystemExit) as refusal:
        package.dependencies(("requirements-new.txt",), cache=tmp_path / "cache")
    message = str(refusal.value)
    assert message.startswith("pip could not install newglibc as wheels for CPython 3.13.0 on glibc 2.34 or older")
    assert "manylinux_2_35 or later" in message
    assert "newglibc" in capfd.readouterr().err  # pip's own message, passed on
