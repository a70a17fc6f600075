"""The deployed stack beyond Chalice's own resources: a CloudFormation fragment that
`make package` merges into Chalice's template (`chalice package --merge-template`).

- the bucket (versioned, encrypted, private, TLS only) and the three tables (designed in
  storage/tables.py, defined once there), all retained when the stack is deleted;
- one IAM role per function, naming exact resources (Ref, GetAtt, ${AWS::Partition});
- the runner's asynchronous invocation settings, reserved concurrency, /tmp size, a queue
  for the events it could not take, and both functions' log groups with a retention;
- parameters for what differs between deployments (Stage, retention days, concurrency,
  the fair queue's per-user limit, the schedule quotas);
- the API's protection: stage throttling (a rate and a burst for the whole stage), the
  API function's reserved concurrency (a floor for the API and a ceiling on what it can
  take of the account's), and optionally a WAF web ACL on the stage with a rate-based
  rule per source address;
- the reaper's EventBridge rule, which invokes the runner every few minutes with
  `{"reap": {}}`, and the event source mapping that feeds the failed events' queue to
  the runner (runs/reaper.py);
- the runner as a container image (SAM builds it from the Metadata's Docker context,
  which `make package` writes), and for runs longer than Lambda's 15 minutes an ECS
  cluster and a Fargate task definition of the same image, with a task role as narrow
  as the runner's and an execution role that pulls the image and writes its logs. The
  task definition exists once the stack is given the image's URI and subnets.

No resource has a fixed physical name: CloudFormation names them after the stack, so two
stages (two stacks) live side by side in one account and region, and a stack can be
created again after deletion although its retained data is still there.
"""

import json

from chalicelib.common import runner_events
from chalicelib.common.config import Settings
from chalicelib.storage.files import RESPONSES_PREFIX
from chalicelib.storage.tables import BY_STATUS, TTL_ATTRIBUTE, table_definitions

# Chalice's logical ids for app.py's two functions.
API_FUNCTION, RUNNER_FUNCTION = "APIHandler", "Runner"
# Lambda's runtime for both functions (the runner image's base is AWS's image of it), on
# Amazon Linux 2023, whichever Python runs `chalice package`; the package's dependencies
# are built for it (deploy/package.py). Both run on x86_64 (.chalice/config.json's
# lambda_architecture, and the Fargate task's CpuArchitecture): the wheels are built for it.
RUNTIME = "python3.13"
ARCHITECTURE = "x86_64"
# Where `make package` writes the API function's code and the runner image's Docker
# context (deploy/Dockerfile and the task tree it copies), relative to the template.
CODE_URI = "./notebooks-lambda.zip"
IMAGE_CONTEXT = "runner-image"
# Properties of a .zip function that an image function must not have.
_ZIP_ONLY = ("Runtime", "Handler", "CodeUri", "Layers")
# The Fargate task's container (NOTEBOOKS_ECS_CONTAINER), and what it runs: the runner
# handler for the run whose id RunTask appends as the command (runs/engines.py's FargateTasks).
TASK_CONTAINER = "runner"
TASK_ENTRY_POINT = ["python3", "-m", "chalicelib.runner.fargate_task"]
TASK_ROOT = "/var/task"  # where Lambda unzips the package, and the image and the task run from
FARGATE_CPU_CHOICES = ["256", "512", "1024", "2048", "4096", "8192", "16384"]
# The Lambda package keeps Jupyter's data files (nbconvert's templates) beside the
# packages, where `pip install --target` puts them. Named as Jupyter's data folder, it is
# also where nbconvert looks instead of a home folder, which Lambda's user has none of.
PACKAGED_JUPYTER_DATA = "/var/task/share/jupyter"
# Lambda's longest wait for an asynchronous event: also how long a queued run may wait
# for a runner (NOTEBOOKS_QUEUE_TIMEOUT) before the API reports it lost.
MAX_EVENT_AGE_SECONDS = 6 * 3600
RUNNER_RETRY_ATTEMPTS = 2
LOG_RETENTION_CHOICES = [
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
]
RULE_PREFIX = {"Fn::Sub": "notebooks-${Stage}-"}

