"""Runs: their records, their dispatch to the runner, and the runner's event handler.

A run is created `queued` by the API (or by a schedule firing), dispatched without
waiting (an `Event` invocation of the runner function: in AWS, or the local Lambda's), claimed
`running` exactly once by the runner, and ends `succeeded` or `failed` with its executed
notebook in S3, or `cancelled` on request. A run whose runner vanished is reported
`failed` once its deadline passes.
"""
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Optional

import nbformat

from . import html, payloads
from .errors import NOTEBOOK_ID_INVALID, RUN_IDS_REQUIRED, RUN_NOT_FOUND, ApiError, bad_request
from .files import notebook_key, output_key, outputs_prefix
from .notebooks import now_ms, serialise

log = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINAL = (SUCCEEDED, FAILED, CANCELLED)
MANUAL, SCHEDULE = "manual", "schedule"
# After its run timeout, a runner gets this long to report before it is declared lost.
REPORT_GRACE_SECONDS = 60
# How often a runner looks for a cancel request while its run executes.
CANCEL_POLL_SECONDS = 2.0
# How long a Cancel request waits for the runner to end the run, within API Gateway's 29 s.
CANCEL_WAIT_SECONDS = 10.0
# A running run whose runner has not acted on a cancel within this long is ended cancelled.
CANCEL_DEADLINE_SECONDS = 60


def run_view(item: dict) -> dict:
    """The API's run object."""
    def optional_int(name):
        return int(item[name]) if item.get(name) is not None else None

    return {
        "run_id": item["run_id"],
        "notebook_id": item["notebook_id"],
        "status": item["status"],
        "trigger": item["trigger"],
        "module": item.get("module"),
        "parameters": json.loads(item.get("parameters", "{}")),
        "created_at": int(item["created_at"]),
        "started_at": optional_int("started_at"),
        "finished_at": optional_int("finished_at"),
        "progress": {"done": int(item.get("cells_done", 0)), "total": int(item.get("cells_total", 0))},
        "error": _error_view(item.get("error")),
    }


def _error_view(error):
    """A stored error with its cell index as an int (DynamoDB numbers come back as Decimal)."""
    if not error:
        return None
    index = error.get("cell_index")
    return {**error, "cell_index": int(index) if index is not None else None}


@dataclass
class RunOutput:
    """An output ready to send: its body and headers, or, when too large to send, where
    to download it."""

    body: str
    headers: dict
    location: Optional[str] = None


