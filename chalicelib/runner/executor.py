"""The runner function's event handler (RunExecutor): it claims a queued run and executes
it on the runner (runner/notebook_runner.py), keeping its live log (runs/log.py) and watching for a cancel
(_CancelWatch), then stores its executed notebook and records its end (runs/records.py)
and delivers that end to the notebook's webhook (runs/webhooks.py). The same handler records the
firings of schedule rules, delivers the webhooks of runs that ended in the API, and
removes the rules a Delete handed over (schedules/rules.py).
"""

import json
import logging
import threading
import uuid
from typing import Optional

import nbformat

from chalicelib.common import runner_events
from chalicelib.common.errors import InvalidInput
from chalicelib.common.model import Pool, RunStatus, Trigger
from chalicelib.common.periodic import Periodic
from chalicelib.notebooks.parameters import check as check_parameters
from chalicelib.notebooks.parameters import declared as declared_parameters
from chalicelib.runs.dispatch import RunDispatch
from chalicelib.runs.log import CONTENT_TYPE as LOG_CONTENT_TYPE
from chalicelib.runs.log import LiveLog, capped, log_key, log_text
from chalicelib.runs.outputs import fit_output
from chalicelib.runs.records import RunRecords
from chalicelib.storage.files import FileStore, notebook_key, output_key

log = logging.getLogger(__name__)

# How often a runner looks for a cancel request while its run executes.
CANCEL_POLL_SECONDS = 2.0
# Introduces, in a run's final log, what the kernel process wrote to its stdout and stderr.
KERNEL_OUTPUT_HEADING = "\n--- the kernel process's own output (stdout and stderr) ---"


