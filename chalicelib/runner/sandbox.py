"""What keeps one run from reaching the next: private folders per run, and a sweep after
each run of every process it started and, on Lambda, of every file it left in /tmp.

A notebook is untrusted code running as the runner's own operating-system user, so it can
do whatever that user can. What it must not do is leave anything for a later run of
another user to find: a startup file, a history database, a kernel spec, a process, a
file. So each run gets fresh folders for everything Jupyter, IPython and common libraries
read or write, and afterwards everything that run created is ended and removed.

Processes: where the machine allows it, each kernel runs in a PID namespace of its own
(`pid_namespace_prefix`), which the OS empties when the kernel dies. Besides, the runner
process is a "child subreaper" (prctl), so a process the notebook starts and orphans, by
double-forking or leaving its session, is re-parented to the runner instead of to init;
after the run, every process that appeared below the runner is stopped and killed
(`ProcessSweep`), and on Lambda every other process of the runner's user too.
"""

import ctypes
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time

from chalicelib.common.errors import SandboxError

_PR_SET_DUMPABLE = 4  # from <linux/prctl.h>
_PR_SET_CHILD_SUBREAPER = 36
_SWEEP_SECONDS = 10.0
_LINUX = sys.platform.startswith("linux")
_DEAD = ("Z", "X")  # /proc/<pid>/stat states
_STOPPED = ("T", "t")


def _prctl(option: int, value: int) -> None:
    if not _LINUX:
        return  # prctl and /proc are Linux's: elsewhere (a developer's Mac) runs are not swept
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
    fields = data[data.rindex(b")") + 2 :].split()  # after the command name, which may hold spaces
    return int(fields[1]), int(fields[19]), uid, fields[0].decode()


def _processes(include_dead: bool = False) -> dict:
    """{pid: (ppid, start time, uid, state)} of every process visible now; without
    `include_dead`, zombies (dead already: only their parent's wait removes them) left
    out, unless threads of theirs still run."""
    table = {}
    for name in os.listdir("/proc") if _LINUX else ():
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None and (include_dead or fields[3] not in _DEAD or _has_live_threads(int(name))):
                table[int(name)] = fields
    return table


