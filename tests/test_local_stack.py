"""The local stack as a daily tool: state that survives restarts and crashes, `chalice
local --stage local` with its reloader, and the local Lambda's Invoke API.

Real processes in real time, so few tests, each doing much.
"""

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest
import requests

from chalicelib.api.requests import CreateRequest
from devstack.stack import client_environment, free_port, running_stack
from tests.helpers import take
from tests.local_stack import (
    ADMIN,
    BASE,
    ROOT,
    Process,
    RunningStack,
    alive,
    code_notebook,
    descendants,
    remove_state,
    stack_env,
    state_folder,
    wait_for_run,
)


@pytest.fixture
def state():
    folder = state_folder()
    yield folder
    remove_state(folder)


@pytest.fixture
def launched():
    """The processes a test starts: whatever of them (and below them) still runs at the
    end, e.g. after a failure, is killed."""
    processes = []
    yield processes
    for process in processes:
        if process.process.poll() is None:
            process.kill_all()


def start(launched, stack: RunningStack) -> RunningStack:
    launched.append(stack)
    return stack.started()


def add_user(stack: RunningStack, name: str, password: str) -> None:
    """The users command, pointed at the stack as docs/security.md says (`python -m devstack.stack env`)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(client_environment(stack.connection()))
    subprocess.run(
        [sys.executable, "-m", "chalicelib.auth.users", "add", name, "--password-stdin"],
        env=env,
        cwd=ROOT,
        input=password + "\n",
        text=True,
        check=True,
        capture_output=True,
    )


def snapshot_of(url: str, notebook_ids, run_id) -> dict:
    """What a client sees of these notebooks and this run."""
    return {
        "notebooks": {
            notebook_id: requests.get(f"{url}{BASE}/{notebook_id}", auth=ADMIN).json() for notebook_id in notebook_ids
        },
        "content": requests.get(f"{url}{BASE}/{notebook_ids[0]}/content", auth=ADMIN).json(),
        "run": requests.get(f"{url}/_notebooks/runs/{run_id}", auth=ADMIN).json(),
        "output": requests.get(f"{url}/_notebooks/runs/{run_id}/output", auth=ADMIN).json(),
    }


@pytest.mark.stack
def test_state_survives_a_clean_stop_and_a_kill_9_and_schedules_still_fire(state, launched):
    """Notebooks, a run and its output, a schedule and a user, through a Ctrl-C and a
    restart, then a kill -9 of every process of the stack and a restart; a run in flight
    at the kill ends failed, and the schedule set before both fires after them."""
    port = free_port()
    limit = {"NOTEBOOKS_MAX_RESPONSE_BYTES": "200000"}  # so the output is sent as a presigned S3 link
    stack = start(launched, RunningStack(state, port, **limit))
    url = stack.url
    printing = code_notebook("print('kept')", "print('x' * 300000)")
    ids = [
        requests.post(url + BASE + "/", auth=ADMIN, json={"content": printing}).json()["notebook_id"] for _ in range(2)
    ]
    [run] = requests.post(url + BASE + "/_run", auth=ADMIN, json={"nbkIds": ids[:1], "module": "m"}).json()["runs"]
    assert wait_for_run(url, run["run_id"])["status"] == "succeeded"
    now = datetime.now(timezone.utc)
    due = (now + timedelta(seconds=120 if now.second > 15 else 60)).replace(second=0, microsecond=0)
    schedule = {
        "nbk_ids": [ids[1]],
        "period": due.strftime("%A"),
        "time": due.strftime("%H:%M"),
        "until": (due + timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M"),
    }
    assert requests.post(url + BASE + "/_schedule", auth=ADMIN, json=schedule).json() == "Success"
    add_user(stack, "carol", "carol-pw")
    before = snapshot_of(url, ids, run["run_id"])
    assert "".join(before["output"]["cells"][0]["outputs"][0]["text"]) == "kept\n"  # the stored file, as is
    link = requests.get(f"{url}/_notebooks/runs/{run['run_id']}/output", auth=ADMIN, allow_redirects=False)
    assert link.status_code == 303 and stack.connection()["aws"]["access_key_id"] in link.headers["Location"]
    assert requests.get(link.headers["Location"]).json() == before["output"]  # the embedded AWS takes its key
    assert before["notebooks"][ids[1]]["status"] == "Scheduled"

    processes = descendants(stack.process.pid)
    assert stack.interrupt() == 0
    assert alive(processes) == set()
    stack = start(launched, RunningStack(state, port, **limit))
    assert snapshot_of(url, ids, run["run_id"]) == before
    assert requests.get(url + BASE + "/_count", auth=("carol", "carol-pw")).status_code == 200

    later = requests.post(url + BASE + "/", auth=ADMIN).json()["notebook_id"]
    sleeping = requests.post(
        url + BASE + "/", auth=ADMIN, json={"content": code_notebook("import time; time.sleep(60)")}
    ).json()["notebook_id"]
    [in_flight] = requests.post(url + BASE + "/_run", auth=ADMIN, json={"nbkIds": [sleeping], "module": "m"}).json()[
        "runs"
    ]
    deadline = time.time() + 30
    while requests.get(f"{url}/_notebooks/runs/{in_flight['run_id']}", auth=ADMIN).json()["status"] != "running":
        assert time.time() < deadline
        time.sleep(0.2)
    time.sleep(2.5)  # "at most a few seconds lost": a snapshot is taken within a second of a change
    stack.kill_all()
    stack = start(launched, RunningStack(state, port, **limit))
    assert snapshot_of(url, ids, run["run_id"]) == before
    assert requests.get(f"{url}{BASE}/{later}", auth=ADMIN).status_code == 200
    interrupted = requests.get(f"{url}/_notebooks/runs/{in_flight['run_id']}", auth=ADMIN).json()
    assert interrupted["status"] == "failed" and interrupted["error"]["ename"] == "RunnerLost", interrupted
    assert requests.get(url + BASE + "/_count", auth=("carol", "carol-pw")).status_code == 200

    runs = []
    while time.time() < due.timestamp() + 45 and not runs:
        time.sleep(1)
        runs = requests.get(f"{url}{BASE}/{ids[1]}/runs", auth=ADMIN).json()
    assert len(runs) == 1 and runs[0]["trigger"] == "schedule", stack.output()
    assert wait_for_run(url, runs[0]["run_id"])["status"] == "succeeded"
    # the notebook's version, pinned by the first run, kept its id through both restarts
    [again] = requests.post(f"{url}/_notebooks/runs/{run['run_id']}/rerun", auth=ADMIN).json()["runs"]
    assert wait_for_run(url, again["run_id"])["status"] == "succeeded"
    assert stack.interrupt() == 0


def project_copy(folder) -> str:
    """The app's files in a folder of their own, to edit without touching the repository."""
    copy = os.path.join(folder, "project")
    for package in ("chalicelib", "devstack"):
        shutil.copytree(
            os.path.join(ROOT, package), os.path.join(copy, package), ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copytree(os.path.join(ROOT, ".chalice"), os.path.join(copy, ".chalice"))
    shutil.copy(os.path.join(ROOT, "app.py"), copy)
    return copy


def chalice_local(launched, project: str, state: str, port: int) -> Process:
    """`chalice local --stage local` with the local stack attached (`make api`) in `project`,
    as a developer starts it."""
    env = stack_env(state)
    del env["NOTEBOOKS_USERS"]  # seeded by the stack, not read by the API
    server = Process(
        [sys.executable, "-m", "devstack.chalice_local", "local", "--stage", "local", "--port", str(port)],
        env,
        cwd=project,
    )
    launched.append(server)
    server.wait_for_url(f"http://127.0.0.1:{port}")
    return server


def answers(url: str) -> bool:
    """Whether `url` answers 200 (not while the server restarts)."""
    try:
        return requests.get(url, auth=ADMIN, timeout=10).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.mark.stack
def test_chalice_local_answers_the_seed_samples_and_reloads_without_losing_state(tmp_path, launched):
    """`make aws`, then `chalice local --stage local` in (a copy of) the project: the
    seed's samples as written, then an edit to app.py reloads the app, and a notebook
    created before is still there. Stopping chalice local leaves `make aws` running.
    Meanwhile a whole stack on another state folder and ports sees none of it."""
    project = project_copy(str(tmp_path))
    state = os.path.join(project, ".local-state")  # where it is by default: in the project
    backend = start(launched, RunningStack(state, 0, "--no-api"))
    other_state = state_folder()
    other = start(launched, RunningStack(other_state, free_port()))
    port = free_port()
    server = chalice_local(launched, project, state, port)
    url = f"http://127.0.0.1:{port}"
    created = requests.post(url + BASE + "/", auth=ADMIN).json()
    notebook_id = created["notebook_id"]
    assert created["path"] == f"/notebooks/admin/{created['notebook_name']}"
    assert (
        requests.put(f"{url}{BASE}/{notebook_id}", auth=ADMIN, json={"new_name": "kept"}).json() == "Rename Successful"
    )
    assert requests.get(url + BASE + "/_count", auth=ADMIN).json()["Total Notebooks"] == 1
    [listed] = requests.get(url + BASE + "/_all", auth=ADMIN).json()
    assert listed["notebook_name"] == "kept.ipynb"
    response = requests.request(
        "GET",
        url + "//_notebooks/notebooks/_run",
        auth=ADMIN,
        headers={"Content-Type": "application/json"},
        data='{nbkIds: ["%s"], module: "notebooks"}' % notebook_id,
    )
    [run] = response.json()["runs"]
    assert wait_for_run(url, run["run_id"])["status"] == "succeeded"
    until = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d %H:%M")
    scheduled = requests.request(
        "GET",
        url + BASE + "/_schedule",
        auth=ADMIN,
        json={"nbk_ids": [notebook_id], "period": "Monday", "time": "06:50", "until": until},
    )
    assert scheduled.json() == "Success"
    assert (
        requests.request("GET", url + BASE + "/_unschedule", auth=ADMIN, json={"nbk_ids": [notebook_id]}).json()
        == "Success"
    )

    with open(os.path.join(project, "app.py"), "a") as app_file:
        app_file.write('\n\n@app.route("/_notebooks/edited")\ndef edited():\n    return {"edited": True}\n')
    deadline = time.time() + 60
    while not answers(url + "/_notebooks/edited"):
        assert time.time() < deadline, server.output()
        time.sleep(0.5)
    assert server.output().count("Restarting local dev server") == 1  # the snapshots written meanwhile: none
    assert requests.get(f"{url}{BASE}/{notebook_id}", auth=ADMIN).json()["notebook_name"] == "kept.ipynb"

    assert requests.get(other.url + BASE + "/_count", auth=ADMIN).json()["Total Notebooks"] == 0
    assert other.interrupt() == 0
    remove_state(other_state)

    assert server.interrupt() == 0
    assert running_stack(state) is not None  # `make aws` still runs
    assert backend.interrupt() == 0
    assert running_stack(state) is None


@pytest.mark.stack
def test_chalice_local_starts_a_stack_when_none_runs_and_it_stops_with_chalice_local(state, tmp_path, launched):
    project = project_copy(str(tmp_path))
    server = chalice_local(launched, project, state, free_port())
    stack = running_stack(state)
    assert stack is not None
    started = descendants(stack["pid"]) | {stack["pid"]}
    assert server.interrupt() == 0
    deadline = time.time() + 45
    while alive(started):
        assert time.time() < deadline, alive(started)
        time.sleep(0.5)
    assert running_stack(state) is None


def test_a_restart_fails_the_runs_it_interrupted_and_dispatches_the_queued_ones_again(stack, monkeypatch):
    """What the local Lambda does at start (moto, no processes)."""
    notebook_id = stack.notebooks.create("admin", CreateRequest())["notebook_id"]
    running, queued, done = (stack.run_dispatch.record("admin", notebook_id, "manual") for _ in range(3))
    take(stack, running["run_id"])
    take(stack, done["run_id"])
    stack.records.finish(done["run_id"], "succeeded")
    dispatched = []
    monkeypatch.setattr(stack.dispatcher, "invoke", dispatched.append)
    assert stack.run_dispatch.resume_after_restart() == {"failed": 1, "queued": 1}
    interrupted = stack.runs.get("admin", running["run_id"])
    assert interrupted["status"] == "failed" and interrupted["error"]["ename"] == "RunnerLost"
    assert dispatched == [{"drain": {"run_id": queued["run_id"]}}]
    assert stack.runs.get("admin", queued["run_id"])["status"] == "queued"
    assert stack.runs.get("admin", done["run_id"])["status"] == "succeeded"
