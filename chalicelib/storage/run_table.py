"""The runs table: run records, each listed under its notebook in the notebooks table."""

from functools import partial
from typing import Optional

from chalicelib.common.aws import all_items
from chalicelib.common.batches import chunks, in_parallel
from chalicelib.common.model import ACTIVE, FINAL, Pool, RunStatus, pool_of
from chalicelib.storage.notebook_table import NotebookTable
from chalicelib.storage.tables import (
    ACTIVE_STATUS,
    BATCH_GET_KEYS,
    BY_STATUS,
    COUNTS_SK,
    DEPLOYMENT,
    RUNS_BY_OWNER,
    RUNS_BY_OWNER_STATUS,
    SLOT_COUNTERS,
    Tally,
    batch_get,
    conditional_update,
    entries_per_transaction,
    set_clause,
    transact,
    write_chunks,
)


def index_status(status: str, pool: Pool) -> str:
    """A queued or running run's key in the `by_status` index: its status, but a queued
    Fargate run's apart ("queued#fargate"), so each pool's queue is a partition of its
    own, read without the other's."""
    return f"{status}#{pool}" if status == RunStatus.QUEUED and pool == Pool.FARGATE else status


def owner_status(owner: Optional[str], status: str) -> str:
    """The key of the runs index by owner and status."""
    if owner is None:
        raise ValueError("a run's status changes only with its owner known")
    return f"{owner}#{status}"


