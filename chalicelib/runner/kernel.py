"""A run's kernel process: ipykernel, started so that only its own runner can talk to it.

The runner starts it as `python -P -m chalicelib.runner.kernel -f <connection file> [options]`
and writes its secrets on its standard input, as one line of JSON: the session key that
signs messages and the CurveZMQ key pair that encrypts every channel. The connection
file names the ports but holds no secret, so another notebook that finds the file or the
ports (same user, same machine) can neither send the kernel a message it accepts nor read
what it publishes. The process makes itself non-dumpable before it reads the secrets, so
its memory, environment and file descriptors are closed to other processes of the same
user, and it cannot be ptrace-attached.

The runner keeps its end of that pipe open for the kernel's life, so the pipe doubles
as a lifeline: when the runner process dies, however abruptly (SIGKILL included), the
kernel sees end-of-file and exits, taking its PID namespace's processes with it.

`--preload numpy,pandas,matplotlib` (before the other options) imports those modules once
the kernel is set up and before it answers its first request, so that the runner's
waiting kernel has them ready for the run (NOTEBOOKS_PRELOAD_MODULES). They are imported
by this process, not run in the notebook's namespace: the notebook finds them in
sys.modules, and no name of its own.

`--run-as=UID` (the runner is root: a Fargate task) makes the process that user, with
no groups, once ipykernel is loaded and before it reads its secrets, so the notebook
runs apart from its runner.

Started as the first process of a PID namespace (PID 1, which the OS shields from every
signal it has no handler for, so `os.kill(os.getpid(), signal.SIGTERM)` would do
nothing), the process forks: PID 1 stays a minimal init (`_init`), which forwards
signals to the kernel and reaps orphans, and the child goes on as the kernel, which
then receives signals as it would anywhere else.
"""

import importlib
import json
import os
import signal
import sys
import threading
import time

from chalicelib.runner.sandbox import forbid_inspection

_CONNECTION_FILE_WAIT_SECONDS = 5.0
RUN_AS_OPTION = "--run-as="
# What the init passes on to the kernel. Not SIGINT: an interrupt goes to the kernel's
# process group, init included, and the kernel must get it once.
_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_INIT_SIGNALS = {*_FORWARDED, signal.SIGINT}


def _run_as(argv: list) -> list:
    """Become the user `--run-as=UID` names, if any (no groups, its own uid as gid);
    `argv` without the option."""
    kept = [arg for arg in argv if not arg.startswith(RUN_AS_OPTION)]
    for arg in argv:
        if arg.startswith(RUN_AS_OPTION):
            uid = int(arg[len(RUN_AS_OPTION) :])
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
    return kept


def _init() -> bool:
    """If this is PID 1, fork: return True in the child (the kernel); in the parent, be
    the namespace's init until the kernel ends, then exit as it did (the OS then kills
    every other process of the namespace). False when not PID 1."""
    if os.getpid() != 1:
        return False
    signal.pthread_sigmask(signal.SIG_BLOCK, _INIT_SIGNALS)  # until each side has its handlers
    kernel = os.fork()
    if kernel == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _INIT_SIGNALS)
        return True
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # the secrets are the kernel's to read
    os.close(null)
    forward = lambda signum, _frame: os.kill(kernel, signum)  # noqa: E731
    for signum in _FORWARDED:
        signal.signal(signum, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _INIT_SIGNALS)
    while True:
        try:
            pid, status = os.wait()  # the kernel, or an orphan re-parented here
        except ChildProcessError:
            os._exit(1)
        if pid == kernel:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)


def _read_secrets() -> dict:
    """The secrets from standard input; stdin is then /dev/null, as ipykernel expects
    (a notebook's input() goes through the frontend, never the process's stdin), and the
    pipe is watched on a descriptor of its own, not inherited by the notebook's processes."""
    line = b""
    while not line.endswith(b"\n"):  # unbuffered: nothing after the line may be consumed
        chunk = os.read(0, 1)
        if not chunk:
            sys.exit("the runner closed the kernel's standard input before its secrets")
        line += chunk
    secrets = {name: value.encode() for name, value in json.loads(line).items()}
    lifeline = os.dup(0)  # dup() gives a close-on-exec descriptor
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    threading.Thread(target=_exit_when_runner_gone, args=(lifeline,), name="lifeline", daemon=True).start()
    return secrets


def _exit_when_runner_gone(lifeline: int) -> None:
    """Block until the runner's end of the pipe closes, then end this process at once.

    os._exit, not a signal: it ends this process whatever its handlers."""
    while os.read(lifeline, 4096):
        pass
    os._exit(1)


def preload(names) -> None:
    """Import the modules `names`; a module that fails to import is reported on stderr and
    skipped (the notebook meets the same error if it imports it). matplotlib comes with
    pyplot and its font list (built in the run's private folders, as a first plot would),
    under the backend the kernel chose: ipykernel's inline backend, which draws with Agg."""
    for name in names:
        try:
            importlib.import_module(name)
            if name == "matplotlib":
                importlib.import_module("matplotlib.pyplot")
        except Exception as error:  # noqa: BLE001 - a preload never stops the kernel
            print(f"preloading {name} failed: {error!r}", file=sys.__stderr__, flush=True)


def _preload_option(argv: list) -> list:
    """The modules named by a leading `--preload a,b` in argv, removed from it."""
    if argv[1:2] != ["--preload"]:
        return []
    names = argv[2]
    del argv[1:3]
    return [name.strip() for name in names.split(",") if name.strip()]


def main() -> None:
    """Start ipykernel with the secrets from stdin, preloading what `--preload` names (as
    `--run-as`'s user, below an init when PID 1)."""
    modules = _preload_option(sys.argv)
    # As ipykernel_launcher does: no module of the working folder shadows ours at start.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    # Loaded by the runner's user, before any change of user: the kernel's own code.
    from ipykernel.kernelapp import IPKernelApp

    sys.argv = _run_as(sys.argv)
    forbid_inspection()  # after the change of user, which resets it
    below_init = _init()
    secrets = _read_secrets()

    class RunKernelApp(IPKernelApp):
        def init_poller(self):
            if below_init:
                # The parent is our init, which ipykernel's poller would take for a dead
                # runner; 1 tells it so. The lifeline tells when the runner is gone.
                self.parent_handle = 1
            super().init_poller()

        def load_connection_file(self, connection_file=None):
            # The kernel manager may rewrite the file once right after launch: wait for it.
            deadline = time.monotonic() + _CONNECTION_FILE_WAIT_SECONDS
            while True:
                try:
                    super().load_connection_file(connection_file)
                    break
                except FileNotFoundError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            self.session.key = secrets["key"]
            self.curve_publickey = secrets["curve_publickey"]
            self.curve_secretkey = secrets["curve_secretkey"]

        def write_connection_file(self, **kwargs):
            """Nothing to write: the runner's file has every port, and ours would add the secrets."""

        def initialize(self, argv=None):
            super().initialize(argv)
            # Set up (sockets bound, MPLBACKEND chosen, the shell made) but not yet
            # answering: the runner's wait for the kernel covers the imports.
            preload(modules)
            sys.stdout.flush()  # as ipykernel does: nothing of this reaches the first cell
            sys.stderr.flush()

    RunKernelApp.launch_instance()


if __name__ == "__main__":
    main()
