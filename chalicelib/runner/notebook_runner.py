"""The runner (papermill): executes one notebook on a real ipykernel.

It knows nothing of S3, DynamoDB or HTTP: the caller hands it a notebook, gets back an
`Execution` (the executed notebook and, if the run failed, where and why) and stores it.

Nothing a notebook does reaches a later run (see runner/sandbox.py): each run gets a kernel of its
own, started without the process's AWS credentials or service settings, with private,
fresh folders (working folder, HOME, IPython, Jupyter, TMPDIR: no shared startup file,
config, kernel spec or history), history kept in memory, and a session key that is never
written to disk. After the run, the kernel and every process the run started are killed,
its folders removed, and with `shared_tmp` (Lambda's /tmp) everything else it wrote there
too. `prewarm()` starts the next kernel ahead of need, only once the previous run is swept;
before any kernel starts (the first of a process too), what is shared is emptied again,
so a run that killed its runner process, which then did no cleanup, leaves nothing.

The kernel's stdout and stderr (what is written to file descriptors 1 and 2, which
ipykernel also copies there) never reach the runner's own: they go to a file of the
run's, whose end `Execution.kernel_output` carries to the run's log.

One NotebookRunner per process: the sweep ends every process that appeared below this
process during a run. It must be used from one thread (kernel and client share that
thread's event loop, see jupyter_core.utils.run_sync).
"""

import importlib.util
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Optional

import nbformat
import papermill
import zmq
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.provisioning import LocalProvisioner
from jupyter_core.utils import run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines
from papermill.exceptions import PapermillExecutionError
from papermill.execute import remove_error_markers
from papermill.log import logger
from traitlets import Integer, Tuple

from chalicelib.runner import sandbox
from chalicelib.runner.kernel import RUN_AS_OPTION

_ENGINE_NAME = "notebook-runner"
# nbclient does not run cells with this tag; we pass it explicitly so the progress total agrees.
_SKIP_TAG = "skip-execution"
# A cell that starts after the deadline still needs a positive timeout: nbclient reads 0 as "none".
_MIN_CELL_TIMEOUT = 0.01
LAMBDA_TMP = "/tmp"
_KERNEL_READY_SECONDS = 60
# A kernel binds ports its manager found free a moment before, and another process may
# take one meanwhile (jupyter_client's port race: "Address already in use"): the kernel
# dies at start. Started again, it gets other ports.
KERNEL_START_ATTEMPTS = 3
# After a cancel's interrupt, a cell that goes on (it caught KeyboardInterrupt) gets this
# long before its kernel is killed.
CANCEL_GRACE_SECONDS = 5.0
# The folder holding `chalicelib`: the kernel's launcher is imported from it.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# How much of the kernel process's own output (stdout, stderr) a run's log keeps: its end.
KERNEL_OUTPUT_BYTES = 64 * 1024
# Settings of the runner's own process that a kernel must not inherit: the service's
# identity and configuration, and any pointer to shared Jupyter/IPython folders.
_PRIVATE_PREFIXES = ("AWS_", "ECS_", "NOTEBOOKS_", "JUPYTER", "IPYTHON", "PYTHONSTARTUP")


@dataclass
class Execution:
    """The outcome of one run.

    `notebook` is the executed notebook (parameters injected; partial if the run failed).
    `error` is None on success, else {"cell_index": int, "ename": str, "evalue": str};
    cell_index indexes `notebook.cells`, whose failing cell also carries an error output.
    `cancelled`: the run was stopped by cancel(); `notebook` is what ran until then, and
    `error` is None.
    `kernel_output`: the end (KERNEL_OUTPUT_BYTES) of what the kernel process wrote to
    its stdout and stderr: the notebook's fd-level output again, and the kernel's own
    messages (a crash's among them).
    """

    notebook: NotebookNode
    error: Optional[dict]
    cancelled: bool = False
    kernel_output: str = ""


def prepare_lambda_environment(tmp: str = LAMBDA_TMP) -> Optional[str]:
    """In AWS Lambda (AWS_LAMBDA_FUNCTION_NAME set), point HOME at `tmp`, the only
    writable place, for the runner process itself, and return `tmp`: the folder every run
    can write to, which the runner empties after each run. Elsewhere do nothing and
    return None. Kernels get folders of their own for each run (sandbox.RunFolders).

    Call it once at start-up, before the first kernel starts.
    """
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return None
    os.environ["HOME"] = tmp
    return tmp


