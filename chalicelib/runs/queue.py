"""The fair queue (docs/fair-share.md): queued runs wait in DynamoDB (the runs table's
`by_status` index), each for a slot of its engine's pool (common/model.py's Pool: the
runner function's, or Fargate's). A drain of a pool claims the pool's next run, taking
users in turn: the user the pool served least recently first (never served: first of
all), that user's oldest run first, and no user beyond `running_per_user(pool)` runs at
once nor the deployment beyond the pool's capacity. The runner function executes what
it claims from its pool; a run claimed from the Fargate pool gets a task of its own
(runs/fargate_pool.py).
"""

import time
from typing import Optional

from chalicelib.common.clock import Clock, now_ms
from chalicelib.common.model import Pool, RunStatus, pool_of
from chalicelib.runs.records import TASK_STARTED, claim_changes
from chalicelib.storage.tables import SLOT_COUNTERS

# Queued runs a claim looks at, oldest deadlines first: every user's quota bounds them,
# this bounds a claim's cost whatever they add up to.
CANDIDATES = 1000
# Runs of one user a claim tries before the next user (others may claim them meanwhile).
TRIES_PER_OWNER = 3


class FairQueue:
    """Claims queued runs for runner slots, users in turn."""

    def __init__(self, table, settings, clock: Clock = time.time):
        self._table = table  # storage.run_table.RunTable
        self._settings = settings
        self._clock = clock

    def claim_next(
        self, hint: Optional[str] = None, request_id: Optional[str] = None, pool: Pool = Pool.RUNNER
    ) -> Optional[dict]:
        """Claim the pool's next run in turn: the run as claimed (running, with its
        deadline), or None when none of the pool's runs may start now (none queued, every
        queued run's owner at their limit, or no slot free). `hint`: a run just queued,
        which the index may not show yet; `request_id`: the claiming runner invocation's."""
        by_owner = self._queued_by_owner(hint, pool)
        if not by_owner:
            return None
        counters = self._table.notebooks.counts_of(by_owner)
        limit = self._settings.running_per_user(pool)
        names = SLOT_COUNTERS[pool]

        def turn(owner):
            item = counters.get(owner, {})
            return int(item.get(names.served_at, 0)), int(by_owner[owner][0]["created_at"]), owner

        for owner in sorted(by_owner, key=turn):
            if int(counters.get(owner, {}).get(names.owner_running, 0)) >= limit:
                continue
            for candidate in by_owner[owner][:TRIES_PER_OWNER]:
                run = self._table.get(candidate["run_id"])
                if run is None or run["status"] != RunStatus.QUEUED:
                    continue
                claimed = self._claim(run, pool, request_id)
                if claimed == "full":
                    return None
                if claimed == "owner":
                    break
                if claimed is not None:
                    return claimed
        return None

    def has_waiting(self, pool: Pool = Pool.RUNNER) -> bool:
        """Whether a run waits for `pool` (by the index: a moment behind)."""
        return bool(self._table.with_status(RunStatus.QUEUED, limit=1, pool=pool))

    def _queued_by_owner(self, hint, pool: Pool) -> dict:
        """owner -> their queued runs waiting for `pool`, oldest first."""
        queued = self._table.with_status(RunStatus.QUEUED, limit=CANDIDATES, pool=pool)
        if hint and all(item["run_id"] != hint for item in queued):
            run = self._table.get(hint)
            if run is not None and run["status"] == RunStatus.QUEUED:
                queued.append(run)
        by_owner: dict[str, list[dict]] = {}
        for item in sorted(queued, key=lambda item: (int(item["created_at"]), item["run_id"])):
            if pool_of(item.get("engine")) == pool:
                by_owner.setdefault(item["owner"], []).append(item)
        return by_owner

    def _claim(self, run: dict, pool: Pool, request_id):
        """The claimed run, None if another runner took it, or why not ("owner", "full")."""
        started = now_ms(self._clock)
        changes = claim_changes(run, started, self._settings.run_timeout, request_id)
        settings = self._settings
        why = self._table.claim(run, changes, settings.running_per_user(pool), settings.runner_slots(pool), started)
        if why == "taken":
            return None
        return why or {**run, **changes, "slot": True}

    def requeue(self, run: dict) -> bool:
        """Give back a run this queue claimed that nothing executes yet (a Fargate run whose
        task ECS could not start now): queued again, first in its owner's line, its slot
        freed, waiting until the queue timeout after its creation; whether it was (a
        task that started it meanwhile keeps it)."""
        changes = {
            "deadline_at": int(run["created_at"]) + int(self._settings.queue_timeout * 1000),
            "started_at": None,
        }
        return self._table.requeue(run, changes, unless=(TASK_STARTED,))
