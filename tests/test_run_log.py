"""Live logs: a run's stream output and tracebacks while it runs and after, its cap, the
executing cell, ownership, and the log's lifetime (deleted with the run's output)."""

import dataclasses

import pytest

from chalicelib.runner.executor import KERNEL_OUTPUT_HEADING
from chalicelib.runs import log as run_log
from chalicelib.runs.log import capped, log_key
from deploy import template as deployment
from tests.conftest import error
from tests.helpers import leftovers
from tests.test_cancel import run_in_background, start_run, wait_for
from tests.test_runs import BASE, RUNS, notebook_of, run_all

pytest_plugins = ["tests.test_runs"]  # its fixtures: dispatched, executor


@pytest.fixture
def fast_log(monkeypatch):
    monkeypatch.setattr(run_log, "LOG_INTERVAL_SECONDS", 0.2)


def read_log(api, run_id, user="admin"):
    response = api.call("GET", f"{RUNS}/{run_id}/log", user=user)
    assert response.status_code == 200, response.body
    assert response.headers["Content-Type"].startswith("text/plain")
    # Untrusted text from the API's origin: a browser must not sniff it into HTML.
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return response.body.decode("utf-8")


def test_the_log_of_a_running_notebook_while_it_runs_and_after(api, dispatched, executor, fast_log):
    run_id = start_run(
        api, "print('before')", "import time\nprint('sleeping', flush=True)\ntime.sleep(3)\nprint('woke')", "1 / 0"
    )
    assert read_log(api, run_id) == ""  # queued: nothing yet
    assert api.json("GET", f"{RUNS}/{run_id}")["current_cell"] is None
    worker = run_in_background(executor, dispatched)

    running = wait_for(api, run_id, lambda run: run["current_cell"] == 1 and "sleeping" in read_log(api, run_id))
    so_far = read_log(api, run_id)
    assert running["status"] == "running"
    assert so_far == "before\nsleeping\n" and "woke" not in so_far

    worker.join(60)
    final = api.json("GET", f"{RUNS}/{run_id}")
    assert final["status"] == "failed" and final["current_cell"] is None
    text = read_log(api, run_id)
    assert text.startswith("before\nsleeping\nwoke\n")
    assert "ZeroDivisionError" in text and "1 / 0" in text  # the traceback, after the cells before it
    assert "\x1b" not in text  # IPython's colours stripped


def test_what_the_kernel_process_writes_to_its_stdout_and_stderr_ends_its_runs_log(api, dispatched, executor):
    run_id = start_run(api, "import os\nos.write(2, b'written to fd 2\\n')\nprint('printed')")
    run_all(executor, dispatched)
    text = read_log(api, run_id)
    cells, heading, kernel_output = text.partition(KERNEL_OUTPUT_HEADING)
    assert "printed" in cells and heading and "written to fd 2" in kernel_output


def test_a_log_over_its_cap_keeps_its_first_and_last_parts_and_goes_with_its_run(api, stack, dispatched, executor):
    settings = dataclasses.replace(stack.settings, max_log_bytes=1000, max_runs_kept=1)
    stack.records._settings = stack.runs.starter._settings = stack.runs.starter.run_dispatch._settings = settings
    notebook_id = api.create(content=notebook_of("for i in range(600):\n    print(f'line {i}')"))["notebook_id"]
    first = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"][0]["run_id"]
    run_all(executor, dispatched)
    text = read_log(api, first)
    assert len(text.encode("utf-8")) <= 1000
    head, marker, tail = text.partition("[... log cut here: ")
    assert marker and head.startswith("line 0\nline 1\n") and tail.endswith("line 598\nline 599\n")
    full = "".join(f"line {i}\n" for i in range(600))
    cut = int(tail.split(" ", 1)[0])
    assert cut == len(full) - len(head[:-1]) - len(tail.split("...]\n", 1)[1])  # the marker starts with "\\n"
    assert api.json("GET", f"{RUNS}/{first}/output")["cells"][0]["outputs"][0]["text"] == full  # all kept there

    api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})  # one run kept: the first expires
    assert stack.files.get(log_key("admin", notebook_id, first)) is None
    api.json("DELETE", BASE, {"nbk_ids": [notebook_id]})
    assert leftovers(stack.settings) == ([], [])


def test_capped_cuts_at_character_boundaries_and_keeps_the_limit():
    text = "é" * 1000 + "end"
    result = capped(text, 600)
    assert len(result.encode("utf-8")) <= 600 and "log cut here" in result
    assert result.startswith("é") and result.endswith("end")
    assert capped("short", 600) == "short"


def test_a_log_belongs_to_its_runs_owner(api, dispatched):
    run_id = start_run(api, "print(1)")
    unknown = "00000000-0000-4000-8000-000000000000"
    mine_for_bob = api.call("GET", f"{RUNS}/{run_id}/log", user="bob")
    nobodys = api.call("GET", f"{RUNS}/{unknown}/log", user="bob")
    assert error(mine_for_bob) == error(nobodys) == (404, "Run not found")


def test_logs_expire_with_run_outputs_in_the_deployed_bucket():
    rules = deployment.merge_template()["Resources"]["NotebookFiles"]["Properties"]["LifecycleConfiguration"]["Rules"]
    [outputs_rule] = [rule["Fn::If"][1] for rule in rules if "Fn::If" in rule]
    assert outputs_rule["Id"] == "ExpireRunOutputs"
    assert log_key("ann", "nb", "run").startswith(outputs_rule["Prefix"])


def test_log_text_strips_colours_and_takes_whatever_a_hostile_kernel_sends():
    cells = [
        {"cell_type": "markdown"},
        {
            "outputs": [
                {"output_type": "stream", "name": "stdout", "text": ["a", 1, "\n"]},
                {"output_type": "display_data", "data": {"text/plain": "not in the log"}},
                {"output_type": "error", "traceback": ["\x1b[0;31mValueError\x1b[0m", 7]},
            ]
        },
        {"outputs": [{"output_type": "stream", "name": "stderr", "text": "\x1b[1mwarn\x1b[0m\n"}]},
    ]
    assert run_log.log_text(cells) == "a1\nValueError\n7\nwarn\n"
