"""The notebooks table: notebook metadata, name claims, per-owner counters, run pointers and
Run tokens (the item layout is described in tables.py)."""

import json
from functools import partial
from typing import Optional

from botocore.exceptions import ClientError

from chalicelib.common.batches import chunks
from chalicelib.storage.tables import (
    BY_CREATED,
    COUNTS_SK,
    NAME_PREFIX,
    NOTEBOOK_PREFIX,
    RUN_PREFIX,
    SCHEDULED_PREFIX,
    TOKEN_PREFIX,
    TRANSACTION_ACTIONS,
    TTL_ATTRIBUTE,
    Conflict,
    NameTaken,
    QuotaExceeded,
    Tally,
    batch_get,
    conditional_update,
    every_page,
    is_condition_failure,
    items_per_transaction,
    set_clause,
    transact,
    write_chunks,
)


def scheduled_until(counts: dict) -> dict:
    """From a counters item: scheduled notebook id -> its `until` (epoch ms)."""
    return {
        name[len(SCHEDULED_PREFIX) :]: int(value) for name, value in counts.items() if name.startswith(SCHEDULED_PREFIX)
    }


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
        """The owner's counters item (see the module's docstring); {} before the first write.
        DEPLOYMENT's: the deployment's counters."""
        return self._table.get_item(Key={"owner": owner, "sk": COUNTS_SK}, ConsistentRead=True).get("Item") or {}

    def counts_of(self, owners) -> dict:
        """owner -> counters item, of those of `owners` that have one; 100 per call."""
        keys = [{"owner": owner, "sk": COUNTS_SK} for owner in dict.fromkeys(owners)]
        return {item["owner"]: item for item in batch_get(self._client, self.name, keys)}

    def transact(self, owner: str, actions: list, tally: Optional[Tally] = None) -> Optional[list]:
        """`actions` and the owner's counters changed by `tally` (and the deployment's
        scheduled total, when the owner's changes), all or nothing; the cancellation
        reasons (`actions`' first, then the owner's counters', then the deployment's)
        when a condition failed, else None."""
        counters = [tally.action(self.name, owner), tally.deployment_action(self.name)] if tally else []
        return transact(self._client, actions + [counter for counter in counters if counter])

    def create(self, item: dict) -> None:
        """Store a new notebook, claim its name and count it, together; NameTaken when the
        name is taken."""
        claim = {**self._claim(item["owner"], item["notebook_name"]), "notebook_id": item["notebook_id"]}
        codes = self.transact(
            item["owner"],
            [
                {
                    "Put": {
                        "TableName": self.name,
                        "Item": {**self.key(item["owner"], item["notebook_id"]), **item},
                        "ConditionExpression": "attribute_not_exists(sk)",
                    }
                },
                {"Put": {"TableName": self.name, "Item": claim, "ConditionExpression": "attribute_not_exists(sk)"}},
            ],
            Tally(notebooks=1),
        )
        if codes and codes[1] == "ConditionalCheckFailed":
            raise NameTaken(item["notebook_name"])
        if codes:
            raise Conflict(item["notebook_id"])

    def rename(self, owner: str, notebook_id: str, old_name: str, new_name: str, changes: dict) -> None:
        """Move the notebook from `old_name` to `new_name` in one transaction.

        NameTaken when the owner has another notebook of that name; Conflict when the
        notebook changed (renamed or deleted) since `old_name` was read.
        """
        expression, names, values = set_clause({"notebook_name": new_name, **changes})
        values[":old"] = old_name
        codes = self.transact(
            owner,
            [
                {
                    "Update": {
                        "TableName": self.name,
                        "Key": self.key(owner, notebook_id),
                        "UpdateExpression": "SET " + expression,
                        "ConditionExpression": "notebook_name = :old AND attribute_not_exists(deleting)",
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": values,
                    }
                },
                {"Delete": {"TableName": self.name, "Key": self._claim(owner, old_name)}},
                {
                    "Put": {
                        "TableName": self.name,
                        "Item": {**self._claim(owner, new_name), "notebook_id": notebook_id},
                        "ConditionExpression": "attribute_not_exists(sk)",
                    }
                },
            ],
        )
        if codes and codes[0] != "ConditionalCheckFailed" and codes[2] == "ConditionalCheckFailed":
            raise NameTaken(new_name)
        if codes:
            raise Conflict(notebook_id)

    def update(self, owner: str, notebook_id: str, changes: dict) -> bool:
        """Set `changes` on a live notebook; False if it is gone."""
        expression, names, values = set_clause(changes)
        return conditional_update(
            self._table,
            Key=self.key(owner, notebook_id),
            UpdateExpression="SET " + expression,
            ConditionExpression="attribute_exists(sk) AND attribute_not_exists(deleting)",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def conditional_update(self, update: dict) -> bool:
        """One UpdateItem of this table (`update`: its Key and expressions); False, changing
        nothing, when its condition fails."""
        return conditional_update(self._table, **update)

    def clear(self, owner: str, notebook_id: str, attribute: str) -> bool:
        """Remove `attribute` from a live notebook; False if it is gone or has none."""
        return conditional_update(
            self._table,
            Key=self.key(owner, notebook_id),
            UpdateExpression="REMOVE #a",
            ConditionExpression="attribute_exists(#a) AND attribute_not_exists(deleting)",
            ExpressionAttributeNames={"#a": attribute},
        )

    def set_schedules(
        self,
        owner: str,
        entries: list,
        limit: Optional[int] = None,
        committed: Optional[list] = None,
        total_limit: Optional[int] = None,
    ) -> list:
        """Store or clear the schedules of many notebooks, with the owner's counters.

        `entries`: (item as read, schedule or None, changes). Each write is conditional on
        the notebook being live with its schedule present or absent as read, and the whole
        is written in transactions of up to 98 notebooks. A notebook deleted meanwhile is
        left out. QuotaExceeded when more than `limit` notebooks of the owner would be
        scheduled ("scheduled"), or more than `total_limit` of all owners ("scheduled_total").
        Appends each notebook written to `committed` (as it goes: a caller that undoes
        a failed request knows what was written); returns the ids left out.
        """
        gone: list[str] = []

        def build(chunk):
            return [self._schedule_action(owner, *entry) for entry in chunk], self._schedule_tally(
                chunk, limit, total_limit
            )

        def reread(chunk, codes):
            # Only a counter refused: a quota, the owner's or (last) the deployment's.
            counters = codes[len(chunk) :]
            if "ConditionalCheckFailed" in counters and "ConditionalCheckFailed" not in codes[: len(chunk)]:
                raise QuotaExceeded("scheduled" if counters[0] == "ConditionalCheckFailed" else "scheduled_total")
            fresh = self.get_many(owner, [item["notebook_id"] for item, _, _ in chunk])
            live = {nid: item for nid, item in fresh.items() if not item.get("deleting")}
            gone.extend(item["notebook_id"] for item, _, _ in chunk if item["notebook_id"] not in live)
            return [
                (live[item["notebook_id"]], schedule, changes)
                for item, schedule, changes in chunk
                if item["notebook_id"] in live
            ]

        def written(chunk):
            if committed is not None:
                committed.extend(item["notebook_id"] for item, _, _ in chunk)

        largest = max((len(json.dumps(schedule, default=str)) for _, schedule, _ in entries if schedule), default=0)
        write_chunks(
            partial(self.transact, owner),
            entries,
            1,
            build,
            reread,
            "schedules",
            written,
            max_entries=items_per_transaction(largest),
        )
        return gone

    def _schedule_action(self, owner: str, item: dict, schedule, changes: dict) -> dict:
        expression, names, values = set_clause({**changes, **({"schedule": schedule} if schedule else {})})
        update = "SET " + expression + ("" if schedule else " REMOVE #schedule")
        if not schedule:
            names["#schedule"] = "schedule"
        return {
            "Update": {
                "TableName": self.name,
                "Key": self.key(owner, item["notebook_id"]),
                "UpdateExpression": update,
                "ConditionExpression": "attribute_exists(sk) AND attribute_not_exists(deleting) AND "
                + _schedule_presence(item),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
            }
        }

    @staticmethod
    def _schedule_tally(chunk: list, limit, total_limit) -> Tally:
        tally = Tally(scheduled_limit=limit, scheduled_total_limit=total_limit)
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
        codes = self.transact(
            owner,
            [
                {
                    "Update": {
                        "TableName": self.name,
                        "Key": self.key(owner, notebook_id),
                        "UpdateExpression": "REMOVE #f",
                        "ConditionExpression": "attribute_not_exists(deleting) AND #f.#u = :u AND #f.#e = :e",
                        "ExpressionAttributeNames": {"#f": "schedule", "#u": "until_ms", "#e": "expression"},
                        "ExpressionAttributeValues": {":u": expected["until_ms"], ":e": expected["expression"]},
                    }
                }
            ],
            tally,
        )
        return codes is None

    def page(self, owner: str, limit=None, start_key=None) -> tuple:
        """(items, next_key): up to `limit` notebooks of `owner`, oldest first."""
        return self._query_page(
            {
                "IndexName": BY_CREATED,
                "KeyConditionExpression": "#o = :o",
                "ExpressionAttributeNames": {"#o": "owner"},
                "ExpressionAttributeValues": {":o": owner},
            },
            limit,
            start_key,
        )

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
        return every_page(lambda start: self.page(owner, start_key=start))

    def mark_deleting(self, owner: str, items: list) -> list:
        """Flag these live notebooks as being deleted, so reads treat them as gone, and
        count them (and their schedules) off, 98 per transaction. Returns the items
        flagged now or before (a delete that failed halfway left its flag; the same
        request again finishes it); a notebook gone meanwhile is left out."""
        flagged = [item for item in items if item.get("deleting")]
        pending = [item for item in items if not item.get("deleting")]

        def build(chunk):
            tally = Tally(notebooks=-len(chunk))
            tally.schedules_removed = [item["notebook_id"] for item in chunk if item.get("schedule")]
            return [
                {
                    "Update": {
                        "TableName": self.name,
                        "Key": self.key(owner, item["notebook_id"]),
                        "UpdateExpression": "SET deleting = :t",
                        "ExpressionAttributeValues": {":t": True},
                        "ConditionExpression": "attribute_exists(sk) AND attribute_not_exists(deleting) AND "
                        + _schedule_presence(item),
                    }
                }
                for item in chunk
            ], tally

        def reread(chunk, _codes):
            fresh = self.get_many(owner, [item["notebook_id"] for item in chunk])
            flagged.extend(item for item in fresh.values() if item.get("deleting"))
            return [item for item in fresh.values() if not item.get("deleting")]

        write_chunks(partial(self.transact, owner), pending, 1, build, reread, "delete", flagged.extend)
        return flagged

    def remove(self, owner: str, items: list) -> None:
        """Delete these flagged notebooks' items and name claims, 50 per transaction."""
        for chunk in chunks(items, TRANSACTION_ACTIONS // 2):
            actions = []
            for item in chunk:
                actions += [
                    {"Delete": {"TableName": self.name, "Key": self.key(owner, item["notebook_id"])}},
                    {
                        "Delete": {
                            "TableName": self.name,
                            "Key": self._claim(owner, item["notebook_name"]),
                            "ConditionExpression": "attribute_not_exists(sk) OR notebook_id = :id",
                            "ExpressionAttributeValues": {":id": item["notebook_id"]},
                        }
                    },
                ]
            if self.transact(owner, actions) is not None:
                raise Conflict("remove")

    def run_pointer(self, owner: str, notebook_id: str, created_at: int, run_id: str) -> dict:
        """The item that lists a run under its notebook."""
        return {
            "owner": owner,
            "sk": f"{RUN_PREFIX}{notebook_id}#{created_at:015d}#{run_id}",
            "notebook_id": notebook_id,
            "run_id": run_id,
        }

    def run_pointers(self, owner: str, notebook_id: str, limit=None, start_key=None, oldest_first=False) -> tuple:
        """(pointers, next_key): the notebook's runs, newest first (a consistent Query)."""
        return self._query_page(
            {
                "KeyConditionExpression": "#o = :o AND begins_with(sk, :p)",
                "ExpressionAttributeNames": {"#o": "owner"},
                "ExpressionAttributeValues": {":o": owner, ":p": f"{RUN_PREFIX}{notebook_id}#"},
                "ConsistentRead": True,
                "ScanIndexForward": oldest_first,
            },
            limit,
            start_key,
        )

    def all_run_pointers(self, owner: str, notebook_id: str) -> list:
        """Every run pointer of the notebook, newest first."""
        return every_page(lambda start: self.run_pointers(owner, notebook_id, start_key=start))

    def token(self, owner: str, token_hash: str, now_s: int):
        """A Run token's item, or None if there is none or it expired."""
        item = self._table.get_item(Key={"owner": owner, "sk": TOKEN_PREFIX + token_hash}, ConsistentRead=True).get(
            "Item"
        )
        return item if item and int(item[TTL_ATTRIBUTE]) > now_s else None

    def claim_token(self, owner: str, token_hash: str, request: dict, now_s: int, ttl_s: int) -> bool:
        """Store a Run token with the request it stands for; False when another request
        holds it (unexpired)."""
        try:
            self._table.put_item(
                Item={"owner": owner, "sk": TOKEN_PREFIX + token_hash, TTL_ATTRIBUTE: now_s + ttl_s, **request},
                ConditionExpression="attribute_not_exists(sk) OR #e < :now",
                ExpressionAttributeNames={"#e": TTL_ATTRIBUTE},
                ExpressionAttributeValues={":now": now_s},
            )
        except ClientError as error:
            if is_condition_failure(error):
                return False
            raise
        return True