def _kernel_env(folders: sandbox.RunFolders) -> dict:
    """The kernel's environment: this process's, minus AWS_* (credentials, profile,
    endpoints), the service's NOTEBOOKS_* settings (the local stack's users among them)
    and shared Jupyter/IPython pointers; plus the run's private folders, and this package
    on PYTHONPATH for the kernel's launcher (on Lambda the runtime puts it on the
    handler's sys.path only)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(_PRIVATE_PREFIXES)}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != _PACKAGE_ROOT]
    return {**env, **folders.env, "PYTHONPATH": os.pathsep.join([_PACKAGE_ROOT, *paths])}


def unsupported_kernel(notebook: NotebookNode) -> Optional[str]:
    """Why `notebook` cannot run here (its kernel spec names another language), or None.

    Only Python kernels exist here; a notebook without a kernel spec, or with any Python
    kernel's name (python3, a conda environment's), runs on python3.
    """
    spec = notebook.metadata.get("kernelspec") or {}
    name = str(spec.get("name") or "")
    language = str(spec.get("language") or notebook.metadata.get("language_info", {}).get("name") or "")
    if not spec or language.lower() == "python" or (not language and name.lower().startswith("python")):
        return None
    return (
        f"No such kernel: {name or language!r}"
        + (f" (language {language})" if language else "")
        + ". This service runs Python notebooks, on the python3 kernel"
    )


class _RunnerKernelSpecs(KernelSpecManager):
    """The one kernel spec a run may use, fixed in code: none is read from disk, where a
    notebook could have written one for the next run. `preload`: the modules the kernel
    imports before it answers (chalicelib.runner.kernel's --preload). With `kernel_uid`,
    the kernel runs as that user."""

    preload = Tuple()
    kernel_uid = Integer(None, allow_none=True)

    def get_kernel_spec(self, kernel_name):
        run_as = [] if self.kernel_uid is None else [f"{RUN_AS_OPTION}{self.kernel_uid}"]
        return KernelSpec(
            argv=sandbox.pid_namespace_prefix(user_namespace=self.kernel_uid is None)
            # -P: the working folder is not searched for the launcher's own modules.
            + [sys.executable, "-P", "-m", "chalicelib.runner.kernel"]
            + (["--preload", ",".join(self.preload)] if self.preload else [])
            + run_as
            + [
                "-f",
                "{connection_file}",
                "--HistoryManager.hist_file=:memory:",
            ],  # history: never in a shared file
            display_name="Python 3",
            language="python",
            name="python3",
        )


class _KeysOffDiskKernelManager(AsyncKernelManager):
    """A kernel manager whose connection file holds no secret: the kernel
    (chalicelib.runner.kernel) reads them from its standard input instead.

    The secrets: the session key, which signs every message, and a CurveZMQ key pair,
    which encrypts every channel and without whose public key no client can connect.
    Another process of the same user that finds the file or the ports can then neither
    send the kernel a message it accepts nor read what the kernel publishes.
    """

    def __init__(self, kernel_uid: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self._curve_keys = zmq.curve_keypair()
        self.curve_publickey, self.curve_secretkey = self._curve_keys
        self.kernel_uid = kernel_uid

    def secrets(self) -> bytes:
        """What the kernel reads from its standard input: one line of JSON."""
        return (
            json.dumps(
                {
                    "key": self.session.key.decode(),
                    "curve_publickey": self._curve_keys[0].decode(),
                    "curve_secretkey": self._curve_keys[1].decode(),
                }
            ).encode()
            + b"\n"
        )

    def write_connection_file(self, **kwargs):
        secrets = self.session.key, self.curve_publickey, self.curve_secretkey
        self.session.key, self.curve_publickey, self.curve_secretkey = b"", None, None
        try:
            super().write_connection_file(**kwargs)
        finally:
            self.session.key, self.curve_publickey, self.curve_secretkey = secrets
        if self.kernel_uid is not None:  # written 0600: the kernel's user must read it
            os.chown(self.connection_file, self.kernel_uid, self.kernel_uid)


def _stderr_error(cell) -> dict:
    """{"ename", "evalue"} from the last "Name: message" line a cell wrote to stderr, or {}."""
    lines = [
        line
        for output in cell.get("outputs", [])
        if output.get("name") == "stderr"
        for line in output.get("text", "").splitlines()
        if line.strip()
    ]
    name, colon, value = (lines[-1] if lines else "").partition(": ")
    return {"ename": name, "evalue": value} if colon and name.isidentifier() else {}


class _Kernel:
    """A started kernel, a client already connected to it, and the run's private folders.

    Connecting is part of the head start: a client's first wait for the kernel ends with
    a fixed 0.2 s pause to flush its IOPub channel, paid here rather than by the run; so
    are the imports of the `preload` modules, which the kernel makes before it is ready.
    """

    def __init__(self, shared_tmp: Optional[str], preload: tuple = (), kernel_uid: Optional[int] = None):
        self.folders = sandbox.RunFolders(base=shared_tmp)
        self.km = _KeysOffDiskKernelManager(
            kernel_uid=kernel_uid,
            kernel_name="python3",
            kernel_spec_manager=_RunnerKernelSpecs(preload=tuple(preload), kernel_uid=kernel_uid),
            connection_file=self.folders.connection_file,
        )
        self.kc = None
        self.output = ""
        # The kernel's stdout and stderr: a file with no name (a notebook can neither find
        # nor replace it), read through this process's own descriptor.
        self._output_file = tempfile.TemporaryFile(dir=shared_tmp)
        # The secrets reach the kernel through its stdin. Our end stays open while the
        # kernel lives: the kernel exits when it closes, even if this process is killed.
        self._lifeline: Optional[int]
        key_reader, self._lifeline = os.pipe()
        try:
            if kernel_uid is not None:
                self.folders.hand_over(kernel_uid)
            try:
                os.write(self._lifeline, self.km.secrets())
                run_sync(self.km.start_kernel)(
                    cwd=self.folders.workdir,
                    env=_kernel_env(self.folders),
                    stdin=key_reader,
                    stdout=self._output_file,
                    stderr=self._output_file,
                )
            finally:
                os.close(key_reader)
            self.kc = self.km.client()
            self.kc.start_channels()
            # As nbclient does for a client it starts: input() fails at once
            # (StdinNotImplementedError) instead of waiting for an answer nobody sends.
            self.kc.allow_stdin = False
            run_sync(self.kc.wait_for_ready)(timeout=_KERNEL_READY_SECONDS)
        except BaseException:
            self.shutdown()
            raise

    def is_alive(self) -> bool:
        """Whether the kernel process is still running."""
        return run_sync(self.km.is_alive)()

    def stop(self) -> None:
        """Kill the kernel (if nbclient has not already) and close the client."""
        if self.kc is not None and self.kc.channels_running:
            self.kc.stop_channels()
        # After a normal run nbclient has killed and reaped it; after a crash it only
        # cleaned up, so the dead process is still ours to reap.
        try:
            if self.km.has_kernel:
                run_sync(self.km.shutdown_kernel)(now=True)
        finally:
            if self._lifeline is not None:
                os.close(self._lifeline)
                self._lifeline = None
            if not self._output_file.closed:
                self.output = self._output_tail()
                self._output_file.close()

    def _output_tail(self) -> str:
        """The end of what the kernel process wrote to its stdout and stderr."""
        size = os.fstat(self._output_file.fileno()).st_size
        start = max(0, size - KERNEL_OUTPUT_BYTES)
        return os.pread(self._output_file.fileno(), size - start, start).decode("utf-8", errors="replace")

    def shutdown(self) -> None:
        """Kill the kernel and remove its folders."""
        try:
            self.stop()
        finally:
            self.folders.remove()


class _Cancelled(Exception):
    """Raised before a cell of a cancelled run would start."""


@dataclass
class _Run:
    """One execution's settings, callbacks and progress, shared by NotebookRunner.execute
    and the papermill engine (papermill passes our extra `run` keyword through to it)."""

    kernel: _Kernel
    run_timeout: float
    deadline: float  # time.monotonic() value
    progress_interval: float
    checkpoint_interval: float
    on_progress: Optional[Callable[[int, int], None]]
    on_checkpoint: Optional[Callable[[NotebookNode], None]]
    notebook: Optional[NotebookNode] = None  # papermill's parameterized copy, executed in place
    cell_index: Optional[int] = None  # the code cell executing (or last executed)
    error: Optional[dict] = None
    done: int = 0
    total: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once past)."""
        return self.deadline - time.monotonic()

    def cell_timeout(self, cell) -> float:
        """nbclient's timeout_func: each cell may use what is left of the whole run's time."""
        return max(self.remaining(), _MIN_CELL_TIMEOUT)

    def cell_execute(self, cell, cell_index, **_):
        """nbclient's on_cell_execute hook: remember the cell, since nbclient's timeout and
        dead-kernel errors do not say which one they came from; start none once cancelled."""
        if self.cancelled:
            raise _Cancelled()
        self.cell_index = cell_index

    def cell_executed(self, cell, cell_index, **_):
        """nbclient's on_cell_executed hook (called with or without an error in the cell)."""
        self.done += 1
        if self.on_progress and time.monotonic() - self.last_progress >= self.progress_interval:
            self.report_progress()

    def report_progress(self) -> None:
        """Tell the caller the current figures."""
        self.last_progress = time.monotonic()
        if self.on_progress:
            self.on_progress(self.done, self.total)

    def fail_cell(self, nb_man, exc: Exception) -> None:
        """Record a timeout or kernel death the way papermill records a cell's own error."""
        ename = type(exc).__name__
        if isinstance(exc, CellTimeoutError) and self.remaining() <= 0:
            evalue = f"The run exceeded its time limit of {self.run_timeout:g} seconds"
        elif isinstance(exc, DeadKernelError):
            evalue = "The kernel died while executing this cell"
        else:  # e.g. output still missing seconds after the reply: nbclient's own words
            evalue = " ".join(str(exc).splitlines()[:2])
        cell = nb_man.nb.cells[self.cell_index]
        error = nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])
        cell.outputs.append(error)
        nb_man.cell_exception(cell, cell_index=self.cell_index)
        self.error = {"cell_index": self.cell_index, "ename": ename, "evalue": evalue}


