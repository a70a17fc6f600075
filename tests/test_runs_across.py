"""GET /_notebooks/runs: the caller's runs across notebooks, newest first, filtered by
status or notebook, paged like List, at a cost that does not grow with stored runs."""

import base64
import json
import uuid

import boto3
import pytest

from devstack.stack import provision
from tests.conftest import error
from tests.helpers import AwsCalls
from tests.test_runs import BASE, notebook_of, run_all

pytest_plugins = ["tests.test_runs"]  # its fixtures: dispatched, executor

RUNS = "/_notebooks/runs"


def start(api, notebook_id, user="admin"):
    body = {"nbkIds": [notebook_id], "module": "m"}
    return api.json("POST", BASE + "/_run", body, user=user)["runs"][0]["run_id"]


def every_page(api, query, user="admin"):
    """All runs of a listing, following X-Next-Token; and how many pages it took."""
    runs, token, pages = [], None, 0
    while True:
        path = RUNS + "?" + query + (f"&next_token={token}" if token else "")
        response = api.call("GET", path, user=user)
        assert response.status_code == 200, response.body
        runs += json.loads(response.body)
        pages += 1
        token = response.headers.get("X-Next-Token")
        if not token:
            return runs, pages


def test_runs_across_notebooks_newest_first_by_status_and_notebook(api, stack, dispatched, executor):
    good = api.create(content=notebook_of("print('ok')"))["notebook_id"]
    bad = api.create(content=notebook_of("raise ValueError('no')"))["notebook_id"]
    succeeded, failed = start(api, good), start(api, bad)
    run_all(executor, dispatched)
    queued = start(api, good)  # dispatched, never executed: stays queued
    bobs = start(api, api.create(user="bob", content=notebook_of("1"))["notebook_id"], user="bob")

    everything = api.json("GET", RUNS)
    assert [run["run_id"] for run in everything] == [queued, failed, succeeded]
    assert [run["status"] for run in everything] == ["queued", "failed", "succeeded"]
    assert everything[1] == api.json("GET", f"{RUNS}/{failed}")  # the run object, as Get answers it
    assert [run["run_id"] for run in api.json("GET", RUNS + "?status=failed")] == [failed]
    assert [run["run_id"] for run in api.json("GET", RUNS + "?status=succeeded")] == [succeeded]
    assert [run["run_id"] for run in api.json("GET", RUNS + "?status=queued")] == [queued]
    assert api.json("GET", RUNS + "?status=running") == []
    assert [run["run_id"] for run in api.json("GET", f"{RUNS}?notebook_id={good}")] == [queued, succeeded]
    assert [run["run_id"] for run in api.json("GET", f"{RUNS}?notebook_id={good}&status=queued")] == [queued]
    assert [run["run_id"] for run in api.json("GET", RUNS, user="bob")] == [bobs]
    assert api.json("GET", RUNS + "?status=&notebook_id=") == everything  # an empty filter is none

    # A run that ends moves between the status listings.
    run_all(executor, dispatched)
    assert api.json("GET", RUNS + "?status=queued", user="admin") == []
    assert [run["run_id"] for run in api.json("GET", RUNS + "?status=succeeded")] == [queued, succeeded]


def test_runs_across_notebooks_page_with_the_next_token(api, stack, dispatched):
    notebook_ids = [api.create()["notebook_id"] for _ in range(3)]
    started = [start(api, notebook_id) for notebook_id in notebook_ids for _ in range(2)]
    runs, pages = every_page(api, "limit=4")
    assert [run["run_id"] for run in runs] == started[::-1] and pages == 2
    runs, pages = every_page(api, "limit=1&status=queued")
    assert [run["run_id"] for run in runs] == started[::-1] and pages in (6, 7)
    first = api.call("GET", RUNS + "?limit=2")
    token = first.headers["X-Next-Token"]
    # Another user's token, or a forged one, is refused before anything is read.
    assert error(api.call("GET", f"{RUNS}?next_token={token}", user="bob")) == (400, "next_token is invalid")
    assert error(api.call("GET", f"{RUNS}?status=queued&next_token={token}")) == (400, "next_token is invalid")
    assert error(api.call("GET", f"{RUNS}?next_token=bm90LWpzb24")) == (400, "next_token is invalid")


def test_a_notebooks_runs_in_a_status_fill_each_page(api, stack, dispatched, executor):
    """Of one notebook, a status page holds `limit` matching runs while more match: the
    runs of other statuses in between never make a short or empty page."""
    notebook_id = api.create(content=notebook_of("print('ok')"))["notebook_id"]
    succeeded = [start(api, notebook_id) for _ in range(3)]
    run_all(executor, dispatched)
    queued = start(api, notebook_id)  # newest: queued, then the three succeeded
    query = f"notebook_id={notebook_id}&status=succeeded&limit=1"
    first = api.call("GET", f"{RUNS}?{query}")
    assert [run["run_id"] for run in json.loads(first.body)] == [succeeded[-1]]
    runs, pages = every_page(api, query)
    assert [run["run_id"] for run in runs] == succeeded[::-1] and pages in (3, 4)
    runs, _ = every_page(api, f"notebook_id={notebook_id}&status=succeeded&limit=2")
    assert [run["run_id"] for run in runs] == succeeded[::-1]
    assert [run["run_id"] for run in every_page(api, f"notebook_id={notebook_id}&status=queued&limit=1")[0]] == [queued]
    assert api.json("GET", f"{RUNS}?notebook_id={notebook_id}&status=failed&limit=1") == []


