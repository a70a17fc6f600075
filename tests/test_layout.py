"""The layers: import-linter's contracts in pyproject.toml hold, and a violating import breaks them.

app.py is a module, which import-linter cannot take as a root: it is held to the same rules here
by importing it in a fresh interpreter and reading its import statements.
"""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("chalicelib", "devstack", "deploy", "tests")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """lint-imports with the repository's contracts on the packages under `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "COLUMNS": "200"}  # one line per contract
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def copied(tmp_path_factory) -> Path:
    """A copy of the packages import-linter reads (sources only), to add violations to."""
    copy = tmp_path_factory.mktemp("layers")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return copy


@pytest.mark.parametrize(
    "module, statement, contract, chain",
    [
        (
            "chalicelib/runs/log.py",
            "from devstack import stack",
            "What ships imports no dev stack, deploy tooling or tests",
            "chalicelib.runs.log -> devstack.stack",
        ),
        (
            "chalicelib/common/batches.py",
            "import deploy.template",
            "What ships imports no dev stack, deploy tooling or tests",
            "chalicelib.common.batches -> deploy.template",
        ),
        (
            "chalicelib/storage/files.py",
            "from chalicelib.api.errors import ApiError",
            "Storage knows no HTTP",
            "chalicelib.storage.files -> chalicelib.api.errors",
        ),
        (
            "chalicelib/storage/tables.py",
            "import chalice",
            "Storage knows no HTTP",
            "chalicelib.storage.tables -> chalice",
        ),
        (
            "chalicelib/api/responses.py",
            "from chalicelib.runner import sandbox",
            "The API does not load the runner at import",
            "chalicelib.api.responses -> chalicelib.runner.sandbox",
        ),
        (
            "chalicelib/common/config.py",
            "from chalicelib.storage import tables",
            "chalicelib.common is the bottom layer",
            "chalicelib.common.config -> chalicelib.storage.tables",
        ),
    ],
)
def test_a_violating_import_breaks_its_contract(copied, module, statement, contract, chain):
    path = copied / module
    original = path.read_text()
    path.write_text(original + f"\n{statement}\n")
    try:
        result = lint_imports(copied)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    # A forbidden module may bring others along (devstack imports the runner): the contract
    # named must be among those broken, and its report must name the import.
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), result.stdout
    assert chain in result.stdout


def test_app_loads_neither_the_runner_nor_the_dev_stack_at_import():
    """The API function's module, imported as Lambda imports it: nothing of the runner,
    the local stack, the deploy tooling or the tests is loaded."""
    script = "import json, sys; import app; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert "chalicelib.services" in loaded  # the check reaches past app.py itself
    unwanted = [name for name in loaded if name.split(".")[0] in ("devstack", "deploy", "tests")]
    unwanted += [name for name in loaded if name.startswith("chalicelib.runner")]
    assert unwanted == []


def test_app_names_no_dev_stack_deploy_or_test_module_even_inside_functions():
    tree = ast.parse((ROOT / "app.py").read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    assert imported, "app.py's imports were not read"
    assert [name for name in imported if name.split(".")[0] in ("devstack", "deploy", "tests")] == []
