"""Domain errors: what a service refuses, and why, in words a client is shown.

Nothing here knows HTTP. The API's edge (chalicelib/api/errors.py) maps each class to
the seed's status and error body with one table; the runner catches the ones that tell
it what a schedule firing does.
"""

from typing import Optional

# The seed's prefix of a failure's detail (a refused schedule, a schedule change under way).
PROCESSING_FAILED = "Error occurred during request processing: "
# Messages the seed fixes, named once so services and tests agree on them.
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


class DomainError(Exception):
    """A refusal a client caused or can act on; `message` is what the client reads."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(DomainError):
    """The request is wrong: a field (named in the message, and in `field` where one is
    to blame), an unknown id, or a request AWS refused as asked."""

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.field = field


class NotFound(DomainError):
    """What the request names does not exist for its caller (a run, an output, a webhook)."""


class Conflict(DomainError):
    """The request clashes with the state it found: changed meanwhile, already finished,
    gone since; the same request may succeed later."""


class NameTaken(Conflict):
    """The owner already has a notebook of that name."""

    def __init__(self, message: str = NAME_TAKEN):
        super().__init__(message)


class QuotaExceeded(DomainError):
    """The caller holds as many active runs as the deployment allows."""


class TooLarge(DomainError):
    """What the request sends or asks for is over a size limit."""


class NothingDeleted(DomainError):
    """A Delete found none of its notebooks (the seed answers it with status 200)."""

    def __init__(self, message: str = NO_NOTEBOOKS_DELETED):
        super().__init__(message)


class Unauthenticated(DomainError):
    """No valid credentials: the one answer to every failed login, whatever the cause."""

    def __init__(self, message: str = "Authentication required"):
        super().__init__(message)


class TooManyFailures(DomainError):
    """Logins of this name are throttled for `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"Too many failed logins: try again in {retry_after} seconds")
        self.retry_after = retry_after


class SandboxError(Exception):
    """What a run left could not be removed: the process must not run another notebook.

    Here, not in chalicelib.runner: the runner function's handler in app.py and the local
    stack's Lambda end a container on it, and app.py (the API's module too) must not load
    the runner at import (the import contract in pyproject.toml)."""
