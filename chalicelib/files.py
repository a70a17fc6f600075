"""Storage of files in S3: notebooks and the executed outputs of their runs.

Keys use ids, never names, so a rename moves no object and leaves none behind.
"""
from botocore.exceptions import ClientError

from .aws import error_code


def notebook_key(owner: str, notebook_id: str) -> str:
    """Where a notebook's .ipynb lives."""
    return f"notebooks/{owner}/{notebook_id}.ipynb"


def outputs_prefix(owner: str, notebook_id: str) -> str:
    """The folder of every executed output of one notebook."""
    return f"runs/{owner}/{notebook_id}/"


def output_key(owner: str, notebook_id: str, run_id: str) -> str:
    """Where one run's executed notebook lives."""
    return f"{outputs_prefix(owner, notebook_id)}{run_id}.ipynb"


class NotebookFiles:
    """Reads and writes .ipynb objects in one bucket."""

    def __init__(self, s3, bucket: str):
        self._s3 = s3
        self._bucket = bucket

    def put(self, key: str, body: bytes) -> None:
        """Store `body` (notebook JSON) at `key`."""
        self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, ContentType="application/x-ipynb+json")

    def get(self, key: str):
        """The bytes at `key`, or None when there is no such object."""
        try:
            return self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error_code(error) in ("NoSuchKey", "404"):
                return None
            raise

    def download_url(self, key: str, seconds: int = 300) -> str:
        """A presigned URL that lets whoever holds it download `key` for `seconds`."""
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=seconds
        )

    def delete(self, key: str) -> None:
        """Delete `key`; deleting a missing object succeeds, so retries are safe."""
        self._s3.delete_object(Bucket=self._bucket, Key=key)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix`."""
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self._s3.delete_objects(Bucket=self._bucket, Delete={"Objects": keys, "Quiet": True})
