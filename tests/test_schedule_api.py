"""Schedule and Unschedule over HTTP, and scheduled events reaching the runner handler."""

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import boto3
import nbformat
import pytest

from chalicelib.runner.notebook_runner import NotebookRunner
from chalicelib.schedules.cron import cron_times
from tests.conftest import error
from tests.test_runs import notebook_of, stream_text

BASE = "/_notebooks/notebooks"


def future(days=30) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).strftime("%Y-%m-%d %H:%M")


def next_monday_0650_utc(now: datetime) -> int:
    """Epoch ms of the first Monday 06:50 UTC after `now`, read off the calendar."""
    day = now.replace(hour=6, minute=50, second=0, microsecond=0)
    while day.weekday() != 0 or day <= now:
        day += timedelta(days=1)
    return int(day.timestamp()) * 1000


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
    # The seed's three fields as given, and the zone (the deployment's: UTC) and next run.
    assert fetched["schedule"] == {
        "period": "Monday",
        "time": "06:50",
        "until": until,
        "timezone": "UTC",
        "next_run": next_monday_0650_utc(datetime.now(timezone.utc)),
        "parameters": {},
    }
    assert api.json("GET", BASE + "/_all")[0]["schedule"] == {"period": "Monday", "time": "06:50", "until": until}
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


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"until": "2020-01-01 00:00"}, "until"),
        ({}, "until"),
        ({"until": "tomorrow"}, "until"),
        ({"until": "{future}", "period": "Funday"}, "period"),
        ({"until": "{future}", "time": "25:00"}, "time"),
        ({"until": "{future}", "time": 650}, "time"),
        ({"until": "{future}", "timezone": "Mars/Olympus"}, "timezone"),
        ({"until": "{future}", "timezone": "../../etc/passwd"}, "timezone"),
        ({"until": "{future}", "timezone": 5}, "timezone"),
    ],
)
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
        400,
        "Notebook ID invalid.",
    )
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
    yield stack.executor_on(runner)
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
    assert executor.handle(scheduled_event(notebook_id)) == {"status": "idle"}
    assert len(api.json("GET", f"{BASE}/{notebook_id}/runs")) == 1


def test_a_schedule_keeps_its_parameters_shows_them_and_every_firing_runs_with_them(api, executor):
    """Schedule's `parameters` are checked as a Run's are (a 400 naming the parameter, and
    nothing scheduled), shown in Fetch's schedule, and given to the run each firing makes;
    scheduling again without them replaces them."""
    content = notebook_of("print(f'n={n} label={label}')", parameters_cell="n: int = 1\nlabel: str = 'x'")
    notebook_id = api.create(content=content)["notebook_id"]
    body = {"nbk_ids": [notebook_id], "until": future()}
    for parameters, named in [({"m": 1}, "m"), ({"n": "five"}, "n")]:
        status, message = error(api.call("POST", BASE + "/_schedule", {**body, "parameters": parameters}))
        assert status == 400 and named in message, message
        assert api.json("GET", f"{BASE}/{notebook_id}")["status"] == "Not Scheduled" and rule_names() == []
    assert api.json("POST", BASE + "/_schedule", {**body, "parameters": {"n": 5, "label": "weekly"}}) == "Success"
    assert api.json("GET", f"{BASE}/{notebook_id}")["schedule"]["parameters"] == {"n": 5, "label": "weekly"}
    outcome = executor.handle(scheduled_event(notebook_id))
    assert outcome["status"] == "succeeded"
    run = api.json("GET", f"/_notebooks/runs/{outcome['run_id']}")
    assert run["trigger"] == "schedule" and run["parameters"] == {"n": 5, "label": "weekly"}
    output = api.json("GET", f"/_notebooks/runs/{outcome['run_id']}/output")
    assert "n=5 label=weekly" in stream_text(output)
    assert api.json("POST", BASE + "/_schedule", body) == "Success"
    assert api.json("GET", f"{BASE}/{notebook_id}")["schedule"]["parameters"] == {}


def test_a_firing_whose_parameters_the_notebook_no_longer_declares_fails_naming_them(api, executor):
    """The content changed after the schedule was set: its firing ends `failed` before the
    notebook starts, as a Run with those parameters would be refused, not run with
    parameters papermill would inject anyway."""
    content = notebook_of("print(f'n={n}')", parameters_cell="n: int = 1")
    notebook_id = api.create(content=content)["notebook_id"]
    body = {"nbk_ids": [notebook_id], "until": future(), "parameters": {"n": 2}}
    assert api.json("POST", BASE + "/_schedule", body) == "Success"
    api.json("PUT", f"{BASE}/{notebook_id}/content", notebook_of("print('no parameters now')"))
    outcome = executor.handle(scheduled_event(notebook_id))
    assert outcome["status"] == "failed"
    run = api.json("GET", f"/_notebooks/runs/{outcome['run_id']}")
    assert run["error"]["ename"] == "InvalidParameters"
    assert run["error"]["evalue"] == "Unknown parameter 'n': the notebook's parameters cell does not declare it"
    assert error(api.call("GET", f"/_notebooks/runs/{outcome['run_id']}/output"))[0] == 404  # never started


