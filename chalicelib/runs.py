"""Runs: their records, their dispatch to the runner, and the runner's event handler.

A run is created `queued` by the API (or by a schedule firing), dispatched without
waiting (an `Event` invocation of the runner function: in AWS, or the local Lambda's), claimed
`running` exactly once by the runner, and ends `succeeded` or `failed` with its executed
notebook in S3, or `cancelled` on request. A run whose runner vanished is reported
`failed` once its deadline passes. While it runs, its runner keeps its live log and
current cell (run_log.py); each end is delivered to its notebook's webhook, if any
(webhooks.py: by the runner for the ends it records, through the runner function for
those recorded in the API).
"""
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Optional

import nbformat

from . import html, payloads
from .batches import chunks, in_parallel
from .errors import NOTEBOOK_ID_INVALID, RUN_IDS_REQUIRED, RUN_NOT_FOUND, ApiError, bad_request
from .files import notebook_key, output_key, outputs_prefix
from .metadata import RUN_PREFIX
from .notebooks import now_ms
from .outputs import fit_output
from .periodic import Periodic
from .responses import lambda_payload_bytes
from .run_log import CONTENT_TYPE as LOG_CONTENT_TYPE, LiveLog, capped, log_key, log_text

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
# A Run's client token stands for its first request this long.
TOKEN_SECONDS = 24 * 3600
RECORD_ATTEMPTS = 5
# The runner function's event for a webhook delivery of a run that ended in the API (webhooks.py).
DELIVER_WEBHOOK_EVENT = "deliver_webhook"


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
        "current_cell": optional_int("current_cell") if item["status"] == RUNNING else None,
        "webhook": ({"status": item["webhook"]["status"], "attempts": int(item["webhook"]["attempts"])}
                    if item.get("webhook") else None),
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


