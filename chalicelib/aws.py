"""AWS clients, made in one place from configuration.

Clients are created on first use, never at import time, so tests (moto) and the local
stack (moto's server, reached through `AWS_ENDPOINT_URL`) can redirect them.
"""
import threading

import boto3
from botocore.config import Config

_lock = threading.Lock()
_clients = {}
_resources = {}
_RETRIES = Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32)


def client(service: str, region: str):
    """A shared, thread-safe boto3 client for `service` in `region`."""
    key = (service, region)
    with _lock:  # boto3 sessions are not thread-safe; creating clients is serialised.
        if key not in _clients:
            _clients[key] = boto3.session.Session().client(service, region_name=region, config=_RETRIES)
        return _clients[key]


def dynamodb_table(name: str, region: str):
    """A DynamoDB Table resource: plain Python values in, plain values out."""
    key = (name, region)
    with _lock:
        if key not in _resources:
            resource = boto3.session.Session().resource("dynamodb", region_name=region, config=_RETRIES)
            _resources[key] = resource.Table(name)
        return _resources[key]


def reset():
    """Forget every client, so the next use reads the environment again (tests)."""
    with _lock:
        _clients.clear()
        _resources.clear()
