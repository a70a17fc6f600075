"""Schedules (EventBridge): one rule per scheduled notebook, whose target is the runner.

A notebook's schedule lives in two places: its EventBridge rule `<rule_prefix><id>`
(with one target, the runner) and the `schedule` map on its metadata item, which the
API reads. Every change writes both, in an order chosen so that a failure or a race
leaves at worst a harmless rule without a stored schedule (the runner asks
`expire_if_past` first, which skips such an event and removes the rule), never a
notebook that reads Scheduled but has no rule:
- schedule: rule and target first, then the item; if the item is gone (deleted
  meanwhile), the rule is removed again. An AWS refusal rolls back the whole request.
- unschedule: the item first, then the rule.
- expire: the item (conditionally: only if it still holds the expired schedule), then
  the rule.

`LocalEventClock` stands in for EventBridge's clock in the local stack, where moto
stores rules but never fires them.
"""
import json
import logging
import random
import re
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Optional

from botocore.exceptions import BotoCoreError, ClientError

from . import cron, payloads
from .aws import error_code, is_transient
from .errors import NOTEBOOK_ID_INVALID, NOTEBOOK_IDS_REQUIRED, ApiError, bad_request
from .notebooks import now_ms

logger = logging.getLogger(__name__)

TARGET_ID = "runner"
_MAX_RULE_NAME = 64  # EventBridge's limit
_UUID_LENGTH = 36
_RULE_NAME_CHARS = re.compile(r"[.\-_A-Za-z0-9]*")
_MAX_DESCRIPTION = 512
_FAILURE = "Error occurred during request processing: "
_MINUTE_MS = 60_000
# A request holds a notebook's schedule lock for at most API Gateway's 29 s; a crashed
# holder's lease runs out after that.
LOCK_LEASE_MS = 30_000
_LOCK_WAIT_SECONDS = 10


def _reason(error: Exception) -> str:
    """A short cause for the client: the AWS error code, never the raw message."""
    if isinstance(error, ClientError):
        code = error_code(error) or "UnknownError"
        if code == "LimitExceededException" and error.operation_name == "PutRule":
            return f"EventBridge rule quota reached ({code})"
        return f"AWS refused {error.operation_name} ({code})"
    return f"AWS call failed ({type(error).__name__})"


def _refuse(error: Exception) -> None:
    """An AWS refusal of the request (a quota, a validation) as the seed's 400; a transient
    failure (throttling, a 5xx, a timeout) is left to the route, which answers 503."""
    if isinstance(error, ClientError) and not is_transient(error):
        raise ApiError(400, _FAILURE + _reason(error)) from error


def _target_input(owner: str, notebook_id: str) -> str:
    return json.dumps({"notebook_id": notebook_id, "owner": owner, "trigger": "schedule"})


