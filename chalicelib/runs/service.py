"""Runs as the API sees them: reading them and their outputs and logs, cancel, and
ending those whose runner is gone (starting them: runs/start.py; the records their runner
keeps, and the run statuses: runs/records.py; the runner's event handler that executes
them: runner/executor.py).

A run is created `queued` by the API (or by a schedule firing), dispatched without
waiting (an `Event` invocation of the runner function: in AWS, or the local Lambda's), claimed
`running` exactly once by the runner, and ends `succeeded` or `failed` with its executed
notebook in S3, or `cancelled` on request. A run whose runner vanished is reported
`failed` once its deadline passes. While it runs, its runner keeps its live log and
current cell (runs/log.py); each end is delivered to its notebook's webhook, if any
(runs/webhooks.py: by the runner for the ends it records, through the runner function for
those recorded in the API).
"""

import json
import logging
import time
from dataclasses import dataclass
from typing import Optional

import nbformat

from chalicelib.api import payloads
from chalicelib.api.requests import RerunRequest, RunRequest
from chalicelib.api.responses import lambda_payload_bytes
from chalicelib.common import errors
from chalicelib.common.batches import in_parallel
from chalicelib.common.clock import Clock, now_ms
from chalicelib.common.errors import RUN_NOT_FOUND
from chalicelib.common.model import FINAL, Engine, Pool, RunStatus
from chalicelib.runs import html
from chalicelib.runs.engines import Dispatcher
from chalicelib.runs.log import CONTENT_TYPE as LOG_CONTENT_TYPE
from chalicelib.runs.log import log_key, run_object_keys
from chalicelib.runs.records import CANCEL_REQUESTED, TASK_START_SECONDS, TASK_STARTED
from chalicelib.storage.files import FileStore, output_key
from chalicelib.storage.tables import RUN_PREFIX

log = logging.getLogger(__name__)

# A page of runs across notebooks when the client names no `limit`.
RUNS_PAGE = 100
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
        "notebook_version": item.get("notebook_version"),
        "engine": item.get("engine"),
        "timeout": _seconds(item["timeout"]) if item.get("timeout") is not None else None,
        "current_cell": optional_int("current_cell") if item["status"] == RunStatus.RUNNING else None,
        "webhook": (
            {"status": item["webhook"]["status"], "attempts": int(item["webhook"]["attempts"])}
            if item.get("webhook")
            else None
        ),
    }


