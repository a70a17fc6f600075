"""What every request goes through: size limit, authentication, error mapping, access log.

Routes raise ApiError for client mistakes; AWS failures become 503s; anything else is
a bug, logged with its traceback and answered with a 500 that says nothing more.
"""

import functools
import json
import logging
import time

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import services
from chalicelib.api.errors import FIXED_MESSAGES, ApiError, error_response
from chalicelib.common.aws import error_code

OPENAPI_PATH = "/_notebooks/openapi.json"
ANY_CONTENT_TYPE = ["*/*"]  # bodies are parsed by us, whatever the client labels them

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
                return view(*args, **kwargs)
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
            username = services.get().authenticator.authenticate(request.headers.get("authorization"))
            request.username = username
            limit = services.get().settings.max_body_bytes
            if len(request.raw_body or b"") > limit:
                raise ApiError(413, f"Request body too large: at most {limit} bytes")
        response = _seed_shape(get_response(request))
    except ApiError as error:
        response = error.response()
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