def test_a_notebooks_status_page_reads_what_it_holds_when_it_matches(api, stack, dispatched):
    """A status page of one notebook reads as many runs as it holds, widening only while
    it is short: limit=1 over 30 queued runs reads what limit=1 without status reads."""
    notebook_id = api.create()["notebook_id"]
    for _ in range(30):
        start(api, notebook_id)
    costs = []
    for query in ("limit=1", "status=queued&limit=1"):
        with AwsCalls() as calls:
            page = api.call("GET", f"{RUNS}?notebook_id={notebook_id}&{query}")
        assert page.status_code == 200 and len(json.loads(page.body)) == 1
        costs.append(calls.items_read)
    assert costs[0] == costs[1], costs


def token(key: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def test_forged_tokens_out_of_range_are_400s_not_500s(api):
    """Values DynamoDB would refuse (a number past 38 digits, a sort key past 1 KB) are
    refused before they reach it."""
    run_id = str(uuid.uuid4())
    notebook_id = api.create()["notebook_id"]
    for query, key in [
        ("", {"run_id": run_id, "created_at": 10**40, "owner": "admin"}),
        ("status=queued&", {"run_id": run_id, "created_at": -1, "owner_status": "admin#queued"}),
        (f"notebook_id={notebook_id}&", {"owner": "admin", "sk": f"run#{notebook_id}#" + "9" * 2000}),
    ]:
        response = api.call("GET", f"{RUNS}?{query}next_token={token(key)}")
        assert error(response) == (400, "next_token is invalid"), query
        response = api.call("GET", f"{BASE}/{notebook_id}/runs?next_token={token(key)}")
        assert error(response) == (400, "next_token is invalid"), query


@pytest.mark.parametrize(
    "query, message",
    [
        ("status=done", "status must be one of queued, running, succeeded, failed, cancelled"),
        ("limit=0", None),
        ("limit=", "limit must be an integer from 1 to 1000"),  # as List reads it
        ("notebook_id=not-an-id", "Notebook ID invalid."),
    ],
)
def test_bad_queries_are_400s(api, query, message):
    status, text = error(api.call("GET", f"{RUNS}?{query}"))
    assert status == 400 and (message is None or text == message), text


def test_another_users_notebook_is_answered_as_unknown(api):
    bobs = api.create(user="bob")["notebook_id"]
    assert error(api.call("GET", f"{RUNS}?notebook_id={bobs}")) == (400, "Notebook ID invalid.")


def seed_runs(stack, owner, count):
    """`count` ended runs of one notebook of `owner`, written straight into the runs table."""
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(stack.settings.runs_table)
    notebook_id = str(uuid.uuid4())
    with table.batch_writer() as batch:
        for index in range(count):
            batch.put_item(
                Item={
                    "run_id": str(uuid.uuid4()),
                    "notebook_id": notebook_id,
                    "owner": owner,
                    "owner_status": f"{owner}#succeeded",
                    "status": "succeeded",
                    "trigger": "manual",
                    "created_at": 1_700_000_000_000 + index,
                    "parameters": "{}",
                }
            )


def test_a_page_costs_the_same_at_10_and_1000_stored_runs(api, stack):
    """The same calls, reading the same items, for a page whatever is stored, of this
    owner or another."""
    costs = []
    for added in (10, 990):  # 10 stored runs each, then 1,000
        seed_runs(stack, "admin", added)
        seed_runs(stack, "bob", added)
        with AwsCalls() as calls:
            page = api.call("GET", RUNS + "?limit=10&status=succeeded")
        assert page.status_code == 200 and len(json.loads(page.body)) == 10
        costs.append((dict(calls.calls), calls.items_read))
    assert costs[0] == costs[1], costs


def test_a_local_stacks_state_from_before_the_status_index_gets_it_with_its_runs_keyed(api, stack, dispatched):
    """`make dev` on state saved by an earlier version: its runs table lacks the index, and
    its runs the key; provisioning adds both, and the status listing finds those runs."""
    run_id = start(api, api.create()["notebook_id"])
    client = boto3.client("dynamodb", region_name="us-east-1")
    runs_table = stack.settings.runs_table
    client.update_table(
        TableName=runs_table, GlobalSecondaryIndexUpdates=[{"Delete": {"IndexName": "by_owner_status"}}]
    )
    client.update_item(TableName=runs_table, Key={"run_id": {"S": run_id}}, UpdateExpression="REMOVE owner_status")
    indexes = client.describe_table(TableName=runs_table)["Table"]["GlobalSecondaryIndexes"]
    assert "by_owner_status" not in {index["IndexName"] for index in indexes}

    provision(stack.settings)

    assert [run["run_id"] for run in api.json("GET", RUNS + "?status=queued")] == [run_id]
    # A start cut short after adding the index: the next one keys the runs still.
    client.update_item(TableName=runs_table, Key={"run_id": {"S": run_id}}, UpdateExpression="REMOVE owner_status")
    provision(stack.settings)
    assert [run["run_id"] for run in api.json("GET", RUNS + "?status=queued")] == [run_id]
