"""The notebook service: create, rename, fetch, list, count, delete, and content.

Files live in S3 (storage/files.py), metadata in DynamoDB (storage/tables.py). Every method takes the
caller's username: a notebook of another owner is never read, so it is answered exactly
like an id that does not exist.
"""

import copy
import json
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import nbformat

from chalicelib.api import payloads
from chalicelib.api.requests import ContentRequest, CreateRequest, IdsRequest, RenameRequest
from chalicelib.common import errors
from chalicelib.common.batches import in_parallel
from chalicelib.common.clock import Clock, now_ms
from chalicelib.common.errors import NO_NOTEBOOK_FOUND, NOTEBOOK_ID_INVALID
from chalicelib.notebooks import parameters
from chalicelib.schedules import cron
from chalicelib.storage.files import FileStore, notebook_key
from chalicelib.storage.notebook_table import scheduled_until
from chalicelib.storage.tables import NOTEBOOK_PREFIX, Conflict, NameTaken

_UNSCHEDULED: dict = {"period": None, "until": None, "time": None}
_RENAME_ATTEMPTS = 5
_DEFAULT_NAME_ATTEMPTS = 50


PYTHON3_KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def new_notebook() -> nbformat.NotebookNode:
    """An empty nbformat v4 notebook with a python3 kernelspec."""
    return nbformat.v4.new_notebook(
        metadata={"kernelspec": dict(PYTHON3_KERNELSPEC), "language_info": {"name": "python"}}
    )


