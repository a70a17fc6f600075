"""The embedded AWS's state on disk: snapshots of moto's S3, DynamoDB and EventBridge.

Moto keeps everything in memory. The embedded AWS takes a snapshot of it, at most once
a second and only after a request changed something, into its state folder:
- `snapshot.json`: every bucket's object list (content type, user metadata, content
  hash), every table's definition and items, every EventBridge rule of the default bus
  with its targets; written to a temporary file and renamed, so a crash leaves the last
  whole snapshot;
- `blobs/<sha256>`: object contents, written once each (content-addressed), before the
  snapshot that names them; those no snapshot names any more are removed.

A snapshot is taken while no request is being served (under the embedded AWS's request
lock), so it is one consistent moment of all three services. On start, the snapshot is
put back: tables and rules through the AWS APIs (CreateTable, PutRule, PutTargets),
objects and items straight into moto's S3 and DynamoDB: a thousand notebooks with their
runs and outputs take 1.4 to 2.4 s so (`make bench`), 6.3 s through the APIs.

What is kept: buckets and objects (latest version, with its version id, content type,
user metadata), tables with their keys, indexes and items, rules and targets; nothing
else of moto's (other services, older object versions, tags, TTL settings) survives a
restart. Not fsync'ed: a crash
of the stack loses nothing written, a power cut may.

Snapshots read moto's in-memory models (pinned moto version; tested), because reading
through the APIs would give each service a different moment, and would cost requests.
"""

import base64
import fcntl
import hashlib
import json
import os

SNAPSHOT_FILE = "snapshot.json"
BLOBS = "blobs"
LOCK_FILE = "lock"
FORMAT = 1
_ACCOUNT = "123456789012"  # moto's account for every access key not made through IAM


