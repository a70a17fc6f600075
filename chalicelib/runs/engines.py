"""Dispatch: how a recorded run reaches a runner, and which engine runs it.

Every engine runs the same executor (runner/executor.py) on the same code, and every run
waits in the fair queue (runs/queue.py) for a slot of its engine's pool; dispatching a
run is an asynchronous (Event) invocation of the runner function with a `drain` event for
that pool, which claims the pool's next run, maybe another user's:
- `lambda`: for a run whose timeout fits in Lambda's 15 minutes; the runner function
  executes the run it claims;
- `fargate`: for a longer run, up to the deployment's maximum; the runner function starts
  an ECS Fargate task of the runner image for the run it claims (FargateTasks, from
  runs/fargate_pool.py), and the task executes it (chalicelib.runner.fargate_task);
- `local`: the local stack's worker processes (devstack/local_lambda.py), for any
  timeout, as `lambda`.

What the services rely on is the `Dispatcher` protocol, which LambdaDispatcher (AWS's
Lambda, or the local stack's) and EngineRouter (Lambda and Fargate) satisfy.
"""

import json
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from chalicelib.common import runner_events
from chalicelib.common.aws import error_code
from chalicelib.common.batches import chunks
from chalicelib.common.model import Engine, Pool, pool_of


@runtime_checkable
class Dispatcher(Protocol):
    """What the services dispatch through: `engine` is the runner function's (which
    schedules fire directly), `engine_for` picks a run's engine by its timeout, `dispatch`
    drains the run's pool, `start_task` starts the task of a Fargate run the queue
    claimed, `stop` is a cancel's backstop, and `invoke` sends the runner function any
    event (common/runner_events.py)."""

    engine: Engine

    def engine_for(self, timeout: float) -> Engine:
        """The engine a run with this timeout (seconds) runs on."""

    def dispatch(self, run: dict) -> dict:
        """Drain the pool of the recorded run's engine, without waiting; the fields to
        record on the run (none, today)."""

    def start_task(self, run: dict) -> dict:
        """Start the ECS task of a Fargate run the fair queue claimed; the fields to
        record on it (the task's ARN)."""

    def stop(self, run: dict) -> None:
        """A cancel's backstop: stop the run's task, if it has one."""

    def stopped_tasks(self, runs: list) -> dict:
        """run id -> why ECS stopped its task, for those of `runs` whose task has stopped."""

    def invoke(self, event: runner_events.RunnerEvent) -> None:
        """Invoke the runner function with `event`, without waiting."""


class CapacityUnavailable(RuntimeError):
    """ECS could not start a task now (no Fargate capacity, throttled, unavailable): the
    run may wait in its queue and be tried again later."""


# What says ECS could not start a task *now*: capacity (a RunTask failure's reason, or the
# error's message) and AWS's own transient errors.
_CAPACITY_REASONS = ("RESOURCE:", "Capacity is unavailable", "reached the limit")
_TRANSIENT_CODES = {"ThrottlingException", "ServerException", "ServiceUnavailableException", "LimitExceededException"}


def _says_no_capacity(text: str) -> bool:
    """Whether ECS's reason or message says it has no capacity now."""
    return any(reason in text for reason in _CAPACITY_REASONS)


# Tasks one DescribeTasks call takes.
DESCRIBE_TASKS_MAX = 100


class UnknownEngine(ValueError):
    """A run names an engine this deployment does not run (a record from another
    deployment, or a corrupted one): never silently sent elsewhere."""


class LambdaDispatcher:
    """Hands runs to the runner function with asynchronous (`Event`) invocations: AWS's,
    or the local Lambda's (engine `local`)."""

    def __init__(self, lambda_client, function_name: str, engine: Engine = Engine.LAMBDA):
        self._lambda = lambda_client
        self._function = function_name
        self.engine = engine

    def engine_for(self, timeout: float) -> Engine:
        """Every run's engine: this dispatcher's."""
        return self.engine

    def dispatch(self, run: dict) -> dict:
        """Invoke the runner to drain the fair queue, where the run waits, without waiting
        for it."""
        self.invoke(runner_events.drain(run["run_id"]))
        return {}

    def start_task(self, run: dict) -> dict:
        """No tasks here: UnknownEngine (no run of this deployment waits for Fargate)."""
        raise UnknownEngine(f"run {run.get('run_id')} needs a Fargate task; this deployment runs {self.engine}")

    def invoke(self, event: runner_events.RunnerEvent) -> None:
        """Invoke the runner with `event` (a run's, or a schedule rule's input), without waiting."""
        self._lambda.invoke(FunctionName=self._function, InvocationType="Event", Payload=json.dumps(event).encode())

    def stop(self, run: dict) -> None:
        """Nothing to stop: the runner acts on the run's cancel request itself."""

    def stopped_tasks(self, runs: list) -> dict:
        """No tasks here: none stopped."""
        return {}


