"""What every request goes through: authentication, size limit, a body labelled JSON,
error mapping, access log.

Services raise domain errors (common/errors.py), answered as api/errors.py's table says;
AWS failures become 503s; anything else is a bug, logged with its traceback and answered
with a 500 that says nothing more.
"""

import functools
import json
import logging
import time

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import services
from chalicelib.api.errors import FIXED_MESSAGES, ApiError, error_response, from_domain
from chalicelib.common.aws import error_code
from chalicelib.common.errors import DomainError

OPENAPI_PATH = "/_notebooks/openapi.json"
ANY_CONTENT_TYPE = ["*/*"]  # a body's label is checked by require_json, for every route

# Not under the "notebooks" logger: Chalice sets its app logger to ERROR.
access_log = logging.getLogger("chalicelib.access")
access_log.setLevel(logging.INFO)
error_log = logging.getLogger("chalicelib.api.errors")


def describe(error: Exception) -> str:
    """A short cause for an AWS failure: its error code, never the raw message."""
    if isinstance(error, ClientError):
        return error_code(error) or "AWS error"
    return type(error).__name__


def seed_failures(message: str, explain: bool):
    """Decorate a view so that an AWS failure answers 503 `message: <cause>`, and, with
    `explain`, a 400 whose message the seed does not fix word for word answers in the
    seed's form for that endpoint, `message: <detail>`."""

    def wrap(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            try:
                try:
                    return view(*args, **kwargs)
                except DomainError as refusal:
                    raise from_domain(refusal) from refusal
            except ApiError as error:
                if (
                    not explain
                    or error.status != 400
                    or error.message in FIXED_MESSAGES
                    or error.message.startswith(message)
                ):
                    raise
                raise ApiError(400, f"{message}: {error.message}", error.headers) from error
            except (ClientError, BotoCoreError) as error:
                error_log.warning("AWS failure in %s: %s", view.__name__, error)
                raise ApiError(503, f"{message}: storage unavailable ({describe(error)})") from error

        return guarded

    return wrap


JSON = "application/json"
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")
# Where a notebook is uploaded, a body of another type (a form, a file as curl -F or -T
# sends it, a notebook's own media type) is told what to send.
UPLOAD_HINTS = {
    ("PUT", "/_notebooks/notebooks/{notebook_id}/content"): ": send the notebook's JSON itself as the request body, "
    "with Content-Type: application/json",
    ("POST", "/_notebooks/notebooks"): ': send {"notebook_name": "...", "content": <the notebook\'s JSON>} '
    "as the request body, with Content-Type: application/json",
}


def require_json(request) -> None:
    """A request that sends a body (not only whitespace) must label it `application/json`
    (parameters such as `; charset=utf-8` aside): anything else, or no label, is a 415
    naming the type, so a web page's form (text/plain, a form encoding: no CORS
    preflight) cannot send one with a browser's cached credentials, even an empty one. A
    request without a body needs no label."""
    media_type = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if not (request.raw_body or b"").strip():
        # An empty form a web page posts changes things too (a Create, a cancel): refused.
        if request.method in ("GET", "HEAD") or media_type not in (*_FORMS, "text/plain"):
            return
    elif media_type == JSON:
        return
    hint = UPLOAD_HINTS.get((request.method, request.path.rstrip("/")), "")
    raise ApiError(415, f"Content-Type must be {JSON}{hint}")


def _seed_shape(response):
    """Chalice's own errors (405, 415, 500) rewritten in the seed's error shape."""
    body = response.body
    if response.status_code >= 400 and isinstance(body, dict) and {"Code", "Message"} <= set(body):
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-type"}
        return error_response(response.status_code, body["Message"], headers)
    return response


def handle(request, get_response):
    """Chalice HTTP middleware: the whole life of one request."""
    started = time.monotonic()
    username = "-"
    try:
        if request.path != OPENAPI_PATH:
            source = (request.context.get("identity") or {}).get("sourceIp") or "-"
            username = services.get().authenticator.authenticate(request.headers.get("authorization"), source)
            request.username = username
            limit = services.get().settings.max_body_bytes
            if len(request.raw_body or b"") > limit:
                raise ApiError(413, f"Request body too large: at most {limit} bytes")
            require_json(request)
        response = _seed_shape(get_response(request))
    except ApiError as error:
        response = error.response()
    except DomainError as refusal:  # from the authenticator, before any route
        response = from_domain(refusal).response()
    except (ClientError, BotoCoreError) as error:
        error_log.warning("AWS failure before %s %s: %s", request.method, request.path, error)
        response = error_response(503, f"Service unavailable: storage unavailable ({describe(error)})")
    except Exception:  # noqa: BLE001 - the last resort: logged, answered as a 500 in the seed's shape
        error_log.exception("unhandled error in %s %s", request.method, request.path)
        response = error_response(500, "Internal server error")
    access_log.info(
        json.dumps(
            {
                "method": request.method,
                "path": request.context.get("path", request.path),
                "user": username,
                "status": response.status_code,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            }
        )
    )
    return response
