"""HTTP errors in the seed's shape: `{"error": {"status": N, "message": "..."}}`.

The HTTP status always equals N. The seed answers "No notebooks deleted" with status 200
inside an error body, so status 200 is a valid error status here too.
"""

from chalice import Response
from chalice.app import ChaliceUnhandledError

AUTH_HEADERS = {"WWW-Authenticate": 'Basic realm="notebooks"'}


class ApiError(ChaliceUnhandledError):
    """A client-facing error, raised anywhere in chalicelib.

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


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    """A response with the seed's error body and HTTP status `status`."""
    return Response(
        body={"error": {"status": status, "message": message}},
        status_code=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def bad_request(message: str) -> ApiError:
    """A 400 with `message`."""
    return ApiError(400, message)


def unauthorized() -> ApiError:
    """The one answer to every failed login, whatever the cause."""
    return ApiError(401, "Authentication required", AUTH_HEADERS)


# The seed's prefix of a failure's detail (a 400's, a 409's).
PROCESSING_FAILED = "Error occurred during request processing: "
# Messages the seed fixes, named once so routes and tests agree on them.
NOTEBOOK_ID_INVALID = "Notebook ID invalid."
NOTEBOOK_IDS_REQUIRED = "Notebook IDs are required"
RUN_IDS_REQUIRED = "Notebook ID(s) are required"
NO_NOTEBOOK_FOUND = "No Notebook found"
MISSING_NEW_NAME = "Missing new name"
NOTEBOOK_ID_MISSING = "Notebook ID is missing"
NO_NOTEBOOKS_DELETED = "No notebooks deleted"
NAME_TAKEN = "A notebook with that name already exists"
MODULE_REQUIRED = "Module name is required"
RUN_NOT_FOUND = "Run not found"
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
