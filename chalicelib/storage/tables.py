"""Storage of metadata in DynamoDB: notebooks, their names, per-user counters, run records.

Notebooks table, partitioned by owner, so one user's requests never read another's items:
  hash `owner`, range `sk`:
    `nb#<notebook_id>`  a notebook's metadata, and its schedule lock (schedules/locks.py);
    `name#<name>`       a name claim. Creating and renaming write the notebook and its
                        claims in one transaction, so names are unique per owner and two
                        notebooks never share a name, not even for a moment.
    `#counts`           the owner's counters: `notebooks`, `scheduled`, `runs_active`, the
                        runs holding a slot of each pool of the fair queue and when the
                        owner was last served from it (SLOT_COUNTERS), and
                        one attribute `s_<notebook_id>` (its `until` in epoch ms) per
                        scheduled notebook. Every write that creates, deletes, schedules,
                        unschedules or expires a notebook, or starts or ends a run, changes
                        them in the same transaction, so Count reads this one item and the
                        quotas are conditions on it.
    `run#<notebook_id>#<created_at>#<run_id>`  one per run of the notebook, written with
                        the run: a notebook's runs, newest first, by a consistent Query
                        (never an index that may lag).
    `token#<sha256>`    a Run's client token: the request it stands for (24 h, TTL).
  LSI `by_created` (owner, created_at): sparse, as only notebooks carry `created_at`;
  List is a Query on it, oldest first.
  owner `#deployment` (no username starts with `#`), sk `#counts`: the deployment's
                        counters: `scheduled` (every owner's scheduled notebooks: the
                        rule budget) and, per pool, the runs holding one of its slots (the
                        fair queue's capacity), changed in the same transactions as the owners'.
Runs table:
  hash `run_id`.
  GSI `by_status` (active_status, deadline_at): sparse, as only queued and running runs
  carry `active_status` (their status, `queued#fargate` for a queued Fargate run;
  removed when they end): each pool's queue and the reaper's overdue runs, whatever the
  number of runs stored.
"""

import random
import time
from dataclasses import dataclass
from typing import Optional

from botocore.exceptions import ClientError

from chalicelib.common.aws import error_code
from chalicelib.common.batches import chunks
from chalicelib.common.model import Pool

NOTEBOOK_PREFIX = "nb#"
NAME_PREFIX = "name#"
COUNTS_SK = "#counts"
DEPLOYMENT = "#deployment"
RUN_PREFIX = "run#"
TOKEN_PREFIX = "token#"
SCHEDULED_PREFIX = "s_"
BY_CREATED = "by_created"
# Indexes of the runs table: an owner's runs, and an owner's runs in one status, newest first.
GSI = "GlobalSecondaryIndexes"
RUNS_BY_OWNER = "by_owner"
RUNS_BY_OWNER_STATUS = "by_owner_status"
BY_STATUS = "by_status"
ACTIVE_STATUS = "active_status"
TTL_ATTRIBUTE = "expires_at"
# AWS limits: actions in one TransactWriteItems, keys in one BatchGetItem.
TRANSACTION_ACTIONS = 100
BATCH_GET_KEYS = 100
_CONFLICT_ATTEMPTS = 5


@dataclass(frozen=True)
class SlotCounters:
    """The counters of one pool of the fair queue's slots: an owner's runs holding one,
    when the owner was last served one (the queue's turns), and the deployment's runs
    holding one."""

    owner_running: str
    served_at: str
    deployment_running: str


# The runner pool's names predate the Fargate pool: stored counters keep them.
SLOT_COUNTERS = {
    Pool.RUNNER: SlotCounters("runs_running", "served_at", "running"),
    Pool.FARGATE: SlotCounters("fargate_running", "fargate_served_at", "fargate_running"),
}


