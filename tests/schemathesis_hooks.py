"""Schemathesis hooks for the fuzz suite (loaded through SCHEMATHESIS_HOOKS): a check that
every error the server gives, whatever the request, is in the seed's error shape."""

import json

import schemathesis


@schemathesis.check
def seed_shaped_errors(ctx, response, case):
    """A 4xx or 5xx answer is `{"error": {"status": N, "message": "..."}}` with HTTP status N."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} answer is not JSON: {response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    if not (
        isinstance(error, dict)
        and set(body) == {"error"}
        and set(error) == {"status", "message"}
        and error["status"] == response.status_code
        and isinstance(error["message"], str)
    ):
        raise AssertionError(f"{response.status_code} answer not in the seed's shape: {response.content[:200]!r}")
    return None
