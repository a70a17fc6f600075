"""Schedules: one EventBridge rule per scheduled notebook (moto), and the local EventBridge clock."""

import dataclasses
import json
import random
import threading
import uuid
from datetime import datetime, timezone

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from chalicelib.api.requests import CreateRequest, IdsRequest
from chalicelib.common import errors
from chalicelib.schedules.locks import ScheduleLocks
from chalicelib.schedules.rules import ScheduleRules
from chalicelib.schedules.scheduler import LocalEventClock, Scheduler
from tests.helpers import BodyCalls, stored_state

ARN = "arn:aws:lambda:us-east-1:123456789012:function:notebooks-dev-runner"
PREFIX = "notebooks-"
QUOTA_MESSAGE = "Error occurred during request processing: EventBridge rule quota reached (LimitExceededException)"


def epoch(text: str) -> float:
    """Epoch seconds of a UTC "YYYY-MM-DD HH:MM[:SS]"."""
    form = "%Y-%m-%d %H:%M:%S" if text.count(":") == 2 else "%Y-%m-%d %H:%M"
    return datetime.strptime(text, form).replace(tzinfo=timezone.utc).timestamp()


NOW = epoch("2030-01-01 12:00")  # a Tuesday
UNTIL = "2030-03-01 09:15"


class Clock:
    """A settable clock, shared by the scheduler and the notebook service."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Proxy:
    """The real events client with some methods replaced."""

    def __init__(self, real, **replaced):
        self._real = real
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(self._real, name)


def with_quota(events, limit: int) -> Proxy:
    """The events client with a rule quota as AWS enforces it: creating a rule beyond `limit` fails,
    overwriting an existing one does not."""

    def put_rule(**kwargs):
        names = {rule["Name"] for rule in events.list_rules()["Rules"]}
        if kwargs["Name"] not in names and len(names) >= limit:
            raise ClientError({"Error": {"Code": "LimitExceededException", "Message": "quota"}}, "PutRule")
        return events.put_rule(**kwargs)

    return Proxy(events, put_rule=put_rule)


@pytest.fixture
def clock(stack):
    clock = Clock(NOW)
    stack.notebooks._clock = clock
    return clock


@pytest.fixture
def events(stack):
    return boto3.client("events", region_name="us-east-1")


def make_rules(stack, events, settings=None) -> ScheduleRules:
    return ScheduleRules(events, stack.notebooks._table, settings or stack.settings, runner_arn=lambda: ARN)


def make_scheduler(stack, events, clock, settings=None) -> Scheduler:
    table, settings = stack.notebooks._table, settings or stack.settings
    scheduler = Scheduler(
        make_rules(stack, events, settings),
        stack.notebooks,
        table,
        ScheduleLocks(table, clock=clock),
        settings,
        dispatcher=stack.dispatcher,
        clock=clock,
    )
    stack.notebooks.add_dependent(scheduler)
    return BodyCalls(scheduler, settings)


@pytest.fixture
def bare_events(aws_env):
    """Moto's EventBridge alone, for the local clock: no tables, no users."""
    with mock_aws():
        yield boto3.client("events", region_name="us-east-1")


@pytest.fixture
def scheduler(stack, events, clock):
    return make_scheduler(stack, events, clock)


def new(stack, owner="admin") -> str:
    return stack.notebooks.create(owner, CreateRequest())["notebook_id"]


def rules(events) -> dict:
    """{rule name: (expression, state, [(target id, arn, input)])} of every rule with the prefix."""
    pages = events.get_paginator("list_rules").paginate(NamePrefix=PREFIX)
    return {
        rule["Name"]: (
            rule["ScheduleExpression"],
            rule["State"],
            [
                (target["Id"], target["Arn"], json.loads(target["Input"]))
                for target in events.list_targets_by_rule(Rule=rule["Name"])["Targets"]
            ],
        )
        for page in pages
        for rule in page["Rules"]
    }


def snapshot(stack, events) -> tuple:
    return stored_state(stack.settings), rules(events)


def runner_target(notebook_id, owner="admin") -> list:
    return [("runner", ARN, {"notebook_id": notebook_id, "owner": owner, "trigger": "schedule"})]


def refused(call, *args) -> str:
    """The message of the 400 that `call(*args)` raises."""
    with pytest.raises(errors.InvalidInput) as raised:
        call(*args)
    return raised.value.message


# --- Schedule -----------------------------------------------------------------------


