"""Runs: the Run endpoint, the runner handler on a real kernel, dispatch, history, outputs."""

import dataclasses
import json
import re
import time

import boto3
import nbformat
import pytest
from botocore.exceptions import ClientError

from chalicelib.api.responses import ENVELOPE_BYTES
from chalicelib.runner.notebook_runner import NotebookRunner
from chalicelib.runs.engines import LambdaDispatcher
from chalicelib.storage.files import output_key
from tests.conftest import error
from tests.helpers import leftovers, stored_state, take

BASE = "/_notebooks/notebooks"
RUNS = "/_notebooks/runs"


class RecordingDispatcher(LambdaDispatcher):
    """The Lambda dispatcher, with the events it would invoke remembered instead."""

    def __init__(self):
        super().__init__(None, "runner")
        self.events = []

    def invoke(self, event):
        self.events.append(event)


@pytest.fixture
def dispatched(stack, monkeypatch):
    recorder = RecordingDispatcher()
    monkeypatch.setattr(stack.runs, "_dispatcher", recorder)
    monkeypatch.setattr(stack.runs.starter.run_dispatch, "_dispatcher", recorder)
    monkeypatch.setattr(stack.scheduler, "_dispatcher", recorder)
    return recorder


class KernelPerRun(NotebookRunner):
    """A NotebookRunner that starts each run's kernel as the run starts, as it does when no
    kernel is waiting, never ahead of it: after a run, the executor prewarms the next one,
    which in a test no run ever uses (tests/test_runner.py and tests/test_isolation.py
    test prewarming; test_faults.py and test_schedule_api.py run an executor that prewarms)."""

    def prewarm(self, preload: bool = True) -> None:
        pass


@pytest.fixture
def executor(stack):
    runner = KernelPerRun(run_timeout=20)
    yield stack.executor_on(runner)
    runner.close()


def notebook_of(*sources, parameters_cell=None):
    cells = []
    if parameters_cell is not None:
        cell = nbformat.v4.new_code_cell(parameters_cell)
        cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    cells += [nbformat.v4.new_code_cell(source) for source in sources]
    return nbformat.v4.new_notebook(
        cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )


def run_all(executor, dispatched):
    """Execute every dispatched event, as the runner function would."""
    while dispatched.events:
        executor.handle(dispatched.events.pop(0))


def stream_text(notebook):
    return "".join(
        o.get("text", "") for cell in notebook["cells"] for o in cell.get("outputs", []) if o["output_type"] == "stream"
    )


def test_a_run_queued_behind_is_drained_before_the_next_kernel_starts(api, stack, dispatched):
    """After each run the runner starts the next kernel: after the drain that lets a
    queued run start elsewhere, and with the preloaded imports (a second or more) only
    when no run waits, as a waiting one may be this runner's next."""
    prewarms = []  # (drains sent so far, whether it preloads)

    class Recording(KernelPerRun):
        def prewarm(self, preload: bool = True) -> None:
            prewarms.append((len(dispatched.events), preload))

    runner = Recording(run_timeout=20)
    try:
        executor = stack.executor_on(runner)
        first, second = (api.create(content=notebook_of("print(1)"))["notebook_id"] for _ in range(2))
        api.json("POST", BASE + "/_run", {"nbkIds": [first, second], "module": "m"})
        assert executor.handle(dispatched.events.pop(0))["status"] == "succeeded"  # the other run still waits
        assert prewarms == [(1 + 2, False)]  # a drain at the claim (a free slot), one at the end: both before
        dispatched.events.clear()
        assert executor.handle({"drain": {}})["status"] == "succeeded"  # the last one
        assert prewarms[1:] == [(2, True)]
    finally:
        runner.close()


def test_a_queue_that_cannot_be_read_after_a_run_is_not_the_runs_failure(api, stack, dispatched, monkeypatch):
    prewarms = []

    class Recording(KernelPerRun):
        def prewarm(self, preload: bool = True) -> None:
            prewarms.append(preload)

    def unreadable(pool=None):
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "Query")

    monkeypatch.setattr(stack.queue, "has_waiting", unreadable)
    runner = Recording(run_timeout=20)
    try:
        notebook_id = api.create(content=notebook_of("print(1)"))["notebook_id"]
        api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})
        assert stack.executor_on(runner).handle(dispatched.events.pop(0))["status"] == "succeeded"
    finally:
        runner.close()
    assert prewarms == [False]  # a plain kernel, as when runs wait


