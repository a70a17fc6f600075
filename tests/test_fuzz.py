"""Hostile clients: schemathesis against the local stack from its OpenAPI document, every
route without credentials, the HTTP layer's own refusals, a content PUT racing a delete,
and the bad inputs that used to reach a 500. Every answer is in the seed's error shape
and changes nothing."""

import base64
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import requests

import app
from chalicelib.api import openapi
from chalicelib.api.payloads import MAX_DEPTH
from chalicelib.api.web import OPENAPI_PATH
from devstack.stack import free_port
from tests.conftest import error
from tests.helpers import TALLY, stored_state
from tests.local_stack import RunningStack, remove_state, state_folder
from tests.test_operations import raw_http

ROOT = Path(__file__).resolve().parent.parent
BASE = "/_notebooks/notebooks"
ADMIN = ("admin", "admin")
# Schemathesis's time budget: its three phases (examples, coverage, fuzzing) share it.
FUZZ_SECONDS = int(os.environ.get("FUZZ_SECONDS", "45"))
FUZZ_SEED = os.environ.get("FUZZ_SEED", "20261127")
RACE_TRIES = 50


@pytest.fixture(scope="module")
def fuzzed_stack():
    """A local stack of its own. Schemathesis's `ignored_auth` check sends wrong passwords
    for admin on purpose, so failed logins are not throttled here (tests/test_throttling.py)."""
    state = state_folder()
    stack = RunningStack(state, free_port(), NOTEBOOKS_LOGIN_ATTEMPTS="1000000").started()
    try:
        yield stack
    finally:
        stack.interrupt()
        remove_state(state)


def answered_requests(stack) -> int:
    """Requests the stack's app has answered so far (one access-log line each)."""
    return sum('"duration_ms"' in line for line in list(stack.lines))


@pytest.mark.fuzz
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(fuzzed_stack, tmp_path):
    """Every check but the two that contradict the seed's contract: positive data
    acceptance (the seed answers an unknown id with 400, not 404) and negative data
    rejection (the seed's Run sample is JSON5, so Run accepts more than JSON)."""
    before = answered_requests(fuzzed_stack)
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        fuzzed_stack.url + OPENAPI_PATH,
        "--auth",
        "admin:admin",
        "--exclude-checks",
        "positive_data_acceptance,negative_data_rejection",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-time",
        str(FUZZ_SECONDS),
        "--seed",
        FUZZ_SEED,
        "--workers",
        "2",
        "--request-timeout",
        "20",
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    # In a folder of its own: schemathesis keeps a cache of what it found where it runs.
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120)
    output = result.stdout + result.stderr
    fuzzed = answered_requests(fuzzed_stack) - before
    TALLY["requests fuzzed"] += fuzzed
    assert result.returncode == 0, output[-6000:]
    operations = sum(len([m for m in item if m != "parameters"]) for item in openapi.document()["paths"].values())
    assert re.search(rf"Tested: {operations}\b", output), output[-3000:]  # every operation of the document
    assert fuzzed > 100, output[-3000:]


def test_every_route_but_the_openapi_document_needs_credentials():
    """Walks the app's route table: no route answers anything but 401 without credentials."""
    from chalice.test import Client

    walked = 0
    with Client(app.app) as client:
        for path, methods in app.app.routes.items():
            concrete = re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)
            for method in methods:
                response = client.http.request(
                    method, concrete, headers={"Content-Type": "application/json"}, body=b"{}"
                )
                walked += 1
                if path == OPENAPI_PATH:
                    assert response.status_code == 200
                    continue
                assert error(response) == (401, "Authentication required"), (method, path)
                assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert walked >= 18


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "FOO"])
@pytest.mark.stack
def test_methods_the_server_does_not_know_are_405_in_the_seed_shape(fuzzed_stack, method):
    response = requests.request(method, fuzzed_stack.url + BASE + "/_count", auth=ADMIN)
    assert response.status_code == 405 and response.json() == {
        "error": {"status": 405, "message": f"Unsupported method: {method}"}
    }
    assert "GET" in response.headers["Allow"]


