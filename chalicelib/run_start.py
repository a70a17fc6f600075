"""Starting runs: a Run request's runs (client tokens, quotas), a schedule firing's run,
each recorded `queued` with its notebook's counters, then handed to its engine."""
import hashlib
import json
import logging
import time
import uuid
from decimal import Decimal

from . import payloads
from .batches import chunks, in_parallel
from .errors import NOTEBOOK_ID_INVALID, RUN_IDS_REQUIRED, ApiError, bad_request
from .files import notebook_key
from .notebooks import CONTENT_VERSION, now_ms
from .run_log import run_object_keys
from .parameters import check as check_parameters, declared as declared_parameters
from .runs import FAILED, MANUAL, QUEUED, RERUN, RUNNING

log = logging.getLogger(__name__)

# A Run's client token stands for its first request this long.
TOKEN_SECONDS = 24 * 3600
RECORD_ATTEMPTS = 5


def _token_run_id(owner: str, token_hash: str, item: dict) -> str:
    """The one run id a client token gives a notebook: a retry records the same run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"run:{owner}:{token_hash}:{item['notebook_id']}"))


def _runs_answer(runs: list) -> dict:
    """Run's (and rerun's) answer: each run's id, notebook and status."""
    return {"runs": [{key: run[key] for key in ("run_id", "notebook_id", "status")} for run in runs]}


def _number(seconds: float) -> Decimal:
    """Seconds as a DynamoDB number (boto3 takes no floats)."""
    return Decimal(str(seconds))


