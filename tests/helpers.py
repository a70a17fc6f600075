"""Helpers shared by test modules (and `make bench`): snapshots of everything stored,
the invariants every operation must leave behind, a fault injector for AWS calls, AWS
calls counted, notebooks written straight into the tables."""

import collections
import threading
import time
import uuid

import boto3
import botocore.client
import botocore.exceptions
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

from chalicelib.api import requests
from chalicelib.common import aws
from chalicelib.common.clock import now_ms
from chalicelib.runs.records import claim_changes

# What the hostile suites tried, printed at the end of the session (tests/conftest.py).
TALLY = {"fault operations": 0, "fault steps": 0, "race tries": 0, "requests fuzzed": 0}


def stored_state(settings) -> tuple:
    """(S3 objects with their ETags, every notebooks-table item): to prove nothing changed."""
    s3 = boto3.client("s3", region_name=settings.region)
    objects = sorted(
        (item["Key"], item["ETag"]) for item in s3.list_objects_v2(Bucket=settings.bucket).get("Contents", [])
    )
    table = boto3.resource("dynamodb", region_name=settings.region).Table(settings.notebooks_table)
    items = sorted(table.scan()["Items"], key=lambda item: (item["owner"], item["sk"]))
    return objects, items


def check_invariants(settings, settled: bool = False) -> None:
    """Assert what every operation must leave behind, whichever step failed:
    - every notebook file and run output has its notebook's item, and every live notebook
      its file;
    - names: every live notebook holds its name claim, every claim names its notebook;
    - schedules: every rule has a live notebook whose stored schedule it carries (with
      its runner target), and every stored schedule has its rule;
    - runs: every run's notebook exists, every queued or running run has a deadline (a
      path to an end), each notebook counts exactly the runs recorded for it, and every
      run has its pointer under its notebook, every pointer its run;
    - each owner's counters are a recount: live notebooks, stored schedules, queued or
      running runs, runs holding a runner slot; and the deployment's: stored schedules
      and runs holding a slot, of every owner.
    A notebook flagged `deleting` is half-deleted: the same Delete again finishes it, and
    with `settled` none may be left.
    """
    region = settings.region
    dynamodb = boto3.resource("dynamodb", region_name=region)
    s3 = boto3.client("s3", region_name=region)
    events = boto3.client("events", region_name=region)
    rows = dynamodb.Table(settings.notebooks_table).scan(ConsistentRead=True)["Items"]
    runs = dynamodb.Table(settings.runs_table).scan(ConsistentRead=True)["Items"]
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=settings.bucket).get("Contents", [])]
    notebooks = {(row["owner"], row["sk"][3:]): row for row in rows if row["sk"].startswith("nb#")}
    live = {key: row for key, row in notebooks.items() if not row.get("deleting")}
    claims = {(row["owner"], row["sk"][5:]): row["notebook_id"] for row in rows if row["sk"].startswith("name#")}
    if settled:
        assert live == notebooks, "a half-deleted notebook is left"
    files = {(key.split("/")[1], key.split("/")[2][: -len(".ipynb")]) for key in keys if key.startswith("notebooks/")}
    outputs = {(key.split("/")[1], key.split("/")[2]) for key in keys if key.startswith("runs/")}
    assert files <= set(notebooks), f"notebook files without metadata: {files - set(notebooks)}"
    assert set(live) <= files, f"notebooks without their file: {set(live) - files}"
    assert outputs <= set(notebooks), f"run outputs without their notebook: {outputs - set(notebooks)}"
    for (owner, notebook_id), row in live.items():
        assert claims.get((owner, row["notebook_name"])) == notebook_id, f"{notebook_id} lost its name claim"
    for (owner, name), notebook_id in claims.items():
        assert notebooks.get((owner, notebook_id), {}).get("notebook_name") == name, f"stray name claim {name}"
    rules = {rule["Name"]: rule for rule in events.list_rules(NamePrefix=settings.rule_prefix)["Rules"]}
    for name, rule in rules.items():
        notebook_id = name[len(settings.rule_prefix) :]
        owners = [row for (_, nid), row in notebooks.items() if nid == notebook_id]
        if owners and owners[0].get("deleting"):
            continue
        assert owners and owners[0].get("schedule"), f"rule {name} without a stored schedule"
        assert rule["ScheduleExpression"] == owners[0]["schedule"]["expression"], f"rule {name} is stale"
        assert [target["Id"] for target in events.list_targets_by_rule(Rule=name)["Targets"]] == ["runner"]
    for (_owner, notebook_id), row in live.items():
        if row.get("schedule"):
            assert settings.rule_prefix + notebook_id in rules, f"stored schedule of {notebook_id} without a rule"
    counted = {}
    for run in runs:
        key = (run["owner"], run["notebook_id"])
        assert key in notebooks, f"run {run['run_id']} without its notebook"
        counted[key] = counted.get(key, 0) + 1
        if run["status"] in ("queued", "running"):
            assert int(run["deadline_at"]) > 0, f"run {run['run_id']} has no path to an end"
    for key, row in live.items():
        assert int(row.get("no_of_runs", 0)) == counted.get(key, 0), f"no_of_runs of {key[1]} is not a recount"
    pointers = {(row["owner"], row["run_id"]) for row in rows if row["sk"].startswith("run#")}
    assert pointers == {(run["owner"], run["run_id"]) for run in runs}, "runs and their pointers differ"
    slotted = [run for run in runs if run["status"] == "running" and run.get("slot")]
    on_fargate = [run for run in slotted if run.get("engine") == "fargate"]
    deployment = next((row for row in rows if row["owner"] == "#deployment"), {})
    assert {name: int(deployment.get(name, 0)) for name in ("scheduled", "running", "fargate_running")} == {
        "scheduled": sum(1 for row in live.values() if row.get("schedule")),
        "running": len(slotted) - len(on_fargate),
        "fargate_running": len(on_fargate),
    }, "the deployment's counters"
    owners = {row["owner"] for row in rows if row["owner"] != "#deployment"} | {run["owner"] for run in runs}
    for owner in owners:
        counters = next((row for row in rows if row["owner"] == owner and row["sk"] == "#counts"), {})
        recount = {
            "notebooks": sum(1 for (who, _) in live if who == owner),
            "scheduled": sum(1 for (who, _), row in live.items() if who == owner and row.get("schedule")),
            "runs_active": sum(1 for run in runs if run["owner"] == owner and run["status"] in ("queued", "running")),
            "runs_running": sum(1 for run in slotted if run["owner"] == owner and run not in on_fargate),
            "fargate_running": sum(1 for run in on_fargate if run["owner"] == owner),
        }
        assert {name: int(counters.get(name, 0)) for name in recount} == recount, f"counters of {owner}"


