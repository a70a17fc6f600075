"""Helpers for tests of the real local stack, driven as a developer drives it.

Tests run as root in CI, and root reads every process's /proc entries, non-dumpable or
not: that is its capability CAP_SYS_PTRACE. So when the tests run as root, the stack runs
without any capability (`setpriv --bounding-set=-all`): what a notebook can do to it is
then what the OS enforces for an ordinary user. (Not as `nobody`: the virtualenv's Python
may live where only root can reach it, e.g. under /root with pyenv.)
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import boto3
import requests

from chalicelib.runner import sandbox

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "/_notebooks/notebooks"
ADMIN = ("admin", "admin")


def as_unprivileged_user() -> list:
    """The command prefix that runs a command without root's capabilities when we are
    root, else nothing."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs"]


def state_folder() -> str:
    """A fresh state folder."""
    return tempfile.mkdtemp(prefix="notebooks-state-", dir="/tmp")


def stack_env(state: str, **extra) -> dict:
    """The environment of a stack process: no AWS settings of ours, this state folder."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "NOTEBOOKS_"))}
    env.update(
        NOTEBOOKS_LOCAL_STATE=state,
        HOME=state,
        NOTEBOOKS_USERS="admin:admin,eve:eve-pw",
        NOTEBOOKS_LOCAL_WORKERS="1",
        **extra,
    )
    return env


def descendants(pid: int) -> set:
    """Every live process below `pid` (zombies excepted)."""
    return alive(sandbox._descendants(sandbox._processes(), pid))


def alive(pids) -> set:
    """Those of `pids` that still run (zombies count as gone)."""
    running = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                    running.add(pid)
        except OSError:
            pass
    return running


class Process:
    """A process and everything it prints (read as it comes, so the pipe never fills)."""

    def __init__(self, command: list, env: dict, cwd: str = ROOT):
        self.process = subprocess.Popen(
            as_unprivileged_user() + command,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_url(self, url: str, seconds: float = 120) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                requests.get(url + "/_notebooks/openapi.json", timeout=2)
                return
            except requests.ConnectionError:
                assert self.process.poll() is None, self.output()
                time.sleep(0.2)
        raise AssertionError(f"nothing answered on {url}:\n{self.output()}")

    def interrupt(self, seconds: float = 60) -> int:
        """Ctrl-C, as a terminal sends it; the exit status."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=seconds)

    def kill_all(self) -> None:
        """kill -9 of the process and everything below it, at once."""
        for pid in descendants(self.process.pid) | {self.process.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)


class RunningStack(Process):
    """`python -m devstack.stack` (what `make dev` runs) on a free port."""

    def __init__(self, state: str, port: int, *args, **env):
        super().__init__([sys.executable, "-m", "devstack.stack", *args], stack_env(state, PORT=str(port), **env))
        self.state = state
        self.url = f"http://127.0.0.1:{port}"

    def started(self) -> "RunningStack":
        if "--no-api" in self.process.args:
            deadline = time.time() + 120
            while not os.path.exists(os.path.join(self.state, "stack.json")):
                assert time.time() < deadline and self.process.poll() is None, self.output()
                time.sleep(0.2)
        else:
            self.wait_for_url(self.url)
        return self

    def connection(self) -> dict:
        """What the stack wrote to its state folder's stack.json."""
        with open(os.path.join(self.state, "stack.json")) as stack_file:
            return json.load(stack_file)

    def embedded_aws(self, service: str):
        """A client of the stack's embedded AWS, with the stack's own key."""
        stack = self.connection()
        return boto3.client(
            service,
            endpoint_url=stack["aws"]["endpoint"],
            region_name="us-east-1",
            aws_access_key_id=stack["aws"]["access_key_id"],
            aws_secret_access_key=stack["aws"]["secret_access_key"],
        )

    def local_lambda(self):
        """A Lambda client of the stack's local Lambda, with the stack's own key."""
        stack = self.connection()
        return boto3.client(
            "lambda",
            endpoint_url=stack["lambda"]["endpoint"],
            region_name="us-east-1",
            aws_access_key_id=stack["aws"]["access_key_id"],
            aws_secret_access_key=stack["aws"]["secret_access_key"],
        )


def remove_state(state: str) -> None:
    shutil.rmtree(state, ignore_errors=True)


def wait_for_run(url, run_id, auth=ADMIN, seconds=60):
    """The run's record once it has ended (polling, as a client would)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        record = requests.get(f"{url}/_notebooks/runs/{run_id}", auth=auth).json()
        if record["status"] in ("succeeded", "failed"):
            return record
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not end: {record}")


def code_notebook(*sources) -> dict:
    """An nbformat v4 notebook with these code cells."""
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [
            {
                "cell_type": "code",
                "id": f"c{i}",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": source,
            }
            for i, source in enumerate(sources)
        ],
    }
