"""Dispatch: which engine a run goes to, and how it is handed over (Lambda, ECS Fargate:
the fair queue's Fargate pool, whose drains start one task per run); each run's own
timeout, from the request to the runner and the run's deadline."""

import os
import signal
import threading
import time

import boto3
import botocore.exceptions
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from chalicelib import services
from chalicelib.api.requests import CreateRequest, RunRequest
from chalicelib.common import aws
from chalicelib.common.config import REPORT_GRACE_SECONDS, Settings
from chalicelib.common.errors import InvalidInput
from chalicelib.common.model import Pool
from chalicelib.runner import fargate_task
from chalicelib.runner.notebook_runner import NotebookRunner
from chalicelib.runs import service as runs_module
from chalicelib.runs.engines import CapacityUnavailable, EngineRouter, FargateTasks
from chalicelib.runs.records import TASK_START_SECONDS
from tests.conftest import error
from tests.helpers import check_invariants, stored_state, take
from tests.test_runs import BASE, RUNS, notebook_of, run_all, stream_text

pytest_plugins = ["tests.test_runs"]  # its fixtures: dispatched, executor


def ecs_for_runs():
    """In moto: an ECS cluster, a Fargate task definition like the template's, and a VPC
    subnet and security group. (ecs client, cluster ARN, task definition ARN, subnet, group)"""
    ecs = boto3.client("ecs", region_name="us-east-1")
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="runs", Description="runs", VpcId=vpc)["GroupId"]
    cluster = ecs.create_cluster(clusterName="notebooks")["cluster"]["clusterArn"]
    task_definition = ecs.register_task_definition(
        family="notebooks-runner",
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="1024",
        memory="4096",
        containerDefinitions=[
            {
                "name": "runner",
                "image": "runner:latest",
                "cpu": 1024,
                "memory": 4096,
                "entryPoint": ["python3", "-m", "chalicelib.runner.fargate_task"],
            }
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    return ecs, cluster, task_definition, subnet, group


@pytest.fixture
def fargate(aws_env):
    """moto's ECS set up for runs, and the Fargate tasks on it."""
    with mock_aws():
        ecs, cluster, task_definition, subnet, group = ecs_for_runs()
        tasks = FargateTasks(ecs, cluster, task_definition, "runner", [subnet], [group], assign_public_ip=True)
        yield ecs, cluster, task_definition, subnet, tasks


def test_a_fargate_run_is_one_task_of_the_runner_with_the_run_id_as_its_command(fargate):
    ecs, cluster, task_definition, subnet, tasks = fargate

    recorded = tasks.start({"run_id": "3f1c2a9e-0000-4000-8000-000000000001"})

    [task] = ecs.describe_tasks(cluster=cluster, tasks=[recorded["task_arn"]])["tasks"]
    assert task["taskDefinitionArn"] == task_definition
    assert task["launchType"] == "FARGATE" and task["startedBy"] == "notebooks"
    assert task["overrides"]["containerOverrides"] == [
        {"name": "runner", "command": ["3f1c2a9e-0000-4000-8000-000000000001"]}
    ]
    [container] = ecs.describe_task_definition(taskDefinition=task_definition)["taskDefinition"]["containerDefinitions"]
    assert container["entryPoint"][-2:] == ["-m", "chalicelib.runner.fargate_task"]


def test_stopping_a_fargate_run_stops_its_task(fargate):
    ecs, cluster, _, _, tasks = fargate
    recorded = tasks.start({"run_id": "r-1"})

    tasks.stop({"run_id": "r-1", **recorded})

    [task] = ecs.describe_tasks(cluster=cluster, tasks=[recorded["task_arn"]])["tasks"]
    assert task["desiredStatus"] == "STOPPED"


@pytest.mark.parametrize(
    "answer, now",
    [
        ({"tasks": [], "failures": [{"reason": "RESOURCE:MEMORY"}]}, True),
        ({"tasks": [], "failures": [{"reason": "Capacity is unavailable at this time. Please try again"}]}, True),
        (ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "RunTask"), True),
        (ClientError({"Error": {"Code": "ServerException", "Message": "Service error"}}, "RunTask"), True),
        (ClientError({"Error": {"Code": "LimitExceededException", "Message": "vCPU quota"}}, "RunTask"), True),
        (
            ClientError(
                {"Error": {"Code": "ClientException", "Message": "You've reached the limit on the number of vCPUs"}},
                "RunTask",
            ),
            True,
        ),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="https://ecs.us-east-1.amazonaws.com"), True),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="https://ecs.us-east-1.amazonaws.com"), True),
        ({"tasks": [], "failures": [{"reason": "MISSING"}]}, False),
        ({"tasks": [], "failures": []}, False),
        (ClientError({"Error": {"Code": "InvalidParameterException", "Message": "No subnet"}}, "RunTask"), False),
    ],
)
def test_a_task_ecs_cannot_start_is_an_error_saying_whether_it_may_start_later(fargate, monkeypatch, answer, now):
    ecs, _, _, _, tasks = fargate

    def run_task(**_):
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(ecs, "run_task", run_task)
    with pytest.raises((RuntimeError, ClientError)) as raised:
        tasks.start({"run_id": "r-1"})
    assert isinstance(raised.value, CapacityUnavailable) == now