def test_the_first_firing_past_until_removes_the_schedule_and_runs_nothing(api, stack, executor):
    notebook_id = api.create()["notebook_id"]
    api.json("POST", BASE + "/_schedule", {"nbk_ids": [notebook_id], "until": future(days=1)})
    later = time.time() + 2 * 86400
    stack.scheduler._clock = stack.scheduler._locks._clock = lambda: later
    stack.notebooks._clock = lambda: later
    assert api.json("GET", f"{BASE}/{notebook_id}")["status"] == "Not Scheduled"  # before the firing, too
    assert executor.handle(scheduled_event(notebook_id)) == {"status": "skipped"}
    assert rule_names() == []
    assert api.json("GET", f"{BASE}/{notebook_id}/runs") == []


def test_a_firing_for_an_unscheduled_notebook_runs_nothing(api, executor):
    notebook_id = api.create()["notebook_id"]
    assert executor.handle(scheduled_event(notebook_id)) == {"status": "skipped"}
    assert api.json("GET", f"{BASE}/{notebook_id}/runs") == []


def test_a_schedule_in_a_time_zone_shows_it_and_its_next_run(api):
    notebook_id = api.create()["notebook_id"]
    until = (datetime.now(ZoneInfo("Australia/Sydney")) + timedelta(days=400)).strftime("%Y-%m-%d %H:%M")
    body = {
        "nbk_ids": [notebook_id],
        "period": "Monday",
        "time": "08:00",
        "until": until,
        "timezone": "Australia/Sydney",
    }
    assert api.json("POST", BASE + "/_schedule", body) == "Success"
    schedule = api.json("GET", f"{BASE}/{notebook_id}")["schedule"]
    assert {k: schedule[k] for k in ("period", "time", "until", "timezone")} == {
        "period": "Monday",
        "time": "08:00",
        "until": until,
        "timezone": "Australia/Sydney",
    }
    local = datetime.fromtimestamp(schedule["next_run"] / 1000, ZoneInfo("Australia/Sydney"))
    assert (local.weekday(), local.strftime("%H:%M")) == (0, "08:00")
    assert 0 < schedule["next_run"] / 1000 - time.time() <= 7 * 86400
    [rule] = boto3.client("events", region_name="us-east-1").list_rules(NamePrefix="notebooks-")["Rules"]
    # Monday 08:00 in Sydney is Sunday 21:00 UTC in summer, 22:00 in winter: until is past both.
    assert rule["ScheduleExpression"] == "cron(0 21,22 ? * SUN *)"


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "zone, period, hhmm", [("America/New_York", "Monday", "09:00"), ("Australia/Sydney", "Monday", "08:00")]
)
def test_the_runner_makes_one_run_a_week_for_a_year_at_the_local_minute(api, stack, executor, zone, period, hhmm):
    """Every firing of the notebook's rule over 2026 reaches the runner's handler, and each
    one that makes a run around the DST changes is delivered again, and once more late, as
    EventBridge may: one run
    a week, at `hhmm` local on `period`. (test_cron drives more zones through the same
    decision, WallClock.due, without AWS.)"""
    clock = Clock(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp())
    stack.scheduler._clock = stack.scheduler._locks._clock = clock
    stack.notebooks._clock = stack.runs._clock = clock
    stack.runs.starter._clock = stack.runs.starter.run_dispatch._clock = clock
    notebook_id = api.create()["notebook_id"]
    body = {"nbk_ids": [notebook_id], "period": period, "time": hhmm, "until": "2027-01-01 00:00", "timezone": zone}
    assert api.json("POST", BASE + "/_schedule", body) == "Success"
    events = boto3.client("events", region_name="us-east-1")
    expression = events.describe_rule(Name=f"notebooks-{notebook_id}")["ScheduleExpression"]
    firings = list(
        cron_times(expression, datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2027, 1, 1, tzinfo=timezone.utc))
    )
    assert len(firings) == 104  # two UTC hours a week; the one that is not 09:00 local runs nothing
    runs = {}
    for firing in firings:
        clock.now = firing.timestamp() + 7  # seconds into the minute, as EventBridge delivers
        run_id = executor.record_firing("admin", notebook_id)
        if run_id is None:
            continue
        runs[run_id] = stack.runs.get("admin", run_id)["created_at"]
        if firing.month not in (3, 4, 10, 11):  # moto is slow: redeliveries around the DST changes only
            continue
        for delay in (9, 95):  # the same event again, and once more late
            clock.now = firing.timestamp() + delay
            assert executor.record_firing("admin", notebook_id) == run_id
    assert len(runs) == 52
    assert int(stack.notebooks._table.get("admin", notebook_id)["no_of_runs"]) == 52
    for created_at in runs.values():
        local = datetime.fromtimestamp(created_at / 1000, ZoneInfo(zone))
        assert local.strftime("%A %H:%M") == f"{period} {hhmm}", local
