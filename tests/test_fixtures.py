"""The suite's own fixtures (tests/conftest.py): the `stack` a test gets from a restore of
moto's backends is the one provisioning makes, and what a test changes stays its own."""

import json

import boto3
from moto.core.base_backend import BackendDict

from devstack.stack import provision
from tests.conftest import USERS, provisioned


def provisioned_state(settings) -> dict:
    """What provisioning makes, as AWS describes it: the buckets, their versioning and
    objects, each table's definition and time to live, and every item (a user's password
    hash as its parameters, since each hash has a salt of its own)."""
    s3 = boto3.client("s3", region_name=settings.region)
    dynamodb = boto3.client("dynamodb", region_name=settings.region)
    buckets = {
        bucket["Name"]: (
            s3.get_bucket_versioning(Bucket=bucket["Name"]).get("Status"),
            s3.list_object_versions(Bucket=bucket["Name"]).get("Versions", []),
        )
        for bucket in s3.list_buckets()["Buckets"]
    }
    tables = {}
    for name in dynamodb.list_tables()["TableNames"]:
        described = dynamodb.describe_table(TableName=name)["Table"]
        described.pop("CreationDateTime")
        items = [
            {**item, "password_hash": item["password_hash"]["S"].split("$")[:4]} if "password_hash" in item else item
            for item in dynamodb.scan(TableName=name)["Items"]
        ]
        ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        tables[name] = (described, ttl, sorted(items, key=json.dumps))
    return {"buckets": buckets, "tables": tables}


def test_a_restored_stack_is_a_provisioned_one(stack):
    settings = stack.settings
    provisioned(settings)  # the fixture provisioned or restored with these settings: this restores
    restored = provisioned_state(settings)
    BackendDict.reset()  # moto as a fresh mock_aws starts it
    provision(settings, USERS)
    assert provisioned_state(settings) == restored
    assert set(restored["tables"]) == {settings.notebooks_table, settings.runs_table, settings.users_table}
    assert [item["username"]["S"] for item in restored["tables"][settings.users_table][2]] == ["admin", "bob"]


def test_what_a_test_changes_is_gone_at_the_next_restore(stack):
    settings = stack.settings
    s3 = boto3.client("s3", region_name=settings.region)
    users = boto3.resource("dynamodb", region_name=settings.region).Table(settings.users_table)
    before = provisioned_state(settings)
    s3.put_object(Bucket=settings.bucket, Key="left/over", Body=b"x")
    users.put_item(Item={"username": "carol", "password_hash": "scrypt$1024$8$1$x$y"})
    assert provisioned_state(settings) != before
    provisioned(settings)
    assert provisioned_state(settings) == before