def _has_live_threads(pid: int) -> bool:
    """Whether a zombie is only its main thread's: a process whose main thread exited
    shows as a zombie while its other threads run on, and must still be killed."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return any(line.startswith("Threads:") and int(line.split()[1]) > 1 for line in status)
    except OSError:
        return False


def _descendants(table: dict, root: int) -> set:
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _signal(pids, signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass  # gone already


class ProcessSweep:
    """Ends every process a run started: call `start()` before its kernel starts and
    `sweep()` after the run.

    Below this process (a subreaper keeps a run's orphans below it): every process that
    appeared since `start()`. They are stopped (SIGSTOP) pass after pass until none is
    running, then killed (SIGKILL, which cannot be caught). Stopping first matters: a
    process that forks and exits in a loop changes pid faster than /proc can be read,
    but a stopped process cannot fork.

    With `whole_user` (for Lambda, where a container serves one invocation at a time):
    every process of this user but this one is killed first with kill(-1, SIGKILL),
    which the OS delivers to all of them under one lock, so none can fork away. Never for
    root, whose processes are the whole machine's.
    """

    def __init__(self, whole_user: bool = False):
        self._whole_user = whole_user and os.getuid() != 0
        self._before: set[tuple] = set()

    def start(self) -> None:
        """Remember what exists now (processes that are not the run's)."""
        self._before = {(pid, fields[1]) for pid, fields in _processes(include_dead=True).items()}

    def _targets(self) -> dict:
        """{pid: state} of the live processes below this one that are the run's."""
        table = _processes()
        return {
            pid: table[pid][3] for pid in _descendants(table, os.getpid()) if (pid, table[pid][1]) not in self._before
        }

    def sweep(self) -> int:
        """Stop, then kill, the run's processes until none is left; how many were killed."""
        if self._whole_user:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass  # there was no other process
        deadline = time.monotonic() + _SWEEP_SECONDS
        targets = self._targets()
        while time.monotonic() < deadline:
            # A zombie listed here has live threads; its state stays "Z" once they stop.
            running = [pid for pid, state in targets.items() if state not in _STOPPED + _DEAD]
            if not running:
                break
            _signal(running, signal.SIGSTOP)
            targets = self._targets()
        killed = set()
        while targets and time.monotonic() < deadline:
            _signal(targets, signal.SIGKILL)
            killed |= set(targets)
            self._reap()
            targets = self._targets()
        self._reap()
        return len(killed)

    def _reap(self) -> None:
        """Collect the exit status of the run's dead children (its orphans re-parented
        here), so that none stays a zombie."""
        me = os.getpid()
        for pid, (ppid, started, *_) in _processes(include_dead=True).items():
            if ppid == me and (pid, started) not in self._before:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass  # already collected, e.g. by its subprocess.Popen


# util-linux's unshare: a user namespace (so no privilege is needed), a PID namespace whose
# first process is the kernel's launcher (which stays its init: runner/kernel.py), with
# /proc mounted for it alone, and an IPC namespace (its own System V IPC objects and POSIX
# message queues). When unshare dies, the init gets SIGKILL, and when the init dies the OS
# kills every process in the namespace: nothing the run started can outlive it, however
# it forks. Root needs no user namespace, and must have none to hand the kernel to
# another user (a user namespace maps only root's own id).
_USER_NAMESPACE = ["--user", "--map-current-user"]
_PID_NAMESPACE = [
    "unshare",
    *_USER_NAMESPACE,
    "--pid",
    "--ipc",
    "--fork",
    "--kill-child",
    "--mount-proc",
    "--",
]
_pid_namespace_usable = None


def pid_namespace_prefix(user_namespace: bool = True) -> list:
    """The command prefix that starts a program in a PID namespace of its own, or [] where
    this machine does not allow it (no util-linux unshare, or no unprivileged user
    namespaces: Lambda, macOS, some hardened Linux distributions). Without
    `user_namespace` (for root only), the program stays in this user namespace."""
    global _pid_namespace_usable
    if _pid_namespace_usable is None:
        try:
            probe = subprocess.run(_PID_NAMESPACE + ["true"], capture_output=True, timeout=10)
            _pid_namespace_usable = probe.returncode == 0
        except (OSError, subprocess.SubprocessError):
            _pid_namespace_usable = False
    if not _pid_namespace_usable:
        return []
    return [arg for arg in _PID_NAMESPACE if user_namespace or arg not in _USER_NAMESPACE]


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: str) -> None:
    """Remove `path` and everything below it, at any depth and whatever the modes a
    notebook set: each folder is made accessible before it is read, links are never
    followed, and the walk is iterative (a tree thousands deep exceeds no recursion
    limit, and fd-relative calls no path length). Raises OSError on what it cannot remove."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return
    os.chmod(path, stat.S_IRWXU)
    folders, names = [os.open(path, _DIRECTORY)], [path]
    try:
        while folders:
            folder, deeper = folders[-1], None
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        deeper = entry.name
                        break
                    os.unlink(entry.name, dir_fd=folder)
            if deeper is not None:
                os.chmod(deeper, stat.S_IRWXU, dir_fd=folder)
                folders.append(os.open(deeper, _DIRECTORY, dir_fd=folder))
                names.append(deeper)
                continue
            os.close(folders.pop())
            emptied = names.pop()
            if folders:
                os.rmdir(emptied, dir_fd=folders[-1])
    finally:
        for folder in folders:
            os.close(folder)
    os.rmdir(path)


def empty_folder(path: str) -> None:
    """Remove everything inside `path` that this user owns, keeping `path` itself (what
    other users own, no run of ours can have written). Raises SandboxError when something
    of ours is left."""
    if not os.path.isdir(path):
        return
    left = []
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid == os.getuid():
                    remove_tree(entry.path)
            except OSError as error:
                left.append(f"{entry.path}: {error.strerror or error}")
    if left:
        raise SandboxError("could not remove " + "; ".join(left))


# System V IPC objects outlive the processes that made them: /proc/sysvipc lists them.
_SYSV_IPC = {"shm": ("shmid", "shmctl"), "msg": ("msqid", "msgctl"), "sem": ("semid", "semctl")}
_IPC_RMID = 0


# POSIX shared memory (shm_open, sem_open): one folder for the whole machine.
SHARED_MEMORY = "/dev/shm"


def clear_shared(shared_tmp: str) -> None:
    """Empty what every run on this machine shares (Lambda: the container's /tmp,
    /dev/shm and System V IPC): after each run, and before each kernel starts, so that a
    run that killed its runner leaves nothing for the next either."""
    empty_folder(shared_tmp)
    empty_folder(SHARED_MEMORY)
    remove_ipc_objects()


def remove_ipc_objects() -> None:
    """Remove every System V shared memory segment, message queue and semaphore set this
    user owns (for Lambda, where kernels get no IPC namespace of their own). Never for
    root, whose objects are the whole machine's."""
    if not _LINUX or os.getuid() == 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    uid = os.getuid()
    for kind, (id_column, control) in _SYSV_IPC.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as table:
                header, *rows = [line.split() for line in table]
        except OSError:
            continue
        for row in rows:
            fields = dict(zip(header, row, strict=False))
            if int(fields["uid"]) == uid:
                if kind == "sem":
                    getattr(libc, control)(int(fields[id_column]), 0, _IPC_RMID)
                else:
                    getattr(libc, control)(int(fields[id_column]), _IPC_RMID, None)


class RunFolders:
    """A run's private, fresh folders, removed with `remove()`.

    `env` points HOME, IPython, Jupyter, matplotlib, the XDG folders and TMPDIR into
    them, so no kernel reads a startup file, config, kernel spec or history another run
    wrote, and nothing it writes there outlives the run. `workdir` is the kernel's
    working folder; `connection_file` the kernel's connection file.
    """

    def __init__(self, base: str | None = None):
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

    def hand_over(self, uid: int) -> None:
        """Give the folders to the kernel's user `uid` (as root, whose kernels run as
        another user), who must write in them."""
        for folder, _, _ in os.walk(self.root):
            os.chown(folder, uid, uid)

    def remove(self) -> None:
        """Remove the folders and everything the run wrote in them (OSError if it cannot)."""
        remove_tree(self.root)
