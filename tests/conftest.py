"""Fixtures: moto's mock_aws for every AWS call, and a Chalice test client with users."""

import base64
import copy
import gc
import json

import boto3
import botocore.loaders
import botocore.session
import pytest
from chalice.test import Client
from moto import mock_aws
from moto.core.base_backend import BackendDict

from chalicelib import services
from chalicelib.common.config import Settings
from devstack import embedded_aws
from devstack.stack import provision

USERS = [("admin", "admin"), ("bob", "bob-secret")]
# AWS's service models, loaded once per process for the tests' own boto3 clients (as
# chalicelib.common.aws loads them once for the project's).
_MODELS = botocore.loaders.create_loader()
# {repr(settings): [(moto's backends of a service, account, region, the backend as
# provisioning left it)]}: what `provisioned` restores.
_PROVISIONED: dict = {}
# After this many tests, a process has loaded most of what it keeps for the session (AWS's
# service models, moto's): a full collection then freezes it (gc.freeze), out of the walk
# of every later full collection, which otherwise spends a tenth of the suite's time on it.
_FREEZE_AFTER = (10, 60)
_tests_done = 0


def basic(user: str, password: str) -> str:
    """An Authorization header value for HTTP Basic."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def aws_env(monkeypatch):
    """A clean environment that points every AWS client at moto."""
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "NOTEBOOKS_CORS_ORIGIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    # Users made at 2^10, not OWASP's 2^17: a hash costs 1 MiB and a few ms, not 128 MiB
    # and a second, and most tests make two users and log both in (tests/test_throttling.py
    # checks the default and the upgrade).
    monkeypatch.setenv("NOTEBOOKS_PASSWORD_SCRYPT_N", str(2**10))
    return monkeypatch


@pytest.fixture
def stack(aws_env):
    """Moto with the bucket, the tables and two users (admin, bob)."""
    embedded_aws.install()
    with mock_aws():
        # mock_aws leaves boto3 without a default session, so the tests' first boto3.client
        # of each kind would load its service model again in every test.
        core = botocore.session.get_session()
        core.register_component("data_loader", _MODELS)
        boto3.setup_default_session(botocore_session=core)
        services.reset()
        provisioned(Settings.from_env())
        yield services.get()
        services.reset()


def provisioned(settings) -> None:
    """`provision(settings, USERS)`, in a mock_aws just started: done once per process and
    settings; after that, moto's backends as provisioning left them are put back instead,
    copies of their own for each test (a millisecond, where provisioning takes a tenth of
    a second: most tests start from it). tests/test_fixtures.py checks that a restored
    stack is a provisioned one."""
    key = repr(settings)
    if key not in _PROVISIONED:
        provision(settings, USERS)
        _PROVISIONED[key] = [
            (backends, account, region, copy.deepcopy(backend))
            for backends in BackendDict._instances
            for account, regional in backends.items()
            for region, backend in regional.items()
        ]
        return
    for backends, account, region, backend in _PROVISIONED[key]:
        backends[account][region] = copy.deepcopy(backend)


class Api:
    """A small HTTP client over Chalice's test client, as a given user."""

    def __init__(self, client):
        self._client = client

    def call(self, method, path, json_body=None, raw=None, user="admin", headers=None):
        passwords = dict(USERS)
        sent = {"Content-Type": "application/json"}
        if user is not None:
            sent["Authorization"] = basic(user, passwords[user])
        sent.update(headers or {})
        body = raw if raw is not None else (json.dumps(json_body) if json_body is not None else b"")
        return self._client.http.request(method, path, headers=sent, body=body)

    def json(self, method, path, json_body=None, expect=200, **kwargs):
        response = self.call(method, path, json_body, **kwargs)
        assert response.status_code == expect, (response.status_code, response.body)
        return json.loads(response.body) if response.body else None

    def create(self, user="admin", **fields):
        return self.json("POST", "/_notebooks/notebooks/", fields or None, user=user)


@pytest.fixture
def api(stack):
    import app

    with Client(app.app) as client:
        yield Api(client)


def error(response) -> tuple:
    """(status, message) of a seed-shaped error body, checking the shape on the way."""
    body = json.loads(response.body)
    assert set(body) == {"error"} and set(body["error"]) == {"status", "message"}, body
    assert body["error"]["status"] == response.status_code
    return body["error"]["status"], body["error"]["message"]


def pytest_collection_finish(session):
    """What collection imported lives as long as the process: frozen (see _FREEZE_AFTER)."""
    gc.collect()
    gc.freeze()


def pytest_runtest_logfinish(nodeid, location):
    """After the tests in _FREEZE_AFTER (their teardown done), freeze what is left alive."""
    global _tests_done
    _tests_done += 1
    if _tests_done in _FREEZE_AFTER:
        gc.collect()
        gc.freeze()


def pytest_terminal_summary(terminalreporter):
    """What the fault, race and fuzz suites tried, when they ran."""
    from tests.helpers import TALLY

    if any(TALLY.values()):
        terminalreporter.write_line(
            f"hostile suites: {TALLY['fault operations']} operations x their steps = {TALLY['fault steps']} "
            f"faulted AWS calls; {TALLY['race tries']} race tries; {TALLY['requests fuzzed']} requests fuzzed"
        )
