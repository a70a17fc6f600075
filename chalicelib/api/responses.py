"""JSON answers within Lambda's response limit (6 MB).

An answer too large for one Lambda response (a whole List of many notebooks with long
names, a page of runs with large parameters) is stored as a short-lived S3 object, and
the client is sent there with `303 See Other` and a presigned link, as large run outputs
are. A client that follows redirects gets the whole array; smaller answers are unchanged.
"""

import json
import uuid

from chalice import Response

from chalicelib.storage.files import FileStore, response_key

# What a proxy response adds around its body: status, headers, the JSON envelope.
ENVELOPE_BYTES = 4096
LINK_SECONDS = 300


def lambda_payload_bytes(body: str) -> int:
    """The bytes Lambda returns for a proxy response carrying `body` (escaped again as a
    JSON string inside the envelope: quotes and backslashes double)."""
    return len(json.dumps(body).encode("utf-8")) + ENVELOPE_BYTES


def bounded_json(value, owner: str, files: FileStore, limit: int, headers: dict | None = None) -> Response:
    """`value` as a JSON response, or, past `limit` bytes of Lambda payload, a 303 to a
    presigned S3 copy of the same JSON (5 minutes)."""
    headers = dict(headers or {})
    body = json.dumps(value, separators=(",", ":"))  # what Chalice sends for a list or dict
    if lambda_payload_bytes(body) <= limit:
        return Response(body=body, headers={"Content-Type": "application/json", **headers})
    key = response_key(owner, str(uuid.uuid4()))
    files.put(key, body.encode("utf-8"), content_type="application/json")
    return Response(body="", status_code=303, headers={"Location": files.download_url(key, LINK_SECONDS), **headers})