class RunStarter:
    """Records new runs and dispatches them: Run requests, schedule firings, and the
    local stack's queued runs after a restart."""

    def __init__(self, table, notebooks, files, dispatcher, settings, clock=time.time, webhooks=None):
        self._table = table
        self._webhooks = webhooks  # webhooks.Webhooks: told of the runs that fail here
        self._notebooks = notebooks
        self._files = files
        self._dispatcher = dispatcher
        self._settings = settings
        self._clock = clock

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
        timeout = self._timeout(body)
        token = payloads.client_token(body, idempotency_key)
        items = self._notebooks.require_many(owner, ids)
        if token is None:
            pinned = self._notebooks.pin(owner, items, check=parameters or None)
            runs = [self._new_run(owner, item["notebook_id"], MANUAL, module, parameters, timeout=timeout,
                                  version=pinned[item["notebook_id"]].version) for item in items]
            self._check_quota(owner, len(runs))
            self._record_and_dispatch(owner, runs, items)
        else:
            runs = self._start_once(owner, token, items, module, parameters, timeout)
        return _runs_answer(runs)

    def rerun(self, owner: str, run: dict, body: dict) -> dict:
        """A new run of the owner's `run`'s notebook version, with its parameters and
        `parameters` from `body` merged over them, checked against what that version
        declares, and its timeout unless `body` gives one. 409 when the version (or the
        notebook) no longer exists. A client token is not taken: each rerun is a new run."""
        given = payloads.parameters(body, self._settings.max_parameters_bytes)
        merged = payloads.parameters({"parameters": {**json.loads(run.get("parameters", "{}")), **given}},
                                     self._settings.max_parameters_bytes)
        # The run's own timeout unless the body gives one; checked against today's limits
        # either way (a deployment may have dropped Fargate since).
        timeout = self._timeout(body if body.get("timeout") is not None or run.get("timeout") is None
                                else {"timeout": float(run["timeout"])})
        item = self._notebooks.live(owner, run["notebook_id"])
        version = run.get("notebook_version")
        if version is None:  # recorded before versions, and its runner has not pinned one yet
            raise ApiError(409, "The notebook version of this run is not known until it starts")
        found = self._files.get(notebook_key(owner, item["notebook_id"]), version) if item else None
        if found is None:
            raise ApiError(409, "The notebook version of this run no longer exists")
        if merged:
            check_parameters(merged, declared_parameters(json.loads(found)))
        new = self._new_run(owner, item["notebook_id"], RERUN, run.get("module"), merged, timeout=timeout,
                            version=version)
        self._check_quota(owner, 1)
        self._record_and_dispatch(owner, [new], [item])
        return _runs_answer([new])

    def _timeout(self, body: dict) -> float:
        """The request's `timeout`: the deployment's run timeout by default, at most the
        longest its engines take."""
        longest = self._settings.longest_run()
        why = (" (longer runs need ECS Fargate, which this deployment has not set up)"
               if longest < self._settings.max_run_timeout else "")
        return payloads.timeout(body, self._settings.run_timeout, longest, why)

    def _start_once(self, owner: str, token: str, items: list, module: str, parameters: dict,
                    timeout: float) -> list:
        """The runs of the first request with `token`, recorded and dispatched once."""
        token_hash = hashlib.sha256(token.encode("utf-8")).hexdigest()
        now_s = int(self._clock())
        try:
            pinned = self._notebooks.pin(owner, items, check=parameters or None)
        except ApiError:
            if self._table.notebooks.token(owner, token_hash, now_s) is None:
                raise
            pinned = {}  # a repeat: its body's parameters are not used, the first request's are
        request = {"notebook_ids": [item["notebook_id"] for item in items], "module": module,
                   "parameters": json.dumps(parameters), "timeout": _number(timeout),
                   "versions": json.dumps({nid: pin.version for nid, pin in pinned.items() if pin.version})}
        first = self._table.notebooks.claim_token(owner, token_hash, request, now_s, TOKEN_SECONDS)
        if not first:
            request = self._table.notebooks.token(owner, token_hash, now_s)
            if request is None:  # expired between our two reads
                raise ApiError(409, "The client token is being reused; try again")
            live = self._notebooks.live_items(owner, request["notebook_ids"])
            items = [live[nid] for nid in request["notebook_ids"] if nid in live]
        versions = json.loads(request.get("versions", "{}"))
        runs = [self._new_run(owner, item["notebook_id"], MANUAL, request["module"],
                              json.loads(request["parameters"]), run_id=_token_run_id(owner, token_hash, item),
                              timeout=float(request.get("timeout", self._settings.run_timeout)),
                              version=versions.get(item["notebook_id"], item.get(CONTENT_VERSION)))
                for item in items]
        existing = {} if first else self._table.get_many(run["run_id"] for run in runs)
        missing = [run for run in runs if run["run_id"] not in existing]
        if missing:
            self._check_quota(owner, len(missing))
            wanted = {run["notebook_id"] for run in missing}
            self._record_and_dispatch(owner, missing, [item for item in items if item["notebook_id"] in wanted])
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

    def _new_run(self, owner: str, notebook_id: str, trigger: str, module=None, parameters=None, run_id=None,
                 timeout=None, version=None) -> dict:
        """A queued run, with its timeout (default: the deployment's), the engine that
        timeout needs, and the notebook version it executes (None: the one its runner reads)."""
        created = now_ms(self._clock)
        timeout = self._settings.run_timeout if timeout is None else timeout
        run = {
            "run_id": run_id or str(uuid.uuid4()),
            "notebook_id": notebook_id,
            "owner": owner,
            "trigger": trigger,
            "status": QUEUED,
            "created_at": created,
            "deadline_at": created + int(self._settings.queue_timeout * 1000),
            "parameters": json.dumps(parameters or {}),
            "timeout": _number(timeout),
            "engine": self._dispatcher.engine_for(timeout),
        }
        if module is not None:
            run["module"] = module
        if version is not None:
            run["notebook_version"] = version
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
            items = self._notebooks.live_items(owner, [run["notebook_id"] for run in runs])
            if any(run["notebook_id"] not in items for run in runs):
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
        run = self._new_run(owner, item["notebook_id"], trigger, module, parameters, run_id,
                            version=item.get(CONTENT_VERSION))
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
            self._files.delete_many([key for p in pointers
                                     for key in run_object_keys(owner, item["notebook_id"], p["run_id"])])
            self._table.delete(owner, pointers, notebook_id=item["notebook_id"])

        try:
            in_parallel(expire, over, self._settings.aws_concurrency)
        except Exception:  # noqa: BLE001 - the runs were recorded; expiry catches up later
            log.exception("expiring old runs of %s failed", owner)

    def _dispatch(self, run: dict) -> None:
        try:
            handed = self._dispatcher.dispatch(run)
        except Exception as error:  # noqa: BLE001 - any failure to hand over fails the run
            log.warning("dispatch of run %s failed: %s", run["run_id"], error)
            reason = {"cell_index": None, "ename": "DispatchError",
                      "evalue": f"The run could not be started: {type(error).__name__}"}
            if self._fail(run, reason):
                run["status"] = FAILED
            return
        if handed:
            self._note(run["run_id"], handed)

    def _note(self, run_id: str, handed: dict) -> None:
        """Record what the engine answered (a Fargate task's ARN, for cancel's StopTask) on
        the run, queued or already claimed by its task. Best effort: the run goes on
        without it, and a cancel then relies on the runner alone."""
        try:
            if not self._table.transition(run_id, QUEUED, handed):
                self._table.transition(run_id, RUNNING, handed)
        except Exception:  # noqa: BLE001 - see above
            log.exception("could not record %s on run %s", sorted(handed), run_id)

    def resume_after_restart(self) -> dict:
        """After the local Lambda restarts: a run that was running is failed (its kernel
        died with the stack), a queued one is dispatched again (Lambda's queue of
        asynchronous invocations survives; the local one did not). {status: count}."""
        counts = {FAILED: 0, QUEUED: 0}
        for run in self._table.unfinished():
            if run["status"] == RUNNING:
                error = {"cell_index": None, "ename": "RunnerLost",
                         "evalue": "The local stack stopped while the run was in progress"}
                counts[FAILED] += self._fail(run, error)
            else:
                self._dispatch(run)
                counts[QUEUED] += 1
        return counts

    def _fail(self, run: dict, error: dict) -> bool:
        """End `run` failed if it is still in the status `run` has (counted off its
        owner's active runs), and tell its webhook; whether it was."""
        ended = self._table.end(run, {"status": FAILED, "finished_at": now_ms(self._clock), "error": error})
        if ended and self._webhooks is not None:
            self._webhooks.notify({**run, "status": FAILED})
        return ended
