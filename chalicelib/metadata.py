"""Storage of metadata in DynamoDB: notebooks, their names, per-user counters, run records.

Notebooks table, partitioned by owner, so one user's requests never read another's items:
  hash `owner`, range `sk`:
    `nb#<notebook_id>`  a notebook's metadata, and its schedule lock (schedule_locks.py);
    `name#<name>`       a name claim. Creating and renaming write the notebook and its
                        claims in one transaction, so names are unique per owner and two
                        notebooks never share a name, not even for a moment.
    `#counts`           the owner's counters: `notebooks`, `scheduled`, `runs_active`, and
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
Runs table:
  hash `run_id`.
"""
import random
import time
from functools import partial
from typing import Optional

from botocore.exceptions import ClientError

from .aws import all_items, error_code
from .batches import chunks, in_parallel

NOTEBOOK_PREFIX = "nb#"
NAME_PREFIX = "name#"
COUNTS_SK = "#counts"
RUN_PREFIX = "run#"
TOKEN_PREFIX = "token#"
SCHEDULED_PREFIX = "s_"
BY_CREATED = "by_created"
TTL_ATTRIBUTE = "expires_at"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE = frozenset({"queued", "running"})
# AWS limits: actions in one TransactWriteItems, keys in one BatchGetItem.
_TRANSACTION_ACTIONS = 100
_BATCH_GET_KEYS = 100
_CONFLICT_ATTEMPTS = 5


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
            "AttributeDefinitions": attributes(run_id=string),
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
    """Create the tables that do not exist yet (local stack and tests)."""
    existing = set(dynamodb.list_tables()["TableNames"])
    for definition in table_definitions(settings):
        if definition["TableName"] not in existing:
            dynamodb.create_table(**definition)
            dynamodb.get_waiter("table_exists").wait(TableName=definition["TableName"])
    dynamodb.update_time_to_live(TableName=settings.notebooks_table, TimeToLiveSpecification={
        "Enabled": True, "AttributeName": TTL_ATTRIBUTE})


class NameTaken(Exception):
    """The owner already has a notebook of that name."""


class Conflict(Exception):
    """A concurrent change won the race; re-read and try again."""


class QuotaExceeded(Exception):
    """A per-user quota (a condition on the owner's counters) refused the write."""


def _set_clause(fields: dict, prefix: str = "f") -> tuple:
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


def _is_condition_failure(error: ClientError) -> bool:
    return error_code(error) == "ConditionalCheckFailedException"


def _conditional_update(table, **update) -> bool:
    """`table.update_item(**update)`; False, changing nothing, when its condition fails."""
    try:
        table.update_item(**update)
    except ClientError as error:
        if _is_condition_failure(error):
            return False
        raise
    return True


def _transact(client, actions: list) -> Optional[list]:
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


def _entries_per_transaction(actions_per_entry: int) -> int:
    """How many entries of `actions_per_entry` actions each, with one counter update, fit
    one transaction."""
    return (_TRANSACTION_ACTIONS - 1) // actions_per_entry


def _write_chunks(transact, entries: list, actions_per_entry: int, build, reread, conflict: str,
                  written=None) -> None:
    """Write `entries` cut so that each chunk's actions plus one counter update fit one
    transaction: `transact(*build(chunk))`, `build(chunk)` giving (actions, Tally), then
    `written(chunk)`. When a condition fails, `reread(chunk, codes)` gives what of the
    chunk is still to write, as it now is (nothing: done), and the chunk is built again;
    Conflict(`conflict`) when it fails every one of _CONFLICT_ATTEMPTS times."""
    for chunk in chunks(entries, _entries_per_transaction(actions_per_entry)):
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


def _every_page(page) -> list:
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
    for chunk in chunks(keys, _BATCH_GET_KEYS):
        request = {table_name: {"Keys": chunk, "ConsistentRead": True}}
        for attempt in range(8):
            response = client.batch_get_item(RequestItems=request)
            items += response["Responses"].get(table_name, [])
            request = response.get("UnprocessedKeys") or {}
            if not request:
                break
            time.sleep(min(1.0, 0.05 * 2 ** attempt))  # throttled: AWS asks to send the rest later
        else:
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException",
                                         "Message": "keys left unprocessed"}}, "BatchGetItem")
    return items


