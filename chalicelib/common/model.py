"""The run vocabulary, defined once: a run's status, what triggered it, the engine that
executes it and the fair queue's pool of runner slots it waits for. Each is a StrEnum, so
a member is the very string stored in DynamoDB, sent in JSON and compared with what a
table returns."""

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run is in its life: queued, running, then one final status."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The statuses a run ends in (in this order: webhook events are listed so), and those
# that still count against the owner's active runs.
FINAL = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)


class Trigger(StrEnum):
    """What started a run: a Run request, a schedule's firing, or a rerun of a run."""

    MANUAL = "manual"
    SCHEDULE = "schedule"
    RERUN = "rerun"


class Engine(StrEnum):
    """Where a run executes: the runner function on Lambda, an ECS Fargate task, or the
    local stack's workers."""

    LAMBDA = "lambda"
    FARGATE = "fargate"
    LOCAL = "local"


class Pool(StrEnum):
    """The fair queue's pools of runner slots (docs/fair-share.md), each with its own
    capacity and per-user limit: the runner function's (Lambda, or the local stack's
    workers) and the deployment's Fargate tasks'."""

    RUNNER = "runner"
    FARGATE = "fargate"


def pool_of(engine) -> Pool:
    """The pool whose slots a run on `engine` waits for."""
    return Pool.FARGATE if engine == Engine.FARGATE else Pool.RUNNER