class _CheckpointManager(NotebookExecutionManager):
    """Papermill's execution bookkeeping, with saving replaced by a throttled callback.

    Papermill calls save() at every cell start and end, on long-running output
    (autosave_cell) and at the end; it would write the whole notebook each time.
    """

    last_save_time: datetime  # papermill's, set in its __init__

    def __init__(self, nb, run: _Run):
        super().__init__(nb, progress_bar=False, autosave_cell_every=run.checkpoint_interval)
        self.run = run
        self.complete = False

    def save(self, **kwargs):
        """Hand the notebook to on_checkpoint, at most every checkpoint interval.

        Not at the end: the final notebook is returned to the caller, who writes it once.
        autosave_cell_every (papermill doubles it when saving is slow) is the interval.
        """
        due = (self.now() - self.last_save_time).total_seconds() >= self.autosave_cell_every
        if self.run.on_checkpoint and due and not self.complete:
            self.run.on_checkpoint(self.nb)
            self.last_save_time = self.now()

    def notebook_complete(self, **kwargs):
        """Finish papermill's metadata without a final checkpoint."""
        self.complete = True
        super().notebook_complete(**kwargs)


class _RunnerEngine(NBClientEngine):
    """Papermill's nbclient engine, running on the runner's kernel with the runner's hooks."""

    @classmethod
    def execute_notebook(cls, nb, kernel_name, *, run, **papermill_kwargs):
        """Execute `nb` (papermill's parameterized copy) for `run`.

        papermill_kwargs (paths, progress bar, logging, start timeout) do not apply: nothing
        is written or logged here and the start timeout follows the run's deadline.
        """
        # Given a NotebookNode, papermill records the whole input notebook as "input_path".
        nb.metadata.papermill["input_path"] = None
        run.notebook = nb
        run.total = sum(
            1
            for cell in nb.cells
            if cell.cell_type == "code" and cell.source.strip() and _SKIP_TAG not in cell.metadata.get("tags", [])
        )
        nb_man = _CheckpointManager(nb, run)
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, run=run)
        except (CellTimeoutError, DeadKernelError) as exc:
            # papermill marks only cells that returned an error; these ended without a reply.
            if run.cell_index is None:
                raise
            run.fail_cell(nb_man, exc)
            raise
        finally:
            nb_man.notebook_complete()
        return nb_man.nb

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, *, run):
        """Run the cells with nbclient on the run's already started kernel."""
        client = PapermillNotebookClient(
            nb_man,
            km=run.kernel.km,
            kernel_name=kernel_name,
            log=logger,
            startup_timeout=max(1, math.ceil(run.remaining())),
            timeout_func=run.cell_timeout,
            skip_cells_with_tag=_SKIP_TAG,
            shutdown_kernel="immediate",
            on_cell_execute=run.cell_execute,
            on_cell_executed=run.cell_executed,
        )
        client.kc = run.kernel.kc  # connected at prewarm: nbclient uses a client it is given
        # nbclient leaves a kernel it was given running, with its client connected, unless
        # asked; the kernel is never reused, so have it kill the kernel and close the client.
        client.execute(cleanup_kc=True)