PARAMETERS = {
    "Stage": {
        "Type": "String",
        "Default": "dev",
        "AllowedPattern": "^[a-z][a-z0-9-]{0,15}$",
        "Description": "Stage name (lower case, at most 16 characters): names this stage's schedule rules, "
        "notebooks-<Stage>-<notebook id> (EventBridge allows 64 characters)",
    },
    "NoncurrentVersionDays": {
        "Type": "Number",
        "Default": 30,
        "MinValue": 1,
        "Description": "Days an overwritten or deleted notebook file or output stays recoverable",
    },
    "RunOutputDays": {
        "Type": "Number",
        "Default": 0,
        "MinValue": 0,
        "Description": "Days after which executed notebooks (runs/) expire; 0 keeps them",
    },
    "RunnerReservedConcurrency": {
        "Type": "Number",
        "Default": 10,
        "MinValue": 0,
        "Description": "Concurrency reserved for the runner, so runs cannot take the API's: runs execute "
        "at most 2 fewer at once (RUNNER_HEADROOM: kept for drains, the reaper and webhook deliveries); "
        "0 reserves none",
    },
    "ApiThrottleRateLimit": {
        "Type": "Number",
        "Default": 50,
        "MinValue": 1,
        "Description": "Requests per second the API stage serves, in a steady state, over all clients; "
        "API Gateway answers 429 past it",
    },
    "ApiThrottleBurstLimit": {
        "Type": "Number",
        "Default": 100,
        "MinValue": 1,
        "Description": "Requests the API stage serves at once in a burst, over all clients",
    },
    "ApiReservedConcurrency": {
        "Type": "Number",
        "Default": 20,
        "MinValue": 0,
        "Description": "Concurrency reserved for the API function: always available to it, and all it may use "
        "of the account's; 0 reserves none",
    },
    "ApiWafEnabled": {
        "Type": "String",
        "Default": "false",
        "AllowedValues": ["true", "false"],
        "Description": "Whether a WAF web ACL guards the API stage, blocking a source address past ApiWafRateLimit "
        "(WAF is billed per web ACL and per request)",
    },
    "ApiWafRateLimit": {
        "Type": "Number",
        "Default": 1000,
        "MinValue": 100,
        "MaxValue": 2000000000,
        "Description": "Requests one source address may make in any 5 minutes before the WAF blocks it",
    },
    "MaxRunningRunsPerUser": {
        "Type": "Number",
        "Default": 5,
        "MinValue": 1,
        "Description": "Runs one user may have executing at once in each pool (the fair queue: "
        "docs/fair-share.md); the runner's capacity is RunnerReservedConcurrency (10 when 0) less 2, "
        "Fargate's is FargateCapacity",
    },
    "MaxScheduledTotal": {
        "Type": "Number",
        "Default": 250,
        "MinValue": 1,
        "Description": "Scheduled notebooks of all users together, one EventBridge rule each: keep it below the "
        "account's rule quota per region (300 by default), less the rules of other stacks",
    },
    "MaxScheduledPerUser": {
        "Type": "Number",
        "Default": 200,
        "MinValue": 1,
        "Description": "Scheduled notebooks per user (at most MaxScheduledTotal in effect)",
    },
    "ReaperRateMinutes": {
        "Type": "Number",
        "Default": 2,
        "MinValue": 2,
        "Description": "Minutes between the reaper's rounds, which fail runs past their deadline",
    },
    "RunnerEphemeralStorageMB": {
        "Type": "Number",
        "Default": 2048,
        "MinValue": 512,
        "MaxValue": 10240,
        "Description": "Size of the runner's /tmp, where notebooks run",
    },
    "LogRetentionDays": {
        "Type": "Number",
        "Default": 30,
        "AllowedValues": LOG_RETENTION_CHOICES,
        "Description": "Days the functions' and the Fargate tasks' logs are kept",
    },
    "MaxRunTimeoutSeconds": {
        "Type": "Number",
        "Default": 12 * 3600,
        "MinValue": 60,
        "Description": "The longest timeout a run may ask for; beyond Lambda's it runs on Fargate, when set up",
    },
    "RunnerImageUri": {
        "Type": "String",
        "Default": "",
        "Description": "The runner image in ECR, for Fargate tasks: the runner function's image "
        "(aws lambda get-function ... --query Code.ImageUri); empty: no Fargate",
    },
    "FargateSubnets": {
        "Type": "CommaDelimitedList",
        "Default": "",
        "Description": "Subnets of the Fargate tasks, comma-separated; empty: no Fargate",
    },
    "FargateSecurityGroups": {
        "Type": "CommaDelimitedList",
        "Default": "",
        "Description": "Security groups of the Fargate tasks, comma-separated: notebooks are untrusted code, so "
        "no inbound rules and outbound HTTPS only; empty: no Fargate (never the VPC's default group)",
    },
    "FargateAssignPublicIp": {
        "Type": "String",
        "Default": "true",
        "AllowedValues": ["true", "false"],
        "Description": "Whether tasks get a public IP (subnets without a NAT gateway or VPC endpoints need one)",
    },
    "FargateCapacity": {
        "Type": "Number",
        "Default": 10,
        "MinValue": 1,
        "Description": "Fargate tasks running at once, all users together (the fair queue's Fargate pool: "
        "docs/fair-share.md); each user at most MaxRunningRunsPerUser of them. Keep it within the account's "
        "Fargate vCPU quota at FargateCpu each",
    },
    "PreloadModules": {
        "Type": "String",
        "Default": "numpy,pandas,matplotlib",
        "AllowedPattern": "^[A-Za-z0-9_.,]*$",
        "Description": "Modules the runner's waiting kernel imports before its run (NOTEBOOKS_PRELOAD_MODULES, "
        "docs/runtime.md), comma-separated; empty: none. Leave it empty where notebooks do not use them, or "
        "where most runs are the first of a new runner container",
    },
    "FargateCpu": {
        "Type": "String",
        "Default": "1024",
        "AllowedValues": FARGATE_CPU_CHOICES,
        "Description": "CPU units of a Fargate run (1024 = 1 vCPU)",
    },
    "FargateMemoryMB": {
        "Type": "Number",
        "Default": 4096,
        "MinValue": 512,
        "MaxValue": 122880,
        "Description": "Memory of a Fargate run, a size Fargate allows with FargateCpu",
    },
}
# The fair queue's capacity when no concurrency is reserved for the runner.
UNRESERVED_RUNNER_CAPACITY = 10
# Of the runner's concurrency, invocations never taken by runs (NOTEBOOKS_RUNNER_HEADROOM):
# a drain of the Fargate pool, the reaper or a webhook delivery does not wait for a run to end.
RUNNER_HEADROOM = 2
CONDITIONS = {
    "RunOutputsExpire": {"Fn::Not": [{"Fn::Equals": [{"Ref": "RunOutputDays"}, 0]}]},
    "RunnerConcurrencyReserved": {"Fn::Not": [{"Fn::Equals": [{"Ref": "RunnerReservedConcurrency"}, 0]}]},
    "ApiConcurrencyReserved": {"Fn::Not": [{"Fn::Equals": [{"Ref": "ApiReservedConcurrency"}, 0]}]},
    "ApiWafEnabled": {"Fn::Equals": [{"Ref": "ApiWafEnabled"}, "true"]},
    "FargateEnabled": {
        "Fn::And": [
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "RunnerImageUri"}, ""]}]},
            {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "FargateSubnets"}]}, ""]}]},
            {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "FargateSecurityGroups"}]}, ""]}]},
        ]
    },
}


