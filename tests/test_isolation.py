"""Run isolation: hostile notebooks against the production runner, in Lambda's layout.

`shared` stands for Lambda's /tmp (prepare_lambda_environment() pointed at a private
folder): the one place every run of a warm container can write to. One user's notebook
plants everything it can; the next run, another user's, looks for each plant.
"""

import json
import os
import pathlib
import random
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
from nbformat.v4 import new_code_cell, new_notebook

from chalicelib.common.config import Settings
from chalicelib.runner import sandbox
from chalicelib.runner.notebook_runner import NotebookRunner, prepare_lambda_environment

# What the runner function's waiting kernel imports by default (NOTEBOOKS_PRELOAD_MODULES).
PRELOAD = Settings().preload_modules


def notebook(*cells, kernelspec=None):
    """A notebook whose first cell is a papermill parameters cell."""
    nb = new_notebook(
        cells=[new_code_cell("shared = None\noutside = None\ncode = None", metadata={"tags": ["parameters"]})]
        + [new_code_cell(source) for source in cells]
    )
    nb.metadata.kernelspec = kernelspec or {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def printed(execution) -> str:
    return "".join(
        out.get("text", "")
        for cell in execution.notebook.cells
        for out in cell.get("outputs", [])
        if out.output_type == "stream"
    )


def report(execution) -> dict:
    """The JSON the observer's last cell printed."""
    assert execution.error is None, execution.error
    return json.loads(printed(execution).strip().splitlines()[-1])


ATTACK = r"""
import json, os, subprocess, sys, time
planted_code = (f"print('PLANTED'); open({os.path.join(outside, 'startup-ran')!r}, 'a')"
                ".write(repr(In) if 'In' in dir() else 'ran')")
ipython_dirs = {os.environ["IPYTHONDIR"], os.path.expanduser("~/.ipython"), os.path.join(shared, "ipython"),
                os.path.join(shared, ".ipython")}
for base in ipython_dirs:
    os.makedirs(os.path.join(base, "profile_default", "startup"), exist_ok=True)
    with open(os.path.join(base, "profile_default", "startup", "00-planted.py"), "w") as f:
        f.write(planted_code)
    with open(os.path.join(base, "profile_default", "ipython_kernel_config.py"), "w") as f:
        f.write(f"c.IPKernelApp.exec_lines = [{planted_code!r}]")
for base in {os.environ["JUPYTER_CONFIG_DIR"], os.path.join(shared, "jupyter", "config")}:
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "jupyter_config.py"), "w") as f:
        f.write(f"{planted_code}\n")
password = "hunter2-very-secret"
with open(os.path.join(shared, "leftover.txt"), "w") as f:
    f.write(password)
for base in (shared, os.getcwd()):
    os.makedirs(os.path.join(base, "locked", "inner"))
    with open(os.path.join(base, "locked", "inner", "kept.txt"), "w") as f:
        f.write(password)
    os.chmod(os.path.join(base, "locked", "inner"), 0)
    os.chmod(os.path.join(base, "locked"), 0)
    folder = os.open(base, os.O_RDONLY)  # deeper than any recursion limit or path length
    for _ in range(1200):
        os.mkdir("d", dir_fd=folder)
        deeper = os.open("d", os.O_RDONLY, dir_fd=folder)
        os.close(folder)
        folder = deeper
    os.close(folder)
# A link in a folder the cleanup must first make writable, to a file outside it.
os.makedirs(os.path.join(shared, "linkdir"))
os.symlink(os.path.join(outside, "target.txt"), os.path.join(shared, "linkdir", "link"))
os.chmod(os.path.join(shared, "linkdir"), 0o500)
"""

# Processes that outlive their kernel if nothing stops them, each beating in a log.
# This one leaves the kernel's session and process group, double-forks (so its parent is
# gone) and ignores SIGTERM and SIGHUP.
DOUBLE_FORKED = """
import os, signal, sys, time
if os.fork(): os._exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.signal(signal.SIGHUP, signal.SIG_IGN)
while True:
    with open(sys.argv[1], 'a') as f: f.write('beat\\n')
    time.sleep(0.05)
"""
# This one's main thread exits while another thread beats on: it shows as a zombie.
ZOMBIE_LEADER = """
import ctypes, os, sys, threading, time
if os.fork(): os._exit(0)
def beat():
    while True:
        with open(sys.argv[1], 'a') as f: f.write('beat\\n')
        time.sleep(0.05)
threading.Thread(target=beat).start()
time.sleep(0.3)
ctypes.CDLL(None).syscall(60, 0)  # SYS_exit: this thread only
"""
SURVIVOR = r"""
import os, subprocess, sys, time
log = os.path.join(outside, "survivor.log")
subprocess.Popen([sys.executable, "-c", code, log], start_new_session=True)
while not os.path.exists(log) or len(open(log).read().split()) < 10:
    time.sleep(0.05)
print("surviving")
"""


def beats(log) -> int:
    with open(log) as f:
        return len(f.read().split())


OBSERVE = r"""
import glob, json, os
history = get_ipython().history_manager
secret = "hunter" + "2-very-secret"  # split, so this cell's own source does not match
found_in_history = [entry for entry in history.search(f"*{secret}*")] + [
    path for path in glob.glob(os.path.join(shared, "**", "*.sqlite"), recursive=True)]
print(json.dumps({
    "startup_ran": os.path.exists(os.path.join(outside, "startup-ran")),
    "history_file": str(history.hist_file),
    "found_in_history": [str(item) for item in found_in_history],
    "shared_now": sorted(os.listdir(shared)),
    "home_plants": [os.path.join(folder, name) for folder, _, names in os.walk(os.path.expanduser("~"))
                    for name in names if "PLANTED" in open(os.path.join(folder, name), errors="replace").read()],
}))
"""


@pytest.fixture
def lambda_layout(monkeypatch, tmp_path, request):
    """The runner as in a warm Lambda container, with `shared` standing for /tmp, and
    `outside` a folder the test reads that no sweep touches; its kernels preload the
    modules the test's parameter names (none unless parametrized)."""
    shared, outside = tmp_path / "tmp", tmp_path / "outside"
    shared.mkdir()
    outside.mkdir()
    # The machine's /dev/shm is not the test's to empty (as root, a browser's files are in
    # it): the sweeps empty a folder of the test's instead.
    shared_memory = tmp_path / "shm"
    shared_memory.mkdir()
    monkeypatch.setattr(sandbox, "SHARED_MEMORY", str(shared_memory))
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "notebooks-runner")
    monkeypatch.setenv("HOME", os.environ.get("HOME", "/root"))  # restored after the test
    shared_tmp = prepare_lambda_environment(str(shared))
    runner = NotebookRunner(run_timeout=60, shared_tmp=shared_tmp, preload=getattr(request, "param", ()))
    yield runner, {"shared": str(shared), "outside": str(outside)}
    runner.close()