def test_schedule_builds_the_rule_its_runner_target_and_the_stored_schedule(stack, scheduler, events):
    notebook_id, other = new(stack), new(stack)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL, "period": "Monday", "time": "06:50"})

    assert rules(events) == {PREFIX + notebook_id: ("cron(50 6 ? * MON *)", "ENABLED", runner_target(notebook_id))}
    assert make_rules(stack, events).rule_name(notebook_id) == PREFIX + notebook_id
    fetched = stack.notebooks.fetch("admin", notebook_id)
    assert fetched["status"] == "Scheduled"
    assert fetched["schedule"] == {
        "period": "Monday",
        "time": "06:50",
        "until": UNTIL,
        "timezone": "UTC",
        "next_run": epoch("2030-01-07 06:50") * 1000,
        "parameters": {},
    }  # NOW is a Tuesday
    assert stack.notebooks.fetch("admin", other)["status"] == "Not Scheduled"
    assert stack.notebooks.count("admin") == {"Total Notebooks": 2, "Not Scheduled": 1, "Scheduled": 1}
    stored = stack.notebooks._table.get("admin", notebook_id)
    assert stored["schedule"]["until_ms"] == epoch(UNTIL) * 1000
    assert (stored["updated_at"], stored["updated_by"]) == (NOW * 1000, "admin")


def test_omitted_period_is_daily_and_omitted_time_is_until_time_of_day(stack, scheduler, events):
    cases = [
        (
            {"time": "06:50"},
            "cron(50 6 * * ? *)",
            {"period": None, "time": "06:50"},  # no period: daily
            "2030-01-02 06:50",
        ),
        (
            {"period": "fRiDaY"},
            "cron(15 9 ? * FRI *)",
            {"period": "fRiDaY", "time": None},  # no time: until's
            "2030-01-04 09:15",
        ),
        ({}, "cron(15 9 * * ? *)", {"period": None, "time": None}, "2030-01-02 09:15"),
    ]
    for fields, expression, shown, next_run in cases:
        notebook_id = new(stack)
        scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL, **fields})
        assert rules(events)[PREFIX + notebook_id][0] == expression, fields
        assert stack.notebooks.fetch("admin", notebook_id)["schedule"] == {
            **shown,
            "until": UNTIL,
            "timezone": "UTC",
            "next_run": epoch(next_run) * 1000,
            "parameters": {},
        }, fields


def test_schedule_times_are_in_the_deployment_time_zone(stack, events, clock):
    scheduler = make_scheduler(stack, events, clock, dataclasses.replace(stack.settings, timezone="Asia/Kolkata"))
    notebook_id = new(stack)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL, "period": "Monday", "time": "00:30"})
    assert rules(events)[PREFIX + notebook_id][0] == "cron(0 19 ? * SUN *)"  # Monday 00:30 IST
    assert stack.notebooks._table.get("admin", notebook_id)["schedule"]["until_ms"] == epoch("2030-03-01 03:45") * 1000


def test_ids_in_any_case_and_repeated_name_one_notebook_and_one_lowercase_rule(stack, events, clock):
    put_rules = []
    counting = Proxy(events, put_rule=lambda **kwargs: (put_rules.append(kwargs["Name"]), events.put_rule(**kwargs))[1])
    scheduler = make_scheduler(stack, counting, clock)
    notebook_id = new(stack)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id.upper(), notebook_id], "until": UNTIL})
    assert put_rules == [PREFIX + notebook_id]
    assert rules(events) == {PREFIX + notebook_id: ("cron(15 9 * * ? *)", "ENABLED", runner_target(notebook_id))}
    assert stack.notebooks.fetch("admin", notebook_id)["status"] == "Scheduled"


def test_rescheduling_replaces_the_schedule(stack, scheduler, events):
    notebook_id = new(stack)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL, "period": "Monday", "time": "06:50"})
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": "2030-06-01 00:00", "time": "18:05"})
    assert rules(events) == {PREFIX + notebook_id: ("cron(5 18 * * ? *)", "ENABLED", runner_target(notebook_id))}
    assert stack.notebooks.fetch("admin", notebook_id)["schedule"] == {
        "period": None,
        "time": "18:05",
        "until": "2030-06-01 00:00",
        "timezone": "UTC",
        "next_run": epoch("2030-01-01 18:05") * 1000,
        "parameters": {},
    }


