"""The local stack's embedded AWS: moto's server on loopback, for this stack only, with
its state kept in a folder (see devstack/state.py).

`python -m devstack.embedded_aws` (started by `devstack.stack`, not by hand):
- takes the state folder `NOTEBOOKS_LOCAL_STATE` (one process at a time), restores the
  last snapshot, and serves on `NOTEBOOKS_AWS_PORT` (0: any free port);
- answers only requests signed with the stack's access key, which it reads on stdin
  (devstack/credentials.py) after making itself non-dumpable;
- prints `ready <endpoint>` on stdout once it serves;
- takes a snapshot at most every second after a change, and a last one when it stops
  (SIGTERM, SIGINT, or the process that started it ending).

`install()` makes moto fit to stand in for AWS at scale, here and wherever moto runs
in-process (the tests, `make bench`):
1. One AWS request at a time in-process too. Moto's backends are not thread-safe, and a
   request works on up to 16 threads (common/batches.py): under `mock_aws` two transactions
   that add to the same counter could lose one addition, which DynamoDB never does.
2. DynamoDB transactions at the cost of what they touch. Moto's `transact_write_items`
   keeps a deep copy of the whole table for every action of a transaction, to roll back
   on failure: a 100-action transaction on a table of 10,000 notebooks copies a million
   items, seconds of work that real DynamoDB never does. `install()` makes the one copy a
   transaction needs: the table's mappings copied, only the items its actions name
   deep-copied (a rolled-back transaction restores exactly those), everything else shared.
3. DynamoDB Queries at the cost of the partition they read. Moto's `Table.query` sorts
   every item of the table, keeps those of the queried partition, then sorts these
   again, comparing through `DynamoType` (seconds for a page of 100 among 20,000 items).
   `install()` hands a Query of the table or of a local index only its partition's
   items, already in the order moto sorts them in, so moto's own filtering, sort, paging
   and limits see the same items in the same order and answer the same.
4. DynamoDB answers at the cost of their JSON. Moto writes every attribute value of a
   response by walking botocore's shape of it, member by member (about 16 ms per
   notebook on this project's development machine: a minute for a List of 3,000).
   Values that are already what the shape walk would write (strings, numbers as
   strings, booleans, and maps and lists of them) are written as they are; anything
   else (binary) still takes moto's walk.
Nothing deployed imports this module.
"""

import copy
import functools
import logging
import os
import re
import sys
import threading

from devstack.credentials import CredentialGuard, receive_secrets
from devstack.state import Snapshots, StateFolder

log = logging.getLogger(__name__)

SNAPSHOT_SECONDS = 1.0
# Operations of the JSON protocols (DynamoDB, EventBridge) that change nothing.
_READ_ONLY = re.compile(r"\.(Get|Describe|List|Query|Scan|BatchGet|TransactGet)")


def _changes_state(environ) -> bool:
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return not _READ_ONLY.search(target)
    return environ.get("REQUEST_METHOD") not in ("GET", "HEAD", "OPTIONS")


_state = threading.local()
_installed = False


class _SnapshotCopy:
    """The `copy` module as moto's DynamoDB backend sees it, while a transaction runs."""

    def __getattr__(self, name):
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value, memo=None):
        from moto.dynamodb.models.table import Table

        snapshots = getattr(_state, "snapshots", None)
        if snapshots is None or not isinstance(value, Table):
            return copy.deepcopy(value, memo)
        if id(value) not in snapshots:
            snapshots[id(value)] = _snapshot(value, _state.actions)
        return snapshots[id(value)]


def _touched_keys(table, actions) -> list:
    from moto.dynamodb.models.dynamo_type import DynamoType

    keys = []
    for action in actions:
        if action.get("TableName") != table.name:
            continue
        attributes = action.get("Key") or action.get("Item") or {}
        if table.hash_key_attr not in attributes:
            continue  # moto refuses it itself
        hash_value = DynamoType(attributes[table.hash_key_attr])
        range_value = (
            DynamoType(attributes[table.range_key_attr])
            if table.has_range_key and table.range_key_attr in attributes
            else None
        )
        keys.append((hash_value, range_value))
    return keys


