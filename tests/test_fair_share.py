"""Fair share and no silent loss (moto): the fair queue takes users in turn within the
runner's capacity and a per-user limit; the reaper ends lost runs with nobody reading
them; the failed events' consumer ends the run a failed invocation was executing."""

import dataclasses
import json
import time

from chalicelib.runs.queue import FairQueue
from chalicelib.runs.reaper import Reaper
from chalicelib.storage.tables import DEPLOYMENT
from tests.helpers import check_invariants
from tests.test_runs import BASE, RUNS, notebook_of, run_all
from tests.test_webhooks import put_hook

pytest_plugins = ["tests.test_runs"]  # its fixtures: dispatched, executor


class Clock:
    """A clock that moves one second at each reading, so each start has its own time."""

    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        self.now += 1
        return self.now


def fair(stack, monkeypatch, clock=None, **settings) -> FairQueue:
    """The services' fair queue with these settings (capacity, per-user limit)."""
    changed = dataclasses.replace(stack.settings, **settings)
    queue = FairQueue(stack.queue._table, changed, clock or Clock())
    monkeypatch.setattr(stack, "queue", queue)
    return queue


def queue_runs(api, user: str, count: int, source: str = "print(1)") -> list:
    """`count` queued runs of one new notebook of `user`, in order."""
    notebook_id = api.create(user=user, content=notebook_of(source))["notebook_id"]
    return [
        api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"}, user=user)["runs"][0]["run_id"]
        for _ in range(count)
    ]


def finish(stack, run_id: str) -> None:
    assert stack.records.conclude(run_id, "succeeded") == "succeeded"


def test_a_flooding_user_does_not_starve_another_whose_run_starts_after_one_run(api, stack, dispatched, monkeypatch):
    queue = fair(stack, monkeypatch, runner_capacity=1, max_running=1)
    bob = queue_runs(api, "bob", 4)
    first = queue.claim_next()
    assert first["run_id"] == bob[0]
    [dave] = queue_runs(api, "admin", 1)  # another user's one run, while bob's first runs
    assert queue.claim_next() is None  # the runner's only slot is taken
    finish(stack, bob[0])
    order = []
    while (run := queue.claim_next()) is not None:
        order.append(run["run_id"])
        finish(stack, run["run_id"])
    assert order == [dave, *bob[1:]]  # dave's run comes right after bob's first, before bob's second
    started = {
        run_id: api.json("GET", f"{RUNS}/{run_id}", user=user)["started_at"]
        for run_id, user in [(bob[0], "bob"), (dave, "admin"), (bob[1], "bob")]
    }
    assert started[bob[0]] < started[dave] < started[bob[1]]
    check_invariants(stack.settings)


def test_a_user_at_the_per_user_limit_leaves_free_slots_to_others(api, stack, dispatched, monkeypatch):
    queue = fair(stack, monkeypatch, runner_capacity=3, max_running=1)
    bob = queue_runs(api, "bob", 3)
    assert queue.claim_next()["run_id"] == bob[0]
    assert queue.claim_next() is None  # a slot is free, but bob has his one running run
    [dave] = queue_runs(api, "admin", 1)
    assert queue.claim_next()["run_id"] == dave
    counts = stack.notebooks._table.counts
    assert int(counts(DEPLOYMENT)["running"]) == 2 and int(counts("bob")["runs_running"]) == 1
    finish(stack, bob[0])
    assert queue.claim_next()["run_id"] == bob[1]
    check_invariants(stack.settings)


def test_the_runner_drains_the_queue_users_in_turn_on_a_real_kernel(api, stack, dispatched, executor, monkeypatch):
    fair(stack, monkeypatch, runner_capacity=1, max_running=1)
    monkeypatch.setattr(executor, "_queue", stack.queue)
    bob = queue_runs(api, "bob", 3, "import time; time.sleep(0.2)")
    [dave] = queue_runs(api, "admin", 1, "print('dave')")
    # The first drain event claims bob's first run; Lambda runs the rest in turn.
    first = executor.handle(dispatched.events.pop(0))
    assert first == {"run_id": bob[0], "status": "succeeded"}
    run_all(executor, dispatched)
    runs = {
        run_id: api.json("GET", f"{RUNS}/{run_id}", user=user)
        for run_id, user in [*((b, "bob") for b in bob), (dave, "admin")]
    }
    assert {run["status"] for run in runs.values()} == {"succeeded"}
    order = sorted(runs, key=lambda run_id: runs[run_id]["started_at"])
    assert order == [bob[0], dave, bob[1], bob[2]]
    check_invariants(stack.settings)  # every slot given back: the deployment runs nothing


