"""Helpers shared by test modules: snapshots of everything stored, the invariants every
operation must leave behind, and a fault injector for AWS calls."""
import threading

import boto3
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

from chalicelib import aws


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
      path to an end), and each notebook counts exactly the runs recorded for it.
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
        notebook_id = name[len(settings.rule_prefix):]
        owners = [row for (_, nid), row in notebooks.items() if nid == notebook_id]
        if owners and owners[0].get("deleting"):
            continue
        assert owners and owners[0].get("schedule"), f"rule {name} without a stored schedule"
        assert rule["ScheduleExpression"] == owners[0]["schedule"]["expression"], f"rule {name} is stale"
        assert [target["Id"] for target in events.list_targets_by_rule(Rule=name)["Targets"]] == ["runner"]
    for (owner, notebook_id), row in live.items():
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


class FaultInjector:
    """Fails the k-th AWS call of the project's own clients (chalicelib.aws), as botocore
    would after its retries: throttling, a 5xx, or a read timeout.

    A `before-call` handler on the boto3 session of chalicelib.aws, which every client
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
        body = {"Error": {"Code": code, "Message": f"injected fault: {code}"},
                "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}}}
        return AWSResponse("https://aws.invalid", status, {}, None), body