class RecordingLambda:
    engine = "lambda"

    def __init__(self):
        self.events = []

    def invoke(self, event):
        self.events.append(event)


@pytest.mark.parametrize("timeout, engine", [(1, "lambda"), (840, "lambda"), (840.5, "fargate"), (43200, "fargate")])
def test_the_engine_follows_the_runs_timeout_and_its_dispatch_drains_that_engines_pool(timeout, engine):
    on_lambda = RecordingLambda()
    router = EngineRouter(on_lambda, tasks=None, lambda_limit=840)

    assert router.engine_for(timeout) == engine
    router.dispatch({"run_id": "r", "engine": router.engine_for(timeout)})
    assert on_lambda.events == [{"drain": {"run_id": "r", **({"pool": "fargate"} if engine == "fargate" else {})}}]


def test_events_that_are_not_runs_go_to_the_runner_function_whatever_the_engines():
    """A webhook delivery of a run that ended in the API is for the runner function."""
    on_lambda = RecordingLambda()
    EngineRouter(on_lambda, tasks=None, lambda_limit=840).invoke({"deliver_webhook": "r"})
    assert on_lambda.events == [{"deliver_webhook": "r"}]


# --- A run's timeout and engine, through the API ---------------------------------------


def start(api, notebook_id, expect=200, user="admin", **fields):
    return api.json(
        "POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m", **fields}, expect=expect, user=user
    )


def test_a_bad_timeout_is_a_400_naming_it_and_records_nothing(api, stack, dispatched):
    notebook_id = api.create()["notebook_id"]
    before = stored_state(stack.settings)
    for value in ("true", '"60"', "0", "-5", "NaN", "-Infinity", "1e999", "841", "0.0001", "[60]", "{}"):
        raw = '{"nbkIds": ["%s"], "module": "m", "timeout": %s}' % (notebook_id, value)

        status, message = error(api.call("POST", BASE + "/_run", raw=raw))

        assert status == 400 and ": timeout " in message, (value, message)
        assert stored_state(stack.settings) == before and dispatched.events == [], value


def test_without_fargate_a_run_longer_than_lambda_takes_is_refused_saying_why(api, dispatched):
    notebook_id = api.create()["notebook_id"]
    _, message = error(api.call("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m", "timeout": 900}))
    assert "at most 840" in message and "Fargate" in message


