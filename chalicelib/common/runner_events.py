"""The runner function's events, all its shapes in one place: who builds them (the
builders below) and how the runner reads them (`parse`).

- ScheduleFiring `{"notebook_id", "owner", "trigger": "schedule"}`: the Input of a
  schedule's EventBridge rule target (schedules/rules.py);
- WebhookDelivery `{"deliver_webhook": run_id}`: the end of a run that ended in the API,
  to deliver (runs/webhooks.py);
- RemoveRules `{"remove_rules": {"owner", "notebook_ids"}}`: rules a Delete handed over
  (schedules/scheduler.py);
- Drain `{"drain": {}}`, with `"run_id"` naming a run just queued and `"pool": "fargate"`
  for the Fargate pool (else the runner function's): claim the pool's next run in the fair
  queue (runs/queue.py) and execute it, or start its Fargate task; sent by the API, by
  runners and by Fargate tasks;
- Reap `{"reap": {}}`: the Input of the reaper's EventBridge rule (runs/reaper.py);
- FailedEvents `{"Records": [...]}`: SQS records of the runner's failed invocations (the
  failed events' queue, consumed by the runner; runs/reaper.py reads each record's body).

An event of any other shape is refused with UnknownEvent, never guessed at: a mistake in
a builder, a rule's Input edited by hand or a stray invocation fails loudly in the
runner's log instead of executing something else.
"""

from typing import Literal, Optional, TypedDict, Union, final

from chalicelib.common.model import Pool, Trigger


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


class DrainRun(TypedDict, total=False):
    run_id: str
    pool: Literal["fargate"]


@final  # closed: `in` tells the shapes apart (for mypy too)
class Drain(TypedDict):
    drain: DrainRun


@final  # closed: `in` tells the shapes apart (for mypy too)
class Reap(TypedDict):
    reap: dict


@final  # closed: `in` tells the shapes apart (for mypy too)
class FailedEvents(TypedDict):
    Records: list


RunnerEvent = Union[ScheduleFiring, WebhookDelivery, RemoveRules, Drain, Reap, FailedEvents]


class UnknownEvent(ValueError):
    """An event of no shape the runner function takes."""


def schedule_firing(owner: str, notebook_id: str) -> ScheduleFiring:
    """The event a schedule's rule sends at each firing."""
    return {"notebook_id": notebook_id, "owner": owner, "trigger": Trigger.SCHEDULE.value}


def webhook_delivery(run_id: str) -> WebhookDelivery:
    """The event that delivers the end of a run to its notebook's webhook."""
    return {"deliver_webhook": run_id}


def remove_rules(owner: str, notebook_ids: list) -> RemoveRules:
    """The event that removes rules of the owner's deleted notebooks."""
    return {"remove_rules": {"owner": owner, "notebook_ids": list(notebook_ids)}}


def drain(run_id: Optional[str] = None, pool: Pool = Pool.RUNNER) -> Drain:
    """The event that claims the pool's next run in the fair queue (and executes it, or
    starts its Fargate task); `run_id` names a run just queued, which the queue's index
    may not show yet."""
    claim: DrainRun = {} if run_id is None else {"run_id": run_id}
    if pool == Pool.FARGATE:
        claim["pool"] = "fargate"  # Pool.FARGATE, as the TypedDict spells it
    return {"drain": claim}


def drain_pool(event: Drain) -> Pool:
    """The pool a drain event claims from."""
    return Pool.FARGATE if event["drain"].get("pool") == Pool.FARGATE else Pool.RUNNER


def reap() -> Reap:
    """The event that ends the runs past their deadline (the reaper rule's Input)."""
    return {"reap": {}}


def _strings(value, *names) -> bool:
    return isinstance(value, dict) and all(isinstance(value.get(name), str) for name in names)


def parse(event) -> RunnerEvent:
    """`event` as one of the shapes above (its keys exactly those of one, each value of its
    type); UnknownEvent, naming what was received, for anything else."""
    keys = set(event) if isinstance(event, dict) else None
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
    if keys == {"drain"}:
        claim = event["drain"]
        if (
            isinstance(claim, dict)
            and set(claim) <= {"run_id", "pool"}
            and ("run_id" not in claim or _strings(claim, "run_id"))
            and claim.get("pool", Pool.FARGATE) == Pool.FARGATE
        ):
            return event
    if keys == {"reap"} and event["reap"] == {}:
        return event
    records = event.get("Records") if keys == {"Records"} else None
    if isinstance(records, list) and all(isinstance(record, dict) for record in records):
        return event
    shown = sorted(map(str, keys)) if keys is not None else type(event).__name__
    raise UnknownEvent(
        "the runner function takes a schedule firing, a webhook delivery, a rule removal, "
        f"a drain, a reap or failed events, not {shown}"
    )
