"""Signed webhooks: a notebook's webhook, and its delivery at the end of each run.

A notebook's item holds its `webhook` {"url", "secret", "events"}, written with a
condition that the notebook is live; deleting the notebook deletes it. The API shows
`{"url", "events"}`, never the secret.

At each run end whose status is one of the webhook's events, the run object (as it
ended, with `webhook` null) is POSTed as JSON to the url with `X-Notebooks-Event` (the
status), `X-Notebooks-Delivery` (a UUID derived from the run: the same on every attempt)
and `X-Notebooks-Signature: sha256=<hex HMAC-SHA256 of the body keyed with the secret>`.
A 2xx answer delivers it; anything else (another status, a redirect, which is never
followed, no answer within ATTEMPT_TIMEOUT_SECONDS) is tried again after RETRY_DELAYS,
MAX_ATTEMPTS times in all. The run's `webhook` records `pending`, `delivered` or
`failed` and the attempts made. A delivery never changes the run's own outcome.

Where deliveries happen: never inside an API request (29 s). A run that ends in its
runner (succeeded, failed, or cancelled by the runner) is delivered by that runner right
after it records the end, in the same invocation (at most about 35 s, within the 60 s a
runner has after its run's timeout; should the invocation run out of time meanwhile,
Lambda's retry of it, which finds the run ended, finishes a `pending` delivery). A run
that ends in the API (a queued run cancelled, a run declared lost, a dispatch that
failed) is marked `pending` and handed to the runner function with an asynchronous
invocation `{"deliver_webhook": "<run_id>"}`, which the local stack's Lambda handles as
AWS's does.

Addresses: a url must be https and its host must not be or resolve to a loopback,
private, link-local (169.254.169.254 among them), unspecified, multicast, reserved or
otherwise non-public address, IPv4 or IPv6 (IPv4 inside IPv6, e.g. ::ffff:10.0.0.1,
counts as the IPv4 address). It is checked when the webhook is set (a name that does not
resolve yet is accepted) and again at each attempt, when the connection goes to the very
address that was checked, with TLS verifying the certificate for the url's host name:
a DNS answer that changes in between cannot lead elsewhere. With
NOTEBOOKS_WEBHOOK_ALLOW_LOOPBACK (the local stack's `local` stage), loopback addresses
are allowed, and http too for the hosts localhost, 127.0.0.1 and [::1].
"""

import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from chalicelib.api.requests import WebhookRequest
from chalicelib.common import errors, runner_events
from chalicelib.common.errors import NOTEBOOK_ID_INVALID
from chalicelib.common.model import FINAL
from chalicelib.runs.service import run_view

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
MAX_URL_LENGTH = 2048
MAX_SECRET_LENGTH = 256
MAX_ATTEMPTS = 4
RETRY_DELAYS = (1.0, 3.0, 9.0)  # seconds before the 2nd, 3rd and 4th attempts
ATTEMPT_TIMEOUT_SECONDS = 5.0
WEBHOOK_NOT_FOUND = "No webhook for this notebook"
_EVENT_NAMES = ", ".join(FINAL)  # a webhook's events are the final statuses
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(ValueError):
    """A url the rules refuse; its message names the field and says why."""


