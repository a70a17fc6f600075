"""The Makefile's Python: Lambda's python3.13, found on PATH or under pyenv, or a clear stop."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def make(*arguments, env: dict, dry_run: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-n" if dry_run else "-s", "venv", *arguments],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_a_python_3_13_make_stops_saying_what_to_install(tmp_path):
    if any((Path(folder) / "python3.13").exists() for folder in ("/usr/bin", "/bin")):
        pytest.skip("this machine has a system python3.13")
    result = make(
        f"VENV={tmp_path / 'venv'}", env={"HOME": str(tmp_path), "PYENV_ROOT": str(tmp_path / "pyenv")}, dry_run=False
    )
    assert result.returncode != 0 and not (tmp_path / "venv").exists()
    assert "Python 3.13 is needed (Lambda's python3.13 runtime), and there is none" in result.stderr
    assert f"pyenv has no 3.13 under {tmp_path / 'pyenv'}/versions" in result.stderr
    assert "make PYTHON=/path/to/python3.13" in result.stderr


def test_make_finds_pyenvs_python_3_13_when_none_is_on_path(tmp_path):
    base = Path(sys._base_executable)  # the tests' own venv was made from it
    if base.parent.parent.parent.name != "versions" or not base.name.startswith("python3.13"):
        pytest.skip("the tests' Python 3.13 is not pyenv's")
    pyenv_root = base.parents[3]
    result = make(f"VENV={tmp_path / 'venv'}", env={"HOME": str(tmp_path), "PYENV_ROOT": str(pyenv_root)}, dry_run=True)
    assert result.returncode == 0, result.stderr
    assert f"{base.parent / 'python3.13'} -m venv {tmp_path / 'venv'}" in result.stdout


def test_a_python_that_is_not_3_13_is_refused(tmp_path):
    other = shutil.which("python3", path="/usr/bin:/bin")
    if (
        other is None
        or subprocess.run([other, "-c", "import sys; sys.exit(sys.version_info[:2] == (3, 13))"]).returncode
    ):
        pytest.skip("no other Python to name")
    result = make(f"VENV={tmp_path / 'venv'}", f"PYTHON={other}", env={"HOME": str(tmp_path)}, dry_run=False)
    assert result.returncode != 0 and f"{other} is not Python 3.13" in result.stderr
    assert not (tmp_path / "venv").exists()
