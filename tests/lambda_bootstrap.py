"""A stand-in for Lambda's Python runtime, run inside the Lambda simulation as
/var/runtime/bootstrap.py (standard library only: it runs on Lambda's Python, not ours).

Like the real runtime it imports the handler named by _HANDLER from LAMBDA_TASK_ROOT once
(the function's init) and then calls it for one event after another in the same process
(a warm container). Events come one JSON document a line on stdin; answers go one a line
on the original stdout: first {"init_seconds", "loaded"} (or {"init_error"}), then
{"result"} or {"error", "trace"} per event. The function's own prints go to stderr,
which is its log.
"""

import importlib
import json
import os
import sys
import time
import traceback
import uuid

HEAVY_MODULES = ("papermill", "nbclient", "ipykernel", "nbconvert", "jupyter_client")


class Context:
    """The attributes of Lambda's context object that a handler may read."""

    def __init__(self, timeout_seconds: float):
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.invoked_function_arn = (
            f"arn:aws:lambda:{os.environ['AWS_REGION']}:123456789012:function:{self.function_name}"
        )
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main() -> None:
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the handler's prints and logs go to the log, not into the answers
    started = time.perf_counter()
    sys.path.insert(0, os.environ["LAMBDA_TASK_ROOT"])
    module_name, handler_name = os.environ["_HANDLER"].rsplit(".", 1)
    try:
        handler = getattr(importlib.import_module(module_name), handler_name)
    except Exception:  # noqa: BLE001 - reported as Lambda reports an init error
        print(json.dumps({"init_error": traceback.format_exc()}), file=answers, flush=True)
        return
    print(
        json.dumps(
            {
                "init_seconds": time.perf_counter() - started,
                "loaded": [name for name in HEAVY_MODULES if name in sys.modules],
            }
        ),
        file=answers,
        flush=True,
    )
    timeout = float(os.environ.get("SIMULATED_TIMEOUT_SECONDS", "900"))
    for line in sys.stdin:
        try:
            answer = {"result": handler(json.loads(line), Context(timeout))}
        except Exception as error:  # noqa: BLE001 - reported as Lambda reports a handler's error
            answer = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
        print(json.dumps(answer, default=str), file=answers, flush=True)


if __name__ == "__main__":
    main()
