"""Authentication: HTTP Basic credentials checked against salted scrypt hashes, with
failed logins throttled per username.

Every failure, whatever its cause (no header, bad encoding, unknown user, wrong
password), raises the same 401, and an unknown user costs the same hash as a known one.
Past `max_failures` failed logins for one username within a window, every login for that
name, right password or not, is a 429 with `Retry-After` until the window ends; the
count lives in DynamoDB, so it holds across Lambda containers, and an unknown name is
counted and refused exactly like a known one.
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

# scrypt cost: about 40 ms a check here; memory 16 MiB (128 * r * n bytes).
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
_SCHEME = "scrypt"
_MAX_USERNAME = 64


def hash_password(password: str) -> str:
    """A salted scrypt hash of `password`, self-describing: scrypt$n$r$p$salt$hash."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return f"{_SCHEME}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the `stored` hash, compared in constant time."""
    try:
        scheme, n, r, p, salt_text, expected_text = stored.split("$")
        if scheme != _SCHEME:
            return False
        salt, expected = base64.b64decode(salt_text), base64.b64decode(expected_text)
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(digest, expected)


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
    """Failed logins per username, in the users table under keys no username can have
    (`#failed-logins#<name>`; usernames never contain `#`).

    A window opens at a name's first failure; once `max_failures` failures fall in it,
    every login for that name is refused until it ends, so no one is locked out longer
    than `window_seconds`. Failures are counted after the password check, with atomic
    writes: a burst of right passwords is never refused, and parallel guesses can exceed
    the budget by at most what is in flight at the moment it runs out.
    """

    KEY_PREFIX = "#failed-logins#"

    def __init__(self, table, max_failures: int, window_seconds: float, clock: Clock = time.time):
        self._table = table
        self._max_failures = max_failures
        self._window_ms = int(window_seconds * 1000)
        self._clock = clock

    def check(self, username: str) -> None:
        """Raise the 429 if `username` is locked out now."""
        record = self._table.get_item(Key=self._key(username), ConsistentRead=True).get("Item")
        now = self._now_ms()
        if record is None or int(record["window_start"]) <= now - self._window_ms:
            return
        if int(record["failures"]) >= self._max_failures:
            retry_after = math.ceil((int(record["window_start"]) + self._window_ms - now) / 1000)
            raise TooManyFailures(max(1, retry_after))

    def record_failure(self, username: str) -> None:
        """Count one failed login: in the open window, else in a new one."""
        now = self._now_ms()
        cutoff = now - self._window_ms
        try:
            self._table.update_item(
                Key=self._key(username),
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
                Key=self._key(username),
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
            self.record_failure(username)  # a concurrent failure opened the window: count in it

    def _key(self, username: str) -> dict:
        return {"username": self.KEY_PREFIX + username}

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

    def authenticate(self, header) -> str:
        """The username the `Authorization` header proves, else raise the 401."""
        username, password = parse_basic(header)
        stored = self._users.password_hash(username)
        fingerprint = hmac.new(self._key, f"{username}\0{password}\0{stored}".encode("utf-8"), hashlib.sha256).digest()
        now = time.monotonic()
        with self._lock:
            expires = self._verified.get(fingerprint)
        # A name longer than any username's limit is never a user: nothing to throttle.
        throttle = self._throttle if len(username) <= _MAX_USERNAME else None
        if throttle is not None:
            # First, and even for a login verified a moment ago: else a guess that hits the
            # password a user just used would get through a lock, from the cache.
            throttle.check(username)
        if stored is not None and expires is not None and expires > now:
            return username
        if stored is None:
            # Spend the same work as a real check, so timing does not reveal who exists.
            verify_password(password, self._dummy())
            accepted = False
        else:
            accepted = verify_password(password, stored)
        if not accepted:
            if throttle is not None:
                throttle.record_failure(username)
            raise Unauthenticated()
        with self._lock:
            self._verified = {k: v for k, v in self._verified.items() if v > now}
            self._verified[fingerprint] = now + self._cache_seconds
        return username

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = hash_password("not a real password")
        return self._dummy_hash
