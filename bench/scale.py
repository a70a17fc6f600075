"""`make bench`, scale section: what each request costs as what is stored grows.

In one process on moto (in-process AWS), through Chalice's test client (the whole
handler: authentication, routing, the service code):
  1. each operation at 100, 1,000 and 10,000 notebooks of the caller, and at 100 of the
     caller's with 10,000 of another user's: AWS calls by service and operation,
     DynamoDB items read, handler time. Notebooks are written straight into the tables,
     so building 10,000 takes seconds, not an hour of Creates;
  2. Run, Schedule, Unschedule and Delete of 1,000 ids, with 20 ms added to every AWS
     call (a wrapper around botocore's call), against API Gateway's 29 s. Lambda
     invocations are answered by the wrapper (moto would start a container), after the
     same 20 ms. Moto's own work (serialised, one call at a time) is measured apart, as
     real AWS does it on its side, within the 20 ms: the estimate on AWS is the
     request's own CPU plus the 20 ms waits on its critical path (CriticalPath). Then
     the rules a Delete handed to the runner function, removed as the runner does;
  3. the whole List of 20,000 notebooks with 255-character names (11 MB): its 303, and
     the S3 object it points to.
"""

import base64
import heapq
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3
import botocore.client
import requests
from chalice.test import Client
from moto import mock_aws
from moto.core.botocore_stubber import BotocoreStubber

from chalicelib import services
from chalicelib.common import batches
from chalicelib.common.config import Settings
from devstack import embedded_aws
from devstack.stack import provision
from tests.helpers import AwsCalls, seed_notebooks

BASE = "/_notebooks/notebooks"
UNTIL = "2099-03-01 09:15"
LATENCY = 0.020
GATEWAY_LIMIT = 29.0
LAMBDA_LIMIT = 900.0
SIZES = (("100", 100, 0), ("1,000", 1000, 0), ("10,000", 10_000, 0), ("100 + 10,000 others'", 100, 10_000))
SHORT = {"dynamodb": "ddb", "s3": "s3", "events": "events", "lambda": "lambda", "sts": "sts"}
INVOKED = {"StatusCode": 202, "Payload": None, "ResponseMetadata": {"HTTPStatusCode": 202}}
USERS = [("admin", "admin"), ("other", "other")]


class Api:
    def __init__(self, client):
        self._client = client
        self._auth = "Basic " + base64.b64encode(b"admin:admin").decode()

    def call(self, method, path, body=None, headers=None):
        sent = {"Content-Type": "application/json", "Authorization": self._auth, **(headers or {})}
        response = self._client.http.request(
            method, path, headers=sent, body=json.dumps(body) if body is not None else b""
        )
        if response.status_code not in (200, 303):
            raise SystemExit(f"{method} {path}: {response.status_code} {response.body[:300]}")
        return json.loads(response.body) if response.status_code == 200 and response.body else None


def environment():
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        NOTEBOOKS_DISPATCH="lambda",
        # The 1,000-id requests go past the per-user and deployment quotas' defaults.
        NOTEBOOKS_MAX_SCHEDULED="1000",
        NOTEBOOKS_MAX_SCHEDULED_TOTAL="1000",
        NOTEBOOKS_MAX_ACTIVE_RUNS="3000",
        NOTEBOOKS_RUNNER_ARN="arn:aws:lambda:us-east-1:123456789012:function:notebooks-dev-runner",
    )
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)


def fresh_stack():
    services.reset()
    provision(Settings.from_env(), USERS)
    return services.get()


class MotoWork:
    """Moto's own work while answering requests: seconds inside the one-at-a-time lock
    that embedded_aws.install() puts around it (waiting for the lock not counted), and
    the CPU seconds of that; the CPU seconds of everything else in this process (the
    handler, botocore, our code); and `waits`, the AWS latency on the request's critical
    path (CriticalPath)."""

    def __init__(self, latency: float = 0.0):
        self.seconds = self.cpu = self.process_cpu = self.waits = 0.0
        self._path = CriticalPath(latency)

    @property
    def other_cpu(self) -> float:
        return self.process_cpu - self.cpu

    def __enter__(self):
        self._original = BotocoreStubber.process_request
        work = self

        def timed(stubber, request):
            started, cpu_started = time.perf_counter(), time.thread_time()
            try:
                return work._original(stubber, request)
            finally:
                work.seconds += time.perf_counter() - started
                work.cpu += time.thread_time() - cpu_started

        BotocoreStubber.process_request = timed
        self._path.__enter__()
        self._cpu_started = time.process_time()
        return self

    def __exit__(self, *exc):
        self.process_cpu = time.process_time() - self._cpu_started
        self.waits = self._path.__exit__(*exc)
        BotocoreStubber.process_request = self._original