@pytest.mark.parametrize("lambda_layout", [(), PRELOAD], indirect=True, ids=["fresh kernel", "preloaded kernel"])
def test_nothing_one_run_plants_reaches_the_next_users_run(lambda_layout):
    runner, where = lambda_layout
    target = os.path.join(where["outside"], "target.txt")
    with open(target, "w") as f:
        f.write("not the run's")
    os.chmod(target, 0o400)
    runner.prewarm()
    attack = runner.execute(notebook(ATTACK), parameters=where)
    assert attack.error is None, attack.error
    runner.prewarm()  # the next run's kernel, as the executor starts it after each run

    seen = report(runner.execute(notebook("print('victim code: swordfish')", OBSERVE), parameters=where))

    # Startup files and kernel config planted in every IPython and Jupyter folder did not run.
    assert seen["startup_ran"] is False
    # History is kept in memory: the attacker's code (its password literal) is nowhere.
    assert seen["history_file"] == ":memory:" and seen["found_in_history"] == []
    # Nothing the attacker wrote in the shared folder survived, however it was protected:
    # all that is there is the observer's own run folder.
    assert len(seen["shared_now"]) == 1 and seen["shared_now"][0].startswith("notebook-run-")
    # The cleanup followed no link: the file the attacker's link pointed at is untouched.
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o400
    assert seen["home_plants"] == []  # a fresh HOME


