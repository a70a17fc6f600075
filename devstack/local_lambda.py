"""The local Lambda: the runner function behind Lambda's own Invoke API on loopback (as
`sam local start-lambda` serves it), and the EventBridge clock.

`python -m devstack.local_lambda` (started by `devstack.stack`):
- serves `POST /2015-03-31/functions/<name>/invocations` on `NOTEBOOKS_LAMBDA_PORT`
  (0: any free port) for the runner function `NOTEBOOKS_RUNNER_FUNCTION` (its name or
  ARN), with `X-Amz-Invocation-Type` `Event` (202, queued), `RequestResponse` (200 with
  the handler's result; `X-Amz-Function-Error: Unhandled` if it raised) or `DryRun`
  (204); only for requests signed with the stack's key (devstack/credentials.py);
- runs invocations on a pool of worker processes (`NOTEBOOKS_LOCAL_WORKERS`, default:
  the number of cores; `--worker` starts one). Each worker is a process of its own, as each warm Lambda
  container is: it runs one invocation at a time through the runner's handler, keeps the
  next kernel started ahead of need, and after every run ends every process that run
  left below it (see runner/sandbox.py);
- runs the EventBridge clock (schedules.LocalEventClock), which fires due rules' targets
  through the Invoke API, with the same LambdaDispatcher the API uses, and the reaper's
  clock, which invokes the runner with `{"reap": {}}` every `NOTEBOOKS_REAP_SECONDS`
  (runs/reaper.py), as the deployment's EventBridge rule does;
- at start, fails the runs that were running when the stack stopped and dispatches the
  queued ones again;
- prints `ready <endpoint>` once it serves.

The API reaches it through boto3's own endpoint setting, `AWS_ENDPOINT_URL_LAMBDA`.
"""

import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from urllib.parse import unquote

from chalicelib.common import runner_events
from chalicelib.common.errors import SandboxError
from chalicelib.common.periodic import Periodic
from devstack.credentials import CredentialGuard, receive_secrets, send_secrets, split_environment

log = logging.getLogger(__name__)

_INVOKE_PATH = re.compile(r"/2015-03-31/functions/([^/]+)/invocations")
# Lambda's payload limits: 6 MB for a synchronous invocation, 256 KB for an asynchronous one.
_PAYLOAD_LIMITS = {"RequestResponse": 6 * 1024 * 1024, "Event": 256 * 1024, "DryRun": 6 * 1024 * 1024}
_STOP_SECONDS = 10.0


def _work(results_fd: int) -> None:
    """One worker process (`--worker`): run each event read on stdin (a JSON line), write
    [ok, result] on `results_fd` (a pipe of its own: a kernel inherits neither it nor
    the worker's stdout, so nothing a notebook prints passes for a result)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool stops its workers itself
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    receive_secrets()
    from chalicelib import services

    executor = services.get().runner_executor()
    try:
        with os.fdopen(results_fd, "w") as results:
            executor.prewarm()
            for line in sys.stdin:
                event = json.loads(line)
                unfit = False
                try:
                    outcome = [True, executor.handle(event)]
                except Exception as error:  # reported as Lambda reports a handler's error
                    log.exception("local runner failed on %s", event)
                    outcome = [False, {"errorMessage": str(error), "errorType": type(error).__name__}]
                    unfit = isinstance(error, SandboxError)
                results.write(json.dumps(outcome) + "\n")
                results.flush()
                if unfit:  # what a run left could not be removed: end, as a Lambda container would
                    return
    finally:
        executor.close()


class _Worker:
    """A worker process and its two pipes."""

    def __init__(self, env: dict, secrets: dict):
        results_read, results_write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devstack.local_lambda", "--worker", str(results_write)],
            env=env,
            stdin=subprocess.PIPE,
            pass_fds=(results_write,),
            text=True,
        )
        os.close(results_write)
        self._results = os.fdopen(results_read)
        send_secrets(self.process.stdin, secrets)

    def invoke(self, event: dict) -> list:
        """[ok, result]; EOFError if the worker died."""
        self.process.stdin.write(json.dumps(event) + "\n")
        self.process.stdin.flush()
        line = self._results.readline()
        if not line:
            raise EOFError("the worker process ended")
        return json.loads(line)

    def stop(self) -> None:
        """Let it finish what it runs (up to 10 s), then end it and its kernel."""
        try:
            self.process.stdin.close()  # end of input: the worker shuts its kernel down and exits
        except OSError:
            pass
        try:
            self.process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.terminate()  # SIGTERM: the worker still shuts its kernel down
            self.process.wait(_STOP_SECONDS)
        self._results.close()


class WorkerPool:
    """Worker processes, each fed by a thread of this process, one invocation at a time,
    first come first served. A worker that dies is replaced for the next invocation.

    Workers get this process's environment without the stack's key and addresses, which
    they read on stdin (devstack/credentials.py).
    """

    def __init__(self, size: int):
        self._env, self._secrets = {}, {}
        self._jobs = queue.Queue()
        self._stopping = threading.Event()
        self._feeders = [
            threading.Thread(target=self._feed, name=f"runner-{i}", daemon=True) for i in range(max(1, size))
        ]

    def start(self) -> None:
        """Start the workers, with this process's environment as it is now (the local
        Lambda's own address in it: a runner starts the fair queue's next drain)."""
        self._env, self._secrets = split_environment(dict(os.environ))
        for feeder in self._feeders:
            feeder.start()

    def submit(self, event: dict) -> Future:
        """Queue `event`; the future's result is [ok, handler result or error]."""
        future = Future()
        self._jobs.put((event, future))
        return future

    def _feed(self) -> None:
        worker = _Worker(self._env, self._secrets)
        while True:
            event, future = self._jobs.get()
            if self._stopping.is_set():
                break  # what is still queued stays `queued`: the next start dispatches it again
            if worker.process.poll() is not None:
                worker = _Worker(self._env, self._secrets)
            try:
                future.set_result(worker.invoke(event))
            except (EOFError, OSError, ValueError):
                future.set_result([False, {"errorMessage": "The worker process died", "errorType": "Runtime.Exit"}])
        worker.stop()

    def stop(self) -> None:
        """Let the workers finish the invocation they are running, end them and their
        kernels, and drop the invocations still queued."""
        self._stopping.set()
        for _ in self._feeders:
            self._jobs.put((None, Future()))
        for feeder in self._feeders:
            feeder.join(2 * _STOP_SECONDS + 1)


