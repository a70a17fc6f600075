"""Operations: the users command, CORS, and the real local stack driven over HTTP."""

import base64
import importlib
import io
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
import requests

from chalicelib.auth import users
from devstack.stack import free_port
from tests.local_stack import (
    ADMIN,
    RunningStack,
    alive,
    code_notebook,
    descendants,
    remove_state,
    state_folder,
    wait_for_run,
)

BASE = "/_notebooks/notebooks"


def test_users_command_adds_lists_and_removes(stack, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    assert users.main(["add", "carol", "--password-stdin"]) == 0
    assert stack.users.password_hash("carol").startswith("scrypt$")
    assert stack.authenticator.authenticate("Basic Y2Fyb2w6czNjcmV0") == "carol"  # carol:s3cret
    assert users.main(["list"]) == 0
    assert capsys.readouterr().out.split() == ["added", "carol", "admin", "bob", "carol"]
    assert users.main(["remove", "carol"]) == 0
    assert stack.users.password_hash("carol") is None
    assert users.main(["remove", "carol"]) == 1


@pytest.mark.parametrize("name", ["a/b", "../x", "", "x" * 65, "bad name"])
def test_users_command_refuses_names_unfit_for_paths(stack, monkeypatch, name):
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert users.main(["add", name, "--password-stdin"]) == 2
    assert stack.users.password_hash(name) is None


def test_cors_is_on_for_the_configured_origin_only(stack, monkeypatch):
    from chalice.test import Client

    from tests.conftest import basic

    monkeypatch.setenv("NOTEBOOKS_CORS_ORIGIN", "https://ui.example.com")
    import app

    try:
        importlib.reload(app)
        with Client(app.app) as client:
            response = client.http.get(
                BASE + "/_count", headers={"Authorization": basic("admin", "admin"), "Origin": "https://ui.example.com"}
            )
            assert response.status_code == 200
            assert response.headers["Access-Control-Allow-Origin"] == "https://ui.example.com"
            assert "X-Next-Token" in response.headers["Access-Control-Expose-Headers"]
    finally:
        monkeypatch.delenv("NOTEBOOKS_CORS_ORIGIN")
        importlib.reload(app)


@pytest.fixture(scope="module")
def running_stack():
    """`python -m devstack.stack` (what `make dev` runs) on a free port, with a
    fresh state folder; as `nobody` when the tests run as root."""
    state = state_folder()
    stack = RunningStack(state, free_port()).started()
    yield stack
    if stack.process.poll() is None:
        stack.kill_all()
    remove_state(state)


@pytest.fixture
def local_stack(running_stack):
    return running_stack.url, running_stack.process


@pytest.mark.stack
def test_local_stack_serves_the_api_over_http(local_stack):
    url, _ = local_stack
    admin = ("admin", "admin")
    assert requests.get(url + BASE + "/_count").status_code == 401
    created = requests.post(url + BASE + "/", auth=admin).json()
    notebook_id = created["notebook_id"]
    renamed = requests.put(f"{url}{BASE}/{notebook_id}", auth=admin, json={"new_name": "Résumé 数据"})
    assert renamed.json() == "Rename Successful"
    fetched = requests.get(f"{url}{BASE}/{notebook_id}", auth=admin).json()
    assert fetched["notebook_name"] == "Résumé 数据.ipynb"
    assert requests.get(f"{url}{BASE}/{notebook_id}", auth=("eve", "eve-pw")).status_code == 400
    assert [n["notebook_id"] for n in requests.get(url + BASE + "/_all", auth=admin).json()] == [notebook_id]
    assert requests.get(url + "/" + BASE + "/_count", auth=admin).json()["Total Notebooks"] == 1  # `//` path
    deleted = requests.delete(url + BASE + "/", auth=admin, json={"nbk_ids": [notebook_id]})
    assert deleted.json() == "Success"
    gone = requests.delete(url + BASE + "/", auth=admin, json={"nbk_ids": [notebook_id]})
    assert gone.status_code == 200 and gone.json() == {"error": {"status": 200, "message": "No notebooks deleted"}}
    unknown = requests.get(url + "/no/such/route", auth=admin)
    assert unknown.status_code == 404 and unknown.json()["error"]["status"] == 404


@pytest.mark.stack
def test_local_stack_runs_the_seed_run_sample_as_written(local_stack):
    url, _ = local_stack
    admin = ("admin", "admin")
    notebook = code_notebook("print('ran in the local stack')")
    notebook_id = requests.post(url + BASE + "/", auth=admin, json={"content": notebook}).json()["notebook_id"]
    # curl -X GET 'https://host//_notebooks/notebooks/_run' --data '{nbkIds: [...], module: "notebooks"}'
    response = requests.request(
        "GET",
        url + "//_notebooks/notebooks/_run",
        auth=admin,
        headers={"Content-Type": "application/json"},
        data='{nbkIds: ["%s"], module: "notebooks"}' % notebook_id,
    )
    [run] = response.json()["runs"]
    assert run["status"] == "queued"
    record = wait_for_run(url, run["run_id"], admin)
    assert record["status"] == "succeeded", record
    assert (record["engine"], record["timeout"]) == ("local", 840)
    output = requests.get(f"{url}/_notebooks/runs/{run['run_id']}/output", auth=admin).json()
    assert output["cells"][0]["outputs"][0]["text"] == "ran in the local stack\n"
    page = requests.get(f"{url}/_notebooks/runs/{run['run_id']}/output?format=html", auth=admin)
    assert "ran in the local stack" in page.text and "sandbox" in page.headers["Content-Security-Policy"]


@pytest.mark.stack
def test_local_stack_serves_openapi_without_credentials(local_stack):
    url, _ = local_stack
    document = requests.get(url + "/_notebooks/openapi.json").json()
    assert document["openapi"].startswith("3.") and BASE + "/_run" in document["paths"]


@pytest.mark.stack
def test_local_stack_keeps_names_unique_under_concurrent_requests(local_stack):
    """Many creates at once (many in one second), then many renames to one name."""
    url, _ = local_stack
    admin = ("admin", "admin")
    with ThreadPoolExecutor(16) as pool:
        created = list(pool.map(lambda _: requests.post(url + BASE + "/", auth=admin), range(32)))
    assert [response.status_code for response in created] == [200] * 32
    names = [response.json()["notebook_name"] for response in created]
    assert len(set(names)) == 32
    ids = [response.json()["notebook_id"] for response in created]
    with ThreadPoolExecutor(16) as pool:
        renamed = list(
            pool.map(
                lambda notebook_id: requests.put(f"{url}{BASE}/{notebook_id}", auth=admin, json={"new_name": "one"}),
                ids,
            )
        )
    assert sorted(response.status_code for response in renamed) == [200] + [409] * 31
    listed = [n["notebook_name"] for n in requests.get(url + BASE + "/_all", auth=admin).json()]
    assert listed.count("one.ipynb") == 1
    requests.delete(url + BASE + "/", auth=admin, json={"nbk_ids": ids})


@pytest.mark.stack
def test_local_stack_answers_a_burst_of_clients(local_stack):
    url, _ = local_stack
    with ThreadPoolExecutor(48) as pool:
        answers = list(
            pool.map(
                lambda _: requests.get(url + BASE + "/_count", auth=("admin", "admin"), timeout=60).status_code,
                range(96),
            )
        )
    assert answers == [200] * 96


def raw_http(url, request: bytes) -> bytes:
    """Send `request` as is on a new connection; what comes back."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.stack
def test_local_stack_refuses_oversized_and_malformed_lengths_in_the_seed_shape(local_stack):
    url, _ = local_stack
    auth = base64.b64encode(b"admin:admin")
    head = b"POST /_notebooks/notebooks/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + auth + b"\r\n"
    huge = raw_http(url, head + b"Content-Length: 99999999999\r\n\r\n{")
    assert huge.startswith(b"HTTP/1.1 413") and b'"status":413' in huge
    bogus = raw_http(url, head + b"Content-Length: abc\r\n\r\n")
    assert bogus.startswith(b"HTTP/1.1 400") and b'"status":400' in bogus


@pytest.mark.stack
def test_local_stack_reads_chunked_bodies(local_stack):
    url, _ = local_stack
    admin = ("admin", "admin")
    chunks = (part for part in [b'{"notebook_', b'name": "chunked"}'])  # a generator: sent chunked
    created = requests.post(url + BASE + "/", auth=admin, data=chunks, headers={"Content-Type": "application/json"})
    assert created.json()["notebook_name"] == "chunked.ipynb"


@pytest.mark.stack
def test_local_stack_keeps_rules_and_schedules_together_under_concurrent_requests(running_stack):
    """Schedules and unschedules of the same notebooks at once: afterwards a notebook reads
    Scheduled exactly when its EventBridge rule exists."""
    url, admin = running_stack.url, ("admin", "admin")
    events = running_stack.embedded_aws("events")
    ids = [requests.post(url + BASE + "/", auth=admin).json()["notebook_id"] for _ in range(3)]
    until = (datetime.now(timezone.utc) + timedelta(days=7)).strftime("%Y-%m-%d %H:%M")

    def change(step):
        if step % 3 == 2:
            return requests.post(url + BASE + "/_unschedule", auth=admin, json={"nbk_ids": ids})
        return requests.post(
            url + BASE + "/_schedule", auth=admin, json={"nbk_ids": ids, "until": until, "time": f"0{step % 10}:00"}
        )

    for _ in range(6):
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(change, range(6)))
        assert [answer.status_code for answer in answers] == [200] * 6
        rules = {rule["Name"] for rule in events.list_rules(NamePrefix="notebooks-")["Rules"]}
        for notebook_id in ids:
            scheduled = requests.get(f"{url}{BASE}/{notebook_id}", auth=admin).json()["status"] == "Scheduled"
            assert scheduled == (f"notebooks-{notebook_id}" in rules)
    requests.delete(url + BASE + "/", auth=admin, json={"nbk_ids": ids})
    assert not [r for r in events.list_rules(NamePrefix="notebooks-")["Rules"] if r["Name"][10:] in ids]


@pytest.mark.stack
def test_local_stack_hands_the_rules_of_a_large_delete_to_its_runner(running_stack):
    """Past the 100 rules a Delete removes itself, the rest go to the local runner
    function, which removes them just after the answer."""
    url, admin = running_stack.url, ("admin", "admin")
    events = running_stack.embedded_aws("events")
    ids = [requests.post(url + BASE + "/", auth=admin).json()["notebook_id"] for _ in range(103)]
    # Hours away from now: no firing, which would remove its rule itself, comes meanwhile.
    until = (datetime.now(timezone.utc) + timedelta(days=7, hours=6)).strftime("%Y-%m-%d %H:%M")
    scheduled = requests.post(url + BASE + "/_schedule", auth=admin, json={"nbk_ids": ids, "until": until})
    assert scheduled.json() == "Success"

    def rules_left() -> int:
        pages = events.get_paginator("list_rules").paginate(NamePrefix="notebooks-")
        return len([rule for page in pages for rule in page["Rules"] if rule["Name"][10:] in ids])

    assert rules_left() == 103
    assert requests.delete(url + BASE + "/", auth=admin, json={"nbk_ids": ids}).json() == "Success"
    deadline = time.time() + 60
    while rules_left() and time.time() < deadline:
        time.sleep(0.5)
    assert rules_left() == 0


@pytest.mark.stack
def test_local_lambda_serves_the_invoke_api_and_a_second_delivery_runs_nothing(running_stack):
    """The API's runs go through the local Lambda's Invoke API (an Event invocation);
    delivering the same event again, synchronously, runs nothing, as on AWS."""
    from botocore.exceptions import ClientError

    url = running_stack.url
    notebook_id = requests.post(
        url + BASE + "/", auth=ADMIN, json={"content": code_notebook("print('invoked')")}
    ).json()["notebook_id"]
    [run] = requests.post(url + BASE + "/_run", auth=ADMIN, json={"nbkIds": [notebook_id], "module": "m"}).json()[
        "runs"
    ]
    done = wait_for_run(url, run["run_id"])
    assert done["status"] == "succeeded"
    local_lambda = running_stack.local_lambda()
    again = local_lambda.invoke(
        FunctionName="notebooks-local-runner",
        InvocationType="RequestResponse",
        Payload=json.dumps({"drain": {"run_id": run["run_id"]}}).encode(),
    )
    assert again["StatusCode"] == 200 and "FunctionError" not in again
    assert json.loads(again["Payload"].read()) == {"status": "idle"}  # nothing queued: the run is not run twice
    bare = local_lambda.invoke(  # a run's id alone is a Fargate task's command, not the function's event
        FunctionName="notebooks-local-runner",
        InvocationType="RequestResponse",
        Payload=json.dumps({"run_id": run["run_id"]}).encode(),
    )
    assert bare["FunctionError"] == "Unhandled"
    assert requests.get(f"{url}/_notebooks/runs/{run['run_id']}", auth=ADMIN).json() == done
    assert local_lambda.invoke(FunctionName="notebooks-local-runner", InvocationType="DryRun")["StatusCode"] == 204
    with pytest.raises(ClientError) as unknown:
        local_lambda.invoke(FunctionName="another-function", Payload=b"{}")
    assert unknown.value.response["Error"]["Code"] == "ResourceNotFoundException"


HOSTILE_NOTEBOOK = """
import json, os, boto3, botocore
found = {"environ": {}, "ports": [], "calls": []}
# The environment of every process of the stack: its ancestors, the API, the embedded AWS...
table = {}
for name in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{name}/stat") as stat:
            table[int(name)] = int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        pass
stack, grown = {stack_root}, True
while grown:
    grown = {pid for pid, parent in table.items() if parent in stack} - stack
    stack |= grown
for pid in sorted(stack):
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            found["environ"][pid] = environ.read().decode(errors="replace")
    except OSError:
        pass
# Loopback listeners, from /proc/net/tcp; then AWS calls with guessed keys, and none.
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    address, state = line.split()[1], line.split()[3]
    if state == "0A" and address.startswith("0100007F:"):
        found["ports"].append(int(address.split(":")[1], 16))
config = botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10)
for port in sorted(set(found["ports"]) & set(targets)):
    endpoint = f"http://127.0.0.1:{port}"
    for key in ("local", "testing", None):
        signing = {"aws_access_key_id": key, "aws_secret_access_key": key} if key else {
            "config": config.merge(botocore.config.Config(signature_version=botocore.UNSIGNED))}
        clients = {service: boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                                         **({"config": config} | signing)) for service in ("s3", "dynamodb", "lambda")}
        for name, call in (("s3", lambda: clients["s3"].list_buckets()),
                           ("dynamodb", lambda: clients["dynamodb"].scan(TableName="notebooks-users")),
                           ("lambda", lambda: clients["lambda"].invoke(FunctionName="notebooks-local-runner",
                                                                       Payload=b'{"run_id": "x"}'))):
            try:
                call()
                found["calls"].append([port, name, key, "answered"])
            except botocore.exceptions.ClientError as error:
                found["calls"].append([port, name, key, error.response["Error"]["Code"] or "refused"])
            except Exception as error:
                found["calls"].append([port, name, key, type(error).__name__])
