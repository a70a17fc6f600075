"""The local stack behind `make dev`: three processes with one job each, started in order
and stopped in reverse order:
1. the embedded AWS (devstack/embedded_aws.py): moto's server, its state kept in the state folder;
2. the local Lambda (devstack/local_lambda.py): the runner function behind Lambda's Invoke API,
   and the EventBridge clock;
3. the API: `chalice local --stage local`, Chalice's own local server with its
   autoreloader, started through chalice_local.py, which connects it to the other two.

`python -m devstack.stack` starts all three (`make dev`); with `--no-api`, the
first two (`make aws`), which `python -m devstack.chalice_local local --stage local` then uses; `env` prints the
shell commands that point AWS tools at a running stack's embedded AWS.

No AWS account and no Docker. The state folder (`NOTEBOOKS_LOCAL_STATE`, default
`.local-state` in the repository) holds the embedded AWS's snapshots and, while the stack
runs, `stack.json`: where its servers listen and the access key they accept, readable by
this user only. Each start makes a new key.
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading

from boto3.dynamodb.conditions import Attr

from chalicelib.auth.users import UserStore, parse_user_list
from chalicelib.common import aws
from chalicelib.common.config import Settings
from chalicelib.runner import sandbox
from chalicelib.storage.run_table import owner_status
from chalicelib.storage.tables import create_tables, every_page
from devstack.credentials import new_credentials, send_secrets, split_environment
from devstack.state import StateFolder, atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK_FILE = "stack.json"
_START_SECONDS = 120
_STOP_SECONDS = 30
_WATCH_SECONDS = 0.5


def provision(settings: Settings, users=()) -> None:
    """Create the bucket (versioned) and tables (if missing) and add those of `users`
    [(name, password)] that do not exist yet."""
    s3 = aws.client("s3", settings.region)
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    if settings.bucket not in existing:
        s3.create_bucket(Bucket=settings.bucket)
    # As the deployed bucket: every content write makes a version that runs can pin.
    s3.put_bucket_versioning(Bucket=settings.bucket, VersioningConfiguration={"Status": "Enabled"})
    create_tables(aws.client("dynamodb", settings.region), settings)
    key_runs_by_owner_status(aws.dynamodb_table(settings.runs_table, settings.region))
    store = UserStore(aws.dynamodb_table(settings.users_table, settings.region), settings.password_scrypt_n)
    for name, password in users:
        if store.password_hash(name) is None:
            store.add(name, password)


def key_runs_by_owner_status(runs) -> None:
    """Give each run of state from before the `by_owner_status` index (`make dev`'s of an
    earlier version) the key that lists it by status. A Scan, at each start: a start cut
    short after the index was added leaves none unkeyed."""

    def unkeyed(start):
        page = runs.scan(
            FilterExpression=Attr("owner_status").not_exists(), **({"ExclusiveStartKey": start} if start else {})
        )
        return page["Items"], page.get("LastEvaluatedKey")

    for run in every_page(unkeyed):
        runs.update_item(
            Key={"run_id": run["run_id"]},
            UpdateExpression="SET owner_status = :key",
            ExpressionAttributeValues={":key": owner_status(run["owner"], run["status"])},
        )


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def state_folder() -> str:
    """The state folder: `NOTEBOOKS_LOCAL_STATE`, or `.local-state` in the repository."""
    return os.path.abspath(os.environ.get("NOTEBOOKS_LOCAL_STATE") or os.path.join(ROOT, ".local-state"))


def local_stage_environment() -> dict:
    """The environment variables of `.chalice/config.json`'s `local` stage, as
    `chalice local --stage local` sets them."""
    from chalice.config import Config

    with open(os.path.join(ROOT, ".chalice", "config.json")) as config_file:
        return Config(chalice_stage="local", config_from_disk=json.load(config_file)).environment_variables


def stage_defaults(stage_variables: dict, environ) -> dict:
    """Those of a Chalice stage's `environment_variables` that `environ` does not set: the
    stage's values are defaults, and a setting given to `make dev` (or `make api`) wins."""
    return {name: value for name, value in stage_variables.items() if name not in environ}


