"""The Fargate pool's drain (docs/fair-share.md): the runner function claims the pool's
next run in the fair queue (runs/queue.py) and starts an ECS task for it; the task then
starts the run and executes it (runner/fargate_task.py, RunRecords.adopt). Runs longer
than Lambda allows thus wait their turn like the others, at most the pool's capacity of
tasks at once and at most `running_per_user` of one user's.
"""

import logging

from chalicelib.common.model import Pool, RunStatus
from chalicelib.runs.engines import CapacityUnavailable

log = logging.getLogger(__name__)


class FargatePool:
    """Starts the tasks of the Fargate pool's runs, users in turn."""

    def __init__(self, queue, dispatcher, run_dispatch):
        self._queue = queue  # runs.queue.FairQueue
        self._dispatcher = dispatcher  # runs.engines.Dispatcher: its start_task
        self._run_dispatch = run_dispatch  # runs.dispatch.RunDispatch: hand-over, and the next drain

    def drain(self, hint=None, request_id=None) -> dict:
        """Claim the pool's next run (`hint`: a run just queued) and start its task; then
        drain again, for any other free slot. {"status": "idle"} when no run may start;
        else the run's id and "started"; "failed" when ECS refused the task (the run is
        failed, with its webhook, and its slot freed); "queued" when ECS has no capacity
        now (the run waits again, its slot freed). After either, no next drain: the
        reaper's next round drains the pool again."""
        run = self._queue.claim_next(hint, request_id, Pool.FARGATE)
        if run is None:
            return {"status": "idle"}
        try:
            self._run_dispatch.hand_over(run, self._dispatcher.start_task)
        except CapacityUnavailable as error:
            # Back in the queue, and no next drain now: the reaper's next round drains
            # the pool again, when ECS may have capacity.
            log.warning("run %s waits again: %s", run["run_id"], error)
            return {"run_id": run["run_id"], "status": "queued" if self._queue.requeue(run) else "changed"}
        if run["status"] == RunStatus.FAILED:
            # No next drain either: a refusal may be the deployment's (a role, a subnet), and
            # would fail every queued run in turn; the reaper's next round drains again.
            return {"run_id": run["run_id"], "status": "failed"}
        self._run_dispatch.drain(Pool.FARGATE)
        return {"run_id": run["run_id"], "status": "started"}