PRELOADED = ("numpy", "pandas", "matplotlib", "matplotlib.pyplot")
# Run A: what its kernel had before any import, then state of every kind left behind.
LEAVE_STATE = f"""
import json, os, sys
preloaded = [name for name in {PRELOADED!r} if name in sys.modules]
own_names = sorted(set(dir()) & {{"numpy", "np", "pandas", "pd", "matplotlib", "mpl", "plt", "importlib"}})
import numpy, pandas
numpy.marker = 1
pandas.DataFrame.marker = 1
left_variable = "run A's"
for folder in (shared, os.getcwd(), os.path.expanduser("~"), os.environ["TMPDIR"], os.environ["MPLCONFIGDIR"]):
    with open(os.path.join(folder, "left-by-a.txt"), "w") as f:
        f.write("A")
print(json.dumps({{"preloaded": preloaded, "own_names": own_names, "home": os.path.expanduser("~")}}))
"""
# Run B: the same modules preloaded, none of run A's state; its plot still shows.
FIND_STATE = f"""
import glob, json, os, sys
preloaded = [name for name in {PRELOADED!r} if name in sys.modules]
import matplotlib, numpy, pandas
import matplotlib.pyplot as plt
home = os.path.expanduser("~")
print(json.dumps({{
    "preloaded": preloaded,
    "module_attributes": [hasattr(numpy, "marker"), hasattr(pandas.DataFrame, "marker")],
    "variable": "left_variable" in dir(),
    "files": glob.glob(os.path.join(shared, "**", "left-by-a.txt"), recursive=True)
    + glob.glob(os.path.join(home, "**", "left-by-a.txt"), recursive=True),
    "home": home,
    "private": [os.path.commonpath([run, path]) == run
                for run in [os.path.dirname(home)]
                for path in (matplotlib.get_configdir(), os.getcwd(), os.environ["TMPDIR"])],
    "shared_now": os.listdir(shared),
}}))
plt.plot([1, 2, 3])
plt.show()
"""


@pytest.mark.parametrize("lambda_layout", [PRELOAD], indirect=True)
def test_a_preloaded_kernel_has_the_modules_and_nothing_of_the_previous_run(lambda_layout):
    runner, where = lambda_layout
    assert PRELOAD == ("numpy", "pandas", "matplotlib")
    runner.prewarm()
    first = report(runner.execute(notebook(LEAVE_STATE), parameters=where))
    # The waiting kernel imported them before the run, and defined no name of the notebook's.
    assert first["preloaded"] == list(PRELOADED) and first["own_names"] == []
    runner.prewarm()  # the next run's kernel, as the executor starts it after each run

    execution = runner.execute(notebook(FIND_STATE), parameters=where)
    second = report(execution)
    assert second["preloaded"] == list(PRELOADED)
    assert second["home"] != first["home"]  # folders of its own
    assert second["module_attributes"] == [False, False] and second["variable"] is False
    assert second["files"] == []
    # matplotlib's folder (its font list, written by the preload), the working folder and
    # TMPDIR are the run's own, made before the kernel started.
    assert second["private"] == [True, True, True]
    assert len(second["shared_now"]) == 1 and second["shared_now"][0].startswith("notebook-run-")
    plot = execution.notebook.cells[-1].outputs
    assert any("image/png" in output.get("data", {}) for output in plot)  # the inline backend, drawing with Agg


def test_the_preloaded_modules_are_configured_and_can_be_turned_off():
    assert Settings.from_env({}).preload_modules == ("numpy", "pandas", "matplotlib")
    assert Settings.from_env({"NOTEBOOKS_PRELOAD_MODULES": "numpy, scipy"}).preload_modules == ("numpy", "scipy")
    assert Settings.from_env({"NOTEBOOKS_PRELOAD_MODULES": ""}).preload_modules == ()


def test_a_module_that_fails_to_preload_does_not_stop_the_kernel(caplog):
    runner = NotebookRunner(run_timeout=60, preload=("no_such_module_here", "colorsys", "json.decoder"))
    try:
        runner.prewarm()
        execution = runner.execute(notebook("import sys; print('colorsys' in sys.modules, 'ran')"))
        # A kernel started for a run already waiting imports nothing ahead: the run pays only
        # for its own imports.
        cold = runner.execute(notebook("import sys; print('colorsys' in sys.modules, 'ran')"))
    finally:
        runner.close()
    assert execution.error is None and printed(execution).split() == ["True", "ran"]
    assert cold.error is None and printed(cold).split() == ["False", "ran"]
    # The missing module is the operator's to know of, once, not every run's log.
    assert [record.getMessage() for record in caplog.records if "no_such_module_here" in record.getMessage()] == [
        "NOTEBOOKS_PRELOAD_MODULES: no module 'no_such_module_here' is installed; it is not preloaded"
    ]
    assert "no_such_module_here" not in printed(execution) + json.dumps(execution.notebook)


@pytest.mark.parametrize("namespace", [True, False], ids=["in a PID namespace", "swept"])
@pytest.mark.parametrize("code", [DOUBLE_FORKED, ZOMBIE_LEADER], ids=["double-forked", "zombie leader"])
def test_a_run_leaves_no_process_behind(lambda_layout, monkeypatch, code, namespace):
    if namespace and not sandbox.pid_namespace_prefix():
        pytest.skip("this machine gives kernels no PID namespace (no unprivileged user namespaces)")
    monkeypatch.setattr(sandbox, "_pid_namespace_usable", namespace)
    runner, where = lambda_layout
    execution = runner.execute(notebook(SURVIVOR), parameters={**where, "code": code})
    assert execution.error is None, execution.error

    log = os.path.join(where["outside"], "survivor.log")
    before = beats(log)
    time.sleep(0.5)
    assert beats(log) == before  # ended before execute() returned