class RunExecutor:
    """The runner function's work: execute one run end to end on a NotebookRunner."""

    def __init__(
        self,
        records: RunRecords,
        run_dispatch: RunDispatch,
        webhooks,
        files: FileStore,
        scheduler,
        schedule_rules,
        runner,
        queue=None,
        fargate_pool=None,
        reaper=None,
    ):
        self._records = records
        self._queue = queue  # runs.queue.FairQueue: the runs that `drain` events claim
        self._fargate_pool = fargate_pool  # runs.fargate_pool.FargatePool: the Fargate pool's drains
        self._reaper = reaper  # runs.reaper.Reaper: `reap` events and failed events
        self._run_dispatch = run_dispatch  # records the runs of schedule firings
        self._webhooks = webhooks  # webhooks.Webhooks, or None
        self._files = files
        self._scheduler = scheduler  # its due_occurrence tells which firings run
        self._schedule_rules = schedule_rules  # removes the rules a Delete handed over
        self._runner = runner
        self._stopping = threading.Event()

    def handle(self, raw_event: object, request_id: Optional[str] = None) -> dict:
        """Handle one runner invocation (common/runner_events.py has the shapes;
        `request_id`: Lambda's id of it): a drain from the API, a runner or a task (the
        fair queue's next run, executed here or, from the Fargate pool, in a task started
        for it), a schedule's firing from EventBridge (recorded, then drained), a reap from
        the reaper's rule, the failed events' queue's SQS records, a webhook delivery from
        the API, or deleted notebooks' rules to remove, from a Delete. Any other event (a
        run's id alone among them: only a Fargate task executes a run by its id, with
        `execute`): runner_events.UnknownEvent."""
        event = runner_events.parse(raw_event)
        if "deliver_webhook" in event:
            return self._webhooks.deliver(event["deliver_webhook"])
        if "remove_rules" in event:
            return {"rules_removed": self._schedule_rules.remove_handed_over(event["remove_rules"])}
        if "reap" in event:
            return self._reaper.reap()
        if "Records" in event:
            return self._reaper.failed_events(event["Records"])
        if "trigger" in event:
            run_id = self.record_firing(event["owner"], event["notebook_id"])
            if run_id is None:
                return {"status": "skipped"}
            return self.drain(run_id, request_id)
        if runner_events.drain_pool(event) == Pool.FARGATE:  # what is left: a drain
            return self._fargate_pool.drain(event["drain"].get("run_id"), request_id)
        return self.drain(event["drain"].get("run_id"), request_id)

    def drain(self, hint=None, request_id=None) -> dict:
        """Claim the fair queue's next run (`hint`: a run just queued) and execute it;
        another drain is started once it is claimed (to fill any other free slot) and
        once it ends (its slot is free again). {"status": "idle"} when no run may start."""
        run = self._queue.claim_next(hint, request_id)
        if run is None:
            return {"status": "idle"}
        self._run_dispatch.drain()
        try:
            return {"run_id": run["run_id"], "status": self._execute_claimed(run)}
        finally:
            try:
                self._run_dispatch.drain()
            finally:
                # Only then the next run's kernel, so the run queued behind this one starts
                # meanwhile wherever it can; and the preloaded imports (a second or more)
                # only when no run waits, as one may be this runner's next.
                self._runner.prewarm(preload=not self._runs_waiting())

    def _runs_waiting(self) -> bool:
        """Whether runs wait in the queue; True when the queue cannot be read (its run
        has ended: that is not its failure)."""
        try:
            return self._queue.has_waiting()
        except Exception:  # whatever it is, it only decides whether the next kernel preloads
            log.warning("could not read the queue; the next kernel preloads nothing", exc_info=True)
            return True

    def record_firing(self, owner: str, notebook_id: str):
        """Record the run of a schedule rule's firing; its run id, or None when no
        occurrence is due (Scheduler.due_occurrence)."""
        firing = self._scheduler.due_occurrence(owner, notebook_id)
        if firing is None:
            return None
        # One id per notebook and occurrence: a second or late delivery of the same firing,
        # or another firing of the rule for the same occurrence, finds it taken. If an earlier
        # delivery recorded it and then failed, this one runs it: execute claims only a run
        # still queued, so the occurrence runs once.
        run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"schedule:{notebook_id}:{firing.at_ms // 60_000}"))
        self._run_dispatch.record(owner, notebook_id, Trigger.SCHEDULE, parameters=firing.parameters, run_id=run_id)
        return run_id

    def execute(self, run_id: str) -> str:
        """Execute the run the fair queue claimed for this Fargate task (RunRecords.adopt),
        then drain the Fargate pool (its slot is free again); the run's final status
        ("skipped" if not this task's to run). A task serves one run: no kernel is
        started after it."""
        run = self._records.adopt(run_id)
        if run is None:
            return "skipped"  # whoever ended it delivers its webhook
        try:
            return self._execute_claimed(run)
        finally:
            self._run_dispatch.drain(Pool.FARGATE)

    def _execute_claimed(self, run: dict) -> str:
        """Execute a run this runner claimed; its final status."""
        run_id, owner, notebook_id = run["run_id"], run["owner"], run["notebook_id"]
        try:
            found = self._files.get_version(notebook_key(owner, notebook_id), run.get("notebook_version"))
            if found is None:
                return self._fail_unstarted(
                    run_id, "NotebookMissing", "The notebook (or its version) was deleted before it ran"
                )
            data, version = found
            notebook = nbformat.reads(data.decode("utf-8"), as_version=4)
            parameters = json.loads(run.get("parameters", "{}"))
            if run.get("trigger") == Trigger.SCHEDULE and parameters:
                # A Run's and a rerun's were checked against this version when asked for; a
                # schedule's when it was set, against content that may have changed since.
                try:
                    check_parameters(parameters, declared_parameters(notebook))
                except InvalidInput as refused:
                    return self._fail_unstarted(run_id, "InvalidParameters", refused.message)
            if run.get("notebook_version") is None:  # recorded before versions: pinned now
                self._records.pin_version(run_id, version)
            target, limit = output_key(owner, notebook_id, run_id), self._records.max_output_bytes
            log_target, log_limit = log_key(owner, notebook_id, run_id), self._records.max_log_bytes
            live = LiveLog(
                self._runner.live,
                lambda text: self._files.put(log_target, text.encode("utf-8"), LOG_CONTENT_TYPE),
                lambda index: self._records.current_cell(run_id, index),
                log_limit,
            )
            with (
                _CancelWatch(
                    lambda: self._stopping.is_set() or self._records.cancel_requested(run_id), self._runner.cancel
                ),
                live,
            ):
                execution = self._runner.execute(
                    notebook,
                    parameters=parameters,
                    timeout=self._records.timeout_of(run),
                    on_progress=lambda done, total: self._records.progress(run_id, done, total),
                    on_checkpoint=lambda notebook: self._files.put(target, fit_output(notebook, limit)[0]),
                )
            output, too_large = fit_output(execution.notebook, limit)
            self._files.put(target, output)
            self._store_final_log(log_target, execution, log_limit)
            error = execution.error or too_large
            status = RunStatus.CANCELLED if execution.cancelled else RunStatus.FAILED if error else RunStatus.SUCCEEDED
            final = self._records.conclude(run_id, status, error=error)
            if final is None and self._records.is_gone(run_id):
                # the notebook was deleted while it ran: leave no output
                self._files.delete_many([target, log_target])
            if final is not None:
                self._deliver_webhook(run_id)
            return final or status
        except Exception as error:
            log.exception("run %s failed in the runner", run_id)
            if self._records.finish(
                run_id,
                RunStatus.FAILED,
                error={"cell_index": None, "ename": type(error).__name__, "evalue": "The runner failed; see its logs"},
            ):
                self._deliver_webhook(run_id)
            return RunStatus.FAILED

    def _fail_unstarted(self, run_id: str, ename: str, evalue: str) -> str:
        """End a claimed run `failed` before its notebook starts, with its webhook."""
        if self._records.finish(run_id, RunStatus.FAILED, error={"cell_index": None, "ename": ename, "evalue": evalue}):
            self._deliver_webhook(run_id)
        return RunStatus.FAILED

    def cancel(self) -> None:
        """Stop the run executing, or about to, as a cancel does (its Fargate task is being
        stopped); safe to call from another thread. The run's cancel watch applies it
        again at each poll, so a run whose kernel was still starting stops too."""
        self._stopping.set()
        self._runner.cancel()

    def _store_final_log(self, key: str, execution, limit: int) -> None:
        """Store the run's whole log, the kernel process's own output last; if that
        fails, the last live one stays: a log never fails a run."""
        text = log_text(execution.notebook.cells)
        if execution.kernel_output.strip():
            text += f"{KERNEL_OUTPUT_HEADING}\n{execution.kernel_output}"
        try:
            self._files.put(key, capped(text, limit).encode("utf-8"), LOG_CONTENT_TYPE)
        except Exception:  # the run's outcome and output are what must be recorded
            log.warning("could not store the final log at %s", key, exc_info=True)

    def _deliver_webhook(self, run_id: str) -> None:
        """Deliver the end of a run this runner ended to its webhook, here and now."""
        if self._webhooks is not None:
            self._webhooks.deliver(run_id)

    def prewarm(self) -> None:
        """Start the first run's kernel ahead of need."""
        self._runner.prewarm()

    def close(self) -> None:
        """Shut down the kernel waiting for the next run."""
        self._runner.close()


class _CancelWatch(Periodic):
    """While a run executes, asks `requested()` every CANCEL_POLL_SECONDS, from a thread
    of its own, and calls `cancel()` (idempotent) whenever it answers yes."""

    def __init__(self, requested, cancel):
        super().__init__(CANCEL_POLL_SECONDS, self._check, "cancel-watch")
        self._requested, self._cancel = requested, cancel

    def _check(self) -> None:
        if self._requested():
            self._cancel()  # again at each poll: the first may come before any cell runs
