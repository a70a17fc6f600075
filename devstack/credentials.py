"""The local stack's own AWS credentials, and the guard that refuses every request
signed with any other.

The local stack's servers (the embedded AWS, the local Lambda) listen on loopback, where
any process of the machine, a notebook's kernel included, can find their ports. Each
start of the stack makes a random access key. Its processes get it, with the servers'
addresses, on their standard input, never in their environment, which /proc shows to
processes of the same user (`receive_secrets`); and each makes itself non-dumpable before
reading it. The servers answer only requests signed with that key, as AWS checks them:
the signature is computed again from the request and the secret key (botocore's own
signers) and compared in constant time. Signed in the `Authorization` header (SigV4
`Credential=<key id>/<date>/<region>/<service>/aws4_request, SignedHeaders=..., Signature=...`,
or SigV2 `AWS <key id>:<signature>`) or, for a presigned URL, in its query (SigV4
`X-Amz-Credential`..., or SigV2 `AWSAccessKeyId`, `Expires`, `Signature`, which boto3 uses
for S3 in us-east-1); a presigned URL past its expiry is refused. The key id alone (which
every presigned download link shows) is then of no use.
"""

import calendar
import hmac
import io
import json
import os
import re
import secrets
import sys
import time
from urllib.parse import parse_qs, quote

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


_SIGV4 = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]+)$")
_SIGV2 = re.compile(r"^AWS ([^:\s]+):(\S+)$")
_SIGV4_TIME = "%Y%m%dT%H%M%SZ"


def _request(environ, body: bytes):
    """The request as botocore's signers see it: method, the URL as sent, the headers."""
    from botocore.awsrequest import AWSRequest

    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if not raw:
        raw = quote(environ.get("PATH_INFO", "")) + (
            "?" + environ["QUERY_STRING"] if environ.get("QUERY_STRING") else ""
        )
    headers = {name[5:].replace("_", "-").title(): value for name, value in environ.items() if name.startswith("HTTP_")}
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(name):
            headers[name.replace("_", "-").title()] = environ[name]
    return AWSRequest(
        method=environ["REQUEST_METHOD"], url=f"http://{headers.get('Host', '')}{raw}", headers=headers, data=body
    )


def _sigv4_matches(request, key_id, secret, scope, signed_headers, signature, timestamp, query_signed) -> bool:
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import HTTPHeaders
    from botocore.credentials import Credentials

    date, region, service, terminator = (scope.split("/") + ["", "", "", ""])[:4]
    if terminator != "aws4_request" or date != timestamp[:8]:
        return False
    names = signed_headers.split(";")

    class Verifier(S3SigV4Auth if service == "s3" else SigV4Auth):
        def headers_to_sign(self, request):
            chosen = HTTPHeaders()
            for name in names:
                if name in request.headers:
                    chosen[name] = request.headers[name]
            return chosen

        def payload(self, request):
            # A presigned S3 URL signs no payload; the others, what was sent.
            return "UNSIGNED-PAYLOAD" if query_signed and service == "s3" else super().payload(request)

    if query_signed:  # the signature is not part of what it signs
        kept = [pair for pair in request.url.split("?", 1)[1].split("&") if not pair.startswith("X-Amz-Signature=")]
        request.url = request.url.split("?", 1)[0] + "?" + "&".join(kept)
    if any(name not in request.headers for name in names):
        return False
    request.context["timestamp"] = timestamp
    verifier = Verifier(Credentials(key_id, secret), service, region)
    expected = verifier.signature(verifier.string_to_sign(request, verifier.canonical_request(request)), request)
    return hmac.compare_digest(expected, signature)


def _sigv2_matches(request, key_id, secret, signature, expires) -> bool:
    from urllib.parse import urlsplit

    from botocore.auth import HmacV1Auth
    from botocore.credentials import Credentials

    signed_date = expires if expires is not None else request.headers.get("Date", "")

    class Verifier(HmacV1Auth):
        def _get_date(self):  # what the client signed: the Date header, or the URL's expiry
            return signed_date

    split = urlsplit(request.url)
    # A bucket's own resource is signed as `/<bucket>/` (botocore's auth_path), path-style.
    auth_path = split.path + "/" if split.path.count("/") == 1 and split.path != "/" else None
    expected = Verifier(Credentials(key_id, secret)).get_signature(
        request.method, split, request.headers, auth_path=auth_path
    )
    return hmac.compare_digest(expected, signature)