def table_definitions(settings) -> list:
    """`create_table` arguments for every table the service uses."""
    string, number = "S", "N"

    def attributes(**types):
        return [{"AttributeName": name, "AttributeType": kind} for name, kind in types.items()]

    def key(hash_name, range_name=None):
        schema = [{"AttributeName": hash_name, "KeyType": "HASH"}]
        return schema + ([{"AttributeName": range_name, "KeyType": "RANGE"}] if range_name else [])

    everything = {"ProjectionType": "ALL"}
    return [
        {
            "TableName": settings.notebooks_table,
            "KeySchema": key("owner", "sk"),
            "AttributeDefinitions": attributes(owner=string, sk=string, created_at=number),
            "LocalSecondaryIndexes": [
                {"IndexName": BY_CREATED, "KeySchema": key("owner", "created_at"), "Projection": everything}
            ],
            "BillingMode": "PAY_PER_REQUEST",
        },
        {
            "TableName": settings.runs_table,
            "KeySchema": key("run_id"),
            "AttributeDefinitions": attributes(
                run_id=string,
                owner=string,
                owner_status=string,
                created_at=number,
                active_status=string,
                deadline_at=number,
            ),
            GSI: [
                {"IndexName": RUNS_BY_OWNER, "KeySchema": key("owner", "created_at"), "Projection": everything},
                {
                    "IndexName": RUNS_BY_OWNER_STATUS,
                    "KeySchema": key("owner_status", "created_at"),
                    "Projection": everything,
                },
                {
                    "IndexName": BY_STATUS,
                    "KeySchema": key(ACTIVE_STATUS, "deadline_at"),
                    "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["owner", "created_at", "engine"]},
                },
            ],
            "BillingMode": "PAY_PER_REQUEST",
        },
        {
            "TableName": settings.users_table,
            "KeySchema": key("username"),
            "AttributeDefinitions": attributes(username=string),
            "BillingMode": "PAY_PER_REQUEST",
        },
    ]


def create_tables(dynamodb, settings) -> None:
    """Create the tables that do not exist yet, and the global secondary indexes that an
    existing one lacks (a local stack's state from an earlier version) (local stack and
    tests)."""
    existing = set(dynamodb.list_tables()["TableNames"])
    for definition in table_definitions(settings):
        name = definition["TableName"]
        if name not in existing:
            dynamodb.create_table(**definition)
            dynamodb.get_waiter("table_exists").wait(TableName=name)
            continue
        has = {index["IndexName"] for index in dynamodb.describe_table(TableName=name)["Table"].get(GSI, [])}
        for index in definition.get(GSI, []):
            if index["IndexName"] not in has:  # DynamoDB adds one index per update
                dynamodb.update_table(
                    TableName=name,
                    AttributeDefinitions=definition["AttributeDefinitions"],
                    GlobalSecondaryIndexUpdates=[{"Create": index}],
                )
    dynamodb.update_time_to_live(
        TableName=settings.notebooks_table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
    )


class NameTaken(Exception):
    """The owner already has a notebook of that name."""


class Conflict(Exception):
    """A concurrent change won the race; re-read and try again."""


class QuotaExceeded(Exception):
    """A quota (a condition on the owner's counters, or on the deployment's) refused the
    write; its argument names the counter."""


def set_clause(fields: dict, prefix: str = "f") -> tuple:
    """`SET #f0 = :f0, ...` with its names and values, for an update of `fields`."""
    names = {f"#{prefix}{i}": name for i, name in enumerate(fields)}
    values = {f":{prefix}{i}": value for i, value in enumerate(fields.values())}
    expression = ", ".join(f"#{prefix}{i} = :{prefix}{i}" for i in range(len(fields)))
    return expression, names, values


def _cancellation_codes(error: ClientError) -> list:
    """The per-item reasons of a cancelled transaction, e.g. ['None', 'ConditionalCheckFailed']."""
    return [reason.get("Code", "None") for reason in error.response.get("CancellationReasons", [])]


def _is_cancelled(error: ClientError) -> bool:
    return error_code(error) == "TransactionCanceledException"


def is_condition_failure(error: ClientError) -> bool:
    return error_code(error) == "ConditionalCheckFailedException"


def conditional_update(table, **update) -> bool:
    """`table.update_item(**update)`; False, changing nothing, when its condition fails."""
    try:
        table.update_item(**update)
    except ClientError as error:
        if is_condition_failure(error):
            return False
        raise
    return True