def test_each_bad_field_is_a_400_naming_it_and_changes_nothing(stack, scheduler, events):
    kept, notebook_id = new(stack), new(stack)
    scheduler.schedule("admin", {"nbk_ids": [kept], "until": UNTIL, "period": "Monday"})
    before = snapshot(stack, events)
    cases = [
        ({}, "until"),
        ({"until": "2030-13-01 00:00"}, "until"),
        ({"until": "tomorrow"}, "until"),
        ({"until": 1893456000}, "until"),
        ({"until": "2029-12-31 23:59"}, "until"),  # in the past
        ({"until": "2030-01-01 12:00"}, "until"),  # now is not the future
        ({"until": UNTIL, "period": "Funday"}, "period"),
        ({"until": UNTIL, "period": 1}, "period"),
        ({"until": UNTIL, "time": "24:00"}, "time"),
        ({"until": UNTIL, "time": "6:50"}, "time"),
        ({"until": UNTIL, "timezone": "Mars/Olympus"}, "timezone"),
        ({"until": UNTIL, "timezone": ["Europe/London"]}, "timezone"),
    ]
    for fields, field in cases:
        message = refused(scheduler.schedule, "admin", {"nbk_ids": [kept, notebook_id], **fields})
        assert message.startswith(field), (fields, message)
        assert snapshot(stack, events) == before, fields


def test_an_id_not_the_callers_is_notebook_id_invalid_and_changes_nothing(stack, scheduler, events):
    kept, notebook_id = new(stack), new(stack)
    scheduler.schedule("admin", {"nbk_ids": [kept], "until": UNTIL, "period": "Monday"})
    bad_ids = (str(uuid.uuid4()), new(stack, "bob"), "not-a-uuid")
    before = snapshot(stack, events)
    for bad_id in bad_ids:
        for operation, extra in ((scheduler.schedule, {"until": UNTIL, "time": "07:00"}), (scheduler.unschedule, {})):
            body = {"nbk_ids": [kept, notebook_id, bad_id], **extra}
            assert refused(operation, "admin", body) == "Notebook ID invalid.", (operation, bad_id)
            assert snapshot(stack, events) == before, (operation, bad_id)


def test_missing_or_malformed_id_list_is_a_400(stack, scheduler, events):
    before = snapshot(stack, events)
    cases = [
        ({}, "Notebook IDs are required"),
        ({"nbk_ids": []}, "Notebook IDs are required"),
        ({"nbk_ids": "abc"}, "nbk_ids must be a list"),
    ]
    for body, message in cases:
        for operation, extra in ((scheduler.schedule, {"until": UNTIL}), (scheduler.unschedule, {})):
            assert refused(operation, "admin", {**body, **extra}).startswith(message), (operation, body)
    assert snapshot(stack, events) == before


def test_a_notebook_deleted_while_being_scheduled_keeps_no_rule(stack, scheduler, events, monkeypatch):
    doomed, kept = new(stack), new(stack)
    table = stack.notebooks._table
    real_write = table.set_schedules

    def deleted_first(owner, entries, *args):
        # a Delete lands between our rules and our metadata write
        table.mark_deleting(owner, [table.get(owner, doomed)])
        monkeypatch.setattr(table, "set_schedules", real_write)
        return real_write(owner, entries, *args)

    monkeypatch.setattr(table, "set_schedules", deleted_first)
    scheduler.schedule("admin", {"nbk_ids": [doomed, kept], "until": UNTIL})
    assert set(rules(events)) == {PREFIX + kept}
    assert stack.notebooks.count("admin") == {"Total Notebooks": 1, "Not Scheduled": 0, "Scheduled": 1}


def test_a_firing_between_the_rule_and_the_stored_schedule_leaves_both(stack, scheduler, events, clock, monkeypatch):
    """A Schedule request writes the rule before the stored schedule. A firing in between
    (a rule due this very minute, or a 1,000-id request taking seconds) waits for the
    notebook's lock, finds the schedule stored, keeps the rule and runs the occurrence."""
    notebook_id = new(stack)
    table = stack.notebooks._table
    real_write = table.set_schedules
    fired = {}

    def firing_first(owner, entries, *args):
        monkeypatch.setattr(table, "set_schedules", real_write)
        firing = threading.Thread(target=lambda: fired.update(due=scheduler.due_occurrence("admin", notebook_id)))
        firing.start()
        firing.join(0.5)
        assert firing.is_alive(), "the firing did not wait for the request's lock"
        fired["thread"] = firing
        return real_write(owner, entries, *args)

    monkeypatch.setattr(table, "set_schedules", firing_first)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL, "time": "12:00"})
    fired["thread"].join(30)
    assert fired["due"].at_ms == NOW * 1000  # NOW is 12:00
    assert rules(events) == {PREFIX + notebook_id: ("cron(0 12 * * ? *)", "ENABLED", runner_target(notebook_id))}
    assert stack.notebooks.fetch("admin", notebook_id)["status"] == "Scheduled"


