"""AWS clients, made in one place from configuration.

Clients are created on first use, never at import time, so tests (moto) and the local
stack (moto's server, reached through `AWS_ENDPOINT_URL`) can redirect them.
"""

import threading
from typing import Any

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError

_lock = threading.Lock()
_session = None
_clients: dict[tuple, Any] = {}
_resources: dict[tuple, Any] = {}
_RETRIES = Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32)
# Service models are large JSON files: load them once per process, not once per session.
_models = botocore.loaders.create_loader()


def _current_session() -> boto3.session.Session:
    global _session
    if _session is None:
        core = botocore.session.get_session()
        core.register_component("data_loader", _models)
        _session = boto3.session.Session(botocore_session=core)
    return _session


def client(service: str, region: str):
    """A shared, thread-safe boto3 client for `service` in `region`."""
    key = (service, region)
    with _lock:  # boto3 sessions are not thread-safe; creating clients is serialised.
        if key not in _clients:
            _clients[key] = _current_session().client(service, region_name=region, config=_RETRIES)
        return _clients[key]


def dynamodb_table(name: str, region: str):
    """A DynamoDB Table resource: plain Python values in, plain values out."""
    key = (name, region)
    with _lock:
        if key not in _resources:
            resource = _current_session().resource("dynamodb", region_name=region, config=_RETRIES)
            _resources[key] = resource.Table(name)
        return _resources[key]


def error_code(error: Exception) -> str:
    """The AWS error code of a botocore ClientError (e.g. "NoSuchKey"), else ""."""
    response = getattr(error, "response", None) or {}
    return response.get("Error", {}).get("Code", "")


def failure_reason(error: Exception) -> str:
    """A short cause of an AWS failure, for a client or a log: the operation and AWS error
    code, never the raw message."""
    if isinstance(error, ClientError):
        return f"AWS refused {error.operation_name} ({error_code(error) or 'UnknownError'})"
    return f"AWS call failed ({type(error).__name__})"


# Codes of failures that pass: AWS asks the caller to slow down or try again later.
_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestThrottled",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "TransactionInProgressException",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)


def is_transient(error: Exception) -> bool:
    """Whether an AWS failure is the service's, not a refusal of the request: a timeout or
    lost connection, throttling, or a 5xx. The same request later may succeed."""
    response = getattr(error, "response", None)
    if response is None:
        return True  # BotoCoreError: timeouts, connection errors, no answer at all
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return status >= 500 or error_code(error) in _TRANSIENT_CODES


def all_items(operation, **request) -> list:
    """Every item of a DynamoDB Query or Scan (`table.query`, `table.scan`), page by page."""
    items = []
    while True:
        page = operation(**request)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def reset():
    """Forget the session and every client, so the next use reads the environment again."""
    global _session
    with _lock:
        _session = None
        _clients.clear()
        _resources.clear()
