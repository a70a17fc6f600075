"""The client (client/: the `notebooks` command and the notebooks_client package) against
the real local stack, the command run as a user runs it: a subprocess, settings in the
environment. One stack serves the whole module; notebooks are tiny and run on a real kernel.
"""

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests
from notebooks_client import ApiError, Client
from notebooks_client.cli import parameters_of

from devstack.stack import free_port
from tests.local_stack import ADMIN, RunningStack, code_notebook, remove_state, state_folder

# Outputs over this many bytes are answered with a 303 to a download link.
RESPONSE_LIMIT = 500_000
PARAMETERS_CELL = "count: int = 1\nlabel = 'a'"
PRINTS_PARAMETERS = "print(type(count).__name__, count, repr(label))"


@pytest.fixture(scope="module")
def served():
    """The local stack, as `make dev` runs it, on a free port."""
    state = state_folder()
    stack = RunningStack(state, free_port(), NOTEBOOKS_MAX_RESPONSE_BYTES=str(RESPONSE_LIMIT))
    try:
        yield stack.started()
    finally:
        stack.kill_all()
        remove_state(state)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder of notebook files, one per name."""
    folder = tmp_path_factory.mktemp("notebooks")

    def write(name, *sources, parameters=None):
        notebook = code_notebook(*([parameters] if parameters else []), *sources)
        if parameters:
            notebook["cells"][0]["metadata"]["tags"] = ["parameters"]
        path = folder / name
        path.write_text(json.dumps(notebook))
        return str(path)

    return write


def notebooks(served, *args, user="admin", password="admin", url=None) -> subprocess.CompletedProcess:
    """`notebooks ARGS...` with its settings in the environment, as a user runs it."""
    env = {**os.environ, "NOTEBOOKS_URL": url or served.url, "NOTEBOOKS_USER": user, "NOTEBOOKS_PASSWORD": password}
    return subprocess.run(
        [sys.executable, "-m", "notebooks_client", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def succeeds(served, *args) -> str:
    """The stdout of a command that must exit 0."""
    done = notebooks(served, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def one_line_error(done: subprocess.CompletedProcess, *expected) -> None:
    """A user error: non-zero exit, nothing on stdout, one line on stderr naming the cause."""
    assert done.returncode != 0 and done.stdout == "", (done.stdout, done.stderr)
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("notebooks") and all(text in done.stderr for text in expected), done.stderr


def created(served, path, *options) -> str:
    notebook_id = succeeds(served, "create", path, *options).strip()
    assert str(uuid.UUID(notebook_id)) == notebook_id
    return notebook_id


def admin(served) -> Client:
    return Client(served.url, "admin", "admin")


def test_the_package_imports_neither_boto3_nor_papermill():
    code = (
        "import sys, notebooks_client, notebooks_client.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore', 'papermill', 'requests'}))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "[]\n"


def test_a_parameter_value_is_json_where_it_parses_else_a_string():
    pairs = [
        ("n", "7"),
        ("x", "1.5"),
        ("s", "hello"),
        ("quoted", '"7"'),
        ("items", "[1, 2]"),
        ("flag", "true"),
        ("none", "null"),
        ("nan", "NaN"),
        ("deep", "[" * 5000),
        ("n", "8"),
    ]
    assert parameters_of(pairs) == {
        "n": 8,
        "x": 1.5,
        "s": "hello",
        "quoted": "7",
        "items": [1, 2],
        "flag": True,
        "none": None,
        "nan": "NaN",
        "deep": "[" * 5000,
    }


@pytest.mark.stack
def test_create_run_with_typed_parameters_logs_output_and_rerun(served, files, tmp_path):
    path = files("typed.ipynb", PRINTS_PARAMETERS, parameters=PARAMETERS_CELL)
    notebook_id = created(served, path, "--name", "typed parameters")
    [listed] = [nb for nb in json.loads(succeeds(served, "ls", "--json")) if nb["notebook_id"] == notebook_id]
    assert listed["notebook_name"] == "typed parameters.ipynb" and listed["last_run"] == "-"
    assert json.loads(succeeds(served, "params", notebook_id, "--json")) == [
        {"name": "count", "type": "int", "default": "1", "help": ""},
        {"name": "label", "type": "None", "default": "'a'", "help": ""},
    ]

    done = notebooks(served, "run", notebook_id, "-p", "count", "7", "-p", "label", "hello", "--wait")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert done.stdout == run_id + "\n" and "int 7 'hello'" in done.stderr  # the log, followed on stderr
    run = json.loads(succeeds(served, "status", run_id))
    assert run["status"] == "succeeded" and run["parameters"] == {"count": 7, "label": "hello"}
    assert run["module"] == "notebooks"
    assert succeeds(served, "logs", run_id) == "int 7 'hello'\n"
    executed = json.loads(succeeds(served, "output", run_id))
    assert "".join(executed["cells"][-1]["outputs"][0]["text"]) == "int 7 'hello'\n"
    page = tmp_path / "out.html"
    assert succeeds(served, "output", run_id, "--html", "-o", str(page)) == ""
    assert "<html" in page.read_text().lower() and "int 7" in page.read_text()
    table = succeeds(served, "ls").splitlines()
    assert table[0].split() == ["ID", "NAME", "STATUS", "LAST", "RUN", "(UTC)"]
    assert any(line.startswith(notebook_id) and "typed parameters.ipynb" in line for line in table)

    again = succeeds(served, "rerun", run_id, "-p", "count", "9").strip()
    follow = notebooks(served, "logs", again, "--follow")
    assert follow.returncode == 0 and follow.stdout == "int 9 'hello'\n", follow
    mine = json.loads(succeeds(served, "runs", "--notebook", notebook_id, "--json"))
    assert [r["run_id"] for r in mine] == [again, run_id] and mine[0]["trigger"] == "rerun"
    assert [
        r["run_id"]
        for r in json.loads(succeeds(served, "runs", "--notebook", notebook_id, "--status", "succeeded", "--json"))
    ] == [again, run_id]


@pytest.mark.stack
def test_wait_exits_1_for_a_failing_notebook(served, files):
    notebook_id = created(served, files("fails.ipynb", "print('before')", "1/0"))
    done = notebooks(served, "run", notebook_id, "--wait")
    assert done.returncode == 1 and len(done.stdout.splitlines()) == 1, done
    assert done.stderr.startswith("before\n") and "ZeroDivisionError" in done.stderr
    run_id = done.stdout.strip()
    assert done.stderr.splitlines()[-1] == (
        f"notebooks: run {run_id} failed: ZeroDivisionError: division by zero (cell 1)"
    )


@pytest.mark.stack
def test_cancel_a_running_run(served, files):
    notebook_id = created(served, files("sleeps.ipynb", "print('started', flush=True)", "import time; time.sleep(60)"))
    run_id = succeeds(served, "run", notebook_id).strip()
    deadline = time.time() + 30
    while admin(served).get_run(run_id)["current_cell"] != 1:
        assert time.time() < deadline, "the run never reached its sleeping cell"
        time.sleep(0.2)
    assert succeeds(served, "cancel", run_id) == "cancelled\n"
    follow = notebooks(served, "logs", run_id, "--follow")
    assert follow.returncode == 1 and follow.stdout.startswith("started\n")
    assert follow.stderr == f"notebooks: run {run_id} cancelled\n"
    one_line_error(notebooks(served, "cancel", run_id), "Run already finished", "409")


@pytest.mark.stack
def test_rm_and_schedule_and_unschedule(served, files):
    first, second = (created(served, files(f"kept-{n}.ipynb", "1")) for n in (1, 2))
    until = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%d %H:%M")
    assert (
        succeeds(
            served,
            "schedule",
            first,
            "--until",
            until,
            "--time",
            "06:50",
            "--period",
            "monday",
            "--timezone",
            "Europe/Paris",
        )
        == ""
    )
    schedule = admin(served).get_notebook(first)["schedule"]
    assert (schedule["period"], schedule["time"], schedule["until"], schedule["timezone"]) == (
        "monday",
        "06:50",
        until,
        "Europe/Paris",
    )
    assert succeeds(served, "unschedule", first) == ""
    assert admin(served).get_notebook(first)["status"] == "Not Scheduled"

    assert succeeds(served, "rm", first, second) == ""
    ids = {nb["notebook_id"] for nb in json.loads(succeeds(served, "ls", "--json"))}
    assert not ids & {first, second}
    one_line_error(notebooks(served, "rm", first), "No notebooks deleted")


@pytest.mark.stack
def test_user_errors_are_one_line_without_traceback(served, files, tmp_path):
    # eve, not admin: failed logins lock the name for a while
    one_line_error(notebooks(served, "ls", user="eve", password="wrong"), "Authentication required", "401")
    one_line_error(notebooks(served, "ls", url=f"http://127.0.0.1:{free_port()}"), "cannot reach", "Connection refused")
    one_line_error(notebooks(served, "ls", url="127.0.0.1:8000"), "invalid URL")
    unknown = str(uuid.uuid4())
    one_line_error(notebooks(served, "run", unknown), "Notebook ID invalid.", "400")
    one_line_error(notebooks(served, "status", unknown), "Run not found", "404")
    one_line_error(notebooks(served, "output", "not-a-run-id", "--html"), "Run not found")
    one_line_error(notebooks(served, "create", str(tmp_path / "missing.ipynb")), "cannot read", "missing.ipynb")
    (tmp_path / "deep.ipynb").write_text("[" * 100000)
    one_line_error(notebooks(served, "create", str(tmp_path / "deep.ipynb")), "nested too deep")
    one_line_error(notebooks(served, "run", unknown, "-p", "count"), "argument -p", "expected 2 arguments")
    named = created(served, files("taken.ipynb", "1"))
    one_line_error(notebooks(served, "create", files("taken.ipynb", "2")), "already exists", "409")
    one_line_error(notebooks(served, "run", named, "-p", "nope", "1"), "Unknown parameter 'nope'")
    env = {name: value for name, value in os.environ.items() if not name.startswith("NOTEBOOKS_")}
    bare = subprocess.run(
        [sys.executable, "-m", "notebooks_client", "ls"],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    one_line_error(bare, "NOTEBOOKS_URL")


@pytest.mark.stack
def test_python_client_pages_follows_output_links_and_raises_api_errors(served, files):
    client = Client(served.url, "admin", "admin", page_size=2)
    ids = [client.create(code_notebook(f"print({n})"))["notebook_id"] for n in range(3)]
    everything = client.list_notebooks()
    assert len(everything) >= 3 and set(ids) <= {nb["notebook_id"] for nb in everything}
    assert everything == admin(served).list_notebooks()  # pages of 2, or one page: the same list

    big = client.create(code_notebook(f"print('x' * {RESPONSE_LIMIT})"))["notebook_id"]
    run = client.run(big, wait=True, poll_seconds=0.2)
    assert run["status"] == "succeeded"
    output_url = f"{served.url}/_notebooks/runs/{run['run_id']}/output"
    assert requests.get(output_url, auth=ADMIN, allow_redirects=False).status_code == 303
    executed = client.output(run["run_id"])
    assert "".join(executed["cells"][0]["outputs"][0]["text"]) == "x" * RESPONSE_LIMIT + "\n"

    with pytest.raises(ApiError) as raised:
        client.get_run(str(uuid.uuid4()))
    assert (raised.value.status, raised.value.message) == (404, "Run not found")
    client.delete(ids + [big])


@pytest.fixture
def stand_in():
    """A stand-in API on a free port: `answer(path)` gives each GET's (status, headers, body);
    `seen` records each GET's path and Authorization header."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            status, headers, body = server.answer(self.path)
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.seen, server.url = seen, f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