def _seconds(value):
    """A stored number of seconds (a Decimal) as an int when whole, else a float."""
    number = float(value)
    return int(number) if number.is_integer() else number


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
    """Runs as the API sees them: start (by its `starter`), read, list, outputs, logs,
    cancel, and the end of runs their runner did not end (`reap`, `end_lost`)."""

    def __init__(
        self,
        table,
        notebooks,
        files: FileStore,
        dispatcher: Dispatcher,
        settings,
        starter,
        clock: Clock = time.time,
        webhooks=None,
    ):
        self._table = table
        self.webhooks = webhooks  # webhooks.Webhooks: told of the runs that end here, in the API
        self._notebooks = notebooks
        self._files = files
        self._dispatcher = dispatcher
        self._settings = settings
        self.starter = starter
        self._clock = clock

    def start(self, owner: str, request: RunRequest) -> dict:
        """Start runs of a Run request (see RunStarter.start)."""
        return self.starter.start(owner, request)

    def rerun(self, owner: str, run_id: str, request: RerunRequest) -> dict:
        """Start a new run of the owner's run's notebook version (see RunStarter.rerun)."""
        return self.starter.rerun(owner, self._require(owner, run_id), request)

    def get(self, owner: str, run_id: str) -> dict:
        """One run of the owner (another owner's is answered like an unknown one)."""
        return run_view(self._require(owner, run_id))

    def for_notebook(self, owner: str, notebook_id, limit=None, next_token=None) -> tuple:
        """(the notebook's runs newest first, next page's token or None): all of them (at
        most `max_runs_kept`), or a page of `limit`."""
        nid, start = self._pointer_start(owner, notebook_id, next_token)
        if limit is None and start is None:
            pointers, last_key = self._table.notebooks.all_run_pointers(owner, nid), None
        else:
            pointers, last_key = self._table.notebooks.run_pointers(owner, nid, limit, start)
        runs = self._table.get_many(pointer["run_id"] for pointer in pointers)
        views = [run_view(self.reap(runs[p["run_id"]])) for p in pointers if p["run_id"] in runs]
        return views, payloads.page_token(last_key)

    def _pointer_start(self, owner: str, notebook_id, next_token) -> tuple:
        """(the owner's notebook's id, the run-pointer key a page starts after, or None)."""
        nid = self._notebooks.require(owner, notebook_id)["notebook_id"]
        prefix = f"{RUN_PREFIX}{nid}#"
        return nid, payloads.page_key(next_token, lambda key: payloads.is_run_pointer_key(key, owner, prefix))

    def _for_notebook_in_status(self, owner: str, notebook_id, status: str, limit, next_token) -> tuple:
        """(the notebook's runs in `status` newest first, next page's token or None): all
        of them, or the first `limit` after the token. The token is the pointer of the
        page's last run, so a page is never short while more runs match. A notebook keeps
        at most `max_runs_kept` runs: that bounds what a page reads, whatever is stored."""
        nid, start = self._pointer_start(owner, notebook_id, next_token)
        found: list = []
        # Read as many as the page holds, then twice as many each round while it is short.
        reading = min(limit or RUNS_PAGE, RUNS_PAGE)
        while True:
            pointers, last_key = self._table.notebooks.run_pointers(owner, nid, reading, start)
            reading = min(2 * reading, RUNS_PAGE)
            runs = self._table.get_many(pointer["run_id"] for pointer in pointers)
            for pointer in pointers:
                run = runs.get(pointer["run_id"])
                view = run_view(self.reap(run)) if run else None
                if view is not None and view["status"] == status:
                    found.append(view)
                    if len(found) == limit:
                        return found, payloads.page_token({"owner": owner, "sk": pointer["sk"]})
            if last_key is None:
                return found, None
            start = last_key

    def across_notebooks(self, owner: str, status=None, notebook_id=None, limit=None, next_token=None) -> tuple:
        """(a page of the owner's runs newest first, next page's token or None), of all
        notebooks or of `notebook_id`, all or those in `status`. Across notebooks a page
        holds `limit` runs (default RUNS_PAGE) from one index Query, whatever is stored;
        of one notebook, its runs (at most `max_runs_kept`) page as `for_notebook`'s do."""
        if status is not None and status not in list(RunStatus):
            raise errors.InvalidInput("status must be one of " + ", ".join(RunStatus))
        if notebook_id is not None and status is not None:
            return self._for_notebook_in_status(owner, notebook_id, status, limit, next_token)
        if notebook_id is not None:
            return self.for_notebook(owner, notebook_id, limit, next_token)
        index_key = ("owner_status", f"{owner}#{status}") if status else ("owner", owner)
        start = payloads.page_key(
            next_token,
            lambda key: (
                set(key) == {"run_id", "created_at", index_key[0]}
                and key[index_key[0]] == index_key[1]
                and payloads.canonical_id(key["run_id"]) == key["run_id"]
                and payloads.is_epoch_ms(key["created_at"])
            ),
        )
        items, last_key = self._table.page_of_owner(owner, status, limit or RUNS_PAGE, start)
        return [run_view(self.reap(item)) for item in items], payloads.page_token(last_key)

    def output(self, owner: str, run_id: str, output_format: str = "ipynb") -> "RunOutput":
        """The run's executed notebook (while it runs: its latest checkpoint), as nbformat
        JSON or (`html`) a sanitised page.

        A response is capped at what Lambda returns: the stored object's size (a HEAD,
        before reading anything) decides; a larger notebook is offered as a short-lived
        S3 download link instead, a larger page is refused.
        """
        if output_format not in ("ipynb", "json", "html"):
            raise errors.InvalidInput("format must be html or ipynb")
        run = self._require(owner, run_id)
        key = output_key(owner, run["notebook_id"], run["run_id"])
        size = self._files.size(key)
        if size is None:
            raise errors.NotFound("Run output not available yet")
        limit = self._settings.max_response_bytes
        too_large_page = errors.TooLarge(
            f"Run output too large to show as HTML (over {limit} bytes): download it with format=ipynb"
        )
        if size > limit:
            if output_format == "html":
                raise too_large_page
            return RunOutput("", {}, location=self._files.download_url(key))
        data = self._files.get(key)
        if data is None:
            raise errors.NotFound("Run output not available yet")
        notebook = nbformat.reads(data.decode("utf-8"), as_version=4)
        if output_format == "html":
            page = html.render(notebook)
            if lambda_payload_bytes(page) > limit:
                raise too_large_page
            return RunOutput(page, html.HEADERS)
        body = json.dumps(notebook)
        if lambda_payload_bytes(body) > limit:
            return RunOutput("", {}, location=self._files.download_url(key))
        return RunOutput(body, {"Content-Type": "application/json"})

    def forget_notebooks(self, owner: str, items: list) -> None:
        """Delete the runs of deleted notebooks: outputs and logs first, then records.
        Their runs are found by consistent Queries (one per notebook that ever ran,
        concurrently), and their objects' keys follow from them; then deleted in batches."""
        ran = [item for item in items if int(item.get("no_of_runs", 0))]
        found = in_parallel(
            lambda item: self._table.notebooks.all_run_pointers(owner, item["notebook_id"]),
            ran,
            self._settings.aws_concurrency,
        )
        pointers = [
            (item["notebook_id"], pointer)
            for item, item_pointers in zip(ran, found, strict=True)
            for pointer in item_pointers
        ]
        self._files.delete_many(
            [key for notebook_id, pointer in pointers for key in run_object_keys(owner, notebook_id, pointer["run_id"])]
        )
        self._table.delete_many(owner, [pointer for _, pointer in pointers], self._settings.aws_concurrency)

    def cancel(self, owner: str, run_id: str) -> dict:
        """Cancel a queued or running run of the owner; the run as it is then.

        A queued run ends `cancelled` at once and never starts, and so does a Fargate run
        whose task has not started it yet. A running run gets a cancel request, which its
        runner acts on within seconds (interrupting the kernel, keeping the output so
        far); this waits up to CANCEL_WAIT_SECONDS for that. Either way, a Fargate run's
        task is then stopped too. A finished run: 409.
        """
        run = self._require(owner, run_id)
        run_id = run["run_id"]
        while run["status"] not in FINAL:
            if self._end_unstarted(run):
                self._stop(run)
                self._announce({**run, "status": RunStatus.CANCELLED})
                break
            if run["status"] == RunStatus.RUNNING and self._table.transition(
                run_id, RunStatus.RUNNING, {CANCEL_REQUESTED: now_ms(self._clock)}
            ):
                self._stop(run)
                return run_view(self._await_end(owner, run_id))
            run = self._require(owner, run_id)  # it moved on meanwhile: look again
        else:
            raise errors.Conflict("Run already finished")
        return self.get(owner, run_id)

    def _end_unstarted(self, run: dict) -> bool:
        """End `run` cancelled if nothing executes it yet: queued, or claimed for a Fargate
        task that has not started it (its slot freed; the Fargate pool drained for the
        next). Whether it was."""
        ended = {"status": RunStatus.CANCELLED, "finished_at": now_ms(self._clock), "error": None}
        if run["status"] == RunStatus.QUEUED:
            return self._table.end(run, ended)
        if not _unstarted_task(run) or not self._table.end(run, ended, (TASK_STARTED,)):
            return False
        self.starter.run_dispatch.drain(Pool.FARGATE)
        return True

    def _stop(self, run: dict) -> None:
        """Stop the run's engine task, if it has one (after the cancel is recorded, so
        whatever the task does next ends the run cancelled). Best effort: the cancel
        stands without it."""
        try:
            self._dispatcher.stop(run)
        except Exception:  # see above
            log.warning("could not stop the task of run %s", run["run_id"], exc_info=True)

    def _await_end(self, owner: str, run_id: str) -> dict:
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while True:
            run = self._require(owner, run_id)
            if run["status"] in FINAL or time.monotonic() > deadline:
                return run
            time.sleep(0.25)

    def _announce(self, run: dict):
        """Tell the webhooks of a run that ended here, in the API (they deliver elsewhere);
        the run's `webhook` as they recorded it, or None."""
        return self.webhooks.notify(run) if self.webhooks is not None else None

    def log(self, owner: str, run_id: str) -> "RunOutput":
        """The run's log so far (runs/log.py): empty before its runner stored any; past
        Lambda's response limit (a log cap set above it), a download link."""
        run = self._require(owner, run_id)
        key = log_key(owner, run["notebook_id"], run["run_id"])
        data = self._files.get(key)
        text = data.decode("utf-8") if data else ""
        if lambda_payload_bytes(text) > self._settings.max_response_bytes:
            return RunOutput("", {}, location=self._files.download_url(key))
        # Untrusted text from the API's origin: a browser must not sniff it into a page.
        return RunOutput(text, {"Content-Type": LOG_CONTENT_TYPE, "X-Content-Type-Options": "nosniff"})

    def _require(self, owner: str, run_id: str) -> dict:
        canonical = payloads.canonical_id(run_id)
        run = self._table.get(canonical) if canonical else None
        if run is None or run["owner"] != owner:
            raise errors.NotFound(RUN_NOT_FOUND)
        return self.reap(run)

    def reap(self, run: dict) -> dict:
        """The run as it is now: a queued or running run past its deadline is failed (its
        runner is gone, or none took it within the queue timeout), with its webhook; a
        running run whose cancel its runner did not act on in time is cancelled. (Reads
        do it, and so does the reaper, runs/reaper.py, for runs nobody reads.)"""
        now = now_ms(self._clock)
        cancel_at = run.get(CANCEL_REQUESTED)
        if (
            run["status"] == RunStatus.RUNNING
            and cancel_at is not None
            and now > int(cancel_at) + CANCEL_DEADLINE_SECONDS * 1000
        ):
            return self.end_lost(run, None, RunStatus.CANCELLED)
        if run["status"] not in (RunStatus.QUEUED, RunStatus.RUNNING) or now <= int(run["deadline_at"]):
            return run
        if run["status"] == RunStatus.QUEUED:
            reason = (
                "The run waited for a runner longer than the queue timeout (NOTEBOOKS_QUEUE_TIMEOUT) and never started"
            )
        elif _unstarted_task(run):
            reason = f"The run's Fargate task did not start it within {TASK_START_SECONDS // 60} minutes"
        else:
            reason = "The runner stopped without reporting a result (crashed or timed out)"
        ended = self.end_lost(run, {"cell_index": None, "ename": "RunnerLost", "evalue": reason})
        if _unstarted_task(run) and ended["status"] == RunStatus.FAILED:
            self._stop(run)  # a task still starting would find nothing to run
        return ended

    def end_lost(self, run: dict, error, status: RunStatus = RunStatus.FAILED) -> dict:
        """End a run that its runner did not end (counting it off its owner's active
        runs, and its runner slot) and tell its webhook; the run as it is now. A Fargate
        run that its task has not started ends only if the task does not start it
        meanwhile (RunRecords.adopt)."""
        changes = {"status": status, "finished_at": now_ms(self._clock), "error": error}
        if self._table.end(run, changes, (TASK_STARTED,) if _unstarted_task(run) else ()):
            ended = {**run, **changes}
            webhook = self._announce(ended)
            return {**ended, "webhook": webhook} if webhook else ended
        return self._table.get(run["run_id"]) or run  # deleted meanwhile: as it was read


def _unstarted_task(run: dict) -> bool:
    """Whether `run`, as read, is a running Fargate run that its task has not started yet
    (claimed, its task starting)."""
    return run["status"] == RunStatus.RUNNING and run.get("engine") == Engine.FARGATE and TASK_STARTED not in run
