"""No silent loss: the reaper, which the runner function runs on a schedule (an
EventBridge rule in a deployment, a clock of its own in the local stack), ends the runs
past their deadline as `failed`, with their webhook, whether or not anyone reads them; and
the consumer of the runner's failed events (those Lambda gave up on), which fails the run
such an event was executing.

Both read only active runs: the runs table's `by_status` index holds queued and running
runs alone, so their cost does not grow with the runs stored.
"""

import json
import logging
import time

from chalicelib.common.clock import Clock, now_ms
from chalicelib.common.model import Engine, Pool, RunStatus, pool_of
from chalicelib.runs.records import CANCEL_REQUESTED, TASK_STARTED

log = logging.getLogger(__name__)


class Reaper:
    """Ends lost runs, as RunService ends them when they are read (RunService.reap)."""

    def __init__(self, table, runs, run_dispatch, dispatcher, clock: Clock = time.time):
        self._table = table  # storage.run_table.RunTable
        self._runs = runs  # runs.service.RunService: how a lost run ends
        self._run_dispatch = run_dispatch  # sends a drain when runs wait in the queue
        self._dispatcher = dispatcher  # runs.engines.Dispatcher: which Fargate tasks stopped
        self._clock = clock

    def reap(self) -> dict:
        """End every queued or running run past its deadline (a queued one waited longer
        than the queue timeout; a running one's runner stopped without reporting), and
        every Fargate run whose task has stopped under it; then, if runs are still
        queued, drain each pool they wait for (a lost invocation, or a Fargate start that
        failed, never strands them). {"reaped": how many ended now}."""
        now = now_ms(self._clock)
        reaped = 0
        overdue = [(RunStatus.QUEUED, pool) for pool in Pool] + [(RunStatus.RUNNING, Pool.RUNNER)]
        for status, pool in overdue:  # running runs of both pools are one partition
            for item in self._table.with_status(status, deadline_before=now, pool=pool):
                run = self._table.get(item["run_id"])
                if run is not None and run["status"] == status:
                    reaped += self._runs.reap(run)["status"] == RunStatus.FAILED
        try:
            reaped += self._end_runs_of_stopped_tasks()
        except Exception:  # ECS unreachable, say: the drains below must still go out
            log.exception("could not look for the runs of stopped Fargate tasks")
        for pool in Pool:
            if self._table.with_status(RunStatus.QUEUED, limit=1, pool=pool):
                self._run_dispatch.drain(pool)
        return {"reaped": reaped}

    def _end_runs_of_stopped_tasks(self) -> int:
        """End the Fargate runs their task started whose task ECS has stopped (the
        container killed, out of memory, its host lost): `failed`, or `cancelled` when a
        cancel was requested; they would otherwise hold their slot until their deadline,
        hours away. How many ended."""
        running = [item for item in self._table.with_status(RunStatus.RUNNING) if item.get("engine") == Engine.FARGATE]
        runs = [
            run
            for run in self._table.get_many(item["run_id"] for item in running).values()
            if run["status"] == RunStatus.RUNNING and TASK_STARTED in run
        ]
        stopped = self._dispatcher.stopped_tasks(runs) if runs else {}
        ended = 0
        for run in runs:
            if run["run_id"] not in stopped:
                continue
            if CANCEL_REQUESTED in run:  # stopped by its cancel (StopTask) before it reported
                ended += self._runs.end_lost(run, None, RunStatus.CANCELLED)["status"] == RunStatus.CANCELLED
                continue
            evalue = f"The run's Fargate task stopped before the run ended: {stopped[run['run_id']]}"
            error = {"cell_index": None, "ename": "RunnerLost", "evalue": evalue}
            ended += self._runs.end_lost(run, error)["status"] == RunStatus.FAILED
        return ended

    def failed_events(self, records: list) -> dict:
        """Consume the runner's failed events (SQS records of Lambda's on-failure
        destination): a run that the failed invocation had claimed (its `runner_request`)
        and that is still running is ended `failed` with its webhook; a queued run stays
        in the queue, which runs it. {"failed": how many runs ended}."""
        ended = 0
        for record in records:
            try:
                body = json.loads(record["body"])
                payload = body.get("requestPayload") or {}
                request_id = body.get("requestContext", {}).get("requestId")
                condition = body.get("requestContext", {}).get("condition", "unknown")
            except (KeyError, TypeError, ValueError):
                log.warning("a failed runner event that is not Lambda's destination record: %r", record)
                continue
            run_id = payload.get("run_id") or (payload.get("drain") or {}).get("run_id")
            run = self._table.get(run_id) if isinstance(run_id, str) else None
            if run is None or run["status"] != RunStatus.RUNNING or run.get("runner_request") != request_id:
                continue
            if pool_of(run.get("engine")) == Pool.FARGATE:
                continue  # its task executes it, not the failed drain: the task or the reaper ends it
            error = {
                "cell_index": None,
                "ename": "RunnerLost",
                "evalue": f"Lambda gave up on the runner invocation executing the run ({condition})",
            }
            ended += self._runs.end_lost(run, error)["status"] == RunStatus.FAILED
        return {"failed": ended}
