"""The deployed stack: its template as `make package` writes it, property by property,
cfn-lint on it, the API function's start-up, and `make smoke` against the local stack.

The package itself, run as Lambda runs it, is tested in test_lambda_sim.py.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.common.config import Settings
from chalicelib.common.model import Pool
from chalicelib.storage.files import RESPONSES_PREFIX
from chalicelib.storage.tables import TTL_ATTRIBUTE, table_definitions
from deploy import package
from deploy.template import IMAGE_CONTEXT, MAX_EVENT_AGE_SECONDS, PACKAGED_JUPYTER_DATA, RUNTIME
from devstack.stack import free_port
from tests.local_stack import RunningStack, remove_state, state_folder

ROOT = Path(__file__).resolve().parent.parent
CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text())
DATA_TABLES = ("NotebooksTable", "RunsTable", "UsersTable")
UUID_LENGTH = 36
EVENTBRIDGE_RULE_NAME_LIMIT = 64


@pytest.fixture(scope="module")
def template_file(tmp_path_factory):
    """The template, written as `make package` writes it, with no AWS settings at all."""
    out = tmp_path_factory.mktemp("package")
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("AWS_")]:
            patch.delenv(name)
        template, _ = package.chalice_package(out)
    return template


@pytest.fixture(scope="module")
def template(template_file):
    return json.loads(template_file.read_text())


@pytest.fixture(scope="module")
def resources(template):
    return template["Resources"]


def statements(resources, role: str) -> list:
    [policy] = resources[role]["Properties"]["Policies"]
    return policy["PolicyDocument"]["Statement"]


def allowed(resources, role: str, action: str) -> list:
    """The resources on which `role` allows `action` (exact action names or service:*)."""
    granted = []
    for statement in statements(resources, role):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Effect"] == "Allow" and (action in actions or action.split(":")[0] + ":*" in actions):
            found = statement["Resource"]
            granted += found if isinstance(found, list) else [found]
    return granted


def test_cfn_lint_finds_nothing(template_file):
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(template_file)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_both_functions_run_the_runtime_the_package_is_built_for(resources):
    # python3.13 on Amazon Linux 2023, x86_64: the API function's runtime, the runner image's
    # base and the Fargate task, and what pip installs the package for (glibc 2.34 at most).
    assert RUNTIME == "python3.13" and sys.version_info[:2] == (3, 13)  # `make test` runs on it too
    assert resources["APIHandler"]["Properties"]["Runtime"] == RUNTIME
    for function in ("APIHandler", "Runner"):
        assert resources[function]["Properties"]["Architectures"] == ["x86_64"], function
    platform = resources["RunnerTaskDefinition"]["Properties"]["RuntimePlatform"]
    assert platform == {"OperatingSystemFamily": "LINUX", "CpuArchitecture": "X86_64"}
    assert package.LAMBDA_PYTHON.startswith(RUNTIME.removeprefix("python") + ".")
    options = " ".join(package.PIP_TARGET_OPTIONS)
    assert f"--python-version {package.LAMBDA_PYTHON}" in options and "--implementation cp" in options
    assert "--only-binary=:all:" in options
    platforms = set(re.findall(r"--platform (\S+)", options))
    assert {"manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64"} <= platforms
    assert not {"manylinux_2_35_x86_64", "manylinux_2_39_x86_64"} & platforms
    assert all(name.endswith("_x86_64") for name in platforms)
    # The runner image: AWS's base image of the same Python.
    base = re.search(r"^FROM (\S+)$", package.DOCKERFILE.read_text(), re.M).group(1)
    assert base == "public.ecr.aws/lambda/python:3.13"


def test_the_runner_is_an_image_that_sam_builds_from_the_tree_make_package_writes(resources):
    runner = resources["Runner"]
    properties = runner["Properties"]
    assert properties["PackageType"] == "Image"
    assert not {"Runtime", "Handler", "CodeUri", "Layers"} & set(properties)
    assert resources["APIHandler"]["Properties"]["CodeUri"] == "./" + package.PACKAGE_NAME  # the small zip
    # sam build: the Dockerfile in the Docker context, relative to the template.
    metadata = runner["Metadata"]
    assert metadata["DockerContext"] == "./" + IMAGE_CONTEXT and metadata["Dockerfile"] == "Dockerfile"
    assert metadata["DockerTag"]
    # The Dockerfile copies the task tree into the task root and runs Chalice's handler.
    dockerfile = package.DOCKERFILE.read_text()
    assert re.search(rf"^COPY {package.IMAGE_TASK}/ \$\{{LAMBDA_TASK_ROOT\}}/$", dockerfile, re.M)
    command = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert properties["ImageConfig"]["Command"] == command == ["app.runner"]


def test_the_api_is_regional(resources):
    assert resources["RestAPI"]["Properties"]["EndpointConfiguration"] == "REGIONAL"


def test_no_resource_has_a_fixed_name_that_a_second_stage_would_collide_with(template, resources):
    for logical_id, resource in resources.items():
        properties = resource.get("Properties", {})
        for key in ("BucketName", "TableName", "QueueName", "RoleName"):
            assert key not in properties, (logical_id, key)
    for function, log_group in (("APIHandler", "ApiLogGroup"), ("Runner", "RunnerLogGroup")):
        name = resources[function]["Properties"]["FunctionName"]["Fn::Sub"]
        assert name.startswith("${AWS::StackName}-")
        assert resources[log_group]["Properties"]["LogGroupName"] == {"Fn::Sub": "/aws/lambda/" + name}
    text = json.dumps(template)
    assert "arn:aws:" not in text, "hard-coded partition"
    assert CONFIG["iam_role_arn"] not in text, "Chalice's placeholder role survived the merge"


def test_the_bucket_keeps_versions_for_a_configurable_time_and_is_retained(resources):
    bucket = resources["NotebookFiles"]
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    properties = bucket["Properties"]
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = properties["LifecycleConfiguration"]["Rules"]
    assert rules[0]["Status"] == "Enabled"
    assert rules[0]["NoncurrentVersionExpiration"] == {"NoncurrentDays": {"Ref": "NoncurrentVersionDays"}}
    condition, expire_outputs, otherwise = rules[1]["Fn::If"]
    assert condition == "RunOutputsExpire" and otherwise == {"Ref": "AWS::NoValue"}
    assert expire_outputs["Prefix"] == "runs/" and expire_outputs["ExpirationInDays"] == {"Ref": "RunOutputDays"}
    # Answers too large for a Lambda response (303s to S3) are deleted after a day.
    assert rules[2] == {
        "Id": "ExpireLargeResponses",
        "Status": "Enabled",
        "Prefix": RESPONSES_PREFIX,
        "ExpirationInDays": 1,
    }


def test_the_bucket_is_encrypted_private_and_refuses_plain_http(resources):
    properties = resources["NotebookFiles"]["Properties"]
    [encryption] = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    policy = resources["NotebookFilesPolicy"]["Properties"]
    assert policy["Bucket"] == {"Ref": "NotebookFiles"}
    [deny] = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert deny["Resource"] == [{"Fn::GetAtt": ["NotebookFiles", "Arn"]}, {"Fn::Sub": "${NotebookFiles.Arn}/*"}]


def test_tables_are_the_designed_ones_on_demand_with_recovery_and_retained(resources):
    for logical_id, definition in zip(DATA_TABLES, table_definitions(Settings()), strict=True):
        table = resources[logical_id]
        assert table["DeletionPolicy"] == table["UpdateReplacePolicy"] == "Retain"
        properties = table["Properties"]
        assert {key: properties[key] for key in definition if key != "TableName"} == {
            key: value for key, value in definition.items() if key != "TableName"
        }
        assert properties["BillingMode"] == "PAY_PER_REQUEST"
        assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    # Run client tokens and failed-login windows (auth.LoginThrottle) expire by themselves.
    for logical_id in ("NotebooksTable", "UsersTable"):
        assert resources[logical_id]["Properties"]["TimeToLiveSpecification"] == {
            "AttributeName": TTL_ATTRIBUTE,
            "Enabled": True,
        }
    # The runs across notebooks (GET /_notebooks/runs): an owner's, and an owner's in one
    # status; and the sparse index of active runs (the fair queue, the reaper).
    indexes = resources["RunsTable"]["Properties"]["GlobalSecondaryIndexes"]
    assert [(index["IndexName"], [key["AttributeName"] for key in index["KeySchema"]]) for index in indexes] == [
        ("by_owner", ["owner", "created_at"]),
        ("by_owner_status", ["owner_status", "created_at"]),
        ("by_status", ["active_status", "deadline_at"]),
    ]


def test_the_runner_retries_drops_old_events_to_a_queue_and_has_its_own_concurrency_and_tmp(template, resources):
    runner = resources["Runner"]["Properties"]
    invoke = runner["EventInvokeConfig"]
    assert 0 <= invoke["MaximumRetryAttempts"] <= 2
    # An event Lambda still holds may still start its run: the API waits as long before
    # it reports a queued run lost.
    assert invoke["MaximumEventAgeInSeconds"] == MAX_EVENT_AGE_SECONDS
    assert float(CONFIG["environment_variables"]["NOTEBOOKS_QUEUE_TIMEOUT"]) == MAX_EVENT_AGE_SECONDS
    assert invoke["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["FailedRunnerEvents", "Arn"]},
    }
    assert runner["ReservedConcurrentExecutions"] == {
        "Fn::If": ["RunnerConcurrencyReserved", {"Ref": "RunnerReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    assert template["Conditions"]["RunnerConcurrencyReserved"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "RunnerReservedConcurrency"}, 0]}]
    }
    assert runner["EphemeralStorage"] == {"Size": {"Ref": "RunnerEphemeralStorageMB"}}
    assert template["Parameters"]["RunnerEphemeralStorageMB"]["Default"] >= 1024


def test_the_runner_function_has_lambdas_maximum_time_and_the_run_timeout_ends_first(resources):
    assert resources["Runner"]["Properties"]["Timeout"] == 900
    assert float(CONFIG["environment_variables"]["NOTEBOOKS_RUN_TIMEOUT"]) < 900


def test_both_functions_logs_have_a_retention(resources):
    for log_group in ("ApiLogGroup", "RunnerLogGroup"):
        assert resources[log_group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    for function, log_group in (("APIHandler", "ApiLogGroup"), ("Runner", "RunnerLogGroup")):
        assert log_group in resources[function]["DependsOn"]


def test_each_function_has_a_role_of_its_own(resources):
    assert resources["APIHandler"]["Properties"]["Role"] == {"Fn::GetAtt": ["ApiRole", "Arn"]}
    assert resources["Runner"]["Properties"]["Role"] == {"Fn::GetAtt": ["RunnerRole", "Arn"]}
    for role in ("ApiRole", "RunnerRole"):
        for statement in statements(resources, role):
            resource = statement["Resource"]
            for one in resource if isinstance(resource, list) else [resource]:
                # Named from this stack: an attribute of one of its resources, or an ARN
                # built with the stack's partition, region and account.
                assert "Fn::GetAtt" in one or re.match(
                    r"\$\{\w+\.Arn\}/|arn:\$\{AWS::Partition\}:\w+:\$\{AWS::Region\}:"
                    r"\$\{AWS::AccountId\}:",
                    one["Fn::Sub"],
                ), (role, one)
            assert statement["Effect"] == "Allow" and not any(a.endswith("*") for a in statement["Action"])


def test_the_api_may_use_its_data_read_users_invoke_the_runner_and_manage_its_rules(resources):
    def may(action):
        return allowed(resources, "ApiRole", action)

    everything_in_the_bucket = [{"Fn::Sub": "${NotebookFiles.Arn}/*"}]
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert may(action) == everything_in_the_bucket
    assert may("s3:ListBucket") == [{"Fn::GetAtt": ["NotebookFiles", "Arn"]}]
    notebooks = [{"Fn::Sub": "${NotebookFiles.Arn}/notebooks/*"}]  # a run's pinned version; an undone write
    assert may("s3:GetObjectVersion") == may("s3:DeleteObjectVersion") == notebooks
    tables = [
        {"Fn::GetAtt": ["NotebooksTable", "Arn"]},
        {"Fn::Sub": "${NotebooksTable.Arn}/index/*"},
        {"Fn::GetAtt": ["RunsTable", "Arn"]},
        {"Fn::Sub": "${RunsTable.Arn}/index/*"},
    ]
    users = [{"Fn::GetAtt": ["UsersTable", "Arn"]}]
    # Transactions (TransactWriteItems) are authorised by their Put, Update and Delete actions.
    for action in ("dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query", "dynamodb:BatchGetItem"):
        assert may(action) == tables
    assert may("dynamodb:GetItem") == may("dynamodb:UpdateItem") == tables + users  # users: failed logins
    assert may("dynamodb:Scan") == may("dynamodb:BatchWriteItem") == may("dynamodb:ConditionCheckItem") == []
    assert may("lambda:InvokeFunction") == [{"Fn::GetAtt": ["Runner", "Arn"]}]
    rules = [{"Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:rule/notebooks-${Stage}-*"}]
    for action in ("events:PutRule", "events:PutTargets", "events:RemoveTargets", "events:DeleteRule"):
        assert may(action) == rules


def test_the_runner_may_read_notebooks_write_outputs_and_records_and_remove_rules_only(resources):
    def may(action):
        return allowed(resources, "RunnerRole", action)

    assert may("s3:GetObject") == may("s3:GetObjectVersion") == [{"Fn::Sub": "${NotebookFiles.Arn}/notebooks/*"}]
    assert may("s3:DeleteObjectVersion") == []
    assert may("s3:PutObject") == may("s3:DeleteObject") == [{"Fn::Sub": "${NotebookFiles.Arn}/runs/*"}]
    assert may("s3:ListBucket") == []
    for statement in statements(resources, "RunnerRole"):
        assert "UsersTable" not in json.dumps(statement["Resource"])
    runs, notebooks = {"Fn::GetAtt": ["RunsTable", "Arn"]}, {"Fn::GetAtt": ["NotebooksTable", "Arn"]}
    # A firing records its run with its pointer and counters, and removes the oldest runs
    # past those kept; every run's end counts it off its owner's active runs.
    for action in (
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchGetItem",
    ):
        assert may(action) == [runs, notebooks]
    # the notebook's run pointers, and the active runs' index (the fair queue, the reaper)
    assert may("dynamodb:Query") == [notebooks, {"Fn::Sub": "${RunsTable.Arn}/index/by_status"}]
    assert may("dynamodb:Scan") == may("dynamodb:BatchWriteItem") == []
    # itself only: the next drain of the fair queue, the webhook of a run the reaper ended
    assert may("lambda:InvokeFunction") == [
        {"Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${AWS::StackName}-runner"}
    ]
    queue = [{"Fn::GetAtt": ["FailedRunnerEvents", "Arn"]}]
    assert may("sqs:ReceiveMessage") == may("sqs:DeleteMessage") == may("sqs:GetQueueAttributes") == queue
    assert may("events:PutRule") == may("events:PutTargets") == []
    assert may("events:DeleteRule") == may("events:RemoveTargets") == may("events:ListTargetsByRule") != []
    assert may("sqs:SendMessage") == [{"Fn::GetAtt": ["FailedRunnerEvents", "Arn"]}]


def test_functions_get_their_resources_by_reference(resources):
    api = resources["APIHandler"]["Properties"]["Environment"]["Variables"]
    runner = resources["Runner"]["Properties"]["Environment"]["Variables"]
    for variables in (api, runner):
        assert variables["NOTEBOOKS_BUCKET"] == {"Ref": "NotebookFiles"}
        assert variables["NOTEBOOKS_TABLE"] == {"Ref": "NotebooksTable"}
        assert variables["NOTEBOOKS_RUNS_TABLE"] == {"Ref": "RunsTable"}
        assert variables["NOTEBOOKS_RULE_PREFIX"] == {"Fn::Sub": "notebooks-${Stage}-"}
    assert api["NOTEBOOKS_USERS_TABLE"] == {"Ref": "UsersTable"} and "NOTEBOOKS_USERS_TABLE" not in runner
    assert api["NOTEBOOKS_RUNNER_FUNCTION"] == {"Ref": "Runner"}
    assert api["NOTEBOOKS_RUNNER_ARN"] == {"Fn::GetAtt": ["Runner", "Arn"]}
    assert api["JUPYTER_DATA_DIR"] == PACKAGED_JUPYTER_DATA


def test_eventbridge_may_invoke_the_runner_for_this_stages_rules_only(template, resources):
    permission = resources["RunnerInvokedByScheduleRules"]["Properties"]
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["FunctionName"] == {"Ref": "Runner"}
    assert permission["SourceArn"]["Fn::Sub"].endswith(":rule/notebooks-${Stage}-*")
    # The longest stage name still leaves room for a notebook id in a rule name.
    longest_stage = int(re.search(r"\{0,(\d+)\}", template["Parameters"]["Stage"]["AllowedPattern"]).group(1)) + 1
    assert len(f"notebooks-{'s' * longest_stage}-") + UUID_LENGTH <= EVENTBRIDGE_RULE_NAME_LIMIT


def test_the_stack_tells_the_operator_where_the_api_and_the_users_are(template):
    outputs = template["Outputs"]
    assert outputs["EndpointURL"]["Value"]["Fn::Sub"].startswith("https://${RestAPI}.execute-api.")
    assert outputs["UsersTable"]["Value"] == {"Ref": "UsersTable"}


def test_the_api_module_loads_none_of_the_notebook_machinery():
    probe = (
        "import sys, app; print(sorted(m for m in ('papermill', 'nbclient', 'ipykernel', 'nbconvert', "
        "'jupyter_client') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def smoke(url: str, password: str) -> subprocess.CompletedProcess:
    """`make smoke URL=url SMOKE_USER=admin` with SMOKE_PASSWORD=password."""
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "smoke", f"URL={url}", "SMOKE_USER=admin"],
        cwd=ROOT,
        env={**os.environ, "SMOKE_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.stack
def test_make_smoke_passes_against_the_local_stack_and_fails_where_a_check_fails():
    state = state_folder()
    stack = RunningStack(state, free_port()).started()
    try:
        passed, refused = smoke(stack.url, "admin"), smoke(stack.url, "not-the-password")
    finally:
        stack.interrupt()
        remove_state(state)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "FAIL" not in passed.stdout
    assert re.search(r"^(\d+) of \1 checks passed$", passed.stdout, re.M), passed.stdout
    for check in ("Run (the seed's sample) until succeeded", "Run output as HTML", "Schedule", "Delete"):
        assert f"PASS  {check}" in passed.stdout
    assert refused.returncode != 0
    assert "FAIL  Create: POST /_notebooks/notebooks/: HTTP 401" in refused.stdout
    assert "2 of 3 checks passed" in refused.stdout


def test_fargate_runs_the_same_image_with_the_fargate_entry_point_and_configured_size(template, resources):
    task = resources["RunnerTaskDefinition"]
    assert task["Condition"] == "FargateEnabled"
    properties = task["Properties"]
    assert properties["RequiresCompatibilities"] == ["FARGATE"] and properties["NetworkMode"] == "awsvpc"
    assert properties["Cpu"] == {"Ref": "FargateCpu"} and properties["Memory"] == {"Ref": "FargateMemoryMB"}
    assert properties["TaskRoleArn"] == {"Fn::GetAtt": ["RunnerTaskRole", "Arn"]}
    assert properties["ExecutionRoleArn"] == {"Fn::GetAtt": ["RunnerTaskExecutionRole", "Arn"]}
    [container] = properties["ContainerDefinitions"]
    assert container["Name"] == Settings().ecs_container  # what the dispatcher's overrides name
    assert container["Image"] == {"Ref": "RunnerImageUri"}
    # RunTask appends the run id: python3 -m chalicelib.runner.fargate_task <run id>, in the task root.
    assert container["EntryPoint"] == ["python3", "-m", "chalicelib.runner.fargate_task"]
    assert container["StopTimeout"] == 120  # Fargate's longest grace between SIGTERM and SIGKILL
    assert (ROOT / "chalicelib" / "runner/fargate_task.py").exists() and container["WorkingDirectory"] == "/var/task"
    assert container["ReadonlyRootFilesystem"] is True
    assert container["MountPoints"] == [{"SourceVolume": "tmp", "ContainerPath": "/tmp"}]
    environment = {pair["Name"]: pair["Value"] for pair in container["Environment"]}
    # A task serves one run: no kernel waits ahead of it, so none preloads modules.
    assert environment["NOTEBOOKS_PRELOAD_MODULES"] == ""
    assert Settings.from_env({"NOTEBOOKS_PRELOAD_MODULES": ""}).preload_modules == ()
    runner = resources["Runner"]["Properties"]["Environment"]["Variables"]
    assert runner["NOTEBOOKS_PRELOAD_MODULES"] == {"Ref": "PreloadModules"}  # the runner function's warm kernel
    for name in ("NOTEBOOKS_BUCKET", "NOTEBOOKS_TABLE", "NOTEBOOKS_RUNS_TABLE", "NOTEBOOKS_RULE_PREFIX"):
        assert environment[name] == runner[name]
    assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "RunnerTaskLogGroup"}
    assert resources["RunnerTaskLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    parameters = template["Parameters"]
    assert parameters["FargateCpu"]["Default"] == "1024" and parameters["FargateMemoryMB"]["Default"] == 4096
    assert parameters["MaxRunTimeoutSeconds"]["Default"] == 12 * 3600
    assert resources["RunnerCluster"]["Type"] == "AWS::ECS::Cluster"


def _resolved(value, parameters: dict, fargate: bool):
    """A function's environment value as CloudFormation resolves it, for the parameters
    given and the FargateEnabled condition."""
    if not isinstance(value, dict):
        return str(value)
    [(function, argument)] = value.items()
    if function == "Fn::If":
        condition, when_true, when_false = argument
        if condition == "RunnerConcurrencyReserved":
            reserved = parameters.get("RunnerReservedConcurrency", "0") != "0"
            return _resolved(when_true if reserved else when_false, parameters, fargate)
        assert condition == "FargateEnabled"
        return _resolved(when_true if fargate else when_false, parameters, fargate)
    if function == "Fn::Join":
        separator, listed = argument
        return separator.join(_resolved(listed, parameters, fargate).split(","))
    if function == "Ref":
        return parameters.get(argument, f"<{argument}>")
    return f"<{function}>"


def test_the_dispatchers_of_both_functions_find_fargate_once_the_stack_has_a_task_definition(template, resources):
    defaults = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    condition = template["Conditions"]["FargateEnabled"]["Fn::And"]
    assert {"Fn::Not": [{"Fn::Equals": [{"Ref": "RunnerImageUri"}, ""]}]} in condition
    assert {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "FargateSubnets"}]}, ""]}]} in condition
    # Tasks of untrusted notebooks are never put in the VPC's default security group.
    assert {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "FargateSecurityGroups"}]}, ""]}]} in condition
    given = {
        **defaults,
        "FargateSubnets": "subnet-1,subnet-2",
        "FargateSecurityGroups": "sg-1",
        "RunnerImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/runner:1",
        "RunnerTaskDefinition": "arn:task-definition/notebooks-dev-runner:3",
        "RunnerCluster": "runs",
    }
    for function in ("APIHandler", "Runner"):
        variables = resources[function]["Properties"]["Environment"]["Variables"]
        assert not Settings.from_env({k: _resolved(v, defaults, False) for k, v in variables.items()}).fargate
        settings = Settings.from_env({k: _resolved(v, given, True) for k, v in variables.items()})
        assert settings.fargate and settings.ecs_cluster == "runs"
        assert settings.ecs_task_definition == "arn:task-definition/notebooks-dev-runner:3"
        assert settings.ecs_subnets == ("subnet-1", "subnet-2") and settings.ecs_security_groups == ("sg-1",)
        assert settings.ecs_container == "runner" and settings.ecs_assign_public_ip
        assert settings.max_run_timeout == 12 * 3600


def test_the_runner_starts_this_stacks_tasks_passing_only_the_task_roles_and_both_functions_stop_them(resources):
    task_definitions = [
        {
            "Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:"
            "task-definition/${AWS::StackName}-runner:*"
        }
    ]
    assert resources["RunnerTaskDefinition"]["Properties"]["Family"] == {"Fn::Sub": "${AWS::StackName}-runner"}
    for role in ("ApiRole", "RunnerRole"):
        assert allowed(resources, role, "ecs:StopTask") == [
            {"Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task/${RunnerCluster}/*"}
        ]
    # The API only queues runs: the runner function drains the Fargate pool, starting the
    # tasks, and its reaper looks for stopped ones.
    for action in ("ecs:RunTask", "iam:PassRole", "ecs:DescribeTasks"):
        assert allowed(resources, "ApiRole", action) == []
    assert allowed(resources, "RunnerRole", "ecs:DescribeTasks") == allowed(resources, "RunnerRole", "ecs:StopTask")
    assert allowed(resources, "RunnerRole", "ecs:RunTask") == task_definitions
    [start] = [s for s in statements(resources, "RunnerRole") if "ecs:RunTask" in s["Action"]]
    assert start["Condition"] == {"ArnEquals": {"ecs:cluster": {"Fn::GetAtt": ["RunnerCluster", "Arn"]}}}
    assert allowed(resources, "RunnerRole", "iam:PassRole") == [
        {"Fn::GetAtt": ["RunnerTaskRole", "Arn"]},
        {"Fn::GetAtt": ["RunnerTaskExecutionRole", "Arn"]},
    ]
    [passing] = [s for s in statements(resources, "RunnerRole") if "iam:PassRole" in s["Action"]]
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    assert allowed(resources, "RunnerRole", "ecs:RegisterTaskDefinition") == []


def test_the_task_role_is_the_runners_on_the_data_and_the_execution_role_pulls_and_logs(resources):
    def trusted(role):
        [trust] = resources[role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        return trust["Principal"]["Service"]

    assert trusted("RunnerTaskRole") == trusted("RunnerTaskExecutionRole") == "ecs-tasks.amazonaws.com"
    runner_data = [
        s
        for s in statements(resources, "RunnerRole")
        if s["Sid"] not in ("Logs", "FailedEvents", "ActiveRuns", "ConsumeFailedEvents")
        and not s["Action"][0].startswith(("ecs:", "iam:", "events:"))
    ]
    assert statements(resources, "RunnerTaskRole") == runner_data
    for action in (
        "ecs:RunTask",
        "iam:PassRole",
        "sqs:SendMessage",
        "logs:PutLogEvents",
        "events:DeleteRule",
        "events:RemoveTargets",
    ):
        assert allowed(resources, "RunnerTaskRole", action) == []

    def may(action):
        return allowed(resources, "RunnerTaskExecutionRole", action)

    assert (
        may("ecr:BatchGetImage")
        == may("ecr:GetDownloadUrlForLayer")
        == [{"Fn::Sub": "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/*"}]
    )
    assert may("logs:PutLogEvents") == [{"Fn::GetAtt": ["RunnerTaskLogGroup", "Arn"]}]
    assert may("s3:GetObject") == may("dynamodb:GetItem") == []
    # A task's run's end drains the Fargate pool: it invokes the runner function, by name.
    assert allowed(resources, "RunnerTaskRole", "lambda:InvokeFunction") == [
        {"Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${AWS::StackName}-runner"}
    ]
    [container] = resources["RunnerTaskDefinition"]["Properties"]["ContainerDefinitions"]
    task_environment = {variable["Name"]: variable["Value"] for variable in container["Environment"]}
    assert task_environment["NOTEBOOKS_RUNNER_FUNCTION"] == {"Fn::Sub": "${AWS::StackName}-runner"}


def test_the_fair_queue_and_the_rule_budget_are_sized_by_parameters(template, resources):
    defaults = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
    for function in ("APIHandler", "Runner"):
        variables = resources[function]["Properties"]["Environment"]["Variables"]
        settings = Settings.from_env({k: _resolved(v, defaults, False) for k, v in variables.items()})
        assert settings.runner_capacity == int(defaults["RunnerReservedConcurrency"]) == 10
        # Runs take 8 of the 10: 2 invocations are always there for drains, the reaper, deliveries.
        assert (settings.runner_headroom, settings.runner_slots()) == (2, 8)
        assert settings.running_per_user() == int(defaults["MaxRunningRunsPerUser"]) <= settings.runner_slots()
        # The Fargate pool: its capacity a parameter, each user at most MaxRunningRunsPerUser of it.
        assert settings.fargate_capacity == int(defaults["FargateCapacity"]) == 10
        assert settings.running_per_user(Pool.FARGATE) == 5
        smaller = Settings.from_env(
            {k: _resolved(v, {**defaults, "FargateCapacity": "3"}, True) for k, v in variables.items()}
        )
        assert (smaller.runner_slots(Pool.FARGATE), smaller.running_per_user(Pool.FARGATE)) == (3, 3)
        # the active-runs quota: what one user's slots finish within the queue timeout, not 2,000
        assert settings.max_active_runs is None  # unset: derived
        assert settings.active_runs_quota() == 5 * int(MAX_EVENT_AGE_SECONDS // settings.run_timeout)
        assert settings.max_scheduled_total == int(defaults["MaxScheduledTotal"]) == 250 < 300
        assert settings.max_scheduled == int(defaults["MaxScheduledPerUser"]) < settings.max_scheduled_total
        unreserved = Settings.from_env(
            {k: _resolved(v, {**defaults, "RunnerReservedConcurrency": "0"}, False) for k, v in variables.items()}
        )
        assert unreserved.runner_capacity == 10
        # What the waiting kernel preloads: a parameter, empty turning it off.
        assert settings.preload_modules == ("numpy", "pandas", "matplotlib")
        emptied = {**defaults, "PreloadModules": ""}
        assert Settings.from_env({k: _resolved(v, emptied, False) for k, v in variables.items()}).preload_modules == ()
    runner = resources["Runner"]["Properties"]["Environment"]["Variables"]
    assert runner["NOTEBOOKS_RUNNER_FUNCTION"] == {"Fn::Sub": "${AWS::StackName}-runner"}
    assert resources["Runner"]["Properties"]["FunctionName"] == runner["NOTEBOOKS_RUNNER_FUNCTION"]


def test_the_reaper_runs_every_few_minutes_and_the_failed_events_have_a_consumer(template, resources):
    rule = resources["ReaperRule"]["Properties"]
    assert rule["ScheduleExpression"] == {"Fn::Sub": "rate(${ReaperRateMinutes} minutes)"}
    assert int(template["Parameters"]["ReaperRateMinutes"]["Default"]) <= 5
    [target] = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["Runner", "Arn"]} and json.loads(target["Input"]) == {"reap": {}}
    permission = resources["RunnerInvokedByReaper"]["Properties"]
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["SourceArn"] == {"Fn::GetAtt": ["ReaperRule", "Arn"]}
    consumer = resources["FailedRunnerEventsConsumer"]
    assert consumer["Type"] == "AWS::Lambda::EventSourceMapping"
    assert consumer["Properties"]["EventSourceArn"] == {"Fn::GetAtt": ["FailedRunnerEvents", "Arn"]}
    assert consumer["Properties"]["FunctionName"] == {"Ref": "Runner"}
    # Lambda requires the queue's visibility timeout to cover the consumer's timeout.
    visibility = resources["FailedRunnerEvents"]["Properties"]["VisibilityTimeout"]
    assert visibility >= resources["Runner"]["Properties"]["Timeout"]


def test_the_api_function_has_a_full_vcpu_for_its_1000_id_requests(resources):
    """Lambda gives CPU in proportion to memory, one vCPU at 1,769 MB: the 1,000-id
    requests are CPU-bound (botocore's work per call), and docs/performance.md's
    estimates assume a full core."""
    assert resources["APIHandler"]["Properties"]["MemorySize"] >= 1769


def test_the_api_function_has_room_for_owasps_scrypt(resources):
    """A login's scrypt check at N=2^17, r=8 takes 128 MiB, beside the function's own."""
    from chalicelib.auth.logins import SCRYPT_N

    scrypt_mib = 128 * SCRYPT_N * 8 / 2**20
    assert scrypt_mib == 128 and resources["APIHandler"]["Properties"]["MemorySize"] >= 4 * scrypt_mib
    assert "NOTEBOOKS_PASSWORD_SCRYPT_N" not in json.dumps(resources)  # the default, OWASP's, applies


def test_the_api_stage_is_throttled_by_parameters(template, resources):
    [settings] = resources["RestAPI"]["Properties"]["MethodSettings"]
    assert settings == {
        "ResourcePath": "/*",
        "HttpMethod": "*",
        "ThrottlingRateLimit": {"Ref": "ApiThrottleRateLimit"},
        "ThrottlingBurstLimit": {"Ref": "ApiThrottleBurstLimit"},
    }
    parameters = template["Parameters"]
    assert 0 < parameters["ApiThrottleRateLimit"]["Default"] <= parameters["ApiThrottleBurstLimit"]["Default"]


def test_the_api_function_has_a_reserved_concurrency_of_its_own(template, resources):
    assert resources["APIHandler"]["Properties"]["ReservedConcurrentExecutions"] == {
        "Fn::If": ["ApiConcurrencyReserved", {"Ref": "ApiReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    assert template["Conditions"]["ApiConcurrencyReserved"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ApiReservedConcurrency"}, 0]}]
    }
    assert template["Parameters"]["ApiReservedConcurrency"]["Default"] > 0


def test_an_optional_waf_web_acl_blocks_a_source_past_its_rate_on_the_api_stage(template, resources):
    assert template["Parameters"]["ApiWafEnabled"]["Default"] == "false"
    assert template["Conditions"]["ApiWafEnabled"] == {"Fn::Equals": [{"Ref": "ApiWafEnabled"}, "true"]}
    acl, association = resources["ApiWebAcl"], resources["ApiWebAclAssociation"]
    assert acl["Condition"] == association["Condition"] == "ApiWafEnabled"
    assert acl["Properties"]["Scope"] == "REGIONAL" and acl["Properties"]["DefaultAction"] == {"Allow": {}}
    [rule] = acl["Properties"]["Rules"]
    assert rule["Action"] == {"Block": {}}
    assert rule["Statement"] == {"RateBasedStatement": {"Limit": {"Ref": "ApiWafRateLimit"}, "AggregateKeyType": "IP"}}
    assert association["Properties"]["WebACLArn"] == {"Fn::GetAtt": ["ApiWebAcl", "Arn"]}
    arn = association["Properties"]["ResourceArn"]["Fn::Sub"]
    assert arn.endswith("/restapis/${RestAPI}/stages/${RestAPI.Stage}") and ":apigateway:${AWS::Region}::" in arn
