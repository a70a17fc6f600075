"""Faults: every AWS call of every operation failed in turn.

For each operation and each step k (the k-th AWS call it makes), the k-th call fails
(throttling, a 5xx or a timeout, in turn); the answer must be an error in the seed's
shape (503), the stored state must keep its invariants, and the same request again
must complete the operation.
"""

import time
from datetime import datetime, timezone

import nbformat
import pytest

from chalicelib import services
from chalicelib.api.requests import CreateRequest, IdsRequest, ScheduleRequest, WebhookRequest
from chalicelib.runner.notebook_runner import NotebookRunner
from chalicelib.schedules import locks as schedule_locks
from chalicelib.storage.files import output_key
from tests.conftest import error
from tests.helpers import TALLY, FaultInjector, check_invariants

BASE = "/_notebooks/notebooks"
UNTIL = "2099-01-01 00:00"
RUNNER_ARN = "arn:aws:lambda:us-east-1:123456789012:function:notebooks-dev-runner"
# Lambda's answer to an Event invocation (moto cannot run the function without Docker).
INVOKE_REPLY = {"StatusCode": 202}


@pytest.fixture
def faults(stack, aws_env):
    """A FaultInjector on the project's clients, built afresh after it is installed."""
    aws_env.setenv("NOTEBOOKS_RUNNER_ARN", RUNNER_ARN)  # no STS lookup on the first Schedule only
    services.reset()
    injector = FaultInjector(stubs={"Invoke": INVOKE_REPLY})
    injector.install()
    injector.service = services.get()
    return injector


