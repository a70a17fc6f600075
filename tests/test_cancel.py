"""Cancel: queued runs never start, running runs stop within seconds keeping their output
so far, finished runs are a 409, and a cancel racing a run's end leaves one final status."""

import threading
import time

import pytest

from chalicelib.runner import executor as executor_module
from chalicelib.runner import notebook_runner
from chalicelib.runs import log as run_log
from chalicelib.runs import service as runs_module
from tests.conftest import error
from tests.helpers import take
from tests.test_runs import BASE, RUNS, notebook_of, run_all

pytest_plugins = ["tests.test_runs"]  # its fixtures: dispatched, executor


def start_run(api, *sources) -> str:
    notebook_id = api.create(content=notebook_of(*sources))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    return run["run_id"]


def run_in_background(executor, dispatched) -> threading.Thread:
    thread = threading.Thread(target=run_all, args=(executor, dispatched), daemon=True)
    thread.start()
    return thread


def wait_for(api, run_id, predicate, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = api.json("GET", f"{RUNS}/{run_id}")
        if predicate(run):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never reached the expected state: {run}")


@pytest.fixture
def prompt(monkeypatch):
    """The runner asks after a cancel every 0.2 s, not 2 s, records the executing cell every
    0.2 s, not 2 s, and kills a cell that ignores the interrupt after 1 s, not 5: what these
    tests wait for, not what they test."""
    monkeypatch.setattr(executor_module, "CANCEL_POLL_SECONDS", 0.2)
    monkeypatch.setattr(run_log, "LOG_INTERVAL_SECONDS", 0.2)
    monkeypatch.setattr(notebook_runner, "CANCEL_GRACE_SECONDS", 1.0)


def outputs_of(api, run_id) -> list:
    notebook = api.json("GET", f"{RUNS}/{run_id}/output")
    return [cell.get("outputs", []) for cell in notebook["cells"]]


def test_a_queued_run_cancelled_never_starts(api, dispatched, executor):
    run_id = start_run(api, "print('never')")

    answer = api.json("POST", f"{RUNS}/{run_id}/cancel")

    assert answer["status"] == "cancelled" and answer["finished_at"] is not None
    assert executor.handle(dispatched.events.pop()) == {"status": "idle"}
    assert api.json("GET", f"{RUNS}/{run_id}")["status"] == "cancelled"
    assert error(api.call("GET", f"{RUNS}/{run_id}/output")) == (404, "Run output not available yet")


def test_a_running_run_is_cancelled_within_seconds_and_keeps_its_output_so_far(api, dispatched, executor, prompt):
    run_id = start_run(api, "print('before')", "import time; time.sleep(120)", "print('after')")
    worker = run_in_background(executor, dispatched)
    wait_for(api, run_id, lambda run: run["current_cell"] == 1)  # the sleeping cell

    answer = api.json("POST", f"{RUNS}/{run_id}/cancel")

    assert answer["status"] == "cancelled" and answer["error"] is None
    worker.join(30)
    assert not worker.is_alive()
    before, sleeping, after = outputs_of(api, run_id)
    assert before[0]["text"] == "before\n"
    assert sleeping[-1]["output_type"] == "error" and sleeping[-1]["ename"] == "KeyboardInterrupt"
    assert after == []


def test_a_cell_that_ignores_the_interrupt_is_killed(api, dispatched, executor, prompt, monkeypatch):
    monkeypatch.setattr(runs_module, "CANCEL_WAIT_SECONDS", 0)  # answer at once; the test waits
    stubborn = (
        "import time\nwhile True:\n"
        "    try:\n        time.sleep(0.1)\n    except KeyboardInterrupt:\n        print('ignored')"
    )
    run_id = start_run(api, stubborn, "print('after')")
    worker = run_in_background(executor, dispatched)
    wait_for(api, run_id, lambda run: run["current_cell"] == 0)
    time.sleep(0.3)  # into its loop

    assert api.json("POST", f"{RUNS}/{run_id}/cancel")["status"] == "running"  # asked, not done yet

    final = wait_for(api, run_id, lambda run: run["status"] != "running")
    worker.join(30)
    assert final["status"] == "cancelled"
    stubborn_outputs, after = outputs_of(api, run_id)
    assert "ignored" in "".join(output.get("text", "") for output in stubborn_outputs)
    assert after == []


def test_cancelling_a_finished_run_is_a_409(api, dispatched, executor):
    run_id = start_run(api, "print(1)")
    run_all(executor, dispatched)

    assert error(api.call("POST", f"{RUNS}/{run_id}/cancel")) == (409, "Run already finished")
    assert api.json("GET", f"{RUNS}/{run_id}")["status"] == "succeeded"


def test_another_users_run_cannot_be_cancelled(api, dispatched):
    run_id = start_run(api, "print(1)")
    unknown = "00000000-0000-4000-8000-000000000000"
    assert error(api.call("POST", f"{RUNS}/{run_id}/cancel", user="bob")) == (404, "Run not found")
    assert error(api.call("POST", f"{RUNS}/{unknown}/cancel", user="bob")) == (404, "Run not found")
    assert api.json("GET", f"{RUNS}/{run_id}")["status"] == "queued"


# The race of a cancel with a run's end, in each order the two conditional writes can land.


def test_cancel_requested_before_the_runner_ends_the_run_wins(api, stack, dispatched, monkeypatch):
    monkeypatch.setattr(runs_module, "CANCEL_WAIT_SECONDS", 0)
    run_id = start_run(api, "print(1)")
    assert take(stack, run_id) is not None
    assert stack.runs.cancel("admin", run_id)["status"] == "running"

    assert stack.records.conclude(run_id, "succeeded") == "cancelled"
    assert api.json("GET", f"{RUNS}/{run_id}")["status"] == "cancelled"


def test_a_run_ended_before_the_cancel_stays_ended(api, stack, dispatched):
    run_id = start_run(api, "print(1)")
    assert take(stack, run_id) is not None
    assert stack.records.conclude(run_id, "failed", error={"cell_index": 0, "ename": "E", "evalue": "v"}) == "failed"

    assert error(api.call("POST", f"{RUNS}/{run_id}/cancel")) == (409, "Run already finished")
    record = api.json("GET", f"{RUNS}/{run_id}")
    assert record["status"] == "failed" and record["error"]["ename"] == "E"


def test_a_cancel_whose_runner_is_gone_ends_the_run_after_a_deadline(api, stack, dispatched, monkeypatch):
    monkeypatch.setattr(runs_module, "CANCEL_WAIT_SECONDS", 0)
    run_id = start_run(api, "print(1)")
    assert take(stack, run_id) is not None
    assert stack.runs.cancel("admin", run_id)["status"] == "running"
    later = time.time() + runs_module.CANCEL_DEADLINE_SECONDS + 1
    stack.runs._clock = lambda: later

    assert api.json("GET", f"{RUNS}/{run_id}")["status"] == "cancelled"
    assert stack.records.conclude(run_id, "succeeded") is None  # the late runner changes nothing
