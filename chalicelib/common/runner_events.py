"""The runner function's events, all four shapes in one place: who builds them (the
builders below) and how the runner reads them (`parse`).

- RunEvent `{"run_id"}`: a run the API recorded (an asynchronous Lambda invocation, or a
  Fargate task's command);
- ScheduleFiring `{"notebook_id", "owner", "trigger": "schedule"}`: the Input of a
  schedule's EventBridge rule target (schedules/rules.py);
- WebhookDelivery `{"deliver_webhook": run_id}`: the end of a run that ended in the API,
  to deliver (runs/webhooks.py);
- RemoveRules `{"remove_rules": {"owner", "notebook_ids"}}`: rules a Delete handed over
  (schedules/scheduler.py).

An event of any other shape is refused with UnknownEvent, never guessed at: a mistake in
a builder, a rule's Input edited by hand or a stray invocation fails loudly in the
runner's log instead of executing something else.
"""

from typing import Literal, TypedDict, Union, final

from chalicelib.common.model import Trigger


@final  # closed: `in` tells the shapes apart (for mypy too)
class RunEvent(TypedDict):
    run_id: str


@final  # closed: `in` tells the shapes apart (for mypy too)
class ScheduleFiring(TypedDict):
    notebook_id: str
    owner: str
    trigger: Literal["schedule"]


@final  # closed: `in` tells the shapes apart (for mypy too)
class WebhookDelivery(TypedDict):
    deliver_webhook: str


class HandedOverRules(TypedDict):
    owner: str
    notebook_ids: list


@final  # closed: `in` tells the shapes apart (for mypy too)
class RemoveRules(TypedDict):
    remove_rules: HandedOverRules


RunnerEvent = Union[RunEvent, ScheduleFiring, WebhookDelivery, RemoveRules]


class UnknownEvent(ValueError):
    """An event of no shape the runner function takes."""


def run_event(run_id: str) -> RunEvent:
    """The event that executes a recorded run."""
    return {"run_id": run_id}


def schedule_firing(owner: str, notebook_id: str) -> ScheduleFiring:
    """The event a schedule's rule sends at each firing."""
    return {"notebook_id": notebook_id, "owner": owner, "trigger": Trigger.SCHEDULE.value}


def webhook_delivery(run_id: str) -> WebhookDelivery:
    """The event that delivers the end of a run to its notebook's webhook."""
    return {"deliver_webhook": run_id}


def remove_rules(owner: str, notebook_ids: list) -> RemoveRules:
    """The event that removes rules of the owner's deleted notebooks."""
    return {"remove_rules": {"owner": owner, "notebook_ids": list(notebook_ids)}}


def _strings(value, *names) -> bool:
    return isinstance(value, dict) and all(isinstance(value.get(name), str) for name in names)


def parse(event) -> RunnerEvent:
    """`event` as one of the four shapes (its keys exactly those of one, each value of its
    type); UnknownEvent, naming what was received, for anything else."""
    keys = set(event) if isinstance(event, dict) else None
    if keys == {"run_id"} and _strings(event, "run_id"):
        return event
    if (
        keys == {"notebook_id", "owner", "trigger"}
        and _strings(event, "notebook_id", "owner")
        and event["trigger"] == Trigger.SCHEDULE
    ):
        return event
    if keys == {"deliver_webhook"} and _strings(event, "deliver_webhook"):
        return event
    if keys == {"remove_rules"}:
        handed = event["remove_rules"]
        if (
            isinstance(handed, dict)
            and set(handed) == {"owner", "notebook_ids"}
            and _strings(handed, "owner")
            and isinstance(handed["notebook_ids"], list)
            and all(isinstance(notebook_id, str) for notebook_id in handed["notebook_ids"])
        ):
            return event
    shown = sorted(map(str, keys)) if keys is not None else type(event).__name__
    raise UnknownEvent(
        f"the runner function takes a run, a schedule firing, a webhook delivery or a rule removal, not {shown}"
    )