def test_a_firing_between_a_reschedules_rule_and_its_stored_schedule_runs_the_new_occurrence(
    stack, scheduler, events, clock, monkeypatch
):
    """The same window in a reschedule (09:00 to 12:00): the firing of the new rule reads
    the old schedule, which is not due, but sees the change under way and reads again
    under the lock. (Found by review.)"""
    notebook_id = new(stack)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL, "time": "09:00"})
    table = stack.notebooks._table
    real_write = table.set_schedules
    fired = {}

    def firing_first(owner, entries, *args):
        monkeypatch.setattr(table, "set_schedules", real_write)
        fired["thread"] = threading.Thread(
            target=lambda: fired.update(due=scheduler.due_occurrence("admin", notebook_id))
        )
        fired["thread"].start()
        fired["thread"].join(0.5)
        return real_write(owner, entries, *args)

    monkeypatch.setattr(table, "set_schedules", firing_first)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL, "time": "12:00"})
    fired["thread"].join(30)
    assert fired["due"].at_ms == NOW * 1000
    assert set(rules(events)) == {PREFIX + notebook_id}


# --- AWS refusing: all or nothing ---------------------------------------------------


def _refuse_targets(events, rule):
    def put_targets(**kwargs):
        if kwargs["Rule"] == rule:
            raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "PutTargets")
        return events.put_targets(**kwargs)

    return Proxy(events, put_targets=put_targets)


def _report_failed_target(events, rule):
    def put_targets(**kwargs):
        if kwargs["Rule"] == rule:
            return {
                "FailedEntryCount": 1,
                "FailedEntries": [
                    {"TargetId": "runner", "ErrorCode": "ConcurrentModificationException", "ErrorMessage": "busy"}
                ],
            }
        return events.put_targets(**kwargs)

    return Proxy(events, put_targets=put_targets)


@pytest.mark.parametrize(
    "failure, message",
    [
        ("quota", QUOTA_MESSAGE),
        ("targets_raise", "Error occurred during request processing: AWS refused PutTargets (AccessDeniedException)"),
        (
            "targets_report",
            "Error occurred during request processing: AWS refused PutTargets (ConcurrentModificationException)",
        ),
        (
            "metadata",
            "Error occurred during request processing: AWS refused TransactWriteItems "
            "(ItemCollectionSizeLimitExceededException)",
        ),
    ],
)
def test_aws_refusing_midway_rolls_the_whole_request_back(stack, events, clock, monkeypatch, failure, message):
    """The 2nd notebook of the request fails: the 1st (new) loses its rule, and the 3rd
    (never reached) and a previously scheduled one keep their rules and stored schedules."""
    first, failing, previous = new(stack), new(stack), new(stack)
    make_scheduler(stack, events, clock).schedule(
        "admin", {"nbk_ids": [previous], "until": UNTIL, "period": "Monday", "time": "06:50"}
    )
    clock.now += 60
    settings = None
    if failure == "quota":
        client = with_quota(events, limit=2)  # `previous` and `first`: `failing` is one rule too many
        settings = dataclasses.replace(stack.settings, aws_concurrency=1)  # the proxy counts rules, then adds
    elif failure == "targets_raise":
        client = _refuse_targets(events, PREFIX + failing)
    elif failure == "targets_report":
        client = _report_failed_target(events, PREFIX + failing)
    else:
        client = events
        table, real_transact = stack.notebooks._table, stack.notebooks._table.transact

        def throttled(owner, actions, tally=None):
            if any(
                action.get("Update", {}).get("Key", {}).get("sk") == "nb#" + failing
                and "schedule" in action["Update"].get("ExpressionAttributeNames", {}).values()
                for action in actions
            ):
                raise ClientError(
                    {"Error": {"Code": "ItemCollectionSizeLimitExceededException", "Message": "full"}},
                    "TransactWriteItems",
                )
            return real_transact(owner, actions, tally)

        monkeypatch.setattr(table, "transact", throttled)
    scheduler = make_scheduler(stack, client, clock, settings)
    before = snapshot(stack, events)

    body = {"nbk_ids": [first, failing, previous], "until": "2030-06-01 00:00", "period": "Friday"}
    assert refused(scheduler.schedule, "admin", body) == message
    assert snapshot(stack, events) == before
    assert set(before[1]) == {PREFIX + previous}
    assert stack.notebooks.fetch("admin", previous)["schedule"] == {
        "period": "Monday",
        "time": "06:50",
        "until": UNTIL,
        "timezone": "UTC",
        "next_run": epoch("2030-01-07 06:50") * 1000,
        "parameters": {},
    }