def one_cell_notebook():
    return nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("print(6 * 7)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )


def new_notebook(service, **fields):
    return service.notebooks.create("admin", CreateRequest(**fields))["notebook_id"]


def scheduled_notebook(service):
    notebook_id = new_notebook(service)
    service.scheduler.schedule("admin", ScheduleRequest([notebook_id], until=UNTIL))
    return notebook_id


def notebook_with_everything(service):
    """Scheduled, with a run record and a run output: what Delete must all remove."""
    notebook_id = scheduled_notebook(service)
    run = service.run_dispatch.record("admin", notebook_id, "manual", module="m")
    service.files.put(output_key("admin", notebook_id, run["run_id"]), b"{}")
    return notebook_id


WEBHOOK = {"url": "https://93.184.216.34/hook", "secret": "s", "events": ["failed"]}


def notebook_with_webhook(service):
    notebook_id = new_notebook(service)
    service.webhooks.put("admin", notebook_id, WebhookRequest(**WEBHOOK))
    return notebook_id


def is_unlock(call) -> bool:
    """The release of a schedule lock: best effort, its lease frees it when it fails."""
    name, params = call
    return name in ("dynamodb.UpdateItem", "dynamodb.TransactWriteItems") and b"REMOVE schedule_lock" in params.get(
        "body", b""
    )


def is_dispatch(call) -> bool:
    """Lambda's Invoke of a Run: a failure fails the run (DispatchError), as answered."""
    return call[0] == "lambda.Invoke"


# name: (set-up returning the request's arguments, request, faults a success may absorb)
API_OPERATIONS = {
    "create": (lambda s: ("POST", BASE + "/", {"notebook_name": "fresh", "content": one_cell_notebook()}), ()),
    "rename": (lambda s: ("PUT", f"{BASE}/{new_notebook(s)}", {"new_name": "renamed"}), ()),
    "content PUT": (lambda s: ("PUT", f"{BASE}/{new_notebook(s)}/content", one_cell_notebook()), ()),
    "delete": (lambda s: ("DELETE", BASE + "/", {"nbk_ids": [notebook_with_everything(s)]}), (is_unlock,)),
    "run": (lambda s: ("POST", BASE + "/_run", {"nbkIds": [new_notebook(s)], "module": "m"}), (is_dispatch,)),
    "schedule": (lambda s: ("POST", BASE + "/_schedule", {"nbk_ids": [new_notebook(s)], "until": UNTIL}), (is_unlock,)),
    "unschedule": (lambda s: ("POST", BASE + "/_unschedule", {"nbk_ids": [scheduled_notebook(s)]}), (is_unlock,)),
    "webhook PUT": (lambda s: ("PUT", f"{BASE}/{new_notebook(s)}/webhook", WEBHOOK), ()),
    "webhook DELETE": (lambda s: ("DELETE", f"{BASE}/{notebook_with_webhook(s)}/webhook", None), ()),
}


def clean(service):
    """Empty the stores between steps, so each step starts from the same state."""
    for owner in ("admin", "bob"):
        ids = [item["notebook_id"] for item in service.notebooks._table.all(owner)]
        if ids:
            service.notebooks.delete(owner, IdsRequest(ids))


@pytest.mark.parametrize("operation", list(API_OPERATIONS))
def test_every_aws_call_of_an_api_operation_failed_in_turn(api, faults, operation):
    set_up, absorbable = API_OPERATIONS[operation]
    service = faults.service
    api.json("GET", BASE + "/_count")  # authentication's first check is cached from here on
    k = 0
    while True:
        k += 1
        clean(service)
        method, path, body = set_up(service)
        fault = FaultInjector.FAULTS[k % len(FaultInjector.FAULTS)]
        faults.arm(fail_at=k, fault=fault)
        response = api.call(method, path, body)
        calls = faults.calls
        faults.arm()
        if len(calls) < k:  # the operation made fewer than k calls: every step was tried
            assert 200 <= response.status_code < 300, (operation, response.body)
            break
        failed_call = calls[k - 1]
        if not 200 <= response.status_code < 300:
            status, message = error(response)
            assert status == 503 and "unavailable" in message, (operation, k, failed_call, status, message)
        else:
            assert any(absorbs(failed_call) for absorbs in absorbable), (operation, k, failed_call, response.body)
        check_invariants(service.settings)
        if is_unlock(failed_call):  # the lock is held until its lease ends: repeat after it
            lease_ended = time.time() + schedule_locks.LOCK_LEASE_MS / 1000
            service.scheduler._clock = service.scheduler._locks._clock = lambda at=lease_ended: at
        repeated = api.call(method, path, body)
        service.scheduler._clock = service.scheduler._locks._clock = time.time
        assert 200 <= repeated.status_code < 300, (operation, k, "the repeat failed", repeated.body)
        check_invariants(service.settings, settled=True)
        assert api.json("GET", BASE + "/_count")["Total Notebooks"] == len(service.notebooks._table.all("admin"))
    TALLY["fault steps"] += k - 1
    TALLY["fault operations"] += 1
    assert k > 3, f"{operation} made only {k - 1} AWS calls: is the injector on the project's clients?"


@pytest.fixture
def executor(faults):
    runner = NotebookRunner(run_timeout=30)
    yield faults.service.executor_on(runner)
    runner.close()


def queued_run(service):
    """A run queued, and the drain the API sends for it."""
    notebook_id = new_notebook(service, content=one_cell_notebook())
    return {"drain": {"run_id": service.run_dispatch.record("admin", notebook_id, "manual", module="m")["run_id"]}}


def schedule_firing(service):
    notebook_id = new_notebook(service, content=one_cell_notebook())
    # Daily at this minute, so that the firing below is at a due occurrence.
    now = datetime.now(timezone.utc).strftime("%H:%M")
    service.scheduler.schedule("admin", ScheduleRequest([notebook_id], until=UNTIL, time=now))
    return {"notebook_id": notebook_id, "owner": "admin", "trigger": "schedule"}


@pytest.mark.parametrize("operation, set_up", [("runner drain", queued_run), ("schedule firing", schedule_firing)])
def test_every_aws_call_of_the_runner_failed_in_turn(faults, executor, operation, set_up):
    """A real kernel runs a one-cell notebook at every step. The faulted invocation is
    delivered again, as Lambda retries a failed asynchronous invocation: afterwards every
    run has ended, none is stuck queued or running."""
    service = faults.service
    k = 0
    while True:
        k += 1
        clean(service)
        event = set_up(service)
        faults.arm(fail_at=k, fault=FaultInjector.FAULTS[k % len(FaultInjector.FAULTS)])
        try:
            executor.handle(event)
        except Exception:  # noqa: BLE001 - Lambda records the failure and delivers again
            pass
        calls = faults.calls
        faults.arm()
        check_invariants(service.settings)
        executor.handle(event)
        ended = [run["status"] for run in aws_runs(service)]
        assert ended and set(ended) <= {"succeeded", "failed"}, (operation, k, calls[k - 1 : k], ended)
        if len(calls) < k:
            assert ended == ["succeeded"]
            break
        check_invariants(service.settings, settled=True)
    TALLY["fault steps"] += k - 1
    TALLY["fault operations"] += 1
    assert k > 3


def aws_runs(service):
    table = service.notebooks._table
    pointers = [
        pointer for item in table.all("admin") for pointer in table.all_run_pointers("admin", item["notebook_id"])
    ]
    return list(service.runs._table.get_many(pointer["run_id"] for pointer in pointers).values())