def transact(client, actions: list) -> Optional[list]:
    """One TransactWriteItems. None when it committed; else, when a condition failed, the
    per-action reasons (nothing was written). Retried while DynamoDB reports a concurrent
    transaction on the same items (TransactionConflict), which boto3 does not retry."""
    for attempt in range(_CONFLICT_ATTEMPTS):
        try:
            client.transact_write_items(TransactItems=actions)
            return None
        except ClientError as error:
            if not _is_cancelled(error):
                raise
            codes = _cancellation_codes(error)
            if "ConditionalCheckFailed" in codes:
                return codes
            if "TransactionConflict" not in codes or attempt == _CONFLICT_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    raise AssertionError("unreachable")


# DynamoDB refuses a transaction whose items add up to more than 4 MB: what a request
# writes per notebook item (a schedule with its parameters) is budgeted within 3 MB, each
# item counted with this allowance for what it already holds.
TRANSACTION_BYTES = 3 * 1024 * 1024
ITEM_ALLOWANCE_BYTES = 16 * 1024


def items_per_transaction(written_bytes: int) -> int:
    """How many items, each getting `written_bytes` more, fit one transaction's byte budget."""
    return max(1, TRANSACTION_BYTES // (written_bytes + ITEM_ALLOWANCE_BYTES))


def entries_per_transaction(actions_per_entry: int) -> int:
    """How many entries of `actions_per_entry` actions each, with the owner's and the
    deployment's counter updates, fit one transaction."""
    return (TRANSACTION_ACTIONS - 2) // actions_per_entry


def write_chunks(
    transact,
    entries: list,
    actions_per_entry: int,
    build,
    reread,
    conflict: str,
    written=None,
    max_entries: Optional[int] = None,
) -> None:
    """Write `entries` cut so that each chunk's actions plus one counter update fit one
    transaction (and at most `max_entries` entries, where the bytes they write bound it):
    `transact(*build(chunk))`, `build(chunk)` giving (actions, Tally), then
    `written(chunk)`. When a condition fails, `reread(chunk, codes)` gives what of the
    chunk is still to write, as it now is (nothing: done), and the chunk is built again;
    Conflict(`conflict`) when it fails every one of _CONFLICT_ATTEMPTS times."""
    for chunk in chunks(entries, min(entries_per_transaction(actions_per_entry), max_entries or len(entries) or 1)):
        for _ in range(_CONFLICT_ATTEMPTS):
            codes = transact(*build(chunk))
            if codes is None:
                if written:
                    written(chunk)
                break
            chunk = reread(chunk, codes)
            if not chunk:
                break
        else:
            raise Conflict(conflict)


def every_page(page) -> list:
    """Every item of a paged read, `page(start_key)` -> (items, next start key or None)."""
    items, start = [], None
    while True:
        found, start = page(start)
        items += found
        if not start:
            return items


def batch_get(client, table_name: str, keys: list) -> list:
    """The items at `keys` that exist (strongly consistent), 100 keys per BatchGetItem."""
    items = []
    for chunk in chunks(keys, BATCH_GET_KEYS):
        request = {table_name: {"Keys": chunk, "ConsistentRead": True}}
        for attempt in range(8):
            response = client.batch_get_item(RequestItems=request)
            items += response["Responses"].get(table_name, [])
            request = response.get("UnprocessedKeys") or {}
            if not request:
                break
            time.sleep(min(1.0, 0.05 * 2**attempt))  # throttled: AWS asks to send the rest later
        else:
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "keys left unprocessed"}},
                "BatchGetItem",
            )
    return items