def _snapshot(table, actions):
    """A copy of `table` that keeps, as they are now, the items `actions` may change."""
    snapshot = copy.copy(table)
    snapshot.items = copy.copy(table.items)
    for hash_value, range_value in _touched_keys(table, actions):
        if table.has_range_key:
            if hash_value not in table.items:
                continue
            partition = snapshot.items[hash_value]
            if partition is table.items[hash_value]:
                partition = snapshot.items[hash_value] = dict(partition)
            if range_value in partition:
                partition[range_value] = copy.deepcopy(partition[range_value])
        elif hash_value in table.items:
            snapshot.items[hash_value] = copy.deepcopy(table.items[hash_value])
    return snapshot


def _partition_query(original):
    """Moto's `Table.query`, reading only the queried partition when it queries a table
    with a sort key, or one of its local secondary indexes (same partition key)."""

    @functools.wraps(original)
    def query(table, hash_key, *args, **kwargs):
        index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
        local_indexes = {index.name: index for index in table.indexes or []}
        if not table.range_key_attr or hash_key is None or (index_name and index_name not in local_indexes):
            return original(table, hash_key, *args, **kwargs)
        # The order moto sorts the partition in (the index's sort key first), computed
        # once per item rather than at every comparison.
        order = (
            [key["AttributeName"] for key in local_indexes[index_name].schema if key["KeyType"] == "RANGE"]
            if index_name
            else []
        )
        order.append(table.range_key_attr)

        def sort_key(item):
            return tuple((1, item.attrs[name].cast_value) if name in item.attrs else (0, None) for name in order)

        partition = table.items.get(hash_key, {}).values()
        range_comparison, range_values = (args + (None, None))[:2]
        if range_comparison and not index_name:
            # The key condition on the sort key, as moto applies it again: it names a
            # range of keys, not items to read and then drop.
            partition = [item for item in partition if item.range_key.compare(range_comparison, range_values)]
        partition = sorted(partition, key=sort_key)
        table.all_items = lambda: partition  # what moto's query walks, for this call only
        try:
            return original(table, hash_key, *args, **kwargs)
        finally:
            del table.all_items

    return query


_PLAIN = {"S": str, "N": str, "BOOL": bool, "NULL": bool}


def _plain(value) -> bool:
    """Whether a DynamoDB attribute value is JSON as moto's shape walk would write it."""
    if not isinstance(value, dict) or len(value) != 1:
        return False
    ((kind, inner),) = value.items()
    if kind in _PLAIN:
        return isinstance(inner, _PLAIN[kind])
    if kind in ("SS", "NS"):
        return isinstance(inner, list) and all(isinstance(member, str) for member in inner)
    if kind == "M":
        return isinstance(inner, dict) and all(
            isinstance(name, str) and _plain(member) for name, member in inner.items()
        )
    if kind == "L":
        return isinstance(inner, list) and all(_plain(member) for member in inner)
    return False


def _plain_attribute_values(walk):
    """Moto's JSON serialiser of a structure, writing plain DynamoDB attribute values as
    they are."""

    @functools.wraps(walk)
    def serialize_structure(serializer, serialized, value, shape, key):
        if key and shape.name == "AttributeValue" and _plain(value):
            serializer._default_serialize(serialized, value, shape, key)
        else:
            walk(serializer, serialized, value, shape, key)

    return serialize_structure


def install() -> None:
    """Serialise moto's in-process requests; make its transactions copy only what they
    touch, its Queries read only their partition, and its DynamoDB answers cost their
    JSON (idempotent)."""
    global _installed
    if _installed:
        return
    from moto.core.botocore_stubber import BotocoreStubber
    from moto.core.serialize import BaseJSONSerializer
    from moto.dynamodb import models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    one_at_a_time = threading.RLock()
    stub = BotocoreStubber.__call__

    def serialised(self, *args, **kwargs):
        with one_at_a_time:
            return stub(self, *args, **kwargs)

    BotocoreStubber.__call__ = serialised

    original = DynamoDBBackend.transact_write_items

    def transact_write_items(self, transact_items):
        _state.snapshots, _state.actions = {}, [next(iter(item.values())) for item in transact_items]
        try:
            return original(self, transact_items)
        finally:
            _state.snapshots = _state.actions = None

    models.copy = _SnapshotCopy()
    DynamoDBBackend.transact_write_items = transact_write_items
    Table.query = _partition_query(Table.query)
    BaseJSONSerializer._serialize_type_structure = _plain_attribute_values(BaseJSONSerializer._serialize_type_structure)
    _installed = True


