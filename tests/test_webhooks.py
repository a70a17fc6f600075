"""Webhooks: set, show and remove them; signed deliveries to a test server on loopback,
retried with the same delivery id; ends in the API handed to the runner function; the
address rules, at PUT and again at delivery."""

import datetime
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
import requests

from chalicelib.common.config import Settings
from chalicelib.runs import webhooks
from deploy import template as deployment
from devstack import stack as localstack
from devstack.stack import free_port
from tests.conftest import error
from tests.helpers import leftovers, stored_state, take
from tests.local_stack import ADMIN, RunningStack, code_notebook, remove_state, state_folder
from tests.test_cancel import start_run
from tests.test_runs import BASE, RUNS, RecordingDispatcher, run_all

pytest_plugins = ["tests.test_runs"]  # its fixtures: dispatched, executor
SECRET = "s3cr3t-for-tests"
PUBLIC = "93.184.216.34"


class Receiver:
    """An HTTP server on loopback that records each POST and answers the next of
    `statuses` (then 204); a 302 carries a Location, which must not be followed."""

    def __init__(self, statuses=(), host="127.0.0.1", tls=None):
        self.requests, self.statuses, self.host = [], list(statuses), host
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(
                    SimpleNamespace(path=self.path, headers={k.lower(): v for k, v in self.headers.items()}, body=body)
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 204
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, host=None) -> str:
        return f"http://{host or self.host}:{self.port}/hook?team=data"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def hooks(stack, dispatched, monkeypatch):
    """Webhooks as the local stack has them (loopback allowed), with sleeps recorded
    instead of slept and deliveries of API-side ends recorded instead of invoked."""
    sleeps, handed_over = [], RecordingDispatcher()
    monkeypatch.setattr(stack.webhooks, "_allow_loopback", True)
    monkeypatch.setattr(stack.webhooks, "sleep", sleeps.append)
    monkeypatch.setattr(stack.webhooks, "_dispatcher", handed_over)
    return SimpleNamespace(sleeps=sleeps, handed_over=handed_over, service=stack.webhooks)


@pytest.fixture
def deployed(stack, dispatched, monkeypatch):
    """Webhooks as a deployment has them: no loopback; names resolved by `names`."""
    names = {}

    def resolver(host, port):
        if host not in names:
            raise socket.gaierror(f"unknown name {host}")
        return list(names[host])

    monkeypatch.setattr(stack.webhooks, "_allow_loopback", False)
    monkeypatch.setattr(stack.webhooks, "resolver", resolver)
    monkeypatch.setattr(stack.webhooks, "sleep", lambda seconds: None)
    return names


def put_hook(api, notebook_id, url, events=("succeeded", "failed", "cancelled"), expect=200, **kwargs):
    return api.json(
        "PUT",
        f"{BASE}/{notebook_id}/webhook",
        {"url": url, "secret": SECRET, "events": list(events)},
        expect=expect,
        **kwargs,
    )


def verify(request, secret=SECRET) -> dict:
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["x-notebooks-signature"], expected)
    return json.loads(request.body)


def test_set_show_and_remove_a_webhook_without_ever_showing_its_secret(api, stack, hooks, receiver):
    notebook_id = api.create()["notebook_id"]
    answer = put_hook(api, notebook_id, receiver.url(), events=["failed", "succeeded", "failed"])
    assert answer == {"url": receiver.url(), "events": ["succeeded", "failed"]}
    assert api.json("GET", f"{BASE}/{notebook_id}/webhook") == answer
    for path in (f"{BASE}/{notebook_id}", f"{BASE}/_all", f"{BASE}/{notebook_id}/webhook"):
        assert SECRET not in api.call("GET", path).body.decode()
    assert api.json("DELETE", f"{BASE}/{notebook_id}/webhook") == "Success"
    assert error(api.call("GET", f"{BASE}/{notebook_id}/webhook")) == (404, "No webhook for this notebook")
    assert api.json("DELETE", f"{BASE}/{notebook_id}/webhook") == "Success"  # idempotent: a retry succeeds