def signature_matches(environ, access_key_id: str, secret: str) -> bool:
    """Whether a WSGI request is signed with (`access_key_id`, `secret`), SigV4 or SigV2,
    in its headers or (a presigned URL, not past its expiry) in its query."""
    authorization = environ.get("HTTP_AUTHORIZATION", "")
    query = parse_qs(environ.get("QUERY_STRING", ""))
    one = lambda name: query.get(name, [""])[0]  # noqa: E731
    v4, v2 = _SIGV4.match(authorization), _SIGV2.match(authorization)
    if v4:
        credential, signed_headers, signature = v4.groups()
        timestamp, query_signed = environ.get("HTTP_X_AMZ_DATE", ""), False
    elif v2:
        credential, signature = v2.groups()
    elif one("X-Amz-Signature"):
        credential, signed_headers, signature = (
            one("X-Amz-Credential"),
            one("X-Amz-SignedHeaders"),
            one("X-Amz-Signature"),
        )
        timestamp, query_signed = one("X-Amz-Date"), True
        try:
            issued = calendar.timegm(time.strptime(timestamp, _SIGV4_TIME))
            if time.time() > issued + int(one("X-Amz-Expires")):
                return False
        except ValueError:
            return False
    elif one("Signature"):
        credential, signature = one("AWSAccessKeyId"), one("Signature")
        if not one("Expires").isdigit() or time.time() > int(one("Expires")):
            return False
    else:
        return False
    key_id, _, scope = credential.partition("/")
    if not hmac.compare_digest(key_id.encode(), access_key_id.encode()):
        return False
    body = b""
    if "HTTP_X_AMZ_CONTENT_SHA256" not in environ and environ.get("CONTENT_LENGTH", "").isdigit():
        # The signature covers the body: read it, and hand the application a copy.
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        environ["wsgi.input"] = io.BytesIO(body)
    request = _request(environ, body)
    if v4 or one("X-Amz-Signature"):
        return _sigv4_matches(request, key_id, secret, scope, signed_headers, signature, timestamp, query_signed)
    return _sigv2_matches(request, key_id, secret, signature, None if v2 else one("Expires"))


class CredentialGuard:
    """WSGI middleware: only requests signed with (`access_key_id`, `secret`) reach `app`;
    any other gets a 403 in the shape AWS gives (XML for S3's REST protocol, JSON for the
    JSON protocols): for an unknown key, or for a signature that does not match."""

    def __init__(self, app, access_key_id: str, secret: str):
        self._app = app
        self._key = access_key_id
        self._secret = secret

    def __call__(self, environ, start_response):
        key = signed_key_id(environ)
        if key is not None and hmac.compare_digest(key.encode(), self._key.encode()):
            try:
                if signature_matches(environ, self._key, self._secret):
                    return self._app(environ, start_response)
            except Exception:  # noqa: BLE001 - a request we cannot verify is refused, whatever the reason
                pass
            codes = ("InvalidSignatureException", "SignatureDoesNotMatch")
            message = "The request signature we calculated does not match the signature you provided."
        else:
            codes = ("UnrecognizedClientException", "InvalidAccessKeyId")
            message = "The AWS access key id you provided does not exist in our records."
        if environ.get("HTTP_X_AMZ_TARGET") or environ.get("PATH_INFO", "").startswith("/2015-03-31/"):
            body = json.dumps({"__type": codes[0], "message": message}).encode()
            headers = [
                ("Content-Type", "application/x-amz-json-1.1"),
                ("x-amzn-ErrorType", codes[0]),
            ]
        else:
            body = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{codes[1]}</Code>"
                f"<Message>{message}</Message></Error>"
            ).encode()
            headers = [("Content-Type", "application/xml")]
        start_response("403 Forbidden", headers + [("Content-Length", str(len(body)))])
        return [body]
