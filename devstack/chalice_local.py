"""`python -m devstack.chalice_local local --stage local [--port N]`: `chalice local`, the
API on Chalice's own local server with its autoreloader, against the local stack's
embedded AWS and local Lambda.

This command attaches the local stack to Chalice before running Chalice's own command
line, so app.py (which ships) never imports the dev stack. When Chalice creates its local
server (in its worker process, again after every reload), the server:
- makes its process non-dumpable: it holds the stack's access key;
- uses the stack running on the state folder (`make dev` or `make aws`), or starts one
  (`python -m devstack.stack --no-api`) that stops when `chalice local` stops; the
  state lives in that stack's embedded AWS, so a reload loses nothing;
- answers with the local server's fixes for clients written against the seed
  (devstack/local_http.py);
- has its file watcher skip the state folder and every generated folder (dot-folders such
  as `.venv`, `.git` and the tools' caches, `__pycache__`, `build`, `dist`, `*.egg-info`):
  their changes are not code changes (the snapshots written into the state folder would
  reload the app every second, and `make package` rewrites `build/`); a file that vanishes
  while the watcher looks is skipped, never an error.

Settings in the environment win over `.chalice/config.json`: Chalice applies the stage's
`environment_variables` over the process environment, and this command has it apply only
those the environment does not set (devstack.stack.stage_defaults).
"""

import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from chalice.cli.filewatch.stat import StatFileWatcher, StatWorkerProcess

_CONNECTION_BACKLOG = 128
_START_SECONDS = 120
# Folders tools generate (besides dot-folders): their changes are not code changes.
_GENERATED_FOLDERS = ("__pycache__", "build", "dist")
_GENERATED_SUFFIXES = (".egg-info",)


def attach() -> None:
    """Have `chalice local` serve through the local stack (see the module's docstring)."""
    from chalice import local

    create = local.create_local_server
    if getattr(create, "local_stack", False):
        return  # attached already (app.py imported again)

    def create_local_server(app_object, config, host, port):
        connect()
        server = create(app_object, config, host, port)
        _install_request_handler(server, app_object, config)
        return server

    create_local_server.local_stack = True
    local.create_local_server = create_local_server
    _watch_code_only()
    _environment_wins()


def connect() -> None:
    """Point this process's AWS clients at the stack running on the state folder,
    starting one first if none runs."""
    from chalicelib import services
    from chalicelib.common import aws
    from chalicelib.runner import sandbox
    from devstack.stack import client_environment, running_stack, state_folder
    from devstack.state import StateFolder

    sandbox.forbid_inspection()
    logging.getLogger("botocore").setLevel(logging.WARNING)  # chalice local logs INFO
    folder = state_folder()
    stack = running_stack(folder)
    if stack is None and not StateFolder(folder).in_use():
        # Started on its own, the stack stops with `chalice local` (the reloader's process).
        owner = os.getppid() if os.environ.get("CHALICE_WORKER") else os.getpid()
        subprocess.Popen(
            [sys.executable, "-m", "devstack.stack", "--no-api", "--parent", str(owner)], start_new_session=True
        )
    deadline = time.monotonic() + _START_SECONDS
    while stack is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no local stack started on {folder}")
        time.sleep(0.2)
        stack = running_stack(folder)
    os.environ.update(client_environment(stack))
    aws.reset()
    services.reset()
    if os.environ.get("NOTEBOOKS_STACK_PID"):
        _stop_with(int(os.environ["NOTEBOOKS_STACK_PID"]))


def _stop_with(pid: int) -> None:
    """End this server (and the reloader above it) if the stack process `pid` that
    started it is gone, e.g. killed."""
    from devstack.stack import process_alive

    def watch():
        while process_alive(pid):
            time.sleep(0.5)
        if os.environ.get("CHALICE_WORKER"):
            os.kill(os.getppid(), signal.SIGTERM)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _install_request_handler(server, app_object, config) -> None:
    from chalicelib import services
    from devstack.local_http import request_handler

    server.server.RequestHandlerClass = functools.partial(
        request_handler(services.get().settings.max_body_bytes), app_object=app_object, config=config
    )
    # http.server queues 5 connections; a burst of clients would be reset. Listening again
    # on the bound socket raises the backlog.
    server.server.socket.listen(_CONNECTION_BACKLOG)


def _is_generated(name: str) -> bool:
    """Whether a folder of this name holds what tools generate, or state, not code."""
    return name.startswith(".") or name in _GENERATED_FOLDERS or name.endswith(_GENERATED_SUFFIXES)


def code_files(root: str, state: str) -> dict:
    """{path: modification time} of the files under `root` whose changes are code changes.

    The state folder and generated folders are not walked into; a file that vanishes
    between its folder's listing and its stat is left out."""
    files = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if not _is_generated(name) and os.path.join(folder, name) != state]
        for name in names:
            path = os.path.join(folder, name)
            try:
                files[path] = os.stat(path).st_mtime
            except OSError:
                continue
    return files


class CodeWatcher(StatFileWatcher):
    """Chalice's polling watcher over `code_files`: any file added, changed or removed
    there reloads the app; nothing elsewhere does."""

    def __init__(self, state: str):
        super().__init__()
        self._state = state

    def _seed_mtime_cache(self, root_dir):
        self._mtime_cache = code_files(os.path.abspath(root_dir), self._state)

    def _single_pass_poll(self, root_dir, callback):
        files = code_files(os.path.abspath(root_dir), self._state)
        if files != self._mtime_cache:
            self._mtime_cache = files
            callback()


class _CodeWorkerProcess(StatWorkerProcess):
    def _start_file_watcher(self, project_dir):
        from devstack.stack import state_folder

        CodeWatcher(state_folder()).watch_for_file_changes(project_dir, self._on_file_change)


def _watch_code_only() -> None:
    """Have Chalice's reloader watch with CodeWatcher (also where watchdog is installed,
    whose watcher sees every change under the project)."""
    from chalice.cli import reloader

    reloader.get_best_worker_process = lambda: _CodeWorkerProcess


def _environment_wins() -> None:
    """Have Chalice apply only the stage's environment variables that the process
    environment does not set."""
    from chalice.cli.factory import CLIFactory

    from devstack.stack import stage_defaults

    load = CLIFactory.load_chalice_app
    if getattr(load, "environment_wins", False):
        return

    def load_chalice_app(self, environment_variables=None, validate_feature_flags=True):
        if environment_variables is not None:
            environment_variables = stage_defaults(environment_variables, self._environ)
        return load(self, environment_variables, validate_feature_flags)

    load_chalice_app.environment_wins = True
    CLIFactory.load_chalice_app = load_chalice_app


def main() -> int:
    """Chalice's own command line (`local --stage local ...`), with the local stack attached."""
    from chalice.cli import cli

    args = sys.argv[1:]
    # Chalice's reloader starts its worker process with sys.argv: have it run this module too.
    sys.argv = [sys.executable, "-m", "devstack.chalice_local", *args]
    attach()
    return cli.main(args=args, prog_name="chalice", obj={})


if __name__ == "__main__":
    sys.exit(main())