class FargateTasks:
    """Starts and stops the ECS Fargate tasks of the runner image, one per run."""

    def __init__(
        self,
        ecs_client,
        cluster: str,
        task_definition: str,
        container: str,
        subnets: Sequence[str],
        security_groups: Sequence[str],
        assign_public_ip: bool,
    ):
        self._ecs = ecs_client
        self._cluster = cluster
        self._task_definition = task_definition
        self._container = container
        self._network = {
            "awsvpcConfiguration": {
                "subnets": list(subnets),
                "securityGroups": list(security_groups),
                "assignPublicIp": "ENABLED" if assign_public_ip else "DISABLED",
            }
        }

    def start(self, run: dict) -> dict:
        """RunTask with the run's id as the container's command; the task's ARN.
        CapacityUnavailable when ECS cannot start it now, RuntimeError when it refuses it."""
        try:
            response = self._run_task(run)
        except ClientError as error:
            message = str(error.response.get("Error", {}).get("Message", ""))
            if error_code(error) in _TRANSIENT_CODES or _says_no_capacity(message):
                raise CapacityUnavailable(f"ECS started no task now: {error_code(error)}") from error
            raise
        except (ConnectionError, HTTPClientError) as error:  # botocore's, after its retries
            raise CapacityUnavailable(f"ECS did not answer: {type(error).__name__}") from error
        failures = response.get("failures") or []
        if failures or not response.get("tasks"):
            reasons = ", ".join(f.get("reason", "unknown") for f in failures) or "no reason given"
            if any(_says_no_capacity(f.get("reason", "")) for f in failures):
                raise CapacityUnavailable(f"ECS started no task now: {reasons}")
            raise RuntimeError(f"ECS started no task: {reasons}")
        return {"task_arn": response["tasks"][0]["taskArn"]}

    def _run_task(self, run: dict) -> dict:
        return self._ecs.run_task(
            cluster=self._cluster,
            taskDefinition=self._task_definition,
            launchType="FARGATE",
            count=1,
            networkConfiguration=self._network,
            startedBy="notebooks",
            # One task per claim of the run, even when botocore retries a call that timed out.
            clientToken=f"{run['run_id']}-{run.get('started_at', 0)}",
            overrides={"containerOverrides": [{"name": self._container, "command": [run["run_id"]]}]},
        )

    def stop(self, run: dict) -> None:
        """StopTask on the run's task (a cancel's backstop, or a reaped run's task)."""
        if run.get("task_arn"):
            self._ecs.stop_task(cluster=self._cluster, task=run["task_arn"], reason="The run was ended")

    def stopped(self, runs: list) -> dict:
        """run id -> ECS's stopped reason, for those of `runs` (with a `task_arn`) whose
        task has stopped, or that ECS no longer knows (it forgets a stopped task within
        about an hour): DescribeTasks, 100 tasks a call."""
        by_task = {run["task_arn"]: run["run_id"] for run in runs if run.get("task_arn")}
        stopped = {}
        for arns in chunks(list(by_task), DESCRIBE_TASKS_MAX):
            described = self._ecs.describe_tasks(cluster=self._cluster, tasks=arns)
            for task in described.get("tasks", []):
                if task.get("lastStatus") == "STOPPED" and task.get("taskArn") in by_task:
                    stopped[by_task[task["taskArn"]]] = task.get("stoppedReason") or "no reason given"
            for failure in described.get("failures", []):
                if failure.get("reason") == "MISSING" and failure.get("arn") in by_task:
                    stopped[by_task[failure["arn"]]] = "ECS no longer knows the task"
        return stopped


class EngineRouter:
    """Lambda for runs whose timeout fits in it, Fargate tasks beyond."""

    def __init__(self, on_lambda: LambdaDispatcher, tasks: FargateTasks, lambda_limit: float):
        self._on_lambda = on_lambda
        self._tasks = tasks
        self._lambda_limit = lambda_limit
        self.engine = on_lambda.engine

    def engine_for(self, timeout: float) -> Engine:
        """The engine a run with this timeout (seconds) runs on."""
        return self.engine if timeout <= self._lambda_limit else Engine.FARGATE

    def dispatch(self, run: dict) -> dict:
        """Invoke the runner to drain the pool of the run's engine (recorded on the run as
        `engine`), without waiting."""
        self.invoke(runner_events.drain(run["run_id"], pool_of(self._engine_of(run))))
        return {}

    def start_task(self, run: dict) -> dict:
        """Start the task of a Fargate run the fair queue claimed; its ARN."""
        if pool_of(self._engine_of(run)) != Pool.FARGATE:
            raise UnknownEngine(f"run {run.get('run_id')} runs on {run.get('engine')}, not in a task")
        return self._tasks.start(run)

    def stop(self, run: dict) -> None:
        """Stop the run's task, if it has one."""
        if self._engine_of(run) == Engine.FARGATE:
            self._tasks.stop(run)

    def stopped_tasks(self, runs: list) -> dict:
        """run id -> why ECS stopped its task, for the Fargate runs of `runs` whose task has."""
        return self._tasks.stopped([run for run in runs if run.get("engine") == Engine.FARGATE])

    def invoke(self, event: runner_events.RunnerEvent) -> None:
        """Invoke the runner function with `event`, without waiting."""
        self._on_lambda.invoke(event)

    def _engine_of(self, run: dict) -> Engine:
        """The run's engine; UnknownEngine when it names one this router does not have."""
        engine = run.get("engine")
        if engine is None:  # recorded before runs had an engine: a Lambda run
            return self.engine
        if engine not in (self.engine, Engine.FARGATE):
            raise UnknownEngine(
                f"run {run.get('run_id')} names engine {engine!r}; this deployment runs {self.engine}, fargate"
            )
        return Engine(engine)
