"""`make bench`: end-to-end run latency through the local API against the papermill CLI.

Both run the same one-cell notebook on the same machine, interleaved in one process run
so that machine noise hits both alike:
  1. one notebook: POST /_run until the run reads `succeeded`, against one
     `papermill in.ipynb out.ipynb` (median of ROUNDS);
  2. twenty notebooks in one Run request until all succeed, against twenty sequential
     papermill CLI runs (median of BATCH_ROUNDS).
  3. a data-stack notebook (imports numpy, pandas and matplotlib, builds a DataFrame,
     draws a plot): its first run on the fresh stack against the first CLI run, then
     ROUNDS warm runs against as many CLI runs, interleaved. The runner's waiting kernels
     have preloaded those modules (NOTEBOOKS_PRELOAD_MODULES); the goal is a warm run in
     at most DATA_STACK_GOAL times the CLI's time.
  4. load: one client for LOAD_BASELINE_SECONDS, then LOAD_CLIENTS concurrent clients for
     LOAD_SECONDS, over a mix of every endpoint: throughput, p50 and p99 latency, and the
     count of 5xx answers and connection errors (both must be zero, else the run fails).
The API figure includes HTTP, DynamoDB and S3 (moto), dispatch, the kernel and polling.
Then the local stack's state restore (bench/state_restore.py), and the scale table
(bench/scale.py).
"""

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import state_restore
from init_time import report_init_times

from devstack.stack import free_port

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "9"))
BATCH = 20
BATCH_ROUNDS = int(os.environ.get("BENCH_BATCH_ROUNDS", "3"))
AUTH = ("admin", "admin")
POLL_SECONDS = 0.01
LOAD_CLIENTS = int(os.environ.get("BENCH_LOAD_CLIENTS", "50"))
LOAD_SECONDS = float(os.environ.get("BENCH_LOAD_SECONDS", "60"))
# The same mix from one client, measured just before, as the baseline of the throughput.
LOAD_BASELINE_SECONDS = float(os.environ.get("BENCH_LOAD_BASELINE_SECONDS", "20"))


DATA_STACK_GOAL = 0.3
KERNELSPEC = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def one_cell_notebook():
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1 + 1)")], metadata=KERNELSPEC)


def data_stack_notebook():
    """What a data notebook does first: import the data stack, build a frame, plot it."""
    return nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import numpy as np\nimport pandas as pd\nimport matplotlib.pyplot as plt"),
            nbformat.v4.new_code_cell(
                "frame = pd.DataFrame({'x': np.arange(200.0)}).assign(y=lambda f: np.sin(f.x / 20))\nframe.describe()"
            ),
            nbformat.v4.new_code_cell("frame.plot(x='x', y='y', title='sine')\nplt.show()"),
        ],
        metadata=KERNELSPEC,
    )


def preloaded() -> str:
    """The modules the local stack's waiting kernels import (NOTEBOOKS_PRELOAD_MODULES)."""
    from chalicelib.common.config import Settings

    return ", ".join(Settings.from_env().preload_modules) or "nothing"


def start_local_stack(state_folder):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PORT=str(port), NOTEBOOKS_USERS="admin:admin", NOTEBOOKS_LOCAL_STATE=state_folder)
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.stack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            requests.get(url + "/_notebooks/notebooks/_count", auth=AUTH, timeout=2)
            return process, url
        except (requests.ConnectionError, requests.Timeout):  # not serving yet, or a busy machine
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the local stack did not start")


def api_run(session, url, notebook_ids):
    """Seconds from the Run request until every run has succeeded."""
    started = time.perf_counter()
    response = session.post(url + "/_notebooks/notebooks/_run", json={"nbkIds": notebook_ids, "module": "bench"})
    pending = {run["run_id"] for run in response.json()["runs"]}
    while pending:
        time.sleep(POLL_SECONDS)
        for run_id in list(pending):
            status = session.get(f"{url}/_notebooks/runs/{run_id}").json()["status"]
            if status == "failed":
                raise SystemExit(f"run {run_id} failed")
            if status == "succeeded":
                pending.discard(run_id)
    return time.perf_counter() - started