class Tally:
    """Changes to one owner's counters, made as one Update in a transaction."""

    def __init__(self, notebooks=0, runs_active=0, runs_limit=None, scheduled_limit=None):
        self.notebooks = notebooks
        self.runs_active = runs_active
        self.runs_limit = runs_limit
        self.scheduled_limit = scheduled_limit
        self.schedules_set = {}  # notebook id -> until_ms: a scheduled notebook, new or not
        self.schedules_added = 0  # how many of those were not scheduled before
        self.schedules_removed = []  # notebook ids that were scheduled

    def action(self, table_name: str, owner: str) -> Optional[dict]:
        """The Update action, or None when nothing changes."""
        names, values, adds, sets, conditions = {}, {}, [], [], []
        scheduled = self.schedules_added - len(self.schedules_removed)
        for field, delta, limit in (("notebooks", self.notebooks, None),
                                    ("runs_active", self.runs_active, self.runs_limit),
                                    ("scheduled", scheduled, self.scheduled_limit)):
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
        update = {"TableName": table_name, "Key": {"owner": owner, "sk": COUNTS_SK},
                  "UpdateExpression": " ".join(clauses), "ExpressionAttributeNames": names}
        if values:
            update["ExpressionAttributeValues"] = values
        if conditions:
            update["ConditionExpression"] = " AND ".join(conditions)
        return {"Update": update}


def scheduled_until(counts: dict) -> dict:
    """From a counters item: scheduled notebook id -> its `until` (epoch ms)."""
    return {name[len(SCHEDULED_PREFIX):]: int(value) for name, value in counts.items()
            if name.startswith(SCHEDULED_PREFIX)}


def _schedule_presence(item: dict) -> str:
    """A condition that the notebook's stored schedule is still there, or still absent, as read."""
    return "attribute_exists(schedule)" if item.get("schedule") else "attribute_not_exists(schedule)"