def test_the_active_runs_quota_defaults_to_what_the_users_slots_serve_within_the_queue_timeout(stack):
    from chalicelib.common.config import Settings

    settings = Settings.from_env(
        {"NOTEBOOKS_RUNNER_CAPACITY": "10", "NOTEBOOKS_QUEUE_TIMEOUT": "3600", "NOTEBOOKS_RUN_TIMEOUT": "600"}
    )
    assert settings.running_per_user() == 5 and settings.active_runs_quota() == 5 * 6
    local = Settings.from_env({"NOTEBOOKS_LOCAL_STACK": "true", "NOTEBOOKS_LOCAL_WORKERS": "1"})
    assert local.runner_slots() == 1 and local.running_per_user() == 1


# --- The reaper ------------------------------------------------------------------------


def test_the_reaper_ends_a_run_whose_runner_died_with_nobody_polling(api, stack, dispatched, monkeypatch):
    queue = fair(stack, monkeypatch, runner_capacity=2, max_running=2)
    [lost, waiting] = queue_runs(api, "admin", 2)
    put_hook(api, api.json("GET", f"{RUNS}/{lost}")["notebook_id"], "https://hooks.example.com/x")
    assert queue.claim_next()["run_id"] == lost  # its runner claimed it, then was killed
    dispatched.events.clear()
    monkeypatch.setattr(stack.webhooks, "_dispatcher", dispatched)  # deliveries recorded, not invoked
    reaper = Reaper(stack.queue._table, stack.runs, stack.run_dispatch, stack.dispatcher, clock=lambda: now)
    now = 1.0  # epoch seconds: before every deadline
    assert reaper.reap() == {"reaped": 0}
    lost_record = stack.queue._table.get(lost)
    now = int(lost_record["deadline_at"]) / 1000 + 1  # just past its deadline (timeout and grace)
    monkeypatch.setattr(stack.runs, "_clock", lambda: now)
    assert reaper.reap() == {"reaped": 1}
    record = stack.queue._table.get(lost)
    assert record["status"] == "failed" and record["error"]["ename"] == "RunnerLost"
    assert "stopped without reporting a result" in record["error"]["evalue"]
    assert record["webhook"]["status"] == "pending"  # its webhook delivery handed to the runner function
    assert {"deliver_webhook": lost} in dispatched.events
    assert {"drain": {}} in dispatched.events  # a run still waits: a runner is started for it
    assert stack.queue._table.get(waiting)["status"] == "queued"
    check_invariants(stack.settings)


def test_the_reaper_fails_a_run_that_waited_past_the_queue_timeout_with_a_clear_error(api, stack, dispatched):
    [run_id] = queue_runs(api, "bob", 1)
    deadline = int(stack.queue._table.get(run_id)["deadline_at"]) / 1000
    stack.runs._clock = lambda: deadline + 1
    assert Reaper(
        stack.queue._table, stack.runs, stack.run_dispatch, stack.dispatcher, clock=lambda: deadline + 1
    ).reap() == {"reaped": 1}
    record = api.json("GET", f"{RUNS}/{run_id}", user="bob")
    assert record["status"] == "failed" and "queue timeout (NOTEBOOKS_QUEUE_TIMEOUT)" in record["error"]["evalue"]


def test_the_reaper_reads_only_overdue_active_runs(api, stack, dispatched, executor, monkeypatch):
    fair(stack, monkeypatch, runner_capacity=1, max_running=1)
    monkeypatch.setattr(executor, "_queue", stack.queue)
    queue_runs(api, "bob", 3)
    run_all(executor, dispatched)  # three finished runs: none is in the index any more
    assert stack.queue._table.with_status("queued") == [] and stack.queue._table.with_status("running") == []
    reads = []
    real_get = stack.queue._table.get
    monkeypatch.setattr(stack.queue._table, "get", lambda run_id: reads.append(run_id) or real_get(run_id))
    assert Reaper(stack.queue._table, stack.runs, stack.run_dispatch, stack.dispatcher, clock=lambda: 4e9).reap() == {
        "reaped": 0
    }
    assert reads == []


def test_the_failed_events_consumer_fails_the_run_its_failed_invocation_claimed(api, stack, dispatched, monkeypatch):
    queue = fair(stack, monkeypatch, runner_capacity=2, max_running=2)
    [crashed, other] = queue_runs(api, "admin", 2)
    assert queue.claim_next(request_id="req-1")["run_id"] == crashed
    assert queue.claim_next(request_id="req-2")["run_id"] == other

    def record(request_id, run_id):
        body = {
            "requestContext": {"requestId": request_id, "condition": "RetriesExhausted"},
            "requestPayload": {"drain": {"run_id": run_id}},
        }
        return {"eventSource": "aws:sqs", "body": json.dumps(body)}

    reaper = Reaper(stack.queue._table, stack.runs, stack.run_dispatch, stack.dispatcher)
    # the failed event of req-1, and one naming `other` from an invocation that did not claim it
    outcome = reaper.failed_events([record("req-1", crashed), record("req-9", other), {"body": "not json"}])
    assert outcome == {"failed": 1}
    record_ = stack.queue._table.get(crashed)
    assert record_["status"] == "failed" and "Lambda gave up" in record_["error"]["evalue"]
    assert stack.queue._table.get(other)["status"] == "running"
    check_invariants(stack.settings)