def test_a_runs_timeout_and_engine_are_recorded_and_shown(api, stack, dispatched):
    notebook_id = api.create()["notebook_id"]
    [default] = start(api, notebook_id)["runs"]
    [explicit] = start(api, notebook_id, timeout=30.5)["runs"]
    [whole] = start(api, notebook_id, timeout=840)["runs"]

    shown = {run["run_id"]: api.json("GET", f"{RUNS}/{run['run_id']}") for run in (default, explicit, whole)}
    assert [
        (shown[run["run_id"]]["timeout"], shown[run["run_id"]]["engine"]) for run in (default, explicit, whole)
    ] == [(stack.settings.run_timeout, "lambda"), (30.5, "lambda"), (840, "lambda")]
    assert isinstance(shown[whole["run_id"]]["timeout"], int)
    assert [run["timeout"] for run in api.json("GET", f"{BASE}/{notebook_id}/runs")] == [840, 30.5, 840]
    fired = stack.run_dispatch.record("admin", notebook_id, "schedule")  # a schedule firing: the default, on Lambda
    assert {key: stack.runs.get("admin", fired["run_id"])[key] for key in ("timeout", "engine")} == {
        "timeout": 840,
        "engine": "lambda",
    }


def test_a_client_tokens_runs_keep_the_first_requests_timeout(api, dispatched):
    notebook_id = api.create()["notebook_id"]
    [first] = start(api, notebook_id, timeout=120, client_token="t-1")["runs"]
    [again] = start(api, notebook_id, timeout=300, client_token="t-1")["runs"]

    assert again["run_id"] == first["run_id"]
    assert api.json("GET", f"{RUNS}/{first['run_id']}")["timeout"] == 120


def test_the_runner_executes_a_run_within_its_own_timeout(api, stack, dispatched, executor):
    assert executor._runner.run_timeout == 20  # the runner's own default: not what limits this run
    notebook_id = api.create(content=notebook_of("print('started')", "import time; time.sleep(60)"))["notebook_id"]
    [run] = start(api, notebook_id, timeout=3)["runs"]

    begun = time.monotonic()
    run_all(executor, dispatched)

    assert time.monotonic() - begun < 20
    record = api.json("GET", f"{RUNS}/{run['run_id']}")
    assert record["status"] == "failed" and record["error"]["cell_index"] == 1
    assert record["error"]["evalue"] == "The run exceeded its time limit of 3 seconds"
    assert "started" in stream_text(api.json("GET", f"{RUNS}/{run['run_id']}/output"))


def test_the_stuck_run_deadline_follows_the_runs_own_timeout(api, stack, dispatched):
    notebook_id = api.create()["notebook_id"]
    [run] = start(api, notebook_id, timeout=100)["runs"]
    claimed = take(stack, run["run_id"])
    lost_at = claimed["started_at"] / 1000 + 100 + REPORT_GRACE_SECONDS

    stack.runs._clock = lambda: lost_at - 1
    assert api.json("GET", f"{RUNS}/{run['run_id']}")["status"] == "running"
    stack.runs._clock = lambda: lost_at + 1
    record = api.json("GET", f"{RUNS}/{run['run_id']}")
    assert record["status"] == "failed" and record["error"]["ename"] == "RunnerLost"


def test_the_local_stack_takes_any_timeout_up_to_the_maximum_on_its_own_workers(stack, aws_env):
    aws_env.setenv("NOTEBOOKS_LOCAL_STACK", "true")
    services.reset()
    local = services.get()
    invoked = []
    aws_env.setattr(local.dispatcher, "invoke", invoked.append)
    notebook_id = local.notebooks.create("admin", CreateRequest())["notebook_id"]

    [run] = local.runs.start("admin", RunRequest([notebook_id], "m", {}, 43200))["runs"]

    assert invoked == [{"drain": {"run_id": run["run_id"]}}]
    shown = local.runs.get("admin", run["run_id"])
    assert (shown["engine"], shown["timeout"]) == ("local", 43200)
    with pytest.raises(InvalidInput, match="at most 43200"):
        RunRequest.parse({"nbkIds": [notebook_id], "module": "m", "timeout": 43201}, None, local.settings)


# --- A deployment with Fargate ---------------------------------------------------------


