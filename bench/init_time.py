"""Init time of the Lambda functions: how long importing each handler's module takes in a
fresh process, beside a bare Chalice app with boto3 (goal: the API at most 2x that).

Each figure is the median of ROUNDS fresh interpreters, the candidates interleaved so
that machine noise hits all alike; one discarded round first fills the bytecode caches,
as the package's precompiled modules are on Lambda.
    both functions:     `import app` (handlers app.app and app.runner)
    runner, 1st event:  the runner module it then imports (papermill, nbclient, jupyter_client)
"""

import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("BENCH_INIT_ROUNDS", "9"))
TIMED_IMPORT = """
import time
started = time.perf_counter()
{code}
print(time.perf_counter() - started)
"""
CANDIDATES = {
    "bare Chalice app with boto3": "import boto3\nfrom chalice import Chalice\nChalice(app_name='bare')",
    "API and runner functions (import app)": "import app",
    "runner's first event adds (chalicelib.runner.notebook_runner)": "import app\nstarted = time.perf_counter()\n"
    "import chalicelib.runner.notebook_runner",
}


def seconds(code: str) -> float:
    """Seconds a fresh interpreter takes to run `code` (the timed part)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "NOTEBOOKS_"))}
    done = subprocess.run(
        [sys.executable, "-c", TIMED_IMPORT.format(code=code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip())


def report_init_times() -> None:
    """Print each function's init time beside a bare Chalice app's, and the ratio."""
    for code in CANDIDATES.values():
        seconds(code)  # bytecode caches filled
    samples = {label: [] for label in CANDIDATES}
    for _ in range(ROUNDS):
        for label, code in CANDIDATES.items():
            samples[label].append(seconds(code))
    print(f"Lambda init: module imports in a fresh process (median of {ROUNDS}):")
    for label, values in samples.items():
        print(f"  {label}: {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})")
    bare = statistics.median(samples["bare Chalice app with boto3"])
    api = statistics.median(samples["API and runner functions (import app)"])
    print(f"  ratio API function / bare Chalice app: {api / bare:.2f}x (goal: at most 2x)")


if __name__ == "__main__":
    report_init_times()
