"""Starting runs on request: a Run request (validation, client tokens, the active-runs
quota) and a rerun; their runs are recorded and dispatched by runs.dispatch.RunDispatch."""

import hashlib
import json
import time
import uuid

from chalicelib.api import payloads
from chalicelib.api.requests import RerunRequest, RunRequest, run_timeout
from chalicelib.common import errors
from chalicelib.common.clock import Clock
from chalicelib.common.model import RunStatus, Trigger
from chalicelib.notebooks.parameters import check as check_parameters
from chalicelib.notebooks.parameters import declared as declared_parameters
from chalicelib.notebooks.service import CONTENT_VERSION
from chalicelib.runs.dispatch import dynamo_seconds, quota_error
from chalicelib.storage.files import FileStore, notebook_key

# A Run's client token stands for its first request this long.
TOKEN_SECONDS = 24 * 3600


def _token_run_id(owner: str, token_hash: str, item: dict) -> str:
    """The one run id a client token gives a notebook: a retry records the same run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"run:{owner}:{token_hash}:{item['notebook_id']}"))


def _runs_answer(runs: list) -> dict:
    """Run's (and rerun's) answer: each run's id, notebook and status."""
    return {"runs": [{key: run[key] for key in ("run_id", "notebook_id", "status")} for run in runs]}


class RunStarter:
    """Starts the runs a request asks for (Run, rerun): validates the request, keeps its
    client token and checks the active-runs quota; its `run_dispatch` records and
    dispatches the runs. Schedule firings (runner/executor.py) and the local stack's
    restart (devstack/local_lambda.py) call RunDispatch directly."""

    def __init__(self, table, notebooks, files: FileStore, settings, run_dispatch, clock: Clock = time.time):
        self._table = table
        self._notebooks = notebooks
        self._files = files
        self._settings = settings
        self.run_dispatch = run_dispatch  # run_dispatch.RunDispatch
        self._clock = clock  # client tokens' age

    def start(self, owner: str, request: RunRequest) -> dict:
        """Record one queued run per notebook of the request (its fields checked at the
        edge: api/requests.py), dispatch them.

        Any unknown id, or parameters the notebooks do not declare: 400 and nothing runs.
        Answers before any notebook executes. With a client token (`Idempotency-Key` or
        `client_token`), the same request again creates no new runs: it answers the first
        one's runs, recording and dispatching any that a first attempt cut short did not.
        """
        module, parameters, timeout, token = request.module, request.parameters, request.timeout, request.client_token
        items = self._notebooks.require_many(owner, request.ids)
        if token is None:
            pinned = self._notebooks.pin(owner, items, check=parameters or None)
            runs = [
                self.run_dispatch.new_run(
                    owner,
                    item["notebook_id"],
                    Trigger.MANUAL,
                    module,
                    parameters,
                    timeout=timeout,
                    version=pinned[item["notebook_id"]].version,
                )
                for item in items
            ]
            self._check_quota(owner, len(runs))
            self.run_dispatch.record_and_dispatch(owner, runs, items)
        else:
            runs = self._start_once(owner, token, items, module, parameters, timeout)
        return _runs_answer(runs)

    def rerun(self, owner: str, run: dict, request: RerunRequest) -> dict:
        """A new run of the owner's `run`'s notebook version, with its parameters and the
        request's merged over them, checked against what that version declares, and its
        timeout unless the request gives one. 409 when the version (or the notebook) no
        longer exists. A client token is not taken: each rerun is a new run."""
        merged = payloads.parameters(
            {"parameters": {**json.loads(run.get("parameters", "{}")), **request.parameters}},
            self._settings.max_parameters_bytes,
        )
        # The run's own timeout unless the request gives one; checked against today's
        # limits either way (a deployment may have dropped Fargate since).
        timeout = request.timeout
        if timeout is None:
            stored = {"timeout": float(run["timeout"])} if run.get("timeout") is not None else {}
            timeout = run_timeout(stored, self._settings)
        item = self._notebooks.live(owner, run["notebook_id"])
        version = run.get("notebook_version")
        if version is None:  # recorded before versions, and its runner has not pinned one yet
            raise errors.Conflict("The notebook version of this run is not known until it starts")
        found = self._files.get(notebook_key(owner, item["notebook_id"]), version) if item else None
        if found is None:
            raise errors.Conflict("The notebook version of this run no longer exists")
        if merged:
            check_parameters(merged, declared_parameters(json.loads(found)))
        new = self.run_dispatch.new_run(
            owner, item["notebook_id"], Trigger.RERUN, run.get("module"), merged, timeout=timeout, version=version
        )
        self._check_quota(owner, 1)
        self.run_dispatch.record_and_dispatch(owner, [new], [item])
        return _runs_answer([new])

    def _start_once(self, owner: str, token: str, items: list, module: str, parameters: dict, timeout: float) -> list:
        """The runs of the first request with `token`, recorded and dispatched once."""
        token_hash = hashlib.sha256(token.encode("utf-8")).hexdigest()
        now_s = int(self._clock())
        try:
            pinned = self._notebooks.pin(owner, items, check=parameters or None)
        except errors.InvalidInput:
            if self._table.notebooks.token(owner, token_hash, now_s) is None:
                raise
            pinned = {}  # a repeat: its body's parameters are not used, the first request's are
        request: dict = {
            "notebook_ids": [item["notebook_id"] for item in items],
            "module": module,
            "parameters": json.dumps(parameters),
            "timeout": dynamo_seconds(timeout),
            "versions": json.dumps({nid: pin.version for nid, pin in pinned.items() if pin.version}),
        }
        first = self._table.notebooks.claim_token(owner, token_hash, request, now_s, TOKEN_SECONDS)
        if not first:
            request = self._table.notebooks.token(owner, token_hash, now_s)
            if request is None:  # expired between our two reads
                raise errors.Conflict("The client token is being reused; try again")
            live = self._notebooks.live_items(owner, request["notebook_ids"])
            items = [live[nid] for nid in request["notebook_ids"] if nid in live]
        versions = json.loads(request.get("versions", "{}"))
        runs = [
            self.run_dispatch.new_run(
                owner,
                item["notebook_id"],
                Trigger.MANUAL,
                request["module"],
                json.loads(request["parameters"]),
                run_id=_token_run_id(owner, token_hash, item),
                timeout=float(request.get("timeout", self._settings.run_timeout)),
                version=versions.get(item["notebook_id"], item.get(CONTENT_VERSION)),
            )
            for item in items
        ]
        existing = {} if first else self._table.get_many(run["run_id"] for run in runs)
        missing = [run for run in runs if run["run_id"] not in existing]
        if missing:
            self._check_quota(owner, len(missing))
            wanted = {run["notebook_id"] for run in missing}
            self.run_dispatch.record_and_dispatch(
                owner, missing, [item for item in items if item["notebook_id"] in wanted]
            )
        # A first attempt cut short may have recorded runs it never dispatched; the runner
        # claims a run once, so dispatching a queued run again is harmless.
        self.run_dispatch.dispatch_all([run for run in existing.values() if run["status"] == RunStatus.QUEUED])
        return [existing.get(run["run_id"], run) for run in runs]

    def _check_quota(self, owner: str, adding: int) -> None:
        active = int(self._table.notebooks.counts(owner).get("runs_active", 0))
        if active + adding > self._settings.active_runs_quota():
            raise quota_error(self._settings.active_runs_quota(), active, adding)
