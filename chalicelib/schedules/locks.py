"""Schedule locks: a leased lock per notebook, held while its rule and stored schedule change.

A lock is two attributes of the notebook's item in the notebooks table (storage/tables.py):
`schedule_lock`, the holder's token, and `schedule_lock_until`, the end of its lease
(epoch ms). It is taken with a conditional write (the item exists, and holds no lock or
one whose lease has ended), so a holder that crashed frees it when the lease runs out,
and released with one (only by the token that holds it). Schedules (schedules/scheduler.py) take
the locks of a request's notebooks in id order, 100 per transaction.
"""

import logging
import random
import time
import uuid
from contextlib import contextmanager

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.common import errors
from chalicelib.common.aws import failure_reason
from chalicelib.common.batches import chunks
from chalicelib.common.clock import Clock, now_ms
from chalicelib.common.errors import PROCESSING_FAILED
from chalicelib.storage.notebook_table import NotebookTable

logger = logging.getLogger(__name__)

# A request holds a notebook's schedule lock for at most API Gateway's 29 s; a crashed
# holder's lease runs out after that.
LOCK_LEASE_MS = 30_000
_LOCK_WAIT_SECONDS = 10
# A firing (in the runner, with 15 minutes) waits longer than a lease, and then takes any
# lock over: safe because no request outlives a lease (the API function's timeout is 30 s,
# .chalice/config.json: raise the lease with it).
FIRING_LOCK_WAIT_SECONDS = LOCK_LEASE_MS / 1000 + 10
# TransactWriteItems' limit of actions.
_LOCKS_PER_TRANSACTION = 100


class ScheduleLocks:
    """The schedule locks of notebooks, on their items in the notebooks table."""

    def __init__(self, table: NotebookTable, clock: Clock = time.time):
        self._table = table
        self._clock = clock

    @contextmanager
    def held(self, owner: str, notebook_ids: list, wait_seconds: float | None = None):
        """Hold the schedule locks of these notebooks (in id order, so two requests never
        wait on each other in a circle): a notebook's rule and stored schedule change
        together, one request at a time. A notebook whose item is gone needs no lock.
        Locks are taken 100 per transaction; a hundred not free at once, one by one,
        each waited for up to `wait_seconds` (default 10 s), then a 409."""
        token, held = uuid.uuid4().hex, []
        try:
            for chunk in chunks(sorted(set(notebook_ids)), _LOCKS_PER_TRANSACTION):
                if self._lock_many(owner, chunk, token, now_ms(self._clock), LOCK_LEASE_MS):
                    held += chunk
                    continue
                for notebook_id in chunk:
                    if self._acquire(owner, notebook_id, token, wait_seconds or _LOCK_WAIT_SECONDS):
                        held.append(notebook_id)
            yield
        finally:
            try:
                self._unlock_many(owner, held, token)
            except (ClientError, BotoCoreError) as error:
                # The work is done; the locks' leases free them for the next request.
                logger.warning(
                    "schedule unlock of %d notebooks failed (%s): their leases will free them",
                    len(held),
                    failure_reason(error),
                )

    def _acquire(self, owner: str, notebook_id: str, token: str, wait_seconds: float) -> bool:
        deadline = time.monotonic() + wait_seconds
        while True:
            if self.lock(owner, notebook_id, token, now_ms(self._clock), LOCK_LEASE_MS):
                return True
            if self._table.get(owner, notebook_id) is None:
                return False
            if time.monotonic() > deadline:
                raise errors.Conflict(
                    PROCESSING_FAILED + "another request is changing this notebook's schedule; try again"
                )
            time.sleep(random.uniform(0.01, 0.05))

    def lock(self, owner: str, notebook_id: str, token: str, at_ms: int, lease_ms: int) -> bool:
        """Take the notebook's schedule lock as `token` for `lease_ms` from `at_ms` (free,
        or its lease expired). False when another holder has it, or the notebook's item is gone.
        """
        return self._table.conditional_update(self._lock_update(owner, notebook_id, token, at_ms, lease_ms))

    def _lock_update(self, owner, notebook_id, token, at_ms, lease_ms) -> dict:
        return {
            "Key": self._table.key(owner, notebook_id),
            "UpdateExpression": "SET schedule_lock = :token, schedule_lock_until = :until",
            "ConditionExpression": "attribute_exists(sk) AND "
            "(attribute_not_exists(schedule_lock) OR schedule_lock_until < :now)",
            "ExpressionAttributeValues": {":token": token, ":until": at_ms + lease_ms, ":now": at_ms},
        }

    def _lock_many(self, owner: str, notebook_ids: list, token: str, at_ms: int, lease_ms: int) -> bool:
        """Take the locks of up to 100 notebooks in one transaction: all of them, or (False)
        none, when one is held or gone."""
        actions = [
            {"Update": {"TableName": self._table.name, **self._lock_update(owner, nid, token, at_ms, lease_ms)}}
            for nid in notebook_ids
        ]
        return self._table.transact(owner, actions) is None

    def unlock(self, owner: str, notebook_id: str, token: str) -> None:
        """Release the notebook's schedule lock if `token` still holds it."""
        self._table.conditional_update(self._unlock_update(owner, notebook_id, token))

    def _unlock_update(self, owner, notebook_id, token) -> dict:
        return {
            "Key": self._table.key(owner, notebook_id),
            "UpdateExpression": "REMOVE schedule_lock, schedule_lock_until",
            "ConditionExpression": "schedule_lock = :token",
            "ExpressionAttributeValues": {":token": token},
        }

    def _unlock_many(self, owner: str, notebook_ids: list, token: str) -> None:
        """Release the locks `token` holds, 100 per transaction (one by one where a chunk
        holds a lock that was lost, e.g. to an expired lease)."""
        for chunk in chunks(notebook_ids, _LOCKS_PER_TRANSACTION):
            actions = [
                {"Update": {"TableName": self._table.name, **self._unlock_update(owner, nid, token)}} for nid in chunk
            ]
            if self._table.transact(owner, actions) is not None:
                for notebook_id in chunk:
                    self.unlock(owner, notebook_id, token)