def test_seed_run_sample_with_unquoted_keys_runs_to_success(api, stack, dispatched, executor):
    notebook_id = api.create(content=notebook_of("print(6 * 7)"))["notebook_id"]
    raw = '{nbkIds: ["%s"], module: "notebooks"}' % notebook_id
    started = api.json("GET", BASE + "/_run", raw=raw)  # the `//` of the seed: see test_operations
    [run] = started["runs"]
    assert run["notebook_id"] == notebook_id and run["status"] == "queued"
    assert dispatched.events == [{"drain": {"run_id": run["run_id"]}}]
    fetched = api.json("GET", f"{BASE}/{notebook_id}")
    assert fetched["no_of_runs"] == 1 and isinstance(fetched["last_run"], int)

    run_all(executor, dispatched)
    record = api.json("GET", f"{RUNS}/{run['run_id']}")
    assert record["status"] == "succeeded" and record["trigger"] == "manual" and record["module"] == "notebooks"
    assert record["created_at"] <= record["started_at"] <= record["finished_at"]
    assert record["progress"] == {"done": 1, "total": 1} and record["error"] is None
    output = api.json("GET", f"{RUNS}/{run['run_id']}/output")
    assert stream_text(output) == "42\n"


def test_post_run_with_parameters(api, dispatched, executor):
    notebook_id = api.create(content=notebook_of("print(greeting * 2)", parameters_cell="greeting = 'x'"))[
        "notebook_id"
    ]
    [run] = api.json(
        "POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m", "parameters": {"greeting": "hi"}}
    )["runs"]
    run_all(executor, dispatched)
    assert "hihi" in stream_text(api.json("GET", f"{RUNS}/{run['run_id']}/output"))
    assert api.json("GET", f"{RUNS}/{run['run_id']}")["parameters"] == {"greeting": "hi"}


def test_many_notebooks_in_one_request_each_get_a_run(api, dispatched):
    ids = [api.create()["notebook_id"] for _ in range(3)]
    runs = api.json("POST", BASE + "/_run", {"nbkIds": ids, "module": "m"})["runs"]
    assert [r["notebook_id"] for r in runs] == ids and len({r["run_id"] for r in runs}) == 3
    assert len(dispatched.events) == 3


@pytest.mark.parametrize(
    "body, message",
    [
        ({"module": "m"}, "Notebook ID(s) are required"),
        ({"nbkIds": [], "module": "m"}, "Notebook ID(s) are required"),
        ({"nbkIds": "{id}"}, "Module name is required"),
        ({"nbkIds": ["{id}"], "module": ""}, "Module name is required"),
        ({"nbkIds": ["{id}"], "module": 7}, "module must be a string"),
        ({"nbkIds": ["{id}", "00000000-0000-4000-8000-000000000000"], "module": "m"}, "Notebook ID invalid."),
        ({"nbkIds": ["{id}", "nope"], "module": "m"}, "Notebook ID invalid."),
        ({"nbkIds": ["{id}"], "module": "m", "parameters": [1]}, "parameters must be a JSON object"),
        ({"nbkIds": ["{id}"], "module": "m", "parameters": {"not valid": 1}}, "parameters keys"),
        ({"nbkIds": [3], "module": "m"}, "nbkIds must contain only strings"),
    ],
)
def test_run_validates_everything_before_anything_runs(api, stack, dispatched, body, message):
    notebook_id = api.create()["notebook_id"]
    body = json.loads(json.dumps(body).replace("{id}", notebook_id))
    if body.get("nbkIds") == notebook_id:
        body["nbkIds"] = [notebook_id]
    before = stored_state(stack.settings)
    status, got = error(api.call("POST", BASE + "/_run", body))
    assert status == 400 and message in got
    # the seed's own messages word for word; other details in its "{str(e)}" form
    assert got == message or got.startswith("Error occurred during notebook execution: ")
    assert dispatched.events == [] and stored_state(stack.settings) == before
    assert api.json("GET", f"{BASE}/{notebook_id}/runs") == []


def test_malformed_run_body_is_400(api, dispatched):
    assert error(api.call("POST", BASE + "/_run", raw=b"{nbkIds: ["))[0] == 400