class SerialApp:
    """Moto's WSGI application, answering one request at a time, noting changes.

    Moto's backends are not thread-safe: under concurrent requests a DynamoDB transaction
    loses its atomicity (two notebooks got one name) or fails inside moto. Real DynamoDB
    is atomic; serialising the embedded one makes it so here too, and lets a snapshot see
    one moment of everything.
    """

    def __init__(self):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.lock = threading.Lock()
        self.changed = False
        self._moto = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ, start_response):
        with self.lock:
            if _changes_state(environ):
                self.changed = True
            return list(self._moto(environ, start_response))


class EmbeddedAws:
    """Moto's server with a credential guard and snapshots to a state folder."""

    def __init__(self, folder: StateFolder, access_key_id: str, secret: str, port: int = 0):
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        install()  # transactions at the cost of what they touch
        self.app = SerialApp()
        self._snapshots = Snapshots(folder)
        # werkzeug listens with a backlog of 128: a burst of clients is queued, not reset.
        self._server = make_server(
            "127.0.0.1",
            port,
            CredentialGuard(self.app, access_key_id, secret),
            threaded=True,
            request_handler=MotoRequestHandler,
        )
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._stop = threading.Event()
        self._threads = []

    def start(self, restore_with=None) -> dict:
        """Serve in the background; with `restore_with(service, region)` (a client
        maker), put the last snapshot back first. Returns what was restored."""
        self._threads.append(threading.Thread(target=self._server.serve_forever, daemon=True))
        self._threads[-1].start()
        restored = self._snapshots.restore(restore_with) if restore_with else {}
        with self.app.lock:
            self.app.changed = False
        self._threads.append(threading.Thread(target=self._snapshot_regularly, daemon=True))
        self._threads[-1].start()
        return restored

    def snapshot(self) -> None:
        """Save the state now, if a request changed it since the last snapshot."""
        with self.app.lock:
            if not self.app.changed:
                return
            state, new_contents = self._snapshots.capture()
            self.app.changed = False
        self._snapshots.save(state, new_contents)

    def _snapshot_regularly(self) -> None:
        while not self._stop.wait(SNAPSHOT_SECONDS):
            try:
                self.snapshot()
            except Exception:  # the next tick tries again
                log.exception("embedded AWS: snapshot failed")

    def stop(self) -> None:
        """Stop serving, then take the last snapshot."""
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=30)
        self.snapshot()


def _client_maker(endpoint: str):
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=16)
    return lambda service, region: session.client(service, region_name=region, endpoint_url=endpoint, config=config)


def main() -> int:
    """Run the embedded AWS until SIGTERM or SIGINT (see the module's docstring)."""
    receive_secrets()
    logging.basicConfig(level=logging.WARNING, format="embedded AWS: %(message)s", stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    from devstack.stack import state_folder, stop_on_signals

    folder = StateFolder(state_folder())
    if not folder.take():
        print(f"The state folder {folder.path} is in use by another local stack.", file=sys.stderr)
        return 2
    server = EmbeddedAws(
        folder,
        os.environ["AWS_ACCESS_KEY_ID"],
        os.environ["AWS_SECRET_ACCESS_KEY"],
        int(os.environ.get("NOTEBOOKS_AWS_PORT") or 0),
    )
    stopped = stop_on_signals()
    try:
        restored = server.start(restore_with=_client_maker(server.endpoint))
        if any(restored.values()):
            log.warning("restored %(objects)d objects, %(items)d items and %(rules)d rules", restored)
        print(f"ready {server.endpoint}", flush=True)
        stopped.wait()
    finally:
        server.stop()
        folder.release()
    return 0


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is saved and the folder released: skip the interpreter's clean-up, which
    # takes minutes over moto's objects once they are many.
    os._exit(status)
