"""Schedule and Unschedule over HTTP, and scheduled events reaching the runner handler."""
import time
from datetime import datetime, timedelta, timezone

import boto3
import nbformat
import pytest

from chalicelib.runner import NotebookRunner
from chalicelib.runs import RunExecutor
from tests.conftest import error

BASE = "/_notebooks/notebooks"


def future(days=30) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).strftime("%Y-%m-%d %H:%M")


def rule_names():
    events = boto3.client("events", region_name="us-east-1")
    return sorted(rule["Name"] for rule in events.list_rules(NamePrefix="notebooks-")["Rules"])


def test_seed_schedule_and_unschedule_samples_sent_with_get(api):
    notebook_id = api.create()["notebook_id"]
    until = future()
    body = {"nbk_ids": [notebook_id], "period": "Monday", "time": "06:50", "until": until}
    assert api.json("GET", BASE + "/_schedule", body) == "Success"
    fetched = api.json("GET", f"{BASE}/{notebook_id}")
    assert fetched["status"] == "Scheduled"
    assert fetched["schedule"] == {"period": "Monday", "time": "06:50", "until": until}
    assert api.json("GET", BASE + "/_count") == {"Total Notebooks": 1, "Not Scheduled": 0, "Scheduled": 1}
    assert api.json("GET", BASE + "/_all")[0]["status"] == "Scheduled"
    assert rule_names() == [f"notebooks-{notebook_id}"]

    assert api.json("GET", BASE + "/_unschedule", {"nbk_ids": [notebook_id]}) == "Success"
    fetched = api.json("GET", f"{BASE}/{notebook_id}")
    assert fetched["status"] == "Not Scheduled"
    assert fetched["schedule"] == {"period": None, "until": None, "time": None}
    assert rule_names() == []


def test_schedule_and_unschedule_accept_post(api):
    notebook_id = api.create()["notebook_id"]
    assert api.json("POST", BASE + "/_schedule", {"nbk_ids": [notebook_id], "until": future()}) == "Success"
    assert api.json("POST", BASE + "/_unschedule", {"nbk_ids": [notebook_id]}) == "Success"


@pytest.mark.parametrize("fields, field", [
    ({"until": "2020-01-01 00:00"}, "until"), ({}, "until"), ({"until": "tomorrow"}, "until"),
    ({"until": "{future}", "period": "Funday"}, "period"), ({"until": "{future}", "time": "25:00"}, "time"),
    ({"until": "{future}", "time": 650}, "time"),
])
def test_bad_schedule_fields_are_400s_naming_the_field(api, fields, field):
    notebook_id = api.create()["notebook_id"]
    body = {"nbk_ids": [notebook_id], **{k: (future() if v == "{future}" else v) for k, v in fields.items()}}
    status, message = error(api.call("POST", BASE + "/_schedule", body))
    assert status == 400 and field in message
    assert message.startswith("Error occurred during request processing: ")
    assert api.json("GET", f"{BASE}/{notebook_id}")["status"] == "Not Scheduled" and rule_names() == []


def test_schedule_of_another_users_notebook_is_refused(api):
    notebook_id = api.create()["notebook_id"]
    body = {"nbk_ids": [notebook_id], "until": future()}
    assert error(api.call("POST", BASE + "/_schedule", body, user="bob")) == (400, "Notebook ID invalid.")
    assert error(api.call("POST", BASE + "/_unschedule", {"nbk_ids": [notebook_id]}, user="bob")) == (
        400, "Notebook ID invalid.")
    assert error(api.call("POST", BASE + "/_schedule", {"until": future()})) == (400, "Notebook IDs are required")
    assert rule_names() == []


def test_deleting_a_scheduled_notebook_removes_its_rule(api):
    notebook_id = api.create()["notebook_id"]
    api.json("POST", BASE + "/_schedule", {"nbk_ids": [notebook_id], "until": future()})
    api.json("DELETE", BASE, {"nbk_ids": [notebook_id]})
    assert rule_names() == []


@pytest.fixture
def executor(stack):
    runner = NotebookRunner(run_timeout=20)
    yield RunExecutor(stack.runs, stack.files, stack.scheduler, runner)
    runner.close()


def scheduled_event(notebook_id):
    return {"notebook_id": notebook_id, "owner": "admin", "trigger": "schedule"}


def test_a_schedule_firing_is_an_ordinary_run_with_trigger_schedule(api, executor):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('weekly')")])
    notebook_id = api.create(content=notebook)["notebook_id"]
    api.json("POST", BASE + "/_schedule", {"nbk_ids": [notebook_id], "until": future()})
    outcome = executor.handle(scheduled_event(notebook_id))
    assert outcome["status"] == "succeeded"
    [run] = api.json("GET", f"{BASE}/{notebook_id}/runs")
    assert run["run_id"] == outcome["run_id"] and run["trigger"] == "schedule" and run["status"] == "succeeded"
    assert api.json("GET", f"{BASE}/{notebook_id}")["no_of_runs"] == 1
    # EventBridge delivering the same firing twice still makes one run
    assert executor.handle(scheduled_event(notebook_id)) == {"run_id": outcome["run_id"], "status": "skipped"}
    assert len(api.json("GET", f"{BASE}/{notebook_id}/runs")) == 1


def test_the_first_firing_past_until_removes_the_schedule_and_runs_nothing(api, stack, executor):
    notebook_id = api.create()["notebook_id"]
    api.json("POST", BASE + "/_schedule", {"nbk_ids": [notebook_id], "until": future(days=1)})
    later = time.time() + 2 * 86400
    stack.scheduler._clock = lambda: later
    stack.notebooks._clock = lambda: later
    assert api.json("GET", f"{BASE}/{notebook_id}")["status"] == "Not Scheduled"  # before the firing, too
    assert executor.handle(scheduled_event(notebook_id)) == {"status": "skipped"}
    assert rule_names() == []
    assert api.json("GET", f"{BASE}/{notebook_id}/runs") == []


def test_a_firing_for_an_unscheduled_notebook_runs_nothing(api, executor):
    notebook_id = api.create()["notebook_id"]
    assert executor.handle(scheduled_event(notebook_id)) == {"status": "skipped"}
    assert api.json("GET", f"{BASE}/{notebook_id}/runs") == []