class NotebookTable:
    """Notebook metadata, name claims, counters, run pointers and Run tokens in the notebooks table."""

    def __init__(self, table):
        self._table = table
        self._client = table.meta.client  # resource client: takes plain Python values; thread-safe
        self.name = table.name

    def key(self, owner: str, notebook_id: str) -> dict:
        """The primary key of a notebook's item."""
        return {"owner": owner, "sk": NOTEBOOK_PREFIX + notebook_id}

    def _claim(self, owner: str, name: str) -> dict:
        return {"owner": owner, "sk": NAME_PREFIX + name}

    def get(self, owner: str, notebook_id: str):
        """The notebook's item (deleting ones included), or None."""
        return self._table.get_item(Key=self.key(owner, notebook_id), ConsistentRead=True).get("Item")

    def get_many(self, owner: str, notebook_ids) -> dict:
        """notebook id -> item (deleting ones included) of those that exist; 100 per call."""
        keys = [self.key(owner, notebook_id) for notebook_id in dict.fromkeys(notebook_ids)]
        return {item["notebook_id"]: item for item in batch_get(self._client, self.name, keys)}

    def counts(self, owner: str) -> dict:
        """The owner's counters item (see the module's docstring); {} before the first write."""
        return self._table.get_item(Key={"owner": owner, "sk": COUNTS_SK}, ConsistentRead=True).get("Item") or {}

    def transact(self, owner: str, actions: list, tally: Tally = None) -> Optional[list]:
        """`actions` and the owner's counters changed by `tally`, all or nothing; the
        cancellation reasons (the counters' last) when a condition failed, else None."""
        counter = tally.action(self.name, owner) if tally else None
        return _transact(self._client, actions + ([counter] if counter else []))

    def create(self, item: dict) -> None:
        """Store a new notebook, claim its name and count it, together; NameTaken when the
        name is taken."""
        claim = {**self._claim(item["owner"], item["notebook_name"]), "notebook_id": item["notebook_id"]}
        codes = self.transact(item["owner"], [
            {"Put": {"TableName": self.name, "Item": {**self.key(item["owner"], item["notebook_id"]), **item},
                     "ConditionExpression": "attribute_not_exists(sk)"}},
            {"Put": {"TableName": self.name, "Item": claim, "ConditionExpression": "attribute_not_exists(sk)"}},
        ], Tally(notebooks=1))
        if codes and codes[1] == "ConditionalCheckFailed":
            raise NameTaken(item["notebook_name"])
        if codes:
            raise Conflict(item["notebook_id"])

    def rename(self, owner: str, notebook_id: str, old_name: str, new_name: str, changes: dict) -> None:
        """Move the notebook from `old_name` to `new_name` in one transaction.

        NameTaken when the owner has another notebook of that name; Conflict when the
        notebook changed (renamed or deleted) since `old_name` was read.
        """
        expression, names, values = _set_clause({"notebook_name": new_name, **changes})
        values[":old"] = old_name
        codes = self.transact(owner, [
            {"Update": {"TableName": self.name, "Key": self.key(owner, notebook_id),
                        "UpdateExpression": "SET " + expression,
                        "ConditionExpression": "notebook_name = :old AND attribute_not_exists(deleting)",
                        "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}},
            {"Delete": {"TableName": self.name, "Key": self._claim(owner, old_name)}},
            {"Put": {"TableName": self.name, "Item": {**self._claim(owner, new_name), "notebook_id": notebook_id},
                     "ConditionExpression": "attribute_not_exists(sk)"}},
        ])
        if codes and codes[0] != "ConditionalCheckFailed" and codes[2] == "ConditionalCheckFailed":
            raise NameTaken(new_name)
        if codes:
            raise Conflict(notebook_id)

    def update(self, owner: str, notebook_id: str, changes: dict) -> bool:
        """Set `changes` on a live notebook; False if it is gone."""
        expression, names, values = _set_clause(changes)
        return _conditional_update(
            self._table, Key=self.key(owner, notebook_id), UpdateExpression="SET " + expression,
            ConditionExpression="attribute_exists(sk) AND attribute_not_exists(deleting)",
            ExpressionAttributeNames=names, ExpressionAttributeValues=values,
        )

    def conditional_update(self, update: dict) -> bool:
        """One UpdateItem of this table (`update`: its Key and expressions); False, changing
        nothing, when its condition fails."""
        return _conditional_update(self._table, **update)

    def clear(self, owner: str, notebook_id: str, attribute: str) -> bool:
        """Remove `attribute` from a live notebook; False if it is gone or has none."""
        return _conditional_update(
            self._table, Key=self.key(owner, notebook_id), UpdateExpression="REMOVE #a",
            ConditionExpression="attribute_exists(#a) AND attribute_not_exists(deleting)",
            ExpressionAttributeNames={"#a": attribute},
        )

    def set_schedules(self, owner: str, entries: list, limit: Optional[int] = None, committed: list = None) -> list:
        """Store or clear the schedules of many notebooks, with the owner's counters.

        `entries`: (item as read, schedule or None, changes). Each write is conditional on
        the notebook being live with its schedule present or absent as read, and the whole
        is written in transactions of up to 99 notebooks. A notebook deleted meanwhile is
        left out. QuotaExceeded when more than `limit` notebooks would be scheduled.
        Appends each notebook written to `committed` (as it goes: a caller that undoes
        a failed request knows what was written); returns the ids left out.
        """
        gone = []

        def build(chunk):
            return [self._schedule_action(owner, *entry) for entry in chunk], self._schedule_tally(chunk, limit)

        def reread(chunk, codes):
            if codes[-1] == "ConditionalCheckFailed" and codes.count("ConditionalCheckFailed") == 1 \
                    and limit is not None:
                raise QuotaExceeded("scheduled")
            fresh = self.get_many(owner, [item["notebook_id"] for item, _, _ in chunk])
            live = {nid: item for nid, item in fresh.items() if not item.get("deleting")}
            gone.extend(item["notebook_id"] for item, _, _ in chunk if item["notebook_id"] not in live)
            return [(live[item["notebook_id"]], schedule, changes) for item, schedule, changes in chunk
                    if item["notebook_id"] in live]

        def written(chunk):
            if committed is not None:
                committed.extend(item["notebook_id"] for item, _, _ in chunk)

        _write_chunks(partial(self.transact, owner), entries, 1, build, reread, "schedules", written)
        return gone

    def _schedule_action(self, owner: str, item: dict, schedule, changes: dict) -> dict:
        expression, names, values = _set_clause({**changes, **({"schedule": schedule} if schedule else {})})
        update = "SET " + expression + ("" if schedule else " REMOVE #schedule")
        if not schedule:
            names["#schedule"] = "schedule"
        return {"Update": {"TableName": self.name, "Key": self.key(owner, item["notebook_id"]),
                           "UpdateExpression": update,
                           "ConditionExpression": "attribute_exists(sk) AND attribute_not_exists(deleting) AND "
                                                  + _schedule_presence(item),
                           "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}}

    @staticmethod
    def _schedule_tally(chunk: list, limit) -> Tally:
        tally = Tally(scheduled_limit=limit)
        for item, schedule, _ in chunk:
            if schedule:
                tally.schedules_set[item["notebook_id"]] = int(schedule["until_ms"])
                tally.schedules_added += 0 if item.get("schedule") else 1
            elif item.get("schedule"):
                tally.schedules_removed.append(item["notebook_id"])
        return tally

    def expire_schedule(self, owner: str, notebook_id: str, expected: dict) -> bool:
        """Remove the notebook's schedule (and count it off) only if it still holds
        `expected` (its `until_ms` and `expression`): a compare-and-delete. False, changing
        nothing, when it was replaced or removed since it was read."""
        tally = Tally()
        tally.schedules_removed.append(notebook_id)
        codes = self.transact(owner, [{"Update": {
            "TableName": self.name, "Key": self.key(owner, notebook_id), "UpdateExpression": "REMOVE #f",
            "ConditionExpression": "attribute_not_exists(deleting) AND #f.#u = :u AND #f.#e = :e",
            "ExpressionAttributeNames": {"#f": "schedule", "#u": "until_ms", "#e": "expression"},
            "ExpressionAttributeValues": {":u": expected["until_ms"], ":e": expected["expression"]}}}], tally)
        return codes is None

    def page(self, owner: str, limit=None, start_key=None) -> tuple:
        """(items, next_key): up to `limit` notebooks of `owner`, oldest first."""
        return self._query_page({"IndexName": BY_CREATED, "KeyConditionExpression": "#o = :o",
                                 "ExpressionAttributeNames": {"#o": "owner"},
                                 "ExpressionAttributeValues": {":o": owner}}, limit, start_key)

    def _query_page(self, request: dict, limit, start_key) -> tuple:
        """(items, next_key): one page of a Query of this table."""
        if limit:
            request["Limit"] = limit
        if start_key:
            request["ExclusiveStartKey"] = start_key
        page = self._client.query(TableName=self.name, **request)
        return page["Items"], page.get("LastEvaluatedKey")

    def all(self, owner: str) -> list:
        """Every notebook of `owner`, oldest first."""
        return _every_page(lambda start: self.page(owner, start_key=start))

    def mark_deleting(self, owner: str, items: list) -> list:
        """Flag these live notebooks as being deleted, so reads treat them as gone, and
        count them (and their schedules) off, 99 per transaction. Returns the items
        flagged now or before (a delete that failed halfway left its flag; the same
        request again finishes it); a notebook gone meanwhile is left out."""
        flagged = [item for item in items if item.get("deleting")]
        pending = [item for item in items if not item.get("deleting")]

        def build(chunk):
            tally = Tally(notebooks=-len(chunk))
            tally.schedules_removed = [item["notebook_id"] for item in chunk if item.get("schedule")]
            return [{"Update": {
                "TableName": self.name, "Key": self.key(owner, item["notebook_id"]),
                "UpdateExpression": "SET deleting = :t", "ExpressionAttributeValues": {":t": True},
                "ConditionExpression": "attribute_exists(sk) AND attribute_not_exists(deleting) AND "
                                       + _schedule_presence(item)}} for item in chunk], tally

        def reread(chunk, _codes):
            fresh = self.get_many(owner, [item["notebook_id"] for item in chunk])
            flagged.extend(item for item in fresh.values() if item.get("deleting"))
            return [item for item in fresh.values() if not item.get("deleting")]

        _write_chunks(partial(self.transact, owner), pending, 1, build, reread, "delete", flagged.extend)
        return flagged

    def remove(self, owner: str, items: list) -> None:
        """Delete these flagged notebooks' items and name claims, 50 per transaction."""
        for chunk in chunks(items, _TRANSACTION_ACTIONS // 2):
            actions = []
            for item in chunk:
                actions += [
                    {"Delete": {"TableName": self.name, "Key": self.key(owner, item["notebook_id"])}},
                    {"Delete": {"TableName": self.name, "Key": self._claim(owner, item["notebook_name"]),
                                "ConditionExpression": "attribute_not_exists(sk) OR notebook_id = :id",
                                "ExpressionAttributeValues": {":id": item["notebook_id"]}}},
                ]
            if self.transact(owner, actions) is not None:
                raise Conflict("remove")

    def run_pointer(self, owner: str, notebook_id: str, created_at: int, run_id: str) -> dict:
        """The item that lists a run under its notebook."""
        return {"owner": owner, "sk": f"{RUN_PREFIX}{notebook_id}#{created_at:015d}#{run_id}",
                "notebook_id": notebook_id, "run_id": run_id}

    def run_pointers(self, owner: str, notebook_id: str, limit=None, start_key=None, oldest_first=False) -> tuple:
        """(pointers, next_key): the notebook's runs, newest first (a consistent Query)."""
        return self._query_page({"KeyConditionExpression": "#o = :o AND begins_with(sk, :p)",
                                 "ExpressionAttributeNames": {"#o": "owner"},
                                 "ExpressionAttributeValues": {":o": owner, ":p": f"{RUN_PREFIX}{notebook_id}#"},
                                 "ConsistentRead": True, "ScanIndexForward": oldest_first}, limit, start_key)

    def all_run_pointers(self, owner: str, notebook_id: str) -> list:
        """Every run pointer of the notebook, newest first."""
        return _every_page(lambda start: self.run_pointers(owner, notebook_id, start_key=start))

    def token(self, owner: str, token_hash: str, now_s: int):
        """A Run token's item, or None if there is none or it expired."""
        item = self._table.get_item(Key={"owner": owner, "sk": TOKEN_PREFIX + token_hash},
                                    ConsistentRead=True).get("Item")
        return item if item and int(item[TTL_ATTRIBUTE]) > now_s else None

    def claim_token(self, owner: str, token_hash: str, request: dict, now_s: int, ttl_s: int) -> bool:
        """Store a Run token with the request it stands for; False when another request
        holds it (unexpired)."""
        try:
            self._table.put_item(
                Item={"owner": owner, "sk": TOKEN_PREFIX + token_hash, TTL_ATTRIBUTE: now_s + ttl_s, **request},
                ConditionExpression="attribute_not_exists(sk) OR #e < :now",
                ExpressionAttributeNames={"#e": TTL_ATTRIBUTE}, ExpressionAttributeValues={":now": now_s})
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        return True


class RunTable:
    """Run records in the runs table, listed under their notebooks in the notebooks table.

    Status moves only forward, each step a conditional write: queued → running (a run is
    claimed once, so a second delivery of the same invocation does nothing) → succeeded,
    failed or cancelled (a queued run may be cancelled too). A cancel of a running run is
    a request (`cancel_requested_at`) that the runner acts on; a run whose cancel was
    requested can only end cancelled. A run counts as active on its owner's counters from
    its creation to its end, whichever (or its deletion), in the same transactions.
    """

    # Per run: its record, its pointer, its notebook's update.
    _ACTIONS_PER_RUN = 3
    # Per run deleted: its record and its pointer.
    _ACTIONS_PER_DELETION = 2

    def __init__(self, table, notebooks: NotebookTable):
        self._table = table
        self._client = table.meta.client
        self.notebooks = notebooks
        self.name = table.name

    def create(self, owner: str, runs: list, active_limit: Optional[int] = None) -> Optional[str]:
        """Store new runs of distinct notebooks of `owner`, all or nothing: each with its
        pointer, counted on its notebook (`no_of_runs`, `runs_kept`, `last_run` moved to
        it) and on the owner's active runs. At most `runs_per_transaction()` runs.

        None when written; else why not: "quota" (more than `active_limit` active runs),
        "exists" (a run id is taken), "notebook" (a notebook is gone, being deleted, or
        has a later `last_run`).
        """
        actions = []
        for run in runs:
            actions += [
                {"Put": {"TableName": self.name, "Item": run, "ConditionExpression": "attribute_not_exists(run_id)"}},
                {"Put": {"TableName": self.notebooks.name,
                         "Item": self.notebooks.run_pointer(owner, run["notebook_id"], run["created_at"],
                                                             run["run_id"])}},
                {"Update": {"TableName": self.notebooks.name, "Key": self.notebooks.key(owner, run["notebook_id"]),
                            "UpdateExpression": "ADD no_of_runs :one, runs_kept :one SET last_run = :at",
                            "ConditionExpression": "attribute_exists(sk) AND attribute_not_exists(deleting) AND "
                                                   "(attribute_not_exists(last_run) OR last_run < :at)",
                            "ExpressionAttributeValues": {":one": 1, ":at": run["created_at"]}}},
            ]
        codes = self.notebooks.transact(owner, actions, Tally(runs_active=len(runs), runs_limit=active_limit))
        if codes is None:
            return None
        failed = {index % self._ACTIONS_PER_RUN for index, code in enumerate(codes[:len(actions)])
                  if code == "ConditionalCheckFailed"}
        if 0 in failed:
            return "exists"
        return "notebook" if failed else "quota"

    @classmethod
    def runs_per_transaction(cls) -> int:
        """How many runs `create` takes at once."""
        return _entries_per_transaction(cls._ACTIONS_PER_RUN)

    def get(self, run_id: str):
        """The run's item, or None."""
        return self._table.get_item(Key={"run_id": run_id}, ConsistentRead=True).get("Item")

    def get_many(self, run_ids) -> dict:
        """run id -> item of those that exist; 100 per call."""
        keys = [{"run_id": run_id} for run_id in dict.fromkeys(run_ids)]
        return {item["run_id"]: item for item in batch_get(self._client, self.name, keys)}

    def unfinished(self) -> list:
        """Every run still queued or running: a Scan, for the local stack's start only."""
        return all_items(self._table.scan, FilterExpression="#status IN (:queued, :running)",
                         ExpressionAttributeNames={"#status": "status"},
                         ExpressionAttributeValues={":queued": "queued", ":running": "running"})

    def transition(self, run_id: str, expected_status: str, changes: dict) -> bool:
        """Apply `changes` if the run is still in `expected_status` (its status stays
        active: for an end, see `end`)."""
        return _conditional_update(self._table, **self._status_update(run_id, expected_status, changes))

    def end(self, run: dict, changes: dict, unless_cancelling: bool = False) -> bool:
        """Apply `changes` (a final status among them) if the run is still in the status
        it has in `run` (and, with `unless_cancelling`, no cancel has been requested),
        counting it off the owner's active runs in the same transaction."""
        update = self._status_update(run["run_id"], run["status"], changes)
        if unless_cancelling:
            update["ConditionExpression"] += " AND attribute_not_exists(cancel_requested_at)"
        action = {"Update": {"TableName": self.name, **update}}
        active = run["status"] in ACTIVE and changes.get("status") in TERMINAL
        return self.notebooks.transact(run["owner"], [action], Tally(runs_active=-1 if active else 0)) is None

    @staticmethod
    def _status_update(run_id: str, expected_status: str, changes: dict) -> dict:
        """An update setting `changes` on the run if it is still in `expected_status`."""
        expression, names, values = _set_clause(changes)
        names["#status"] = "status"
        values[":expected"] = expected_status
        return {"Key": {"run_id": run_id}, "UpdateExpression": "SET " + expression,
                "ConditionExpression": "#status = :expected",
                "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}

    def delete(self, owner: str, pointers: list, notebook_id: Optional[str] = None, read: dict = None) -> None:
        """Delete these runs (given by their pointers) with their pointers, counting the
        active ones off the owner's runs, 49 per transaction; with `notebook_id`, also off
        that notebook's `runs_kept`. A run whose status changes meanwhile is read again.
        `read`: every one of these runs as just read (run id -> item), for first attempts."""
        attempted = set()

        def build(chunk):  # reads the runs each time: a run's status is the condition on its delete
            run_ids = [pointer["run_id"] for pointer in chunk]
            runs = read if read is not None and attempted.isdisjoint(run_ids) else self.get_many(run_ids)
            attempted.update(run_ids)
            actions = [action for pointer in chunk for action in self._deletion(owner, pointer, runs)]
            if notebook_id:
                actions.append({"Update": {
                    "TableName": self.notebooks.name, "Key": self.notebooks.key(owner, notebook_id),
                    "UpdateExpression": "ADD runs_kept :minus", "ConditionExpression": "attribute_exists(sk)",
                    "ExpressionAttributeValues": {":minus": -len(chunk)}}})
            active = sum(1 for pointer in chunk if runs.get(pointer["run_id"], {}).get("status") in ACTIVE)
            return actions, Tally(runs_active=-active)

        _write_chunks(partial(self.notebooks.transact, owner), pointers, self._ACTIONS_PER_DELETION, build,
                      lambda chunk, _codes: chunk, "runs")

    def delete_many(self, owner: str, pointers: list, workers: int) -> None:
        """`delete` of many runs (a notebook Delete's), on up to `workers` threads: the runs
        are read 100 per call, and those that have ended are deleted 49 per transaction
        side by side (a transaction of ended runs changes no counter, so two never
        conflict); the rest by `delete`, with what was read, and any that changed since
        read by `delete` again."""
        runs = {}
        for found in in_parallel(self.get_many, chunks([pointer["run_id"] for pointer in pointers], _BATCH_GET_KEYS),
                                 workers):
            runs.update(found)
        ended = [pointer for pointer in pointers if runs.get(pointer["run_id"], {}).get("status") in TERMINAL]

        def delete_ended(chunk) -> list:
            actions = [action for pointer in chunk for action in self._deletion(owner, pointer, runs)]
            return [] if self.notebooks.transact(owner, actions) is None else chunk

        per_transaction = _entries_per_transaction(self._ACTIONS_PER_DELETION)
        changed = in_parallel(delete_ended, chunks(ended, per_transaction), workers)
        ended_ids = {pointer["run_id"] for pointer in ended}
        changed = [pointer for chunk in changed for pointer in chunk]
        self.delete(owner, [pointer for pointer in pointers if pointer["run_id"] not in ended_ids],
                    read={run_id: run for run_id, run in runs.items() if run_id not in ended_ids})
        self.delete(owner, changed)

    def _deletion(self, owner: str, pointer: dict, runs: dict) -> list:
        """The actions deleting a run (if still in the status read, or still absent) and its pointer."""
        run = runs.get(pointer["run_id"])
        condition = ({"ConditionExpression": "#s = :s", "ExpressionAttributeNames": {"#s": "status"},
                      "ExpressionAttributeValues": {":s": run["status"]}} if run
                     else {"ConditionExpression": "attribute_not_exists(run_id)"})
        return [{"Delete": {"TableName": self.name, "Key": {"run_id": pointer["run_id"]}, **condition}},
                {"Delete": {"TableName": self.notebooks.name, "Key": {"owner": owner, "sk": pointer["sk"]}}}]
