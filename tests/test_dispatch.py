"""Dispatch: which engine a run goes to, and how it is handed over (Lambda, ECS Fargate)."""
import boto3
import pytest
from moto import mock_aws

from chalicelib.dispatch import EngineRouter, FargateDispatcher


@pytest.fixture
def fargate(aws_env):
    """moto's ECS with a cluster, a Fargate task definition like the template's, and a VPC."""
    with mock_aws():
        ecs = boto3.client("ecs", region_name="us-east-1")
        ec2 = boto3.client("ec2", region_name="us-east-1")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="runs", Description="runs", VpcId=vpc)["GroupId"]
        cluster = ecs.create_cluster(clusterName="notebooks")["cluster"]["clusterArn"]
        task_definition = ecs.register_task_definition(
            family="notebooks-runner", requiresCompatibilities=["FARGATE"], networkMode="awsvpc",
            cpu="1024", memory="4096",
            containerDefinitions=[{"name": "runner", "image": "runner:latest", "cpu": 1024, "memory": 4096,
                                   "entryPoint": ["python3", "-m", "chalicelib.fargate_task"]}],
        )["taskDefinition"]["taskDefinitionArn"]
        dispatcher = FargateDispatcher(ecs, cluster, task_definition, "runner", [subnet], [group],
                                       assign_public_ip=True)
        yield ecs, cluster, task_definition, subnet, dispatcher


def test_a_fargate_run_is_one_task_of_the_runner_with_the_run_id_as_its_command(fargate):
    ecs, cluster, task_definition, subnet, dispatcher = fargate

    recorded = dispatcher.dispatch({"run_id": "3f1c2a9e-0000-4000-8000-000000000001"})

    [task] = ecs.describe_tasks(cluster=cluster, tasks=[recorded["task_arn"]])["tasks"]
    assert task["taskDefinitionArn"] == task_definition
    assert task["launchType"] == "FARGATE" and task["startedBy"] == "notebooks"
    assert task["overrides"]["containerOverrides"] == [
        {"name": "runner", "command": ["3f1c2a9e-0000-4000-8000-000000000001"]}]
    [container] = ecs.describe_task_definition(taskDefinition=task_definition)["taskDefinition"][
        "containerDefinitions"]
    assert container["entryPoint"][-2:] == ["-m", "chalicelib.fargate_task"]


def test_stopping_a_fargate_run_stops_its_task(fargate):
    ecs, cluster, _, _, dispatcher = fargate
    recorded = dispatcher.dispatch({"run_id": "r-1"})

    dispatcher.stop({"run_id": "r-1", **recorded})

    [task] = ecs.describe_tasks(cluster=cluster, tasks=[recorded["task_arn"]])["tasks"]
    assert task["desiredStatus"] == "STOPPED"


def test_a_run_ecs_cannot_start_is_an_error_not_a_silent_loss(fargate, monkeypatch):
    ecs, _, _, _, dispatcher = fargate
    monkeypatch.setattr(ecs, "run_task", lambda **_: {"tasks": [], "failures": [{"reason": "RESOURCE:MEMORY"}]})

    with pytest.raises(RuntimeError, match="RESOURCE:MEMORY"):
        dispatcher.dispatch({"run_id": "r-1"})


class Recorder:
    def __init__(self, engine):
        self.engine, self.runs = engine, []

    def dispatch(self, run):
        self.runs.append(run)
        return {}

    def stop(self, run):
        self.runs.remove(run)


@pytest.mark.parametrize("timeout, engine", [(1, "lambda"), (840, "lambda"), (840.5, "fargate"), (43200, "fargate")])
def test_the_engine_follows_the_runs_timeout(timeout, engine):
    on_lambda, on_fargate = Recorder("lambda"), Recorder("fargate")
    router = EngineRouter(on_lambda, on_fargate, lambda_limit=840)

    assert router.engine_for(timeout) == engine
    run = {"run_id": "r", "engine": router.engine_for(timeout)}
    router.dispatch(run)
    assert (on_lambda.runs, on_fargate.runs) == (([run], []) if engine == "lambda" else ([], [run]))