# A process that changes pid all the time: it forks, in a new session, and exits, in a
# loop, so that by the time its pid is read from /proc it is gone.
HOPPER = r'''
import os, subprocess, sys, time
code = """
import os, sys, time
log = sys.argv[1]
while True:
    if os.fork():
        os._exit(0)
    os.setsid()
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
"""
log = os.path.join(outside, "hopper.log")
subprocess.Popen([sys.executable, "-c", code, log])
while not os.path.exists(log) or len(open(log).read().split()) < 100:
    time.sleep(0.05)
print("hopping")
'''


@pytest.mark.skipif(
    not sandbox.pid_namespace_prefix(),
    reason="this machine gives kernels no PID namespace (no unprivileged user namespaces)",
)
def test_a_process_that_keeps_changing_pid_dies_with_its_kernel(lambda_layout):
    """Faster than /proc can be read: only the kernel's own PID namespace holds it."""
    runner, where = lambda_layout
    execution = runner.execute(notebook(HOPPER), parameters=where)
    assert execution.error is None, execution.error
    log = os.path.join(where["outside"], "hopper.log")

    hops = beats(log)
    time.sleep(1)
    assert beats(log) == hops  # nobody hops any more


# A runner process that starts a kernel, says where its connection file is, and waits.
WAITING_RUNNER = r"""
from chalicelib.runner.notebook_runner import NotebookRunner
runner = NotebookRunner(run_timeout=60)
runner.prewarm()
print(runner._waiting.folders.connection_file, flush=True)
input()
"""


def processes_naming(text: str) -> list:
    """The pids whose command line contains `text`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.parametrize("namespace", [True, False], ids=["in a PID namespace", "without"])
def test_a_waiting_kernel_dies_with_its_killed_runner(namespace):
    """A local worker killed with SIGKILL runs no clean-up: its waiting kernel must not
    live on, holding a run's folders and ports."""
    if namespace and not sandbox.pid_namespace_prefix():
        pytest.skip("this machine gives kernels no PID namespace (no unprivileged user namespaces)")
    code = f"from chalicelib.runner import sandbox\nsandbox._pid_namespace_usable = {namespace}\n" + WAITING_RUNNER
    runner = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        connection_file = runner.stdout.readline().strip()
        assert connection_file and processes_naming(connection_file)  # the kernel is up
        runner.kill()
        runner.wait()
        deadline = time.monotonic() + 10
        while processes_naming(connection_file) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert processes_naming(connection_file) == []
    finally:
        runner.kill()


def test_a_notebook_cannot_drive_a_waiting_kernel_from_its_connection_file(tmp_path):
    """In the local stack, workers share one user: a running notebook can find another
    worker's waiting kernel and its connection file. The file holds no key, so the kernel
    ignores every message the notebook can make."""
    victim = NotebookRunner(run_timeout=60)
    victim.prewarm()
    attacker = NotebookRunner(run_timeout=60)
    try:
        connection_file = victim._waiting.folders.connection_file
        with open(connection_file) as f:
            written = json.load(f)
        assert written["key"] == "" and "curve_secretkey" not in written and "curve_publickey" not in written
        marker = tmp_path / "pwned"
        attack = notebook(  # an execute_request signed with what the file holds, on the shell port
            "import json, zmq\n"
            "from jupyter_client.session import Session\n"
            f"info = json.load(open({connection_file!r}))\n"
            "session = Session(key=info['key'].encode(), signature_scheme=info['signature_scheme'])\n"
            "shell = zmq.Context().socket(zmq.DEALER)\n"
            "for option, value in ((zmq.SNDTIMEO, 3000), (zmq.RCVTIMEO, 5000), (zmq.LINGER, 0)):\n"
            "    shell.setsockopt(option, value)\n"
            "shell.connect(f\"tcp://{info['ip']}:{info['shell_port']}\")\n"
            f"code = \"open({str(marker)!r}, 'w').write('pwned')\"\n"
            "try:\n"
            "    session.send(shell, 'execute_request', {'code': code, 'silent': False, 'store_history': False,\n"
            "                                           'user_expressions': {}, 'allow_stdin': False})\n"
            "    print('reply', shell.recv_multipart())\n"
            "except zmq.Again:\n"
            "    print('no reply')\n"
        )
        execution = attacker.execute(attack)

        assert execution.error is None, execution.error
        assert "no reply" in printed(execution)
        assert not marker.exists()
        # The victim's kernel is unharmed and runs its own notebook.
        assert victim.execute(notebook("print('mine')")).error is None
    finally:
        attacker.close()
        victim.close()


