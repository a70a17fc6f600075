"""The documentation says what the code does: docs/configuration.md against `Settings`
and the local stack's own variables, and the README's quickstart pasted into bash
against a real local stack."""

import dataclasses
import os
import re
import shutil
import subprocess

import pytest
import requests

from chalicelib.common.config import Settings
from devstack.stack import free_port
from tests import config_doc
from tests.local_stack import ADMIN, RunningStack, remove_state, state_folder

ROOT = config_doc.ROOT
DOCUMENTED = config_doc.settings_rows()


def test_every_variable_settings_reads_is_documented():
    missing = config_doc.variables_read() - set(DOCUMENTED)
    assert not missing, f"add a row to docs/configuration.md's Settings table for {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_documented_variable_changes_a_setting(name):
    assert config_doc.probe(name) is not None, f"{name} is documented, but Settings.from_env does not read it"


def _default_matches(cell: str, value) -> bool:
    """Whether the table's default cell states `value` (see docs/configuration.md)."""
    if cell == "(unset)":
        return value in (None, (), "")
    if cell == "(cores)":
        return value == (os.cpu_count() or 1)
    literal = re.fullmatch(r"`([^`]*)`", cell)
    assert literal, f"a default is `value`, (unset) or (cores), not {cell!r}"
    text = literal.group(1)
    if isinstance(value, bool):
        return text in ("true", "false") and (text == "true") == value
    if isinstance(value, (int, float)):
        return float(text.replace(",", "")) == value
    if isinstance(value, tuple):
        return tuple(item.strip() for item in text.split(",")) == value
    return text == value


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_documented_default_is_the_settings_default(name):
    probed = config_doc.probe(name)
    assert probed is not None, f"{name} is documented, but Settings.from_env does not read it"
    value = getattr(config_doc.unset(), probed[0])
    assert _default_matches(DOCUMENTED[name], value), f"{name}: documented {DOCUMENTED[name]}, Settings has {value!r}"


def test_the_default_check_catches_a_wrong_default():
    assert _default_matches("`840`", 840.0)
    assert not _default_matches("`841`", 840.0)
    assert not _default_matches("`true`", False)
    assert not _default_matches("(unset)", "runner")
    assert _default_matches("`a, b`", ("a", "b"))


# Variables devstack/ reads that a user does not set: Chalice's reloader marks its worker
# (CHALICE_WORKER); the stack gives its processes the key and addresses (AWS_*) and the
# API its supervisor's pid (NOTEBOOKS_STACK_PID).
_STACK_INTERNAL = re.compile(r"AWS_.*|CHALICE_WORKER|NOTEBOOKS_STACK_PID")


def test_the_local_stack_table_lists_what_devstack_reads():
    read = set()
    folder = os.path.join(ROOT, "devstack")
    for name in os.listdir(folder):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as source:
                read |= set(re.findall(r"os\.environ(?:\.get\(|\[)\s*\"([A-Z0-9_]+)\"", source.read()))
    read = {name for name in read if not _STACK_INTERNAL.fullmatch(name)}
    documented = {config_doc.variable(row[0]) for row in config_doc.table("Local stack")}
    assert read == documented


def quickstart_script(heading: str = "Quickstart", path: str = os.path.join(ROOT, "README.md")) -> str:
    """The shell blocks of a section of the README (by default the Quickstart), in order."""
    with open(path) as readme:
        section = readme.read().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert blocks, f"the section {heading} has no ```sh block"
    return "\n".join(blocks)


@pytest.fixture
def stack():
    """A local stack on a free port, serving this repository (stopped afterwards)."""
    state = state_folder()
    running = RunningStack(state, free_port()).started()
    yield running
    running.interrupt()
    remove_state(state)


def pasted(script: str, stack) -> subprocess.CompletedProcess:
    """`script` through bash from the repository, as a user pastes it, against `stack`;
    it must exit 0. (A file it left in the repository would reload the API under the
    next command.)"""
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env={**os.environ, "URL": stack.url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr + stack.output()
    return done


@pytest.mark.stack
def test_the_quickstart_works_when_pasted(stack):
    """Every shell block of the Quickstart, but `make dev` (the stack is started here, on
    a free port), through bash against the stack; then the run it made succeeded."""
    script = "\n".join(line for line in quickstart_script().split("\n") if not line.startswith("make "))
    assert "$URL" in script and "${URL:-" in script
    done = pasted(script + '\necho "RUN=$RUN"', stack)
    run_id = re.findall(r"^RUN=(\S+)$", done.stdout, re.M)[-1]
    run = requests.get(f"{stack.url}/_notebooks/runs/{run_id}", auth=ADMIN).json()
    assert run["status"] == "succeeded", run
    assert run["parameters"] == {"name": "quickstart", "n": 2}
    assert "Hello, quickstart! (2/2)" in done.stdout  # the log it printed
    out = re.findall(r"^output in (\S+)$", done.stdout, re.M)[-1]
    try:
        with open(os.path.join(out, "hello-output.html")) as page:
            assert page.read().count("Hello, quickstart!") == 2
    finally:
        shutil.rmtree(out)
    assert "Restarting local dev server" not in stack.output()


@pytest.mark.stack
def test_the_command_line_quickstart_works_when_pasted(stack):
    """The README's command-line block, pasted into bash against a stack: the run it waits
    for succeeded with its typed parameters, the schedule keeps its own, and the dashboard
    it points at answers."""
    done = pasted(quickstart_script("Command line and dashboard") + '\necho "ID=$ID RUN=$RUN"', stack)
    notebook_id, run_id = re.findall(r"^ID=(\S+) RUN=(\S+)$", done.stdout, re.M)[-1]
    run = requests.get(f"{stack.url}/_notebooks/runs/{run_id}", auth=ADMIN).json()
    assert run["status"] == "succeeded" and run["parameters"] == {"name": "cli", "n": 2}, run
    assert "Hello, cli! (2/2)" in done.stderr  # --wait followed the log on stderr
    schedule = requests.get(f"{stack.url}/_notebooks/notebooks/{notebook_id}", auth=ADMIN).json()["schedule"]
    assert schedule["timezone"] == "Europe/London" and schedule["parameters"] == {"name": "weekly"}
    assert requests.get(f"{stack.url}/_notebooks/ui/", auth=ADMIN).status_code == 200


def test_settings_from_env_is_what_the_table_checks():
    # The probes reach every field: a field no documented variable changes is a setting
    # that cannot be configured (or a variable missing from the table).
    fields = {config_doc.probe(name)[0] for name in DOCUMENTED}
    assert fields == {field.name for field in dataclasses.fields(Settings)}
