"""`make bench`, local stack section: how long the embedded AWS takes to put back a state
of 1,000 notebooks with outputs, against starting empty.

The state is that of the service's own code (notebook create, run record, output upload,
run finish) against a real embedded AWS process, copied to NOTEBOOKS notebooks; each has
one run whose output is the notebook executed (about 4 KB). Then the embedded AWS is stopped (it takes
its last snapshot) and started again on the same state folder, and again on an empty one;
the time from launch until it answers `ready` is compared.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

NOTEBOOKS = int(os.environ.get("BENCH_STATE_NOTEBOOKS", "1000"))
ROUNDS = 3


def _launch(folder: str, credentials: dict):
    """(process, endpoint, seconds until ready) of an embedded AWS on `folder`."""
    from devstack.credentials import send_secrets

    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env["NOTEBOOKS_LOCAL_STATE"] = folder
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.embedded_aws"],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    send_secrets(process.stdin, credentials)
    process.stdin.close()
    line = process.stdout.readline()
    if not line.startswith("ready "):
        raise SystemExit("the embedded AWS did not start")
    return process, line.split()[1], time.perf_counter() - started


def _stop(process) -> float:
    """Seconds from SIGTERM until the embedded AWS has taken its last snapshot and exited."""
    started = time.perf_counter()
    process.terminate()
    process.wait(timeout=600)
    return time.perf_counter() - started


def _fill(endpoint: str, credentials: dict) -> None:
    """NOTEBOOKS notebooks, each with a succeeded run and its output: the first made
    through the service, the others copies of it under new ids and names (the service
    would take minutes: moto answers a notebook's create in about 0.3 s here)."""
    import nbformat

    from chalicelib import services
    from chalicelib.api.requests import CreateRequest
    from chalicelib.common import aws
    from chalicelib.common.config import Settings
    from chalicelib.storage.files import output_key
    from devstack.stack import provision

    os.environ.update(credentials, AWS_ENDPOINT_URL=endpoint, AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
    services.reset()
    settings = Settings.from_env()
    provision(settings, [("admin", "admin")])
    wiring = services.get()
    cells = [
        nbformat.v4.new_code_cell(
            f"print({j} * {j})", outputs=[nbformat.v4.new_output("stream", name="stdout", text=f"{j * j}\n")]
        )
        for j in range(20)
    ]
    content = json.loads(nbformat.writes(nbformat.v4.new_notebook(cells=cells)))
    model = wiring.notebooks.create("admin", CreateRequest("bench model.ipynb", content))
    run = wiring.run_dispatch.record("admin", model["notebook_id"], "manual", module="bench")
    wiring.files.put(output_key("admin", model["notebook_id"], run["run_id"]), json.dumps(content).encode())
    wiring.queue.claim_next(run["run_id"])  # as a runner claims it
    wiring.records.finish(run["run_id"], "succeeded")

    dynamodb, s3 = aws.client("dynamodb", settings.region), aws.client("s3", settings.region)
    # The model notebook's and run's items (not the owner's counters, which are one item).
    items = {
        table: [
            item
            for item in dynamodb.scan(TableName=table)["Items"]
            if model["notebook_id"] in json.dumps(item) or run["run_id"] in json.dumps(item)
        ]
        for table in (settings.notebooks_table, settings.runs_table)
    }
    objects = {
        item["Key"]: s3.get_object(Bucket=settings.bucket, Key=item["Key"])["Body"].read().decode()
        for item in s3.list_objects_v2(Bucket=settings.bucket)["Contents"]
    }

    def copy(text: str, i: int) -> str:
        return (
            text.replace(model["notebook_id"], str(uuid.UUID(int=2 * i)))
            .replace(run["run_id"], str(uuid.UUID(int=2 * i + 1)))
            .replace("bench model", f"bench {i}")
        )

    for start in range(1, NOTEBOOKS, 8):
        batch = range(start, min(start + 8, NOTEBOOKS))
        for table, originals in items.items():
            requests = [
                {"PutRequest": {"Item": json.loads(copy(json.dumps(item), i))}} for i in batch for item in originals
            ]
            dynamodb.batch_write_item(RequestItems={table: requests})
        for i in batch:
            for key, body in objects.items():
                s3.put_object(Bucket=settings.bucket, Key=copy(key, i), Body=copy(body, i).encode())


def _size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def report() -> None:
    """Print the restore figures."""
    from devstack.credentials import new_credentials

    credentials = new_credentials()
    full, empty = tempfile.mkdtemp(prefix="bench-state-"), tempfile.mkdtemp(prefix="bench-empty-")
    try:
        process, endpoint, _ = _launch(full, credentials)
        filling = time.perf_counter()
        _fill(endpoint, credentials)
        filled = time.perf_counter() - filling
        last_snapshot = _stop(process)
        restored, started_empty, stops = [], [], []
        for _ in range(ROUNDS):
            process, _, seconds = _launch(full, credentials)
            restored.append(seconds)
            stops.append(_stop(process))
            shutil.rmtree(empty)
            process, _, seconds = _launch(empty, credentials)
            started_empty.append(seconds)
            _stop(process)
        median_restored, median_empty = statistics.median(restored), statistics.median(started_empty)
        print(
            f"local stack state: {NOTEBOOKS} notebooks, each with a run and its output "
            f"({_size(full) / 1e6:.1f} MB on disk, made in {filled:.0f} s)"
        )
        print(
            f"  embedded AWS start, restoring them: median {median_restored:.2f} s "
            f"(min {min(restored):.2f}, max {max(restored):.2f}, n={ROUNDS})"
        )
        print(f"  embedded AWS start, empty state: median {median_empty:.2f} s (n={ROUNDS})")
        print(f"  restore alone: {median_restored - median_empty:.2f} s; ratio {median_restored / median_empty:.1f}x")
        print(
            f"  stop with a last snapshot of all of it: {last_snapshot:.2f} s after the changes, "
            f"{statistics.median(stops):.2f} s unchanged (median)"
        )
    finally:
        shutil.rmtree(full, ignore_errors=True)
        shutil.rmtree(empty, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    report()
