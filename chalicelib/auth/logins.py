"""Authentication: HTTP Basic credentials checked against salted scrypt hashes, with
failed logins throttled per username and source address, and per source address.

Every failure, whatever its cause (no header, bad encoding, unknown user, wrong
password), raises the same 401, and an unknown user costs the same hash as a known one.
Failures are counted only for names that are users, so no request writes anything for a
name that is not one. Past `max_failures` failed logins for one user from one source
address within a window, every login for that user from that address, right password or
not, is a 429 with `Retry-After` until the window ends; the user's logins from elsewhere
are not affected. Past `max_source_failures` failed logins from one address (whatever
the users), every login from that address is a 429 likewise: the limit on password
spraying. The counts live in DynamoDB, so they hold across Lambda containers.

Hashes use OWASP's scrypt parameters (N=2^17, r=8, p=1: 128 MiB a check); a stored hash
with weaker parameters is replaced at the user's next successful login.
"""

import base64
import binascii
import hashlib
import hmac
import math
import os
import threading
import time

from botocore.exceptions import ClientError

from chalicelib.common.aws import error_code
from chalicelib.common.clock import Clock
from chalicelib.common.errors import TooManyFailures, Unauthenticated
from chalicelib.storage.tables import TTL_ATTRIBUTE

# OWASP's scrypt parameters. N is a setting (Settings.password_scrypt_n) only so that
# tests can make users cheaply; R and P are fixed.
SCRYPT_N, _R, _P, _DKLEN = 2**17, 8, 1, 32
_SCHEME = "scrypt"
_MAX_SOURCE = 64  # an IPv6 address is at most 45 characters


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # OpenSSL refuses more memory than maxmem (default 32 MiB): allow what n, r, p need.
    maxmem = 128 * r * (n + 2) + 128 * r * p + 2**20
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


def hash_password(password: str, n: int = SCRYPT_N) -> str:
    """A salted scrypt hash of `password`, self-describing: scrypt$n$r$p$salt$hash."""
    salt = os.urandom(16)
    digest = _scrypt(password, salt, n, _R, _P, _DKLEN)
    return f"{_SCHEME}${n}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the `stored` hash, compared in constant time."""
    try:
        scheme, n, r, p, salt_text, expected_text = stored.split("$")
        if scheme != _SCHEME:
            return False
        salt, expected = base64.b64decode(salt_text), base64.b64decode(expected_text)
        digest = _scrypt(password, salt, int(n), int(r), int(p), len(expected))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(digest, expected)


def weaker_than(stored: str, n: int) -> bool:
    """Whether the `stored` hash was made with weaker parameters than (n, r=8, p=1)."""
    try:
        scheme, stored_n, r, p, *_ = stored.split("$")
        return scheme != _SCHEME or int(stored_n) < n or int(r) < _R or int(p) < _P
    except ValueError:
        return True


def parse_basic(header) -> tuple:
    """(username, password) from an `Authorization: Basic ...` header, else raise 401."""
    if not header:
        raise Unauthenticated()
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        raise Unauthenticated()
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII header text
        raise Unauthenticated() from None
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise Unauthenticated()
    return username, password