def papermill_cli(source: Path, count: int = 1) -> float:
    """Seconds for `count` sequential papermill CLI runs of `source`."""
    papermill = Path(sys.executable).parent / "papermill"
    started = time.perf_counter()
    for i in range(count):
        subprocess.run(
            [str(papermill), "--log-level", "ERROR", str(source), str(source.with_name(f"out{i}.ipynb"))],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return time.perf_counter() - started


def load_mix(content):
    """[(weight, name, request(session, url, state) -> response)]: every endpoint, weighted
    towards reads as clients use them; runs are rare, as each one starts a kernel."""
    nb = "/_notebooks/notebooks"

    def some(state):
        return random.choice(state["ids"])

    def create(session, url, state):
        response = session.post(url + nb + "/", json={"content": content})
        if response.ok:
            state["ids"].append(response.json()["notebook_id"])
        return response

    def delete(session, url, state):
        if len(state["ids"]) < 3:
            return create(session, url, state)
        return session.delete(url + nb + "/", json={"nbk_ids": [state["ids"].pop(0)]})

    def run(session, url, state):
        response = session.post(url + nb + "/_run", json={"nbkIds": [some(state)], "module": "load"})
        if response.ok:
            state["runs"].append(response.json()["runs"][0]["run_id"])
        return response

    def run_id(state):
        return random.choice(state["runs"]) if state["runs"] else "00000000-0000-4000-8000-000000000000"

    def schedule(session, url, state):
        return session.post(url + nb + "/_schedule", json={"nbk_ids": [some(state)], "until": "2099-01-01 00:00"})

    return [
        (15, "fetch", lambda s, u, st: s.get(f"{u}{nb}/{some(st)}")),
        (12, "list", lambda s, u, st: s.get(f"{u}{nb}/_all?limit=20")),
        (12, "count", lambda s, u, st: s.get(f"{u}{nb}/_count")),
        (10, "content GET", lambda s, u, st: s.get(f"{u}{nb}/{some(st)}/content")),
        (6, "content PUT", lambda s, u, st: s.put(f"{u}{nb}/{some(st)}/content", json=content)),
        (6, "rename", lambda s, u, st: s.put(f"{u}{nb}/{some(st)}", json={"new_name": f"n{random.random()}"})),
        (6, "create", create),
        (5, "delete", delete),
        (6, "notebook runs", lambda s, u, st: s.get(f"{u}{nb}/{some(st)}/runs")),
        (6, "run", lambda s, u, st: s.get(f"{u}/_notebooks/runs/{run_id(st)}")),
        (4, "run output", lambda s, u, st: s.get(f"{u}/_notebooks/runs/{run_id(st)}/output")),
        (4, "schedule", schedule),
        (4, "unschedule", lambda s, u, st: s.post(f"{u}{nb}/_unschedule", json={"nbk_ids": [some(st)]})),
        (3, "openapi", lambda s, u, st: s.get(f"{u}/_notebooks/openapi.json")),
        (1, "run now", run),
    ]


def load(url, content, clients=LOAD_CLIENTS, seconds=LOAD_SECONDS):
    """`clients` clients, each with its own connection and notebooks, for `seconds`:
    (latencies, answers by status, connection errors, clients, seconds taken)."""
    mix = load_mix(content)
    weights, operations = [w for w, _, _ in mix], [(name, call) for _, name, call in mix]
    create = dict(operations)["create"]
    latencies, statuses, failures, lock = [], {}, [], threading.Lock()
    window = {}
    start = threading.Barrier(
        clients + 1, action=lambda: window.update(began=time.perf_counter(), deadline=time.perf_counter() + seconds)
    )

    def client():
        session = requests.Session()
        session.auth = AUTH
        state = {"ids": [], "runs": []}
        for _ in range(3):
            create(session, url, state)  # notebooks of its own to work on
        start.wait()
        own_latencies, own_statuses, own_failures = [], {}, []
        while time.perf_counter() < window["deadline"]:
            name, call = random.choices(operations, weights)[0]
            began = time.perf_counter()
            try:
                status = call(session, url, state).status_code
            except requests.RequestException as error:
                own_failures.append(f"{name}: {type(error).__name__}")
                continue
            own_latencies.append(time.perf_counter() - began)
            own_statuses[status] = own_statuses.get(status, 0) + 1
        with lock:
            latencies.extend(own_latencies)
            failures.extend(own_failures)
            for status, count in own_statuses.items():
                statuses[status] = statuses.get(status, 0) + count

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()  # every client has its notebooks: the clock starts
    for thread in threads:
        thread.join()
    return latencies, statuses, failures, clients, time.perf_counter() - window["began"]


def report_load(*runs):
    """Each run's throughput and latency; fails when any answered 5xx or lost a connection."""
    bad = 0
    throughputs = []
    for latencies, statuses, failures, clients, seconds in runs:
        quantiles = statistics.quantiles(latencies, n=100)
        server_errors = sum(count for status, count in statuses.items() if status >= 500)
        throughputs.append(len(latencies) / seconds)
        print(f"load: {clients} concurrent client(s) for {seconds:.0f} s over every endpoint:")
        print(
            f"  {len(latencies)} requests, {throughputs[-1]:.1f} requests/s; "
            f"latency p50 {quantiles[49] * 1000:.0f} ms, p99 {quantiles[98] * 1000:.0f} ms"
        )
        print(f"  answers by status: {dict(sorted(statuses.items()))}")
        print(f"  5xx answers: {server_errors}; connection errors: {len(failures)} {sorted(set(failures))[:5]}")
        bad += server_errors + len(failures)
    print(f"  throughput ratio last / first: {throughputs[-1] / throughputs[0]:.2f}x")
    if bad:
        raise SystemExit("load: the local stack answered 5xx or dropped connections")


def main():
    state_folder = tempfile.mkdtemp(prefix="bench-stack-")
    process, url = start_local_stack(state_folder)
    session = requests.Session()
    session.auth = AUTH
    content = one_cell_notebook()
    try:
        with tempfile.TemporaryDirectory() as folder:
            data, data_source = data_stack_notebook(), Path(folder) / "data.ipynb"
            nbformat.write(data, data_source)
            data_id = session.post(url + "/_notebooks/notebooks/", json={"content": data}).json()["notebook_id"]
            data_first = [api_run(session, url, [data_id])], [papermill_cli(data_source)]
            data_warm = [], []
            for _ in range(ROUNDS):
                data_warm[0].append(api_run(session, url, [data_id]))
                data_warm[1].append(papermill_cli(data_source))
            source = Path(folder) / "in.ipynb"
            nbformat.write(content, source)
            ids = [
                session.post(url + "/_notebooks/notebooks/", json={"content": content}).json()["notebook_id"]
                for _ in range(BATCH)
            ]
            api_run(session, url, ids[:1])  # warm-up: first request, first connection
            papermill_cli(source)
            single_api, single_cli = [], []
            for _ in range(ROUNDS):
                single_api.append(api_run(session, url, ids[:1]))
                single_cli.append(papermill_cli(source))
            batch_api, batch_cli = [], []
            for _ in range(BATCH_ROUNDS):
                batch_api.append(api_run(session, url, ids))
                batch_cli.append(papermill_cli(source, BATCH))
            load_figures = [load(url, content, 1, LOAD_BASELINE_SECONDS), load(url, content)]
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(state_folder, ignore_errors=True)

    def report(label, ours, peer, peer_label):
        ours_median, peer_median = statistics.median(ours), statistics.median(peer)
        print(f"{label}:")
        print(
            f"  notebooks API (local stack, {os.cpu_count()} workers): median {ours_median:.3f} s "
            f"(min {min(ours):.3f}, max {max(ours):.3f}, n={len(ours)})"
        )
        print(f"  {peer_label}: median {peer_median:.3f} s (min {min(peer):.3f}, max {max(peer):.3f}, n={len(peer)})")
        print(f"  ratio API / papermill CLI: {ours_median / peer_median:.2f}x")

    report("one one-cell notebook, POST /_run to succeeded", single_api, single_cli, "papermill CLI, one run")
    report(
        f"{BATCH} notebooks in one Run request, until all succeeded",
        batch_api,
        batch_cli,
        f"papermill CLI, {BATCH} sequential runs",
    )
    print(f"data-stack notebook (numpy, pandas, matplotlib: a DataFrame and a plot), preloading {preloaded()}:")
    print(f"  first run on the fresh stack: API {data_first[0][0]:.3f} s, papermill CLI {data_first[1][0]:.3f} s")
    report("data-stack notebook, warm runs, POST /_run to succeeded", *data_warm, "papermill CLI, one run")
    ratio = statistics.median(data_warm[0]) / statistics.median(data_warm[1])
    print(f"  goal: at most {DATA_STACK_GOAL}x: {'met' if ratio <= DATA_STACK_GOAL else 'NOT met'}")
    report_load(*load_figures)
    state_restore.report()


if __name__ == "__main__":
    main()
    report_init_times()
    import scale  # bench/scale.py: what each request costs as what is stored grows

    scale.main()
