"""Storage of metadata in DynamoDB: notebooks, their names, and run records.

Notebooks table, partitioned by owner, so one user's requests never read another's items:
  hash `owner`, range `sk`:
    `nb#<notebook_id>`  a notebook's metadata;
    `name#<name>`       a name claim. Creating and renaming write the notebook and its
                        claims in one transaction, so names are unique per owner and two
                        notebooks never share a name, not even for a moment.
  LSI `by_created` (owner, created_at): sparse, as only notebooks carry `created_at`;
  List is a Query on it, oldest first, and Count a Query of one partition.
Runs table:
  hash `run_id`; GSI `by_notebook` (notebook_id, created_at) for a notebook's history.
"""
from botocore.exceptions import ClientError

from .aws import all_items, error_code

NOTEBOOK_PREFIX = "nb#"
NAME_PREFIX = "name#"
BY_CREATED = "by_created"
BY_NOTEBOOK = "by_notebook"


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
            "AttributeDefinitions": attributes(run_id=string, notebook_id=string, created_at=number),
            "GlobalSecondaryIndexes": [
                {"IndexName": BY_NOTEBOOK, "KeySchema": key("notebook_id", "created_at"), "Projection": everything}
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
    """Create the tables that do not exist yet (local stack and tests)."""
    existing = set(dynamodb.list_tables()["TableNames"])
    for definition in table_definitions(settings):
        if definition["TableName"] not in existing:
            dynamodb.create_table(**definition)
            dynamodb.get_waiter("table_exists").wait(TableName=definition["TableName"])


class NameTaken(Exception):
    """The owner already has a notebook of that name."""


class Conflict(Exception):
    """A concurrent change won the race; re-read and try again."""


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


class NotebookTable:
    """Notebook metadata and name claims in the notebooks table."""

    def __init__(self, table):
        self._table = table
        self._client = table.meta.client  # resource client: takes plain Python values
        self.name = table.name

    def key(self, owner: str, notebook_id: str) -> dict:
        """The primary key of a notebook's item."""
        return {"owner": owner, "sk": NOTEBOOK_PREFIX + notebook_id}

    def _claim(self, owner: str, name: str) -> dict:
        return {"owner": owner, "sk": NAME_PREFIX + name}

    def get(self, owner: str, notebook_id: str):
        """The notebook's item (deleting ones included), or None."""
        return self._table.get_item(Key=self.key(owner, notebook_id), ConsistentRead=True).get("Item")

    def create(self, item: dict) -> None:
        """Store a new notebook and claim its name together; NameTaken when it is taken."""
        claim = {**self._claim(item["owner"], item["notebook_name"]), "notebook_id": item["notebook_id"]}
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": self.name, "Item": {**self.key(item["owner"], item["notebook_id"]), **item},
                             "ConditionExpression": "attribute_not_exists(sk)"}},
                    {"Put": {"TableName": self.name, "Item": claim, "ConditionExpression": "attribute_not_exists(sk)"}},
                ]
            )
        except ClientError as error:
            if _is_cancelled(error) and _cancellation_codes(error)[1:] == ["ConditionalCheckFailed"]:
                raise NameTaken(item["notebook_name"])
            raise

    def rename(self, owner: str, notebook_id: str, old_name: str, new_name: str, changes: dict) -> None:
        """Move the notebook from `old_name` to `new_name` in one transaction.

        NameTaken when the owner has another notebook of that name; Conflict when the
        notebook changed (renamed or deleted) since `old_name` was read.
        """
        expression, names, values = _set_clause({"notebook_name": new_name, **changes})
        values[":old"] = old_name
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {"Update": {"TableName": self.name, "Key": self.key(owner, notebook_id),
                                "UpdateExpression": "SET " + expression,
                                "ConditionExpression": "notebook_name = :old AND attribute_not_exists(deleting)",
                                "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}},
                    {"Delete": {"TableName": self.name, "Key": self._claim(owner, old_name)}},
                    {"Put": {"TableName": self.name,
                             "Item": {**self._claim(owner, new_name), "notebook_id": notebook_id},
                             "ConditionExpression": "attribute_not_exists(sk)"}},
                ]
            )
        except ClientError as error:
            if not _is_cancelled(error):
                raise
            codes = _cancellation_codes(error)
            if codes[0] == "ConditionalCheckFailed":
                raise Conflict(notebook_id)
            if codes[2:] == ["ConditionalCheckFailed"]:
                raise NameTaken(new_name)
            raise

    def update(self, owner: str, notebook_id: str, changes: dict, remove: tuple = ()) -> bool:
        """Set `changes` (and remove `remove`) on a live notebook; False if it is gone."""
        expression, names, values = _set_clause(changes)
        update = "SET " + expression
        if remove:
            names.update({f"#r{i}": field for i, field in enumerate(remove)})
            update += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(remove)))
        return _conditional_update(
            self._table, Key=self.key(owner, notebook_id), UpdateExpression=update,
            ConditionExpression="attribute_exists(sk) AND attribute_not_exists(deleting)",
            ExpressionAttributeNames=names, ExpressionAttributeValues=values,
        )

    def remove_if(self, owner: str, notebook_id: str, field: str, expected: dict) -> bool:
        """Remove map attribute `field` only if its entries still equal `expected`.

        A compare-and-delete: False (nothing changed) when `field` changed since it was
        read, or the notebook is gone.
        """
        names = {"#f": field, **{f"#k{i}": key for i, key in enumerate(expected)}}
        values = {f":k{i}": value for i, value in enumerate(expected.values())}
        condition = " AND ".join(f"#f.#k{i} = :k{i}" for i in range(len(expected)))
        return _conditional_update(
            self._table, Key=self.key(owner, notebook_id), UpdateExpression="REMOVE #f",
            ConditionExpression=condition, ExpressionAttributeNames=names, ExpressionAttributeValues=values,
        )

    def lock(self, owner: str, notebook_id: str, token: str, now_ms: int, lease_ms: int) -> bool:
        """Take the notebook's schedule lock for `lease_ms` (free, or its lease expired).

        False when another holder has it, or the notebook's item is gone.
        """
        return _conditional_update(
            self._table, Key=self.key(owner, notebook_id),
            UpdateExpression="SET schedule_lock = :token, schedule_lock_until = :until",
            ConditionExpression="attribute_exists(sk) AND "
                                "(attribute_not_exists(schedule_lock) OR schedule_lock_until < :now)",
            ExpressionAttributeValues={":token": token, ":until": now_ms + lease_ms, ":now": now_ms},
        )

    def unlock(self, owner: str, notebook_id: str, token: str) -> None:
        """Release the schedule lock if `token` still holds it."""
        _conditional_update(
            self._table, Key=self.key(owner, notebook_id),
            UpdateExpression="REMOVE schedule_lock, schedule_lock_until",
            ConditionExpression="schedule_lock = :token", ExpressionAttributeValues={":token": token},
        )

    def page(self, owner: str, limit=None, start_key=None) -> tuple:
        """(items, next_key): up to `limit` notebooks of `owner`, oldest first."""
        kwargs = {"IndexName": BY_CREATED, "KeyConditionExpression": "#o = :o",
                  "ExpressionAttributeNames": {"#o": "owner"}, "ExpressionAttributeValues": {":o": owner}}
        if limit:
            kwargs["Limit"] = limit
        if start_key:
            kwargs["ExclusiveStartKey"] = start_key
        page = self._table.query(**kwargs)
        return page["Items"], page.get("LastEvaluatedKey")

    def all(self, owner: str) -> list:
        """Every notebook of `owner`, oldest first."""
        items, start = [], None
        while True:
            page, start = self.page(owner, start_key=start)
            items += page
            if not start:
                return items

    def note_run(self, owner: str, notebook_id: str, at_ms: int) -> None:
        """Move `last_run` to `at_ms`, unless a later run is already there: conditional, so
        runs recorded at the same time leave the latest, never an earlier one."""
        _conditional_update(
            self._table, Key=self.key(owner, notebook_id), UpdateExpression="SET last_run = :at",
            ConditionExpression="attribute_exists(sk) AND (attribute_not_exists(last_run) OR last_run < :at)",
            ExpressionAttributeValues={":at": at_ms},
        )

    def mark_deleting(self, owner: str, notebook_id: str):
        """Flag the notebook as being deleted, so reads treat it as gone; its item, or None.

        A delete that fails halfway leaves the flag, and the same request again finishes it.
        """
        try:
            return self._table.update_item(
                Key=self.key(owner, notebook_id), UpdateExpression="SET deleting = :t",
                ConditionExpression="attribute_exists(sk)", ExpressionAttributeValues={":t": True},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as error:
            if _is_condition_failure(error):
                return None
            raise

    def remove(self, owner: str, notebook_id: str, name: str) -> None:
        """Delete the notebook's item and its name claim together."""
        self._client.transact_write_items(
            TransactItems=[
                {"Delete": {"TableName": self.name, "Key": self.key(owner, notebook_id)}},
                {"Delete": {"TableName": self.name, "Key": self._claim(owner, name),
                            "ConditionExpression": "attribute_not_exists(sk) OR notebook_id = :id",
                            "ExpressionAttributeValues": {":id": notebook_id}}},
            ]
        )


class RunTable:
    """Run records in the runs table.

    Status moves only forward, each step a conditional write: queued → running (a run is
    claimed once, so a second delivery of the same invocation does nothing) → succeeded,
    failed or cancelled (a queued run may be cancelled too). A cancel of a running run is
    a request (`cancel_requested_at`) that the runner acts on; a run whose cancel was
    requested can only end cancelled.
    """

    def __init__(self, table, notebooks: NotebookTable):
        self._table = table
        self._client = table.meta.client
        self._notebooks = notebooks
        self.name = table.name

    def create(self, run: dict) -> bool:
        """Store a new run and count it on its notebook, in one transaction, then move the
        notebook's `last_run` to it, unless a later run got there first.

        False when the notebook is gone (or being deleted) or the run id exists already.
        """
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": self.name, "Item": run, "ConditionExpression": "attribute_not_exists(run_id)"}},
                    {"Update": {"TableName": self._notebooks.name,
                                "Key": self._notebooks.key(run["owner"], run["notebook_id"]),
                                "UpdateExpression": "ADD no_of_runs :one",
                                "ConditionExpression": "attribute_exists(sk) AND attribute_not_exists(deleting)",
                                "ExpressionAttributeValues": {":one": 1}}},
                ]
            )
        except ClientError as error:
            if _is_cancelled(error) and "ConditionalCheckFailed" in _cancellation_codes(error):
                return False
            raise
        self._notebooks.note_run(run["owner"], run["notebook_id"], run["created_at"])
        return True

    def get(self, run_id: str):
        """The run's item, or None."""
        return self._table.get_item(Key={"run_id": run_id}, ConsistentRead=True).get("Item")

    def for_notebook(self, notebook_id: str) -> list:
        """Every run of the notebook, newest first."""
        return all_items(
            self._table.query, IndexName=BY_NOTEBOOK, KeyConditionExpression="notebook_id = :n",
            ExpressionAttributeValues={":n": notebook_id}, ScanIndexForward=False,
        )

    def unfinished(self) -> list:
        """Every run still queued or running: a Scan, for the local stack's start only."""
        return all_items(self._table.scan, FilterExpression="#status IN (:queued, :running)",
                         ExpressionAttributeNames={"#status": "status"},
                         ExpressionAttributeValues={":queued": "queued", ":running": "running"})

    def transition(self, run_id: str, expected_status: str, changes: dict, unless_cancelling: bool = False) -> bool:
        """Apply `changes` if the run is still in `expected_status` (and, with
        `unless_cancelling`, no cancel has been requested)."""
        expression, names, values = _set_clause(changes)
        names["#status"] = "status"
        values[":expected"] = expected_status
        condition = "#status = :expected"
        if unless_cancelling:
            condition += " AND attribute_not_exists(cancel_requested_at)"
        return _conditional_update(
            self._table, Key={"run_id": run_id}, UpdateExpression="SET " + expression,
            ConditionExpression=condition,
            ExpressionAttributeNames=names, ExpressionAttributeValues=values,
        )

    def delete(self, run_ids) -> None:
        """Delete these run records."""
        with self._table.batch_writer() as batch:
            for run_id in run_ids:
                batch.delete_item(Key={"run_id": run_id})