class Deployment:
    """The stack as a deployment with ECS (moto's): `invoked`, every event sent to the
    runner function; `run_tasks`, the parameters of every RunTask call made."""

    def __init__(self, services_, ecs_names):
        self.services = services_
        self.ecs_names = ecs_names  # (cluster, task definition, subnet, security group)
        self.invoked = []
        self.run_tasks = []

    def drain_fargate(self) -> list:
        """Handle the Fargate pool's drains sent so far, and those they send, as the runner
        function would; the runs whose tasks they started, in order, each with its status
        ("started"; "failed" when ECS refused the task; "queued" when it had no capacity,
        which ends the drains); else every chain of drains ends idle."""
        answers = []
        executor = self.services.executor_on(runner=None)  # a Fargate drain executes nothing here
        while drains := [event for event in self.invoked if event.get("drain", {}).get("pool") == "fargate"]:
            self.invoked.remove(drains[0])
            answers.append(executor.handle(drains[0]))
        assert answers[-1]["status"] in ("idle", "queued"), answers
        return [answer for answer in answers if answer != {"status": "idle"}]

    def run(self, run_id: str) -> dict:
        return self.services.runs._table.get(run_id)


@pytest.fixture
def deployment(stack, aws_env, monkeypatch):
    """The stack configured as a deployment with ECS (moto's): a Deployment. Its Fargate
    pool runs 3 tasks at once, at most 2 of one user's."""
    _, cluster, task_definition, subnet, group = ecs_for_runs()
    for name, value in {
        "NOTEBOOKS_FARGATE_CAPACITY": "3",
        "NOTEBOOKS_MAX_RUNNING": "2",
        "NOTEBOOKS_ECS_CLUSTER": cluster,
        "NOTEBOOKS_ECS_TASK_DEFINITION": task_definition,
        "NOTEBOOKS_ECS_SUBNETS": subnet,
        "NOTEBOOKS_ECS_SECURITY_GROUPS": group,
    }.items():
        aws_env.setenv(name, value)
    services.reset()
    deployed = Deployment(services.get(), (cluster, task_definition, subnet, group))
    monkeypatch.setattr(deployed.services.dispatcher, "invoke", deployed.invoked.append)
    aws.client("ecs", deployed.services.settings.region).meta.events.register(
        "provide-client-params.ecs.RunTask", lambda params, **_: deployed.run_tasks.append(dict(params))
    )
    yield deployed
    if deployed.services._runner_executor is not None:  # the Fargate task's executor: its next kernel
        deployed.services._runner_executor.close()


def test_a_run_longer_than_lambda_takes_waits_in_the_fargate_pool_and_gets_a_task_carrying_its_run_id(api, deployment):
    cluster, task_definition, subnet, group = deployment.ecs_names
    notebook_id = api.create()["notebook_id"]

    [short] = start(api, notebook_id, timeout=840)["runs"]
    [long] = start(api, notebook_id, timeout=43200)["runs"]

    # The API only queues: the runner function drains each run's pool.
    assert deployment.invoked == [
        {"drain": {"run_id": short["run_id"]}},
        {"drain": {"run_id": long["run_id"], "pool": "fargate"}},
    ]
    assert deployment.run_tasks == []
    shown = {run["run_id"]: api.json("GET", f"{RUNS}/{run['run_id']}") for run in (short, long)}
    assert [(shown[r["run_id"]]["engine"], shown[r["run_id"]]["timeout"]) for r in (short, long)] == [
        ("lambda", 840),
        ("fargate", 43200),
    ]

    assert deployment.drain_fargate() == [{"run_id": long["run_id"], "status": "started"}]
    [call] = deployment.run_tasks
    assert call["overrides"] == {"containerOverrides": [{"name": "runner", "command": [long["run_id"]]}]}
    assert (call["cluster"], call["taskDefinition"], call["launchType"]) == (cluster, task_definition, "FARGATE")
    assert call["networkConfiguration"] == {
        "awsvpcConfiguration": {"subnets": [subnet], "securityGroups": [group], "assignPublicIp": "ENABLED"}
    }
    record = deployment.run(long["run_id"])
    [task] = boto3.client("ecs").describe_tasks(cluster=cluster, tasks=[record["task_arn"]])["tasks"]
    assert task["overrides"]["containerOverrides"][0]["command"] == [long["run_id"]]
    assert (record["status"], record["slot"], "task_started_at" in record) == ("running", True, False)
    assert deployment.run(short["run_id"])["status"] == "queued"  # the runner pool's: not a task's
    assert error(api.call("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m", "timeout": 43201}))[
        1
    ].endswith(": timeout must be a number of seconds above 0 (at least 0.001) and at most 43200")


