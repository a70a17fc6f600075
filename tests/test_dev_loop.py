"""The dev loop (devstack/chalice_local.py): settings given to `make dev` or `make api`
win over `.chalice/config.json`, and the reloader reloads on code changes only, whatever
happens under build/ and the other generated folders."""

import os
import shutil
import threading
import time
import uuid

import pytest
import requests
from chalice.cli.factory import CLIFactory

from chalicelib.common.config import Settings
from devstack import chalice_local
from devstack.stack import free_port, local_stage_environment, stage_defaults
from tests import config_doc
from tests.local_stack import ADMIN, BASE, RunningStack, code_notebook, descendants, remove_state, state_folder

ROOT = config_doc.ROOT
DOCUMENTED = sorted(config_doc.settings_rows())


def _given(name: str) -> tuple:
    """(value to put in the environment, what Settings then reads) for `name`."""
    _, value, read = config_doc.probe(name)
    return value, read


@pytest.mark.parametrize("name", DOCUMENTED)
def test_the_environment_wins_over_the_stage_defaults(name):
    value, read = _given(name)
    field = config_doc.probe(name)[0]
    env = {name: value}
    # The stage's variables, and this one too as if the config file set it.
    env.update(stage_defaults({**local_stage_environment(), name: "from-config.json"}, env))
    assert env[name] == value
    assert getattr(Settings.from_env(env), field) == read


def test_stage_defaults_fill_in_what_the_environment_does_not_set():
    env = {"NOTEBOOKS_RUN_TIMEOUT": "30"}
    env.update(stage_defaults(local_stage_environment(), env))
    assert env["NOTEBOOKS_RUN_TIMEOUT"] == "30"
    assert env["NOTEBOOKS_QUEUE_TIMEOUT"] == "21600"  # every stage's, from the config file
    assert env["NOTEBOOKS_LOCAL_STACK"] == "true"  # the local stage's


@pytest.fixture
def chalice_loader(monkeypatch):
    """Chalice's own loading of the app in the `local` stage, on an environment of ours,
    with what chalice_local attaches (undone after the test)."""
    monkeypatch.setattr(CLIFactory, "load_chalice_app", CLIFactory.load_chalice_app)

    def load(env: dict, attached: bool = True) -> dict:
        if attached:
            chalice_local._environment_wins()
        CLIFactory(ROOT, environ=env).create_config_obj(chalice_stage_name="local").chalice_app  # noqa: B018
        return env

    return load


def test_chalice_alone_overrides_the_environment(chalice_loader):
    # What chalice_local fixes: Chalice applies the config file over the environment.
    env = chalice_loader({"NOTEBOOKS_RUN_TIMEOUT": "30"}, attached=False)
    assert env["NOTEBOOKS_RUN_TIMEOUT"] == "840"


@pytest.mark.parametrize("name", DOCUMENTED)
def test_chalice_local_keeps_each_setting_of_the_environment(chalice_loader, name):
    value, read = _given(name)
    env = chalice_loader({name: value})
    assert getattr(Settings.from_env(env), config_doc.probe(name)[0]) == read
    assert env["NOTEBOOKS_LOCAL_STACK"] == "true" or name == "NOTEBOOKS_LOCAL_STACK"


def test_code_files_skip_generated_folders_and_vanished_files(tmp_path, monkeypatch):
    state = tmp_path / "state"
    for path in (
        "app.py",
        "chalicelib/runs/service.py",
        "build/runner-image/task/app.py",
        "dist/notebooks.whl",
        "notebooks.egg-info/PKG-INFO",
        "chalicelib/__pycache__/x.pyc",
        ".venv/lib/x.py",
        ".local-state/s3.json",
        ".pytest_cache/v",
        ".mypy_cache/x",
        ".ruff_cache/x",
        "state/dynamodb.json",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    files = chalice_local.code_files(str(tmp_path), str(state))
    assert sorted(os.path.relpath(path, tmp_path) for path in files) == ["app.py", "chalicelib/runs/service.py"]

    walk = os.walk

    def walk_with_a_vanished_file(root):
        for folder, subfolders, names in walk(root):
            yield folder, subfolders, names + ["vanished.py"]

    monkeypatch.setattr(os, "walk", walk_with_a_vanished_file)
    assert chalice_local.code_files(str(tmp_path), str(state)) == files


@pytest.fixture(scope="module")
def stack():
    """`make dev` with NOTEBOOKS_RUN_TIMEOUT=30 in its environment."""
    state = state_folder()
    running = RunningStack(state, free_port(), NOTEBOOKS_RUN_TIMEOUT="30").started()
    yield running
    running.interrupt()
    remove_state(state)


@pytest.mark.stack
def test_a_run_timeout_given_to_make_dev_reaches_the_runs(stack):
    created = requests.post(f"{stack.url}{BASE}", json={"content": code_notebook("1 + 1")}, auth=ADMIN).json()
    runs = requests.post(
        f"{stack.url}{BASE}/_run", json={"nbkIds": [created["notebook_id"]], "module": "notebooks"}, auth=ADMIN
    ).json()["runs"]
    run = requests.get(f"{stack.url}/_notebooks/runs/{runs[0]['run_id']}", auth=ADMIN).json()
    assert run["timeout"] == 30


def _api_workers(stack) -> set:
    """The pids of Chalice's worker processes (the API's server, below its reloader)."""
    chalice = {}
    for pid in descendants(stack.process.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline, open(f"/proc/{pid}/stat") as stat:
                if b"devstack.chalice_local" in cmdline.read():
                    chalice[pid] = int(stat.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            pass
    return {pid for pid, parent in chalice.items() if parent in chalice}


def _answers(stack) -> bool:
    try:
        return requests.get(f"{stack.url}{BASE}/_count", auth=ADMIN, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.mark.stack
def test_build_churn_neither_restarts_nor_stops_the_api(stack):
    workers = _api_workers(stack)
    assert len(workers) == 1, workers
    made_build = not os.path.exists(os.path.join(ROOT, "build"))
    churn = os.path.join(ROOT, "build", f"reload-test-{uuid.uuid4().hex}")
    stop = threading.Event()

    def package_like():
        # What `make package` does to build/: trees written and removed, fast.
        while not stop.is_set():
            for i in range(50):
                folder = os.path.join(churn, "runner-image", "task", f"pkg{i}")
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, "module.py"), "w") as module:
                    module.write("x = 1\n")
            shutil.rmtree(churn, ignore_errors=True)

    writer = threading.Thread(target=package_like)
    writer.start()
    try:
        deadline = time.time() + 5  # five polls of the watcher, at least
        while time.time() < deadline:
            assert _answers(stack), stack.output()
            time.sleep(0.2)
    finally:
        stop.set()
        writer.join()
        shutil.rmtree(os.path.join(ROOT, "build") if made_build else churn, ignore_errors=True)
    time.sleep(2)
    assert _api_workers(stack) == workers
    assert "Restarting local dev server" not in stack.output()

    # The watcher is alive: a file at the top of the repository is a code change.
    probe = os.path.join(ROOT, f"reload-probe-{uuid.uuid4().hex}.txt")
    with open(probe, "w") as probe_file:
        probe_file.write("x")
    try:
        deadline = time.time() + 30
        while _api_workers(stack) in (workers, set()) and time.time() < deadline:
            time.sleep(0.2)
        assert _api_workers(stack) not in (workers, set()), stack.output()
    finally:
        os.remove(probe)
    stack.wait_for_url(stack.url)