def test_rolling_back_restores_a_rescheduled_notebooks_previous_rule(stack, events, clock):
    """The failing notebook itself was scheduled: its overwritten rule gets its old expression back."""
    first, failing = new(stack), new(stack)
    make_scheduler(stack, events, clock).schedule(
        "admin", {"nbk_ids": [failing], "until": UNTIL, "period": "Monday", "time": "06:50"}
    )
    scheduler = make_scheduler(stack, _refuse_targets(events, PREFIX + failing), clock)
    before = snapshot(stack, events)
    assert refused(scheduler.schedule, "admin", {"nbk_ids": [first, failing], "until": UNTIL}).endswith(
        "(AccessDeniedException)"
    )
    assert snapshot(stack, events) == before
    assert before[1][PREFIX + failing][0] == "cron(50 6 ? * MON *)"


# --- Unschedule and delete ----------------------------------------------------------


def test_unschedule_removes_rule_target_and_schedule_and_twice_is_fine(stack, scheduler, events):
    notebook_id, other, never = new(stack), new(stack), new(stack)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id, other], "until": UNTIL})
    scheduler.unschedule("admin", {"nbk_ids": [notebook_id, never]})
    assert set(rules(events)) == {PREFIX + other}
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        events.list_targets_by_rule(Rule=PREFIX + notebook_id)
    fetched = stack.notebooks.fetch("admin", notebook_id)
    assert fetched["status"] == "Not Scheduled"
    assert fetched["schedule"] == {"period": None, "time": None, "until": None}
    assert "schedule" not in stack.notebooks._table.get("admin", notebook_id)
    scheduler.unschedule("admin", {"nbk_ids": [notebook_id]})
    assert set(rules(events)) == {PREFIX + other}
    assert stack.notebooks.count("admin")["Scheduled"] == 1


def test_deleting_a_notebook_removes_its_rule(stack, scheduler, events):
    notebook_id, other = new(stack), new(stack)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id, other], "until": UNTIL})
    stack.notebooks.delete("admin", IdsRequest([notebook_id]))
    assert set(rules(events)) == {PREFIX + other}
    scheduler.forget_notebooks("admin", [{"notebook_id": notebook_id, "schedule": {"until": UNTIL}}])  # again: no error


# --- One change at a time per notebook -------------------------------------------------


def test_a_schedule_change_waits_for_the_notebooks_lock_and_gives_up_with_a_409(
    stack, scheduler, events, clock, monkeypatch
):
    notebook_id = new(stack)
    table, other_request = stack.notebooks._table, ScheduleLocks(stack.notebooks._table, clock=clock)
    assert other_request.lock("admin", notebook_id, "other-request", int(clock.now * 1000), 30_000)
    monkeypatch.setattr("chalicelib.schedules.locks._LOCK_WAIT_SECONDS", 0.2)
    before = snapshot(stack, events)
    with pytest.raises(errors.Conflict) as raised:
        scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL})
    assert "try again" in raised.value.message
    assert snapshot(stack, events) == before
    other_request.unlock("admin", notebook_id, "other-request")
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL})
    assert set(rules(events)) == {PREFIX + notebook_id}
    assert "schedule_lock" not in table.get("admin", notebook_id)  # released after use


def test_a_lock_whose_holder_died_is_taken_over_after_its_lease(stack, scheduler, events, clock):
    notebook_id = new(stack)
    crashed = ScheduleLocks(stack.notebooks._table, clock=clock)
    crashed.lock("admin", notebook_id, "crashed-request", int(clock.now * 1000) - 31_000, 30_000)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL})
    assert set(rules(events)) == {PREFIX + notebook_id}


# --- Until ----------------------------------------------------------------------------