def atomic_write(path: str, data: bytes) -> None:
    """Write `path` whole or not at all: a crash leaves the old file or the new one."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as out:
        out.write(data)
    os.replace(temporary, path)


class StateFolder:
    """A folder holding one embedded AWS's state. One embedded AWS at a time uses it: it
    holds an exclusive lock on `lock` while it runs (released by the OS if it dies)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._lock_fd = None

    def file(self, name: str) -> str:
        """The path of `name` inside the folder."""
        return os.path.join(self.path, name)

    def take(self) -> bool:
        """Make the folder (private to this user) and lock it; False if another process
        holds it."""
        os.makedirs(self.file(BLOBS), mode=0o700, exist_ok=True)
        os.chmod(self.path, 0o700)
        fd = os.open(self.file(LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def in_use(self) -> bool:
        """Whether a running process holds the folder's lock."""
        try:
            fd = os.open(self.file(LOCK_FILE), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock taken just now

    def release(self) -> None:
        """Let another process take the folder."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _backends():
    from moto.dynamodb.models import dynamodb_backends
    from moto.events.models import events_backends
    from moto.s3.models import FakeKey, s3_backends

    return s3_backends[_ACCOUNT]["aws"], dynamodb_backends[_ACCOUNT], events_backends[_ACCOUNT], FakeKey


def _items(table):
    """A moto table's items, unsorted (its all_items() sorts them: 10 times slower)."""
    for stored in table.items.values():
        yield from (stored.values() if table.range_key_attr else [stored])


def _wire_binary(value: bytes) -> str:
    """A binary DynamoDB value as PutItem takes it, base64 (moto keeps some as bytes)."""
    return base64.b64encode(value).decode()


def _table_definition(description: dict) -> dict:
    """CreateTable's parameters for a table as DescribeTable shows it."""
    definition = {key: description[key] for key in ("TableName", "KeySchema", "AttributeDefinitions")}
    on_demand = description.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST"
    throughput = {
        key: max(1, description.get("ProvisionedThroughput", {}).get(key, 1))
        for key in ("ReadCapacityUnits", "WriteCapacityUnits")
    }
    if on_demand:
        definition["BillingMode"] = "PAY_PER_REQUEST"
    else:
        definition["ProvisionedThroughput"] = throughput
    for kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        indexes = [
            {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
            for index in description.get(kind) or []
        ]
        if indexes:
            if kind == "GlobalSecondaryIndexes" and not on_demand:
                indexes = [{**index, "ProvisionedThroughput": throughput} for index in indexes]
            definition[kind] = indexes
    return definition


class Snapshots:
    """Saves the embedded AWS's state to a StateFolder, and restores it."""

    def __init__(self, folder: StateFolder):
        self._folder = folder
        self._blobs = {}  # (bucket, key) -> (etag, sha256) of the last snapshot

    def capture(self) -> tuple:
        """(state, {sha256: content} of contents not on disk yet): call it while no
        request is being served."""
        s3, dynamodb, events, object_class = _backends()
        new_contents, blobs, buckets = {}, {}, {}
        for bucket in s3.buckets.values():
            objects = {}
            for name, key in bucket.keys.items():
                if not isinstance(key, object_class):
                    continue  # a delete marker
                known = self._blobs.get((bucket.name, name))
                if known is None or known[0] != key.etag:
                    content = key.value
                    known = (key.etag, hashlib.sha256(content).hexdigest())
                    new_contents[known[1]] = content
                blobs[(bucket.name, name)] = known
                metadata = {k: v for k, v in key.metadata.items() if k.startswith("x-amz-meta-")}
                objects[name] = {
                    "sha256": known[1],
                    "content_type": key.metadata.get("content-type"),
                    "metadata": {k[len("x-amz-meta-") :]: v for k, v in metadata.items()},
                    "version_id": key.version_id,
                }
            buckets[bucket.name] = {"region": bucket.region_name, "objects": objects}
        tables = {
            region: {
                name: {
                    "definition": _table_definition(table.describe()["TableDescription"]),
                    "items": [item.to_json()["Attributes"] for item in _items(table)],
                }
                for name, table in backend.tables.items()
            }
            for region, backend in dynamodb.items()
        }
        rules = {
            region: [self._rule(rule) for rule in backend.event_buses["default"].rules.values()]
            for region, backend in events.items()
            if "default" in backend.event_buses
        }
        self._blobs = blobs
        state = {"format": FORMAT, "s3": buckets, "dynamodb": tables, "events": rules}
        return state, new_contents

    @staticmethod
    def _rule(rule) -> dict:
        described = {"Name": rule.name, "State": rule.state, "Targets": list(rule.targets)}
        if rule.scheduled_expression:
            described["ScheduleExpression"] = rule.scheduled_expression
        if rule.event_pattern and rule.event_pattern.dump():
            described["EventPattern"] = rule.event_pattern.dump()
        if rule.description:
            described["Description"] = rule.description
        return described

    def save(self, state: dict, new_contents: dict) -> None:
        """Write the contents first, then the snapshot naming them, then drop the contents
        no snapshot names."""
        blob_folder = self._folder.file(BLOBS)
        for digest, content in new_contents.items():
            path = os.path.join(blob_folder, digest)
            if not os.path.exists(path):
                atomic_write(path, content)
        atomic_write(self._folder.file(SNAPSHOT_FILE), json.dumps(state, default=_wire_binary).encode())
        named = {entry["sha256"] for bucket in state["s3"].values() for entry in bucket["objects"].values()}
        for name in os.listdir(blob_folder):
            if name not in named:
                os.remove(os.path.join(blob_folder, name))

    def restore(self, client) -> dict:
        """Put the last snapshot back; `client(service, region)` makes a boto3 client of
        the embedded AWS. Returns what was restored, counted."""
        try:
            with open(self._folder.file(SNAPSHOT_FILE), "rb") as snapshot:
                state = json.load(snapshot)
        except FileNotFoundError:
            return {"objects": 0, "items": 0, "rules": 0}
        objects = self._restore_s3(state["s3"])
        items = 0
        for region, tables in state["dynamodb"].items():
            backend = _backends()[1][region]
            for name, table in tables.items():
                client("dynamodb", region).create_table(**table["definition"])
                for item in table["items"]:  # as PutItem takes them, straight into moto: thousands of items
                    backend.put_item(name, item)
                items += len(table["items"])
        rules = 0
        for region, described in state["events"].items():
            events = client("events", region)
            for rule in described:
                targets = rule.pop("Targets")
                events.put_rule(**rule)
                if targets:
                    events.put_targets(Rule=rule["Name"], Targets=targets)
                rules += 1
        return {"objects": objects, "items": items, "rules": rules}

    def _restore_s3(self, buckets: dict) -> int:
        """Put buckets and objects back straight into moto's S3: through the API, each
        object would cost a signed HTTP request (about 20 ms), for thousands of them."""
        s3 = _backends()[0]
        blob_folder = self._folder.file(BLOBS)
        count = 0
        for name, bucket in buckets.items():
            s3.create_bucket(name, bucket["region"])
            for key, entry in bucket["objects"].items():
                with open(os.path.join(blob_folder, entry["sha256"]), "rb") as blob:
                    content = blob.read()
                if hashlib.sha256(content).hexdigest() != entry["sha256"]:
                    raise ValueError(f"state folder damaged: the content of s3://{name}/{key} changed on disk")
                stored = s3.put_object(name, key, content)
                # Runs pin a notebook's version by its id: the latest version keeps it.
                stored._version_id = entry.get("version_id", "null")
                metadata = {f"x-amz-meta-{field}": value for field, value in entry["metadata"].items()}
                if entry["content_type"]:
                    metadata["content-type"] = entry["content_type"]
                stored.set_metadata(metadata)
                self._blobs[(name, key)] = (stored.etag, entry["sha256"])
                count += 1
        return count
