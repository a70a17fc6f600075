"""Schedules: one EventBridge rule per scheduled notebook, whose target is the runner.

A notebook's schedule lives in two places: its EventBridge rule `<rule_prefix><id>`
(with one target, the runner; schedules/rules.py makes the EventBridge calls) and the
`schedule` map on its metadata item, which the API reads. Every change writes both, in
an order chosen so that a failure or a race leaves at worst a harmless rule without a
stored schedule (the runner asks `due_occurrence` first, which skips such an event and
removes the rule), never a notebook that reads Scheduled but has no rule. Each change
holds its notebooks' schedule locks (schedules/locks.py), so a notebook's rule and stored
schedule change one request at a time:
- schedule: rule and target first, then the item; if the item is gone (deleted
  meanwhile), the rule is removed again. An AWS refusal rolls back the whole request.
  Each stored schedule is counted on its owner's counters in the same transaction
  (storage/tables.py), which also enforces the scheduled-notebooks quota.
- unschedule: the item first, then the rule.
- delete (NotebookService.delete flags the notebooks first): the rules of up to
  `rules_removed_in_request` notebooks are removed in the request, under their locks;
  the rest are handed to the runner function in asynchronous invocations,
  `{"remove_rules": {"owner", "notebook_ids"}}`, so that a Delete of 1,000 scheduled
  notebooks is not 2,000 EventBridge calls inside API Gateway's 29 s. The runner needs no
  lock: a flagged notebook is never live again, a concurrent schedule change that stores
  after the flag removes its own rule (above), and so does a roll-back that restores a
  rule.
- a firing: with no schedule stored, or a schedule change under way, it reads again
  under the notebook's lock before it runs anything or removes the rule.
- expire: the item (conditionally: only if it still holds the expired schedule), then
  the rule.

Wall-clock time in a zone across daylight saving (schedules/cron.py has the design): the rule's
UTC cron covers every UTC time an occurrence can fall on, and `due_occurrence` tells the
runner which firing is an occurrence; the run id is made from the occurrence, so each
occurrence runs once however many times, and however late, it is delivered.

`LocalEventClock` stands in for EventBridge's clock in the local stack, where moto
stores rules but never fires them.
"""

import json
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Callable, NamedTuple, Optional

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.api import payloads
from chalicelib.api.requests import IdsRequest, ScheduleRequest
from chalicelib.common import errors, runner_events
from chalicelib.common.aws import error_code, failure_reason, is_transient
from chalicelib.common.batches import chunks, in_parallel
from chalicelib.common.clock import Clock, now_ms
from chalicelib.common.errors import PROCESSING_FAILED
from chalicelib.schedules import cron
from chalicelib.schedules.locks import FIRING_LOCK_WAIT_SECONDS, ScheduleLocks
from chalicelib.schedules.rules import ScheduleRules
from chalicelib.storage.tables import DEPLOYMENT, QuotaExceeded

logger = logging.getLogger(__name__)

# Ids per such event: about 40 KB, far inside Lambda's 256 KB for an asynchronous event.
_RULES_PER_EVENT = 1000


def _reason(error: Exception) -> str:
    """A short cause for the client: the AWS error code, never the raw message."""
    if (
        isinstance(error, ClientError)
        and error_code(error) == "LimitExceededException"
        and error.operation_name == "PutRule"
    ):
        return "EventBridge rule quota reached (LimitExceededException)"
    return failure_reason(error)


def _refuse(error: Exception) -> None:
    """An AWS refusal of the request (a quota, a validation) as the seed's 400; a transient
    failure (throttling, a 5xx, a timeout) is left to the route, which answers 503."""
    if isinstance(error, ClientError) and not is_transient(error):
        raise errors.InvalidInput(PROCESSING_FAILED + _reason(error)) from error


class Firing(NamedTuple):
    """A due occurrence of a schedule: when (epoch ms), and the parameters its run gets."""

    at_ms: int
    parameters: dict


def _live_schedule(item) -> Optional[dict]:
    """The stored schedule of a notebook's item, if the notebook is live."""
    return item.get("schedule") if item and not item.get("deleting") else None