print(json.dumps(found))
"""


@pytest.mark.stack
def test_a_notebook_reads_no_stack_secret_and_cannot_use_its_servers(running_stack):
    """A hostile notebook run through the stack (which runs without root's capabilities
    when the tests run as root): no /proc environ of the stack's processes that it can
    read (chalice's reloader's, at least) gives it the users, the key or the servers'
    addresses, and the embedded AWS and the local Lambda, found on loopback
    by /proc/net/tcp, refuse whatever key it tries. (It probes only this stack's processes
    and ports, given as parameters: other programs on a shared machine are not ours.)"""
    url = running_stack.url
    stack = running_stack.connection()
    targets = [int(stack["aws"]["endpoint"].rsplit(":", 1)[1]), int(stack["lambda"]["endpoint"].rsplit(":", 1)[1])]
    notebook = code_notebook(HOSTILE_NOTEBOOK)
    notebook["cells"].insert(
        0,
        {
            "cell_type": "code",
            "id": "p",
            "metadata": {"tags": ["parameters"]},
            "execution_count": None,
            "outputs": [],
            "source": "targets = []\nstack_root = 0",
        },
    )
    notebook_id = requests.post(url + BASE + "/", auth=ADMIN, json={"content": notebook}).json()["notebook_id"]
    [run] = requests.post(
        url + BASE + "/_run",
        auth=ADMIN,
        json={
            "nbkIds": [notebook_id],
            "module": "m",
            "parameters": {"targets": targets, "stack_root": running_stack.process.pid},
        },
    ).json()["runs"]
    record = wait_for_run(url, run["run_id"], seconds=120)
    assert record["status"] == "succeeded", record
    output = requests.get(f"{url}/_notebooks/runs/{run['run_id']}/output", auth=ADMIN).json()
    found = json.loads(output["cells"][-1]["outputs"][-1]["text"])
    secrets = [
        stack["aws"]["access_key_id"],
        stack["aws"]["secret_access_key"],
        stack["aws"]["endpoint"],
        stack["lambda"]["endpoint"],
        "NOTEBOOKS_USERS=",
        "eve-pw",
    ]
    assert found["environ"], "no environment of the stack was readable: the probe did not work"
    assert [(pid, secret) for pid, environ in found["environ"].items() for secret in secrets if secret in environ] == []
    assert set(targets) <= set(found["ports"])
    assert len(found["calls"]) == 18
    assert all(
        outcome in ("InvalidAccessKeyId", "UnrecognizedClientException", "403") for *_, outcome in found["calls"]
    ), found["calls"]


@pytest.mark.stack
def test_local_stack_stops_on_ctrl_c_leaving_nothing_behind(running_stack):
    processes = descendants(running_stack.process.pid)
    assert len(processes) >= 4  # embedded AWS, local Lambda and its worker, chalice local
    assert running_stack.interrupt() == 0
    assert alive(processes) == set()
    assert not os.path.exists(os.path.join(running_stack.state, "stack.json"))
    assert "Local-only credentials: admin:admin, eve:eve-pw" in running_stack.output()