class RunService:
    """Runs as the API sees them: start, read, list, outputs; and run records for the runner."""

    def __init__(self, table, notebooks, files, dispatcher, settings, clock=time.time):
        self._table = table
        self._notebooks = notebooks
        self._files = files
        self._dispatcher = dispatcher
        self._settings = settings
        self._clock = clock

    def start(self, owner: str, body: dict) -> dict:
        """Validate the whole request, record one queued run per notebook, dispatch them.

        Any unknown id: 400 and nothing runs. Answers before any notebook executes.
        """
        field = "nbk_ids" if "nbkIds" not in body and "nbk_ids" in body else "nbkIds"
        ids = payloads.id_list(body, field, RUN_IDS_REQUIRED, self._settings.max_ids)
        module = payloads.module_name(body)
        parameters = payloads.parameters(body)
        items = [self._notebooks.live(owner, notebook_id) for notebook_id in ids]
        if None in items:
            raise bad_request(NOTEBOOK_ID_INVALID)
        runs = []
        for item in items:
            run = self.record(owner, item["notebook_id"], MANUAL, module=module, parameters=parameters)
            if run is None:  # deleted since we looked; the runs recorded so far are dispatched
                raise bad_request(NOTEBOOK_ID_INVALID)
            self._dispatch(run)
            runs.append(run)
        return {"runs": [{key: run[key] for key in ("run_id", "notebook_id", "status")} for run in runs]}

    def record(self, owner: str, notebook_id: str, trigger: str, module=None, parameters=None, run_id=None):
        """Create a queued run and count it on its notebook; None if the notebook is gone
        or `run_id` exists already."""
        created = now_ms(self._clock)
        run = {
            "run_id": run_id or str(uuid.uuid4()),
            "notebook_id": notebook_id,
            "owner": owner,
            "trigger": trigger,
            "status": QUEUED,
            "created_at": created,
            "deadline_at": created + int(self._settings.queue_timeout * 1000),
            "parameters": json.dumps(parameters or {}),
        }
        if module is not None:
            run["module"] = module
        return run if self._table.create(run) else None

    def _dispatch(self, run: dict) -> None:
        try:
            self._dispatcher.dispatch({"run_id": run["run_id"]})
        except Exception as error:  # noqa: BLE001 - any failure to hand over fails the run
            log.warning("dispatch of run %s failed: %s", run["run_id"], error)
            reason = {"cell_index": None, "ename": "DispatchError",
                      "evalue": f"The run could not be started: {type(error).__name__}"}
            self.finish(run["run_id"], FAILED, error=reason, expected_status=QUEUED)
            run["status"] = FAILED

    def resume_after_restart(self) -> dict:
        """After the local Lambda restarts: a run that was running is failed (its kernel
        died with the stack), a queued one is dispatched again (Lambda's queue of
        asynchronous invocations survives; the local one did not). {status: count}."""
        counts = {FAILED: 0, QUEUED: 0}
        for run in self._table.unfinished():
            if run["status"] == RUNNING:
                error = {"cell_index": None, "ename": "RunnerLost",
                         "evalue": "The local stack stopped while the run was in progress"}
                counts[FAILED] += self.finish(run["run_id"], FAILED, error=error)
            else:
                self._dispatch(run)
                counts[QUEUED] += 1
        return counts

    def get(self, owner: str, run_id: str) -> dict:
        """One run of the owner (another owner's is answered like an unknown one)."""
        return run_view(self._require(owner, run_id))

    def for_notebook(self, owner: str, notebook_id) -> list:
        """The notebook's runs, newest first."""
        item = self._notebooks.require(owner, notebook_id)
        return [run_view(self._reap(run)) for run in self._table.for_notebook(item["notebook_id"])]

    def output(self, owner: str, run_id: str, output_format: str = "ipynb") -> "RunOutput":
        """The run's executed notebook (while it runs: its latest checkpoint), as nbformat
        JSON or (`html`) a sanitised page.

        A response is capped at what Lambda returns (the body limit): a larger notebook is
        offered as a short-lived S3 download link instead, a larger page is refused.
        """
        if output_format not in ("ipynb", "json", "html"):
            raise bad_request("format must be html or ipynb")
        run = self._require(owner, run_id)
        key = output_key(owner, run["notebook_id"], run["run_id"])
        data = self._files.get(key)
        if data is None:
            raise ApiError(404, "Run output not available yet")
        notebook = nbformat.reads(data.decode("utf-8"), as_version=4)
        limit = self._settings.max_body_bytes
        if output_format == "html":
            page = html.render(notebook)
            if len(page.encode("utf-8")) > limit:
                raise ApiError(413, f"Run output too large to show as HTML (over {limit} bytes): "
                                    "download it with format=ipynb")
            return RunOutput(page, html.HEADERS)
        body = json.dumps(notebook)
        if len(body.encode("utf-8")) > limit:
            return RunOutput("", {}, location=self._files.download_url(key))
        return RunOutput(body, {"Content-Type": "application/json"})

    def forget_notebook(self, owner: str, item: dict) -> None:
        """Delete the runs of a deleted notebook: outputs first, then records."""
        self._files.delete_prefix(outputs_prefix(owner, item["notebook_id"]))
        self._table.delete([run["run_id"] for run in self._table.for_notebook(item["notebook_id"])])

    def claim(self, run_id: str):
        """Move a queued run to running; the run, or None if another delivery has it."""
        run = self._table.get(run_id)
        if run is None or run["status"] != QUEUED:
            return None
        started = now_ms(self._clock)
        changes = {"status": RUNNING, "started_at": started,
                   "deadline_at": started + int((self._settings.run_timeout + REPORT_GRACE_SECONDS) * 1000)}
        if not self._table.transition(run_id, QUEUED, changes):
            return None
        return {**run, **changes}

    def progress(self, run_id: str, done: int, total: int) -> None:
        """Record cells done out of cells total on a running run."""
        self._table.transition(run_id, RUNNING, {"cells_done": done, "cells_total": total})

    def finish(self, run_id: str, status: str, error=None, expected_status: str = RUNNING) -> bool:
        """End the run as `status` (with `error` for a failure); False if it was not
        `expected_status` any more (e.g. declared lost meanwhile)."""
        changes = {"status": status, "finished_at": now_ms(self._clock), "error": error}
        return self._table.transition(run_id, expected_status, changes)

    def conclude(self, run_id: str, status: str, error=None):
        """End a running run as `status`, or as `cancelled` if a cancel was requested
        meanwhile; the final status, or None if the run was not running any more (declared
        lost, or deleted with its notebook). Exactly one final status wins any race."""
        if status != CANCELLED:
            changes = {"status": status, "finished_at": now_ms(self._clock), "error": error}
            if self._table.transition(run_id, RUNNING, changes, unless_cancelling=True):
                return status
        if self.finish(run_id, CANCELLED):
            return CANCELLED
        return None

    def cancel_requested(self, run_id: str) -> bool:
        """Whether a cancel of the run was requested (or the run is over)."""
        run = self._table.get(run_id)
        return run is None or run["status"] != RUNNING or "cancel_requested_at" in run

    def cancel(self, owner: str, run_id: str) -> dict:
        """Cancel a queued or running run of the owner; the run as it is then.

        A queued run ends `cancelled` at once and never starts. A running run gets a
        cancel request, which its runner acts on within seconds (interrupting the kernel,
        keeping the output so far); this waits up to CANCEL_WAIT_SECONDS for that. A
        finished run: 409.
        """
        run = self._require(owner, run_id)
        run_id = run["run_id"]
        while run["status"] not in FINAL:
            if run["status"] == QUEUED and self.finish(run_id, CANCELLED, expected_status=QUEUED):
                break
            if run["status"] == RUNNING and self._table.transition(
                    run_id, RUNNING, {"cancel_requested_at": now_ms(self._clock)}):
                return run_view(self._await_end(owner, run_id))
            run = self._require(owner, run_id)  # it moved on meanwhile: look again
        else:
            raise ApiError(409, "Run already finished")
        return self.get(owner, run_id)

    def _await_end(self, owner: str, run_id: str) -> dict:
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while True:
            run = self._require(owner, run_id)
            if run["status"] in FINAL or time.monotonic() > deadline:
                return run
            time.sleep(0.25)

    def is_gone(self, run_id: str) -> bool:
        """Whether the run's record was deleted (with its notebook)."""
        return self._table.get(run_id) is None

    def _require(self, owner: str, run_id: str) -> dict:
        run_id = payloads.canonical_id(run_id)
        run = self._table.get(run_id) if run_id else None
        if run is None or run["owner"] != owner:
            raise ApiError(404, RUN_NOT_FOUND)
        return self._reap(run)

    def _reap(self, run: dict) -> dict:
        """A queued or running run past its deadline is failed: its runner is gone. A
        running run whose cancel its runner did not act on in time is cancelled."""
        now = now_ms(self._clock)
        cancel_at = run.get("cancel_requested_at")
        if run["status"] == RUNNING and cancel_at is not None and now > int(cancel_at) + CANCEL_DEADLINE_SECONDS * 1000:
            return self._end_for_runner(run, CANCELLED, None)
        if run["status"] not in (QUEUED, RUNNING) or now <= int(run["deadline_at"]):
            return run
        reason = ("The runner stopped without reporting a result (crashed or timed out)"
                  if run["status"] == RUNNING else "No runner picked the run up in time")
        return self._end_for_runner(run, FAILED, {"cell_index": None, "ename": "RunnerLost", "evalue": reason})

    def _end_for_runner(self, run: dict, status: str, error) -> dict:
        """End a run that its runner did not end; the run as it is now."""
        changes = {"status": status, "finished_at": now_ms(self._clock), "error": error}
        if self._table.transition(run["run_id"], run["status"], changes):
            return {**run, **changes}
        return self._table.get(run["run_id"])


