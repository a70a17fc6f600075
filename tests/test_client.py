"""The client (client/: the `notebooks` command and the notebooks_client package) against
the real local stack, the command run as a user runs it: a subprocess, settings in the
environment. One stack serves the whole module; notebooks are tiny and run on a real kernel.
"""

import http.server
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests
from notebooks_client import ApiError, Client, UnexpectedAnswer
from notebooks_client.cli import when
from notebooks_client.parameters import parameters_of

from chalicelib.runs.log import capped
from devstack.stack import free_port
from tests.local_stack import ADMIN, RunningStack, code_notebook, remove_state, state_folder

# Outputs over this many bytes are answered with a 303 to a download link.
RESPONSE_LIMIT = 500_000
# A run's stored log keeps at most this many bytes (the deployment's 1 MiB, made small).
LOG_LIMIT = 20_000
PARAMETERS_CELL = "count: int = 1\nlabel = 'a'"
PRINTS_PARAMETERS = "print(type(count).__name__, count, repr(label))"


@pytest.fixture(scope="module")
def served():
    """The local stack, as `make dev` runs it, on a free port."""
    state = state_folder()
    stack = RunningStack(
        state,
        free_port(),
        NOTEBOOKS_MAX_RESPONSE_BYTES=str(RESPONSE_LIMIT),
        NOTEBOOKS_MAX_LOG_BYTES=str(LOG_LIMIT),
    )
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


def succeeds_at(stand_in, *args) -> str:
    """The stdout of a command against the stand-in that must exit 0."""
    done = notebooks(None, *args, url=stand_in.url)
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


