"""Recording and dispatching new runs: each recorded `queued` with its notebook's counters
(the oldest runs past the number kept per notebook expired), then handed to its engine; a
run that cannot be handed over is failed. Also the local stack's runs after a restart."""

import json
import logging
import time
import uuid
from decimal import Decimal

from chalicelib.common import errors, runner_events
from chalicelib.common.batches import chunks, in_parallel
from chalicelib.common.clock import Clock, now_ms
from chalicelib.common.errors import NOTEBOOK_ID_INVALID
from chalicelib.common.model import Pool, RunStatus
from chalicelib.notebooks.service import CONTENT_VERSION
from chalicelib.runs.engines import CapacityUnavailable, Dispatcher
from chalicelib.runs.log import run_object_keys
from chalicelib.storage.files import FileStore

log = logging.getLogger(__name__)

RECORD_ATTEMPTS = 5


def dynamo_seconds(seconds: float) -> Decimal:
    """Seconds as a DynamoDB number (boto3 takes no floats)."""
    return Decimal(str(seconds))


def quota_error(limit: int, active, adding: int) -> errors.QuotaExceeded:
    """The 429 of a request for `adding` runs that would take its owner past `limit` active
    runs."""
    return errors.QuotaExceeded(
        f"Too many runs queued or running: at most {limit} per user "
        f"(NOTEBOOKS_MAX_ACTIVE_RUNS), {active} now and {adding} more asked; try again when some have ended",
    )