papermill_engines.register(_ENGINE_NAME, _RunnerEngine)


def installed_modules(names) -> tuple:
    """Those of `names` whose top-level package is installed; each other one is logged
    once, here in the runner's own log (a typo in NOTEBOOKS_PRELOAD_MODULES), and left out
    rather than reported in every run's log. Nothing is imported."""
    found = []
    for name in names:
        if importlib.util.find_spec(name.partition(".")[0]) is None:
            logger.warning("NOTEBOOKS_PRELOAD_MODULES: no module %r is installed; it is not preloaded", name)
        else:
            found.append(name)
    return tuple(found)


class NotebookRunner:
    """Executes notebooks one at a time, each on a fresh kernel, within `run_timeout` seconds.

    on_progress is called at most every `progress_interval` seconds (plus once at the end)
    and on_checkpoint at most every `checkpoint_interval` seconds.
    """

    def __init__(
        self,
        run_timeout: float,
        progress_interval: float = 1.0,
        checkpoint_interval: float = 30.0,
        shared_tmp: Optional[str] = None,
        sweep_whole_user: bool = False,
        preload: tuple = (),
        kernel_uid: Optional[int] = None,
    ):
        """`shared_tmp`: a folder every run can write to (Lambda's /tmp), which holds the
        runs' private folders and is emptied (with /dev/shm and System V IPC) after each
        run and before each kernel starts; None: the system's temporary folder, left
        alone. `sweep_whole_user`: after a run and before a kernel starts, end every other
        process of this user, not only those below this process (Lambda), unless kernels
        run in a PID namespace of their own, which holds all of a run's processes.
        `preload`: modules each kernel imports while it waits for its run (prewarm), so
        that a run importing them finds them loaded; () for none.
        `kernel_uid` (for a runner running as root: a Fargate task): the user kernels run
        as, apart from this process's."""
        self.run_timeout = run_timeout
        self._preload = installed_modules(preload)
        self.progress_interval = progress_interval
        self.checkpoint_interval = checkpoint_interval
        self._shared_tmp = shared_tmp
        self._sweep_whole_user = sweep_whole_user
        self._kernel_uid = kernel_uid
        self._waiting: Optional[_Kernel] = None
        self._processes: Optional[sandbox.ProcessSweep] = None
        self._broken: Optional[str] = None  # why this runner must not run another notebook
        self._executing: Optional[_Run] = None  # read by cancel() from another thread
        self._executing_lock = threading.Lock()
        sandbox.adopt_orphans()  # a run's orphaned processes stay ours to find and end

    def prewarm(self, preload: bool = True) -> None:
        """Start a fresh kernel ahead of need (no-op if a fresh, live one is already waiting),
        importing the `preload` modules unless `preload` is False.

        Kernel start (~0.6 s) and the preloaded imports then happen before the run, while
        no run waits; execute() uses the kernel.
        Raises sandbox.SandboxError once a run could not be cleaned up after.
        """
        self._prewarmed(self._preload if preload else ())

    def _prewarmed(self, preload: tuple) -> tuple["_Kernel", sandbox.ProcessSweep]:
        """The waiting kernel if it is alive, else a new one importing `preload`; and the
        sweep of what its run starts."""
        if self._broken:
            raise sandbox.SandboxError(f"a previous run could not be cleaned up after: {self._broken}")
        if self._waiting is not None and self._processes is not None:  # set together, below
            if self._waiting.is_alive():
                return self._waiting, self._processes
            self._waiting.shutdown()
            self._waiting = None
        # In a PID namespace nothing of the run can be elsewhere: the user's other
        # processes (another function sharing the user, outside Lambda) are left alone.
        whole_user = self._sweep_whole_user and not sandbox.pid_namespace_prefix()
        processes = self._processes = sandbox.ProcessSweep(whole_user=whole_user)
        self._clear_before_kernel(whole_user)
        processes.start()  # whatever exists before the kernel is not the run's
        kernel = self._waiting = self._start_kernel(preload)
        return kernel, processes

    def _start_kernel(self, preload: tuple) -> "_Kernel":
        """A new kernel, ready; one that dies at start is started again, up to
        KERNEL_START_ATTEMPTS in all."""
        for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
            try:
                return _Kernel(self._shared_tmp, preload, self._kernel_uid)
            except RuntimeError as error:  # jupyter_client's, from its wait for the kernel
                if "died" not in str(error) or attempt == KERNEL_START_ATTEMPTS:
                    raise
                logger.warning("a kernel died at start (attempt %d): %s", attempt, error)
        raise AssertionError("unreachable")

    def _clear_before_kernel(self, whole_user: bool) -> None:
        """What _end_run does after a run, again before a kernel starts: the last run may
        have killed its runner process (which then cleaned up nothing) and left processes,
        files in /tmp and /dev/shm, or IPC objects for the next run to find."""
        try:
            if whole_user:
                sandbox.ProcessSweep(whole_user=True).sweep()
            if self._shared_tmp:
                sandbox.clear_shared(self._shared_tmp)
        except Exception as error:
            self._broken = f"{error!r}"
            logger.error("could not clean up before a kernel: %r", error)
            raise sandbox.SandboxError(f"could not clean up before a kernel: {self._broken}") from error

    def execute(
        self,
        notebook: NotebookNode,
        parameters: Optional[dict] = None,
        on_progress: Optional[Callable[[int, int], None]] = None,
        on_checkpoint: Optional[Callable[[NotebookNode], None]] = None,
        timeout: Optional[float] = None,
    ) -> Execution:
        """Execute `notebook` with papermill, injecting `parameters` (None or {}: none),
        within `timeout` seconds (None: the runner's run_timeout).

        Uses the prewarmed kernel if one is alive, else starts one that preloads nothing
        (the run waits for it). Afterwards that kernel
        and every process the run started are killed, and its folders (and with
        `shared_tmp`, everything in it) removed. It does not prewarm the next one.

        A notebook whose kernel spec names another language is not run: the Execution
        carries the unchanged notebook and a NoSuchKernel error.

        on_progress(done, total): total counts the code cells to run, i.e. code cells
        with non-blank source not tagged "skip-execution", papermill's injected-parameters
        cell included; done counts those that finished, with or without an error. The last
        call always carries the final figures. done < total when the run failed, and when the
        notebook ended itself with `sys.exit(0)`, which papermill counts as a success.

        on_checkpoint(notebook) receives the live, partially executed notebook: serialize
        it before returning, since execution goes on mutating it. The final notebook is
        only returned.

        Errors in the notebook (a cell's exception, the run's time limit, the kernel dying)
        are returned in Execution.error, not raised.
        """
        run_timeout = timeout or self.run_timeout
        deadline = time.monotonic() + run_timeout  # starting a kernel now counts too
        refusal = unsupported_kernel(notebook)
        if refusal:
            return Execution(notebook=notebook, error={"cell_index": None, "ename": "NoSuchKernel", "evalue": refusal})
        # A kernel started for a run that is waiting for it imports nothing ahead: the run
        # pays only for what it imports itself.
        kernel, processes = self._prewarmed(preload=())
        self._waiting = None
        run = _Run(
            kernel=kernel,
            run_timeout=run_timeout,
            deadline=deadline,
            progress_interval=self.progress_interval,
            checkpoint_interval=self.checkpoint_interval,
            on_progress=on_progress,
            on_checkpoint=on_checkpoint,
        )
        with self._executing_lock:
            self._executing = run
        try:
            papermill.execute_notebook(
                notebook,
                None,
                parameters=parameters,
                engine_name=_ENGINE_NAME,
                kernel_name="python3",
                language="python",  # as the kernel: papermill needs it for parameters, and a spec may not say
                progress_bar=False,
                run=run,
            )
        except PapermillExecutionError as exc:
            # papermill inserted two marker cells; drop them so cell_index matches the notebook.
            run.notebook = remove_error_markers(run.notebook)
            run.error = {"cell_index": exc.cell_index, "ename": exc.ename, "evalue": exc.evalue}
            if not exc.evalue:  # e.g. IPython's UsageError: reported on stderr, not as an error output
                run.error.update(_stderr_error(run.notebook.cells[exc.cell_index]))
        except (CellTimeoutError, DeadKernelError):
            if run.error is None and not run.cancelled:
                raise
        except _Cancelled:
            pass
        finally:
            with self._executing_lock:
                self._executing = None
            self._end_run(kernel, processes)
        run.report_progress()
        if run.cancelled:
            return Execution(notebook=run.notebook or notebook, error=None, cancelled=True, kernel_output=kernel.output)
        assert run.notebook is not None  # set by _RunnerEngine before any cell runs
        return Execution(notebook=run.notebook, error=run.error, kernel_output=kernel.output)

    def live(self) -> tuple:
        """(the executing notebook's cells, the index of the cell executing or last
        executed), or (None, None) before papermill hands the notebook over and between
        runs; safe to call from another thread. The cells are live: read them without
        changing them (runs.log.log_text), as execution goes on mutating them. Indexes
        count papermill's injected-parameters cell, as `Execution.error` does."""
        with self._executing_lock:
            run = self._executing
        if run is None or run.notebook is None:
            return None, None
        return run.notebook.cells, run.cell_index

    def cancel(self) -> None:
        """Stop the executing run, if any; safe to call from another thread.

        No further cell starts; the executing cell is interrupted (SIGINT, as Jupyter's
        interrupt does), and if it goes on regardless its kernel is killed after
        CANCEL_GRACE_SECONDS. execute() then returns what ran, marked cancelled.
        """
        with self._executing_lock:
            run = self._executing
            if run is None or run.cancelled:
                return
            run.cancelled = True
            provisioner = run.kernel.km.provisioner
            # _Kernel starts a local process, alive while its run executes.
            assert isinstance(provisioner, LocalProvisioner) and provisioner.pid is not None
            pid = provisioner.pid
        # The kernel leads its process group (and may sit in a PID namespace below the
        # process jupyter_client started): interrupt the group, as Jupyter does.
        self._signal_if_executing(run, lambda: os.killpg(pid, signal.SIGINT))
        timer = threading.Timer(
            CANCEL_GRACE_SECONDS, self._signal_if_executing, (run, lambda: os.kill(pid, signal.SIGKILL))
        )
        timer.daemon = True
        timer.start()

    def _signal_if_executing(self, run: "_Run", send: Callable[[], None]) -> None:
        with self._executing_lock:  # the kernel is shut down (its pid freed) only after this clears
            if self._executing is run:
                try:
                    send()
                except ProcessLookupError:
                    pass

    def _end_run(self, kernel: "_Kernel", processes: sandbox.ProcessSweep) -> None:
        """Stop the kernel, end every process the run started, remove what it wrote.

        Each step is tried whatever the others did. If any fails, this runner refuses
        to run another notebook (SandboxError from prewarm and execute), rather than let
        the next run find what is left: its process must end (on Lambda, a new container).
        """
        steps = [kernel.stop, processes.sweep, kernel.folders.remove]
        shared_tmp = self._shared_tmp
        if shared_tmp:  # Lambda: /tmp, /dev/shm and System V IPC are the container's
            steps.append(lambda: sandbox.clear_shared(shared_tmp))
        for step in steps:
            try:
                step()
            except Exception as error:  # noqa: BLE001 - every step runs; any failure is fatal below
                self._broken = f"{error!r}"
                logger.error("could not clean up after a run: %r", error)

    def close(self) -> None:
        """Shut down any waiting kernel."""
        if self._waiting is not None:
            self._waiting.shutdown()
            self._waiting = None