def test_a_parameter_value_is_python_s_constant_else_json_where_it_parses_else_a_string():
    pairs = [
        ("yes", "True"),
        ("no", "False"),
        ("nothing", "None"),
        ("huge", "1e400"),
        ("object", '{"a": 1}'),
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
        "yes": True,
        "no": False,
        "nothing": None,
        "huge": "1e400",  # infinite as a float: JSON cannot carry it
        "object": {"a": 1},
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


def test_a_parameter_declared_as_str_is_sent_as_written():
    declarations = [
        {"name": "s", "type": "str", "default": "'a'", "help": ""},
        {"name": "maybe", "type": "Optional[str]", "default": "'a'", "help": ""},
        {"name": "unset", "type": "str", "default": "None", "help": ""},
        {"name": "n", "type": "int", "default": "1", "help": ""},
    ]
    pairs = [("s", "123"), ("maybe", "[1]"), ("unset", "true"), ("n", "123")]
    assert parameters_of(pairs, declarations) == {"s": "123", "maybe": "[1]", "unset": "true", "n": 123}
    # None stays None where None fits the parameter; a plain str takes the word
    none = [("s", "None"), ("maybe", "None"), ("unset", "null")]
    assert parameters_of(none, declarations) == {"s": "None", "maybe": None, "unset": None}
    # a JSON string too: its quotes are part of what was written
    assert parameters_of([("s", '"q"'), ("maybe", '"7"')], declarations) == {"s": '"q"', "maybe": '"7"'}


def test_a_parameter_declared_as_int_or_float_reads_what_python_reads_where_json_does_not():
    declarations = [
        {"name": "n", "type": "int", "default": "1", "help": ""},
        {"name": "maybe", "type": "Optional[int]", "default": "None", "help": ""},
        {"name": "pause", "type": "float", "default": "1.0", "help": ""},
    ]
    pairs = [("n", "007"), ("maybe", "+3"), ("pause", ".5"), ("other", "007")]
    assert parameters_of(pairs, declarations) == {"n": 7, "maybe": 3, "pause": 0.5, "other": "007"}
    assert parameters_of([("pause", "1e3"), ("n", "12")], declarations) == {"pause": 1000.0, "n": 12}
    # what neither JSON nor Python reads as a finite number stays text: the server says why
    refused = [("n", "seven"), ("pause", "nan"), ("maybe", "1.5e")]
    assert parameters_of(refused, declarations) == {"n": "seven", "pause": "nan", "maybe": "1.5e"}
    assert parameters_of([("n", "1.5")], declarations) == {"n": 1.5}  # JSON: as read


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
def test_wait_follows_a_log_past_its_cap_to_its_end(served, files):
    printer = 'import time\nfor i in range(16):\n    print(f"chunk {i} " + "x" * 2000, flush=True)\n    time.sleep(0.6)'
    notebook_id = created(served, files("long-log.ipynb", printer, "print('THE END')", "raise RuntimeError('boom')"))
    done = notebooks(served, "run", notebook_id, "--wait")
    assert done.returncode == 1, done
    stored = succeeds(served, "logs", done.stdout.strip())
    assert len(stored.encode("utf-8")) <= LOG_LIMIT and "[... log cut here: " in stored  # the server cut it
    followed = done.stderr.rsplit("notebooks: run ", 1)[0]  # the log, before the outcome's line
    last_part = stored.split(" ...]\n")[-1]
    assert followed.endswith(last_part) and "THE END\n" in last_part and "RuntimeError: boom" in last_part
    assert followed.startswith("chunk 0 ")
    # Each part seen before it was cut: the whole log; else the marker where it missed some.
    assert followed.count("chunk ") == 16 or "[... log cut here: " in followed, followed


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

    assert succeeds(served, "rm", first) == ""
    assert succeeds(served, "rm", first, second) == ""  # one of them deleted: done
    ids = {nb["notebook_id"] for nb in json.loads(succeeds(served, "ls", "--json"))}
    assert not ids & {first, second}
    gone = notebooks(served, "rm", first)
    one_line_error(gone, "notebooks: no notebook deleted: you have no notebook with this id")
    assert gone.returncode == 1 and "HTTP 200" not in gone.stderr
    one_line_error(notebooks(served, "rm", first, second), "you have no notebook with these ids")


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
    """A stand-in API on a free port: `answer(path)` gives each request's (status, headers,
    body), whatever its method (a Content-Length in headers is sent as given); `seen`
    records each request's path and Authorization header, `sent` its method, path and JSON
    body (None without one)."""
    seen, sent = [], []

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            seen.append((self.path, self.headers.get("Authorization")))
            sent.append((self.command, self.path, json.loads(body) if body else None))
            status, headers, body = server.answer(self.path)
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.seen, server.sent, server.url = seen, sent, f"http://127.0.0.1:{server.server_port}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


JSON = {"Content-Type": "application/json"}


def notebook_object(notebook_id: str) -> dict:
    """The fields of a notebook object that the client reads."""
    return {"notebook_id": notebook_id, "notebook_name": f"{notebook_id}.ipynb", "status": "Not Scheduled"}


def run_object(run_id: str, status: str = "succeeded", **fields) -> dict:
    """The fields of a run object that the client reads."""
    return {
        "run_id": run_id,
        "notebook_id": "n",
        "status": status,
        "trigger": "manual",
        "created_at": 0,
        "error": None,
        **fields,
    }


def as_json(value) -> bytes:
    return json.dumps(value).encode("utf-8")


def test_a_redirect_is_followed_without_credentials_and_paging_goes_on_after_it(stand_in):
    def answer(path):
        if path.startswith("/_notebooks/notebooks/_all") and "next_token" not in path:
            return 303, {"Location": "/download?signature=s", "X-Next-Token": "page-2"}, b""
        return 200, JSON, as_json([notebook_object("a" if path.startswith("/download") else "b")])

    stand_in.answer = answer
    assert Client(stand_in.url, "admin", "pw").list_notebooks() == [notebook_object("a"), notebook_object("b")]
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
    stand_in.answer = lambda path: (
        200,
        {"Content-Type": "application/json; charset=no-such"},
        as_json(run_object("r")),
    )
    assert Client(stand_in.url, "admin", "pw").get_run("r") == run_object("r")


def test_runs_fall_back_to_the_notebooks_runs_on_a_server_without_the_list_of_all_runs(stand_in):
    def answer(path):
        if path.startswith("/_notebooks/notebooks/n/runs?"):
            return 200, JSON, as_json([run_object("2", "failed"), run_object("1", "succeeded")])
        return 404, JSON, b'{"error": {"status": 404, "message": "Not found"}}'

    stand_in.answer = answer
    client = Client(stand_in.url, "admin", "pw")
    assert client.list_runs("n", "failed") == [run_object("2", "failed")]
    assert [run["run_id"] for run in client.list_runs("n")] == ["2", "1"]
    assert [run["run_id"] for run in client.list_runs("n", limit=1)] == ["2"]
    assert [run["run_id"] for run in client.list_runs("n", "succeeded", limit=1)] == ["1"]
    with pytest.raises(ApiError, match="lists runs by notebook only"):
        client.list_runs(status="failed")
    assert stand_in.seen[0][0].startswith("/_notebooks/runs?") and "notebook_id=n" in stand_in.seen[0][0]


def endless_runs(path):
    """A list of runs that never ends: each page as long as asked for, with a next page."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    page = int(query.get("next_token", ["0"])[0])
    size = int(query["limit"][0])
    runs = [run_object(f"{page}-{n}", "failed" if n % 2 else "succeeded") for n in range(size)]
    return 200, {**JSON, "X-Next-Token": str(page + 1)}, as_json(runs)


def test_runs_lists_the_newest_100_or_limit_and_reads_no_page_more(stand_in):
    stand_in.answer = endless_runs
    table = succeeds_at(stand_in, "runs").splitlines()
    assert len(table) == 1 + 100 and table[1].startswith("0-0 ")
    assert [path for path, _ in stand_in.seen] == ["/_notebooks/runs?limit=100"]
    assert [run["run_id"] for run in json.loads(succeeds_at(stand_in, "runs", "--limit", "3", "--json"))] == [
        "0-0",
        "0-1",
        "0-2",
    ]
    assert stand_in.seen[-1][0] == "/_notebooks/runs?limit=3"
    client = Client(stand_in.url, "admin", "pw", page_size=2)
    assert [run["run_id"] for run in client.list_runs(limit=3)] == ["0-0", "0-1", "1-0"]
    assert [path for path, _ in stand_in.seen[-2:]] == [
        "/_notebooks/runs?limit=2",
        "/_notebooks/runs?limit=1&next_token=1",
    ]
    with pytest.raises(ValueError, match="limit"):
        client.list_runs(limit=0)
    help_text = succeeds_at(stand_in, "runs", "--help")
    assert "--limit N" in help_text and "default: 100; 0: all" in " ".join(help_text.split())
    for wrong in ("-1", "ten"):
        done = notebooks(None, "runs", "--limit", wrong, url=stand_in.url)
        one_line_error(done, "argument --limit")
        assert done.returncode == 2


def test_runs_limit_0_reads_every_page(stand_in):
    def answer(path):
        if "next_token=last" in path:
            return 200, JSON, as_json([run_object("c")])
        return 200, {**JSON, "X-Next-Token": "last"}, as_json([run_object("a"), run_object("b")])

    stand_in.answer = answer
    listed = json.loads(succeeds_at(stand_in, "runs", "--limit", "0", "--json"))
    assert [run["run_id"] for run in listed] == ["a", "b", "c"]
    assert [path for path, _ in stand_in.seen] == [
        "/_notebooks/runs?limit=1000",
        "/_notebooks/runs?limit=1000&next_token=last",
    ]


def test_wait_outlasts_a_few_failed_polls_but_not_a_client_error(stand_in):
    answers = iter(
        [
            (503, JSON, b'{"error": {"status": 503, "message": "Service unavailable"}}'),
            (502, {}, b"<html>Bad gateway</html>"),
            (200, JSON, as_json(run_object("r"))),
            (404, JSON, b'{"error": {"status": 404, "message": "Run not found"}}'),
        ]
    )
    stand_in.answer = lambda path: next(answers)
    client = Client(stand_in.url, "admin", "pw")
    assert client.wait("r", poll_seconds=0.01) == run_object("r")
    with pytest.raises(ApiError) as raised:
        client.wait("r", poll_seconds=0.01)
    assert (raised.value.status, raised.value.message) == (404, "Run not found")


def follow(stand_in, logs: list, status: str = "failed") -> str:
    """What `Client.wait(on_log=...)` writes of a run whose polls find these stored logs
    in turn (the run running, then ended at the last)."""
    polls = iter(range(len(logs)))
    state = {}

    def answer(path):
        if path.endswith("/log"):
            return 200, {"Content-Type": "text/plain; charset=utf-8"}, logs[state["poll"]].encode("utf-8")
        state["poll"] = next(polls)
        return 200, JSON, as_json(run_object("r", status if state["poll"] == len(logs) - 1 else "running"))

    stand_in.answer = answer
    written = []
    assert Client(stand_in.url, "a", "b").wait("r", on_log=written.append, poll_seconds=0)["status"] == status
    return "".join(written)


def test_wait_writes_a_log_cut_by_the_server_whole_when_it_saw_each_part(stand_in):
    lines = [f"line {i} {'é' * (i % 7)}\n" for i in range(400)]
    full = "".join(lines) + "Traceback (most recent call last):\nRuntimeError: boom\n"
    growing = [capped("".join(lines[:n]), 1000) for n in range(0, 400, 5)] + [capped(full, 1000)]
    assert follow(stand_in, growing) == full


def test_wait_writes_the_marker_where_it_missed_part_of_a_log_and_ends_as_the_log_ends(stand_in):
    full = "".join(f"line {i}\n" for i in range(1000)) + "THE END\n"
    seen = full[: full.index("line 600\n")]  # the first poll's, already cut
    last_part = capped(full, 1000).split(" ...]\n")[1]
    missed = len(full.encode("utf-8")) - len(seen.encode("utf-8")) - len(last_part.encode("utf-8"))
    followed = follow(stand_in, [capped(seen, 1000), capped(full, 1000)])
    assert followed.startswith(capped(seen, 1000) + f"\n[... log cut here: {missed} bytes left out; ")
    assert followed.endswith(" ...]\n" + last_part) and last_part.endswith("line 999\nTHE END\n")
    assert followed.count("[... log cut here: ") == 2


def test_wait_writes_a_rewritten_log_from_its_changed_line_on(stand_in):
    # an output cleared and written again: the changed line again, whole (never "2" alone)
    assert follow(stand_in, ["step 1\n", "step 2\n", "step 2\ndone\n"], "succeeded") == "step 1\nstep 2\ndone\n"
    assert follow(stand_in, ["loss: 0.51\n", "loss: 0.47\n", "loss: 0.47\ndone\n"], "succeeded") == (
        "loss: 0.51\nloss: 0.47\ndone\n"
    )
    assert follow(stand_in, ["a\nb", "a\nc"], "succeeded") == "a\nbc"  # an unended last line, changed: whole
    assert follow(stand_in, ["é", "è"], "succeeded") == "éè"  # "é" and "è" share a first byte: whole characters


def test_wait_writes_a_log_cleared_after_its_cut_whole(stand_in):
    """Past the cap, then the output cleared: the short log is written, so the output
    still ends as the stored log ends."""
    cut = capped("x" * 3000 + "\n", 1000)
    assert follow(stand_in, [cut, "result 42\n"], "succeeded") == cut + "result 42\n"


def test_wait_takes_a_marker_the_notebook_printed_for_text(stand_in):
    printed = (
        "\n[... log cut here: 5 bytes left out; a run's log keeps at most 1000 bytes (NOTEBOOKS_MAX_LOG_BYTES) ...]\n"
    )
    lines = [printed] + [f"line {i}\n" for i in range(300)]
    growing = [capped("".join(lines[:n]), 1000) for n in range(1, 301, 5)] + [capped("".join(lines), 1000)]
    assert follow(stand_in, growing, "succeeded") == "".join(lines)


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


@pytest.mark.stack
def test_typed_parameters_follow_papermill_and_the_declared_str(served, files):
    cell = "s: str = 'a'\nflag: bool = False\nnothing: int = None\npause: float = 1.0\nn: int = 0"
    shows = "print(repr(s), flag, nothing, repr(pause), repr(n))"
    notebook_id = created(served, files("declared.ipynb", shows, parameters=cell))
    done = notebooks(
        served, "run", notebook_id, "-p", "s", "123", "-p", "flag", "True", "-p", "nothing", "None", "--wait"
    )
    assert done.returncode == 0 and "'123' True None 1.0 0" in done.stderr, done
    run_id = done.stdout.strip()
    again = succeeds(served, "rerun", run_id, "-p", "s", '"q"', "-p", "pause", ".5", "-p", "n", "+3").strip()
    follow = notebooks(served, "logs", again, "--follow")
    assert follow.returncode == 0 and follow.stdout == "'\"q\"' True None 0.5 3\n", follow
    until = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%d %H:%M")
    assert succeeds(served, "schedule", notebook_id, "--until", until, "-p", "s", "1.5", "-p", "flag", "False") == ""
    assert admin(served).get_notebook(notebook_id)["schedule"]["parameters"] == {"s": "1.5", "flag": False}
    one_line_error(notebooks(served, "run", notebook_id, "-p", "flag", "1"), "Parameter 'flag' must be of type bool")
    # the declarations cannot be read (no such notebook, no such run): the server answers
    unknown = str(uuid.uuid4())
    one_line_error(notebooks(served, "run", unknown, "-p", "s", "1"), "Notebook ID invalid.", "400")
    one_line_error(notebooks(served, "rerun", unknown, "-p", "s", "1"), "Run not found", "404")


NOT_THE_API = [
    pytest.param((200, {"Content-Type": "text/html"}, b"<html>hi</html>"), id="html"),
    pytest.param((200, JSON, b"{}"), id="empty-object"),
    pytest.param((200, JSON, b'"Success"'), id="a-json-string"),
]


@pytest.mark.parametrize("answer", NOT_THE_API)
def test_a_server_that_is_not_the_api_is_one_line_naming_the_url(stand_in, files, answer):
    stand_in.answer = lambda path: answer
    until = "2030-01-01 00:00"
    commands = [
        ["ls"],
        ["create", files("any.ipynb", "1")],
        ["params", "x"],
        ["run", "x"],
        ["run", "x", "-p", "n", "1", "--wait"],
        ["status", "abc"],
        ["logs", "abc"],
        ["logs", "abc", "--follow"],
        ["cancel", "abc"],
        ["rerun", "abc"],
        ["rerun", "abc", "-p", "n", "1"],
        ["output", "abc"],
        ["runs"],
        ["runs", "--notebook", "x"],
        ["schedule", "x", "--until", until, "-p", "n", "1"],
    ]
    if answer[2] != b'"Success"':  # the answer of these three
        commands += [["rm", "x"], ["schedule", "x", "--until", until], ["unschedule", "x"]]
    for command in commands:
        done = notebooks(None, *command, url=stand_in.url)
        one_line_error(done, f"notebooks: unexpected answer from {stand_in.url}: not the notebooks API? (")
        assert done.returncode == 1, (command, done.stderr)

    client = Client(stand_in.url, "admin", "pw")
    for call in (client.list_notebooks, client.list_runs, lambda: client.get_run("r"), lambda: client.run("n")):
        with pytest.raises(UnexpectedAnswer) as raised:
            call()
        assert isinstance(raised.value, ApiError) and raised.value.status == 200


def test_a_list_that_links_back_to_a_page_it_gave_is_an_unexpected_answer(stand_in):
    def answer(path):
        token = "b" if "next_token=a" in path else "a"
        return 200, {**JSON, "X-Next-Token": token}, as_json([notebook_object(token)])

    stand_in.answer = answer
    with pytest.raises(UnexpectedAnswer, match="links back to a page"):
        Client(stand_in.url, "admin", "pw").list_notebooks()
    assert len(stand_in.seen) == 3


@pytest.mark.parametrize(
    "command",
    [
        ["status", ""],
        ["cancel", ""],
        ["rerun", ""],
        ["output", ""],
        ["logs", ""],
        ["rm", "x", ""],
        ["params", ""],
        ["run", ""],
        ["schedule", "", "--until", "2030-01-01 00:00"],
        ["unschedule", ""],
        ["runs", "--notebook", ""],
    ],
)
def test_an_empty_id_is_a_usage_error(stand_in, command):
    done = notebooks(None, *command, url=stand_in.url)
    one_line_error(done, "an id cannot be empty")
    assert done.returncode == 2 and stand_in.seen == []


def test_an_id_is_one_path_segment_whatever_it_holds(stand_in):
    stand_in.answer = lambda path: (200, JSON, as_json(run_object("r")))
    for run_id in ("../notebooks/_all", "..", "a?b#c", "50%"):
        succeeds_against = notebooks(None, "status", run_id, url=stand_in.url)
        assert succeeds_against.returncode == 0, succeeds_against.stderr
    assert [path for path, _ in stand_in.seen] == [
        "/_notebooks/runs/%2E%2E%2Fnotebooks%2F_all",
        "/_notebooks/runs/%2E%2E",
        "/_notebooks/runs/a%3Fb%23c",
        "/_notebooks/runs/50%25",
    ]
    client = Client(stand_in.url, "admin", "pw")
    for call in (
        client.get_run,
        client.cancel,
        client.output,
        client.parameters,
        client.get_notebook,
        client.list_runs,
    ):
        with pytest.raises(ValueError, match="an id cannot be empty"):
            call("")
    assert len(stand_in.seen) == 4


@pytest.mark.parametrize(
    "command, expected",
    [
        (["create", "FILE", "--name", ""], "a name cannot be empty"),
        (["runs", "--status", ""], "a status cannot be empty"),
    ],
)
def test_an_empty_option_is_a_usage_error(stand_in, files, command, expected):
    command = [files("named.ipynb", "1") if word == "FILE" else word for word in command]
    done = notebooks(None, *command, url=stand_in.url)
    one_line_error(done, expected)
    assert done.returncode == 2 and stand_in.seen == []


@pytest.mark.stack
def test_an_id_reaches_no_other_route_of_the_stack(served):
    for run_id in ("../notebooks/_all", "..", "_all?x=1"):
        one_line_error(notebooks(served, "status", run_id), "Run not found", "404")
    one_line_error(notebooks(served, "cancel", "../notebooks/_run"), "Run not found", "404")


def test_an_option_given_empty_wins_over_the_environment(stand_in):
    stand_in.answer = lambda path: (200, JSON, b"[]")
    done = notebooks(None, "ls", "--password", "", url=stand_in.url, password="secret")
    assert done.returncode == 0, done.stderr
    assert stand_in.seen[-1][1] == "Basic YWRtaW46"  # admin:
    one_line_error(notebooks(None, "--user", "", "ls", url=stand_in.url), "no username")
    one_line_error(notebooks(None, "ls", "--url", "", url=stand_in.url), "invalid URL ''")
    assert len(stand_in.seen) == 1


def test_stdout_closed_by_its_reader_ends_quietly(stand_in):
    stand_in.answer = lambda path: (200, JSON, as_json([notebook_object("a")]))
    read_end, write_end = os.pipe()
    os.close(read_end)  # as `notebooks ls | head -0`: the reader has left
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}  # buffered, as usual
    env.update(NOTEBOOKS_URL=stand_in.url, NOTEBOOKS_USER="a", NOTEBOOKS_PASSWORD="b")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "notebooks_client", "ls"],
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1 and done.stderr == ""


def test_a_timeout_that_is_not_a_finite_number_is_a_usage_error(stand_in):
    for value in ("nan", "inf", "soon"):
        done = notebooks(None, "run", "x", "--timeout", value, url=stand_in.url)
        one_line_error(done, "argument --timeout")
        assert done.returncode == 2
    assert stand_in.seen == []


def test_a_time_beyond_what_a_datetime_holds_is_shown_as_given():
    assert when(10**20) == str(10**20) and when(0) == "1970-01-01 00:00:00" and when(None) == "-"


@pytest.mark.parametrize("status", [200, 500])
def test_an_answer_cut_short_is_an_error_without_an_answer(stand_in, status):
    stand_in.answer = lambda path: (status, {**JSON, "Content-Length": "100"}, b"[")
    with pytest.raises(ApiError) as raised:
        Client(stand_in.url, "admin", "pw").list_notebooks()
    assert raised.value.status is None and raised.value.message.startswith(f"cannot reach {stand_in.url}: ")
    one_line_error(notebooks(None, "ls", url=stand_in.url), "cannot reach")


def test_json_nested_deeper_than_python_reads_is_an_unexpected_answer(stand_in):
    stand_in.answer = lambda path: (200, JSON, b"[" * 100_000)
    with pytest.raises(UnexpectedAnswer, match="not an array of notebook objects"):
        Client(stand_in.url, "admin", "pw").list_notebooks()


def test_a_url_with_credentials_or_control_characters_is_refused_without_echoing_the_password(stand_in):
    for url, expected in [
        ("http://admin:hunter2@127.0.0.1:8000", "invalid URL: give the username and password as settings"),
        ("http://127.0.0.1:8000\r\nX-Injected: 1", "invalid URL"),
        ("http://[::1", "invalid URL 'http://[::1': Invalid IPv6 URL"),
    ]:
        done = notebooks(None, "ls", url=url)
        one_line_error(done, expected)
        assert "hunter2" not in done.stderr


def test_a_character_the_output_cannot_encode_is_written_escaped(stand_in, tmp_path):
    executed = {"cells": [{"cell_type": "code", "source": "\ud800 é", "outputs": []}]}
    stand_in.answer = lambda path: (200, JSON, json.dumps(executed).encode("utf-8"))
    assert json.loads(succeeds_at(stand_in, "output", "r")) == executed
    assert succeeds_at(stand_in, "output", "r", "-o", str(tmp_path / "out.ipynb")) == ""
    assert json.loads((tmp_path / "out.ipynb").read_text(encoding="utf-8")) == executed


def test_rerun_reads_values_with_the_declarations_of_the_runs_notebook(stand_in):
    declared = {"parameters": [{"name": "s", "type": "str", "default": "'a'", "help": ""}]}
    answers = {
        "/_notebooks/runs/r": as_json(run_object("r")),
        "/_notebooks/notebooks/n/parameters": as_json(declared),
        "/_notebooks/runs/r/rerun": as_json({"runs": [{"run_id": "r2", "notebook_id": "n", "status": "queued"}]}),
    }
    stand_in.answer = lambda path: (200, JSON, answers[path])
    assert succeeds_at(stand_in, "rerun", "r", "-p", "s", "123", "-p", "t", "5") == "r2\n"
    assert stand_in.sent == [
        ("GET", "/_notebooks/runs/r", None),
        ("GET", "/_notebooks/notebooks/n/parameters", None),
        ("POST", "/_notebooks/runs/r/rerun", {"parameters": {"s": "123", "t": 5}}),
    ]
    stand_in.sent.clear()  # a JSON string for a str: as written, quotes included
    assert succeeds_at(stand_in, "rerun", "r", "-p", "s", '"q"') == "r2\n"
    assert stand_in.sent[-1] == ("POST", "/_notebooks/runs/r/rerun", {"parameters": {"s": '"q"'}})
    stand_in.sent.clear()  # no -p: nothing to ask
    assert succeeds_at(stand_in, "rerun", "r") == "r2\n"
    assert stand_in.sent == [("POST", "/_notebooks/runs/r/rerun", None)]

    unavailable = (503, JSON, b'{"error": {"status": 503, "message": "Service unavailable"}}')
    stand_in.answer = lambda path: unavailable if path.endswith("/parameters") else (200, JSON, answers[path])
    one_line_error(notebooks(None, "rerun", "r", "-p", "s", "1", url=stand_in.url), "Service unavailable (HTTP 503)")


def test_ctrl_c_during_run_wait_says_the_run_goes_on(stand_in):
    started = {"runs": [{"run_id": "r", "notebook_id": "n", "status": "queued"}]}
    stand_in.answer = lambda path: (
        (200, JSON, as_json(started)) if path.endswith("/_run") else (200, JSON, as_json(run_object("r", "running")))
    )
    env = {**os.environ, "NOTEBOOKS_URL": stand_in.url, "NOTEBOOKS_USER": "a", "NOTEBOOKS_PASSWORD": "b"}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "notebooks_client", "run", "n", "--wait"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stdout.readline() == "r\n"  # the run started: the command waits for its end
        waiting.send_signal(signal.SIGINT)
        stdout, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 130 and stdout == ""
    assert stderr == "notebooks: interrupted: run r goes on ('notebooks cancel r' stops it)\n"


def test_a_closed_stdout_drops_the_output_without_a_traceback(stand_in):
    stand_in.answer = lambda path: (200, JSON, as_json([notebook_object("a")]))
    env = {**os.environ, "NOTEBOOKS_URL": stand_in.url, "NOTEBOOKS_USER": "a", "NOTEBOOKS_PASSWORD": "b"}
    closed = subprocess.run(
        ["sh", "-c", 'exec "$0" -m notebooks_client ls >&-', sys.executable],
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert closed.returncode == 0 and closed.stderr == ""


def test_ctrl_d_at_the_password_prompt_is_an_error_without_a_traceback(stand_in):
    terminal, its_other_end = pty.openpty()
    env = {name: value for name, value in os.environ.items() if name != "NOTEBOOKS_PASSWORD"}
    env.update(NOTEBOOKS_URL=stand_in.url, NOTEBOOKS_USER="a")
    asking = subprocess.Popen(
        [sys.executable, "-m", "notebooks_client", "ls"],
        env=env,
        stdin=its_other_end,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # no controlling terminal: getpass prompts on stderr, reads stdin
    )
    os.close(its_other_end)
    try:
        said = b""
        while b"Password for a: " not in said:  # echo is off only once the prompt is out
            chunk = os.read(asking.stderr.fileno(), 1024)
            assert chunk, said
            said += chunk
        os.write(terminal, b"\x04")  # Ctrl-D
        stdout, rest = asking.communicate(timeout=60)
    finally:
        asking.kill()
        os.close(terminal)
    assert asking.returncode == 1 and stdout == b"" and stand_in.seen == []
    assert (said + rest).decode() == "Password for a: \nnotebooks: no password given\n"


def test_what_the_server_says_stays_on_one_line_without_control_codes(stand_in):
    error = {"cell_index": 0, "ename": "ValueError", "evalue": "first\nsecond \x1b[31mred"}
    stand_in.answer = lambda path: (
        (200, {"Content-Type": "text/plain"}, b"")
        if path.endswith("/log")
        else (200, JSON, as_json(run_object("r", "failed", error=error)))
    )
    done = notebooks(None, "logs", "r", "--follow", url=stand_in.url)
    assert done.returncode == 1
    assert done.stderr == "notebooks: run r failed: ValueError: first\\nsecond \\x1b[31mred (cell 0)\n"
    refused = (400, JSON, as_json({"error": {"status": 400, "message": "bad\r\nX-Injected: 1"}}))
    stand_in.answer = lambda path: refused
    one_line_error(notebooks(None, "status", "r", url=stand_in.url), "notebooks: bad\\r\\nX-Injected: 1 (HTTP 400)")
