"""The runner as an ECS Fargate task, for runs longer than Lambda allows.

`python -m chalicelib.runner.fargate_task <run_id>` executes that one run with the same handler
as the runner function (RunExecutor.handle), in the same image, then exits: a task serves
one run, so nothing of it is left for another.

ECS stops a task with SIGTERM (a cancel's StopTask), and SIGKILL 30 s later: on SIGTERM
the run is stopped as a cancel stops it, so its output so far is stored and it ends
`cancelled` before that.

ECS runs the image as root; the task gives root up before anything else (see
sandbox.give_up_root), so a notebook runs as an unprivileged user, as on Lambda, and
cannot read the task's credentials from the runner's environment.
"""

import json
import logging
import signal
import sys
import tempfile
import threading

from chalicelib import services
from chalicelib.common import runner_events
from chalicelib.runner import sandbox

# The user a task's runner and kernels run as: Lambda's own (sbx_user1051).
TASK_UID = 993


def main(argv) -> int:
    """Give up root (ECS starts the image as root), then run the run named in argv[1]; 0
    whatever the notebook did (its outcome is recorded)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if len(argv) != 2:
        print("usage: python -m chalicelib.runner.fargate_task RUN_ID", file=sys.stderr)
        return 2
    sandbox.give_up_root(TASK_UID, tempfile.gettempdir())  # does nothing unless root
    print(json.dumps(serve(argv[1])), flush=True)
    return 0


def serve(run_id: str) -> dict:
    """Execute the run with the runner handler, as this process's user; SIGTERM (StopTask)
    stops it as a cancel does. The handler's answer."""
    executor = services.get().runner_executor()
    # From a thread of its own: the handler may interrupt the main thread inside the
    # runner's lock, which cancel() takes.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=executor.cancel, daemon=True).start())
    return executor.handle(runner_events.run_event(run_id))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