def test_failing_cell_is_recorded(api, dispatched, executor):
    notebook_id = api.create(content=notebook_of("x = 1", "1 / 0", "print('never')"))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    run_all(executor, dispatched)
    record = api.json("GET", f"{RUNS}/{run['run_id']}")
    assert record["status"] == "failed"
    assert record["error"]["cell_index"] == 1 and type(record["error"]["cell_index"]) is int
    assert record["error"]["ename"] == "ZeroDivisionError"
    assert "division by zero" in record["error"]["evalue"]
    assert "never" not in stream_text(api.json("GET", f"{RUNS}/{run['run_id']}/output"))


def test_cell_timeout_and_dead_kernel_fail_cleanly(api, stack, dispatched):
    runner = NotebookRunner(run_timeout=2)
    executor = stack.executor_on(runner)
    try:
        slow = api.create(content=notebook_of("import time; time.sleep(60)"))["notebook_id"]
        dying = api.create(content=notebook_of("print('before')", "import os; os._exit(1)"))["notebook_id"]
        runs = api.json("POST", BASE + "/_run", {"nbkIds": [slow, dying], "module": "m", "timeout": 2})["runs"]
        run_all(executor, dispatched)
    finally:
        runner.close()
    timed_out, died = (api.json("GET", f"{RUNS}/{r['run_id']}") for r in runs)
    assert timed_out["status"] == "failed" and timed_out["error"]["ename"] == "CellTimeoutError"
    assert timed_out["error"]["cell_index"] == 0
    assert died["status"] == "failed" and died["error"]["ename"] == "DeadKernelError"
    assert died["error"]["cell_index"] == 1


def test_a_second_delivery_of_one_run_does_not_execute_it_again(api, stack, dispatched, executor):
    notebook_id = api.create(content=notebook_of("print('once')"))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    event = dispatched.events[0]
    assert executor.handle(event) == {"run_id": run["run_id"], "status": "succeeded"}
    finished = api.json("GET", f"{RUNS}/{run['run_id']}")["finished_at"]
    assert executor.handle(event) == {"status": "idle"}  # nothing left to claim
    assert api.json("GET", f"{RUNS}/{run['run_id']}")["finished_at"] == finished


def test_a_run_whose_runner_vanished_is_failed_after_its_deadline(api, stack, dispatched):
    notebook_id = api.create()["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    assert take(stack, run["run_id"]) is not None  # a runner took it, then died
    assert api.json("GET", f"{RUNS}/{run['run_id']}")["status"] == "running"
    later = time.time() + stack.settings.run_timeout + 61
    stack.runs._clock = lambda: later
    record = api.json("GET", f"{RUNS}/{run['run_id']}")
    assert record["status"] == "failed" and record["error"]["ename"] == "RunnerLost"
    assert api.json("GET", f"{BASE}/{notebook_id}/runs")[0]["status"] == "failed"


def test_runs_and_outputs_belong_to_their_owner(api, dispatched, executor):
    notebook_id = api.create(content=notebook_of("print(1)"))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    run_all(executor, dispatched)
    unknown = "00000000-0000-4000-8000-000000000000"
    for path in (f"{RUNS}/{{}}", f"{RUNS}/{{}}/output", f"{RUNS}/{{}}/output?format=html"):
        mine_for_bob = api.call("GET", path.format(run["run_id"]), user="bob")
        nobodys = api.call("GET", path.format(unknown), user="bob")
        assert error(mine_for_bob) == error(nobodys) == (404, "Run not found")
    assert error(api.call("GET", f"{BASE}/{notebook_id}/runs", user="bob")) == (400, "Notebook ID invalid.")
    assert error(api.call("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"}, user="bob")) == (
        400,
        "Notebook ID invalid.",
    )


def test_run_history_is_newest_first(api, stack, dispatched):
    notebook_id = api.create()["notebook_id"]
    clock = iter(range(1_800_000_000, 1_800_000_100))
    stack.runs.starter.run_dispatch._clock = lambda: next(clock)
    ids = [
        api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"][0]["run_id"]
        for _ in range(3)
    ]
    history = api.json("GET", f"{BASE}/{notebook_id}/runs")
    assert [r["run_id"] for r in history] == ids[::-1]
    assert api.json("GET", f"{BASE}/{notebook_id}")["no_of_runs"] == 3