def test_a_notebook_cannot_read_what_another_kernel_publishes(tmp_path):
    """Ports can be found (the connection file, /proc/net/tcp): every channel is CurveZMQ
    encrypted, and without the kernel's public key no subscriber completes the handshake."""
    victim_ready, results, done = threading.Event(), {}, tmp_path / "done"

    def victim_runs():  # a runner is used from one thread: this one
        victim = NotebookRunner(run_timeout=60)
        try:
            victim.prewarm()
            with open(victim._waiting.folders.connection_file) as f:
                results["connection"] = json.load(f)
            victim_ready.set()
            results["victim"] = victim.execute(
                notebook(  # it speaks until the attacker is done
                    "import os, time\n"
                    f"while not os.path.exists({str(done)!r}):\n"
                    "    print('victim secret: swordfish'); time.sleep(0.1)"
                )
            )
        finally:
            victim_ready.set()
            victim.close()

    speaker = threading.Thread(target=victim_runs)
    speaker.start()
    assert victim_ready.wait(60) and "connection" in results
    iopub = f"tcp://{results['connection']['ip']}:{results['connection']['iopub_port']}"
    listener = notebook(
        "import time, zmq\n"
        "socket = zmq.Context().socket(zmq.SUB)\n"
        "socket.setsockopt(zmq.SUBSCRIBE, b'')\n"
        f"socket.connect({iopub!r})\n"
        "heard, deadline = [], time.time() + 4\n"
        "while time.time() < deadline:\n"
        "    if socket.poll(100):\n"
        "        heard.append(socket.recv_multipart())\n"
        "print('heard', len(heard), any(b'swordfish' in part for message in heard for part in message))\n"
    )
    attacker = NotebookRunner(run_timeout=60)
    try:
        overheard = attacker.execute(listener)
    finally:
        attacker.close()
        done.touch()
        speaker.join(60)
    assert overheard.error is None, overheard.error
    assert "heard 0 False" in printed(overheard)
    assert "swordfish" in printed(results["victim"])  # it did speak all along


def test_input_fails_at_once_as_with_papermill():
    runner = NotebookRunner(run_timeout=120)
    try:
        execution = runner.execute(notebook("name = input('Your name? ')"))
    finally:
        runner.close()
    # Not CellTimeoutError: the kernel refused stdin instead of waiting for the deadline.
    assert execution.error["ename"] == "StdinNotImplementedError"
    assert execution.error["cell_index"] == 1


@pytest.mark.parametrize(
    "kernelspec",
    [
        {"name": "ir", "display_name": "R", "language": "R"},
        {"name": "julia-1.9", "display_name": "Julia 1.9", "language": "julia"},
    ],
)
def test_a_notebook_for_another_language_is_refused_not_run_on_python(kernelspec):
    runner = NotebookRunner(run_timeout=60)
    try:
        nb = notebook("print('this is not R')", kernelspec=kernelspec)
        execution = runner.execute(nb)
    finally:
        runner.close()
    assert execution.error["ename"] == "NoSuchKernel"
    assert kernelspec["name"] in execution.error["evalue"]
    assert runner._waiting is None  # no kernel was started for it
    assert all(not cell.get("outputs") for cell in execution.notebook.cells)


@pytest.mark.parametrize(
    "kernelspec",
    [
        None,  # no kernel spec at all
        {"name": "conda-env-analytics-py", "display_name": "Python (analytics)", "language": "python"},
    ],
)
def test_python_notebooks_run_whatever_their_kernel_is_called(kernelspec):
    nb = notebook("print(6 * 7)")
    if kernelspec is None:
        del nb.metadata["kernelspec"]
    else:
        nb.metadata.kernelspec = kernelspec
    runner = NotebookRunner(run_timeout=60)
    try:
        execution = runner.execute(nb)
    finally:
        runner.close()
    assert execution.error is None and "42" in printed(execution)


def test_kernels_are_non_dumpable_so_other_notebooks_cannot_inspect_them():
    """A non-dumpable process's /proc environ, mem and fd are closed to other processes of
    the same (non-root) user, and it cannot be ptrace-attached: another notebook cannot
    lift a kernel's session key from its memory."""
    runner = NotebookRunner(run_timeout=60)
    try:
        execution = runner.execute(notebook("import ctypes; print('dumpable', ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"))
    finally:
        runner.close()
    assert "dumpable 0" in printed(execution)