class RunDispatch:
    """Records new runs `queued` and dispatches them to their engines: a Run request's (for
    runs.start.RunStarter), a schedule firing's, and the local stack's after a restart."""

    def __init__(
        self,
        table,
        notebooks,
        files: FileStore,
        dispatcher: Dispatcher,
        settings,
        clock: Clock = time.time,
        webhooks=None,
    ):
        self._table = table
        self._webhooks = webhooks  # webhooks.Webhooks: told of the runs that fail here
        self._notebooks = notebooks
        self._files = files
        self._dispatcher = dispatcher
        self._settings = settings
        self._clock = clock

    def new_run(
        self,
        owner: str,
        notebook_id: str,
        trigger: str,
        module=None,
        parameters=None,
        run_id=None,
        timeout=None,
        version=None,
    ) -> dict:
        """A queued run, with its timeout (default: the deployment's), the engine that
        timeout needs, and the notebook version it executes (None: the one its runner reads)."""
        created = now_ms(self._clock)
        timeout = self._settings.run_timeout if timeout is None else timeout
        run = {
            "run_id": run_id or str(uuid.uuid4()),
            "notebook_id": notebook_id,
            "owner": owner,
            "trigger": trigger,
            "status": RunStatus.QUEUED,
            "created_at": created,
            "deadline_at": created + int(self._settings.queue_timeout * 1000),
            "parameters": json.dumps(parameters or {}),
            "timeout": dynamo_seconds(timeout),
            "engine": self._dispatcher.engine_for(timeout),
        }
        if module is not None:
            run["module"] = module
        if version is not None:
            run["notebook_version"] = version
        return run

    def record_and_dispatch(self, owner: str, runs: list, items: list) -> None:
        """Record `runs` of the notebook `items` (up to 32 per transaction, within the
        owner's active-runs quota), then dispatch them concurrently; the runs recorded
        before a failure are dispatched too, then the failure is raised."""
        recorded = []
        try:
            for chunk in chunks(runs, self._table.runs_per_transaction()):
                recorded += self._record_chunk(owner, chunk, self._settings.active_runs_quota())
        finally:
            self.dispatch_all(recorded)
        self._expire_old_runs(owner, items)

    def _record_chunk(self, owner: str, runs: list, active_limit) -> list:
        """Record `runs` in one transaction (`active_limit`: None, no quota); the ones
        recorded, retried past concurrent writes."""
        for _ in range(RECORD_ATTEMPTS):
            why = self._table.create(owner, runs, active_limit)
            if why is None:
                return runs
            if why == "quota":
                active = int(self._table.notebooks.counts(owner).get("runs_active", 0))
                raise quota_error(self._settings.active_runs_quota(), active, len(runs))
            if why == "exists":  # a concurrent attempt with the same client token got there first
                taken = self._table.get_many(run["run_id"] for run in runs)
                runs = [run for run in runs if run["run_id"] not in taken]
                if not runs:
                    return []
                continue
            items = self._notebooks.live_items(owner, [run["notebook_id"] for run in runs])
            if any(run["notebook_id"] not in items for run in runs):
                raise errors.InvalidInput(NOTEBOOK_ID_INVALID)  # deleted since we looked
            # A later `last_run` (a clock behind another's): record these just after it.
            latest = max(int(item.get("last_run", 0)) for item in items.values())
            created = max(now_ms(self._clock), latest + 1)
            runs = [
                {**run, "created_at": created, "deadline_at": run["deadline_at"] + created - run["created_at"]}
                for run in runs
            ]
        raise errors.Conflict("The notebooks were changed by other requests meanwhile; try again")

    def dispatch_all(self, runs: list) -> None:
        """Hand `runs` to their engines concurrently (a run that cannot be is failed)."""
        in_parallel(self._dispatch, runs, self._settings.aws_concurrency)

    def drain(self, pool: Pool = Pool.RUNNER) -> None:
        """Start a runner invocation that claims the pool's next run in the fair queue, if
        a slot is free. Best effort: the reaper starts one at its next round when runs
        still wait."""
        try:
            self._dispatcher.invoke(runner_events.drain(pool=pool))
        except Exception:  # best effort: see the docstring
            log.warning("could not start a runner to drain the %s pool", pool, exc_info=True)

    def record(self, owner: str, notebook_id: str, trigger: str, module=None, parameters=None, run_id=None):
        """Create a queued run and count it on its notebook; None if the notebook is gone
        or `run_id` exists already. (Schedule firings: the active-runs quota does not
        refuse them; the scheduled-notebooks quota bounds them.)"""
        item = self._notebooks.live(owner, notebook_id)
        if item is None:
            return None
        run = self.new_run(
            owner, item["notebook_id"], trigger, module, parameters, run_id, version=item.get(CONTENT_VERSION)
        )
        try:
            recorded = self._record_chunk(owner, [run], None)
        except (errors.InvalidInput, errors.Conflict):
            return None  # the notebook was deleted meanwhile, or changed on every attempt: no run
        if not recorded:
            return None
        self._expire_old_runs(owner, [item])
        return recorded[0]

    def _expire_old_runs(self, owner: str, items: list) -> None:
        """Keep at most `max_runs_kept` runs per notebook: each notebook that had that many
        before this run loses its oldest (outputs first, then records). Best effort: what
        fails here is expired after the notebook's next run."""
        keep = self._settings.max_runs_kept
        over = [
            (item, int(item.get("runs_kept", 0)) + 1 - keep)
            for item in items
            if int(item.get("runs_kept", 0)) + 1 > keep
        ]

        def expire(entry):
            item, excess = entry
            pointers, _ = self._table.notebooks.run_pointers(
                owner, item["notebook_id"], limit=excess, oldest_first=True
            )
            self._files.delete_many(
                [key for p in pointers for key in run_object_keys(owner, item["notebook_id"], p["run_id"])]
            )
            self._table.delete(owner, pointers, notebook_id=item["notebook_id"])

        try:
            in_parallel(expire, over, self._settings.aws_concurrency)
        except Exception:  # the runs were recorded; expiry catches up later
            log.exception("expiring old runs of %s failed", owner)

    def _dispatch(self, run: dict) -> None:
        self.hand_over(run, self._dispatcher.dispatch)

    def hand_over(self, run: dict, start) -> None:
        """Hand `run` over with `start(run)` (a dispatch, or a claimed Fargate run's task
        start), recording what it answers on the run; a run that cannot be handed over is
        failed (its status in `run` then says so). CapacityUnavailable is the caller's
        to handle: the run may be tried again."""
        try:
            handed = start(run)
        except CapacityUnavailable:
            raise
        except Exception as error:  # noqa: BLE001 - any failure to hand over fails the run
            log.warning("dispatch of run %s failed: %s", run["run_id"], error)
            reason = {
                "cell_index": None,
                "ename": "DispatchError",
                "evalue": f"The run could not be started: {type(error).__name__}",
            }
            if self._fail(run, reason):
                run["status"] = RunStatus.FAILED
            return
        if handed:
            self._note(run["run_id"], handed)

    def _note(self, run_id: str, handed: dict) -> None:
        """Record what the engine answered (a Fargate task's ARN, for cancel's StopTask) on
        the run, claimed for it. Best effort: the run goes on without it, and a cancel
        then relies on the runner alone."""
        try:
            self._table.transition(run_id, RunStatus.RUNNING, handed)
        except Exception:
            log.exception("could not record %s on run %s", sorted(handed), run_id)

    def resume_after_restart(self) -> dict:
        """After the local Lambda restarts: a run that was running is failed (its kernel
        died with the stack), a queued one is dispatched again (Lambda's queue of
        asynchronous invocations survives; the local one did not). {status: count}."""
        counts = {RunStatus.FAILED: 0, RunStatus.QUEUED: 0}
        for run in self._table.unfinished():
            if run["status"] == RunStatus.RUNNING:
                error = {
                    "cell_index": None,
                    "ename": "RunnerLost",
                    "evalue": "The local stack stopped while the run was in progress",
                }
                counts[RunStatus.FAILED] += self._fail(run, error)
            else:
                self._dispatch(run)
                counts[RunStatus.QUEUED] += 1
        return counts

    def _fail(self, run: dict, error: dict) -> bool:
        """End `run` failed if it is still in the status `run` has (counted off its
        owner's active runs), and tell its webhook; whether it was."""
        ended = self._table.end(run, {"status": RunStatus.FAILED, "finished_at": now_ms(self._clock), "error": error})
        if ended and self._webhooks is not None:
            self._webhooks.notify({**run, "status": RunStatus.FAILED})
        return ended