def _token_run_id(owner: str, token_hash: str, item: dict) -> str:
    """The one run id a client token gives a notebook: a retry records the same run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"run:{owner}:{token_hash}:{item['notebook_id']}"))


class RunService:
    """Runs as the API sees them: start, read, list, outputs; and run records for the runner."""

    def __init__(self, table, notebooks, files, dispatcher, settings, clock=time.time, webhooks=None):
        self._table = table
        self.webhooks = webhooks  # webhooks.Webhooks: told of the runs that end here, in the API
        self._notebooks = notebooks
        self._files = files
        self._dispatcher = dispatcher
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

    def start(self, owner: str, body: dict, idempotency_key=None) -> dict:
        """Validate the whole request, record one queued run per notebook, dispatch them.

        Any unknown id: 400 and nothing runs. Answers before any notebook executes. With
        a client token (`Idempotency-Key` or `client_token`), the same request again
        creates no new runs: it answers the first one's runs, recording and dispatching
        any that a first attempt cut short did not.
        """
        field = "nbk_ids" if "nbkIds" not in body and "nbk_ids" in body else "nbkIds"
        ids = payloads.id_list(body, field, RUN_IDS_REQUIRED, self._settings.max_ids)
        module = payloads.module_name(body)
        parameters = payloads.parameters(body, self._settings.max_parameters_bytes)
        token = payloads.client_token(body, idempotency_key)
        items = self._notebooks.require_many(owner, ids)
        if token is None:
            runs = [self._new_run(owner, item["notebook_id"], MANUAL, module, parameters) for item in items]
            self._check_quota(owner, len(runs))
            self._record_and_dispatch(owner, runs, items)
        else:
            runs = self._start_once(owner, token, items, module, parameters)
        return {"runs": [{key: run[key] for key in ("run_id", "notebook_id", "status")} for run in runs]}

    def _start_once(self, owner: str, token: str, items: list, module: str, parameters: dict) -> list:
        """The runs of the first request with `token`, recorded and dispatched once."""
        token_hash = hashlib.sha256(token.encode("utf-8")).hexdigest()
        now_s = int(self._clock())
        request = {"notebook_ids": [item["notebook_id"] for item in items], "module": module,
                   "parameters": json.dumps(parameters)}
        first = self._table.notebooks.claim_token(owner, token_hash, request, now_s, TOKEN_SECONDS)
        if not first:
            request = self._table.notebooks.token(owner, token_hash, now_s)
            if request is None:  # expired between our two reads
                raise ApiError(409, "The client token is being reused; try again")
            live = self._table.notebooks.get_many(owner, request["notebook_ids"])
            items = [live[nid] for nid in request["notebook_ids"] if nid in live and not live[nid].get("deleting")]
        runs = [self._new_run(owner, item["notebook_id"], MANUAL, request["module"],
                              json.loads(request["parameters"]), run_id=_token_run_id(owner, token_hash, item))
                for item in items]
        existing = {} if first else self._table.get_many(run["run_id"] for run in runs)
        missing = [run for run in runs if run["run_id"] not in existing]
        if missing:
            self._check_quota(owner, len(missing))
            self._record_and_dispatch(owner, missing, [item for item in items
                                                       if item["notebook_id"] in {r["notebook_id"] for r in missing}])
        # A first attempt cut short may have recorded runs it never dispatched; the runner
        # claims a run once, so dispatching a queued run again is harmless.
        self._dispatch_all([run for run in existing.values() if run["status"] == QUEUED])
        return [existing.get(run["run_id"], run) for run in runs]

    def _check_quota(self, owner: str, adding: int) -> None:
        active = int(self._table.notebooks.counts(owner).get("runs_active", 0))
        if active + adding > self._settings.max_active_runs:
            raise self._quota_error(active)

    def _quota_error(self, active) -> ApiError:
        limit = self._settings.max_active_runs
        return ApiError(429, f"Too many runs queued or running: at most {limit} per user "
                             f"(NOTEBOOKS_MAX_ACTIVE_RUNS), {active} now; try again when some have ended")

    def _new_run(self, owner: str, notebook_id: str, trigger: str, module=None, parameters=None, run_id=None) -> dict:
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
        return run

    def _record_and_dispatch(self, owner: str, runs: list, items: list) -> None:
        """Record `runs` (up to 33 per transaction), then dispatch them concurrently; the
        runs recorded before a failure are dispatched too, then the failure is raised."""
        recorded = []
        try:
            for chunk in chunks(runs, self._table.runs_per_transaction()):
                recorded += self._record_chunk(owner, chunk, self._settings.max_active_runs)
        finally:
            self._dispatch_all(recorded)
        self._expire_old_runs(owner, items)

    def _record_chunk(self, owner: str, runs: list, active_limit) -> list:
        for _ in range(RECORD_ATTEMPTS):
            why = self._table.create(owner, runs, active_limit)
            if why is None:
                return runs
            if why == "quota":
                raise self._quota_error(int(self._table.notebooks.counts(owner).get("runs_active", 0)))
            if why == "exists":  # a concurrent attempt with the same client token got there first
                taken = self._table.get_many(run["run_id"] for run in runs)
                runs = [run for run in runs if run["run_id"] not in taken]
                if not runs:
                    return []
                continue
            items = self._table.notebooks.get_many(owner, [run["notebook_id"] for run in runs])
            if any(run["notebook_id"] not in items or items[run["notebook_id"]].get("deleting") for run in runs):
                raise bad_request(NOTEBOOK_ID_INVALID)  # deleted since we looked
            # A later `last_run` (a clock behind another's): record these just after it.
            latest = max(int(item.get("last_run", 0)) for item in items.values())
            created = max(now_ms(self._clock), latest + 1)
            runs = [{**run, "created_at": created, "deadline_at": run["deadline_at"] + created - run["created_at"]}
                    for run in runs]
        raise ApiError(409, "The notebooks were changed by other requests meanwhile; try again")

    def _dispatch_all(self, runs: list) -> None:
        in_parallel(self._dispatch, runs, self._settings.aws_concurrency)

    def record(self, owner: str, notebook_id: str, trigger: str, module=None, parameters=None, run_id=None):
        """Create a queued run and count it on its notebook; None if the notebook is gone
        or `run_id` exists already. (Schedule firings: the active-runs quota does not
        refuse them; the scheduled-notebooks quota bounds them.)"""
        item = self._notebooks.live(owner, notebook_id)
        if item is None:
            return None
        run = self._new_run(owner, item["notebook_id"], trigger, module, parameters, run_id)
        try:
            recorded = self._record_chunk(owner, [run], None)
        except ApiError:
            return None
        if not recorded:
            return None
        self._expire_old_runs(owner, [item])
        return recorded[0]

    def _expire_old_runs(self, owner: str, items: list) -> None:
        """Keep at most `max_runs_kept` runs per notebook: each notebook that had that many
        before this run loses its oldest (outputs first, then records). Best effort: what
        fails here is expired after the notebook's next run."""
        keep = self._settings.max_runs_kept
        over = [(item, int(item.get("runs_kept", 0)) + 1 - keep) for item in items
                if int(item.get("runs_kept", 0)) + 1 > keep]

        def expire(entry):
            item, excess = entry
            pointers, _ = self._table.notebooks.run_pointers(owner, item["notebook_id"], limit=excess,
                                                             oldest_first=True)
            self._files.delete_many([key(owner, item["notebook_id"], p["run_id"]) for p in pointers
                                     for key in (output_key, log_key)])
            self._table.delete(owner, pointers, notebook_id=item["notebook_id"])

        try:
            in_parallel(expire, over, self._settings.aws_concurrency)
        except Exception:  # noqa: BLE001 - the runs were recorded; expiry catches up later
            log.exception("expiring old runs of %s failed", owner)

    def _dispatch(self, run: dict) -> None:
        try:
            self._dispatcher.dispatch({"run_id": run["run_id"]})
        except Exception as error:  # noqa: BLE001 - any failure to hand over fails the run
            log.warning("dispatch of run %s failed: %s", run["run_id"], error)
            reason = {"cell_index": None, "ename": "DispatchError",
                      "evalue": f"The run could not be started: {type(error).__name__}"}
            if self.finish(run["run_id"], FAILED, error=reason, expected_status=QUEUED):
                self._announce({**run, "status": FAILED})
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
                ended = self.finish(run["run_id"], FAILED, error=error)
                if ended:
                    self._announce({**run, "status": FAILED})
                counts[FAILED] += ended
            else:
                self._dispatch(run)
                counts[QUEUED] += 1
        return counts

    def get(self, owner: str, run_id: str) -> dict:
        """One run of the owner (another owner's is answered like an unknown one)."""
        return run_view(self._require(owner, run_id))

    def for_notebook(self, owner: str, notebook_id, limit=None, next_token=None) -> tuple:
        """(the notebook's runs newest first, next page's token or None): all of them (at
        most `max_runs_kept`), or a page of `limit`."""
        item = self._notebooks.require(owner, notebook_id)
        nid = item["notebook_id"]
        prefix = f"{RUN_PREFIX}{nid}#"
        start = payloads.page_key(next_token, lambda key: (
            set(key) == {"owner", "sk"} and key["owner"] == owner and isinstance(key["sk"], str)
            and key["sk"].startswith(prefix)))
        if limit is None and start is None:
            pointers, last_key = self._table.notebooks.all_run_pointers(owner, nid), None
        else:
            pointers, last_key = self._table.notebooks.run_pointers(owner, nid, limit, start)
        runs = self._table.get_many(pointer["run_id"] for pointer in pointers)
        views = [run_view(self._reap(runs[p["run_id"]])) for p in pointers if p["run_id"] in runs]
        return views, payloads.page_token(last_key)

    def output(self, owner: str, run_id: str, output_format: str = "ipynb") -> "RunOutput":
        """The run's executed notebook (while it runs: its latest checkpoint), as nbformat
        JSON or (`html`) a sanitised page.

        A response is capped at what Lambda returns: the stored object's size (a HEAD,
        before reading anything) decides; a larger notebook is offered as a short-lived
        S3 download link instead, a larger page is refused.
        """
        if output_format not in ("ipynb", "json", "html"):
            raise bad_request("format must be html or ipynb")
        run = self._require(owner, run_id)
        key = output_key(owner, run["notebook_id"], run["run_id"])
        size = self._files.size(key)
        if size is None:
            raise ApiError(404, "Run output not available yet")
        limit = self._settings.max_response_bytes
        too_large_page = ApiError(413, f"Run output too large to show as HTML (over {limit} bytes): "
                                       "download it with format=ipynb")
        if size > limit:
            if output_format == "html":
                raise too_large_page
            return RunOutput("", {}, location=self._files.download_url(key))
        data = self._files.get(key)
        if data is None:
            raise ApiError(404, "Run output not available yet")
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
        """Delete the runs of deleted notebooks: outputs first, then records. Their runs
        are found by consistent Queries (a Query and a listing per notebook that ever
        ran, concurrently); then deleted in batches."""
        ran = [item for item in items if int(item.get("no_of_runs", 0))]

        def find(item):
            return (self._table.notebooks.all_run_pointers(owner, item["notebook_id"]),
                    self._files.keys_under(outputs_prefix(owner, item["notebook_id"])))

        found = in_parallel(find, ran, self._settings.aws_concurrency)
        self._files.delete_many([key for _, keys in found for key in keys])
        self._table.delete(owner, [pointer for pointers, _ in found for pointer in pointers])

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

    def finish(self, run_id: str, status: str, error=None, expected_status: str = RUNNING,
               unless_cancelling: bool = False) -> bool:
        """End the run as `status` (with `error` for a failure), counting it off its
        owner's active runs; False if it was not `expected_status` any more (e.g. declared
        lost meanwhile, or deleted) or, with `unless_cancelling`, a cancel was requested."""
        run = self._table.get(run_id)
        if run is None or run["status"] != expected_status:
            return False
        return self._table.end(run, {"status": status, "finished_at": now_ms(self._clock), "error": error},
                               unless_cancelling)

    def conclude(self, run_id: str, status: str, error=None):
        """End a running run as `status`, or as `cancelled` if a cancel was requested
        meanwhile; the final status, or None if the run was not running any more (declared
        lost, or deleted with its notebook). Exactly one final status wins any race."""
        if status != CANCELLED and self.finish(run_id, status, error, unless_cancelling=True):
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
                self._announce({**run, "status": CANCELLED})
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

    def _announce(self, run: dict):
        """Tell the webhooks of a run that ended here, in the API (they deliver elsewhere);
        the run's `webhook` as they recorded it, or None."""
        return self.webhooks.notify(run) if self.webhooks is not None else None

    def log(self, owner: str, run_id: str) -> "RunOutput":
        """The run's log so far (run_log.py): empty before its runner stored any; past
        Lambda's response limit (a log cap set above it), a download link."""
        run = self._require(owner, run_id)
        key = log_key(owner, run["notebook_id"], run["run_id"])
        data = self._files.get(key)
        text = data.decode("utf-8") if data else ""
        if lambda_payload_bytes(text) > self._settings.max_response_bytes:
            return RunOutput("", {}, location=self._files.download_url(key))
        return RunOutput(text, {"Content-Type": LOG_CONTENT_TYPE})

    def current_cell(self, run_id: str, index: int) -> None:
        """Record the index of the cell a running run executes."""
        self._table.transition(run_id, RUNNING, {"current_cell": index})

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
        """End a run that its runner did not end, counting it off its owner's active runs;
        the run as it is now."""
        changes = {"status": status, "finished_at": now_ms(self._clock), "error": error}
        if self._table.end(run, changes):
            ended = {**run, **changes}
            webhook = self._announce(ended)
            return {**ended, "webhook": webhook} if webhook else ended
        return self._table.get(run["run_id"])


