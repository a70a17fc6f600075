"""The runner as an ECS Fargate task, for runs longer than Lambda allows.

`python -m chalicelib.runner.fargate_task <run_id>` executes that one run, which the fair
queue's Fargate pool claimed for this task (runs/fargate_pool.py), with the runner
function's executor (RunExecutor.execute), in the same image, then exits: a task serves
one run, so nothing of it is left for another.

ECS stops a task with SIGTERM (a cancel's StopTask), and SIGKILL 30 s later: on SIGTERM
the run is stopped as a cancel stops it, so its output so far is stored and it ends
`cancelled` before that.

ECS runs the image as root. The runner stays root, and its kernels run as KERNEL_UID, a
user of their own with no groups (runner/kernel.py's --run-as): a notebook cannot signal
its runner, read the task's credentials from its environment, or attach to it.
"""

import json
import logging
import os
import signal
import sys
import tempfile
import threading

from chalicelib import services

# The user a task's kernels run as, when the task runs as root: Lambda's own (sbx_user1051).
KERNEL_UID = 993


def main(argv) -> int:
    """Run the run named in argv[1] (as root, as ECS starts the image, with kernels as
    KERNEL_UID); 0 whatever the notebook did (its outcome is recorded)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if len(argv) != 2:
        print("usage: python -m chalicelib.runner.fargate_task RUN_ID", file=sys.stderr)
        return 2
    print(json.dumps(serve(argv[1])), flush=True)
    return 0


def kernel_user():
    """KERNEL_UID when this task runs as root (then its temporary folder is made
    writable by it: sticky, as /tmp), else None: kernels run as this process's user."""
    if os.geteuid() != 0:
        return None
    os.chmod(tempfile.gettempdir(), 0o1777)
    return KERNEL_UID


def serve(run_id: str) -> dict:
    """Execute the run with the runner's executor, its kernel as `kernel_user()`; SIGTERM
    (StopTask) stops it as a cancel does. The run's id and final status ("skipped" when
    it was not this task's to run)."""
    executor = services.get().runner_executor(kernel_uid=kernel_user())
    # From a thread of its own: the handler may interrupt the main thread inside the
    # runner's lock, which cancel() takes.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=executor.cancel, daemon=True).start())
    return {"run_id": run_id, "status": executor.execute(run_id)}


if __name__ == "__main__":
    sys.exit(main(sys.argv))
