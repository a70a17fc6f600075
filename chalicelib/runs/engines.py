"""Dispatch: how a recorded run reaches a runner, and which engine runs it.

Every engine runs the same handler (RunExecutor.handle) on the same code:
- `lambda`: an asynchronous (Event) invocation of the runner function, for a run whose
  timeout fits in Lambda's 15 minutes;
- `fargate`: an ECS Fargate task of the runner image (chalicelib.runner.fargate_task), for a
  longer run, up to the deployment's maximum;
- `local`: the local stack's worker processes (devstack/local_lambda.py), for any timeout.

A dispatcher has `engine` (the engine of the runner function, which schedules fire
directly), and answers `engine_for(timeout)`, `dispatch(run)` (the fields to record on
the run, e.g. the Fargate task's ARN) and `stop(run)` (a cancel's backstop).
"""

import json
from collections.abc import Sequence

LAMBDA, FARGATE, LOCAL = "lambda", "fargate", "local"


class LambdaDispatcher:
    """Hands runs to the runner function with asynchronous (`Event`) invocations: AWS's,
    or the local Lambda's (engine `local`)."""

    def __init__(self, lambda_client, function_name: str, engine: str = LAMBDA):
        self._lambda = lambda_client
        self._function = function_name
        self.engine = engine

    def engine_for(self, timeout: float) -> str:
        """Every run's engine: this dispatcher's."""
        return self.engine

    def dispatch(self, run: dict) -> dict:
        """Invoke the runner with the run's id, without waiting for it."""
        self.invoke({"run_id": run["run_id"]})
        return {}

    def invoke(self, event: dict) -> None:
        """Invoke the runner with `event` (a run's, or a schedule rule's input), without waiting."""
        self._lambda.invoke(FunctionName=self._function, InvocationType="Event", Payload=json.dumps(event).encode())

    def stop(self, run: dict) -> None:
        """Nothing to stop: the runner acts on the run's cancel request itself."""


class FargateDispatcher:
    """Starts one ECS Fargate task of the runner image per run."""

    engine = FARGATE

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

    def __init__(self, on_lambda: LambdaDispatcher, on_fargate: FargateDispatcher, lambda_limit: float):
        self._on_lambda = on_lambda
        self._by_engine: dict[str | None, LambdaDispatcher | FargateDispatcher] = {
            on_lambda.engine: on_lambda,
            on_fargate.engine: on_fargate,
        }
        self._lambda_limit = lambda_limit
        self.engine = on_lambda.engine

    def engine_for(self, timeout: float) -> str:
        """The engine a run with this timeout (seconds) runs on."""
        return self.engine if timeout <= self._lambda_limit else FARGATE

    def dispatch(self, run: dict) -> dict:
        """Hand the run to its engine (recorded on the run as `engine`)."""
        return self._engine_of(run).dispatch(run)

    def stop(self, run: dict) -> None:
        """Stop the run's task, if its engine has one."""
        self._engine_of(run).stop(run)

    def invoke(self, event: dict) -> None:
        """Invoke the runner function with `event` (not a run's: a webhook delivery)."""
        self._on_lambda.invoke(event)

    def _engine_of(self, run: dict):
        # A run recorded before runs had an engine was a Lambda run.
        return self._by_engine.get(run.get("engine"), self._on_lambda)
