"""Errors that cross sub-packages: raised in one, acted on by a caller that must not import it.

SandboxError lives here, not in chalicelib.runner: the runner function's handler in app.py
and the local stack's Lambda end a container on it, and app.py (the API's module too) must
not load the runner at import (the import contract in pyproject.toml)."""


class SandboxError(Exception):
    """What a run left could not be removed: the process must not run another notebook."""