class RunExecutor:
    """The runner function's work: execute one run end to end on a NotebookRunner."""

    def __init__(self, runs: RunService, files, scheduler, runner):
        self._runs = runs
        self._files = files
        self._scheduler = scheduler
        self._runner = runner

    def handle(self, event: dict) -> dict:
        """Handle one runner invocation: `{"run_id"}` from the API, or a schedule's
        `{"notebook_id", "owner", "trigger": "schedule"}` from EventBridge."""
        if event.get("trigger") == SCHEDULE:
            run_id = self._scheduled_run(event["owner"], event["notebook_id"])
            if run_id is None:
                return {"status": "skipped"}
        else:
            run_id = event["run_id"]
        return {"run_id": run_id, "status": self.execute(run_id)}

    def _scheduled_run(self, owner: str, notebook_id: str):
        if self._scheduler.expire_if_past(owner, notebook_id):
            return None
        # One id per notebook and minute: a second delivery of the same firing finds it taken.
        # If an earlier delivery recorded it and then failed, this one runs it: execute
        # claims only a run still queued, so the firing runs once.
        minute = int(time.time() // 60)
        run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"schedule:{notebook_id}:{minute}"))
        self._runs.record(owner, notebook_id, SCHEDULE, run_id=run_id)
        return run_id

    def execute(self, run_id: str) -> str:
        """Claim and execute the run; its final status ("skipped" if not ours to run)."""
        run = self._runs.claim(run_id)
        if run is None:
            return "skipped"
        owner, notebook_id = run["owner"], run["notebook_id"]
        try:
            data = self._files.get(notebook_key(owner, notebook_id))
            if data is None:
                self._runs.finish(run_id, FAILED, error={"cell_index": None, "ename": "NotebookMissing",
                                                         "evalue": "The notebook was deleted before it ran"})
                return FAILED
            target = output_key(owner, notebook_id, run_id)
            with _CancelWatch(lambda: self._runs.cancel_requested(run_id), self._runner.cancel):
                execution = self._runner.execute(
                    nbformat.reads(data.decode("utf-8"), as_version=4),
                    parameters=json.loads(run.get("parameters", "{}")),
                    on_progress=lambda done, total: self._runs.progress(run_id, done, total),
                    on_checkpoint=lambda notebook: self._files.put(target, serialise(notebook)),
                )
            self._files.put(target, serialise(execution.notebook))
            status = CANCELLED if execution.cancelled else FAILED if execution.error else SUCCEEDED
            final = self._runs.conclude(run_id, status, error=execution.error)
            if final is None and self._runs.is_gone(run_id):
                self._files.delete(target)  # the notebook was deleted while it ran: leave no output
            return final or status
        except Exception as error:
            log.exception("run %s failed in the runner", run_id)
            self._runs.finish(run_id, FAILED, error={"cell_index": None, "ename": type(error).__name__,
                                                     "evalue": "The runner failed; see its logs"})
            return FAILED
        finally:
            self._runner.prewarm()  # the next run's kernel starts now, after this one is recorded

    def prewarm(self) -> None:
        """Start the first run's kernel ahead of need."""
        self._runner.prewarm()

    def close(self) -> None:
        """Shut down the kernel waiting for the next run."""
        self._runner.close()


class _CancelWatch:
    """While a run executes, asks `requested()` every CANCEL_POLL_SECONDS, from a thread
    of its own, and calls `cancel()` (idempotent) whenever it answers yes."""

    def __init__(self, requested, cancel):
        self._requested, self._cancel = requested, cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cancel-watch", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(CANCEL_POLL_SECONDS):
            try:
                if self._requested():
                    self._cancel()  # again at each poll: the first may come before any cell runs
            except Exception:  # noqa: BLE001 - a failed look is retried at the next poll
                log.warning("could not check for a cancel request", exc_info=True)