# A uid of this test run's own, so that no other process on a shared machine is swept.
TEST_UID = random.randint(70000, 2**31 - 2)
UNPRIVILEGED = ["setpriv", f"--reuid={TEST_UID}", f"--regid={TEST_UID}", "--clear-groups"]
SYSTEM_PYTHON = "/usr/bin/python3"  # runner/sandbox.py needs only the standard library
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPER = f"""
import sys
sys.path.insert(0, {REPO!r})
from chalicelib.runner import sandbox
sweep = sandbox.ProcessSweep(whole_user=True)
sweep.start()
print("ready", flush=True)
sys.stdin.readline()
print("killed", sweep.sweep(), flush=True)
"""


def _can_run_unprivileged() -> bool:
    if os.getuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = subprocess.run(
        UNPRIVILEGED
        + [SYSTEM_PYTHON, "-c", f"import sys; sys.path.insert(0, {REPO!r}); import chalicelib.runner.sandbox"],
        capture_output=True,
    )
    return probe.returncode == 0


def running_as_test_uid(pid: int) -> None:
    """Wait until setpriv has become the test's uid and run its program."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as status, open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if f"Uid:\t{TEST_UID}" in status.read() and cmdline.read().startswith(b"sleep"):
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never ran as {TEST_UID}")


@pytest.mark.skipif(
    not _can_run_unprivileged(),
    reason="needs root, to become an unprivileged user with setpriv, and a repo that user can read",
)
def test_on_lambda_every_other_process_of_the_runners_user_is_killed():
    """As on Lambda (not root): processes of the runner's user that are not below the
    runner, whenever they started, are killed too."""
    older = subprocess.Popen(UNPRIVILEGED + ["sleep", "300"])
    sweeper = subprocess.Popen(
        UNPRIVILEGED + [SYSTEM_PYTHON, "-c", SWEEPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    stranger = None
    try:
        assert sweeper.stdout.readline().strip() == "ready"
        stranger = subprocess.Popen(UNPRIVILEGED + ["sleep", "300"])  # not the sweeper's descendant
        for process in (older, stranger):
            running_as_test_uid(process.pid)
        sweeper.stdin.write("\n")
        sweeper.stdin.flush()
        assert sweeper.stdout.readline().split()[0] == "killed"
        assert stranger.wait(timeout=10) == -signal.SIGKILL
        assert older.wait(timeout=10) == -signal.SIGKILL
        assert sweeper.wait(timeout=10) == 0  # the sweeper itself lives on
    finally:
        for process in (older, stranger, sweeper):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


IPC_PLANTER = f"""
import ctypes, sys
sys.path.insert(0, {REPO!r})
from chalicelib.runner import sandbox
libc = ctypes.CDLL(None)
segment = libc.shmget(0, 4096, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
queue = libc.msgget(0, 0o1600)
assert segment >= 0 and queue >= 0
def listed(kind, ident):
    return any(line.split()[1] == str(ident) for line in open(f"/proc/sysvipc/{{kind}}").readlines()[1:])
print("made", listed("shm", segment), listed("msg", queue))
sandbox.remove_ipc_objects()
print("left", listed("shm", segment), listed("msg", queue))
"""


@pytest.mark.skipif(
    not _can_run_unprivileged(),
    reason="needs root, to become an unprivileged user with setpriv, and a repo that user can read",
)
def test_on_lambda_system_v_ipc_objects_of_the_runners_user_are_removed():
    result = subprocess.run(
        UNPRIVILEGED + [SYSTEM_PYTHON, "-c", IPC_PLANTER], capture_output=True, text=True, timeout=30
    )
    assert result.stdout.split() == ["made", "True", "True", "left", "False", "False"], result.stderr


def test_a_run_that_cannot_be_cleaned_up_after_stops_the_runner(lambda_layout, monkeypatch):
    """Fail closed: rather than let the next run find what is left."""
    runner, where = lambda_layout
    real_empty_folder = sandbox.empty_folder

    def empty_folder_that_fails(path):
        real_empty_folder(path)
        raise sandbox.SandboxError(f"could not remove {path}/stuck: Device or resource busy")

    runner.prewarm()  # its cleanup before the kernel succeeds
    monkeypatch.setattr(sandbox, "empty_folder", empty_folder_that_fails)
    execution = runner.execute(notebook("print('ran')"), parameters=where)

    assert execution.error is None and "ran" in printed(execution)  # the run itself is reported
    with pytest.raises(sandbox.SandboxError, match="stuck"):
        runner.prewarm()
    with pytest.raises(sandbox.SandboxError):
        runner.execute(notebook("print('never')"), parameters=where)


def test_no_kernel_starts_where_the_cleanup_before_it_fails(lambda_layout, monkeypatch):
    runner, where = lambda_layout

    def empty_folder_that_fails(path):
        raise sandbox.SandboxError(f"could not remove {path}/stuck: Device or resource busy")

    monkeypatch.setattr(sandbox, "empty_folder", empty_folder_that_fails)
    with pytest.raises(sandbox.SandboxError, match="stuck"):
        runner.prewarm()
    assert runner._waiting is None
    with pytest.raises(sandbox.SandboxError):
        runner.execute(notebook("print('never')"), parameters=where)


def readable_by_others(path: str) -> bool:
    """Whether a user other than root can reach and read `path` (every folder above it
    searchable by others, the file readable)."""
    parts = pathlib.Path(path).resolve().parts
    folders = [pathlib.Path(*parts[:index]) for index in range(1, len(parts))]
    return all(os.stat(folder).st_mode & 0o001 for folder in folders) and bool(os.stat(path).st_mode & 0o004)


AS_ITS_OWN_USER = r"""
import os
print(os.getresuid(), os.getresgid(), os.getgroups())
open('written-in-the-working-folder', 'w').write('x')
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="handing the kernel to another user needs root")
@pytest.mark.skipif(
    not readable_by_others(os.path.join(sys.base_prefix, "lib")),
    reason="this machine's Python is closed to other users (test_lambda_sim runs a root task from /var/lang)",
)
@pytest.mark.parametrize("namespace", [True, False], ids=["in a PID namespace", "without"])
def test_a_root_runners_kernel_runs_as_a_user_of_its_own(monkeypatch, namespace):
    if namespace and not sandbox.pid_namespace_prefix():
        pytest.skip("this machine gives kernels no PID namespace")
    monkeypatch.setattr(sandbox, "_pid_namespace_usable", namespace)
    runner = NotebookRunner(run_timeout=60, kernel_uid=993)
    try:
        execution = runner.execute(notebook(AS_ITS_OWN_USER))
    finally:
        runner.close()
    assert execution.error is None, execution.error
    assert printed(execution).splitlines()[0] == "(993, 993, 993) (993, 993, 993) []"


