"""`make bench`: end-to-end run latency through the local API against the papermill CLI.

Both run the same one-cell notebook on the same machine, interleaved in one process run
so that machine noise hits both alike:
  1. one notebook: POST /_run until the run reads `succeeded`, against one
     `papermill in.ipynb out.ipynb` (median of ROUNDS);
  2. twenty notebooks in one Run request until all succeed, against twenty sequential
     papermill CLI runs (median of BATCH_ROUNDS).
The API figure includes HTTP, DynamoDB and S3 (moto), dispatch, the kernel and polling.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from chalicelib.localstack import free_port  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "9"))
BATCH = 20
BATCH_ROUNDS = int(os.environ.get("BENCH_BATCH_ROUNDS", "3"))
AUTH = ("admin", "admin")
POLL_SECONDS = 0.01


def one_cell_notebook():
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1 + 1)")], metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def start_local_stack():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PORT=str(port), NOTEBOOKS_USERS="admin:admin")
    process = subprocess.Popen([sys.executable, "-m", "chalicelib.localstack"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            requests.get(url + "/_notebooks/notebooks/_count", auth=AUTH, timeout=2)
            return process, url
        except requests.ConnectionError:
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
        subprocess.run([str(papermill), "--log-level", "ERROR", str(source), str(source.with_name(f"out{i}.ipynb"))],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    process, url = start_local_stack()
    session = requests.Session()
    session.auth = AUTH
    content = one_cell_notebook()
    try:
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "in.ipynb"
            nbformat.write(content, source)
            ids = [session.post(url + "/_notebooks/notebooks/", json={"content": content}).json()["notebook_id"]
                   for _ in range(BATCH)]
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
    finally:
        process.terminate()
        process.wait(timeout=30)

    def report(label, ours, peer, peer_label):
        ours_median, peer_median = statistics.median(ours), statistics.median(peer)
        print(f"{label}:")
        print(f"  notebooks API (local stack, {os.cpu_count()} workers): median {ours_median:.3f} s "
              f"(min {min(ours):.3f}, max {max(ours):.3f}, n={len(ours)})")
        print(f"  {peer_label}: median {peer_median:.3f} s (min {min(peer):.3f}, max {max(peer):.3f}, n={len(peer)})")
        print(f"  ratio API / papermill CLI: {ours_median / peer_median:.2f}x")

    report("one one-cell notebook, POST /_run to succeeded", single_api, single_cli, "papermill CLI, one run")
    report(f"{BATCH} notebooks in one Run request, until all succeeded", batch_api, batch_cli,
           f"papermill CLI, {BATCH} sequential runs")


if __name__ == "__main__":
    main()
    import scale  # bench/scale.py: what each request costs as what is stored grows

    scale.main()
