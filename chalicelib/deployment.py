"""What a deployed stack needs beyond Chalice's own resources, as a CloudFormation
template that `chalice package --merge-template .chalice/resources.json` merges in:

- the bucket and the three tables (designed in metadata.py, defined once there);
- the runner's name and ARN for the API function (dispatch and schedule targets);
- a Lambda permission that lets EventBridge invoke the runner, for this service's rules only.

    python -m chalicelib.deployment > .chalice/resources.json   # after changing a table
"""
import json
import sys

from .config import Settings
from .files import RESPONSES_PREFIX
from .metadata import TTL_ATTRIBUTE, table_definitions

# Chalice's logical ids for app.py's functions.
API_FUNCTION, RUNNER_FUNCTION = "APIHandler", "Runner"


def _table(definition: dict) -> dict:
    properties = {**definition, "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True}}
    return {"Type": "AWS::DynamoDB::Table", "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
            "Properties": properties}


def merge_template(settings: Settings = Settings()) -> dict:
    """The CloudFormation resources to merge into Chalice's template."""
    notebooks, runs, users = (_table(d) for d in table_definitions(settings))
    # Run tokens (token#... items) expire by themselves.
    notebooks["Properties"]["TimeToLiveSpecification"] = {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    bucket = {
        "Type": "AWS::S3::Bucket",
        "DeletionPolicy": "Retain",
        "UpdateReplacePolicy": "Retain",
        "Properties": {
            "BucketName": {"Fn::Sub": "notebooks-files-${AWS::AccountId}-${AWS::Region}"},
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "BucketEncryption": {"ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
            # Answers too large for a Lambda response wait here for their 5-minute link.
            "LifecycleConfiguration": {"Rules": [{"Id": "expire-large-responses", "Status": "Enabled",
                                                  "Prefix": RESPONSES_PREFIX, "ExpirationInDays": 1}]},
        },
    }
    shared = {"NOTEBOOKS_BUCKET": {"Ref": "NotebookFiles"}}
    rules = {"Fn::Sub": "arn:aws:events:${AWS::Region}:${AWS::AccountId}:rule/" + settings.rule_prefix + "*"}
    return {
        "Resources": {
            "NotebookFiles": bucket,
            "NotebooksTable": notebooks,
            "RunsTable": runs,
            "UsersTable": users,
            RUNNER_FUNCTION: {"Properties": {
                "FunctionName": {"Fn::Sub": "${AWS::StackName}-runner"},
                "Environment": {"Variables": shared},
            }},
            API_FUNCTION: {"Properties": {"Environment": {"Variables": {
                **shared,
                "NOTEBOOKS_RUNNER_FUNCTION": {"Ref": RUNNER_FUNCTION},
                "NOTEBOOKS_RUNNER_ARN": {"Fn::GetAtt": [RUNNER_FUNCTION, "Arn"]},
            }}}},
            "RunnerInvokedByScheduleRules": {
                "Type": "AWS::Lambda::Permission",
                "Properties": {
                    "Action": "lambda:InvokeFunction",
                    "FunctionName": {"Ref": RUNNER_FUNCTION},
                    "Principal": "events.amazonaws.com",
                    "SourceAccount": {"Ref": "AWS::AccountId"},
                    "SourceArn": rules,
                },
            },
        },
        "Outputs": {"NotebookFilesBucket": {"Value": {"Ref": "NotebookFiles"}}},
    }


if __name__ == "__main__":
    json.dump(merge_template(), sys.stdout, indent=2)
    sys.stdout.write("\n")
