"""Dispatch: how a recorded run reaches a runner, and which engine runs it.

Every engine runs the same handler (RunExecutor.handle) on the same code:
- `lambda`: an asynchronous (Event) invocation of the runner function, for a run whose
  timeout fits in Lambda's 15 minutes: a `drain` event, whose runner claims the next run
  of the fair queue (runs/queue.py), which may be another user's;
- `fargate`: an ECS Fargate task of the runner image (chalicelib.runner.fargate_task), for a
  longer run, up to the deployment's maximum;
- `local`: the local stack's worker processes (devstack/local_lambda.py), for any
  timeout, through the same fair queue.

What the services rely on is the `Dispatcher` protocol, which LambdaDispatcher (AWS's
Lambda, or the local stack's) and EngineRouter (Lambda and Fargate) satisfy; each engine
behind a router satisfies `RunEngine`.
"""

import json
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from chalicelib.common import runner_events
from chalicelib.common.model import Engine


@runtime_checkable
class RunEngine(Protocol):
    """One engine: hands a recorded run to a runner, and stops it on cancel."""

    engine: Engine

    def dispatch(self, run: dict) -> dict:
        """Start the run without waiting; the fields to record on it (e.g. a task's ARN)."""

    def stop(self, run: dict) -> None:
        """A cancel's backstop: stop the run's task, if it has one."""


@runtime_checkable
class Dispatcher(RunEngine, Protocol):
    """What the services dispatch through: `engine` is the runner function's (which
    schedules fire directly), `engine_for` picks a run's engine by its timeout, and
    `invoke` sends the runner function an event that is not a run's (runner/events.py)."""

    def engine_for(self, timeout: float) -> Engine:
        """The engine a run with this timeout (seconds) runs on."""

    def invoke(self, event: runner_events.RunnerEvent) -> None:
        """Invoke the runner function with `event`, without waiting."""


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

    def invoke(self, event: runner_events.RunnerEvent) -> None:
        """Invoke the runner with `event` (a run's, or a schedule rule's input), without waiting."""
        self._lambda.invoke(FunctionName=self._function, InvocationType="Event", Payload=json.dumps(event).encode())

    def stop(self, run: dict) -> None:
        """Nothing to stop: the runner acts on the run's cancel request itself."""


class FargateDispatcher:
    """Starts one ECS Fargate task of the runner image per run."""

    engine = Engine.FARGATE

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

    def dispatch(self, run: dict) -> dict:
        """RunTask with the run's id as the container's command; the task's ARN."""
        response = self._ecs.run_task(
            cluster=self._cluster,
            taskDefinition=self._task_definition,
            launchType="FARGATE",
            count=1,
            networkConfiguration=self._network,
            startedBy="notebooks",
            overrides={"containerOverrides": [{"name": self._container, "command": [run["run_id"]]}]},
        )
        if response.get("failures") or not response.get("tasks"):
            reasons = ", ".join(f.get("reason", "unknown") for f in response.get("failures", []))
            raise RuntimeError(f"ECS started no task: {reasons or 'no reason given'}")
        return {"task_arn": response["tasks"][0]["taskArn"]}

    def stop(self, run: dict) -> None:
        """StopTask on the run's task, as a cancel's backstop (the runner stops it first)."""
        if run.get("task_arn"):
            self._ecs.stop_task(cluster=self._cluster, task=run["task_arn"], reason="Run cancelled")


class EngineRouter:
    """Lambda for runs whose timeout fits in it, Fargate beyond."""

    def __init__(self, on_lambda: LambdaDispatcher, on_fargate: RunEngine, lambda_limit: float):
        self._on_lambda = on_lambda
        self._by_engine: dict[str, RunEngine] = {
            on_lambda.engine: on_lambda,
            on_fargate.engine: on_fargate,
        }
        self._lambda_limit = lambda_limit
        self.engine = on_lambda.engine

    def engine_for(self, timeout: float) -> Engine:
        """The engine a run with this timeout (seconds) runs on."""
        return self.engine if timeout <= self._lambda_limit else Engine.FARGATE

    def dispatch(self, run: dict) -> dict:
        """Hand the run to its engine (recorded on the run as `engine`)."""
        return self._engine_of(run).dispatch(run)

    def stop(self, run: dict) -> None:
        """Stop the run's task, if its engine has one."""
        self._engine_of(run).stop(run)

    def invoke(self, event: runner_events.RunnerEvent) -> None:
        """Invoke the runner function with `event` (not a run's: a webhook delivery)."""
        self._on_lambda.invoke(event)

    def _engine_of(self, run: dict) -> RunEngine:
        """The run's engine; UnknownEngine when it names one this router does not have."""
        engine = run.get("engine")
        if engine is None:  # recorded before runs had an engine: a Lambda run
            return self._on_lambda
        try:
            return self._by_engine[engine]
        except KeyError:
            raise UnknownEngine(
                f"run {run.get('run_id')} names engine {engine!r}; this deployment runs {', '.join(self._by_engine)}"
            ) from None