def _retained(resource_type: str, properties: dict) -> dict:
    return {
        "Type": resource_type,
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Properties": properties,
    }


def _table(definition: dict) -> dict:
    properties = {key: value for key, value in definition.items() if key != "TableName"}
    return _retained(
        "AWS::DynamoDB::Table",
        {
            **properties,
            "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
            "DeletionProtectionEnabled": True,
        },
    )


def _bucket() -> dict:
    keep_old_versions = {
        "Id": "ExpireOldVersions",
        "Status": "Enabled",
        "NoncurrentVersionExpiration": {"NoncurrentDays": {"Ref": "NoncurrentVersionDays"}},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }
    expire_outputs = {
        "Id": "ExpireRunOutputs",
        "Status": "Enabled",
        "Prefix": "runs/",
        "ExpirationInDays": {"Ref": "RunOutputDays"},
    }
    return _retained(
        "AWS::S3::Bucket",
        {
            "VersioningConfiguration": {"Status": "Enabled"},
            "LifecycleConfiguration": {
                "Rules": [
                    keep_old_versions,
                    {"Fn::If": ["RunOutputsExpire", expire_outputs, {"Ref": "AWS::NoValue"}]},
                    # Answers too large for a Lambda response wait here for their 5-minute link.
                    {
                        "Id": "ExpireLargeResponses",
                        "Status": "Enabled",
                        "Prefix": RESPONSES_PREFIX,
                        "ExpirationInDays": 1,
                    },
                ]
            },
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
        },
    )


def _bucket_policy() -> dict:
    return {
        "Type": "AWS::S3::BucketPolicy",
        "Properties": {
            "Bucket": {"Ref": "NotebookFiles"},
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "DenyWithoutTLS",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "s3:*",
                        "Resource": [{"Fn::GetAtt": ["NotebookFiles", "Arn"]}, {"Fn::Sub": "${NotebookFiles.Arn}/*"}],
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    }
                ],
            },
        },
    }


def _objects(prefix: str) -> dict:
    return {"Fn::Sub": "${NotebookFiles.Arn}/" + prefix + "*"}


