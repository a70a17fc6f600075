"""The runner against a real ipykernel, on tiny notebooks built in memory."""

import copy
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from chalicelib.runner.notebook_runner import NotebookRunner, prepare_lambda_environment


def notebook(*cells):
    """A python3 notebook; plain strings become code cells."""
    nb = new_notebook(cells=[new_code_cell(cell) if isinstance(cell, str) else cell for cell in cells])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def stdout(cell) -> str:
    """Everything a cell printed."""
    return "".join(out.text for out in cell.outputs if out.output_type == "stream" and out.name == "stdout")


@pytest.fixture
def runner():
    runner = NotebookRunner(run_timeout=20)
    yield runner
    runner.close()


def test_success_captures_outputs(runner):
    execution = runner.execute(notebook("print('hello')", "6 * 7"))

    assert execution.error is None
    first, second = execution.notebook.cells
    assert stdout(first) == "hello\n"
    assert second.outputs[0].data["text/plain"] == "42"
    assert execution.notebook.metadata.papermill["exception"] is None


def test_input_notebook_is_not_modified(runner):
    nb = notebook("print('hello')")
    before = copy.deepcopy(nb)

    runner.execute(nb, parameters={"x": 1})

    assert nb == before


def test_parameters_override_the_tagged_cell(runner):
    nb = notebook(new_code_cell("x = 1\nlabel = 'default'", metadata={"tags": ["parameters"]}), "print(x * 10, label)")

    execution = runner.execute(nb, parameters={"x": 5, "label": "given"})

    assert execution.error is None
    cells = execution.notebook.cells
    assert "injected-parameters" in cells[1].metadata.tags
    assert stdout(cells[2]) == "50 given\n"


@pytest.mark.parametrize("parameters", [None, {}])
def test_no_parameters_injects_nothing(runner, parameters):
    nb = notebook(new_code_cell("x = 1", metadata={"tags": ["parameters"]}), "print(x)")

    execution = runner.execute(nb, parameters=parameters)

    assert len(execution.notebook.cells) == 2
    assert stdout(execution.notebook.cells[1]) == "1\n"


def test_failing_cell_is_reported_not_raised(runner):
    execution = runner.execute(notebook("print('before')", "1 / 0", "print('after')"))

    assert execution.error == {"cell_index": 1, "ename": "ZeroDivisionError", "evalue": "division by zero"}
    cells = execution.notebook.cells
    # papermill's marker cells are removed, so cell_index points at the failing cell
    assert len(cells) == 3
    assert cells[1].outputs[-1].ename == "ZeroDivisionError"
    assert stdout(cells[0]) == "before\n"
    assert cells[2].outputs == []


def test_timeout_bounds_the_whole_run():
    runner = NotebookRunner(run_timeout=2)
    runner.prewarm()
    # Each of the first two cells fits in 2 s: only a whole-run deadline stops the second.
    nb = notebook("import time; time.sleep(0.8)", "time.sleep(1.5)", "time.sleep(30)")

    started = time.monotonic()
    execution = runner.execute(nb)
    elapsed = time.monotonic() - started

    assert execution.error["ename"] == "CellTimeoutError"
    assert execution.error["cell_index"] == 1
    assert "2 seconds" in execution.error["evalue"]
    assert elapsed < 4
    failed = execution.notebook.cells[1]
    assert failed.outputs[-1].output_type == "error"
    assert failed.outputs[-1].ename == "CellTimeoutError"
    assert failed.metadata.papermill["status"] == "failed"
    assert execution.notebook.cells[2].outputs == []


def test_long_cell_times_out_quickly():
    runner = NotebookRunner(run_timeout=2)
    runner.prewarm()  # a kernel start on a loaded machine can take most of 2 s

    started = time.monotonic()
    execution = runner.execute(notebook("print('ok')", "import time; time.sleep(30)"))

    assert time.monotonic() - started < 10  # the run's 2 s, not the cell's 30
    assert execution.error["ename"] == "CellTimeoutError"
    assert execution.error["cell_index"] == 1
    assert stdout(execution.notebook.cells[0]) == "ok\n"


def test_dead_kernel_is_reported_on_its_cell(runner):
    execution = runner.execute(notebook("print('before')", "import os; os._exit(1)", "print('after')"))

    assert execution.error["ename"] == "DeadKernelError"
    assert execution.error["cell_index"] == 1
    cells = execution.notebook.cells
    assert cells[1].outputs[-1].output_type == "error"
    assert cells[1].outputs[-1].ename == "DeadKernelError"
    assert stdout(cells[0]) == "before\n"
    assert cells[2].outputs == []

    # the runner is still usable afterwards
    assert runner.execute(notebook("print(1)")).error is None