def test_until_at_and_around_its_minute(stack, scheduler, events, clock):
    """The view reads Not Scheduled from `until` on; the occurrence in `until`'s own minute
    still runs (until 13:00 includes the 13:00 run), even delivered late; a firing more than
    cron.LATE_SECONDS after `until` expires the schedule; one at no occurrence just skips."""
    due = epoch("2030-01-01 13:00") * 1000
    for now, shown_scheduled, runs, kept in [
        ("2030-01-01 12:30:00", True, None, True),  # before the occurrence: not due yet
        ("2030-01-01 12:59:30", True, due, True),  # a clock a little ahead
        ("2030-01-01 13:00:00", False, due, True),
        ("2030-01-01 13:00:59", False, due, True),
        ("2030-01-01 13:15:00", False, due, True),  # late by LATE_SECONDS: still runs
        ("2030-01-01 13:15:01", False, None, False),
        ("2030-01-08 13:00:00", False, None, False),
    ]:
        clock.now = NOW
        notebook_id = new(stack)
        scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": "2030-01-01 13:00"})
        clock.now = epoch(now)
        # The view alone already says Not Scheduled once until has passed, rule or not.
        status = stack.notebooks.fetch("admin", notebook_id)["status"]
        assert status == ("Scheduled" if shown_scheduled else "Not Scheduled"), now
        assert set(rules(events)) == {PREFIX + notebook_id}, now
        firing = scheduler.due_occurrence("admin", notebook_id)
        assert (firing and firing.at_ms) == runs, now
        assert set(rules(events)) == ({PREFIX + notebook_id} if kept else set()), now
        assert ("schedule" in stack.notebooks._table.get("admin", notebook_id)) is kept, now
        assert stack.notebooks.count("admin")["Scheduled"] == (1 if shown_scheduled else 0), now
        stack.notebooks.delete("admin", IdsRequest([notebook_id]))


def test_expiry_keeps_a_schedule_replaced_since_it_was_read(stack, scheduler, events, clock, monkeypatch):
    notebook_id = new(stack)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": "2030-01-01 13:00"})
    clock.now = epoch("2030-01-01 13:16")  # past until and its late deliveries
    table, real_get = stack.notebooks._table, stack.notebooks._table.get

    def read_then_rescheduled(owner, nid):
        item = real_get(owner, nid)
        monkeypatch.setattr(table, "get", real_get)
        scheduler.schedule(owner, {"nbk_ids": [nid], "until": UNTIL, "time": "08:00"})
        return item  # the expired schedule, as read just before the reschedule landed

    monkeypatch.setattr(table, "get", read_then_rescheduled)
    assert scheduler.due_occurrence("admin", notebook_id) is None
    assert rules(events) == {PREFIX + notebook_id: ("cron(0 8 * * ? *)", "ENABLED", runner_target(notebook_id))}
    assert stack.notebooks.fetch("admin", notebook_id)["schedule"]["until"] == UNTIL


def test_an_event_with_no_schedule_behind_it_is_skipped_and_its_rule_removed(stack, scheduler, events):
    unscheduled, deleted = new(stack), new(stack)
    stack.notebooks.delete("admin", IdsRequest([deleted]))
    for notebook_id in (unscheduled, deleted):  # leftovers, e.g. of an unschedule that failed midway
        events.put_rule(Name=PREFIX + notebook_id, ScheduleExpression="cron(0 8 * * ? *)", State="ENABLED")
        events.put_targets(Rule=PREFIX + notebook_id, Targets=[{"Id": "runner", "Arn": ARN, "Input": "{}"}])
    assert scheduler.due_occurrence("admin", unscheduled) is None
    assert scheduler.due_occurrence("admin", deleted) is None
    assert scheduler.due_occurrence("admin", "not-a-uuid") is None
    assert rules(events) == {}


def test_a_schedule_stored_before_time_zones_fires_as_its_utc_cron_says(stack, scheduler, events, clock):
    """Recorded without `timezone` (before zones existed): Fetch shows timezone null and the
    next run from its cron; every firing of its one-time rule runs, once per minute."""
    notebook_id = new(stack)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL, "period": "Monday", "time": "06:50"})
    table = stack.notebooks._table
    table._table.update_item(
        Key=table.key("admin", notebook_id),
        UpdateExpression="REMOVE #s.#z",
        ExpressionAttributeNames={"#s": "schedule", "#z": "timezone"},
    )
    assert stack.notebooks.fetch("admin", notebook_id)["schedule"] == {
        "period": "Monday",
        "time": "06:50",
        "until": UNTIL,
        "timezone": None,
        "next_run": epoch("2030-01-07 06:50") * 1000,
        "parameters": {},
    }
    clock.now = epoch("2030-01-07 06:50:30")
    assert scheduler.due_occurrence("admin", notebook_id).at_ms == epoch("2030-01-07 06:50") * 1000
    clock.now = epoch("2030-01-08 11:00:30")  # as before zones: a firing at any time runs
    assert scheduler.due_occurrence("admin", notebook_id).at_ms == epoch("2030-01-08 11:00") * 1000