def running_stack(folder: str):
    """What `stack.json` says of the stack running on `folder`: {"aws": {"endpoint",
    "access_key_id", "secret_access_key", "region"}, "lambda": {"endpoint"}, "pid"}, or
    None if no stack runs there (or is still starting)."""
    if not StateFolder(folder).in_use():
        return None
    try:
        with open(os.path.join(folder, STACK_FILE)) as stack_file:
            return json.load(stack_file)
    except (FileNotFoundError, ValueError):
        return None


def client_environment(stack: dict) -> dict:
    """The environment variables that point boto3 (and the AWS CLI) at a running stack."""
    return {
        "AWS_ENDPOINT_URL": stack["aws"]["endpoint"],
        "AWS_ENDPOINT_URL_LAMBDA": stack["lambda"]["endpoint"],
        "AWS_ACCESS_KEY_ID": stack["aws"]["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": stack["aws"]["secret_access_key"],
        "AWS_REGION": stack["aws"]["region"],
        "AWS_DEFAULT_REGION": stack["aws"]["region"],
    }


def stop_on_signals(watched_pid=None) -> threading.Event:
    """An event set on SIGTERM or SIGINT, or when `watched_pid` (default: this process's
    parent) ends: a stack process never outlives what started it."""
    stopped = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stopped.set())
    parent = os.getppid()

    def watch():
        while not stopped.wait(_WATCH_SECONDS):
            if watched_pid is None and os.getppid() != parent or watched_pid and not process_alive(watched_pid):
                stopped.set()

    threading.Thread(target=watch, daemon=True).start()
    return stopped


def process_alive(pid: int) -> bool:
    """Whether a process `pid` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class _Service:
    """One process of the stack, in a session of its own (Ctrl-C reaches the stack's
    supervisor, which stops the processes in order)."""

    def __init__(self, name: str, command: list, env: dict, ours: bool):
        self.name = name
        public, secret = split_environment(env)
        self.process = subprocess.Popen(
            command,
            env=public if ours else env,
            cwd=ROOT,
            start_new_session=True,
            text=True,
            stdin=subprocess.PIPE if ours else subprocess.DEVNULL,
            stdout=subprocess.PIPE if ours else None,
        )
        self.address = None
        if ours:  # one of ours: it reads its secrets on stdin, then says where it listens
            send_secrets(self.process.stdin, secret)
            self.process.stdin.close()
            line = self.process.stdout.readline()
            if not line.startswith("ready "):
                self.process.wait(_START_SECONDS)
                raise RuntimeError(f"the {name} did not start (exit status {self.process.returncode})")
            self.address = line.split()[1]
            threading.Thread(target=self._pass_output, daemon=True).start()

    def _pass_output(self):
        for line in self.process.stdout:
            sys.stdout.write(line)

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL if it is not gone in time."""
        for number, wait in ((signal.SIGTERM, _STOP_SECONDS), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, number)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                pass


