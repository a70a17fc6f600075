"""The local stack behind `make dev`: embedded AWS (moto's server on loopback) and Chalice's
local server, with local stand-ins for Lambda (a worker pool) and the EventBridge clock.

No AWS account and no Docker: everything runs in this one process, and stops with it.
"""
import logging
import os
import re
import signal
import socket
import sys
import threading

from . import aws, services
from .config import Settings
from .metadata import create_tables
from .users import UserStore, parse_user_list

log = logging.getLogger("notebooks.localstack")

# Credentials for the embedded AWS only: moto accepts any, real AWS none of these.
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def provision(settings: Settings, users=()) -> None:
    """Create the bucket and tables (if missing) and add `users` [(name, password)]."""
    s3 = aws.client("s3", settings.region)
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    if settings.bucket not in existing:
        s3.create_bucket(Bucket=settings.bucket)
    create_tables(aws.client("dynamodb", settings.region), settings)
    store = UserStore(aws.dynamodb_table(settings.users_table, settings.region))
    for name, password in users:
        store.add(name, password)
