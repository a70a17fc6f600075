"""A run's lifecycle in the runs table, as its runner drives it (RunRecords): the run
statuses, claiming a queued run, recording its progress, current cell and notebook
version, looking for a cancel, and ending it (runs/service.py ends runs too: on cancel, and when
their runner is gone).
"""

import time

from chalicelib.common.clock import Clock, now_ms
from chalicelib.common.config import REPORT_GRACE_SECONDS
from chalicelib.common.model import RunStatus


def claim_changes(run: dict, started_ms: int, default_timeout: float, request_id=None) -> dict:
    """The changes that move a queued run to running at `started_ms`: its start, and its
    deadline (its timeout and the report grace later); the claiming runner invocation's
    request id, when known (its failed event then names the run: runs/reaper.py)."""
    timeout = float(run.get("timeout", default_timeout))
    changes = {
        "status": RunStatus.RUNNING,
        "started_at": started_ms,
        "deadline_at": started_ms + int((timeout + REPORT_GRACE_SECONDS) * 1000),
    }
    if request_id:
        changes["runner_request"] = request_id
    return changes


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

    def claim(self, run_id: str):
        """Move a queued run to running, outside the fair queue (a Fargate task's run);
        the run, or None if another delivery has it."""
        run = self._table.get(run_id)
        if run is None or run["status"] != RunStatus.QUEUED:
            return None
        changes = claim_changes(run, now_ms(self._clock), self._settings.run_timeout)
        if not self._table.transition(run_id, RunStatus.QUEUED, changes, owner=run["owner"]):
            return None
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
            run, {"status": status, "finished_at": now_ms(self._clock), "error": error}, unless_cancelling
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
        return run is None or run["status"] != RunStatus.RUNNING or "cancel_requested_at" in run

    def current_cell(self, run_id: str, index: int) -> None:
        """Record the index of the cell a running run executes."""
        self._table.transition(run_id, RunStatus.RUNNING, {"current_cell": index})

    def is_gone(self, run_id: str) -> bool:
        """Whether the run's record was deleted (with its notebook)."""
        return self._table.get(run_id) is None