JSON = {"Content-Type": "application/json"}


def test_a_redirect_is_followed_without_credentials_and_paging_goes_on_after_it(stand_in):
    def answer(path):
        if path.startswith("/_notebooks/notebooks/_all") and "next_token" not in path:
            return 303, {"Location": "/download?signature=s", "X-Next-Token": "page-2"}, b""
        return 200, JSON, b'[{"notebook_id": "a"}]' if path.startswith("/download") else b'[{"notebook_id": "b"}]'

    stand_in.answer = answer
    assert Client(stand_in.url, "admin", "pw").list_notebooks() == [{"notebook_id": "a"}, {"notebook_id": "b"}]
    [(first, first_auth), (download, download_auth), (second, second_auth)] = stand_in.seen
    assert first_auth == second_auth == "Basic YWRtaW46cHc=" and download_auth is None
    assert download == "/download?signature=s" and "next_token=page-2" in second


@pytest.mark.parametrize("location", ["file:///etc/hostname", "data:text/plain,hello"])
def test_a_download_link_that_is_not_http_is_refused(stand_in, location):
    stand_in.answer = lambda path: (303, {"Location": location}, b"")
    with pytest.raises(ApiError) as raised:
        Client(stand_in.url, "admin", "pw").output(str(uuid.uuid4()))
    assert raised.value.status is None and "not http(s)" in raised.value.message