def test_the_fargate_pool_serves_users_in_turn_within_its_capacity_and_per_user_limit(api, deployment):
    settings = deployment.services.settings
    assert (settings.runner_slots(Pool.FARGATE), settings.running_per_user(Pool.FARGATE)) == (3, 2)
    bobs = api.create(user="bob")["notebook_id"]
    flood = [start(api, bobs, timeout=3600, user="bob")["runs"][0]["run_id"] for _ in range(5)]
    assert deployment.drain_fargate() == [{"run_id": run_id, "status": "started"} for run_id in flood[:2]]
    alices = api.create()["notebook_id"]
    [admins] = start(api, alices, timeout=3600)["runs"]

    # Bob holds his 2 of the 3 tasks; the third slot is the other user's, though bob queued first.
    assert deployment.drain_fargate() == [{"run_id": admins["run_id"], "status": "started"}]
    assert [deployment.run(run_id)["status"] for run_id in flood] == ["running"] * 2 + ["queued"] * 3
    assert len(deployment.run_tasks) == 3
    check_invariants(settings)

    # A task's run ends: its slot goes to bob's next run, oldest first, with a task of its own.
    assert deployment.services.records.adopt(flood[0])["task_started_at"] > 0
    assert deployment.services.records.conclude(flood[0], "succeeded") == "succeeded"
    deployment.invoked.append({"drain": {"pool": "fargate"}})  # what the task sends at its end
    assert deployment.drain_fargate() == [{"run_id": flood[2], "status": "started"}]
    assert len(deployment.run_tasks) == 4
    check_invariants(settings)


def refuse_first_run_task(deployment, monkeypatch, answer) -> None:
    """ECS answers the deployment's first RunTask with `answer`, the later ones as moto does."""
    ecs = aws.client("ecs", deployment.services.settings.region)
    real_run_task, calls = ecs.run_task, []

    def refusing_once(**params):
        calls.append(params)
        return answer if len(calls) == 1 else real_run_task(**params)

    monkeypatch.setattr(ecs, "run_task", refusing_once)


def test_a_fargate_run_ecs_refuses_fails_saying_so_and_frees_its_slot(api, deployment, monkeypatch):
    notebook_id = api.create()["notebook_id"]
    refused, first, second = (start(api, notebook_id, timeout=3600)["runs"][0]["run_id"] for _ in range(3))
    refuse_first_run_task(deployment, monkeypatch, {"tasks": [], "failures": [{"reason": "MISSING"}]})
    answers = deployment.drain_fargate()

    assert answers[0] == {"run_id": refused, "status": "failed"}
    record = api.json("GET", f"{RUNS}/{refused}")
    assert record["status"] == "failed"
    assert record["error"] == {
        "cell_index": None,
        "ename": "DispatchError",
        "evalue": "The run could not be started: RuntimeError",
    }
    # Its slot was freed: the next drains (sent after the failure) started both others,
    # which the per-user limit of 2 would not allow had it kept it.
    assert answers[1:] == [{"run_id": first, "status": "started"}, {"run_id": second, "status": "started"}]
    check_invariants(deployment.services.settings)