def parse_notebook(value, field: str = "content") -> nbformat.NotebookNode:
    """`value` as a valid nbformat v4 notebook, else a 400 with nbformat's reason.

    A notebook without a kernelspec gets python3's, the kernel the runner starts.
    """
    if not isinstance(value, dict):
        raise errors.InvalidInput(f"{field} must be a notebook (a JSON object)")
    version, minor = value.get("nbformat"), value.get("nbformat_minor")
    if type(version) is not int or version != 4:
        raise errors.InvalidInput(f"Invalid notebook in {field}: nbformat must be 4")
    if type(minor) is not int or minor < 0:
        raise errors.InvalidInput(f"Invalid notebook in {field}: nbformat_minor must be a whole number")
    cells, metadata = value.get("cells"), value.get("metadata")
    if not isinstance(cells, list) or not all(isinstance(cell, dict) for cell in cells):
        raise errors.InvalidInput(f"Invalid notebook in {field}: cells must be a list of objects")
    if not isinstance(metadata, dict):
        raise errors.InvalidInput(f"Invalid notebook in {field}: metadata must be an object")
    try:
        # normalize() adds what newer minor versions require (cell ids) before validating;
        # on input it cannot repair it warns, and validate() below gives the reason.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", nbformat.warnings.MissingIDFieldWarning)
            _, normalized = nbformat.validator.normalize(copy.deepcopy(value))
        notebook = nbformat.from_dict(normalized)
        nbformat.validate(notebook)
    except nbformat.ValidationError as error:
        raise errors.InvalidInput(f"Invalid notebook in {field}: {error.message}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        # nbformat's helpers assume the schema holds; odd input can break them first.
        raise errors.InvalidInput(
            f"Invalid notebook in {field}: not an nbformat v4 notebook ({type(error).__name__})"
        ) from None
    notebook.metadata.setdefault("kernelspec", nbformat.from_dict(PYTHON3_KERNELSPEC))
    return notebook


def serialise(notebook) -> bytes:
    """Notebook JSON as stored in S3."""
    return nbformat.writes(notebook).encode("utf-8")


# On a notebook's item, written with each content write: the S3 version of its content,
# and the parameters that content declares (JSON). Notebooks written before versions
# have neither.
CONTENT_VERSION = "content_version"
DECLARED = "declared_parameters"


@dataclass
class Pinned:
    """The content a run executes: its S3 version (None: the latest, pinned by the
    runner) and the parameters it declares (None when not read)."""

    version: Optional[str]
    declared: Optional[list]


def content_fields(notebook, version: str) -> dict:
    """The item's fields that describe content `notebook` stored as `version`."""
    fields = {CONTENT_VERSION: version}
    cached = parameters.cacheable(parameters.declared(notebook))
    if cached is not None:
        fields[DECLARED] = cached
    return fields


def is_scheduled(item: dict, at_ms: int) -> bool:
    """Whether the notebook has a schedule whose `until` is still ahead."""
    schedule = item.get("schedule")
    return bool(schedule and int(schedule["until_ms"]) > at_ms)


def notebook_view(item: dict, at_ms: int, listing: bool = False) -> dict:
    """The API's notebook object. `last_run` of a never-run notebook: null, or "-" in List."""
    scheduled = is_scheduled(item, at_ms)
    schedule = item["schedule"] if scheduled else _UNSCHEDULED
    shown = {field: schedule.get(field) for field in _UNSCHEDULED}
    if scheduled and not listing:  # Fetch: the zone (null: stored before zones), the next occurrence, parameters
        shown.update(
            timezone=schedule.get("timezone"),
            next_run=cron.next_occurrence(schedule, at_ms),
            parameters=json.loads(schedule.get("parameters", "{}")),
        )
    last_run = item.get("last_run")
    return {
        "notebook_id": item["notebook_id"],
        "notebook_name": item["notebook_name"],
        "status": "Scheduled" if scheduled else "Not Scheduled",
        "schedule": shown,
        "created_at": int(item["created_at"]),
        "updated_at": int(item["updated_at"]),
        "created_by": item["created_by"],
        "updated_by": item["updated_by"],
        "no_of_runs": int(item.get("no_of_runs", 0)),
        "last_run": int(last_run) if last_run is not None else ("-" if listing else None),
        "attributes": {"path": f"/notebooks/{item['owner']}/"},
    }


class NotebookService:
    """Notebooks of one deployment.

    Its dependents are the things that hang off a notebook (its schedule, its runs):
    each has `forget_notebooks(owner, items)`, called when notebooks are deleted.
    """

    def __init__(self, table, files: FileStore, settings, clock: Clock = time.time):
        self._table = table
        self._files = files
        self._settings = settings
        self._dependents: list = []
        self._clock = clock

    def add_dependent(self, dependent) -> None:
        """Register something to forget a notebook when it is deleted."""
        self._dependents.append(dependent)

    def live(self, owner: str, notebook_id) -> Optional[dict]:
        """The owner's notebook item, or None when unknown, malformed, or being deleted."""
        canonical = payloads.canonical_id(notebook_id)
        item = self._table.get(owner, canonical) if canonical else None
        return None if item is None or item.get("deleting") else item

    def require(self, owner: str, notebook_id, message: str = NOTEBOOK_ID_INVALID) -> dict:
        """The owner's live notebook item, else a 400 with `message`."""
        item = self.live(owner, notebook_id)
        if item is None:
            raise errors.InvalidInput(message)
        return item

    def require_many(self, owner: str, notebook_ids: list) -> list:
        """The owner's live notebook items of these ids, in order, one per notebook (a UUID
        in two spellings is one), read 100 per call; a 400 if any is not one of them."""
        canonical = [payloads.canonical_id(value) for value in notebook_ids]
        if None in canonical:
            raise errors.InvalidInput(NOTEBOOK_ID_INVALID)
        found = self.live_items(owner, canonical)
        items = [found.get(notebook_id) for notebook_id in dict.fromkeys(canonical)]
        if None in items:
            raise errors.InvalidInput(NOTEBOOK_ID_INVALID)
        return items

    def live_items(self, owner: str, notebook_ids) -> dict:
        """notebook id -> the owner's live item, for those of these (canonical) ids that are."""
        return {
            notebook_id: item
            for notebook_id, item in self._table.get_many(owner, notebook_ids).items()
            if not item.get("deleting")
        }

    def create(self, owner: str, request: CreateRequest) -> dict:
        """Create a notebook with the request's optional name and content."""
        name = request.notebook_name
        notebook = parse_notebook(request.content) if request.content is not None else new_notebook()
        data = serialise(notebook)
        self._check_size(data)
        notebook_id = str(uuid.uuid4())
        key = notebook_key(owner, notebook_id)
        version = self._files.put(key, data)
        try:  # the file goes first; if the metadata cannot follow, the file is removed
            name = self._store_new(owner, notebook_id, name, content_fields(notebook, version))
        except BaseException:
            self._files.delete(key, version)
            raise
        return {
            "username": owner,
            "notebook_name": name,
            "path": f"/notebooks/{owner}/{name}",
            "notebook_id": notebook_id,
        }

    def _store_new(self, owner: str, notebook_id: str, name, content: dict) -> str:
        created = now_ms(self._clock)
        item = {
            "owner": owner,
            "notebook_id": notebook_id,
            "created_at": created,
            "updated_at": created,
            "created_by": owner,
            "updated_by": owner,
            "no_of_runs": 0,
            **content,
        }
        if name is not None:
            try:
                self._table.create({**item, "notebook_name": name})
            except NameTaken:
                raise errors.NameTaken() from None
            return name
        stamp = datetime.fromtimestamp(created / 1000, timezone.utc).strftime("%Y-%m-%d_%H:%M:%S")
        for attempt in range(1, _DEFAULT_NAME_ATTEMPTS + 1):
            # Two creates in one second: the second takes _2, the third _3, and so on.
            candidate = f"{stamp}_{owner}.ipynb" if attempt == 1 else f"{stamp}_{owner}_{attempt}.ipynb"
            try:
                self._table.create({**item, "notebook_name": candidate})
                return candidate
            except NameTaken:
                continue
        raise errors.NameTaken()

    def rename(self, owner: str, notebook_id, request: RenameRequest) -> None:
        """Rename the notebook to the request's `new_name`; its file stays where it is."""
        new_name = request.new_name
        for _ in range(_RENAME_ATTEMPTS):
            item = self.require(owner, notebook_id, NO_NOTEBOOK_FOUND)
            if item["notebook_name"] == new_name:
                return
            try:
                self._table.rename(owner, item["notebook_id"], item["notebook_name"], new_name, self._touched(owner))
                return
            except NameTaken:
                raise errors.NameTaken() from None
            except Conflict:
                continue  # renamed or deleted meanwhile: read it again
        raise errors.Conflict("The notebook was changed by another request; try again")

    def fetch(self, owner: str, notebook_id) -> dict:
        """One notebook object."""
        return notebook_view(self.require(owner, notebook_id), now_ms(self._clock))

    def list(self, owner: str, limit=None, next_token=None) -> tuple:
        """(notebook objects oldest first, next page's token or None)."""
        at = now_ms(self._clock)
        if limit is None and not next_token:
            items, last_key = self._table.all(owner), None
        else:
            items, last_key = self._table.page(
                owner,
                limit,
                payloads.page_key(next_token, lambda key: payloads.is_page_key(key, owner, NOTEBOOK_PREFIX)),
            )
        views = [notebook_view(item, at, listing=True) for item in items if not item.get("deleting")]
        return views, payloads.page_token(last_key)

    def count(self, owner: str) -> dict:
        """How many notebooks the owner has, scheduled and not: one read, of the owner's
        counters, at any number of notebooks."""
        at = now_ms(self._clock)
        counts = self._table.counts(owner)
        total = int(counts.get("notebooks", 0))
        scheduled = sum(1 for until_ms in scheduled_until(counts).values() if until_ms > at)
        return {"Total Notebooks": total, "Not Scheduled": total - scheduled, "Scheduled": scheduled}

    def delete(self, owner: str, request: IdsRequest) -> int:
        """Delete the listed notebooks the owner has: schedules and runs (side by side),
        files, then metadata.

        The notebooks are first flagged (and counted off), so a delete that fails halfway
        is finished by the same request sent again. Each step works on all of them at
        once: items read and written 100 per call, files removed 1,000 per call. Ids that
        are unknown or malformed are passed over; none deleted is the seed's status-200
        error.
        """
        ids = request.ids
        # An id that is not even a UUID is, like an unknown one, not a notebook the caller owns.
        canonical = list(dict.fromkeys(filter(None, map(payloads.canonical_id, ids))))
        flagged = self._table.mark_deleting(owner, list(self._table.get_many(owner, canonical).values()))
        if not flagged:
            raise errors.NothingDeleted()
        # Side by side (schedules' rules, runs' records and outputs): each is bounded in
        # concurrency itself, and a failure in one still lets the other finish, then fails
        # the request, which a retry completes.
        in_parallel(
            lambda dependent: dependent.forget_notebooks(owner, flagged), self._dependents, len(self._dependents)
        )
        self._files.delete_many([notebook_key(owner, item["notebook_id"]) for item in flagged])
        self._table.remove(owner, flagged)
        return len(flagged)

    def content(self, owner: str, notebook_id) -> dict:
        """The notebook file, as nbformat JSON: the version its item names (the one a Run
        now executes), or for a notebook written before versions, the latest."""
        item = self.require(owner, notebook_id)
        data = self._files.get(notebook_key(owner, item["notebook_id"]), item.get(CONTENT_VERSION))
        if data is None:
            raise errors.InvalidInput(NOTEBOOK_ID_INVALID)  # deleted while we read it
        return nbformat.reads(data.decode("utf-8"), as_version=4)

    def parameters(self, owner: str, notebook_id) -> dict:
        """`{"parameters": [...]}`: what the notebook's `parameters` cell declares."""
        item = self.require(owner, notebook_id)
        pinned = self.pin(owner, [item], check={})[item["notebook_id"]]
        return {"parameters": pinned.declared}

    def pin(self, owner: str, items: Sequence[dict], check=None) -> dict:
        """notebook id -> Pinned(version, declared) of the content a Run of these items
        executes now; with `check` (the Run's parameters, {} for none), each notebook's
        declared parameters are read too and, when `check` is not empty, the values
        checked against them (a 400 naming the parameter, for the first that fails).

        What a content write stored on the item costs nothing more. A notebook written
        before versions has no version here (None: its runner pins the one it reads);
        its declarations, when needed, are read from its file, for all such notebooks
        at once on a few threads.
        """
        need_declared = check is not None
        missing = [item for item in items if need_declared and item.get(DECLARED) is None]

        def read(item):
            found = self._files.get_version(notebook_key(owner, item["notebook_id"]), item.get(CONTENT_VERSION))
            if found is None:
                raise errors.InvalidInput(NOTEBOOK_ID_INVALID)  # deleted while we read it
            data, version = found
            return item["notebook_id"], Pinned(version, parameters.declared(json.loads(data)))

        pinned = dict(in_parallel(read, missing, self._settings.aws_concurrency))
        for item in items:
            if item["notebook_id"] not in pinned:
                declared = json.loads(item[DECLARED]) if need_declared else None
                pinned[item["notebook_id"]] = Pinned(item.get(CONTENT_VERSION), declared)
        if check:
            for item in items:
                parameters.check(check, pinned[item["notebook_id"]].declared)
        return pinned

    def replace_content(self, owner: str, notebook_id, request: ContentRequest) -> None:
        """Replace the notebook file with the request's, a valid nbformat v4 notebook."""
        item = self.require(owner, notebook_id)
        notebook = parse_notebook(request.notebook, field="body")
        data = serialise(notebook)
        self._check_size(data)
        key = notebook_key(owner, item["notebook_id"])
        version = self._files.put(key, data)
        # The metadata update is conditional on the notebook being live. If it fails, a
        # Delete flagged the notebook after our read and may already have removed the
        # file: our version would outlive it, so it is undone. Of two concurrent writes,
        # the one whose item update comes last is the notebook's content for Runs and reads.
        changes = {**self._touched(owner), **content_fields(notebook, version)}
        if DECLARED not in changes:
            changes[DECLARED] = None  # too large to keep: read from the file when needed
        if not self._table.update(owner, item["notebook_id"], changes):
            self._files.delete(key, version)
            raise errors.InvalidInput(NOTEBOOK_ID_INVALID)

    def _touched(self, owner: str) -> dict:
        return {"updated_at": now_ms(self._clock), "updated_by": owner}

    def _check_size(self, data: bytes) -> None:
        if len(data) > self._settings.max_body_bytes:
            raise errors.TooLarge(f"Notebook too large: at most {self._settings.max_body_bytes} bytes")