def test_rule_prefix_must_leave_room_for_the_id_within_64_characters(stack, events):
    longest = make_rules(stack, events, dataclasses.replace(stack.settings, rule_prefix="p" * 28))
    assert len(longest.rule_name(str(uuid.uuid4()))) == 64
    for prefix in ("p" * 29, "bad/prefix-"):
        with pytest.raises(ValueError, match="NOTEBOOKS_RULE_PREFIX"):
            make_rules(stack, events, dataclasses.replace(stack.settings, rule_prefix=prefix))


# --- The orphan invariant -------------------------------------------------------------


def test_rules_always_match_the_scheduled_notebooks(stack, events, clock):
    """A seeded random walk of creates, (re)schedules, unschedules, deletes and expiries, under
    a rule quota small enough to be hit: after every step the rules with the prefix are
    exactly the stored schedules' rules, each with its expression and one runner target."""
    rng = random.Random(20300101)
    scheduler = make_scheduler(stack, with_quota(events, limit=5), clock)
    owned = {"admin": [], "bob": []}
    days = ("monday", "Tue", "FRIDAY", None)
    outcomes = set()
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(stack.settings.notebooks_table)
    for _ in range(200):
        owner = rng.choice(list(owned))
        mine = owned[owner]
        action = rng.choice(["create", "schedule", "schedule", "schedule", "unschedule", "delete", "expire"])
        ids = rng.sample(mine, rng.randint(1, min(3, len(mine)))) if mine else []
        if action == "create" or not ids:
            mine.append(new(stack, owner))
        elif action == "expire":  # a firing: at the next occurrence half the time, else at any time later
            next_run = stack.notebooks.fetch(owner, ids[0])["schedule"].get("next_run")
            if next_run and rng.random() < 0.5:
                clock.now = next_run / 1000
            else:
                clock.now += rng.choice([600, 3600, 86400])
            outcomes.add(("expired", scheduler.due_occurrence(owner, ids[0]) is None))
        else:
            if rng.random() < 0.1:  # someone else's id: refused, and nothing changes
                ids.append(rng.choice(owned["bob" if owner == "admin" else "admin"] or [str(uuid.uuid4())]))
            until = datetime.fromtimestamp(clock.now + rng.randint(2, 72) * 3600, timezone.utc)
            body = {"nbk_ids": ids}  # Delete's and Unschedule's whole body
            if action == "schedule":
                body.update(
                    until=until.strftime("%Y-%m-%d %H:%M"), period=rng.choice(days), time=rng.choice(["06:50", None])
                )
            try:
                if action == "delete":
                    # another's id in the list is passed over
                    stack.notebooks.delete(owner, IdsRequest.parse(body, stack.settings))
                    mine[:] = [notebook_id for notebook_id in mine if notebook_id not in ids]
                else:
                    getattr(scheduler, action)(owner, body)
                outcomes.add((action, "ok"))
            except errors.DomainError as error:
                outcomes.add((action, error.message))
        expected = {
            PREFIX + item["notebook_id"]: (
                item["schedule"]["expression"],
                "ENABLED",
                runner_target(item["notebook_id"], item["owner"]),
            )
            for item in table.scan()["Items"]
            if "schedule" in item
        }
        assert rules(events) == expected
    # The walk did reach the cases it is meant to cover.
    assert {
        ("schedule", "ok"),
        ("schedule", QUOTA_MESSAGE),
        ("schedule", "Notebook ID invalid."),
        ("unschedule", "ok"),
        ("delete", "ok"),
        ("expired", True),
        ("expired", False),
    } <= outcomes


# --- LocalEventClock --------------------------------------------------------------------


def put_rule(events, name, expression, payload, state="ENABLED"):
    events.put_rule(Name=name, ScheduleExpression=expression, State=state)
    text = payload if isinstance(payload, str) else json.dumps(payload)
    events.put_targets(Rule=name, Targets=[{"Id": "runner", "Arn": ARN, "Input": text}])


def test_tick_fires_at_the_due_minute_once_and_again_next_week(bare_events):
    put_rule(bare_events, PREFIX + "weekly", "cron(50 6 ? * MON *)", {"n": 1})
    fired = []
    clock = LocalEventClock(bare_events, PREFIX, fired.append)
    # 2030-01-07 is a Monday.
    assert clock.tick(epoch("2030-01-07 06:49:59")) == []
    assert clock.tick(epoch("2030-01-07 06:50:00")) == [(PREFIX + "weekly", {"n": 1})]
    assert clock.tick(epoch("2030-01-07 06:50:59")) == []  # same minute: not twice
    assert clock.tick(epoch("2030-01-07 06:51:00")) == []
    assert clock.tick(epoch("2030-01-08 06:50:00")) == []  # Tuesday
    assert clock.tick(epoch("2030-01-14 06:50:30")) == [(PREFIX + "weekly", {"n": 1})]
    assert fired == [{"n": 1}, {"n": 1}]