# A runner process, as a Lambda container's: `shared` stands for its /tmp, and kernels
# get no PID namespace. Its notebook gets the runner's pid as a parameter (what
# os.getppid() gives there).
RUNNER_PROCESS = r"""
import json, os, sys
from nbformat.v4 import new_code_cell, new_notebook
from chalicelib.runner import sandbox
from chalicelib.runner.notebook_runner import NotebookRunner
sandbox._pid_namespace_usable = False  # as on Lambda: the kernel's parent is its runner
shared, source = sys.argv[1], sys.argv[2]
runner = NotebookRunner(run_timeout=60, shared_tmp=shared)
nb = new_notebook(cells=[new_code_cell("runner_pid = None\nshared = None", metadata={"tags": ["parameters"]}),
                         new_code_cell(source)])
nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
execution = runner.execute(nb, parameters={"runner_pid": os.getpid(), "shared": shared})
outputs = [output.get("text", "") for output in execution.notebook.cells[-1].outputs]
print(json.dumps({"error": execution.error, "outputs": outputs}))
runner.close()
"""
PLANT_AND_KILL_RUNNER = r"""
import os, pickle, signal
class Trap:
    def __reduce__(self):
        return (print, ("PLANTED CODE RAN",))
for folder in (shared, "/dev/shm"):
    with open(os.path.join(folder, f"planted-{runner_pid}.pkl"), "wb") as f:
        pickle.dump(Trap(), f)
os.kill(runner_pid, signal.SIGKILL)
"""
LOOK_FOR_PLANTS = r"""
import glob, os, pickle
found = glob.glob(os.path.join(shared, "planted-*.pkl")) + glob.glob("/dev/shm/planted-*.pkl")
for path in found:
    pickle.load(open(path, "rb"))
print("found", found)
"""


