"""The runner (papermill): executes one notebook on a real ipykernel.

It knows nothing of S3, DynamoDB or HTTP: the caller hands it a notebook, gets back an
`Execution` (the executed notebook and, if the run failed, where and why) and stores it.

Each run gets a kernel of its own, started without the process's AWS credentials in a
private temporary folder, and shut down (folder and all) after that one run, so nothing a
notebook does can reach the next one. `prewarm()` starts the next kernel ahead of need.

Threads: one NotebookRunner must be used from one thread only (kernel and client share
that thread's event loop, see jupyter_core.utils.run_sync); separate runners may run in
separate threads at the same time.
"""
import ctypes
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import nbformat
import papermill
from jupyter_client import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines
from papermill.exceptions import PapermillExecutionError
from papermill.execute import remove_error_markers
from papermill.log import logger

_ENGINE_NAME = "notebook-runner"
# nbclient does not run cells with this tag; we pass it explicitly so the progress total agrees.
_SKIP_TAG = "skip-execution"
# A cell that starts after the deadline still needs a positive timeout: nbclient reads 0 as "none".
_MIN_CELL_TIMEOUT = 0.01
_LAMBDA_TMP = "/tmp"
_KERNEL_READY_SECONDS = 60


@dataclass
class Execution:
    """The outcome of one run.

    `notebook` is the executed notebook (parameters injected; partial if the run failed).
    `error` is None on success, else {"cell_index": int, "ename": str, "evalue": str};
    cell_index indexes `notebook.cells`, whose failing cell also carries an error output.
    """

    notebook: NotebookNode
    error: Optional[dict]


def prepare_lambda_environment() -> None:
    """In AWS Lambda (AWS_LAMBDA_FUNCTION_NAME set), point HOME, JUPYTER_RUNTIME_DIR,
    JUPYTER_DATA_DIR, JUPYTER_CONFIG_DIR, IPYTHONDIR, MPLCONFIGDIR and XDG_CACHE_HOME under
    /tmp, the only writable place, create those folders, put the deployment package on
    the kernel's PYTHONPATH, and make this process non-dumpable so that kernels cannot
    read its credentials through /proc. Elsewhere do nothing.

    Call it once at start-up, before the first kernel starts (kernels inherit it).
    """
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return
    _forbid_inspection_by_kernels()
    folders = {
        "HOME": _LAMBDA_TMP,
        "JUPYTER_RUNTIME_DIR": f"{_LAMBDA_TMP}/jupyter/runtime",
        "JUPYTER_DATA_DIR": f"{_LAMBDA_TMP}/jupyter/data",
        "JUPYTER_CONFIG_DIR": f"{_LAMBDA_TMP}/jupyter/config",
        "IPYTHONDIR": f"{_LAMBDA_TMP}/ipython",
        "MPLCONFIGDIR": f"{_LAMBDA_TMP}/matplotlib",
        "XDG_CACHE_HOME": f"{_LAMBDA_TMP}/.cache",
    }
    for name, folder in folders.items():
        os.makedirs(folder, exist_ok=True)
        os.environ[name] = folder
    # The runtime puts the package (ipykernel included) on the handler's sys.path only;
    # the kernel is a new process and finds it through PYTHONPATH.
    task_root = os.environ.get("LAMBDA_TASK_ROOT", "/var/task")
    paths = [task_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != task_root]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)


_PR_SET_DUMPABLE = 4  # from <linux/prctl.h>


def _forbid_inspection_by_kernels() -> None:
    """Make this process non-dumpable, as ssh-agent does.

    Lambda's credentials live in this process's environment. Kernels get an environment
    without them, but run as the same user, and could otherwise read them back from
    /proc/<runner pid>/environ or /proc/<runner pid>/mem; a non-dumpable process's /proc
    entries belong to root. The flag is not inherited across exec, so kernels stay
    ordinary processes.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _kernel_env() -> dict:
    """This process's environment minus AWS_* (credentials, profile, endpoints) and the
    service's own NOTEBOOKS_* settings (the local stack's users and passwords among them):
    user code must not act with the service's identity or read its configuration."""
    return {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "NOTEBOOKS_"))}


def _stderr_error(cell) -> dict:
    """{"ename", "evalue"} from the last "Name: message" line a cell wrote to stderr, or {}."""
    lines = [line for output in cell.get("outputs", []) if output.get("name") == "stderr"
             for line in output.get("text", "").splitlines() if line.strip()]
    name, colon, value = (lines[-1] if lines else "").partition(": ")
    return {"ename": name, "evalue": value} if colon and name.isidentifier() else {}


