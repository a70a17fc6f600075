"""The run vocabulary, defined once: a run's status, what triggered it, and the engine
that executes it. Each is a StrEnum, so a member is the very string stored in DynamoDB,
sent in JSON and compared with what a table returns."""

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
