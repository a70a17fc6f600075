"""What keeps one run from reaching the next: private folders per run, and a sweep after
each run of every process it started and, on Lambda, of every file it left in /tmp.

A notebook is untrusted code running as the runner's own operating-system user, so it can
do whatever that user can. What it must not do is leave anything for a later run of
another user to find: a startup file, a history database, a kernel spec, a process, a
file. So each run gets fresh folders for everything Jupyter, IPython and common libraries
read or write, and afterwards everything that run created is ended and removed.

Processes: the runner process becomes a "child subreaper" (prctl), so a process the
notebook starts and orphans, by double-forking or leaving its session, is re-parented to
the runner instead of to init. Every process that appeared below the runner during a run
is therefore found among its descendants, and killed (SIGKILL, which cannot be caught).
"""
import ctypes
import os
import shutil
import signal
import stat
import tempfile
import time

_PR_SET_DUMPABLE = 4  # from <linux/prctl.h>
_PR_SET_CHILD_SUBREAPER = 36
_SWEEP_SECONDS = 10.0


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def forbid_inspection() -> None:
    """Make this process non-dumpable, as ssh-agent does.

    Its secrets (credentials in its environment, kernel keys in its memory) are then
    closed to other processes of the same user: /proc/<pid>/environ, mem and fd belong
    to root, and it cannot be ptrace-attached. Not inherited across exec.
    """
    _prctl(_PR_SET_DUMPABLE, 0)


def adopt_orphans() -> None:
    """Make this process the reaper of its orphaned descendants (Linux 3.4+)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _stat_fields(pid: int):
    """(ppid, start time, uid, state) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read()
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # after the command name, which may hold spaces
    return int(fields[1]), int(fields[19]), uid, fields[0]


def _processes(include_dead: bool = False) -> dict:
    """{pid: (ppid, start time, uid)} of every process visible now; without
    `include_dead`, zombies (dead already: only their parent's wait removes them) left out."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None and (include_dead or fields[3] not in (b"Z", b"X")):
                table[int(name)] = fields[:3]
    return table


def _descendants(table: dict, root: int) -> set:
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _ancestors(table: dict, pid: int) -> set:
    found = set()
    while pid in table and table[pid][0] not in found and table[pid][0] > 0:
        pid = table[pid][0]
        found.add(pid)
    return found


class ProcessSweep:
    """Ends every process that appears below this process between `start()` and `sweep()`.

    With `whole_user`, it also ends every other process of this user that did not exist
    at `start()`, except this process's ancestors: on Lambda, where a container serves
    one invocation at a time, nothing else of the runner's user may outlive a run. Never
    for root, whose processes are the whole machine's.
    """

    def __init__(self, whole_user: bool = False):
        self._whole_user = whole_user and os.getuid() != 0
        self._before = set()

    def start(self) -> None:
        """Remember what exists now (processes that are not the run's)."""
        self._before = {(pid, started) for pid, (_, started, _) in _processes(include_dead=True).items()}

    def _targets(self) -> list:
        me = os.getpid()
        table = _processes()
        candidates = _descendants(table, me)
        if self._whole_user:
            uid = os.getuid()
            candidates |= {pid for pid, (_, _, owner) in table.items() if owner == uid}
            candidates -= _ancestors(table, me) | {me}
        return [pid for pid in candidates if (pid, table[pid][1]) not in self._before]

    def sweep(self) -> int:
        """Kill the run's processes until none is left; how many were killed.

        Repeated because a process may fork while the sweep runs; its children are
        re-parented to this process when it dies, and the next pass finds them.
        """
        killed = set()
        deadline = time.monotonic() + _SWEEP_SECONDS
        while time.monotonic() < deadline:
            targets = self._targets()
            if not targets:
                break
            for pid in targets:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except OSError:
                    pass  # gone already, or not ours to signal
            self._reap()
            time.sleep(0.01)
        self._reap()
        return len(killed)

    def _reap(self) -> None:
        """Collect the exit status of the run's dead children (its orphans re-parented
        here), so that none stays a zombie."""
        me = os.getpid()
        for pid, (ppid, started, _) in _processes(include_dead=True).items():
            if ppid == me and (pid, started) not in self._before:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass  # already collected, e.g. by its subprocess.Popen


def remove_tree(path: str) -> None:
    """Remove `path` and everything below it, even folders a notebook made unreadable."""
    def make_writable_and_retry(function, failed_path, _):
        parent = os.path.dirname(failed_path)
        for folder in (parent, failed_path):
            try:
                os.chmod(folder, stat.S_IRWXU)
            except OSError:
                pass
        if os.path.isdir(failed_path) and not os.path.islink(failed_path):
            shutil.rmtree(failed_path, ignore_errors=True)
        else:
            try:
                function(failed_path)
            except OSError:
                pass

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, onerror=make_writable_and_retry)
    elif os.path.lexists(path):
        os.remove(path)


def empty_folder(path: str) -> None:
    """Remove everything inside `path` (what this user may remove), keeping `path` itself."""
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        try:
            remove_tree(os.path.join(path, name))
        except OSError:
            pass  # another user's file: nothing a run of ours can have written


class RunFolders:
    """A run's private, fresh folders, removed with `remove()`.

    `env` points HOME, IPython, Jupyter, matplotlib, the XDG folders and TMPDIR into
    them, so no kernel reads a startup file, config, kernel spec or history another run
    wrote, and nothing it writes there outlives the run. `workdir` is the kernel's
    working folder; `connection_file` the kernel's connection file.
    """

    def __init__(self, base: str = None):
        self.root = tempfile.mkdtemp(prefix="notebook-run-", dir=base)  # mode 0700
        home = os.path.join(self.root, "home")
        runtime = os.path.join(self.root, "runtime")
        scratch = os.path.join(self.root, "tmp")
        self.workdir = os.path.join(self.root, "work")
        self.connection_file = os.path.join(runtime, "kernel.json")
        self.env = {
            "HOME": home,
            "IPYTHONDIR": os.path.join(home, ".ipython"),
            "JUPYTER_CONFIG_DIR": os.path.join(home, ".jupyter"),
            "JUPYTER_DATA_DIR": os.path.join(home, ".local", "share", "jupyter"),
            "JUPYTER_RUNTIME_DIR": runtime,
            "MPLCONFIGDIR": os.path.join(home, ".config", "matplotlib"),
            "XDG_CACHE_HOME": os.path.join(home, ".cache"),
            "XDG_CONFIG_HOME": os.path.join(home, ".config"),
            "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
            "TMPDIR": scratch,
            "TEMP": scratch,
            "TMP": scratch,
        }
        for folder in {self.workdir, *self.env.values()}:
            os.makedirs(folder, mode=0o700, exist_ok=True)

    def remove(self) -> None:
        """Remove the folders and everything the run wrote in them."""
        remove_tree(self.root)