# The runner's own ARN, built from its name: a Ref or GetAtt in its own role would be circular.
_RUNNER_NAME = {"Fn::Sub": "${AWS::StackName}-runner"}
_RUNNER_ARN = {
    "Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:${AWS::StackName}-runner"
}


def _table_and_indexes(logical_id: str) -> list:
    return [{"Fn::GetAtt": [logical_id, "Arn"]}, {"Fn::Sub": "${" + logical_id + ".Arn}/index/*"}]


_RULES = {
    "Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:rule/" + RULE_PREFIX["Fn::Sub"] + "*"
}


def _logs(log_group: str) -> dict:
    return {
        "Sid": "Logs",
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": {"Fn::GetAtt": [log_group, "Arn"]},
    }


def api_statements() -> list:
    """The API function's permissions: its bucket, the notebook and run tables (items
    one at a time or in transactions, which need the same actions, and BatchGetItem for
    requests of many ids), reading the users table and counting failed logins there,
    invoking the runner, and managing this stage's schedule rules."""
    return [
        _logs("ApiLogGroup"),
        {
            "Sid": "NotebookFiles",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": _objects(""),
        },
        # Runs pin a notebook's version; a content write that cannot be recorded removes its version.
        {
            "Sid": "NotebookVersions",
            "Effect": "Allow",
            "Action": ["s3:GetObjectVersion", "s3:DeleteObjectVersion"],
            "Resource": _objects("notebooks/"),
        },
        # Without it, S3 answers a missing object 403, not 404 (a deleted notebook's file).
        {
            "Sid": "ListNotebookFiles",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": {"Fn::GetAtt": ["NotebookFiles", "Arn"]},
        },
        {
            "Sid": "NotebooksAndRuns",
            "Effect": "Allow",
            "Action": [
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "dynamodb:Query",
                "dynamodb:BatchGetItem",
            ],
            "Resource": _table_and_indexes("NotebooksTable") + _table_and_indexes("RunsTable"),
        },
        {
            "Sid": "UsersAndLoginFailures",
            "Effect": "Allow",
            "Action": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
            "Resource": {"Fn::GetAtt": ["UsersTable", "Arn"]},
        },
        {
            "Sid": "DispatchRuns",
            "Effect": "Allow",
            "Action": ["lambda:InvokeFunction"],
            "Resource": {"Fn::GetAtt": [RUNNER_FUNCTION, "Arn"]},
        },
        {
            "Sid": "ScheduleRules",
            "Effect": "Allow",
            "Action": ["events:PutRule", "events:PutTargets", "events:RemoveTargets", "events:DeleteRule"],
            "Resource": _RULES,
        },
    ]


def runner_statements() -> list:
    """The runner's permissions, which executes untrusted code: read notebooks, write
    (and delete, when the notebook went while it ran) outputs, create and end run
    records, remove a rule that expired or has no schedule behind it and the rules a
    Delete handed over, and report events it could not take. A run's end
    counts it off its owner's active runs (the notebooks table's counters). A schedule
    firing records its run with the run's pointer and counters in one transaction,
    removes the notebook's oldest runs past the number kept (their outputs, records and
    pointers, found by a Query of the notebook's pointers and a BatchGetItem), and an
    expiry and its lock update the notebook. Nothing on the users table, no invoking, no
    creating rules. The fair queue and the reaper Query the runs table's `by_status`
    index (active runs only); the runner invokes itself (the next drain, a webhook
    delivery of a run the reaper ended), and consumes its failed events' queue."""
    return [
        _logs("RunnerLogGroup"),
        {
            "Sid": "ReadNotebooks",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": _objects("notebooks/"),
        },
        {
            "Sid": "WriteOutputs",
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:DeleteObject"],
            "Resource": _objects("runs/"),
        },
        {
            "Sid": "RunRecords",
            "Effect": "Allow",
            "Action": [
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "dynamodb:BatchGetItem",
            ],
            "Resource": {"Fn::GetAtt": ["RunsTable", "Arn"]},
        },
        {
            "Sid": "NotebookRecords",
            "Effect": "Allow",
            "Action": [
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "dynamodb:Query",
                "dynamodb:BatchGetItem",
            ],
            "Resource": {"Fn::GetAtt": ["NotebooksTable", "Arn"]},
        },
        {
            "Sid": "ActiveRuns",
            "Effect": "Allow",
            "Action": ["dynamodb:Query"],
            "Resource": {"Fn::Sub": "${RunsTable.Arn}/index/" + BY_STATUS},
        },
        {
            "Sid": "InvokeRunner",
            "Effect": "Allow",
            "Action": ["lambda:InvokeFunction"],
            "Resource": _RUNNER_ARN,
        },
        {
            "Sid": "ConsumeFailedEvents",
            "Effect": "Allow",
            "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
            "Resource": {"Fn::GetAtt": ["FailedRunnerEvents", "Arn"]},
        },
        {
            "Sid": "RemoveLeftoverRules",
            "Effect": "Allow",
            "Action": ["events:ListTargetsByRule", "events:RemoveTargets", "events:DeleteRule"],
            "Resource": _RULES,
        },
        {
            "Sid": "FailedEvents",
            "Effect": "Allow",
            "Action": ["sqs:SendMessage"],
            "Resource": {"Fn::GetAtt": ["FailedRunnerEvents", "Arn"]},
        },
    ]