class LoginThrottle:
    """Failed logins in the users table, under keys no username can have (usernames never
    contain `#`): per user and source address (`#failed-logins#<name>#<address>`) and per
    source address (`#failed-source#<address>`).

    A count's window opens at its first failure; once its limit of failures falls in it,
    the logins it covers are refused until it ends, so no one is locked out longer than
    `window_seconds`. Failures are counted after the password check, with atomic
    writes: a burst of right passwords is never refused, and parallel guesses can exceed
    the budget by at most what is in flight at the moment it runs out.
    """

    KEY_PREFIX = "#failed-logins#"
    SOURCE_PREFIX = "#failed-source#"

    def __init__(
        self,
        table,
        max_failures: int,
        window_seconds: float,
        max_source_failures: int | None = None,
        clock: Clock = time.time,
    ):
        self._table = table
        self._max_failures = max_failures
        self._max_source_failures = max_source_failures
        self._window_ms = int(window_seconds * 1000)
        self._clock = clock

    def _counts(self, username, source: str):
        """[(key, limit)] of the counts that cover a login of the user `username` (None:
        a name that is not a user, which has none) from `source`."""
        counts = []
        if username is not None:
            counts.append(({"username": f"{self.KEY_PREFIX}{username}#{source}"}, self._max_failures))
        if self._max_source_failures:
            counts.append(({"username": self.SOURCE_PREFIX + source}, self._max_source_failures))
        return counts

    def check(self, username, source: str) -> None:
        """Raise the 429 if logins of the user `username` (None: a name that is not a
        user) from `source` are locked out now."""
        now = self._now_ms()
        for key, limit in self._counts(username, source):
            record = self._table.get_item(Key=key, ConsistentRead=True).get("Item")
            if record is None or int(record["window_start"]) <= now - self._window_ms:
                continue
            if int(record["failures"]) >= limit:
                retry_after = math.ceil((int(record["window_start"]) + self._window_ms - now) / 1000)
                raise TooManyFailures(max(1, retry_after))

    def record_failure(self, username: str, source: str) -> None:
        """Count one failed login of the user `username` from `source`, in each count's
        open window, else in a new one."""
        for key, _ in self._counts(username, source):
            self._count(key)

    def _count(self, key: dict) -> None:
        now = self._now_ms()
        cutoff = now - self._window_ms
        try:
            self._table.update_item(
                Key=key,
                UpdateExpression="ADD failures :one",
                ConditionExpression="window_start > :cutoff",
                ExpressionAttributeValues={":one": 1, ":cutoff": cutoff},
            )
            return
        except ClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
        try:
            self._table.update_item(
                Key=key,
                UpdateExpression=f"SET window_start = :now, failures = :one, {TTL_ATTRIBUTE} = :expires",
                ConditionExpression="attribute_not_exists(window_start) OR window_start <= :cutoff",
                ExpressionAttributeValues={
                    ":now": now,
                    ":one": 1,
                    ":cutoff": cutoff,
                    ":expires": (now + self._window_ms) // 1000 + 1,
                },  # for a DynamoDB TTL
            )
        except ClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
            self._count(key)  # a concurrent failure opened the window: count in it

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


class Authenticator:
    """Checks Basic credentials against a user store.

    A successful check is remembered for `cache_seconds`, keyed by a keyed hash of the
    credentials and the stored hash, so a client polling a run does not pay scrypt on
    every request. The stored hash is still read on every request and is part of the
    key, so a removed user or a changed password takes effect at once.
    """

    def __init__(self, users, cache_seconds: float = 60.0, throttle: LoginThrottle | None = None):
        self._users = users
        self._throttle = throttle
        self._cache_seconds = cache_seconds
        self._key = os.urandom(32)
        self._verified: dict[bytes, float] = {}
        self._lock = threading.Lock()
        self._dummy_hash: str | None = None

    def authenticate(self, header, source: str = "-") -> str:
        """The username the `Authorization` header proves, else raise the 401; `source`
        is the request's source address (API Gateway's `identity.sourceIp`)."""
        username, password = parse_basic(header)
        source = source[:_MAX_SOURCE]
        stored = self._users.password_hash(username)
        fingerprint = self._fingerprint(username, password, stored)
        now = time.monotonic()
        with self._lock:
            expires = self._verified.get(fingerprint)
        if self._throttle is not None:
            # First, and even for a login verified a moment ago: else a guess that hits the
            # password a user just used would get through a lock, from the cache.
            self._throttle.check(username if stored is not None else None, source)
        if stored is not None and expires is not None and expires > now:
            return username
        if stored is None:
            # Spend the same work as a real check, so timing does not reveal who exists.
            verify_password(password, self._dummy())
            accepted = False
        else:
            accepted = verify_password(password, stored)
        if not accepted:
            if self._throttle is not None and stored is not None:  # nothing written for a non-user
                self._throttle.record_failure(username, source)
            raise Unauthenticated()
        if weaker_than(stored, self._users.scrypt_n):
            stored = self._users.upgrade_hash(username, password, stored)
            fingerprint = self._fingerprint(username, password, stored)
        with self._lock:
            self._verified = {k: v for k, v in self._verified.items() if v > now}
            self._verified[fingerprint] = now + self._cache_seconds
        return username

    def _fingerprint(self, username: str, password: str, stored) -> bytes:
        return hmac.new(self._key, f"{username}\0{password}\0{stored}".encode("utf-8"), hashlib.sha256).digest()

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = hash_password("not a real password", self._users.scrypt_n)
        return self._dummy_hash
