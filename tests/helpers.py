"""Helpers shared by test modules: snapshots of everything stored."""
import boto3


def stored_state(settings) -> tuple:
    """(S3 objects with their ETags, every notebooks-table item): to prove nothing changed."""
    s3 = boto3.client("s3", region_name=settings.region)
    objects = sorted(
        (item["Key"], item["ETag"]) for item in s3.list_objects_v2(Bucket=settings.bucket).get("Contents", [])
    )
    table = boto3.resource("dynamodb", region_name=settings.region).Table(settings.notebooks_table)
    items = sorted(table.scan()["Items"], key=lambda item: (item["owner"], item["sk"]))
    return objects, items