def test_html_output_is_sanitised_and_served_with_a_strict_csp(api, dispatched, executor):
    # Built from pieces, so the words checked below appear only in what the code outputs.
    attack = (
        "from IPython.display import HTML, display\n"
        "s, on, js = 'scr' + 'ipt', 'on' + 'error', 'java' + 'script:'\n"
        "display(HTML(f\"<h2>Report</h2><{s}>fetch('/_notebooks/notebooks/_all')</{s}>\"\n"
        "             f\"<img src=x {on}=alert(1)><a href='{js}alert(2)'>x</a>\"))"
    )
    notebook_id = api.create(content=notebook_of(attack))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    run_all(executor, dispatched)
    response = api.call("GET", f"{RUNS}/{run['run_id']}/output?format=html")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    page = response.body.decode()
    assert "<h2>Report</h2>" in page
    assert "<script>fetch(" not in page and "onerror" not in page and "javascript:alert" not in page
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "sandbox" in policy and "script-src" not in policy


def test_html_output_shows_plots_as_inline_images(api, dispatched, executor):
    png = (
        "import base64\nfrom IPython.display import Image, display\n"
        "display(Image(data=base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
        "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')))"
    )
    notebook_id = api.create(content=notebook_of(png))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    run_all(executor, dispatched)
    page = api.call("GET", f"{RUNS}/{run['run_id']}/output?format=html").body.decode()
    assert re.search(r'<img [^>]*src="data:image/png;base64,iVBORw0KGgo', page)


def test_html_output_shows_matplotlib_plots_png_and_svg(api, dispatched, executor):
    plot = (
        "import matplotlib.pyplot as plt\n"
        "from matplotlib_inline.backend_inline import set_matplotlib_formats\n"
        "plt.plot([1, 2, 3], [3, 1, 2]); plt.show()\n"
        "set_matplotlib_formats('svg')\n"
        "plt.plot([1, 2], [2, 1]); plt.show()"
    )
    notebook_id = api.create(content=notebook_of("%matplotlib inline", plot))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    run_all(executor, dispatched)
    assert api.json("GET", f"{RUNS}/{run['run_id']}")["status"] == "succeeded"
    page = api.call("GET", f"{RUNS}/{run['run_id']}/output?format=html").body.decode()
    assert re.search(r'<img [^>]*src="data:image/png;base64,', page)
    assert re.search(r'<img [^>]*src="data:image/svg\+xml;base64,', page)


def test_an_output_too_large_for_a_lambda_response_is_offered_as_a_download(api, stack, dispatched, executor):
    notebook_id = api.create(content=notebook_of("print('x' * 5000)"))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    run_all(executor, dispatched)
    stack.runs._settings = dataclasses.replace(stack.settings, max_response_bytes=4000 + ENVELOPE_BYTES)
    response = api.call("GET", f"{RUNS}/{run['run_id']}/output")
    assert response.status_code == 303
    download = boto3.client("s3", region_name="us-east-1")  # the presigned URL names its object
    location = response.headers["Location"]
    assert f"runs/admin/{notebook_id}/{run['run_id']}.ipynb" in location and "Signature" in location
    stored = download.get_object(Bucket=stack.settings.bucket, Key=f"runs/admin/{notebook_id}/{run['run_id']}.ipynb")
    assert "x" * 5000 in stored["Body"].read().decode()
    status, message = error(api.call("GET", f"{RUNS}/{run['run_id']}/output?format=html"))
    assert status == 413 and "format=ipynb" in message