def test_webhooks_belong_to_the_notebooks_owner_and_go_with_the_notebook(api, stack, hooks, receiver):
    notebook_id = api.create()["notebook_id"]
    put_hook(api, notebook_id, receiver.url())
    for method in ("GET", "DELETE", "PUT"):
        response = api.call(
            method,
            f"{BASE}/{notebook_id}/webhook",
            {"url": receiver.url(), "secret": "x", "events": ["failed"]} if method == "PUT" else None,
            user="bob",
        )
        assert error(response) == (400, "Notebook ID invalid.")
    assert api.json("GET", f"{BASE}/{notebook_id}/webhook")["events"] == ["succeeded", "failed", "cancelled"]
    api.json("DELETE", BASE, {"nbk_ids": [notebook_id]})
    assert leftovers(stack.settings) == ([], [])


BAD_INPUT = [
    ({"secret": SECRET, "events": ["failed"]}, "url"),
    ({"url": 7, "secret": SECRET, "events": ["failed"]}, "url"),
    ({"url": "https://a.example/x y", "secret": SECRET, "events": ["failed"]}, "url"),
    ({"url": "https://user:pw@a.example/", "secret": SECRET, "events": ["failed"]}, "url"),
    ({"url": "https://a.example:99999/", "secret": SECRET, "events": ["failed"]}, "url"),
    ({"url": "https://a.example/" + "x" * 2048, "secret": SECRET, "events": ["failed"]}, "url"),
    ({"url": "https://a.example/", "events": ["failed"]}, "secret"),
    ({"url": "https://a.example/", "secret": "", "events": ["failed"]}, "secret"),
    ({"url": "https://a.example/", "secret": ["x"], "events": ["failed"]}, "secret"),
    ({"url": "https://a.example/", "secret": "x" * 257, "events": ["failed"]}, "secret"),
    ({"url": "https://a.example/", "secret": SECRET}, "events"),
    ({"url": "https://a.example/", "secret": SECRET, "events": []}, "events"),
    ({"url": "https://a.example/", "secret": SECRET, "events": "failed"}, "events"),
    ({"url": "https://a.example/", "secret": SECRET, "events": ["failed", "started"]}, "events"),
]


def test_bad_webhook_input_is_a_400_naming_the_field_and_changes_nothing(api, stack, deployed):
    deployed["a.example"] = [PUBLIC]
    notebook_id = api.create()["notebook_id"]
    before = stored_state(stack.settings)
    for body, field in BAD_INPUT:
        status, message = error(api.call("PUT", f"{BASE}/{notebook_id}/webhook", body))
        assert status == 400 and message.startswith(field), (body, message)
    assert stored_state(stack.settings) == before


REFUSED_URLS = [
    ("http://hooks.example/", {"hooks.example": [PUBLIC]}),
    ("http://127.0.0.1:8080/", {}),
    ("http://localhost/", {"localhost": ["127.0.0.1"]}),
    ("https://127.0.0.1/", {}),
    ("https://10.1.2.3/", {}),
    ("https://172.16.0.1/", {}),
    ("https://192.168.1.1/", {}),
    ("https://169.254.169.254/latest/meta-data/", {}),
    ("https://0.0.0.0/", {}),
    ("https://224.0.0.1/", {}),
    ("https://240.0.0.1/", {}),
    ("https://100.64.0.1/", {}),
    ("https://[::1]/", {}),
    ("https://[::]/", {}),
    ("https://[fe80::1]/", {}),
    ("https://[fc00::1]/", {}),
    ("https://[ff02::1]/", {}),
    ("https://[::ffff:127.0.0.1]/", {}),
    ("https://[::ffff:169.254.169.254]/", {}),
    ("https://[2002:a00:1::]/", {}),  # 6to4 of 10.0.0.1
    ("https://hooks.example/", {"hooks.example": ["127.0.0.1"]}),
    ("https://hooks.example/", {"hooks.example": [PUBLIC, "10.0.0.7"]}),
    ("https://hooks.example/", {"hooks.example": ["::ffff:192.168.0.1"]}),
]