def test_progress_counts_code_cells_and_ends_with_final_figures():
    runner = NotebookRunner(run_timeout=20, progress_interval=0)
    nb = notebook(
        new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
        new_markdown_cell("# not counted"),
        "   ",  # blank: nbclient skips it
        new_code_cell("print('skipped')", metadata={"tags": ["skip-execution"]}),
        "y = x + 1",
        "print(y)",
    )
    calls = []

    execution = runner.execute(nb, parameters={"x": 2}, on_progress=lambda done, total: calls.append((done, total)))

    assert execution.error is None
    # the parameters cell, the injected one and the two plain code cells
    assert calls[-1] == (4, 4)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert {total for _, total in calls} == {4}
    assert len(calls) >= 4  # interval 0: one call per executed cell, then the final one


def test_sys_exit_zero_succeeds_with_fewer_cells_done_as_in_papermill(runner):
    seen = []
    execution = runner.execute(
        notebook("print(1)", "import sys; sys.exit(0)", "print(3)"),
        on_progress=lambda done, total: seen.append((done, total)),
    )

    assert execution.error is None
    assert seen[-1] == (2, 3)
    assert execution.notebook.cells[2].outputs == []


def test_progress_is_throttled_but_final_call_always_made():
    runner = NotebookRunner(run_timeout=20, progress_interval=100)
    calls = []

    execution = runner.execute(notebook("1", "1 / 0", "3"), on_progress=lambda *figures: calls.append(figures))

    assert execution.error["cell_index"] == 1
    assert calls == [(2, 3)]


def test_checkpoints_carry_the_partial_notebook():
    runner = NotebookRunner(run_timeout=20, checkpoint_interval=0)
    snapshots = []

    execution = runner.execute(
        notebook("print('a')", "print('b')"), on_checkpoint=lambda nb: snapshots.append(copy.deepcopy(nb))
    )

    assert execution.error is None
    partial = [nb for nb in snapshots if stdout(nb.cells[0]) == "a\n" and nb.cells[1].outputs == []]
    assert partial, "no checkpoint taken between the two cells"


def test_checkpoints_are_throttled():
    runner = NotebookRunner(run_timeout=20, checkpoint_interval=1000)
    snapshots = []

    execution = runner.execute(notebook("1", "2", "3", "4"), on_checkpoint=snapshots.append)

    assert execution.error is None
    assert snapshots == []


WHICH_KERNEL = "import os; print(os.environ['JUPYTER_RUNTIME_DIR'])"  # each kernel has its own


def kernel_of(execution) -> str:
    return stdout(execution.notebook.cells[0]).strip()


def test_prewarmed_kernel_is_the_one_that_runs(runner):
    runner.prewarm()
    waiting = runner._waiting
    runner.prewarm()  # a live one is waiting: no-op
    assert runner._waiting is waiting

    execution = runner.execute(notebook(WHICH_KERNEL))

    assert kernel_of(execution) == waiting.folders.env["JUPYTER_RUNTIME_DIR"]
    assert runner._waiting is None  # execute does not prewarm the next one
    with pytest.raises(ProcessLookupError):  # shut down and reaped
        os.kill(waiting.km.provisioner.pid, 0)


def test_dead_prewarmed_kernel_is_replaced(runner):
    runner.prewarm()
    dead = runner._waiting
    os.kill(dead.km.provisioner.pid, signal.SIGKILL)
    while runner._waiting.is_alive():
        time.sleep(0.05)

    execution = runner.execute(notebook(WHICH_KERNEL))

    assert execution.error is None
    assert kernel_of(execution) != dead.folders.env["JUPYTER_RUNTIME_DIR"]


def test_no_state_leaks_between_runs(runner):
    first = runner.execute(notebook(WHICH_KERNEL, "secret = 42"))
    runner.prewarm()
    second = runner.execute(notebook(WHICH_KERNEL, "print(secret)"))

    assert first.error is None
    assert second.error == {"cell_index": 1, "ename": "NameError", "evalue": "name 'secret' is not defined"}
    assert kernel_of(first) != kernel_of(second)