class Scheduler:
    """Schedules notebooks to run on the runner through EventBridge rules."""

    def __init__(self, events, notebooks, table, settings, runner_arn: Callable[[], str], clock=time.time):
        prefix = settings.rule_prefix
        # A deployment mistake, caught at start-up rather than on the first Schedule.
        if len(prefix) + _UUID_LENGTH > _MAX_RULE_NAME or not _RULE_NAME_CHARS.fullmatch(prefix):
            raise ValueError(
                f"rule prefix {prefix!r} (NOTEBOOKS_RULE_PREFIX) must be at most "
                f"{_MAX_RULE_NAME - _UUID_LENGTH} characters of A-Z, a-z, 0-9, '.', '-', '_'"
            )
        self._events = events
        self._notebooks = notebooks
        self._table = table
        self._settings = settings
        self._runner_arn = runner_arn
        self._clock = clock

    def rule_name(self, notebook_id: str) -> str:
        """The EventBridge rule of a notebook: the rule prefix and its id (<= 64 characters)."""
        return self._settings.rule_prefix + notebook_id

    def schedule(self, owner: str, body: dict) -> None:
        """Schedule (or reschedule) the listed notebooks: all of them, or none.

        Body: `nbk_ids`, `until` ("YYYY-MM-DD HH:MM"), optional `period` (a weekday) and
        `time` ("HH:MM"). Every input is checked before anything changes; if AWS refuses
        a step, everything this request changed is put back and the answer is a 400.
        """
        items = self._owned_items(owner, body)
        now = self._clock()
        try:
            spec = cron.parse_schedule(body, datetime.fromtimestamp(now, timezone.utc), self._settings.timezone)
        except cron.ScheduleError as error:
            raise bad_request(error.message)
        record = {
            "period": spec.period, "time": spec.time, "until": spec.until,
            "until_ms": int(spec.until_utc.timestamp() * 1000), "expression": spec.expression,
        }
        changes = {"schedule": record, "updated_at": int(now * 1000), "updated_by": owner}
        ids = [item["notebook_id"] for item in items]
        with self._locked(owner, ids):
            # Read again under the lock: the roll-back restores what was there just before.
            items = [item for item in map(lambda nid: self._notebooks.live(owner, nid), ids) if item]
            touched = []
            try:
                for item in items:
                    touched.append(item)
                    self._install(owner, item["notebook_id"], record)
                    if not self._table.update(owner, item["notebook_id"], changes):
                        self._remove_rule(item["notebook_id"])  # deleted meanwhile: leave no rule behind
            except Exception as error:
                self._roll_back(owner, touched)
                _refuse(error)
                raise

    def unschedule(self, owner: str, body: dict) -> None:
        """Remove the schedules of the listed notebooks (`nbk_ids`); idempotent.

        Ids are all checked first. If AWS fails midway, the notebooks already done stay
        unscheduled and the same request again finishes the rest.
        """
        ids = [item["notebook_id"] for item in self._owned_items(owner, body)]
        changes = {"updated_at": now_ms(self._clock), "updated_by": owner}
        try:
            with self._locked(owner, ids):
                for notebook_id in ids:
                    item = self._notebooks.live(owner, notebook_id)  # under the lock: what to restore
                    if item is None:
                        continue
                    try:
                        self._table.update(owner, notebook_id, changes, remove=("schedule",))
                        self._remove_rule(notebook_id)
                    except Exception:
                        self._roll_back(owner, [item])  # never a rule without its stored schedule
                        raise
        except (ClientError, BotoCoreError) as error:
            _refuse(error)
            raise

    def forget_notebook(self, owner: str, item: dict) -> None:
        """Remove a deleted notebook's rule and target, if any (NotebookService.delete calls it)."""
        with self._locked(owner, [item["notebook_id"]]):
            self._remove_rule(item["notebook_id"])

    def expire_if_past(self, owner: str, notebook_id: str) -> bool:
        """For the runner, when a scheduled event arrives: True means do not run.

        True when `until` has passed (the rule and target are removed and the stored
        schedule cleared, unless a reschedule replaced it meanwhile) and also when no
        schedule stands behind the event (notebook unscheduled or deleted: the leftover
        rule is removed). False when the schedule is current: run.
        """
        canonical = payloads.canonical_id(notebook_id)
        item = self._table.get(owner, canonical) if canonical else None
        schedule = item.get("schedule") if item and not item.get("deleting") else None
        if schedule is None:
            if canonical:
                self._remove_rule(canonical)
            return True
        # The firing in `until`'s own minute still runs: `until` 06:50 includes the 06:50 run.
        if int(schedule["until_ms"]) + _MINUTE_MS > now_ms(self._clock):
            return False
        # Conditional: a reschedule between our read and this write keeps its schedule and rule.
        expired = {"until_ms": schedule["until_ms"], "expression": schedule["expression"]}
        with self._locked(owner, [canonical]):
            if self._table.remove_if(owner, canonical, "schedule", expired):
                self._remove_rule(canonical)
        return True

    @contextmanager
    def _locked(self, owner: str, notebook_ids: list):
        """Hold the schedule locks of these notebooks (in id order, so two requests never
        wait on each other in a circle): a notebook's rule and stored schedule change
        together, one request at a time. A notebook whose item is gone needs no lock."""
        token, held = uuid.uuid4().hex, []
        try:
            for notebook_id in sorted(set(notebook_ids)):
                if self._acquire(owner, notebook_id, token):
                    held.append(notebook_id)
            yield
        finally:
            for notebook_id in held:
                try:
                    self._table.unlock(owner, notebook_id, token)
                except (ClientError, BotoCoreError) as error:
                    # The work is done; the lock's lease frees it for the next request.
                    logger.warning("schedule unlock of %s failed (%s): its lease will free it",
                                   notebook_id, _reason(error))

    def _acquire(self, owner: str, notebook_id: str, token: str) -> bool:
        deadline = time.monotonic() + _LOCK_WAIT_SECONDS
        while True:
            if self._table.lock(owner, notebook_id, token, now_ms(self._clock), LOCK_LEASE_MS):
                return True
            if self._table.get(owner, notebook_id) is None:
                return False
            if time.monotonic() > deadline:
                raise ApiError(409, _FAILURE + "another request is changing this notebook's schedule; try again")
            time.sleep(random.uniform(0.01, 0.05))

    def _owned_items(self, owner: str, body: dict) -> list:
        """The items of the listed notebooks, without repeats; a 400 if any is not the owner's."""
        ids = payloads.id_list(body, "nbk_ids", NOTEBOOK_IDS_REQUIRED, self._settings.max_ids)
        items = {}
        for value in ids:
            item = self._notebooks.live(owner, value)
            if item is None:
                raise bad_request(NOTEBOOK_ID_INVALID)
            items.setdefault(item["notebook_id"], item)  # one UUID in two spellings is one notebook
        return list(items.values())

    def _install(self, owner: str, notebook_id: str, record: dict) -> None:
        """Create or overwrite the notebook's rule and its runner target."""
        name = self.rule_name(notebook_id)
        description = f"Runs notebook {notebook_id} of {owner} until {record['until']}"
        self._events.put_rule(Name=name, ScheduleExpression=record["expression"], State="ENABLED",
                              Description=description[:_MAX_DESCRIPTION])
        response = self._events.put_targets(Rule=name, Targets=[
            {"Id": TARGET_ID, "Arn": self._runner_arn(), "Input": _target_input(owner, notebook_id)}
        ])
        # PutTargets reports some refusals in its answer instead of raising.
        if response.get("FailedEntryCount"):
            entry = response["FailedEntries"][0]
            raise ClientError({"Error": {"Code": entry.get("ErrorCode", "FailedEntry"),
                                         "Message": entry.get("ErrorMessage", "")}}, "PutTargets")

    def _remove_rule(self, notebook_id: str) -> None:
        """Remove the notebook's target, then its rule (a rule with targets cannot be deleted)."""
        name = self.rule_name(notebook_id)
        try:
            self._events.remove_targets(Rule=name, Ids=[TARGET_ID])
            self._events.delete_rule(Name=name)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise

    def _roll_back(self, owner: str, items: list) -> None:
        """Put each notebook's rule and stored schedule back as they were in `items`.

        Best effort: a failure here is logged and the rest are still restored.
        """
        for item in items:
            notebook_id = item["notebook_id"]
            previous = item.get("schedule")
            undo = {"updated_at": item["updated_at"], "updated_by": item["updated_by"]}
            try:
                if previous is None:
                    self._table.update(owner, notebook_id, undo, remove=("schedule",))
                    self._remove_rule(notebook_id)
                else:
                    self._install(owner, notebook_id, previous)
                    if not self._table.update(owner, notebook_id, {**undo, "schedule": previous}):
                        self._remove_rule(notebook_id)
            except Exception:
                logger.exception("schedule roll-back failed for notebook %s of %s", notebook_id, owner)