def test_urls_that_are_not_https_or_reach_inside_are_refused(api, stack, deployed):
    notebook_id = api.create()["notebook_id"]
    before = stored_state(stack.settings)
    for url, names in REFUSED_URLS:
        deployed.clear()
        deployed.update(names)
        status, message = error(
            api.call("PUT", f"{BASE}/{notebook_id}/webhook", {"url": url, "secret": SECRET, "events": ["failed"]})
        )
        assert status == 400 and message.startswith("url"), (url, message)
    assert stored_state(stack.settings) == before


def test_public_https_urls_and_names_not_resolvable_yet_are_accepted(api, deployed):
    deployed["hooks.example"] = [PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"]
    notebook_id = api.create()["notebook_id"]
    assert put_hook(api, notebook_id, "https://hooks.example/in")["url"] == "https://hooks.example/in"
    assert put_hook(api, notebook_id, "https://later.example/in")["url"] == "https://later.example/in"


def test_a_run_end_is_delivered_signed_and_retried_with_one_delivery_id(
    api, stack, dispatched, executor, hooks, receiver
):
    receiver.statuses = [302, 500]  # a redirect (not followed) and a server error, then 204
    run_id = start_run(api, "print('done')")
    notebook_id = api.json("GET", f"{RUNS}/{run_id}")["notebook_id"]
    put_hook(api, notebook_id, receiver.url(), events=["succeeded"])
    run_all(executor, dispatched)

    run = api.json("GET", f"{RUNS}/{run_id}")
    assert run["status"] == "succeeded" and run["webhook"] == {"status": "delivered", "attempts": 3}
    assert [request.path for request in receiver.requests] == ["/hook?team=data"] * 3
    assert len({request.headers["x-notebooks-delivery"] for request in receiver.requests}) == 1
    assert len({request.body for request in receiver.requests}) == 1
    first = receiver.requests[0]
    payload = verify(first)
    assert first.headers["x-notebooks-event"] == "succeeded" and first.headers["content-type"] == "application/json"
    assert payload["run_id"] == run_id and payload["status"] == "succeeded" and payload["webhook"] is None
    assert payload == {**run, "webhook": None}
    assert hooks.sleeps == list(webhooks.RETRY_DELAYS[:2])


def end_run(api, stack, url, status="succeeded", events=("succeeded", "failed", "cancelled")) -> str:
    """A run ended by its runner (claimed, concluded) whose notebook has a webhook to `url`,
    not delivered yet: RunExecutor delivers right after this, as `deliver` does here."""
    run_id = start_run(api, "print(1)")
    put_hook(api, api.json("GET", f"{RUNS}/{run_id}")["notebook_id"], url, events=events)
    assert take(stack, run_id) is not None
    error_ = {"cell_index": 0, "ename": "ValueError", "evalue": "bad"} if status == "failed" else None
    assert stack.records.conclude(run_id, status, error=error_) == status
    return run_id


def test_urls_the_parser_or_resolver_cannot_read_are_a_400_naming_the_url(api, stack, hooks):
    notebook_id = api.create()["notebook_id"]
    before = stored_state(stack.settings)
    for url in ("https://[::1", "https://a..b/", "https://.", "https://" + "a" * 70 + ".example/"):
        status, message = error(
            api.call("PUT", f"{BASE}/{notebook_id}/webhook", {"url": url, "secret": SECRET, "events": ["failed"]})
        )
        assert status == 400 and message.startswith("url"), (url, message)
    assert stored_state(stack.settings) == before


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_attempts_time_limit(hooks, monkeypatch):
    """Every read is within the limit, but the whole answer is not: the attempt fails."""
    monkeypatch.setattr(webhooks, "ATTEMPT_TIMEOUT_SECONDS", 1.0)
    listener = socket.create_server(("127.0.0.1", 0))

    def trickle():
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            try:
                for byte in b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n":
                    connection.sendall(bytes([byte]))
                    time.sleep(0.1)
            except OSError:
                pass  # cut off

    worker = threading.Thread(target=trickle, daemon=True)
    worker.start()
    try:
        port = listener.getsockname()[1]
        assert (
            hooks.service._attempt(f"http://127.0.0.1:{port}/hook", b"{}", {"Content-Type": "application/json"})
            is False
        )
    finally:
        worker.join()
        listener.close()


def test_a_receiver_that_keeps_failing_fails_the_delivery_not_the_run(api, stack, hooks, receiver):
    receiver.statuses = [500] * webhooks.MAX_ATTEMPTS
    run_id = end_run(api, stack, receiver.url(), status="failed")
    assert hooks.service.deliver(run_id) == {"run_id": run_id, "webhook": "failed"}
    run = api.json("GET", f"{RUNS}/{run_id}")
    assert run["status"] == "failed" and run["error"]["ename"] == "ValueError"
    assert run["webhook"] == {"status": "failed", "attempts": webhooks.MAX_ATTEMPTS}
    assert len(receiver.requests) == webhooks.MAX_ATTEMPTS
    assert receiver.requests[0].headers["x-notebooks-event"] == "failed"
    assert hooks.service.deliver(run_id)["webhook"] == "failed"  # a repeated event delivers nothing more
    assert len(receiver.requests) == webhooks.MAX_ATTEMPTS


def test_only_the_chosen_events_are_delivered(api, stack, hooks, receiver):
    run_id = end_run(api, stack, receiver.url(), events=["failed"])
    assert hooks.service.deliver(run_id) == {"run_id": run_id, "webhook": None}
    assert api.json("GET", f"{RUNS}/{run_id}")["webhook"] is None and receiver.requests == []


def test_ends_in_the_api_are_handed_to_the_runner_function(api, stack, dispatched, executor, hooks, receiver):
    cancelled = start_run(api, "print(1)")
    lost = start_run(api, "print(2)")
    for run_id in (cancelled, lost):
        put_hook(api, api.json("GET", f"{RUNS}/{run_id}")["notebook_id"], receiver.url())
    assert api.json("POST", f"{RUNS}/{cancelled}/cancel")["webhook"] == {"status": "pending", "attempts": 0}
    assert take(stack, lost) is not None  # a runner took it, then vanished
    later = time.time() + stack.settings.run_timeout + 61
    stack.runs._clock = lambda: later
    assert api.json("GET", f"{RUNS}/{lost}")["webhook"] == {"status": "pending", "attempts": 0}
    assert hooks.handed_over.events == [{"deliver_webhook": cancelled}, {"deliver_webhook": lost}]
    assert receiver.requests == []  # nothing was delivered within the API's requests

    for event in hooks.handed_over.events:  # the runner function's invocations
        executor.handle(event)
    assert [r.headers["x-notebooks-event"] for r in receiver.requests] == ["cancelled", "failed"]
    assert [verify(r)["run_id"] for r in receiver.requests] == [cancelled, lost]
    for run_id in (cancelled, lost):
        assert api.json("GET", f"{RUNS}/{run_id}")["webhook"] == {"status": "delivered", "attempts": 1}


def test_a_name_that_resolves_inside_at_delivery_is_not_contacted(api, stack, deployed, receiver):
    deployed["hooks.example"] = [PUBLIC]
    run_id = end_run(api, stack, f"https://hooks.example:{receiver.port}/")
    deployed["hooks.example"] = ["127.0.0.1"]  # DNS rebinding: now it points at the receiver on loopback
    stack.webhooks.deliver(run_id)
    assert api.json("GET", f"{RUNS}/{run_id}")["webhook"] == {"status": "failed", "attempts": webhooks.MAX_ATTEMPTS}
    assert receiver.requests == []


def test_a_delivery_connects_to_the_address_it_checked(api, stack, hooks, monkeypatch):
    elsewhere = Receiver(host="127.0.0.2")  # localhost is 127.0.0.1 to the system, not this
    try:
        monkeypatch.setattr(hooks.service, "resolver", lambda host, port: ["127.0.0.2"])
        run_id = end_run(api, stack, elsewhere.url("localhost"))
        hooks.service.deliver(run_id)
    finally:
        elsewhere.close()
    assert api.json("GET", f"{RUNS}/{run_id}")["webhook"] == {"status": "delivered", "attempts": 1}
    assert elsewhere.requests[0].headers["host"] == f"localhost:{elsewhere.port}"


def tls_for(name: str, folder) -> tuple:
    """(a test CA's certificate as PEM, a server context with a certificate for `name`
    that this CA signed, the names its clients sent by SNI)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])

    def certificate(subject, public_key, extensions):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    usage = {
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    ca = certificate(
        ca_name,
        ca_key.public_key(),
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage), True),
        ],
    )
    server = certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
        key.public_key(),
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.SubjectAlternativeName([x509.DNSName(name)]), False),
            (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context, sni = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), []
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    context.sni_callback = lambda connection, server_name, ssl_context: sni.append(server_name)
    return ca.public_bytes(serialization.Encoding.PEM).decode(), context, sni


def test_https_deliveries_connect_to_the_checked_address_and_verify_the_urls_host(
    api, stack, hooks, monkeypatch, tmp_path
):
    ca, server_context, sni = tls_for("hooks.test", tmp_path)
    secure = Receiver(host="127.0.0.2", tls=server_context)
    monkeypatch.setattr(hooks.service, "resolver", lambda host, port: ["127.0.0.2"])
    monkeypatch.setattr(hooks.service, "ssl_context", ssl.create_default_context(cadata=ca))
    try:
        verified = end_run(api, stack, f"https://hooks.test:{secure.port}/in")
        assert hooks.service.deliver(verified)["webhook"] == "delivered"
        mismatched = end_run(api, stack, f"https://other.test:{secure.port}/in")  # its certificate is hooks.test's
        assert hooks.service.deliver(mismatched)["webhook"] == "failed"
    finally:
        secure.close()
    assert [request.headers["host"] for request in secure.requests] == [f"hooks.test:{secure.port}"]
    assert sni[0] == "hooks.test" and set(sni) == {"hooks.test", "other.test"}


def test_loopback_is_allowed_in_the_local_stack_only():
    local = Settings.from_env(localstack.local_stage_environment())
    assert local.webhook_allow_loopback and not Settings.from_env({}).webhook_allow_loopback
    template = json.dumps(deployment.merge_template())
    assert "NOTEBOOKS_WEBHOOK_ALLOW_LOOPBACK" not in template


@pytest.mark.stack
def test_make_dev_delivers_to_loopback_and_serves_the_log(receiver):
    """The local stack as `make dev` runs it: its `local` stage allows a loopback url,
    its local Lambda runs the notebook and delivers; the log is served as text."""
    state = state_folder()
    stack = RunningStack(state, free_port()).started()
    try:
        notebooks = f"{stack.url}{BASE}"
        notebook_id = requests.post(
            notebooks + "/", auth=ADMIN, json={"content": code_notebook("print('from make dev')")}
        ).json()["notebook_id"]
        hook = {"url": receiver.url(), "secret": SECRET, "events": ["succeeded"]}
        assert requests.put(f"{notebooks}/{notebook_id}/webhook", auth=ADMIN, json=hook).status_code == 200
        [run] = requests.post(notebooks + "/_run", auth=ADMIN, json={"nbkIds": [notebook_id], "module": "m"}).json()[
            "runs"
        ]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            record = requests.get(f"{stack.url}{RUNS}/{run['run_id']}", auth=ADMIN).json()
            if (record["webhook"] or {}).get("status") == "delivered":
                break
            time.sleep(0.2)
        log = requests.get(f"{stack.url}{RUNS}/{run['run_id']}/log", auth=ADMIN)
    finally:
        stack.interrupt()
        remove_state(state)
    assert record["status"] == "succeeded" and record["webhook"] == {"status": "delivered", "attempts": 1}
    assert verify(receiver.requests[0])["run_id"] == run["run_id"]
    assert log.text == "from make dev\n" and log.headers["Content-Type"].startswith("text/plain")
