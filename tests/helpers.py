"""Helpers shared by test modules (and `make bench`): snapshots of everything stored,
AWS calls counted, notebooks written straight into the tables."""
import collections
import threading
import time
import uuid

import boto3
import botocore.client
import botocore.exceptions


def stored_state(settings) -> tuple:
    """(S3 objects with their ETags, every notebooks-table item): to prove nothing changed."""
    s3 = boto3.client("s3", region_name=settings.region)
    objects = sorted(
        (item["Key"], item["ETag"]) for item in s3.list_objects_v2(Bucket=settings.bucket).get("Contents", [])
    )
    table = boto3.resource("dynamodb", region_name=settings.region).Table(settings.notebooks_table)
    items = sorted(table.scan()["Items"], key=lambda item: (item["owner"], item["sk"]))
    return objects, items


def leftovers(settings) -> tuple:
    """`stored_state` less the per-user counters that read zero: what deleting everything leaves."""
    objects, items = stored_state(settings)
    counters = ("notebooks", "scheduled", "runs_active")
    zeroed = [item for item in items if item["sk"] == "#counts"
              and set(item) <= {"owner", "sk", *counters} and not any(item.get(name) for name in counters)]
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
                    {"Error": {"Code": "InternalServerError", "Message": "injected"}}, operation)
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
            batch.put_item(Item={"owner": owner, "sk": "nb#" + notebook_id, "notebook_id": notebook_id,
                                 "notebook_name": name, "created_at": created, "updated_at": created,
                                 "created_by": owner, "updated_by": owner, "no_of_runs": 0})
            batch.put_item(Item={"owner": owner, "sk": "name#" + name, "notebook_id": notebook_id})
            ids.append(notebook_id)
    table.update_item(Key={"owner": owner, "sk": "#counts"}, UpdateExpression="ADD notebooks :n",
                      ExpressionAttributeValues={":n": count})
    return ids