class Stack:
    """The local stack's processes (see the module's docstring)."""

    def __init__(self, folder: str, with_api: bool, port: int):
        self.folder = folder
        self._with_api = with_api
        self._port = port
        self._services = []
        self._credentials = new_credentials()
        self.settings = None

    def start(self) -> dict:
        """Start the processes; what `stack.json` now says."""
        python = [sys.executable, "-m"]
        env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
        env.update(stage_defaults(local_stage_environment(), env))
        self.settings = Settings.from_env(env)
        env.update(
            self._credentials,
            NOTEBOOKS_LOCAL_STATE=self.folder,
            AWS_REGION=self.settings.region,
            AWS_DEFAULT_REGION=self.settings.region,
        )
        embedded_aws = self._start("embedded AWS", python + ["devstack.embedded_aws"], env, True)
        self._forget_stack_file()  # the embedded AWS holds the folder now: what is there is a killed stack's
        env["AWS_ENDPOINT_URL"] = embedded_aws.address
        os.environ.update({name: value for name, value in env.items() if name.startswith("AWS_")})
        aws.reset()
        provision(self.settings, parse_user_list(self.settings.local_users))
        local_lambda = self._start("local Lambda", python + ["devstack.local_lambda"], env, True)
        stack = {
            "aws": {
                "endpoint": embedded_aws.address,
                "access_key_id": env["AWS_ACCESS_KEY_ID"],
                "secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
                "region": self.settings.region,
            },
            "lambda": {"endpoint": local_lambda.address},
            "pid": os.getpid(),
        }
        old_mask = os.umask(0o077)
        try:
            atomic_write(os.path.join(self.folder, STACK_FILE), json.dumps(stack).encode())
        finally:
            os.umask(old_mask)
        if self._with_api:
            api_env = {
                name: value for name, value in env.items() if not name.startswith("AWS_") and name != "NOTEBOOKS_USERS"
            }
            api_env["NOTEBOOKS_STACK_PID"] = str(os.getpid())
            self._start(
                "API",
                [
                    sys.executable,
                    "-m",
                    "devstack.chalice_local",
                    "local",
                    "--stage",
                    "local",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self._port),
                ],
                api_env,
                False,
            )
        return stack

    def _start(self, name, command, env, ours) -> _Service:
        service = _Service(name, command, env, ours)
        self._services.append(service)
        return service

    def stop(self) -> None:
        """Stop the processes, the last started first; then forget `stack.json`."""
        holds_folder = bool(self._services) and self._services[0].address is not None
        while self._services:
            self._services.pop().stop()
        if holds_folder:
            self._forget_stack_file()

    def _forget_stack_file(self) -> None:
        try:
            os.remove(os.path.join(self.folder, STACK_FILE))
        except FileNotFoundError:
            pass


def main(argv=None) -> int:
    """`make dev` / `make aws` / the `env` command (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m devstack.stack", description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", choices=["start", "env"], default="start")
    parser.add_argument("--no-api", action="store_true", help="start the embedded AWS and the local Lambda only")
    parser.add_argument("--parent", type=int, help="stop when this process ends")
    parser.add_argument("--reset", action="store_true", help="start with an empty state folder")
    args = parser.parse_args(argv)
    folder = state_folder()
    if args.command == "env":
        stack = running_stack(folder)
        if stack is None:
            print(f"No local stack runs on {folder}.", file=sys.stderr)
            return 1
        print("\n".join(f"export {name}={shlex.quote(value)}" for name, value in client_environment(stack).items()))
        return 0
    if args.reset:
        if StateFolder(folder).in_use():
            print(f"A local stack runs on {folder}: stop it first.", file=sys.stderr)
            return 1
        shutil.rmtree(folder, ignore_errors=True)
    sandbox.forbid_inspection()  # the stack's key and the seeded users' passwords are in this process
    stopped = stop_on_signals(args.parent)
    port = int(os.environ.get("PORT") or 8000)
    stack = Stack(folder, with_api=not args.no_api, port=port)
    try:
        started = stack.start()
        users = parse_user_list(stack.settings.local_users)
        print(f"State folder: {folder}", flush=True)
        print(
            f"Embedded AWS on {started['aws']['endpoint']}, local Lambda on {started['lambda']['endpoint']}"
            " (`python -m devstack.stack env` prints their settings)",
            flush=True,
        )
        print(
            "Local-only credentials: "
            + ", ".join(f"{name}:{password}" for name, password in users)
            + " (seeded where missing)",
            flush=True,
        )
        if not args.no_api:
            print(f"Notebooks API on http://127.0.0.1:{port} (Ctrl-C stops everything)", flush=True)
        stopped.wait()
    except RuntimeError as error:
        print(f"The local stack did not start: {error}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