class RunTable:
    """Run records in the runs table, listed under their notebooks in the notebooks table.

    Status moves forward, each step a conditional write: queued → running (a run is
    claimed once, so a second delivery of the same invocation does nothing) → succeeded,
    failed or cancelled (a queued run may be cancelled too). The one step back: a Fargate
    run whose task ECS could not start now is queued again (`requeue`). A cancel of a running run is
    a request (`cancel_requested_at`) that the runner acts on; a run whose cancel was
    requested can only end cancelled. A run counts as active on its owner's counters from
    its creation to its end, whichever (or its deletion), in the same transactions. A
    run claimed from the fair queue holds a slot of its engine's pool (`slot`) until it
    ends: counted on its owner's and the deployment's counters of that pool
    (SLOT_COUNTERS), in the same transactions. Queued and running runs carry `active_status`, for the `by_status` index.
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
            stored = {**run, "owner_status": owner_status(owner, run["status"])}
            actions += [
                {
                    "Put": {
                        "TableName": self.name,
                        "Item": {**stored, ACTIVE_STATUS: index_status(run["status"], pool_of(run.get("engine")))},
                        "ConditionExpression": "attribute_not_exists(run_id)",
                    }
                },
                {
                    "Put": {
                        "TableName": self.notebooks.name,
                        "Item": self.notebooks.run_pointer(owner, run["notebook_id"], run["created_at"], run["run_id"]),
                    }
                },
                {
                    "Update": {
                        "TableName": self.notebooks.name,
                        "Key": self.notebooks.key(owner, run["notebook_id"]),
                        "UpdateExpression": "ADD no_of_runs :one, runs_kept :one SET last_run = :at",
                        "ConditionExpression": "attribute_exists(sk) AND attribute_not_exists(deleting) AND "
                        "(attribute_not_exists(last_run) OR last_run < :at)",
                        "ExpressionAttributeValues": {":one": 1, ":at": run["created_at"]},
                    }
                },
            ]
        codes = self.notebooks.transact(owner, actions, Tally(runs_active=len(runs), runs_limit=active_limit))
        if codes is None:
            return None
        failed = {
            index % self._ACTIONS_PER_RUN
            for index, code in enumerate(codes[: len(actions)])
            if code == "ConditionalCheckFailed"
        }
        if 0 in failed:
            return "exists"
        return "notebook" if failed else "quota"

    @classmethod
    def runs_per_transaction(cls) -> int:
        """How many runs `create` takes at once."""
        return entries_per_transaction(cls._ACTIONS_PER_RUN)

    def get(self, run_id: str):
        """The run's item, or None."""
        return self._table.get_item(Key={"run_id": run_id}, ConsistentRead=True).get("Item")

    def get_many(self, run_ids) -> dict:
        """run id -> item of those that exist; 100 per call."""
        keys = [{"run_id": run_id} for run_id in dict.fromkeys(run_ids)]
        return {item["run_id"]: item for item in batch_get(self._client, self.name, keys)}

    def claim(self, run: dict, changes: dict, running_limit: int, capacity: int, now_ms: int) -> Optional[str]:
        """Move the queued `run` to running with `changes`, holding a slot of its engine's
        pool: counted on its owner's running runs of the pool (at most `running_limit`;
        the owner's last service by the pool set to `now_ms`, for the queue's turns) and
        the deployment's (at most `capacity`), all in one transaction. None when claimed;
        else why not: "taken" (no longer queued), "owner" (its owner has `running_limit`
        running), "full" (no slot free)."""
        update = self._status_update(run["run_id"], RunStatus.QUEUED, {**changes, "slot": True}, run["owner"])
        names = SLOT_COUNTERS[pool_of(run.get("engine"))]
        counters = [
            (
                {"owner": run["owner"], "sk": COUNTS_SK},
                "ADD #running :one SET #served = :now",
                {"#running": names.owner_running, "#served": names.served_at},
                {":one": 1, ":now": now_ms, ":limit": running_limit},
            ),
            (
                {"owner": DEPLOYMENT, "sk": COUNTS_SK},
                "ADD #running :one",
                {"#running": names.deployment_running},
                {":one": 1, ":limit": capacity},
            ),
        ]
        actions = [{"Update": {"TableName": self.name, **update}}] + [
            {
                "Update": {
                    "TableName": self.notebooks.name,
                    "Key": key,
                    "UpdateExpression": expression,
                    "ConditionExpression": "attribute_not_exists(#running) OR #running < :limit",
                    "ExpressionAttributeNames": attribute_names,
                    "ExpressionAttributeValues": values,
                }
            }
            for key, expression, attribute_names, values in counters
        ]
        codes = transact(self._client, actions)
        if codes is None:
            return None
        failed = [code == "ConditionalCheckFailed" for code in codes]
        return "taken" if failed[0] else "owner" if failed[1] else "full"

    def with_status(self, status: str, deadline_before=None, limit=None, pool: Pool = Pool.RUNNER) -> list:
        """Queued runs waiting for `pool`, or running runs of any pool (by the `by_status`
        index: run id, owner, created_at, engine, deadline_at), earliest deadline first;
        only those whose deadline is before `deadline_before` (epoch ms), and at most
        `limit`, when given. Eventually consistent: a caller checks each run's status
        again as it changes it."""
        condition, values = "#s = :s", {":s": index_status(status, pool)}
        if deadline_before is not None:
            condition += " AND deadline_at < :before"
            values[":before"] = deadline_before
        request = {
            "IndexName": BY_STATUS,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": {"#s": ACTIVE_STATUS},
            "ExpressionAttributeValues": values,
        }
        items: list[dict] = []
        while limit is None or len(items) < limit:
            if limit is not None:
                request["Limit"] = limit - len(items)
            page = self._table.query(**request)
            items += page["Items"]
            if "LastEvaluatedKey" not in page:
                break
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return items

    def unfinished(self) -> list:
        """Every run still queued or running: a Scan, for the local stack's start only."""
        return all_items(
            self._table.scan,
            FilterExpression="#status IN (:queued, :running)",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":queued": RunStatus.QUEUED, ":running": RunStatus.RUNNING},
        )

    def transition(
        self, run_id: str, expected_status: str, changes: dict, owner: Optional[str] = None, unless: tuple = ()
    ) -> bool:
        """Apply `changes` if the run is still in `expected_status` and has none of the
        attributes `unless` names (its status stays active: for an end, see `end`);
        `owner`, the run's, when `changes` has a status."""
        return conditional_update(self._table, **self._status_update(run_id, expected_status, changes, owner, unless))

    def end(self, run: dict, changes: dict, unless: tuple = ()) -> bool:
        """Apply `changes` (a final status among them) if the run is still in the status
        it has in `run` and has none of the attributes `unless` names (say, a cancel
        request), counting it off the owner's active runs in the same transaction."""
        update = self._status_update(run["run_id"], run["status"], changes, run["owner"], unless)
        action = {"Update": {"TableName": self.name, **update}}
        active = run["status"] in ACTIVE and changes.get("status") in FINAL
        tally = Tally(runs_active=-1 if active else 0, slots=_slots_released([run] if active else []))
        return self.notebooks.transact(run["owner"], [action], tally) is None

    def requeue(self, run: dict, changes: dict, unless: tuple = ()) -> bool:
        """Put back in its pool's queue, with `changes`, a run claimed (as read in `run`)
        that nothing executes yet and that has none of the attributes `unless` names,
        giving its slot back, in one transaction; whether it was."""
        update = self._status_update(
            run["run_id"],
            RunStatus.RUNNING,
            {**changes, "status": RunStatus.QUEUED, "slot": False},
            run["owner"],
            unless,
            pool_of(run.get("engine")),
        )
        action = {"Update": {"TableName": self.name, **update}}
        return self.notebooks.transact(run["owner"], [action], Tally(slots=_slots_released([run]))) is None

    @staticmethod
    def _status_update(
        run_id: str,
        expected_status: str,
        changes: dict,
        owner: Optional[str],
        unless: tuple = (),
        pool: Pool = Pool.RUNNER,
    ) -> dict:
        """An update setting `changes` on the run if it is still in `expected_status` and
        has none of the attributes `unless` names; a new status moves the run in the
        owner-and-status index too, and in the active runs' index (`active_status`: set
        while queued or running, in `pool`'s queue when queued, removed at its end)."""
        if "status" in changes:
            changes = {**changes, "owner_status": owner_status(owner, changes["status"])}
        expression, names, values = set_clause(changes)
        names["#status"] = "status"
        values[":expected"] = expected_status
        expression = "SET " + expression
        if changes.get("status") in ACTIVE:
            names["#active"], values[":active"] = ACTIVE_STATUS, index_status(changes["status"], pool)
            expression += ", #active = :active"
        elif "status" in changes:
            names["#active"] = ACTIVE_STATUS
            expression += " REMOVE #active"
        condition = "#status = :expected"
        for index, name in enumerate(unless):
            names[f"#unless{index}"] = name
            condition += f" AND attribute_not_exists(#unless{index})"
        return {
            "Key": {"run_id": run_id},
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def page_of_owner(self, owner: str, status: Optional[str], limit: int, start_key: Optional[dict]) -> tuple:
        """(runs, next_key): a page of the owner's runs across notebooks, newest first, all
        of them or those in `status`: one Query of an index, whatever is stored."""
        index, name, value = (
            (RUNS_BY_OWNER_STATUS, "owner_status", owner_status(owner, status))
            if status
            else (RUNS_BY_OWNER, "owner", owner)
        )
        query = {
            "IndexName": index,
            "KeyConditionExpression": "#k = :k",
            "ExpressionAttributeNames": {"#k": name},
            "ExpressionAttributeValues": {":k": value},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if start_key:
            query["ExclusiveStartKey"] = start_key
        page = self._table.query(**query)
        return page["Items"], page.get("LastEvaluatedKey")

    def delete(
        self, owner: str, pointers: list, notebook_id: Optional[str] = None, read: Optional[dict] = None
    ) -> None:
        """Delete these runs (given by their pointers) with their pointers, counting the
        active ones off the owner's runs, 49 per transaction; with `notebook_id`, also off
        that notebook's `runs_kept`. A run whose status changes meanwhile is read again.
        `read`: every one of these runs as just read (run id -> item), for first attempts."""
        attempted: set[str] = set()

        def build(chunk):  # reads the runs each time: a run's status is the condition on its delete
            run_ids = [pointer["run_id"] for pointer in chunk]
            runs = read if read is not None and attempted.isdisjoint(run_ids) else self.get_many(run_ids)
            attempted.update(run_ids)
            actions = [action for pointer in chunk for action in self._deletion(owner, pointer, runs)]
            if notebook_id:
                actions.append(
                    {
                        "Update": {
                            "TableName": self.notebooks.name,
                            "Key": self.notebooks.key(owner, notebook_id),
                            "UpdateExpression": "ADD runs_kept :minus",
                            "ConditionExpression": "attribute_exists(sk)",
                            "ExpressionAttributeValues": {":minus": -len(chunk)},
                        }
                    }
                )
            found = [runs.get(pointer["run_id"], {}) for pointer in chunk]
            active = sum(1 for run in found if run.get("status") in ACTIVE)
            return actions, Tally(runs_active=-active, slots=_slots_released(found))

        write_chunks(
            partial(self.notebooks.transact, owner),
            pointers,
            self._ACTIONS_PER_DELETION,
            build,
            lambda chunk, _codes: chunk,
            "runs",
        )

    def delete_many(self, owner: str, pointers: list, workers: int) -> None:
        """`delete` of many runs (a notebook Delete's), on up to `workers` threads: the runs
        are read 100 per call, and those that have ended are deleted 49 per transaction
        side by side (a transaction of ended runs changes no counter, so two never
        conflict); the rest by `delete`, with what was read, and any that changed since
        read by `delete` again."""
        runs = {}
        for found in in_parallel(
            self.get_many, chunks([pointer["run_id"] for pointer in pointers], BATCH_GET_KEYS), workers
        ):
            runs.update(found)
        ended = [pointer for pointer in pointers if runs.get(pointer["run_id"], {}).get("status") in FINAL]

        def delete_ended(chunk) -> list:
            actions = [action for pointer in chunk for action in self._deletion(owner, pointer, runs)]
            return [] if self.notebooks.transact(owner, actions) is None else chunk

        per_transaction = entries_per_transaction(self._ACTIONS_PER_DELETION)
        changed = in_parallel(delete_ended, chunks(ended, per_transaction), workers)
        ended_ids = {pointer["run_id"] for pointer in ended}
        changed = [pointer for chunk in changed for pointer in chunk]
        self.delete(
            owner,
            [pointer for pointer in pointers if pointer["run_id"] not in ended_ids],
            read={run_id: run for run_id, run in runs.items() if run_id not in ended_ids},
        )
        self.delete(owner, changed)

    def _deletion(self, owner: str, pointer: dict, runs: dict) -> list:
        """The actions deleting a run (if still in the status read, or still absent) and its pointer."""
        run = runs.get(pointer["run_id"])
        condition = (
            {
                "ConditionExpression": "#s = :s",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":s": run["status"]},
            }
            if run
            else {"ConditionExpression": "attribute_not_exists(run_id)"}
        )
        return [
            {"Delete": {"TableName": self.name, "Key": {"run_id": pointer["run_id"]}, **condition}},
            {"Delete": {"TableName": self.notebooks.name, "Key": {"owner": owner, "sk": pointer["sk"]}}},
        ]


def _slots_released(runs: list) -> dict:
    """Pool -> minus the runs, as read, that hold one of its slots (ending or deleting
    `runs` frees them)."""
    released = dict.fromkeys(Pool, 0)
    for run in runs:
        if run.get("status") == RunStatus.RUNNING and run.get("slot"):
            released[pool_of(run.get("engine"))] -= 1
    return released
