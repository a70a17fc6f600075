"""The local stack's own AWS credentials, and the guard that refuses every request
signed with any other.

The local stack's servers (the embedded AWS, the local Lambda) listen on loopback, where
any process of the machine, a notebook's kernel included, can find their ports. Each
start of the stack makes a random access key. Its processes get it, with the servers'
addresses, on their standard input, never in their environment, which /proc shows to
processes of the same user (`receive_secrets`); and each makes itself non-dumpable before
reading it. The servers answer only requests whose signature names that key: in the
`Authorization` header (SigV4 `Credential=<key id>/<date>/<region>/<service>/aws4_request`,
or SigV2 `AWS <key id>:<signature>`) or, for a presigned URL, in its `X-Amz-Credential`
(SigV4) or `AWSAccessKeyId` (SigV2, which boto3 uses for S3 in us-east-1) parameter.

The key id is as random as a secret key (128 bits), so checking it is enough to tell
this stack's clients from others; the signature itself is not verified (moto does not).
"""

import hmac
import json
import os
import re
import secrets
import sys
from urllib.parse import parse_qs

# SigV4 (`AWS4-HMAC-SHA256 Credential=<key id>/...`) or SigV2 (`AWS <key id>:<signature>`).
_SIGNED_BY = re.compile(r"Credential=([^/,\s]+)/|^AWS ([^:\s]+):")


def new_credentials() -> dict:
    """A fresh access key, as the environment variables boto3 reads."""
    return {
        "AWS_ACCESS_KEY_ID": "LOCAL" + secrets.token_hex(16).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
    }


def is_secret(name: str) -> bool:
    """Whether an environment variable tells where the stack's servers are or how to
    reach them: the credentials and the endpoints."""
    return name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") or name.startswith(
        "AWS_ENDPOINT_URL"
    )


def split_environment(env: dict) -> tuple:
    """(what a stack process may have in its environment, what it gets on stdin).
    `NOTEBOOKS_USERS` (passwords) goes to neither: only the supervisor seeds users."""
    public = {name: value for name, value in env.items() if not is_secret(name) and name != "NOTEBOOKS_USERS"}
    return public, {name: value for name, value in env.items() if is_secret(name)}


def send_secrets(stream, values: dict) -> None:
    """Write `values` as the first line a stack process reads on its stdin."""
    stream.write(json.dumps(values) + "\n")
    stream.flush()


def receive_secrets() -> None:
    """Make this process non-dumpable, then add the first line of stdin (JSON, from
    `send_secrets`) to its environment (which /proc does not show: it shows what the
    process started with)."""
    from chalicelib.runner.sandbox import forbid_inspection

    forbid_inspection()
    os.environ.update(json.loads(sys.stdin.readline()))


def signed_key_id(environ: dict):
    """The access key id a WSGI request is signed with, or None if it is not signed."""
    found = _SIGNED_BY.search(environ.get("HTTP_AUTHORIZATION", ""))
    if found:
        return found.group(1) or found.group(2)
    query = parse_qs(environ.get("QUERY_STRING", ""))
    credential = query.get("X-Amz-Credential", query.get("AWSAccessKeyId", [""]))[0]
    return credential.split("/")[0] or None


class CredentialGuard:
    """WSGI middleware: only requests signed with `access_key_id` reach `app`; any other
    gets a 403 in the shape AWS gives for an unknown key (XML for S3's REST protocol,
    JSON for the JSON protocols)."""

    def __init__(self, app, access_key_id: str):
        self._app = app
        self._key = access_key_id.encode()

    def __call__(self, environ, start_response):
        key = signed_key_id(environ)
        if key is not None and hmac.compare_digest(key.encode(), self._key):
            return self._app(environ, start_response)
        message = "The AWS access key id you provided does not exist in our records."
        if environ.get("HTTP_X_AMZ_TARGET") or environ.get("PATH_INFO", "").startswith("/2015-03-31/"):
            body = json.dumps({"__type": "UnrecognizedClientException", "message": message}).encode()
            headers = [
                ("Content-Type", "application/x-amz-json-1.1"),
                ("x-amzn-ErrorType", "UnrecognizedClientException"),
            ]
        else:
            body = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidAccessKeyId</Code>"
                f"<Message>{message}</Message></Error>"
            ).encode()
            headers = [("Content-Type", "application/xml")]
        start_response("403 Forbidden", headers + [("Content-Length", str(len(body)))])
        return [body]
