"""A run's lifecycle in the runs table, as its runner drives it (RunRecords): the run
statuses, claiming a queued run, recording its progress, current cell and notebook
version, looking for a cancel, and ending it (runs/service.py ends runs too: on cancel, and when
their runner is gone).
"""

import time

from chalicelib.common.clock import Clock, now_ms
from chalicelib.common.config import REPORT_GRACE_SECONDS
from chalicelib.common.model import Pool, RunStatus, pool_of

# How long a run claimed for a Fargate task may wait for the task to start it (ECS
# provisions the task and pulls the image first): past it, the reaper frees its slot.
TASK_START_SECONDS = 600
# Set on a Fargate run when its task starts it: a second task never runs it.
TASK_STARTED = "task_started_at"
# Set on a running run by a cancel, which its runner acts on.
CANCEL_REQUESTED = "cancel_requested_at"


def claim_changes(run: dict, started_ms: int, default_timeout: float, request_id=None) -> dict:
    """The changes that move a queued run to running at `started_ms`: its start, and its
    deadline (its timeout and the report grace later; for a Fargate run, the time its task
    has to start it, RunRecords.adopt); the claiming runner invocation's request id, when
    known (its failed event then names the run: runs/reaper.py)."""
    changes = {"status": RunStatus.RUNNING, **_timed_from(run, started_ms, default_timeout)}
    if pool_of(run.get("engine")) == Pool.FARGATE:
        changes["deadline_at"] = started_ms + TASK_START_SECONDS * 1000
    if request_id:
        changes["runner_request"] = request_id
    return changes


def _timed_from(run: dict, started_ms: int, default_timeout: float) -> dict:
    """A run's start at `started_ms` and its deadline: its timeout and the report grace later."""
    timeout = float(run.get("timeout", default_timeout))
    return {"started_at": started_ms, "deadline_at": started_ms + int((timeout + REPORT_GRACE_SECONDS) * 1000)}


class RunRecords:
    """The runner's side of the run records: each change is a conditional write on the
    run's status, so a runner changes only a run still in the state it expects."""

    def __init__(self, table, settings, clock: Clock = time.time):
        self._table = table
        self._settings = settings
        self._clock = clock

    @property
    def max_output_bytes(self) -> int:
        """The largest executed notebook the runner stores."""
        return self._settings.max_output_bytes

    @property
    def max_log_bytes(self) -> int:
        """The largest run log the runner stores."""
        return self._settings.max_log_bytes

    def adopt(self, run_id: str):
        """A Fargate task's start of the run the fair queue claimed for it: the run, timed
        from now, or None when it is not the task's to run (never claimed for Fargate,
        started by another task, or ended). A cancel requested meanwhile is acted on as
        the run executes, as any run's."""
        run = self._table.get(run_id)
        if (
            run is None
            or run["status"] != RunStatus.RUNNING
            or pool_of(run.get("engine")) != Pool.FARGATE
            or TASK_STARTED in run
        ):
            return None
        started = now_ms(self._clock)
        changes = {TASK_STARTED: started, **_timed_from(run, started, self._settings.run_timeout)}
        if not self._table.transition(run_id, RunStatus.RUNNING, changes, unless=(TASK_STARTED,)):
            return None  # ended, or started by another task, meanwhile
        return {**run, **changes}

    def timeout_of(self, run: dict) -> float:
        """The run's own timeout, seconds (a run recorded before runs had one: the
        deployment's)."""
        return float(run.get("timeout", self._settings.run_timeout))

    def pin_version(self, run_id: str, version: str) -> None:
        """Record on a running run the notebook version its runner read."""
        self._table.transition(run_id, RunStatus.RUNNING, {"notebook_version": version})

    def progress(self, run_id: str, done: int, total: int) -> None:
        """Record cells done out of cells total on a running run."""
        self._table.transition(run_id, RunStatus.RUNNING, {"cells_done": done, "cells_total": total})

    def finish(
        self,
        run_id: str,
        status: str,
        error=None,
        expected_status: str = RunStatus.RUNNING,
        unless_cancelling: bool = False,
    ) -> bool:
        """End the run as `status` (with `error` for a failure), counting it off its
        owner's active runs; False if it was not `expected_status` any more (e.g. declared
        lost meanwhile, or deleted) or, with `unless_cancelling`, a cancel was requested."""
        run = self._table.get(run_id)
        if run is None or run["status"] != expected_status:
            return False
        return self._table.end(
            run,
            {"status": status, "finished_at": now_ms(self._clock), "error": error},
            unless=(CANCEL_REQUESTED,) if unless_cancelling else (),
        )

    def conclude(self, run_id: str, status: str, error=None):
        """End a running run as `status`, or as `cancelled` if a cancel was requested
        meanwhile; the final status, or None if the run was not running any more (declared
        lost, or deleted with its notebook). Exactly one final status wins any race."""
        if status != RunStatus.CANCELLED and self.finish(run_id, status, error, unless_cancelling=True):
            return status
        if self.finish(run_id, RunStatus.CANCELLED):
            return RunStatus.CANCELLED
        return None

    def cancel_requested(self, run_id: str) -> bool:
        """Whether a cancel of the run was requested (or the run is over)."""
        run = self._table.get(run_id)
        return run is None or run["status"] != RunStatus.RUNNING or CANCEL_REQUESTED in run

    def current_cell(self, run_id: str, index: int) -> None:
        """Record the index of the cell a running run executes."""
        self._table.transition(run_id, RunStatus.RUNNING, {"current_cell": index})

    def is_gone(self, run_id: str) -> bool:
        """Whether the run's record was deleted (with its notebook)."""
        return self._table.get(run_id) is None