def test_a_fargate_run_ecs_has_no_capacity_for_waits_again_and_starts_at_the_reapers_next_round(
    api, deployment, monkeypatch
):
    notebook_id = api.create()["notebook_id"]
    [run] = start(api, notebook_id, timeout=3600)["runs"]
    refuse_first_run_task(deployment, monkeypatch, {"tasks": [], "failures": [{"reason": "RESOURCE:CPU"}]})

    # Back in the queue, its slot freed, and no drain after it: ECS is short of capacity.
    assert deployment.drain_fargate() == [{"run_id": run["run_id"], "status": "queued"}]
    record = deployment.run(run["run_id"])
    assert (record["status"], record["started_at"], record["slot"]) == ("queued", None, False)
    queue_timeout_ms = int(deployment.services.settings.queue_timeout * 1000)
    assert int(record["deadline_at"]) == int(record["created_at"]) + queue_timeout_ms
    assert api.json("GET", f"{RUNS}/{run['run_id']}")["status"] == "queued"
    check_invariants(deployment.services.settings)

    assert deployment.services.reaper.reap() == {"reaped": 0}  # its next round drains the pool
    assert deployment.drain_fargate() == [{"run_id": run["run_id"], "status": "started"}]
    assert deployment.run(run["run_id"])["status"] == "running" and len(deployment.run_tasks) == 1  # moto's
    check_invariants(deployment.services.settings)


def test_a_fargate_run_whose_task_never_starts_it_is_failed_by_the_reaper(api, deployment):
    notebook_id = api.create()["notebook_id"]
    [run] = start(api, notebook_id, timeout=43200)["runs"]
    deployment.drain_fargate()
    claimed = deployment.run(run["run_id"])
    # Its deadline is the task's start, not its 12 hours.
    assert int(claimed["deadline_at"]) == int(claimed["started_at"]) + TASK_START_SECONDS * 1000

    later = int(claimed["deadline_at"]) / 1000 + 1
    monkeypatch_clock(deployment.services, later)
    assert deployment.services.reaper.reap() == {"reaped": 1}
    record = api.json("GET", f"{RUNS}/{run['run_id']}")
    assert record["status"] == "failed"
    assert record["error"]["evalue"] == "The run's Fargate task did not start it within 10 minutes"
    check_invariants(deployment.services.settings)


def test_a_fargate_run_whose_task_stopped_under_it_is_failed_by_the_reaper_freeing_its_slot(
    api, deployment, task_kernel_as_this_user
):
    cluster = deployment.ecs_names[0]
    notebook_id = api.create()["notebook_id"]
    lost, alive, waiting = (start(api, notebook_id, timeout=43200)["runs"][0]["run_id"] for _ in range(3))
    deployment.drain_fargate()  # two tasks: the per-user limit
    for run_id in (lost, alive):
        assert deployment.services.records.adopt(run_id) is not None
    ecs = boto3.client("ecs")
    ecs.stop_task(cluster=cluster, task=deployment.run(lost)["task_arn"], reason="OutOfMemoryError: Container killed")

    # Hours before its deadline, the reaper's round finds its task stopped.
    assert deployment.services.reaper.reap() == {"reaped": 1}
    record = api.json("GET", f"{RUNS}/{lost}")
    assert record["status"] == "failed" and record["error"]["ename"] == "RunnerLost"
    assert record["error"]["evalue"] == (
        "The run's Fargate task stopped before the run ended: OutOfMemoryError: Container killed"
    )
    assert deployment.run(alive)["status"] == "running"
    check_invariants(deployment.services.settings)
    # Its slot went to the waiting run.
    assert deployment.drain_fargate() == [{"run_id": waiting, "status": "started"}]