def run_runner_process(shared, source, shared_memory):
    """The runner process, and its kernels, with `shared_memory` as their /dev/shm (a
    mount namespace of their own, as root): the machine's is not the test's to empty."""
    command = [sys.executable, "-c", RUNNER_PROCESS, str(shared), source]
    if os.getuid() == 0:
        script = f'mount --make-rprivate / && mount --bind {shlex.quote(str(shared_memory))} /dev/shm && exec "$@"'
        command = ["unshare", "--mount", "sh", "-c", script, "runner", *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def test_a_run_that_kills_its_runner_leaves_nothing_for_the_next_run(tmp_path):
    """Its runner did no cleanup: the next runner process, cold, cleans before its kernel starts."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared_memory = tmp_path / "shm" if os.getuid() == 0 else pathlib.Path("/dev/shm")
    shared_memory.mkdir(exist_ok=True)
    killed = run_runner_process(shared, PLANT_AND_KILL_RUNNER, shared_memory)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    planted = list(shared.glob("planted-*.pkl")) + list(shared_memory.glob("planted-*.pkl"))
    assert len(planted) == 2  # the trap is set
    try:
        after = run_runner_process(shared, LOOK_FOR_PLANTS, shared_memory)
        assert after.returncode == 0, after.stderr
        seen = json.loads(after.stdout.strip().splitlines()[-1])
        assert seen == {"error": None, "outputs": ["found []\n"]}
        assert not any(path.exists() for path in planted)
    finally:
        for path in planted:
            path.unlink(missing_ok=True)


def test_the_prewarmed_kernel_of_a_cold_runner_starts_after_the_cleanup(lambda_layout):
    runner, where = lambda_layout
    planted = pathlib.Path(where["shared"]) / "planted.pkl"
    planted.write_bytes(b"trap")
    runner.prewarm()  # a cold start: no run has ended in this process yet
    assert not planted.exists()


FORGE_LOG_LINES = r"""
import os, subprocess
forged = 'START RequestId: 00000000-0000-0000-0000-000000000000 FORGED'
os.write(1, (forged + ' fd 1\n').encode())
os.write(2, (forged + ' fd 2\n').encode())
subprocess.run(['sh', '-c', f'echo "{forged} subprocess" >&2'])
print('done')
"""


def run_once(*cells):
    """The Execution of a notebook of `cells` on a runner of its own, closed afterwards."""
    runner = NotebookRunner(run_timeout=60)
    try:
        return runner.execute(notebook(*cells))
    finally:
        runner.close()


def test_a_notebook_cannot_write_into_the_runners_own_log_stream(capfd):
    execution = run_once(FORGE_LOG_LINES)
    assert execution.error is None, execution.error
    runner_streams = "".join(capfd.readouterr())
    assert "FORGED" not in runner_streams
    # The lines are the run's: in the kernel's own output, which ends its log.
    for where in ("fd 1", "fd 2", "subprocess"):
        assert f"FORGED {where}" in execution.kernel_output


@pytest.mark.skipif(not sandbox.pid_namespace_prefix(), reason="this machine gives kernels no PID namespace")
def test_in_a_pid_namespace_the_kernel_is_not_pid_1_and_dies_of_sigterm_as_under_papermill():
    """nbclient's Autokill notebook: the kernel signals itself."""
    execution = run_once(
        "import os\nprint(os.getpid(), os.getppid())", "import signal\nos.kill(os.getpid(), signal.SIGTERM)"
    )
    assert printed(execution).split() == ["2", "1"]  # PID 1 is the init
    assert execution.error["ename"] == "DeadKernelError" and execution.error["cell_index"] == 2


ORPHANS = r"""
import os, time
for _ in range(5):
    if os.fork() == 0:          # a child that forks a grandchild and exits at once:
        if os.fork() == 0:      # the grandchild, orphaned, exits a moment later
            time.sleep(0.2)
            os._exit(0)
        os._exit(0)
time.sleep(1.5)
for _ in range(5):
    try:
        os.waitpid(-1, 0)       # the kernel's own children
    except ChildProcessError:
        break
zombies = []
for pid in filter(str.isdigit, os.listdir('/proc')):
    with open(f'/proc/{pid}/stat') as f:
        if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
            zombies.append(pid)
print('zombies', zombies)
"""


@pytest.mark.skipif(not sandbox.pid_namespace_prefix(), reason="this machine gives kernels no PID namespace")
def test_the_init_reaps_orphans_in_the_kernels_namespace():
    execution = run_once(ORPHANS)
    assert execution.error is None, execution.error
    assert printed(execution).strip().splitlines()[-1] == "zombies []"  # after 3.13's warning about fork()


@pytest.mark.skipif(not sandbox.pid_namespace_prefix(), reason="this machine gives kernels no PID namespace")
def test_the_init_passes_signals_on_to_the_kernel():
    execution = run_once(
        "import os, signal, time\n"
        "signal.signal(signal.SIGUSR1, lambda *_: print('kernel got SIGUSR1'))\n"
        "os.kill(1, signal.SIGUSR1)\n"
        "time.sleep(0.5)"
    )
    assert execution.error is None, execution.error
    assert "kernel got SIGUSR1" in printed(execution)