class RunExecutor:
    """The runner function's work: execute one run end to end on a NotebookRunner."""

    def __init__(self, runs: RunService, files, scheduler, runner):
        self._runs = runs
        self._files = files
        self._scheduler = scheduler
        self._runner = runner

    def handle(self, event: dict) -> dict:
        """Handle one runner invocation: `{"run_id"}` from the API, a schedule's
        `{"notebook_id", "owner", "trigger": "schedule"}` from EventBridge, or a webhook
        delivery `{"deliver_webhook": run_id}` from the API."""
        if DELIVER_WEBHOOK_EVENT in event:
            return self._runs.webhooks.deliver(event[DELIVER_WEBHOOK_EVENT])
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
            # Lambda's retry of an invocation that ran out of time while delivering: finish that.
            self._deliver_webhook(run_id, only_pending=True)
            return "skipped"
        owner, notebook_id = run["owner"], run["notebook_id"]
        try:
            data = self._files.get(notebook_key(owner, notebook_id))
            if data is None:
                if self._runs.finish(run_id, FAILED, error={"cell_index": None, "ename": "NotebookMissing",
                                                            "evalue": "The notebook was deleted before it ran"}):
                    self._deliver_webhook(run_id)
                return FAILED
            target, limit = output_key(owner, notebook_id, run_id), self._runs.max_output_bytes
            log_target, log_limit = log_key(owner, notebook_id, run_id), self._runs.max_log_bytes
            live = LiveLog(self._runner.live, lambda text: self._files.put(log_target, text.encode("utf-8"),
                                                                           LOG_CONTENT_TYPE),
                           lambda index: self._runs.current_cell(run_id, index), log_limit)
            with _CancelWatch(lambda: self._runs.cancel_requested(run_id), self._runner.cancel), live:
                execution = self._runner.execute(
                    nbformat.reads(data.decode("utf-8"), as_version=4),
                    parameters=json.loads(run.get("parameters", "{}")),
                    on_progress=lambda done, total: self._runs.progress(run_id, done, total),
                    on_checkpoint=lambda notebook: self._files.put(target, fit_output(notebook, limit)[0]),
                )
            output, too_large = fit_output(execution.notebook, limit)
            self._files.put(target, output)
            self._store_final_log(log_target, execution.notebook, log_limit)
            error = execution.error or too_large
            status = CANCELLED if execution.cancelled else FAILED if error else SUCCEEDED
            final = self._runs.conclude(run_id, status, error=error)
            if final is None and self._runs.is_gone(run_id):
                # the notebook was deleted while it ran: leave no output
                self._files.delete_many([target, log_target])
            if final is not None:
                self._deliver_webhook(run_id)
            return final or status
        except Exception as error:
            log.exception("run %s failed in the runner", run_id)
            if self._runs.finish(run_id, FAILED, error={"cell_index": None, "ename": type(error).__name__,
                                                        "evalue": "The runner failed; see its logs"}):
                self._deliver_webhook(run_id)
            return FAILED
        finally:
            self._runner.prewarm()  # the next run's kernel starts now, after this one is recorded

    def _store_final_log(self, key: str, notebook, limit: int) -> None:
        """Store the run's whole log; if that fails, the last live one stays: a log never
        fails a run."""
        try:
            self._files.put(key, capped(log_text(notebook.cells), limit).encode("utf-8"), LOG_CONTENT_TYPE)
        except Exception:  # noqa: BLE001 - the run's outcome and output are what must be recorded
            log.warning("could not store the final log at %s", key, exc_info=True)

    def _deliver_webhook(self, run_id: str, only_pending: bool = False) -> None:
        """Deliver the end of a run this runner ended to its webhook, here and now."""
        if self._runs.webhooks is not None:
            self._runs.webhooks.deliver(run_id, only_pending)

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
