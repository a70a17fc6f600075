"""Request parsing and field validation: every client mistake becomes a 400 naming the field.

Nothing here touches storage, so a request that fails validation changes nothing.
"""

import base64
import binascii
import json
import keyword
import math
import re
import unicodedata

import pyjson5

from chalicelib.common.errors import MISSING_NEW_NAME, MODULE_REQUIRED, InvalidInput

MAX_NAME_LENGTH = 255
MAX_MODULE_LENGTH = 255
# Deepest nesting of objects and arrays under a body's field. A notebook needs about 6
# levels (cells, outputs, data); widget state in metadata a few more.
MAX_DEPTH = 64
# Largest epoch-milliseconds value a page token may carry (the year 2286).
_MAX_EPOCH_MS = 10**13
EXTENSION = ".ipynb"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# A run pointer's sort key after its notebook's prefix: created_at (15 digits) and a run id.
_RUN_POINTER_TAIL = re.compile(r"[0-9]{15}#[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_FORBIDDEN_CATEGORIES = {"Cc", "Zl", "Zp"}  # control characters and line/paragraph separators
# Bidi controls make a name display as another ("invoice\u202egnp.ipynb"); zero-width
# characters make two names that look the same.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")


def parse_body(raw, lenient: bool = False) -> dict:
    """The request body as a dict; an empty body is `{}`.

    Strict JSON: no NaN or Infinity (nor a number out of a float's range), each refused
    naming the field that holds it; no lone surrogates (they cannot be stored as UTF-8),
    no nesting deeper than Python can walk. `lenient` also accepts JSON5
    (unquoted keys), which the seed's own Run sample uses, with pyjson5: compiled, its
    cost linear in the body's size, so a malformed body of megabytes costs milliseconds.
    """
    if raw is None or not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise InvalidInput("Malformed JSON in request body: not UTF-8") from None
    # NaN, Infinity and 1e999 are read as floats here, then refused by field below.
    try:
        try:
            value = json.loads(text, parse_float=float, parse_constant=float)
        except ValueError as strict_error:
            if not lenient:
                raise
            try:
                value = pyjson5.loads(text)
            except pyjson5.Json5Exception:
                raise strict_error from None
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except ValueError as error:  # UnicodeEncodeError included: a lone surrogate
        raise InvalidInput(f"Malformed JSON in request body: {error}") from None
    except RecursionError:
        raise InvalidInput(f"Malformed JSON in request body: nested more than {MAX_DEPTH} levels deep") from None
    if not isinstance(value, dict):
        raise InvalidInput("Request body must be a JSON object")
    refusal = _unfit_field(value)
    if refusal is not None:
        raise InvalidInput(refusal)
    return value


def _unfit_field(body: dict):
    """Why a top-level field of `body` is refused (it nests deeper than MAX_DEPTH, or
    holds NaN or an infinite number), else None.

    Walked without recursion: what Python's stack cannot hold must be refused here, not
    found later by nbformat's validator or papermill (a RecursionError, a 500).
    """
    for field, value in body.items():
        pending = [(value, 1)]
        while pending:
            node, depth = pending.pop()
            if depth > MAX_DEPTH:
                return f"{field} is nested more than {MAX_DEPTH} levels deep"
            if isinstance(node, float) and not math.isfinite(node):
                return f"{field} holds NaN or an infinite number, which JSON does not allow"
            if isinstance(node, dict):
                pending.extend((child, depth + 1) for child in node.values())
            elif isinstance(node, list):
                pending.extend((child, depth + 1) for child in node)
    return None


def canonical_id(value) -> str | None:
    """The lower-case form of a UUID string, or None when `value` is not one."""
    if isinstance(value, str) and _UUID.match(value):
        return value.lower()
    return None


def is_epoch_ms(value) -> bool:
    """Whether a page key's `created_at` is epoch ms: an int (not a bool) in range, so a
    forged one never reaches DynamoDB (which takes at most 38 digits)."""
    return type(value) is int and 0 <= value <= _MAX_EPOCH_MS


def is_run_pointer_key(key, owner: str, prefix: str) -> bool:
    """Whether `key`, decoded from a client's next_token, is a page key of `owner`'s run
    pointers under `prefix`: `run#<notebook>#<created_at, 15 digits>#<run id>`, no more."""
    return (
        isinstance(key, dict)
        and set(key) == {"owner", "sk"}
        and key["owner"] == owner
        and isinstance(key["sk"], str)
        and key["sk"].startswith(prefix)
        and _RUN_POINTER_TAIL.fullmatch(key["sk"][len(prefix) :]) is not None
    )


def is_page_key(key, owner: str, prefix: str) -> bool:
    """Whether `key`, decoded from a client's next_token, is a List page key of `owner`:
    exactly `owner`, `sk` (`prefix` and a UUID) and `created_at` (epoch ms, an int, not a
    bool), each in range, so a forged token is refused before it reaches DynamoDB."""
    if not isinstance(key, dict) or set(key) != {"owner", "sk", "created_at"}:
        return False
    sk, created_at = key["sk"], key["created_at"]
    return (
        key["owner"] == owner
        and isinstance(sk, str)
        and sk.startswith(prefix)
        and _UUID.fullmatch(sk[len(prefix) :]) is not None
        and is_epoch_ms(created_at)
    )


def id_list(body: dict, field: str, missing_message: str, max_ids: int) -> list:
    """The list of ids in `body[field]`, in order, without repeats; shape errors are 400s.

    Ids are not checked for UUID form here: callers decide how an unknown id is answered.
    """
    value = body.get(field)
    if value is None or value == []:
        raise InvalidInput(missing_message)
    if not isinstance(value, list):
        raise InvalidInput(f"{field} must be a list of notebook IDs")
    if len(value) > max_ids:
        raise InvalidInput(f"{field} holds {len(value)} IDs: at most {max_ids} are allowed")
    if not all(isinstance(item, str) for item in value):
        raise InvalidInput(f"{field} must contain only strings")
    return list(dict.fromkeys(value))


def notebook_name(value, field: str = "new_name") -> str:
    """A valid notebook name from `value`, with `.ipynb` appended when missing.

    Names are NFC-normalised so that two spellings of one Unicode name are one name.
    """
    if value is None:
        raise InvalidInput(MISSING_NEW_NAME)
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string")
    name = unicodedata.normalize("NFC", value).strip()
    if not name:
        raise InvalidInput(MISSING_NEW_NAME)
    if any(unicodedata.category(char) in _FORBIDDEN_CATEGORIES for char in name):
        raise InvalidInput(f"{field} must not contain control characters")
    if any(char in _BIDI_CONTROLS for char in name):
        raise InvalidInput(
            f"{field} must not contain bidirectional control characters (they make a name display as another)"
        )
    if any(char in _ZERO_WIDTH for char in name):
        raise InvalidInput(f"{field} must not contain zero-width characters (they make two names look the same)")
    if "/" in name or "\\" in name:
        raise InvalidInput(f"{field} must not contain '/' or '\\'")
    if ".." in name:
        raise InvalidInput(f"{field} must not contain '..'")
    if not name.endswith(EXTENSION):
        name += EXTENSION
    stem = name[: -len(EXTENSION)]
    if not stem.strip():
        raise InvalidInput(MISSING_NEW_NAME)
    # The limit is on the name the user chose; `.ipynb` comes on top, given or not.
    if len(stem) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{field} is too long: at most {MAX_NAME_LENGTH} characters before .ipynb")
    return name


def module_name(body: dict) -> str:
    """The Run request's required `module`."""
    value = body.get("module")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidInput(MODULE_REQUIRED)
    if not isinstance(value, str):
        raise InvalidInput("module must be a string")
    if len(value) > MAX_MODULE_LENGTH:
        raise InvalidInput(f"module is too long: at most {MAX_MODULE_LENGTH} characters")
    return value


def parameters(body: dict, max_bytes: int) -> dict:
    """The Run request's optional papermill `parameters`: an object keyed by Python names,
    at most `max_bytes` as JSON (it is stored with each run)."""
    value = body.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("parameters must be a JSON object")
    for key in value:
        if not key.isidentifier() or keyword.iskeyword(key):
            raise InvalidInput(f"parameters keys must be Python identifiers: {key!r} is not")
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size > max_bytes:
        raise InvalidInput(f"parameters are too large: {size} bytes as JSON, at most {max_bytes}")
    return value


# The shortest run timeout: a millisecond (a shorter one could not be stored, as DynamoDB
# numbers go down to 1e-130 only).
MIN_TIMEOUT = 0.001


def timeout(body: dict, default: float, maximum: float, beyond_maximum: str = "") -> float:
    """The Run request's optional `timeout`, seconds: a number above 0 (from MIN_TIMEOUT)
    and at most `maximum` (`beyond_maximum` says why there, if need be); `default` when
    absent or null."""
    value = body.get("timeout")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not MIN_TIMEOUT <= value <= maximum:
        raise InvalidInput(
            f"timeout must be a number of seconds above 0 (at least {MIN_TIMEOUT:g}) "
            f"and at most {maximum:g}{beyond_maximum}"
        )
    return value


MAX_CLIENT_TOKEN_LENGTH = 255


def client_token(body: dict, header) -> str | None:
    """A Run's optional idempotency token: the `Idempotency-Key` header, else `client_token`
    in the body; None when neither is given."""
    value, field = (header, "Idempotency-Key") if header is not None else (body.get("client_token"), "client_token")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field} must be a non-empty string")
    if len(value) > MAX_CLIENT_TOKEN_LENGTH:
        raise InvalidInput(f"{field} is too long: at most {MAX_CLIENT_TOKEN_LENGTH} characters")
    return value


def page_token(key) -> str | None:
    """The `next_token` of a DynamoDB LastEvaluatedKey (None: no next page)."""
    if not key:
        return None
    plain = {name: (int(value) if not isinstance(value, str) else value) for name, value in key.items()}
    return base64.urlsafe_b64encode(json.dumps(plain).encode("utf-8")).decode("ascii")


def page_key(token, valid) -> dict | None:
    """The LastEvaluatedKey in a `next_token` (None when there is none); a 400 unless
    `valid(key)` holds, so a client cannot read past what it may see."""
    if not token:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError, RecursionError):
        key = None
    if not isinstance(key, dict) or not valid(key):
        raise InvalidInput("next_token is invalid")
    return key


def page_limit(value, maximum: int) -> int | None:
    """The List `limit` query parameter: None when absent, else an int in 1..maximum."""
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,7}", value) or not 1 <= int(value) <= maximum:
        raise InvalidInput(f"limit must be an integer from 1 to {maximum}")
    return int(value)