def test_the_reaper_ends_a_cancelled_run_whose_task_was_killed_cancelled_and_a_forgotten_task_as_stopped(
    api, deployment, monkeypatch
):
    notebook_id = api.create()["notebook_id"]
    cancelled, forgotten = (start(api, notebook_id, timeout=43200)["runs"][0]["run_id"] for _ in range(2))
    deployment.drain_fargate()
    for run_id in (cancelled, forgotten):
        assert deployment.services.records.adopt(run_id) is not None
    monkeypatch.setattr(runs_module, "CANCEL_WAIT_SECONDS", 0)
    assert api.json("POST", f"{RUNS}/{cancelled}/cancel")["status"] == "running"  # StopTask; its kernel hangs on
    ecs = aws.client("ecs", deployment.services.settings.region)
    real_describe = ecs.describe_tasks
    forgotten_arn = deployment.run(forgotten)["task_arn"]

    def describe(cluster, tasks):  # ECS forgets a stopped task within an hour
        known = real_describe(cluster=cluster, tasks=[arn for arn in tasks if arn != forgotten_arn])
        return {**known, "failures": [{"arn": forgotten_arn, "reason": "MISSING"}]}

    monkeypatch.setattr(ecs, "describe_tasks", describe)
    assert deployment.services.reaper.reap() == {"reaped": 2}
    assert api.json("GET", f"{RUNS}/{cancelled}")["status"] == "cancelled"
    record = api.json("GET", f"{RUNS}/{forgotten}")
    assert (record["status"], record["error"]["evalue"]) == (
        "failed",
        "The run's Fargate task stopped before the run ended: ECS no longer knows the task",
    )
    check_invariants(deployment.services.settings)


def test_an_ecs_error_in_the_reapers_round_never_stops_its_drains(api, deployment, monkeypatch):
    notebook_id = api.create()["notebook_id"]
    running, waiting = (start(api, notebook_id, timeout=43200)["runs"][0]["run_id"] for _ in range(2))
    monkeypatch.setenv("NOTEBOOKS_MAX_RUNNING", "1")
    monkeypatch.setattr(deployment.services.queue, "_settings", Settings.from_env())  # one task per user
    deployment.drain_fargate()
    assert deployment.services.records.adopt(running) is not None
    deployment.invoked.clear()

    def unavailable(**_):
        raise ClientError({"Error": {"Code": "ServerException", "Message": "down"}}, "DescribeTasks")

    monkeypatch.setattr(aws.client("ecs", deployment.services.settings.region), "describe_tasks", unavailable)
    assert deployment.services.reaper.reap() == {"reaped": 0}
    assert {"drain": {"pool": "fargate"}} in deployment.invoked  # `waiting` is still drained for
    assert deployment.run(waiting)["status"] == "queued"


def test_a_task_starting_its_run_as_the_reaper_ends_it_wins(api, deployment, task_kernel_as_this_user):
    """The reaper read the run just past its start deadline; its task starts it before
    the reaper's end: the run executes, and is not failed under it."""
    notebook_id = api.create(content=notebook_of("print(6 * 7)"))["notebook_id"]
    [run] = start(api, notebook_id, timeout=3600)["runs"]
    deployment.drain_fargate()
    as_read = deployment.run(run["run_id"])
    assert deployment.services.records.adopt(run["run_id"]) is not None  # the task, meanwhile

    monkeypatch_clock(deployment.services, int(as_read["deadline_at"]) / 1000 + 1)
    assert deployment.services.runs.reap(as_read)["status"] == "running"
    assert deployment.run(run["run_id"])["status"] == "running"
    check_invariants(deployment.services.settings)


def monkeypatch_clock(services_, at: float) -> None:
    """The services' clock (the reaper's and the API's) set to `at`, epoch seconds."""
    services_.runs._clock = lambda: at
    services_.reaper._clock = lambda: at


def test_cancelling_a_fargate_run_stops_its_task_and_a_failing_stop_does_not_fail_the_cancel(
    api, deployment, monkeypatch
):
    cluster = deployment.ecs_names[0]
    monkeypatch.setattr(runs_module, "CANCEL_WAIT_SECONDS", 0)
    notebook_id = api.create()["notebook_id"]
    running, unstarted, queued = (start(api, notebook_id, timeout=3600)["runs"][0]["run_id"] for _ in range(3))
    deployment.drain_fargate()  # two of them: the per-user limit
    assert deployment.services.records.adopt(running) is not None  # its task started it

    assert api.json("POST", f"{RUNS}/{running}/cancel")["status"] == "running"  # asked; the runner ends it
    [task] = boto3.client("ecs").describe_tasks(cluster=cluster, tasks=[deployment.run(running)["task_arn"]])["tasks"]
    assert task["desiredStatus"] == "STOPPED"
    assert deployment.services.records.conclude(running, "succeeded") == "cancelled"

    # A run whose task has not started it yet ends at once: its task finds nothing to run.
    assert api.json("POST", f"{RUNS}/{unstarted}/cancel")["status"] == "cancelled"
    [task] = boto3.client("ecs").describe_tasks(cluster=cluster, tasks=[deployment.run(unstarted)["task_arn"]])["tasks"]
    assert task["desiredStatus"] == "STOPPED"
    assert deployment.services.records.adopt(unstarted) is None
    assert {"drain": {"pool": "fargate"}} in deployment.invoked  # its slot is free for the next run
    check_invariants(deployment.services.settings)

    def refuse(**_):
        raise botocore.exceptions.ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "StopTask")

    monkeypatch.setattr(aws.client("ecs", deployment.services.settings.region), "stop_task", refuse)
    assert api.json("POST", f"{RUNS}/{queued}/cancel")["status"] == "cancelled"