def test_an_unknown_charset_is_read_as_utf8(stand_in):
    stand_in.answer = lambda path: (200, {"Content-Type": "application/json; charset=no-such"}, b'{"status": "ok"}')
    assert Client(stand_in.url, "admin", "pw").get_run(str(uuid.uuid4())) == {"status": "ok"}


def test_runs_fall_back_to_the_notebooks_runs_on_a_server_without_the_list_of_all_runs(stand_in):
    def answer(path):
        if path.startswith("/_notebooks/notebooks/n/runs?"):
            return 200, JSON, b'[{"run_id": "2", "status": "failed"}, {"run_id": "1", "status": "succeeded"}]'
        return 404, JSON, b'{"error": {"status": 404, "message": "Not found"}}'

    stand_in.answer = answer
    client = Client(stand_in.url, "admin", "pw")
    assert client.list_runs("n", "failed") == [{"run_id": "2", "status": "failed"}]
    assert [run["run_id"] for run in client.list_runs("n")] == ["2", "1"]
    with pytest.raises(ApiError, match="lists runs by notebook only"):
        client.list_runs(status="failed")
    assert stand_in.seen[0][0].startswith("/_notebooks/runs?") and "notebook_id=n" in stand_in.seen[0][0]


def test_wait_outlasts_a_few_failed_polls_but_not_a_client_error(stand_in):
    answers = iter(
        [
            (503, JSON, b'{"error": {"status": 503, "message": "Service unavailable"}}'),
            (502, {}, b"<html>Bad gateway</html>"),
            (200, JSON, b'{"run_id": "r", "status": "succeeded"}'),
            (404, JSON, b'{"error": {"status": 404, "message": "Run not found"}}'),
        ]
    )
    stand_in.answer = lambda path: next(answers)
    client = Client(stand_in.url, "admin", "pw")
    assert client.wait("r", poll_seconds=0.01) == {"run_id": "r", "status": "succeeded"}
    with pytest.raises(ApiError) as raised:
        client.wait("r", poll_seconds=0.01)
    assert (raised.value.status, raised.value.message) == (404, "Run not found")