class Tally:
    """Changes to one owner's counters, made as one Update in a transaction."""

    def __init__(
        self,
        notebooks=0,
        runs_active=0,
        runs_limit=None,
        scheduled_limit=None,
        scheduled_total_limit=None,
        slots=None,
    ):
        self.notebooks = notebooks
        self.runs_active = runs_active
        self.runs_limit = runs_limit
        # Pool -> change in the runs holding one of its slots: the owner's and the deployment's.
        self.slots = {pool: delta for pool, delta in (slots or {}).items() if delta}
        self.scheduled_limit = scheduled_limit
        self.scheduled_total_limit = scheduled_total_limit  # the deployment's, across owners
        self.schedules_set = {}  # notebook id -> until_ms: a scheduled notebook, new or not
        self.schedules_added = 0  # how many of those were not scheduled before
        self.schedules_removed = []  # notebook ids that were scheduled

    def action(self, table_name: str, owner: str) -> Optional[dict]:
        """The Update action, or None when nothing changes."""
        names, values, adds, sets, conditions = {}, {}, [], [], []
        scheduled = self.scheduled_change()
        for field, delta, limit in (
            ("notebooks", self.notebooks, None),
            ("runs_active", self.runs_active, self.runs_limit),
            *((SLOT_COUNTERS[pool].owner_running, delta, None) for pool, delta in self.slots.items()),
            ("scheduled", scheduled, self.scheduled_limit),
        ):
            if delta:
                names[f"#{field}"] = field
                values[f":{field}"] = delta
                adds.append(f"#{field} :{field}")
            if limit is not None and delta > 0:
                if delta > limit:
                    raise QuotaExceeded(field)
                names[f"#{field}"] = field
                values[f":{field}_max"] = limit - delta
                conditions.append(f"(attribute_not_exists(#{field}) OR #{field} <= :{field}_max)")
        for i, (notebook_id, until_ms) in enumerate(self.schedules_set.items()):
            names[f"#s{i}"] = SCHEDULED_PREFIX + notebook_id
            values[f":s{i}"] = until_ms
            sets.append(f"#s{i} = :s{i}")
        for i, notebook_id in enumerate(self.schedules_removed):
            names[f"#r{i}"] = SCHEDULED_PREFIX + notebook_id
        clauses = (["ADD " + ", ".join(adds)] if adds else []) + (["SET " + ", ".join(sets)] if sets else [])
        if self.schedules_removed:
            clauses.append("REMOVE " + ", ".join(f"#r{i}" for i in range(len(self.schedules_removed))))
        if not clauses:
            return None
        update = {
            "TableName": table_name,
            "Key": {"owner": owner, "sk": COUNTS_SK},
            "UpdateExpression": " ".join(clauses),
            "ExpressionAttributeNames": names,
        }
        if values:
            update["ExpressionAttributeValues"] = values
        if conditions:
            update["ConditionExpression"] = " AND ".join(conditions)
        return {"Update": update}

    def scheduled_change(self) -> int:
        """How many more (or fewer) scheduled notebooks the owner has after this change."""
        return self.schedules_added - len(self.schedules_removed)

    def deployment_action(self, table_name: str) -> Optional[dict]:
        """The Update of the deployment's counters: its scheduled total (the rule budget:
        at most `scheduled_total_limit` when adding) and its runs holding a runner slot;
        None when neither changes."""
        scheduled = self.scheduled_change()
        if not scheduled and not self.slots:
            return None
        names, values, adds, conditions = {}, {}, [], []
        running = [(SLOT_COUNTERS[pool].deployment_running, delta) for pool, delta in self.slots.items()]
        for field, delta in [("scheduled", scheduled), *running]:
            if delta:
                names[f"#{field}"], values[f":{field}"] = field, delta
                adds.append(f"#{field} :{field}")
        limit = self.scheduled_total_limit
        if limit is not None and scheduled > 0:
            if scheduled > limit:
                raise QuotaExceeded("scheduled_total")
            conditions.append("(attribute_not_exists(#scheduled) OR #scheduled <= :scheduled_max)")
            values[":scheduled_max"] = limit - scheduled
        update = {
            "TableName": table_name,
            "Key": {"owner": DEPLOYMENT, "sk": COUNTS_SK},
            "UpdateExpression": "ADD " + ", ".join(adds),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        if conditions:
            update["ConditionExpression"] = " AND ".join(conditions)
        return {"Update": update}
