"""The EventBridge rules of schedules: one rule `<rule_prefix><id>` per scheduled notebook,
with one target, the runner, whose Input names the notebook and its owner.

ScheduleRules makes the EventBridge calls; the Scheduler (schedules/scheduler.py) decides when, and
in what order with the stored schedule, under the notebooks' schedule locks. The runner
also removes here the rules a Delete handed over (`remove_handed_over`), without a lock.
"""

import json
import re
from typing import Callable, Optional

from botocore.exceptions import ClientError

from chalicelib.common import runner_events
from chalicelib.common.aws import error_code
from chalicelib.common.batches import in_parallel

TARGET_ID = "runner"
_MAX_RULE_NAME = 64  # EventBridge's limit
_UUID_LENGTH = 36
_RULE_NAME_CHARS = re.compile(r"[.\-_A-Za-z0-9]*")
_MAX_DESCRIPTION = 512


def _target_input(owner: str, notebook_id: str) -> str:
    return json.dumps(runner_events.schedule_firing(owner, notebook_id))


class ScheduleRules:
    """The notebooks' EventBridge rules and their runner targets."""

    def __init__(self, events, table, settings, runner_arn: Callable[[], str]):
        prefix = settings.rule_prefix
        # A deployment mistake, caught at start-up rather than on the first Schedule.
        if len(prefix) + _UUID_LENGTH > _MAX_RULE_NAME or not _RULE_NAME_CHARS.fullmatch(prefix):
            raise ValueError(
                f"rule prefix {prefix!r} (NOTEBOOKS_RULE_PREFIX) must be at most "
                f"{_MAX_RULE_NAME - _UUID_LENGTH} characters of A-Z, a-z, 0-9, '.', '-', '_'"
            )
        self._events = events
        self._table = table  # read by remove_handed_over: which notebooks are flagged or gone
        self._settings = settings
        self._runner_arn = runner_arn

    def rule_name(self, notebook_id: str) -> str:
        """The EventBridge rule of a notebook: the rule prefix and its id (<= 64 characters)."""
        return self._settings.rule_prefix + notebook_id

    def install(self, owner: str, notebook_id: str, record: dict) -> None:
        """Create or overwrite the notebook's rule (`record`: its stored schedule, whose
        `expression` and `until` it takes) and its runner target."""
        name = self.rule_name(notebook_id)
        description = f"Runs notebook {notebook_id} of {owner} until {record['until']}"
        self._events.put_rule(
            Name=name,
            ScheduleExpression=record["expression"],
            State="ENABLED",
            Description=description[:_MAX_DESCRIPTION],
        )
        response = self._events.put_targets(
            Rule=name,
            Targets=[{"Id": TARGET_ID, "Arn": self._runner_arn(), "Input": _target_input(owner, notebook_id)}],
        )
        # PutTargets reports some refusals in its answer instead of raising.
        if response.get("FailedEntryCount"):
            entry = response["FailedEntries"][0]
            raise ClientError(
                {"Error": {"Code": entry.get("ErrorCode", "FailedEntry"), "Message": entry.get("ErrorMessage", "")}},
                "PutTargets",
            )

    def remove(self, notebook_id: str) -> None:
        """Remove the notebook's target, then its rule (a rule with targets cannot be
        deleted); a rule already gone is no error."""
        name = self.rule_name(notebook_id)
        try:
            self._events.remove_targets(Rule=name, Ids=[TARGET_ID])
            self._events.delete_rule(Name=name)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise

    def remove_handed_over(self, handed_over: dict) -> int:
        """For the runner: remove the rules a Delete handed over (Scheduler.forget_notebooks),
        `{"owner", "notebook_ids"}`, of that owner's notebooks that are flagged or gone,
        never a live one's; how many. A notebook found flagged is the owner's; for one
        gone, the rule's own target must name the owner (a rule's name holds no owner, so
        an event naming the wrong one must not reach another's live notebook). Removing a
        rule already gone is no error, so a retried event does no harm."""
        owner, ids = handed_over["owner"], handed_over["notebook_ids"]
        items = self._table.get_many(owner, ids)

        def remove_if_left_over(notebook_id) -> bool:
            item = items.get(notebook_id)
            if item is not None and not item.get("deleting"):
                return False
            if item is None and self._rule_owner(notebook_id) not in (owner, None):
                return False
            self.remove(notebook_id)
            return True

        return sum(in_parallel(remove_if_left_over, list(ids), self._settings.aws_concurrency))

    def _rule_owner(self, notebook_id: str) -> Optional[str]:
        """The owner its rule's target names; None when it has no rule or no target."""
        try:
            targets = self._events.list_targets_by_rule(Rule=self.rule_name(notebook_id))["Targets"]
        except ClientError as error:
            if error_code(error) == "ResourceNotFoundException":
                return None
            raise
        return next((json.loads(target.get("Input") or "{}").get("owner") for target in targets), None)
