"""Fair share and the reaper in the real local stack (`make dev`), over HTTP, with one
worker (NOTEBOOKS_LOCAL_WORKERS=1): a flooding user does not starve another, and a run
whose worker was killed is failed by the reaper's clock with nobody reading it."""

import os
import signal
import time

import pytest
import requests

from devstack.stack import free_port
from tests.local_stack import (
    ADMIN,
    BASE,
    RunningStack,
    code_notebook,
    descendants,
    remove_state,
    state_folder,
    wait_for_run,
)

pytestmark = pytest.mark.stack  # each test starts a local stack

EVE = ("eve", "eve-pw")
RUNS = "/_notebooks/runs"


@pytest.fixture
def started():
    """Start a stack (one worker: tests.local_stack.stack_env) with these environment
    settings; stopped, and its state removed, at the end."""
    stacks = []

    def start(**env):
        stack = RunningStack(state_folder(), free_port(), **env)
        stacks.append(stack)
        return stack.started()

    yield start
    for stack in stacks:
        if stack.process.poll() is None:
            stack.kill_all()
        remove_state(stack.state)


def run(url: str, auth, source: str, **fields) -> str:
    """A new notebook of `auth`'s user with one code cell, run once: the run's id."""
    notebook_id = requests.post(f"{url}{BASE}/", auth=auth, json={"content": code_notebook(source)}).json()[
        "notebook_id"
    ]
    return run_again(url, auth, notebook_id, **fields)


def run_again(url: str, auth, notebook_id: str, **fields) -> str:
    body = {"nbkIds": [notebook_id], "module": "m", **fields}
    answer = requests.post(f"{url}{BASE}/_run", auth=auth, json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["runs"][0]["run_id"]


def record(url: str, auth, run_id: str) -> dict:
    return requests.get(f"{url}{RUNS}/{run_id}", auth=auth).json()


def wait_until(check, seconds: float = 60, why=lambda: "timed out"):
    deadline = time.time() + seconds
    while not (found := check()):
        assert time.time() < deadline, why()
        time.sleep(0.1)
    return found


def test_a_flood_of_one_user_does_not_make_another_wait_more_than_one_run(started):
    stack = started()
    first = run(stack.url, ADMIN, "import time; time.sleep(3)")
    notebook_id = record(stack.url, ADMIN, first)["notebook_id"]
    flood = [first] + [run_again(stack.url, ADMIN, notebook_id) for _ in range(3)]
    wait_until(lambda: record(stack.url, ADMIN, first)["status"] == "running")
    eves = run(stack.url, EVE, "print('one line')")  # while admin's first run holds the only worker
    ended = {run_id: wait_for_run(stack.url, run_id, seconds=120) for run_id in flood}
    ended[eves] = wait_for_run(stack.url, eves, auth=EVE, seconds=120)
    assert {r["status"] for r in ended.values()} == {"succeeded"}
    order = sorted(ended, key=lambda run_id: ended[run_id]["started_at"])
    assert order == [first, eves, *flood[1:]]  # eve's run right after admin's first, before its second
    waited = (ended[eves]["started_at"] - ended[eves]["created_at"]) / 1000
    print(f"eve's run waited {waited:.1f} s behind a flood of 4 runs of 3 s")


def test_a_run_whose_worker_was_killed_is_failed_by_the_reaper_with_nobody_polling(started):
    # Its deadline: its 5 s timeout and the runner's 60 s to report (REPORT_GRACE_SECONDS).
    stack = started(NOTEBOOKS_REAP_SECONDS="1")
    run_id = run(stack.url, ADMIN, "import time; time.sleep(30)", timeout=5)
    wait_until(lambda: record(stack.url, ADMIN, run_id)["status"] == "running")
    [worker] = [pid for pid in descendants(stack.process.pid) if " --worker " in _cmdline(pid)]
    os.kill(worker, signal.SIGKILL)  # the worker dies with its run: nothing reports the run's end
    # Nobody reads the run: look only at the stored record, in the embedded DynamoDB.
    table = stack.embedded_aws("dynamodb")
    runs_table = "notebooks-runs"

    def stored():
        item = table.get_item(TableName=runs_table, Key={"run_id": {"S": run_id}}, ConsistentRead=True).get("Item")
        return item if item and item["status"]["S"] == "failed" else None

    item = wait_until(stored, seconds=120, why=stack.output)
    assert item["error"]["M"]["ename"]["S"] == "RunnerLost"
    deadline = int(item["deadline_at"]["N"])
    reaped_after = (int(item["finished_at"]["N"]) - deadline) / 1000
    assert reaped_after < 10
    print(f"the reaper ended the lost run {reaped_after:.1f} s after its deadline")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