@pytest.mark.stack
def test_schedule_with_parameters(served, files):
    notebook_id = created(served, files("scheduled.ipynb", PRINTS_PARAMETERS, parameters=PARAMETERS_CELL))
    until = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%d %H:%M")
    assert succeeds(served, "schedule", notebook_id, "--until", until, "-p", "count", "3", "-p", "label", "x") == ""
    assert admin(served).get_notebook(notebook_id)["schedule"]["parameters"] == {"count": 3, "label": "x"}
    one_line_error(notebooks(served, "schedule", notebook_id, "--until", until, "-p", "nope", "1"), "nope")


def eventually_listed(served, expected: set, *options) -> list:
    """The run ids `notebooks runs --json OPTIONS` lists once all of `expected` are in it
    (the list is an index of the runs table: it shows a run's end a moment later)."""
    deadline = time.time() + 10
    while True:
        listed = [run["run_id"] for run in json.loads(succeeds(served, "runs", "--json", *options))]
        if expected <= set(listed) or time.time() > deadline:
            assert expected <= set(listed), (expected, listed)
            return listed
        time.sleep(0.2)


@pytest.mark.stack
def test_runs_across_notebooks(served, files):
    ok, bad = (created(served, files(name, source)) for name, source in (("ok.ipynb", "1"), ("bad.ipynb", "1/0")))
    ok_run = admin(served).run(ok, wait=True, poll_seconds=0.2)["run_id"]
    bad_run = admin(served).run(bad, wait=True, poll_seconds=0.2)["run_id"]
    listed = eventually_listed(served, {ok_run, bad_run})
    assert listed.index(bad_run) < listed.index(ok_run)  # newest first
    failed = json.loads(succeeds(served, "runs", "--status", "failed", "--json"))
    assert {run["status"] for run in failed} == {"failed"}
    assert eventually_listed(served, {bad_run}, "--status", "failed")
    table = succeeds(served, "runs", "--notebook", ok).splitlines()
    assert table[0].startswith("RUN ID") and table[1].startswith(ok_run)
