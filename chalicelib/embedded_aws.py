"""Moto made fit to stand in for AWS at scale (local stack, tests, bench).

1. One AWS request at a time in-process too. Moto's backends are not thread-safe, and a
   request works on up to 16 threads (batches.py): under `mock_aws` two transactions
   that add to the same counter could lose one addition, which DynamoDB never does. (The
   local stack's server serialises its requests the same way.)
2. DynamoDB transactions at the cost of what they touch. Moto's `transact_write_items`
   keeps a deep copy of the whole table for every action of a transaction, to roll back
   on failure: a 100-action transaction on a table of 10,000 notebooks copies a million
   items, seconds of work that real DynamoDB never does. This
   makes the one copy a transaction needs: the table's mappings copied, only the items
   its actions name deep-copied (a rolled-back transaction restores exactly those),
   everything else shared.
The embedded AWS of `make dev`, the tests and `make bench` install these; nothing
deployed imports this module.
"""
import copy
import threading

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
        range_value = DynamoType(attributes[table.range_key_attr]) \
            if table.has_range_key and table.range_key_attr in attributes else None
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


def install() -> None:
    """Serialise moto's in-process requests; make its transactions copy only what they
    touch (idempotent)."""
    global _installed
    if _installed:
        return
    from moto.core.botocore_stubber import BotocoreStubber
    from moto.dynamodb import models
    from moto.dynamodb.models import DynamoDBBackend

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
    _installed = True