_TICK_SECONDS = 1.0
_REMEMBER_SECONDS = 3600  # fired minutes older than this are forgotten


class LocalEventClock:
    """The local stand-in for EventBridge's clock (make dev).

    Moto stores rules but never fires them: this reads the enabled `cron(...)` rules
    whose names start with `prefix` and their targets, and at each due minute calls
    `fire` with each target's Input (parsed JSON).
    """

    def __init__(self, events, prefix: str, fire: Callable[[dict], None], clock=time.time):
        self._events = events
        self._prefix = prefix
        self._fire = fire
        self._clock = clock
        self._done = set()  # (rule name, minute) already fired, or failed: never twice
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def tick(self, now: Optional[float] = None) -> list:
        """Evaluate the minute containing `now` (default: the clock) once.

        Fires the targets of every rule due in that minute that has not fired in it yet;
        returns [(rule name, input)] of what fired. One rule's error (bad expression,
        bad Input, `fire` raising) is logged and does not stop the others.
        """
        minute = int((self._clock() if now is None else now) // 60) * 60
        moment = datetime.fromtimestamp(minute, timezone.utc)
        self._done = {key for key in self._done if key[1] > minute - _REMEMBER_SECONDS}
        fired = []
        for rule in self._rules():
            key = (rule["Name"], minute)
            if key in self._done:
                continue
            try:
                due = cron.cron_matches(rule.get("ScheduleExpression", ""), moment)
            except ValueError as error:
                self._done.add(key)  # logged once a minute, not once a tick
                logger.error("local event clock: rule %s: %s", rule["Name"], error)
                continue
            if due:
                self._done.add(key)  # before firing: a failing target is not retried every second
                fired += self._fire_targets(rule["Name"])
        return fired

    def start(self) -> None:
        """Start a daemon thread that ticks about every second (no-op if running)."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="local-event-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for its current tick to end."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # e.g. embedded AWS unreachable: the clock keeps going
                logger.exception("local event clock: tick failed")
            self._stop.wait(_TICK_SECONDS)

    def _rules(self) -> list:
        pages = self._events.get_paginator("list_rules").paginate(NamePrefix=self._prefix)
        return [rule for page in pages for rule in page["Rules"] if rule.get("State") == "ENABLED"]

    def _fire_targets(self, name: str) -> list:
        fired = []
        try:
            pages = self._events.get_paginator("list_targets_by_rule").paginate(Rule=name)
            targets = [target for page in pages for target in page["Targets"]]
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":  # deleted since listed: nothing due
                logger.error("local event clock: rule %s: cannot list targets (%s)", name, error_code(error))
            return fired
        for target in targets:
            try:
                payload = json.loads(target["Input"])
                self._fire(payload)
                fired.append((name, payload))
            except Exception:
                logger.exception("local event clock: rule %s, target %s failed", name, target.get("Id"))
        return fired