class CriticalPath:
    """The AWS latency on the critical path of what runs in the `with` block, on a virtual
    clock per thread: each AWS call adds `latency` to its thread's clock, and a pool of
    batches.in_parallel adds to the clock of the thread that waits for it the time its
    tasks take when its workers take them in order, each as soon as one is free (as
    ThreadPoolExecutor does), each task taking the latency of its own calls and pools.
    So calls one after another on one thread add up, and calls side by side do not."""

    def __init__(self, latency: float):
        self._latency = latency
        self._clock = threading.local()

    def _now(self) -> float:
        return getattr(self._clock, "now", 0.0)

    def _advance(self, seconds: float) -> None:
        self._clock.now = self._now() + seconds

    def __enter__(self):
        self._originals = botocore.client.BaseClient._make_api_call, batches.ThreadPoolExecutor
        path, original_call = self, self._originals[0]

        def call(client, operation, params):
            path._advance(path._latency)
            return original_call(client, operation, params)

        class Pool(self._originals[1]):
            def __init__(self, max_workers):
                super().__init__(max_workers=max_workers)
                self._workers, self._durations = max_workers, []

            def submit(self, work, *args):
                slot = len(self._durations)
                self._durations.append(0.0)

                def timed(*args):
                    path._clock.now = 0.0
                    try:
                        return work(*args)
                    finally:
                        self._durations[slot] = path._now()

                return super().submit(timed, *args)

            def __exit__(self, *exc):
                result = super().__exit__(*exc)  # every task has ended
                free_at = [0.0] * self._workers
                for duration in self._durations:
                    heapq.heapreplace(free_at, free_at[0] + duration)
                path._advance(max(free_at))
                return result

        botocore.client.BaseClient._make_api_call = call
        batches.ThreadPoolExecutor = Pool
        self._clock.now = 0.0
        return self

    def __exit__(self, *exc) -> float:
        botocore.client.BaseClient._make_api_call, batches.ThreadPoolExecutor = self._originals
        return self._now()


def measure(api, method, path, body=None, latency=0.0, repeat=1) -> tuple:
    """(calls Counter, items read, median handler seconds, MotoWork of the last) of one
    request (`repeat` times)."""
    return measure_work(lambda: api.call(method, path, body() if callable(body) else body), latency, repeat)


def measure_work(work, latency=0.0, repeat=1) -> tuple:
    """`measure` of any `work()`: a request, or what the runner does for one event."""
    times = []
    for _ in range(repeat):
        with AwsCalls(latency=latency, answers={("lambda", "Invoke"): INVOKED}) as calls, MotoWork(latency) as moto:
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
    return calls.calls, calls.items_read, statistics.median(times), moto