def test_kernel_gets_no_aws_or_ecs_variables(runner, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_PROFILE", "prod")
    # An ECS task's: the path of the task role's credentials, and the task's metadata.
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/4b5f")
    monkeypatch.setenv("ECS_CONTAINER_METADATA_URI_V4", "http://169.254.170.2/v4/abc")
    monkeypatch.setenv("RUNNER_TEST_MARKER", "kept")

    execution = runner.execute(
        notebook(
            'import os; assert not any(k.startswith(("AWS_", "ECS_")) for k in os.environ)',
            'assert os.environ["RUNNER_TEST_MARKER"] == "kept"',
        )
    )

    assert execution.error is None


def test_each_run_has_a_temporary_folder_removed_afterwards(runner):
    runner.prewarm()
    folder = runner._waiting.folders.workdir
    assert os.path.isdir(folder)

    execution = runner.execute(
        notebook("import os; open('out.txt', 'w').write('x'); print(os.getcwd())", "print(os.listdir('.'))")
    )

    assert execution.error is None
    assert os.path.realpath(stdout(execution.notebook.cells[0]).strip()) == os.path.realpath(folder)
    assert stdout(execution.notebook.cells[1]) == "['out.txt']\n"
    assert os.path.realpath(folder) != os.path.realpath(os.getcwd())
    assert not os.path.exists(folder)


def test_close_removes_the_waiting_kernel_and_its_folder():
    runner = NotebookRunner(run_timeout=20)
    runner.prewarm()
    waiting = runner._waiting

    runner.close()

    assert not waiting.km.has_kernel
    assert not os.path.exists(waiting.folders.root)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_runs_leave_no_open_files_behind(runner):
    def open_files():
        return len(os.listdir("/proc/self/fd"))

    runner.execute(notebook("1"))  # first use may set things up for good
    before = open_files()
    for source in ("print(1)", "1 / 0", "import os; os._exit(1)"):
        runner.execute(notebook(source))

    assert open_files() <= before


def test_prepare_lambda_environment_points_home_at_tmp_only_in_lambda(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", "/not/writable")
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert prepare_lambda_environment(str(tmp_path)) is None
    assert os.environ["HOME"] == "/not/writable"

    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "notebooks-runner")
    assert prepare_lambda_environment(str(tmp_path)) == str(tmp_path)
    assert os.environ["HOME"] == str(tmp_path)


def test_the_runner_process_becomes_non_dumpable_and_adopts_orphans():
    """In a child process, since neither flag can be undone: /proc/<pid>/environ of a
    non-dumpable process is closed to other processes of the same (non-root) user, and a
    subreaper's orphaned descendants are re-parented to it."""
    script = (
        "import ctypes\n"
        "from chalicelib.runner import sandbox\n"
        "libc = ctypes.CDLL(None)\n"
        "reaper = ctypes.c_int(-1)\n"
        "before = libc.prctl(3, 0, 0, 0, 0), libc.prctl(37, ctypes.byref(reaper), 0, 0, 0) or reaper.value\n"
        "sandbox.forbid_inspection(); sandbox.adopt_orphans()\n"
        "libc.prctl(37, ctypes.byref(reaper), 0, 0, 0)\n"  # PR_GET_CHILD_SUBREAPER
        "print(*before, libc.prctl(3, 0, 0, 0, 0), reaper.value)\n"  # PR_GET_DUMPABLE
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.stdout.split() == ["1", "0", "0", "1"]


def test_an_error_ipython_reports_on_stderr_is_named():
    runner = NotebookRunner(run_timeout=30)
    try:
        execution = runner.execute(new_notebook(cells=[new_code_cell("%no_such_magic")]))
    finally:
        runner.close()
    assert execution.error["cell_index"] == 0 and execution.error["ename"] == "UsageError"
    assert "no_such_magic" in execution.error["evalue"]


def test_a_kernel_whose_port_was_taken_meanwhile_is_started_again(runner, monkeypatch, caplog):
    """jupyter_client picks free ports, then the kernel binds them: another process may
    take one in between (here: the test), and that kernel dies at start."""
    from jupyter_client.provisioning.local_provisioner import LocalPortCache

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real = LocalPortCache.find_available_port
    ports = []

    def first_one_taken(self, ip):
        ports.append(taken.getsockname()[1] if not ports else real(self, ip))
        return ports[-1]

    monkeypatch.setattr(LocalPortCache, "find_available_port", first_one_taken)
    try:
        execution = runner.execute(notebook("print(6 * 7)"))
    finally:
        taken.close()

    assert execution.error is None and execution.notebook.cells[0].outputs[0]["text"] == "42\n"
    assert len(ports) == 10  # two kernels' five ports: the first kernel's shell port was taken
    assert "a kernel died at start (attempt 1)" in caplog.text