class Scheduler:
    """Schedules notebooks to run on the runner through EventBridge rules (`rules`)."""

    def __init__(
        self,
        rules: ScheduleRules,
        notebooks,
        table,
        locks: ScheduleLocks,
        settings,
        dispatcher,
        clock: Clock = time.time,
    ):
        self._rules = rules
        self._notebooks = notebooks
        self._table = table
        self._locks = locks  # held while a notebook's rule and stored schedule change
        self._settings = settings
        self._dispatcher = dispatcher  # its `invoke` hands rule removals to the runner function
        self._clock = clock

    def schedule(self, owner: str, request: ScheduleRequest) -> None:
        """Schedule (or reschedule) the listed notebooks: all of them, or none.

        The request: `ids`, `until` ("YYYY-MM-DD HH:MM"), optional `period` (a weekday),
        `time` ("HH:MM"), `timezone` and `parameters` (checked against each notebook's
        declared parameters as a Run's are, and given to every run the schedule fires).
        Every input is checked before anything changes; if AWS refuses a step, everything
        this request changed is put back and the answer is a 400. Rules are written
        concurrently, stored schedules 98 per transaction.
        """
        items = self._notebooks.require_many(owner, request.ids)
        now = self._clock()
        try:
            spec = cron.parse_schedule(
                request.schedule_fields(), datetime.fromtimestamp(now, timezone.utc), self._settings.timezone
            )
        except cron.ScheduleError as error:
            raise errors.InvalidInput(error.message, field=error.field) from None
        parameters = request.parameters or {}
        if parameters:
            self._notebooks.pin(owner, items, check=parameters)
        record = {
            "period": spec.period,
            "time": spec.time,
            "until": spec.until,
            "timezone": spec.timezone,
            "until_ms": int(spec.until_utc.timestamp() * 1000),
            "expression": spec.expression,
            "parameters": json.dumps(parameters),
        }
        changes = {"updated_at": int(now * 1000), "updated_by": owner}
        ids = [item["notebook_id"] for item in items]
        limit = self._settings.max_scheduled
        with self._locks.held(owner, ids):
            # Read again under the lock: the roll-back restores what was there just before.
            items = list(self._notebooks.live_items(owner, ids).values())
            self._check_quota(owner, sum(1 for item in items if not item.get("schedule")))
            committed: list[str] = []
            try:
                self._in_parallel(lambda item: self._rules.install(owner, item["notebook_id"], record), items)
                gone = self._table.set_schedules(
                    owner,
                    [(item, record, changes) for item in items],
                    limit,
                    committed,
                    self._settings.max_scheduled_total,
                )
                self._in_parallel(self._rules.remove, gone)  # deleted meanwhile: leave no rule behind
            except Exception as error:
                self._roll_back(owner, items, record, committed)
                if isinstance(error, QuotaExceeded):
                    raise self._quota_error(str(error)) from error
                _refuse(error)
                raise

    def _check_quota(self, owner: str, adding: int) -> None:
        """The owner's quota, then the deployment's rule budget, as read now (before any
        AWS call); the transaction storing the schedules enforces both again, atomically."""
        if int(self._table.counts(owner).get("scheduled", 0)) + adding > self._settings.max_scheduled:
            raise self._quota_error("scheduled")
        total = int(self._table.counts(DEPLOYMENT).get("scheduled", 0)) if adding else 0
        if total + adding > self._settings.max_scheduled_total:
            raise self._quota_error("scheduled_total")

    def _quota_error(self, counter: str) -> errors.InvalidInput:
        if counter == "scheduled_total":
            return errors.InvalidInput(
                f"The deployment's limit of {self._settings.max_scheduled_total} scheduled notebooks is reached "
                "(NOTEBOOKS_MAX_SCHEDULED_TOTAL)",
            )
        return errors.InvalidInput(
            PROCESSING_FAILED + "scheduled notebooks quota reached: at most "
            f"{self._settings.max_scheduled} per user (NOTEBOOKS_MAX_SCHEDULED)",
        )

    def unschedule(self, owner: str, request: IdsRequest) -> None:
        """Remove the schedules of the listed notebooks (the request's `ids`); idempotent.

        Ids are all checked first. If AWS fails midway, what was done is put back (never a
        rule without its stored schedule), and the same request again does it all.
        """
        ids = [item["notebook_id"] for item in self._notebooks.require_many(owner, request.ids)]
        changes = {"updated_at": now_ms(self._clock), "updated_by": owner}
        try:
            with self._locks.held(owner, ids):
                items = list(self._notebooks.live_items(owner, ids).values())  # under the lock: what to restore
                committed: list[str] = []
                try:
                    self._table.set_schedules(owner, [(item, None, changes) for item in items], committed=committed)
                    self._in_parallel(self._rules.remove, ids)
                except Exception:
                    self._roll_back(owner, items, None, committed)  # never a rule without its stored schedule
                    raise
        except (ClientError, BotoCoreError) as error:
            _refuse(error)
            raise

    def forget_notebooks(self, owner: str, items: list) -> None:
        """Remove deleted (flagged) notebooks' rules and targets (NotebookService.delete
        calls it): up to `rules_removed_in_request` of them here, the rest handed to the
        runner function (`remove_rules`, for ScheduleRules.remove_handed_over), in
        invocations made first, so a failure leaves the request to fail and a retry to hand
        them over again.

        Only a notebook with a stored schedule, or a schedule change under way (its lock),
        can have a rule; a rule left by a request that died is removed at its firing.
        """
        ids = [item["notebook_id"] for item in items if item.get("schedule") or item.get("schedule_lock")]
        here, handed_over = (
            ids[: self._settings.rules_removed_in_request],
            ids[self._settings.rules_removed_in_request :],
        )
        for batch in chunks(handed_over, _RULES_PER_EVENT):
            self._dispatcher.invoke(runner_events.remove_rules(owner, batch))
        if here:
            with self._locks.held(owner, here):
                self._in_parallel(self._rules.remove, here)

    def due_occurrence(self, owner: str, notebook_id: str) -> Optional[Firing]:
        """For the runner, when a notebook's rule fires: the occurrence this firing runs
        (when, and the schedule's parameters), or None: run nothing.

        None when the firing is at no due occurrence (the rule's cron also matches UTC
        times that are none: see schedules/cron.py), and also when no schedule stands behind the
        event (notebook unscheduled or deleted: the leftover rule is removed; read under
        the notebook's lock, as is a firing during a schedule change) or when
        `until` has passed by more than cron.LATE_SECONDS (the rule and target are removed
        and the stored schedule cleared, unless a reschedule replaced it meanwhile).
        An occurrence in `until`'s own minute still runs: `until` 06:50 includes 06:50.
        """
        canonical = payloads.canonical_id(notebook_id)
        if canonical is None:
            return None
        item = self._table.get(owner, canonical)
        schedule = _live_schedule(item)
        if schedule is None or item.get("schedule_lock"):
            # Unbacked, or a schedule change under way: a Schedule request puts its rule
            # before it stores the schedule, both under the notebook's lock, so this firing
            # may come from a rule whose schedule is not stored yet. Read again under the
            # lock; with still no schedule, the rule is a leftover.
            with self._locks.held(owner, [canonical], wait_seconds=FIRING_LOCK_WAIT_SECONDS):
                item = self._table.get(owner, canonical)
                schedule = _live_schedule(item)
                if schedule is None:
                    self._rules.remove(canonical)
                    return None
        now, until_ms = now_ms(self._clock), int(schedule["until_ms"])
        occurrence = cron.due_occurrence(schedule, now)
        if occurrence is not None and occurrence <= until_ms:
            return Firing(occurrence, json.loads(schedule.get("parameters", "{}")))
        if now <= until_ms + cron.LATE_SECONDS * 1000:
            return None  # a late firing of the last occurrence may still come
        # Conditional: a reschedule between our read and this write keeps its schedule and rule.
        expired = {"until_ms": schedule["until_ms"], "expression": schedule["expression"]}
        with self._locks.held(owner, [canonical]):
            if self._table.expire_schedule(owner, canonical, expired):
                self._rules.remove(canonical)
        return None

    def _in_parallel(self, work, items) -> list:
        return in_parallel(work, list(items), self._settings.aws_concurrency)

    def _roll_back(self, owner: str, items: list, record: Optional[dict], committed: list) -> None:
        """Put each notebook's rule and stored schedule back as they were in `items`;
        `committed`: the notebooks whose stored schedule this request wrote.

        Best effort: a failure here is logged and the rest are still restored.
        """
        written = set(committed)
        entries = [
            (
                {**item, "schedule": record},
                item.get("schedule"),
                {"updated_at": item["updated_at"], "updated_by": item["updated_by"]},
            )
            for item in items
            if item["notebook_id"] in written
        ]
        try:
            self._table.set_schedules(owner, entries)
        except Exception:
            logger.exception("schedule roll-back failed for notebooks of %s", owner)

        def restore_rule(item):
            try:
                if item.get("schedule") is not None:
                    self._rules.install(owner, item["notebook_id"], item["schedule"])
                # A Delete that flagged the notebook meanwhile may have removed its rule
                # already (handed over, without this lock): none is left behind.
                restored = item.get("schedule") is not None
                if not restored or _live_schedule(self._table.get(owner, item["notebook_id"])) is None:
                    self._rules.remove(item["notebook_id"])
            except Exception:
                logger.exception("schedule roll-back failed for notebook %s of %s", item["notebook_id"], owner)

        self._in_parallel(restore_rule, items)


_TICK_SECONDS = 1.0
_REMEMBER_SECONDS = 3600  # fired minutes older than this are forgotten


class LocalEventClock:
    """The local stand-in for EventBridge's clock (make dev).

    Moto stores rules but never fires them: this reads the enabled `cron(...)` rules
    whose names start with `prefix` and their targets, and at each due minute calls
    `fire` with each target's Input (parsed JSON).
    """

    def __init__(self, events, prefix: str, fire: Callable[[dict], None], clock: Clock = time.time):
        self._events = events
        self._prefix = prefix
        self._fire = fire
        self._clock = clock
        self._done: set[tuple] = set()  # (rule name, minute) already fired, or failed: never twice
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
        fired: list[tuple] = []
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