class _Kernel:
    """A started kernel, a client already connected to it, and the private temporary
    folder it works in.

    Connecting is part of the head start: a client's first wait for the kernel ends with
    a fixed 0.2 s pause to flush its IOPub channel, paid here rather than by the run.
    """

    def __init__(self, kernel_name: str):
        self.cwd = tempfile.mkdtemp(prefix="notebook-run-")
        self.km = AsyncKernelManager(kernel_name=kernel_name)
        self.kc = None
        try:
            run_sync(self.km.start_kernel)(cwd=self.cwd, env=_kernel_env())
            self.kc = self.km.client()
            self.kc.start_channels()
            run_sync(self.kc.wait_for_ready)(timeout=_KERNEL_READY_SECONDS)
        except BaseException:
            self.shutdown()
            raise

    def is_alive(self) -> bool:
        """Whether the kernel process is still running."""
        return run_sync(self.km.is_alive)()

    def shutdown(self) -> None:
        """Kill the kernel (if nbclient has not already) and remove its folder."""
        try:
            if self.kc is not None and self.kc.channels_running:
                self.kc.stop_channels()
            # After a normal run nbclient has killed and reaped it; after a crash it only
            # cleaned up, so the dead process is still ours to reap.
            if self.km.has_kernel:
                run_sync(self.km.shutdown_kernel)(now=True)
        finally:
            shutil.rmtree(self.cwd, ignore_errors=True)


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

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once past)."""
        return self.deadline - time.monotonic()

    def cell_timeout(self, cell) -> float:
        """nbclient's timeout_func: each cell may use what is left of the whole run's time."""
        return max(self.remaining(), _MIN_CELL_TIMEOUT)

    def cell_execute(self, cell, cell_index, **_):
        """nbclient's on_cell_execute hook: remember the cell, since nbclient's timeout and
        dead-kernel errors do not say which one they came from."""
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


class NotebookRunner:
    """Executes notebooks one at a time, each on a fresh kernel, within `run_timeout` seconds.

    on_progress is called at most every `progress_interval` seconds (plus once at the end)
    and on_checkpoint at most every `checkpoint_interval` seconds.
    """

    def __init__(
        self,
        run_timeout: float,
        kernel_name: str = "python3",
        progress_interval: float = 1.0,
        checkpoint_interval: float = 30.0,
    ):
        self.run_timeout = run_timeout
        self.kernel_name = kernel_name
        self.progress_interval = progress_interval
        self.checkpoint_interval = checkpoint_interval
        self._waiting: Optional[_Kernel] = None

    def prewarm(self) -> None:
        """Start a fresh kernel ahead of need (no-op if a fresh, live one is already waiting).

        Kernel start (~0.6 s) then happens while the caller does other work; execute() uses it.
        """
        if self._waiting is not None:
            if self._waiting.is_alive():
                return
            self._waiting.shutdown()
            self._waiting = None
        self._waiting = _Kernel(self.kernel_name)

    def execute(
        self,
        notebook: NotebookNode,
        parameters: Optional[dict] = None,
        on_progress: Optional[Callable[[int, int], None]] = None,
        on_checkpoint: Optional[Callable[[NotebookNode], None]] = None,
    ) -> Execution:
        """Execute `notebook` with papermill, injecting `parameters` (None or {}: none).

        Uses the prewarmed kernel if one is alive, else starts one; either way that kernel
        is shut down afterwards and its folder removed. It does not prewarm the next one.

        on_progress(done, total): total counts the code cells to run, i.e. code cells
        with non-blank source not tagged "skip-execution", papermill's injected-parameters
        cell included; done counts those that finished, with or without an error. The last
        call always carries the final figures (done < total if the run failed).

        on_checkpoint(notebook) receives the live, partially executed notebook: serialize
        it before returning, since execution goes on mutating it. The final notebook is
        only returned.

        Errors in the notebook (a cell's exception, the run's time limit, the kernel dying)
        are returned in Execution.error, not raised.
        """
        deadline = time.monotonic() + self.run_timeout  # starting a kernel now counts too
        self.prewarm()
        kernel, self._waiting = self._waiting, None
        run = _Run(
            kernel=kernel,
            run_timeout=self.run_timeout,
            deadline=deadline,
            progress_interval=self.progress_interval,
            checkpoint_interval=self.checkpoint_interval,
            on_progress=on_progress,
            on_checkpoint=on_checkpoint,
        )
        try:
            papermill.execute_notebook(
                notebook,
                None,
                parameters=parameters,
                engine_name=_ENGINE_NAME,
                kernel_name=self.kernel_name,
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
            if run.error is None:
                raise
        finally:
            kernel.shutdown()
        run.report_progress()
        return Execution(notebook=run.notebook, error=run.error)

    def close(self) -> None:
        """Shut down any waiting kernel."""
        if self._waiting is not None:
            self._waiting.shutdown()
            self._waiting = None
