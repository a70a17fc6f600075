"""Storage of files in S3: notebooks and the executed outputs of their runs.

Keys use ids, never names, so a rename moves no object and leaves none behind. The
bucket is versioned: each write of a notebook makes a new object version, whose S3
VersionId names it ("null" for an object written before versioning was on).
"""

from typing import Optional, Protocol, runtime_checkable

from botocore.exceptions import ClientError

from chalicelib.common.aws import error_code

_DELETE_OBJECTS_KEYS = 1000  # AWS's limit per DeleteObjects
NULL_VERSION = "null"  # S3's version id of an object written while versioning was off


def notebook_key(owner: str, notebook_id: str) -> str:
    """Where a notebook's .ipynb lives."""
    return f"notebooks/{owner}/{notebook_id}.ipynb"


def outputs_prefix(owner: str, notebook_id: str) -> str:
    """The folder of every executed output of one notebook."""
    return f"runs/{owner}/{notebook_id}/"


def output_key(owner: str, notebook_id: str, run_id: str) -> str:
    """Where one run's executed notebook lives."""
    return f"{outputs_prefix(owner, notebook_id)}{run_id}.ipynb"


RESPONSES_PREFIX = "responses/"


def response_key(owner: str, name: str) -> str:
    """Where an answer too large for a Lambda response waits for its download (a day,
    by the bucket's lifecycle rule)."""
    return f"{RESPONSES_PREFIX}{owner}/{name}.json"


@runtime_checkable
class FileStore(Protocol):
    """What the services keep files in: notebooks, run outputs and logs, large answers,
    each at a key, each write a new version. NotebookFiles is it on S3 (AWS's, or the
    local stack's embedded one)."""

    def put(self, key: str, body: bytes, content_type: str = ...) -> str:
        """Store `body` at `key`; the version written."""

    def size(self, key: str) -> Optional[int]:
        """The size in bytes at `key`, or None."""

    def get(self, key: str, version: Optional[str] = None) -> Optional[bytes]:
        """The bytes at `key` (of `version`), or None."""

    def get_version(self, key: str, version: Optional[str] = None) -> Optional[tuple]:
        """(bytes, version) at `key`, or None."""

    def download_url(self, key: str, seconds: int = ...) -> str:
        """A link that lets whoever holds it download `key` for `seconds`."""

    def delete(self, key: str, version: Optional[str] = None) -> None:
        """Delete `key` (or that version of it); a missing one is no error."""

    def delete_many(self, keys: list) -> None:
        """Delete these keys; missing ones are no error."""


class NotebookFiles:
    """Reads and writes .ipynb objects in one bucket (a FileStore)."""

    def __init__(self, s3, bucket: str):
        self._s3 = s3
        self._bucket = bucket

    def put(self, key: str, body: bytes, content_type: str = "application/x-ipynb+json") -> str:
        """Store `body` (notebook JSON) at `key`; the version written."""
        response = self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType=content_type)
        return response.get("VersionId") or NULL_VERSION

    def size(self, key: str):
        """The size in bytes of the object at `key` (a HEAD: nothing is read), or None."""
        try:
            return self._s3.head_object(Bucket=self._bucket, Key=key)["ContentLength"]
        except ClientError as error:
            if error_code(error) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def get(self, key: str, version=None):
        """The bytes at `key` (of that `version`, when given), or None when there is no such object."""
        found = self.get_version(key, version)
        return found[0] if found else None

    def get_version(self, key: str, version=None):
        """(bytes, version) at `key`: of `version` when given, else the latest; None when
        there is no such object or version."""
        request = {"Bucket": self._bucket, "Key": key, **({"VersionId": version} if version else {})}
        try:
            response = self._s3.get_object(**request)
        except ClientError as error:
            # A version id S3 never made is a 400 InvalidArgument: gone all the same.
            if error_code(error) in ("NoSuchKey", "NoSuchVersion", "404", "InvalidArgument"):
                return None
            raise
        return response["Body"].read(), response.get("VersionId") or NULL_VERSION

    def download_url(self, key: str, seconds: int = 300) -> str:
        """A presigned URL that lets whoever holds it download `key` for `seconds`."""
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=seconds
        )

    def delete(self, key: str, version=None) -> None:
        """Delete `key` (leaving its old versions to the bucket's lifecycle rule), or with
        `version`, that version for good; deleting a missing object succeeds, so retries
        are safe."""
        self._s3.delete_object(Bucket=self._bucket, Key=key, **({"VersionId": version} if version else {}))

    def delete_many(self, keys: list) -> None:
        """Delete these keys, 1,000 per call (missing ones too: retries are safe)."""
        for start in range(0, len(keys), _DELETE_OBJECTS_KEYS):
            chunk = [{"Key": key} for key in keys[start : start + _DELETE_OBJECTS_KEYS]]
            response = self._s3.delete_objects(Bucket=self._bucket, Delete={"Objects": chunk, "Quiet": True})
            if response.get("Errors"):
                failure = response["Errors"][0]
                raise ClientError(
                    {"Error": {"Code": failure.get("Code", "DeleteFailed"), "Message": failure.get("Message", "")}},
                    "DeleteObjects",
                )