_CLUSTER_TASKS = {"Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task/${RunnerCluster}/*"}


def stop_task_statements() -> list:
    """Stopping the runner's Fargate tasks (a cancel's backstop, in the API and in the
    runner): StopTask of this stack's cluster's tasks."""
    return [
        {
            "Sid": "StopRunTasks",
            "Effect": "Allow",
            "Action": ["ecs:StopTask"],
            "Resource": _CLUSTER_TASKS,
        },
    ]


def fargate_statements() -> list:
    """Starting, watching and stopping the runner's Fargate tasks (the runner function,
    which drains the fair queue's Fargate pool and reaps the runs of stopped tasks):
    RunTask of this stack's task definition in its cluster, DescribeTasks and StopTask of
    that cluster's tasks, and passing the task's two roles to ECS, no other role and to no
    other service."""
    return [
        {
            "Sid": "DescribeRunTasks",
            "Effect": "Allow",
            "Action": ["ecs:DescribeTasks"],
            "Resource": _CLUSTER_TASKS,
        },
        {
            "Sid": "StartRunTasks",
            "Effect": "Allow",
            "Action": ["ecs:RunTask"],
            "Resource": _TASK_DEFINITIONS,
            "Condition": {"ArnEquals": {"ecs:cluster": {"Fn::GetAtt": ["RunnerCluster", "Arn"]}}},
        },
        *stop_task_statements(),
        {
            "Sid": "PassTaskRoles",
            "Effect": "Allow",
            "Action": ["iam:PassRole"],
            "Resource": [{"Fn::GetAtt": ["RunnerTaskRole", "Arn"]}, {"Fn::GetAtt": ["RunnerTaskExecutionRole", "Arn"]}],
            "Condition": {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
        },
    ]


def task_statements() -> list:
    """The Fargate task's permissions: the runner's on the data, and invoking the runner
    function (its run's end drains the Fargate pool), nothing else (its logs go through the
    execution role; failed Lambda events, the fair queue, the reaper and the rules the
    runner function removes are no concern of a task, which runs one run by its id)."""
    runner_only = ("Logs", "FailedEvents", "RemoveLeftoverRules", "ActiveRuns", "ConsumeFailedEvents")
    return [s for s in runner_statements() if s["Sid"] not in runner_only]


def task_execution_statements() -> list:
    """What ECS needs to start a task: pull the image from this account's ECR, write the
    task's log group."""
    return [
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
        {
            "Sid": "PullImage",
            "Effect": "Allow",
            "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            "Resource": {"Fn::Sub": "arn:${AWS::Partition}:ecr:${AWS::Region}:${AWS::AccountId}:repository/*"},
        },
        _logs("RunnerTaskLogGroup"),
    ]


_TASK_FAMILY = {"Fn::Sub": "${AWS::StackName}-runner"}
_TASK_DEFINITIONS = {
    "Fn::Sub": "arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:task-definition/${AWS::StackName}-runner:*"
}


def _role(statements: list, service: str = "lambda.amazonaws.com") -> dict:
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
            },
            "Policies": [
                {"PolicyName": "notebooks", "PolicyDocument": {"Version": "2012-10-17", "Statement": statements}}
            ],
        },
    }


def _log_group(function_suffix: str) -> dict:
    # Named as Lambda names it, after the function; deleted with the stack, so that a
    # stack of the same name can be created again.
    return {
        "Type": "AWS::Logs::LogGroup",
        "Properties": {
            "LogGroupName": {"Fn::Sub": "/aws/lambda/${AWS::StackName}-" + function_suffix},
            "RetentionInDays": {"Ref": "LogRetentionDays"},
        },
    }


def _environment(**variables) -> dict:
    return {"Environment": {"Variables": variables}}


def _fargate_environment() -> dict:
    """What the dispatcher reads (common/config.py) to start a run's task; all empty, so no
    Fargate, until the stack has the task definition."""

    def when_fargate(value):
        return {"Fn::If": ["FargateEnabled", value, ""]}

    return {
        "NOTEBOOKS_MAX_RUN_TIMEOUT": {"Ref": "MaxRunTimeoutSeconds"},
        "NOTEBOOKS_ECS_CLUSTER": when_fargate({"Ref": "RunnerCluster"}),
        "NOTEBOOKS_ECS_TASK_DEFINITION": when_fargate({"Ref": "RunnerTaskDefinition"}),
        "NOTEBOOKS_ECS_SUBNETS": when_fargate({"Fn::Join": [",", {"Ref": "FargateSubnets"}]}),
        "NOTEBOOKS_ECS_SECURITY_GROUPS": {"Fn::Join": [",", {"Ref": "FargateSecurityGroups"}]},
        "NOTEBOOKS_ECS_CONTAINER": TASK_CONTAINER,
        "NOTEBOOKS_ECS_ASSIGN_PUBLIC_IP": {"Ref": "FargateAssignPublicIp"},
        "NOTEBOOKS_FARGATE_CAPACITY": {"Ref": "FargateCapacity"},
    }


def _task_definition(data: dict) -> dict:
    """One run per task: the runner image with the fargate_task entry point (RunTask adds
    the run id as its command), Lambda's layout (read-only root, a writable /tmp). A task
    serves one run, so no kernel waits ahead of it: nothing is preloaded."""
    environment = {
        **data,
        "HOME": "/tmp",
        "NOTEBOOKS_MAX_RUN_TIMEOUT": {"Ref": "MaxRunTimeoutSeconds"},
        # Its run's end drains the Fargate pool through the runner function.
        "NOTEBOOKS_RUNNER_FUNCTION": _RUNNER_NAME,
        "NOTEBOOKS_PRELOAD_MODULES": "",
    }
    return {
        "Type": "AWS::ECS::TaskDefinition",
        "Condition": "FargateEnabled",
        "Properties": {
            "Family": _TASK_FAMILY,
            "RequiresCompatibilities": ["FARGATE"],
            "NetworkMode": "awsvpc",
            "Cpu": {"Ref": "FargateCpu"},
            "Memory": {"Ref": "FargateMemoryMB"},
            "RuntimePlatform": {"OperatingSystemFamily": "LINUX", "CpuArchitecture": ARCHITECTURE.upper()},
            "TaskRoleArn": {"Fn::GetAtt": ["RunnerTaskRole", "Arn"]},
            "ExecutionRoleArn": {"Fn::GetAtt": ["RunnerTaskExecutionRole", "Arn"]},
            "Volumes": [{"Name": "tmp"}],
            "ContainerDefinitions": [
                {
                    "Name": TASK_CONTAINER,
                    "Image": {"Ref": "RunnerImageUri"},
                    "Essential": True,
                    "EntryPoint": TASK_ENTRY_POINT,
                    # StopTask's SIGTERM cancels the run: the most Fargate allows between it and
                    # SIGKILL, to store the output so far, record the end and notify the webhook.
                    "StopTimeout": 120,
                    "WorkingDirectory": TASK_ROOT,
                    "ReadonlyRootFilesystem": True,
                    "MountPoints": [{"SourceVolume": "tmp", "ContainerPath": "/tmp"}],
                    "Environment": [{"Name": name, "Value": value} for name, value in environment.items()],
                    "LogConfiguration": {
                        "LogDriver": "awslogs",
                        "Options": {
                            "awslogs-group": {"Ref": "RunnerTaskLogGroup"},
                            "awslogs-region": {"Ref": "AWS::Region"},
                            "awslogs-stream-prefix": "run",
                        },
                    },
                }
            ],
        },
    }


def _reserved_concurrency(condition: str, parameter: str) -> dict:
    return {"Fn::If": [condition, {"Ref": parameter}, {"Ref": "AWS::NoValue"}]}


def _api_protection() -> dict:
    """Stage throttling for Chalice's RestAPI, and the optional WAF web ACL on its stage."""
    visibility = lambda name: {  # noqa: E731
        "SampledRequestsEnabled": True,
        "CloudWatchMetricsEnabled": True,
        "MetricName": {"Fn::Sub": "${AWS::StackName}-" + name},
    }
    return {
        "RestAPI": {
            "Properties": {
                "MethodSettings": [
                    {
                        "ResourcePath": "/*",
                        "HttpMethod": "*",
                        "ThrottlingRateLimit": {"Ref": "ApiThrottleRateLimit"},
                        "ThrottlingBurstLimit": {"Ref": "ApiThrottleBurstLimit"},
                    }
                ]
            }
        },
        "ApiWebAcl": {
            "Type": "AWS::WAFv2::WebACL",
            "Condition": "ApiWafEnabled",
            "Properties": {
                "Scope": "REGIONAL",
                "DefaultAction": {"Allow": {}},
                "VisibilityConfig": visibility("api"),
                "Rules": [
                    {
                        "Name": "requests-per-source-address",
                        "Priority": 0,
                        "Action": {"Block": {}},
                        "Statement": {
                            "RateBasedStatement": {"Limit": {"Ref": "ApiWafRateLimit"}, "AggregateKeyType": "IP"}
                        },
                        "VisibilityConfig": visibility("api-rate"),
                    }
                ],
            },
        },
        "ApiWebAclAssociation": {
            "Type": "AWS::WAFv2::WebACLAssociation",
            "Condition": "ApiWafEnabled",
            "Properties": {
                # RestAPI.Stage: SAM's stage of the API, which the association then follows.
                "ResourceArn": {
                    "Fn::Sub": "arn:${AWS::Partition}:apigateway:${AWS::Region}::"
                    "/restapis/${RestAPI}/stages/${RestAPI.Stage}"
                },
                "WebACLArn": {"Fn::GetAtt": ["ApiWebAcl", "Arn"]},
            },
        },
    }


def image_runner(template: dict) -> dict:
    """Chalice's template with the runner function as a container image: its handler
    becomes the image's command, and Chalice's .zip properties go (a merge can only add)."""
    runner = template["Resources"][RUNNER_FUNCTION]["Properties"]
    runner["ImageConfig"] = {"Command": [runner["Handler"]]}
    for name in _ZIP_ONLY:
        runner.pop(name, None)
    return template


def merge_template(settings: Settings | None = None) -> dict:
    """The CloudFormation fragment to merge into Chalice's template (`settings`: read from the
    environment when the fragment is made, not when this module is imported)."""
    settings = settings or Settings()
    notebooks, runs, users = (_table(d) for d in table_definitions(settings))
    # Run tokens (token#... items) and failed-login windows expire by themselves.
    for table in (notebooks, users):
        table["Properties"]["TimeToLiveSpecification"] = {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    data = {
        "NOTEBOOKS_BUCKET": {"Ref": "NotebookFiles"},
        "NOTEBOOKS_TABLE": {"Ref": "NotebooksTable"},
        "NOTEBOOKS_RUNS_TABLE": {"Ref": "RunsTable"},
        "NOTEBOOKS_RULE_PREFIX": RULE_PREFIX,
        "NOTEBOOKS_RUNNER_CAPACITY": {
            "Fn::If": ["RunnerConcurrencyReserved", {"Ref": "RunnerReservedConcurrency"}, UNRESERVED_RUNNER_CAPACITY]
        },
        "NOTEBOOKS_RUNNER_HEADROOM": str(RUNNER_HEADROOM),
        "NOTEBOOKS_PRELOAD_MODULES": {"Ref": "PreloadModules"},
        "NOTEBOOKS_MAX_RUNNING": {"Ref": "MaxRunningRunsPerUser"},
        "NOTEBOOKS_MAX_SCHEDULED": {"Ref": "MaxScheduledPerUser"},
        "NOTEBOOKS_MAX_SCHEDULED_TOTAL": {"Ref": "MaxScheduledTotal"},
    }
    return {
        "Parameters": PARAMETERS,
        "Conditions": CONDITIONS,
        "Resources": {
            "NotebookFiles": _bucket(),
            "NotebookFilesPolicy": _bucket_policy(),
            "NotebooksTable": notebooks,
            "RunsTable": runs,
            "UsersTable": users,
            "ApiRole": _role(api_statements() + stop_task_statements()),
            "RunnerRole": _role(runner_statements() + fargate_statements()),
            "ApiLogGroup": _log_group("api"),
            "RunnerLogGroup": _log_group("runner"),
            "RunnerCluster": {"Type": "AWS::ECS::Cluster", "Properties": {"CapacityProviders": ["FARGATE"]}},
            "RunnerTaskRole": _role(task_statements(), "ecs-tasks.amazonaws.com"),
            "RunnerTaskExecutionRole": _role(task_execution_statements(), "ecs-tasks.amazonaws.com"),
            "RunnerTaskLogGroup": {
                "Type": "AWS::Logs::LogGroup",
                "Properties": {"RetentionInDays": {"Ref": "LogRetentionDays"}},
            },
            "RunnerTaskDefinition": _task_definition(data),
            "FailedRunnerEvents": {
                "Type": "AWS::SQS::Queue",
                # Lambda asks for a visibility timeout of at least the consumer function's timeout.
                "Properties": {
                    "MessageRetentionPeriod": 14 * 24 * 3600,
                    "SqsManagedSseEnabled": True,
                    "VisibilityTimeout": 6 * 900,
                },
            },
            "FailedRunnerEventsConsumer": {
                "Type": "AWS::Lambda::EventSourceMapping",
                "Properties": {
                    "EventSourceArn": {"Fn::GetAtt": ["FailedRunnerEvents", "Arn"]},
                    "FunctionName": {"Ref": RUNNER_FUNCTION},
                    "BatchSize": 10,
                },
            },
            "ReaperRule": {
                "Type": "AWS::Events::Rule",
                "Properties": {
                    "Description": "Fails runs past their deadline (the runner's reaper)",
                    "ScheduleExpression": {"Fn::Sub": "rate(${ReaperRateMinutes} minutes)"},
                    "State": "ENABLED",
                    "Targets": [
                        {
                            "Id": "reaper",
                            "Arn": {"Fn::GetAtt": [RUNNER_FUNCTION, "Arn"]},
                            "Input": json.dumps(runner_events.reap()),
                        }
                    ],
                },
            },
            "RunnerInvokedByReaper": {
                "Type": "AWS::Lambda::Permission",
                "Properties": {
                    "Action": "lambda:InvokeFunction",
                    "FunctionName": {"Ref": RUNNER_FUNCTION},
                    "Principal": "events.amazonaws.com",
                    "SourceArn": {"Fn::GetAtt": ["ReaperRule", "Arn"]},
                },
            },
            API_FUNCTION: {
                "DependsOn": ["ApiLogGroup"],
                "Properties": {
                    "FunctionName": {"Fn::Sub": "${AWS::StackName}-api"},
                    "Runtime": RUNTIME,
                    "CodeUri": CODE_URI,
                    "Role": {"Fn::GetAtt": ["ApiRole", "Arn"]},
                    "ReservedConcurrentExecutions": _reserved_concurrency(
                        "ApiConcurrencyReserved", "ApiReservedConcurrency"
                    ),
                    **_environment(
                        **data,
                        NOTEBOOKS_USERS_TABLE={"Ref": "UsersTable"},
                        JUPYTER_DATA_DIR=PACKAGED_JUPYTER_DATA,
                        NOTEBOOKS_RUNNER_FUNCTION={"Ref": RUNNER_FUNCTION},
                        NOTEBOOKS_RUNNER_ARN={"Fn::GetAtt": [RUNNER_FUNCTION, "Arn"]},
                        **_fargate_environment(),
                    ),
                },
            },
            RUNNER_FUNCTION: {
                "DependsOn": ["RunnerLogGroup"],
                "Properties": {
                    "FunctionName": _RUNNER_NAME,
                    "PackageType": "Image",
                    "Role": {"Fn::GetAtt": ["RunnerRole", "Arn"]},
                    **_environment(**data, NOTEBOOKS_RUNNER_FUNCTION=_RUNNER_NAME, **_fargate_environment()),
                    "EphemeralStorage": {"Size": {"Ref": "RunnerEphemeralStorageMB"}},
                    "ReservedConcurrentExecutions": _reserved_concurrency(
                        "RunnerConcurrencyReserved", "RunnerReservedConcurrency"
                    ),
                    "EventInvokeConfig": {
                        "MaximumRetryAttempts": RUNNER_RETRY_ATTEMPTS,
                        "MaximumEventAgeInSeconds": MAX_EVENT_AGE_SECONDS,
                        "DestinationConfig": {
                            "OnFailure": {"Type": "SQS", "Destination": {"Fn::GetAtt": ["FailedRunnerEvents", "Arn"]}}
                        },
                    },
                },
                "Metadata": {"Dockerfile": "Dockerfile", "DockerContext": "./" + IMAGE_CONTEXT, "DockerTag": RUNTIME},
            },
            **_api_protection(),
            "RunnerInvokedByScheduleRules": {
                "Type": "AWS::Lambda::Permission",
                "Properties": {
                    "Action": "lambda:InvokeFunction",
                    "FunctionName": {"Ref": RUNNER_FUNCTION},
                    "Principal": "events.amazonaws.com",
                    "SourceAccount": {"Ref": "AWS::AccountId"},
                    "SourceArn": _RULES,
                },
            },
        },
        "Outputs": {
            "NotebookFilesBucket": {"Value": {"Ref": "NotebookFiles"}},
            "UsersTable": {
                "Value": {"Ref": "UsersTable"},
                "Description": "NOTEBOOKS_USERS_TABLE for `python -m chalicelib.auth.users`",
            },
            "FailedRunnerEventsQueue": {"Value": {"Ref": "FailedRunnerEvents"}},
            "RunnerCluster": {"Value": {"Ref": "RunnerCluster"}, "Description": "The Fargate runs' ECS cluster"},
        },
    }
