"""HTTP errors in the seed's shape: `{"error": {"status": N, "message": "..."}}`, and the
one table that turns a service's domain error (common/errors.py) into one.

The HTTP status always equals N. The seed answers "No notebooks deleted" with status 200
inside an error body, so status 200 is a valid error status here too.
"""

from chalice import Response
from chalice.app import ChaliceUnhandledError

from chalicelib.common import errors
from chalicelib.common.errors import (
    MISSING_NEW_NAME,
    MODULE_REQUIRED,
    NO_NOTEBOOK_FOUND,
    NOTEBOOK_ID_INVALID,
    NOTEBOOK_ID_MISSING,
    NOTEBOOK_IDS_REQUIRED,
    RUN_IDS_REQUIRED,
)

AUTH_HEADERS = {"WWW-Authenticate": 'Basic realm="notebooks"'}
# A message quotes what the client sent (an unknown field, nbformat's complaint about a
# property); past this many characters it is cut, so that an answer stays far below
# Lambda's 6 MB response limit whatever the body held.
MAX_MESSAGE_CHARS = 1000


class ApiError(ChaliceUnhandledError):
    """A client-facing error as the edge answers it (status, message, headers).

    Chalice lets ChaliceUnhandledError through to the middleware, which answers it.
    """

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> Response:
        """This error as a Chalice response in the seed's shape."""
        return error_response(self.status, self.message, self.headers)


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters, the last an ellipsis, where it is longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    """A response with the seed's error body and HTTP status `status`; a message over
    MAX_MESSAGE_CHARS is cut there, marked with an ellipsis."""
    return Response(
        body={"error": {"status": status, "message": cut(message, MAX_MESSAGE_CHARS)}},
        status_code=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


# Each domain error's status, and the headers that go with it. A subclass not listed
# answers as its nearest listed base (NameTaken as Conflict).
STATUSES = {
    errors.InvalidInput: 400,
    errors.Unauthenticated: 401,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.QuotaExceeded: 429,
    errors.TooManyFailures: 429,
    errors.NothingDeleted: 200,
}
_HEADERS = {
    errors.Unauthenticated: lambda error: AUTH_HEADERS,
    errors.TooManyFailures: lambda error: {"Retry-After": str(error.retry_after)},
}


def from_domain(error: errors.DomainError) -> ApiError:
    """The answer to a domain error: its status from STATUSES, its message as it is."""
    kind = next(kind for kind in type(error).__mro__ if kind in STATUSES)
    headers = _HEADERS.get(kind, lambda error: {})(error)
    return ApiError(STATUSES[kind], error.message, headers)


# Messages the seed gives word for word; others are details in the seed's "{str(e)}" slot.
FIXED_MESSAGES = frozenset(
    {
        NOTEBOOK_ID_INVALID,
        NOTEBOOK_IDS_REQUIRED,
        RUN_IDS_REQUIRED,
        NO_NOTEBOOK_FOUND,
        MISSING_NEW_NAME,
        NOTEBOOK_ID_MISSING,
        MODULE_REQUIRED,
    }
)