def test_output_of_a_queued_run_is_not_there_yet(api, dispatched):
    notebook_id = api.create()["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    assert error(api.call("GET", f"{RUNS}/{run['run_id']}/output")) == (404, "Run output not available yet")
    assert error(api.call("GET", f"{RUNS}/{run['run_id']}/output?format=pdf"))[0] == 400


def test_user_code_does_not_get_the_services_aws_credentials(api, dispatched, executor, monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "service-token")
    monkeypatch.setenv("NOTEBOOKS_USERS", "admin:admin,eve:secret")  # the local stack's passwords
    code = "import os; print(sorted(k for k in os.environ if k.startswith(('AWS_', 'NOTEBOOKS_'))))"
    notebook_id = api.create(content=notebook_of(code))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    run_all(executor, dispatched)
    assert stream_text(api.json("GET", f"{RUNS}/{run['run_id']}/output")) == "[]\n"


def test_deleting_a_notebook_deletes_its_runs_and_outputs(api, stack, dispatched, executor):
    notebook_id = api.create(content=notebook_of("print(1)"))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    run_all(executor, dispatched)
    assert stack.files.get(output_key("admin", notebook_id, run["run_id"])) is not None
    api.json("DELETE", BASE, {"nbk_ids": [notebook_id]})
    assert stack.files.get(output_key("admin", notebook_id, run["run_id"])) is None
    assert error(api.call("GET", f"{RUNS}/{run['run_id']}")) == (404, "Run not found")
    assert leftovers(stack.settings) == ([], [])


def test_a_run_of_a_notebook_version_deleted_before_it_ran_fails_clearly(api, stack, dispatched, executor):
    notebook_id = api.create()["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    version = api.json("GET", f"{RUNS}/{run['run_id']}")["notebook_version"]
    stack.files.delete(f"notebooks/admin/{notebook_id}.ipynb", version)  # the version the run pinned
    run_all(executor, dispatched)
    record = api.json("GET", f"{RUNS}/{run['run_id']}")
    assert record["status"] == "failed" and record["error"]["ename"] == "NotebookMissing"


def test_lambda_dispatch_invokes_the_runner_asynchronously(stack):
    """The AWS path: an Event invocation of the runner function, checked against moto."""
    iam = boto3.client("iam", region_name="us-east-1")
    role = iam.create_role(RoleName="runner", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lambda_client = boto3.client("lambda", region_name="us-east-1")
    lambda_client.create_function(
        FunctionName="notebooks-dev-runner",
        Runtime="python3.13",
        Role=role,
        Handler="app.runner",
        Code={"ZipFile": b"fake"},
    )
    invoked = []
    lambda_client.meta.events.register(
        "provide-client-params.lambda.Invoke", lambda params, **_: invoked.append(dict(params))
    )
    LambdaDispatcher(lambda_client, "notebooks-dev-runner").dispatch({"run_id": "r-1"})
    assert invoked == [
        {"FunctionName": "notebooks-dev-runner", "InvocationType": "Event", "Payload": b'{"drain": {"run_id": "r-1"}}'}
    ]


def test_a_failed_dispatch_fails_the_run_instead_of_leaving_it_queued(api, stack):
    notebook_id = api.create()["notebook_id"]  # the default dispatcher: Lambda, with no function in moto
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    assert run["status"] == "failed"
    record = api.json("GET", f"{RUNS}/{run['run_id']}")
    assert record["status"] == "failed" and record["error"]["ename"] == "DispatchError"


def test_the_runner_lambda_entry_point_runs_a_dispatched_run(api, stack, dispatched):
    """app.runner, the function Chalice deploys, given the payload the API invokes it with."""
    import app

    notebook_id = api.create(content=notebook_of("print('from the runner function')"))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    try:
        assert app.runner(dispatched.events[0], None) == {"run_id": run["run_id"], "status": "succeeded"}
        assert app.runner(dispatched.events[0], None)["status"] == "idle"  # Lambda's retry: nothing to claim
    finally:
        stack.runner_executor().close()  # the warm container's next kernel
    assert "from the runner function" in stream_text(api.json("GET", f"{RUNS}/{run['run_id']}/output"))


def test_run_ids_are_read_in_any_case(api, dispatched):
    notebook_id = api.create()["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    assert api.json("GET", f"{RUNS}/{run['run_id'].upper()}")["run_id"] == run["run_id"]


def test_last_run_never_goes_back_to_an_earlier_run(api, stack, dispatched):
    notebook_id = api.create()["notebook_id"]
    later, earlier = 1_900_000_000, 1_899_999_000
    for moment in (later, earlier):  # recorded in this order, as concurrent requests may be
        stack.runs.starter.run_dispatch._clock = lambda moment=moment: moment
        api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})
    fetched = api.json("GET", f"{BASE}/{notebook_id}")
    history = api.json("GET", f"{BASE}/{notebook_id}/runs")
    # The run whose clock was behind is recorded just after the later one, in the same write.
    assert fetched["last_run"] == history[0]["created_at"] == later * 1000 + 1 and fetched["no_of_runs"] == 2


def test_a_notebook_deleted_while_it_runs_leaves_no_output(api, stack, dispatched, executor, monkeypatch):
    notebook_id = api.create(content=notebook_of("print(1)"))["notebook_id"]
    api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})
    runner = executor._runner
    real_execute = runner.execute

    def delete_meanwhile(*args, **kwargs):
        api.json("DELETE", BASE, {"nbk_ids": [notebook_id]})
        return real_execute(*args, **kwargs)

    monkeypatch.setattr(runner, "execute", delete_meanwhile)
    run_all(executor, dispatched)
    assert leftovers(stack.settings) == ([], [])