def operations(api) -> dict:
    """{operation: (calls, items read, seconds)} on a notebook of the caller."""
    notebook_id = api.call(
        "POST", BASE + "/", {"content": {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}}
    )["notebook_id"]
    others = [api.call("POST", BASE + "/")["notebook_id"] for _ in range(3)]
    names = iter(range(1000))
    return {
        # Named: three default names in one second would take _2 and _3, a retry each.
        "Create": measure(
            api, "POST", BASE + "/", lambda: {"notebook_name": f"bench-new-{next(names)}.ipynb"}, repeat=3
        ),
        "Fetch": measure(api, "GET", f"{BASE}/{notebook_id}", repeat=3),
        "Rename": measure(api, "PUT", f"{BASE}/{notebook_id}", lambda: {"new_name": f"bench-{next(names)}"}, repeat=3),
        "Content": measure(api, "GET", f"{BASE}/{notebook_id}/content", repeat=3),
        "List, a page of 100": measure(api, "GET", BASE + "/_all?limit=100", repeat=3),
        "Count": measure(api, "GET", BASE + "/_count", repeat=3),
        "Run (1 id)": measure(api, "POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "bench"}, repeat=3),
        "Runs of a notebook": measure(api, "GET", f"{BASE}/{notebook_id}/runs", repeat=3),
        "Schedule (1 id)": measure(
            api, "POST", BASE + "/_schedule", {"nbk_ids": [notebook_id], "until": UNTIL}, repeat=3
        ),
        "Unschedule (1 id)": measure(api, "POST", BASE + "/_unschedule", {"nbk_ids": [notebook_id]}, repeat=3),
        "Delete (1 id)": measure(api, "DELETE", BASE, {"nbk_ids": [others[0]]}),
        "List, whole": measure(api, "GET", BASE + "/_all"),
    }


def describe(calls) -> str:
    return ", ".join(
        f"{SHORT.get(service, service)}.{operation} {count}" for (service, operation), count in sorted(calls.items())
    )


def scale_table() -> list:
    results = {}
    for label, mine, theirs in SIZES:
        with mock_aws():
            stack = fresh_stack()
            stack.runner_arn()
            started = time.perf_counter()
            seed_notebooks(stack.settings, "admin", mine)
            if theirs:
                seed_notebooks(stack.settings, "other", theirs)
            seeded = time.perf_counter() - started
            import app

            with Client(app.app) as client:
                results[label] = operations(Api(client))
            print(f"  measured at {label} notebooks (seeded in {seeded:.1f} s)", flush=True)
    lines = [
        "| operation | AWS calls (every size) | DynamoDB items read at "
        + " / ".join(s[0] for s in SIZES)
        + " | handler ms at "
        + " / ".join(s[0] for s in SIZES)
        + " |",
        "|---|---|---|---|",
    ]
    for operation in results[SIZES[0][0]]:
        per_size = [results[label][operation] for label, _, _ in SIZES]
        calls = {describe(calls) for calls, *_ in per_size}
        calls_text = calls.pop() if len(calls) == 1 else " / ".join(describe(c) for c, *_ in per_size)
        lines.append(
            f"| {operation} | {calls_text} | "
            + " / ".join(str(items) for _, items, *_ in per_size)
            + " | "
            + " / ".join(f"{seconds * 1000:.0f}" for _, _, seconds, _ in per_size)
            + " |"
        )
    return lines


def thousand_ids() -> list:
    """The 1,000-id requests with LATENCY added to every AWS call. On this machine, moto
    answers one call at a time and shares the CPU with everything else, so the request's
    time here is mostly moto's. What the request would take on AWS is estimated as the
    CPU it spends itself (this process's CPU less moto's) plus the waits on its critical
    path (CriticalPath)."""
    lines = [
        f"| 1,000 ids, {LATENCY * 1000:.0f} ms per AWS call | AWS calls | here: s | of which moto's "
        "(CPU s) | the request's own CPU s | waits on its critical path, s | estimate on AWS, s | "
        "of its limit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with mock_aws():
        stack = fresh_stack()
        stack.runner_arn()
        ids = seed_notebooks(stack.settings, "admin", 1000)
        import app

        with Client(app.app) as client:
            api = Api(client)
            for label, method, path, body in [
                ("Run", "POST", "/_run", {"nbkIds": ids, "module": "bench"}),
                (
                    "Run again, with a client token",
                    "POST",
                    "/_run",
                    {"nbkIds": ids, "module": "bench", "client_token": "bench"},
                ),
                (
                    "Run retried with the same token",
                    "POST",
                    "/_run",
                    {"nbkIds": ids, "module": "bench", "client_token": "bench"},
                ),
                ("Schedule", "POST", "/_schedule", {"nbk_ids": ids, "until": UNTIL}),
                ("Unschedule", "POST", "/_unschedule", {"nbk_ids": ids}),
                ("Schedule again", "POST", "/_schedule", {"nbk_ids": ids, "until": UNTIL}),
                ("Delete (scheduled, 2 queued runs each)", "DELETE", "", {"nbk_ids": ids}),
            ]:
                measured = measure(api, method, BASE + path, body, latency=LATENCY)
                lines.append(thousand_ids_row(label, measured, GATEWAY_LIMIT, "API Gateway's 29 s"))
            # What the Delete handed to the runner function: the rules still there.
            handed_over = {
                "owner": "admin",
                "notebook_ids": [name[len(stack.settings.rule_prefix) :] for name in rule_names(stack.settings)],
            }
            measured = measure_work(lambda: stack.schedule_rules.remove_handed_over(handed_over), LATENCY)
            label = f"The runner removes the {len(handed_over['notebook_ids'])} rules the Delete handed over"
            lines.append(thousand_ids_row(label, measured, LAMBDA_LIMIT, "Lambda's 15 min"))
            # The usual case: a Delete of notebooks whose runs have ended.
            ids = seed_notebooks(stack.settings, "admin", 1000)
            with AwsCalls(answers={("lambda", "Invoke"): INVOKED}):
                run_ids = [
                    run["run_id"]
                    for _ in range(2)
                    for run in api.call("POST", BASE + "/_run", {"nbkIds": ids, "module": "bench"})["runs"]
                ]
                api.call("POST", BASE + "/_schedule", {"nbk_ids": ids, "until": UNTIL})
                for run_id in run_ids:
                    stack.records.finish(run_id, "succeeded", expected_status="queued")
            measured = measure(api, "DELETE", BASE, {"nbk_ids": ids}, latency=LATENCY)
            lines.append(
                thousand_ids_row("Delete (scheduled, 2 ended runs each)", measured, GATEWAY_LIMIT, "API Gateway's 29 s")
            )
    return lines


def thousand_ids_row(label, measured, limit, limit_name) -> str:
    calls, _, seconds, moto = measured
    waits = moto.waits
    estimate = moto.other_cpu + waits
    print(f"  1,000 ids: {label}: {seconds:.1f} s here, estimate on AWS {estimate:.1f} s", flush=True)
    return (
        f"| {label} | {sum(calls.values()):,} ({describe(calls)}) | {seconds:.1f} | {moto.seconds:.1f} "
        f"({moto.cpu:.1f}) | {moto.other_cpu:.1f} | {waits:.1f} | {estimate:.1f} | "
        f"{estimate / limit:.0%} of {limit_name} |"
    )


def rule_names(settings) -> list:
    pages = (
        boto3.client("events", region_name=settings.region)
        .get_paginator("list_rules")
        .paginate(NamePrefix=settings.rule_prefix)
    )
    return [rule["Name"] for page in pages for rule in page["Rules"]]


def large_list() -> list:
    """The whole List of 20,000 notebooks with 255-character names, through its redirect."""
    with mock_aws():
        stack = fresh_stack()
        ids = seed_notebooks(stack.settings, "admin", 20_000, name_length=255)
        import app

        with Client(app.app) as client:
            api = Api(client)
            started = time.perf_counter()
            response = client.http.request("GET", BASE + "/_all", headers={"Authorization": api._auth})
            handled = time.perf_counter() - started
            downloaded = requests.get(response.headers["Location"], timeout=60)
    listed = downloaded.json()
    whole = [n["notebook_id"] for n in listed] == ids
    return [
        f"Whole List of 20,000 notebooks with 255-character names: HTTP {response.status_code} in "
        f"{handled:.1f} s, then the S3 object: {len(downloaded.content) / 1e6:.1f} MB, {len(listed)} notebooks, "
        f"{'all of them, in order' if whole else 'NOT the whole List'}"
    ]


def main():
    environment()
    embedded_aws.install()  # moto as the tests and the local stack run it
    started = time.perf_counter()
    print(
        f"scale: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}",
        flush=True,
    )
    table = scale_table()
    print("\n".join(table), flush=True)
    print("\n".join(thousand_ids()), flush=True)
    print("\n".join(large_list()), flush=True)
    print(f"scale section: {(time.perf_counter() - started) / 60:.1f} minutes", flush=True)


if __name__ == "__main__":
    main()