def test_tick_fires_a_daily_rule_every_day_and_weekday_rules_on_their_day_only(bare_events):
    put_rule(bare_events, PREFIX + "daily", "cron(0 9 * * ? *)", {"rule": "daily"})
    put_rule(bare_events, PREFIX + "friday", "cron(0 9 ? * FRI *)", {"rule": "friday"})
    clock = LocalEventClock(bare_events, PREFIX, lambda payload: None)
    fired = {day: [name for name, _ in clock.tick(epoch(f"2030-01-{day:02d} 09:00"))] for day in range(1, 8)}
    # 2030-01-03 is a Thursday, 01-04 a Friday.
    assert fired == {day: [PREFIX + "daily"] + ([PREFIX + "friday"] if day == 4 else []) for day in range(1, 8)}


def test_a_bad_rule_does_not_stop_the_good_ones(bare_events):
    put_rule(bare_events, PREFIX + "a-bad-expression", "cron(99 9 * * ? *)", {"rule": "a"})
    put_rule(bare_events, PREFIX + "b-bad-input", "cron(0 9 * * ? *)", "not json")
    put_rule(bare_events, PREFIX + "c-fire-raises", "cron(0 9 * * ? *)", {"boom": True})
    put_rule(bare_events, PREFIX + "d-disabled", "cron(0 9 * * ? *)", {"rule": "d"}, state="DISABLED")
    put_rule(bare_events, "other-prefix", "cron(0 9 * * ? *)", {"rule": "other"})
    put_rule(bare_events, PREFIX + "e-good", "cron(0 9 * * ? *)", {"rule": "e"})
    attempts = []

    def fire(payload):
        attempts.append(payload)
        if payload.get("boom"):
            raise RuntimeError("the runner refused")

    clock = LocalEventClock(bare_events, PREFIX, fire)
    assert clock.tick(epoch("2030-01-01 09:00")) == [(PREFIX + "e-good", {"rule": "e"})]
    assert attempts == [{"boom": True}, {"rule": "e"}]
    assert clock.tick(epoch("2030-01-01 09:00:40")) == []  # a failed target is not retried every tick
    assert attempts == [{"boom": True}, {"rule": "e"}]


def test_tick_remembers_fired_minutes_for_a_bounded_time(bare_events):
    put_rule(bare_events, PREFIX + "every-minute", "cron(* * * * ? *)", {})
    clock = LocalEventClock(bare_events, PREFIX, lambda payload: None)
    start = epoch("2030-01-01 00:00")
    fired = sum(len(clock.tick(start + minute * 60 + 5)) for minute in range(150))
    assert fired == 150
    assert len(clock._done) <= 61  # an hour's worth, not everything since start


def test_a_scheduled_notebook_fires_its_runner_input_on_the_local_clock(stack, scheduler, events):
    notebook_id = new(stack)
    scheduler.schedule("admin", {"nbk_ids": [notebook_id], "until": UNTIL, "period": "Monday", "time": "06:50"})
    fired = []
    LocalEventClock(events, PREFIX, fired.append).tick(epoch("2030-01-07 06:50:02"))
    assert fired == [{"notebook_id": notebook_id, "owner": "admin", "trigger": "schedule"}]


def test_the_thread_fires_within_seconds_and_survives_a_failing_tick(bare_events):
    put_rule(bare_events, PREFIX + "daily", "cron(0 9 * * ? *)", {"rule": "daily"})
    failures = [RuntimeError("embedded AWS not up yet")]

    def get_paginator(name):
        if failures:
            raise failures.pop()
        return bare_events.get_paginator(name)

    done = threading.Event()
    fired = []
    clock = LocalEventClock(
        Proxy(bare_events, get_paginator=get_paginator),
        PREFIX,
        lambda payload: (fired.append(payload), done.set()),
        clock=lambda: epoch("2030-01-01 09:00:01"),
    )
    clock.start()
    try:
        assert done.wait(5)
    finally:
        thread = clock._thread
        clock.stop()
    assert not thread.is_alive()
    assert fired == [{"rule": "daily"}] and not failures
