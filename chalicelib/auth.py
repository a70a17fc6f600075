"""Authentication: HTTP Basic credentials checked against salted scrypt hashes.

Every failure, whatever its cause (no header, bad encoding, unknown user, wrong
password), raises the same 401, and an unknown user costs the same hash as a known one.
"""
import base64
import binascii
import hashlib
import hmac
import os
import threading
import time

from .errors import unauthorized

# scrypt cost: about 40 ms a check here; memory 16 MiB (128 * r * n bytes).
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
_SCHEME = "scrypt"


def hash_password(password: str) -> str:
    """A salted scrypt hash of `password`, self-describing: scrypt$n$r$p$salt$hash."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    encode = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    return f"{_SCHEME}${_N}${_R}${_P}${encode(salt)}${encode(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches the `stored` hash, compared in constant time."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != _SCHEME:
            return False
        salt, expected = base64.b64decode(salt), base64.b64decode(expected)
        digest = hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(digest, expected)


def parse_basic(header) -> tuple:
    """(username, password) from an `Authorization: Basic ...` header, else raise 401."""
    if not header:
        raise unauthorized()
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        raise unauthorized()
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII header text
        raise unauthorized()
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise unauthorized()
    return username, password


class Authenticator:
    """Checks Basic credentials against a user store.

    A successful check is remembered for `cache_seconds`, keyed by a keyed hash of the
    credentials and the stored hash, so a client polling a run does not pay scrypt on
    every request. The stored hash is still read on every request and is part of the
    key, so a removed user or a changed password takes effect at once.
    """

    def __init__(self, users, cache_seconds: float = 60.0):
        self._users = users
        self._cache_seconds = cache_seconds
        self._key = os.urandom(32)
        self._verified = {}
        self._lock = threading.Lock()
        self._dummy_hash = None

    def authenticate(self, header) -> str:
        """The username the `Authorization` header proves, else raise the 401."""
        username, password = parse_basic(header)
        stored = self._users.password_hash(username)
        fingerprint = hmac.new(
            self._key, f"{username}\0{password}\0{stored}".encode("utf-8"), hashlib.sha256
        ).digest()
        now = time.monotonic()
        with self._lock:
            expires = self._verified.get(fingerprint)
        if stored is not None and expires is not None and expires > now:
            return username
        if stored is None:
            # Spend the same work as a real check, so timing does not reveal who exists.
            verify_password(password, self._dummy())
            raise unauthorized()
        if not verify_password(password, stored):
            raise unauthorized()
        with self._lock:
            self._verified = {k: v for k, v in self._verified.items() if v > now}
            self._verified[fingerprint] = now + self._cache_seconds
        return username

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = hash_password("not a real password")
        return self._dummy_hash