@pytest.mark.stack
def test_methods_a_route_does_not_take_are_405_in_the_seed_shape(fuzzed_stack):
    document = requests.get(fuzzed_stack.url + OPENAPI_PATH).json()
    tried = 0
    for path, operations in document["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)
        for method in {"get", "put", "post", "delete", "patch"} - set(operations):
            response = requests.request(method.upper(), fuzzed_stack.url + concrete, auth=ADMIN)
            assert response.status_code == 405, (method, path, response.text)
            assert response.json()["error"]["status"] == 405
            tried += 1
    assert tried > 20


@pytest.mark.stack
def test_oversized_request_lines_and_headers_are_414_and_431_in_the_seed_shape(fuzzed_stack):
    auth = b"Authorization: Basic " + base64.b64encode(b"admin:admin") + b"\r\n"
    cases = [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (
            b"GET "
            + BASE.encode()
            + b"/_count HTTP/1.1\r\nHost: x\r\n"
            + auth
            + b"X-Big: "
            + b"a" * 70_000
            + b"\r\n\r\n",
            431,
        ),
        (
            b"GET "
            + BASE.encode()
            + b"/_count HTTP/1.1\r\nHost: x\r\n"
            + auth
            + b"".join(b"X-%d: 1\r\n" % i for i in range(120))
            + b"\r\n",
            431,
        ),
    ]
    for request, status in cases:
        head, _, body = raw_http(fuzzed_stack.url, request).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d" % status), head
        assert json.loads(body)["error"]["status"] == status


@pytest.mark.stack
def test_a_body_over_the_limit_is_a_413_the_client_reads(fuzzed_stack):
    """12 MB sent whole before the answer is read: urllib and requests both get the 413."""
    url, body = fuzzed_stack.url + BASE + "/", b"x" * 12_000_000
    response = requests.post(url, data=body, auth=ADMIN)
    assert response.status_code == 413 and response.json()["error"]["status"] == 413
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413 and json.loads(refused.value.read())["error"]["status"] == 413
    assert requests.get(fuzzed_stack.url + BASE + "/_count", auth=ADMIN).status_code == 200  # still serving


@pytest.mark.stack
def test_a_content_put_racing_a_delete_never_leaves_a_file(fuzzed_stack):
    """Over HTTP, with real threads, RACE_TRIES times: whichever wins, no file outlives
    its notebook, and the PUT answers success or `Notebook ID invalid.`."""
    url, eve = fuzzed_stack.url, ("eve", "eve-pw")
    s3 = fuzzed_stack.embedded_aws("s3")
    # Large enough that validating it takes a while: the delete runs meanwhile.
    content = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [{"cell_type": "markdown", "id": f"c{i}", "metadata": {}, "source": "x" * 1000} for i in range(500)],
    }
    answers, deletes = [], []
    for _ in range(RACE_TRIES):
        notebook_id = requests.post(url + BASE + "/", auth=eve).json()["notebook_id"]
        start = threading.Barrier(2)

        def put(start, notebook_id):
            start.wait()
            answers.append(requests.put(f"{url}{BASE}/{notebook_id}/content", auth=eve, json=content).json())

        def delete(start, notebook_id):
            start.wait()
            deletes.append(requests.delete(url + BASE + "/", auth=eve, json={"nbk_ids": [notebook_id]}).json())

        threads = [threading.Thread(target=task, args=(start, notebook_id)) for task in (put, delete)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        left = s3.list_objects_v2(Bucket="notebooks-files", Prefix=f"notebooks/eve/{notebook_id}")
        assert left.get("KeyCount") == 0, f"the PUT's file outlived notebook {notebook_id}"
    assert all(a in ("Success", {"error": {"status": 400, "message": "Notebook ID invalid."}}) for a in answers)
    assert len(answers) == RACE_TRIES and deletes == ["Success"] * RACE_TRIES
    TALLY["race tries"] += RACE_TRIES


# --- the bad inputs that used to reach a 500 ---------------------------------------


def nested(depth: int):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


def token(**key) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def test_deep_nesting_anywhere_is_a_400_naming_the_field_and_changes_nothing(api, stack):
    notebook_id = api.create()["notebook_id"]
    before = stored_state(stack.settings)
    notebook = {"nbformat": 4, "nbformat_minor": 5, "cells": [], "metadata": {"deep": nested(490)}}
    cases = [
        ("POST", BASE + "/", {"content": notebook}, "content"),
        ("PUT", f"{BASE}/{notebook_id}/content", notebook, "metadata"),
        (
            "POST",
            BASE + "/_run",
            {"nbkIds": [notebook_id], "module": "m", "parameters": {"p": nested(900)}},
            "parameters",
        ),
        ("POST", BASE + "/_schedule", {"nbk_ids": [notebook_id], "until": nested(MAX_DEPTH + 1)}, "until"),
        # Deeper than Python's own JSON parser goes: sent as text.
        ("PUT", f"{BASE}/{notebook_id}", '{"new_name": "x", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested"),
    ]
    for method, path, body, field in cases:
        raw = body if isinstance(body, str) else None
        status, message = error(api.call(method, path, None if raw else body, raw=raw))
        assert status == 400 and field in message, (path, message)
    assert stored_state(stack.settings) == before


def test_nesting_up_to_the_limit_is_accepted(api):
    notebook = {"nbformat": 4, "nbformat_minor": 5, "cells": [], "metadata": {"deep": nested(MAX_DEPTH - 2)}}
    api.json("POST", BASE + "/", {"content": notebook})


@pytest.mark.parametrize(
    "key",
    [
        {"created_at": 10**400},
        {"created_at": True},
        {"created_at": -1},
        {"created_at": 1.5},
        {"created_at": "1"},
        {"sk": "name#x.ipynb"},
        {"sk": "nb#not-a-uuid"},
        {"sk": ["nb#"]},
        {"owner": "bob"},
        {"extra": 1},
    ],
)
def test_every_forged_page_token_field_is_a_400(api, key):
    first = api.create()["notebook_id"]
    api.create()
    listed = api.call("GET", BASE + "/_all?limit=1")
    genuine = json.loads(base64.urlsafe_b64decode(listed.headers["X-Next-Token"]))
    assert genuine["sk"] == "nb#" + first
    forged = token(**{**genuine, **key})
    status, message = error(api.call("GET", f"{BASE}/_all?limit=1&next_token={forged}"))
    assert status == 400 and "next_token" in message
    deeply = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    assert error(api.call("GET", f"{BASE}/_all?limit=1&next_token={deeply}"))[0] == 400