def take(services, run_id: str):
    """A runner takes the queued run, as the fair queue's claim does (a slot of its pool,
    counted), whatever the per-user limit and the capacity: the test decides what runs.
    The run as taken, or None when it is not queued."""
    table = services.runs._table
    run = table.get(run_id)
    if run is None or run["status"] != "queued":
        return None
    started = now_ms(time.time)
    changes = claim_changes(run, started, services.settings.run_timeout)
    if table.claim(run, changes, running_limit=10**6, capacity=10**6, now_ms=started) is not None:
        return None
    return {**run, **changes, "slot": True}


class FaultInjector:
    """Fails the k-th AWS call of the project's own clients (chalicelib.common.aws), as botocore
    would after its retries: throttling, a 5xx, or a read timeout.

    A `before-call` handler on the boto3 session of chalicelib.common.aws, which every client
    made after `install` inherits; other clients (the tests' own boto3 calls) are not
    touched. `stubs` answers operations moto cannot serve (Lambda's Invoke runs no code
    without Docker) with a fixed reply, counted and faulted like any call.
    """

    FAULTS = ("throttling", "server", "timeout")

    def __init__(self, stubs=None):
        self.calls = []
        self._stubs = stubs or {}
        self._fail_at = None
        self._fault = None
        self._lock = threading.Lock()

    def install(self) -> None:
        """Hook the project's session; call before its clients are made (services.reset())."""
        aws._current_session().events.register("before-call", self._before_call)

    def arm(self, fail_at=None, fault: str = "throttling") -> None:
        """Count calls from zero; fail call number `fail_at` (1-based) with `fault`, if given."""
        with self._lock:
            self.calls, self._fail_at, self._fault = [], fail_at, fault

    def _before_call(self, model, params, **_):
        with self._lock:
            self.calls.append((f"{model.service_model.service_name}.{model.name}", params))
            failing = len(self.calls) == self._fail_at
        if failing:
            return self._failure(model)
        if model.name in self._stubs:
            return AWSResponse("https://aws.invalid", 200, {}, None), dict(self._stubs[model.name])
        return None

    def _failure(self, model):
        if self._fault == "timeout":
            raise ReadTimeoutError(endpoint_url=f"https://{model.service_model.endpoint_prefix}.aws.invalid")
        status, code = (400, "ThrottlingException") if self._fault == "throttling" else (500, "InternalServerError")
        body = {
            "Error": {"Code": code, "Message": f"injected fault: {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}},
        }
        return AWSResponse("https://aws.invalid", status, {}, None), body


def leftovers(settings) -> tuple:
    """`stored_state` less the per-user counters that read zero: what deleting everything leaves."""
    objects, items = stored_state(settings)
    counters = ("notebooks", "scheduled", "runs_active", "runs_running", "running", "fargate_running")
    zeroed = [
        item
        for item in items
        if item["sk"] == "#counts"
        and set(item) <= {"owner", "sk", "served_at", "fargate_served_at", *counters}
        and not any(item.get(name) for name in counters)
    ]
    return objects, [item for item in items if item not in zeroed]


class AwsCalls:
    """Counts every AWS call botocore makes, by (service, operation), and the DynamoDB
    items they read; optionally adds a fixed latency to each (as AWS's network would) or
    fails chosen calls. Use as a context manager; `reset()` starts counting again."""

    def __init__(self, latency: float = 0.0, fail=None, answers=None):
        self.latency = latency
        self.fail = fail  # fail(service, operation) -> True to raise instead of calling
        self.answers = answers or {}  # (service, operation) -> a response given instead of calling
        self.calls = collections.Counter()
        self.items_read = 0
        self.aws_seconds = 0.0  # time inside the AWS stand-in (moto), latency not included
        self._lock = threading.Lock()
        self._patch = None

    def __enter__(self):
        original = botocore.client.BaseClient._make_api_call
        recorder = self

        def counted(client, operation, params):
            service = client.meta.service_model.service_name
            with recorder._lock:
                recorder.calls[(service, operation)] += 1
            if recorder.fail and recorder.fail(service, operation):
                raise botocore.exceptions.ClientError(
                    {"Error": {"Code": "InternalServerError", "Message": "injected"}}, operation
                )
            if recorder.latency:
                time.sleep(recorder.latency)
            if (service, operation) in recorder.answers:
                return recorder.answers[(service, operation)]
            started = time.perf_counter()
            response = original(client, operation, params)
            with recorder._lock:
                recorder.aws_seconds += time.perf_counter() - started
                recorder.items_read += _items_in(operation, response)
            return response

        self._patch = (original, counted)
        botocore.client.BaseClient._make_api_call = counted
        return self

    def __exit__(self, *exc):
        botocore.client.BaseClient._make_api_call = self._patch[0]

    def reset(self):
        with self._lock:
            self.calls.clear()
            self.items_read = 0

    def total(self, service=None) -> int:
        return sum(n for (name, _), n in self.calls.items() if service in (None, name))


def _items_in(operation: str, response: dict) -> int:
    if operation == "GetItem":
        return 1 if response.get("Item") else 0
    if operation in ("Query", "Scan"):
        return response.get("ScannedCount", response.get("Count", 0))
    if operation == "BatchGetItem":
        return sum(len(items) for items in response.get("Responses", {}).values())
    return 0


def seed_notebooks(settings, owner: str, count: int, name_length: int = 0, start_ms: int = 1_700_000_000_000) -> list:
    """`count` notebooks of `owner` written straight into the tables (no files: enough for
    what reads metadata), with their name claims and counters, as the service writes them;
    names `name_length` characters long when given. Their ids, oldest first."""
    table = boto3.resource("dynamodb", region_name=settings.region).Table(settings.notebooks_table)
    ids = []
    with table.batch_writer() as batch:
        for index in range(count):
            notebook_id = str(uuid.uuid4())
            stem = f"seeded-{index:06d}-{owner}"
            name = (stem + "x" * max(0, name_length - len(stem)) if name_length else stem) + ".ipynb"
            created = start_ms + index
            batch.put_item(
                Item={
                    "owner": owner,
                    "sk": "nb#" + notebook_id,
                    "notebook_id": notebook_id,
                    "notebook_name": name,
                    "created_at": created,
                    "updated_at": created,
                    "created_by": owner,
                    "updated_by": owner,
                    "no_of_runs": 0,
                }
            )
            batch.put_item(Item={"owner": owner, "sk": "name#" + name, "notebook_id": notebook_id})
            ids.append(notebook_id)
    table.update_item(
        Key={"owner": owner, "sk": "#counts"},
        UpdateExpression="ADD notebooks :n",
        ExpressionAttributeValues={":n": count},
    )
    return ids


class BodyCalls:
    """`service` with its request-taking methods (schedule, unschedule, start, create,
    delete) called with request bodies, parsed into typed requests as the API's routes
    parse them; every other attribute is the service's own."""

    _PARSERS = {
        "schedule": lambda body, settings: requests.ScheduleRequest.parse(body, settings),
        "unschedule": lambda body, settings: requests.IdsRequest.parse(body, settings),
        "delete": lambda body, settings: requests.IdsRequest.parse(body, settings),
        "start": lambda body, settings: requests.RunRequest.parse(body, None, settings),
        "create": lambda body, settings: requests.CreateRequest.parse(body),
    }

    def __init__(self, service, settings):
        self._service = service
        self._settings = settings

    def __getattr__(self, name):
        method = getattr(self._service, name)
        parse = self._PARSERS.get(name)
        if parse is None:
            return method
        return lambda owner, body: method(owner, parse(body, self._settings))