@pytest.fixture
def task_kernel_as_this_user(monkeypatch):
    """As root, a task's kernel runs as another user (fargate_task.KERNEL_UID), who needs
    to read this machine's Python: test_lambda_sim runs a root task that way, from
    /var/lang. Here the kernel stays this process's user."""
    monkeypatch.setattr(fargate_task, "kernel_user", lambda: None)


def test_the_fargate_task_executes_its_run_with_the_runner_handler(
    api, deployment, task_kernel_as_this_user, monkeypatch
):
    prewarmed = []  # a task serves one run: no kernel is started after it
    monkeypatch.setattr(NotebookRunner, "prewarm", lambda runner: prewarmed.append(runner))
    notebook_id = api.create(content=notebook_of("print(6 * 7)"))["notebook_id"]
    [run] = start(api, notebook_id, timeout=3600)["runs"]
    # Started before its run was claimed for it (a task of another deployment, by hand): nothing.
    assert fargate_task.serve(run["run_id"]) == {"run_id": run["run_id"], "status": "skipped"}
    deployment.drain_fargate()
    deployment.invoked.clear()

    assert fargate_task.serve(run["run_id"]) == {"run_id": run["run_id"], "status": "succeeded"}

    record = api.json("GET", f"{RUNS}/{run['run_id']}")
    assert (record["status"], record["engine"]) == ("succeeded", "fargate")
    assert stream_text(api.json("GET", f"{RUNS}/{run['run_id']}/output")) == "42\n"
    assert {"drain": {"pool": "fargate"}} in deployment.invoked  # its end frees its slot for the next
    assert prewarmed == []
    check_invariants(deployment.services.settings)
    # A second start of the task: nothing.
    assert fargate_task.serve(run["run_id"]) == {"run_id": run["run_id"], "status": "skipped"}
    assert api.json("GET", f"{RUNS}/{run['run_id']}")["finished_at"] == record["finished_at"]


def test_stopping_the_fargate_task_ends_its_run_cancelled_with_the_output_so_far(
    api, deployment, task_kernel_as_this_user
):
    notebook_id = api.create(content=notebook_of("print('before')", "import time; time.sleep(60)", "print('after')"))[
        "notebook_id"
    ]
    [run] = start(api, notebook_id, timeout=3600)["runs"]
    deployment.drain_fargate()

    def stop_once_sleeping():  # as ECS's StopTask does: SIGTERM to the task's process
        deadline = time.monotonic() + 30
        while deployment.run(run["run_id"]).get("current_cell") != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    stopper = threading.Thread(target=stop_once_sleeping, daemon=True)
    stopper.start()
    try:
        begun = time.monotonic()
        assert fargate_task.serve(run["run_id"])["status"] == "cancelled"
    finally:
        signal.signal(signal.SIGTERM, previous)
    stopper.join()

    assert time.monotonic() - begun < 30
    assert api.json("GET", f"{RUNS}/{run['run_id']}")["status"] == "cancelled"
    notebook = api.json("GET", f"{RUNS}/{run['run_id']}/output")
    assert stream_text(notebook) == "before\n"