def _error(start_response, status: str, error_type: str, message: str):
    body = json.dumps({"Type": "User", "message": message}).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("x-amzn-ErrorType", error_type), ("Content-Length", str(len(body)))],
    )
    return [body]


class InvokeApi:
    """Lambda's Invoke operation for one function, as a WSGI application."""

    def __init__(self, function_name: str, pool: WorkerPool):
        self._function = function_name
        self._pool = pool

    def _serves(self, name: str) -> bool:
        # A name, or an ARN (qualified with $LATEST or not) ending in it.
        name = re.sub(r":\$LATEST$", "", name)
        return name == self._function or name.endswith(f":function:{self._function}")

    def __call__(self, environ, start_response):
        path = _INVOKE_PATH.fullmatch(environ.get("PATH_INFO", ""))
        if not path or environ["REQUEST_METHOD"] != "POST":
            return _error(start_response, "404 Not Found", "ResourceNotFoundException", "No such operation")
        name = unquote(path.group(1))
        if not self._serves(name):
            return _error(start_response, "404 Not Found", "ResourceNotFoundException", f"Function not found: {name}")
        kind = environ.get("HTTP_X_AMZ_INVOCATION_TYPE") or "RequestResponse"
        if kind not in _PAYLOAD_LIMITS:
            return _error(
                start_response, "400 Bad Request", "InvalidParameterValueException", f"Invalid InvocationType: {kind}"
            )
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > _PAYLOAD_LIMITS[kind]:
            return _error(
                start_response,
                "413 Request Entity Too Large",
                "RequestTooLargeException",
                f"Request must be smaller than {_PAYLOAD_LIMITS[kind]} bytes for the {kind} invocation type",
            )
        try:
            event = json.loads(environ["wsgi.input"].read(length) or b"{}")
        except ValueError:
            return _error(
                start_response,
                "400 Bad Request",
                "InvalidRequestContentException",
                "Could not parse request body into json",
            )
        if kind == "DryRun":
            start_response("204 No Content", [])
            return []
        future = self._pool.submit(event)
        if kind == "Event":
            start_response("202 Accepted", [("Content-Length", "0")])
            return []
        ok, result = future.result()
        body = json.dumps(result).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("X-Amz-Executed-Version", "$LATEST"),
            ("Content-Length", str(len(body))),
        ]
        start_response("200 OK", headers + ([] if ok else [("X-Amz-Function-Error", "Unhandled")]))
        return [body]


def main() -> int:
    """Run the local Lambda until SIGTERM or SIGINT (see the module's docstring)."""
    from werkzeug.serving import make_server

    from chalicelib import services
    from chalicelib.common import aws
    from chalicelib.schedules.scheduler import LocalEventClock
    from devstack.stack import stop_on_signals

    receive_secrets()
    logging.basicConfig(level=logging.WARNING, format="local Lambda: %(message)s", stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    settings = services.get().settings
    pool = WorkerPool(settings.local_workers)
    server = make_server(
        "127.0.0.1",
        int(os.environ.get("NOTEBOOKS_LAMBDA_PORT") or 0),
        CredentialGuard(
            InvokeApi(settings.runner_function, pool),
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
        ),
        threaded=True,
    )
    # This process's own Lambda client (the clock's, the recovery's) calls this server.
    os.environ["AWS_ENDPOINT_URL_LAMBDA"] = f"http://127.0.0.1:{server.server_port}"
    services.reset()
    stopped = stop_on_signals()
    pool.start()
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    resumed = services.get().run_dispatch.resume_after_restart()
    if any(resumed.values()):
        log.warning(
            "after the restart: %(failed)d interrupted runs failed, %(queued)d queued runs dispatched again", resumed
        )
    clock = LocalEventClock(
        aws.client("events", settings.region), settings.rule_prefix, services.get().dispatcher.invoke
    )
    clock.start()
    reaper = Periodic(settings.reap_interval, lambda: services.get().dispatcher.invoke(runner_events.reap()), "reaper")
    print(f"ready {os.environ['AWS_ENDPOINT_URL_LAMBDA']}", flush=True)
    try:
        with reaper:
            stopped.wait()
    finally:
        clock.stop()
        server.shutdown()
        server.server_close()
        pool.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _work(int(sys.argv[2]))
    else:
        sys.exit(main())
