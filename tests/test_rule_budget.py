"""The rule budget: the deployment's scheduled notebooks, all users together, stay within
NOTEBOOKS_MAX_SCHEDULED_TOTAL (one EventBridge rule each, below the account's quota)."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from chalicelib.api.errors import from_domain
from chalicelib.api.requests import CreateRequest, IdsRequest
from chalicelib.common import errors
from chalicelib.storage.tables import DEPLOYMENT
from tests.test_schedules import NOW, PREFIX, UNTIL, Clock, make_scheduler, rules

OWNERS = ["admin", "bob", "carol", "dave", "erin"]


@pytest.fixture
def events(stack):
    return boto3.client("events", region_name="us-east-1")


def deployment_scheduled(stack) -> int:
    return int(stack.notebooks._table.counts(DEPLOYMENT).get("scheduled", 0))


def test_fifty_concurrent_schedules_from_five_users_fill_a_budget_of_twenty_exactly(stack, events):
    settings = dataclasses.replace(stack.settings, max_scheduled_total=20, max_scheduled=15)
    scheduler = make_scheduler(stack, events, Clock(NOW), settings)
    wanted = [
        (owner, stack.notebooks.create(owner, CreateRequest())["notebook_id"]) for owner in OWNERS for _ in range(10)
    ]

    def schedule(entry):
        owner, notebook_id = entry
        try:
            scheduler.schedule(owner, {"nbk_ids": [notebook_id], "until": UNTIL})
            return None
        except errors.DomainError as error:
            answer = from_domain(error)  # what the API's edge answers
            return answer.status, answer.message

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(schedule, wanted))
    refusals = [outcome for outcome in outcomes if outcome is not None]
    assert len(wanted) - len(refusals) == 20
    assert {status for status, _ in refusals} == {400}
    assert all("The deployment's limit of 20 scheduled notebooks is reached" in message for _, message in refusals)
    scheduled = {
        PREFIX + notebook_id
        for owner, notebook_id in wanted
        if stack.notebooks._table.get(owner, notebook_id).get("schedule")
    }
    assert set(rules(events)) == scheduled and len(scheduled) == 20  # nothing leaks: a rule per stored schedule
    assert deployment_scheduled(stack) == 20
    assert sum(stack.notebooks.count(owner)["Scheduled"] for owner in OWNERS) == 20


def test_unschedule_expiry_and_delete_give_the_budget_back(stack, events):
    clock = Clock(NOW)
    settings = dataclasses.replace(stack.settings, max_scheduled_total=3)
    scheduler = make_scheduler(stack, events, clock, settings)
    ids = [stack.notebooks.create("bob", CreateRequest())["notebook_id"] for _ in range(4)]
    scheduler.schedule("bob", {"nbk_ids": ids[:3], "until": UNTIL})
    assert deployment_scheduled(stack) == 3
    other = stack.notebooks.create("admin", CreateRequest())["notebook_id"]
    with pytest.raises(errors.InvalidInput) as refused:
        scheduler.schedule("admin", {"nbk_ids": [other], "until": UNTIL})
    assert from_domain(refused.value).status == 400 and "limit of 3 scheduled notebooks" in refused.value.message
    assert deployment_scheduled(stack) == 3
    scheduler.unschedule("bob", {"nbk_ids": [ids[0]]})
    assert deployment_scheduled(stack) == 2
    stack.notebooks.delete("bob", IdsRequest([ids[1]]))
    assert deployment_scheduled(stack) == 1
    clock.now = NOW + 120 * 24 * 3600  # long past `until`: the next firing expires the schedule
    assert scheduler.due_occurrence("bob", ids[2]) is None
    assert deployment_scheduled(stack) == 0
    scheduler.schedule("bob", {"nbk_ids": [ids[3]], "until": "2030-09-01 09:15"})
    assert deployment_scheduled(stack) == 1 and set(rules(events)) == {PREFIX + ids[3]}


def test_a_request_over_the_budget_is_refused_before_any_aws_call(stack, events, monkeypatch):
    settings = dataclasses.replace(stack.settings, max_scheduled_total=1)
    scheduler = make_scheduler(stack, events, Clock(NOW), settings)
    ids = [stack.notebooks.create("bob", CreateRequest())["notebook_id"] for _ in range(2)]
    monkeypatch.setattr(events, "put_rule", lambda **kwargs: pytest.fail("an AWS call before the 400"))
    with pytest.raises(errors.InvalidInput) as refused:
        scheduler.schedule("bob", {"nbk_ids": ids, "until": UNTIL})
    assert from_domain(refused.value).status == 400
    assert refused.value.message.startswith("The deployment's limit of 1 scheduled notebooks is reached")
