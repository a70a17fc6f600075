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
- has its file watcher skip the state folder, the virtualenv and other dot-folders and
  `__pycache__`: their changes are not code changes (and the snapshots written into the
  state folder would reload the app every second).
"""

import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time

_CONNECTION_BACKLOG = 128
_START_SECONDS = 120
_SKIPPED_FOLDERS = ("__pycache__",)


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


def _is_code(path: str, state: str) -> bool:
    """Whether a change to `path` is a change to the app: not in the state folder, a
    dot-folder (the virtualenv, .git) or __pycache__."""
    path = os.path.abspath(path)
    if path == state or path.startswith(state + os.sep):
        return False
    folders = os.path.relpath(path, os.getcwd()).split(os.sep)[:-1]
    return not any(name.startswith(".") or name in _SKIPPED_FOLDERS for name in folders)


def _watch_code_only() -> None:
    """Have Chalice's file watchers ignore changes that are not code changes.

    The stat watcher may have listed the files before this runs (it starts alongside the
    app's import), so each poll first forgets the files it now ignores."""
    from chalice.cli.filewatch.stat import StatFileWatcher

    from devstack.stack import state_folder

    state = state_folder()
    walk, poll = StatFileWatcher._recursive_walk_files, StatFileWatcher._single_pass_poll

    def walk_code(self, root_dir):
        return (path for path in walk(self, root_dir) if _is_code(path, state))

    def poll_code(self, root_dir, callback):
        self._mtime_cache = {path: mtime for path, mtime in self._mtime_cache.items() if _is_code(path, state)}
        return poll(self, root_dir, callback)

    StatFileWatcher._recursive_walk_files, StatFileWatcher._single_pass_poll = walk_code, poll_code
    try:
        from chalice.cli.filewatch.eventbased import WatchdogRestarter
    except ImportError:
        return  # watchdog is not installed: Chalice uses the stat watcher
    on_event = WatchdogRestarter.on_any_event
    WatchdogRestarter.on_any_event = lambda self, event: (
        on_event(self, event) if _is_code(event.src_path, state) else None
    )


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