def resolve(host: str, port: int) -> list:
    """The addresses `host` resolves to now, as the system resolver answers, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64), or None."""
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def refused_kind(address: str, allow_loopback: bool = False) -> Optional[str]:
    """Why a webhook may not connect to `address` ("loopback", "private", ...), or None."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            kind = refused_kind(str(embedded), allow_loopback)
            if kind or ip.ipv4_mapped:
                return kind
    for kind, hit in (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if hit:
            return None if kind == "loopback" and allow_loopback else kind
    return None if ip.is_global else "non-public"


@dataclass(frozen=True)
class Target:
    """Where a url points: scheme, host (a name or an address), port, path with query."""

    scheme: str
    host: str
    port: int
    path: str

    def literal(self) -> bool:
        """Whether the host is an IP address rather than a name."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_url(url, allow_loopback: bool = False) -> Target:
    """`url` split up, if its form is allowed (https; http to loopback only with
    `allow_loopback`); Refused otherwise."""
    if not isinstance(url, str) or not url:
        raise Refused("url is required: a string")
    if len(url) > MAX_URL_LENGTH:
        raise Refused(f"url must be at most {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise Refused("url must be ASCII without spaces or control characters (international names in punycode)")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise Refused("url is not a valid URL") from None
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise Refused("url has an invalid port") from None
    if not host:
        raise Refused("url must be an absolute https URL with a host")
    if parts.username is not None or parts.password is not None:
        raise Refused("url must not contain a user name or password")
    scheme = parts.scheme.lower()
    if not (scheme == "https" or scheme == "http" and allow_loopback and host in _LOOPBACK_NAMES):
        local = " (or, in the local stack, http://127.0.0.1 or http://localhost)" if allow_loopback else ""
        raise Refused(f"url must be an https URL{local}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def checked_addresses(target: Target, allow_loopback: bool = False, resolver=resolve) -> list:
    """The addresses `target`'s host is or resolves to now, all of them allowed, else
    Refused; OSError (socket.gaierror) when the name does not resolve."""
    addresses = [target.host] if target.literal() else resolver(target.host, target.port)
    if not addresses:
        raise socket.gaierror(f"{target.host} resolves to no address")
    for address in addresses:
        kind = refused_kind(address, allow_loopback)
        if kind:
            raise Refused(f"url must not resolve to a {kind} address ({target.host} is {address})")
        if target.scheme == "http" and refused_kind(address) != "loopback":
            raise Refused(f"url: http is allowed only to loopback ({target.host} is {address})")
    return addresses


def _cut(connection) -> None:
    """End a connection's exchange now, waking a read blocked on it."""
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to `address`, the checked one, whatever `host` resolves to now."""

    def __init__(self, host, port, address, timeout):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """An HTTPS connection to `address`, with SNI and certificate checks for `host`."""

    def __init__(self, host, port, address, timeout, context):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._ssl_context = context

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)


def delivery_id(run_id: str) -> str:
    """The delivery's UUID: one per run (a run ends once), the same on every attempt."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"webhook-delivery:{run_id}"))


def signature(secret: str, body: bytes) -> str:
    """`sha256=` and the hex HMAC-SHA256 of `body` keyed with `secret` (GitHub's form)."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class Webhooks:
    """Notebooks' webhooks (set, show, remove) and their deliveries.

    `resolver`, `sleep`, `retry_delays` and `ssl_context` are injectable for tests.
    """

    def __init__(
        self,
        notebooks,
        notebook_table,
        run_table,
        dispatcher,
        settings,
        resolver=resolve,
        sleep=time.sleep,
        retry_delays=RETRY_DELAYS,
        ssl_context=None,
    ):
        self._notebooks = notebooks
        self._table = notebook_table
        self._runs = run_table
        self._dispatcher = dispatcher
        self._allow_loopback = settings.webhook_allow_loopback
        self.resolver = resolver
        self.sleep = sleep
        self.retry_delays = retry_delays
        self.ssl_context = ssl_context

    # The API: set, show, remove.

    def put(self, owner: str, notebook_id, request: WebhookRequest) -> dict:
        """Set the notebook's webhook to the request's url, secret and events; `{"url", "events"}`."""
        item = self._notebooks.require(owner, notebook_id)
        hook = self._parse(request)
        if not self._table.update(owner, item["notebook_id"], {"webhook": hook}):
            raise errors.InvalidInput(NOTEBOOK_ID_INVALID)  # deleted meanwhile
        return {"url": hook["url"], "events": hook["events"]}

    def get(self, owner: str, notebook_id) -> dict:
        """The notebook's webhook without its secret; 404 when it has none."""
        hook = self._notebooks.require(owner, notebook_id).get("webhook")
        if not hook:
            raise errors.NotFound(WEBHOOK_NOT_FOUND)
        return {"url": hook["url"], "events": list(hook["events"])}

    def delete(self, owner: str, notebook_id) -> None:
        """Remove the notebook's webhook. Idempotent: a notebook without one (a repeated
        request whose first answer was lost) succeeds too."""
        item = self._notebooks.require(owner, notebook_id)
        if (
            not self._table.clear(owner, item["notebook_id"], "webhook")
            and self._notebooks.live(owner, item["notebook_id"]) is None
        ):
            raise errors.InvalidInput(NOTEBOOK_ID_INVALID)  # deleted meanwhile

    def _parse(self, request: WebhookRequest) -> dict:
        try:
            target = parse_url(request.url, self._allow_loopback)
            checked_addresses(target, self._allow_loopback, self.resolver)
        except Refused as refusal:
            raise errors.InvalidInput(str(refusal)) from None
        except ValueError:  # the resolver's UnicodeError: an empty or over-long label
            raise errors.InvalidInput("url has an invalid host name") from None
        except OSError:
            pass  # not resolvable yet: checked again at each delivery
        secret = request.secret
        if not isinstance(secret, str) or not secret or len(secret) > MAX_SECRET_LENGTH:
            raise errors.InvalidInput(f"secret must be a non-empty string of at most {MAX_SECRET_LENGTH} characters")
        events = request.events
        if not isinstance(events, list) or not events:
            raise errors.InvalidInput(f"events must be a non-empty list of {_EVENT_NAMES}")
        unknown = [event for event in events if event not in FINAL]
        if unknown:
            raise errors.InvalidInput(f"events: unknown event {unknown[0]!r}; events are {_EVENT_NAMES}")
        return {"url": request.url, "secret": secret, "events": [event for event in FINAL if event in events]}

    # Deliveries.

    def notify(self, run: dict) -> Optional[dict]:
        """`run` (its final status in it) ended in the API: if its notebook's webhook
        wants this event, mark it pending and hand the delivery to the runner function,
        asynchronously. The run's `webhook` as recorded, or None. Never raises: the
        request that ended the run goes on."""
        try:
            if self._hook_for(run) is None:
                return None
            state = self._record(run, PENDING, 0)
            try:
                self._dispatcher.invoke(runner_events.webhook_delivery(run["run_id"]))
            except Exception:
                log.warning("could not hand over the webhook delivery of run %s", run["run_id"], exc_info=True)
                state = self._record(run, FAILED, 0)
            return state
        except Exception:  # a webhook never fails the request
            log.exception("webhook notification of run %s failed", run.get("run_id"))
            return None

    def deliver(self, run_id: str) -> dict:
        """Deliver the end of run `run_id` to its notebook's webhook, if the webhook wants
        that event and the delivery is not done yet: up to MAX_ATTEMPTS POSTs in all,
        `retry_delays` apart, recorded on the run. {"run_id", "webhook": status or None}.
        Never raises: a delivery never fails a run."""
        try:
            return {"run_id": run_id, "webhook": self._deliver(run_id)}
        except Exception:  # logged; the run's outcome stands
            log.exception("webhook delivery of run %s failed", run_id)
            return {"run_id": run_id, "webhook": None}

    def _deliver(self, run_id: str) -> Optional[str]:
        run = self._runs.get(run_id)
        if run is None or run["status"] not in FINAL:
            return None
        state = run.get("webhook") or {}
        if state.get("status") in (DELIVERED, FAILED):
            return state.get("status")
        attempts = int(state.get("attempts", 0))
        hook = self._hook_for(run)
        if hook is None:  # none, or removed since the run ended
            if state:
                self._record(run, FAILED, attempts)
            return FAILED if state else None
        if not state:
            self._record(run, PENDING, attempts)
        body = json.dumps({**run_view(run), "webhook": None}).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "notebooks-webhooks/1",
            "X-Notebooks-Event": run["status"],
            "X-Notebooks-Delivery": delivery_id(run_id),
            "X-Notebooks-Signature": signature(hook["secret"], body),
        }
        while attempts < MAX_ATTEMPTS:
            if attempts:
                self.sleep(self.retry_delays[min(attempts, len(self.retry_delays)) - 1])
            attempts += 1
            if self._attempt(hook["url"], body, headers):
                self._record(run, DELIVERED, attempts)
                return DELIVERED
            if attempts < MAX_ATTEMPTS:
                self._record(run, PENDING, attempts)
        self._record(run, FAILED, attempts)
        return FAILED

    def _attempt(self, url: str, body: bytes, headers: dict) -> bool:
        """One POST to the checked address of `url`; whether it answered 2xx."""
        try:
            target = parse_url(url, self._allow_loopback)
            address = checked_addresses(target, self._allow_loopback, self.resolver)[0]
            connection: http.client.HTTPConnection
            if target.scheme == "https":
                context = self.ssl_context or ssl.create_default_context()
                connection = _PinnedHTTPSConnection(target.host, target.port, address, ATTEMPT_TIMEOUT_SECONDS, context)
            else:
                connection = _PinnedHTTPConnection(target.host, target.port, address, ATTEMPT_TIMEOUT_SECONDS)
            # Each read has ATTEMPT_TIMEOUT_SECONDS; the whole answer too: a receiver that
            # trickles its headers is cut off then.
            cutoff = threading.Timer(ATTEMPT_TIMEOUT_SECONDS, _cut, args=(connection,))
            cutoff.start()
            try:
                connection.request("POST", target.path, body=body, headers=headers)
                status = connection.getresponse().status
            finally:
                cutoff.cancel()
                connection.close()
        except (ValueError, OSError, http.client.HTTPException) as error:  # Refused is a ValueError
            log.warning("webhook POST failed: %s", error)
            return False
        if not 200 <= status < 300:
            log.warning("webhook POST answered %s", status)
        return 200 <= status < 300

    def _hook_for(self, run: dict) -> Optional[dict]:
        item = self._notebooks.live(run["owner"], run["notebook_id"])
        hook = item.get("webhook") if item else None
        return hook if hook and run["status"] in hook["events"] else None

    def _record(self, run: dict, status: str, attempts: int) -> dict:
        state = {"status": status, "attempts": attempts}
        self._runs.transition(run["run_id"], run["status"], {"webhook": state})
        return state
