"""The `notebooks` command: the notebooks API from the shell.

Results go to stdout (an id alone where a command makes one, so that `$(...)` takes it);
run logs followed by `run --wait` and every error go to stderr. An error is one line,
never a traceback, and the exit status is then 1 (2 for a command line argparse refuses,
130 after Ctrl-C). `run --wait` and `logs --follow` exit 1 when the run failed or was
cancelled.
"""

import argparse
import getpass
import io
import json
import math
import os
import sys
from datetime import datetime, timezone

from .client import ApiError, Client, UnexpectedAnswer
from .parameters import parameters_of

PROG = "notebooks"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# The runs `notebooks runs` lists without --limit: the newest.
RUNS_LISTED = 100


class UserError(Exception):
    """A mistake in the command's inputs (settings, files), said in one line."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def not_empty(what: str):
    """An argument type: any text but an empty one, refused as `WHAT cannot be empty`."""

    def check(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"{what} cannot be empty")
        return text

    return check


# An id on the command line: an empty one would name another route.
identifier = not_empty("an id")


def count(text: str) -> int:
    """A whole number, 0 or more."""
    value = int(text)  # a ValueError is argparse's "invalid count value"
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (0 or more)")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds (JSON carries no NaN or Infinity)."""
    value = float(text)  # a ValueError is argparse's "invalid seconds value"
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def unless_refused(request, fallback):
    """What `request()` returns; `fallback` when the API refuses it with a client error (4xx)."""
    try:
        return request()
    except ApiError as error:
        if error.status is None or not 400 <= error.status < 500:
            raise
        return fallback


def read_parameters(client: Client, pairs, notebook_ids: list) -> dict:
    """The `-p` pairs as a parameters object, read with the declarations of the notebooks
    (notebooks_client.parameters), asked for (one request a notebook) when there are pairs.
    A notebook whose declarations the API refuses (a 4xx: no such notebook, ...) is left
    out: the request that follows says why."""
    if not pairs:
        return {}
    declarations = []
    for notebook_id in notebook_ids:
        declarations.extend(unless_refused(lambda notebook_id=notebook_id: client.parameters(notebook_id), []))
    return parameters_of(pairs, declarations)


def when(epoch_ms) -> str:
    """Epoch milliseconds as `YYYY-MM-DD HH:MM:SS` UTC; `-` for none."""
    if not isinstance(epoch_ms, (int, float)) or isinstance(epoch_ms, bool):
        return "-"
    try:
        return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):  # beyond the years a datetime holds
        return str(epoch_ms)


def print_table(headers: list, rows: list) -> None:
    """Rows under headers, in columns as wide as their widest cell."""
    lines = [headers] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(line[column]) for line in lines) for column in range(len(headers))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def print_json(value) -> None:
    """A value as indented JSON."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def read_notebook(path: str) -> dict:
    """The nbformat JSON of the notebook file at `path`."""
    try:
        with open(path, encoding="utf-8") as notebook_file:
            content = json.load(notebook_file)
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:  # UnicodeDecodeError included
        raise UserError(f"{path} is not a notebook (not JSON: {error})") from None
    except RecursionError:
        raise UserError(f"{path} is not a notebook (JSON nested too deep)") from None
    if not isinstance(content, dict):
        raise UserError(f"{path} is not a notebook (not a JSON object)")
    return content


def write_text(path, text: str) -> None:
    """`text` into the file at `path`, or to stdout when `path` is None."""
    if path is None:
        sys.stdout.write(text)
        return
    try:
        # A lone surrogate (JSON's "\ud800") is written as that escape: no UnicodeEncodeError.
        with open(path, "w", encoding="utf-8", errors="backslashreplace") as output_file:
            output_file.write(text)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}") from None


def to_stream(stream):
    """A log callback that writes each new piece of a log to `stream` as it comes."""

    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


def say(message: str) -> None:
    """An error or outcome as one line on stderr: what the server sent (an exception's
    message, an error text) cannot break the line or send terminal control codes."""
    line = "".join(char if char.isprintable() else repr(char)[1:-1] for char in message)
    print(f"{PROG}: {line}", file=sys.stderr)


def outcome(run: dict) -> int:
    """The exit status for an ended run: 0 when it succeeded; else 1, saying why on stderr."""
    if run["status"] == "succeeded":
        return 0
    error = run.get("error") or {}
    cause = f": {error.get('ename')}: {error.get('evalue')}" if error.get("ename") else ""
    cell = f" (cell {error['cell_index']})" if error.get("cell_index") is not None else ""
    say(f"run {run['run_id']} {run['status']}{cause}{cell}")
    return EXIT_FAILED


# One function per command: (client, parsed arguments) -> exit status.


def create(client: Client, args) -> int:
    """`notebooks create FILE [--name NAME]`: upload the file; print the notebook id."""
    content = read_notebook(args.file)
    name = os.path.basename(args.file) if args.name is None else args.name
    print(client.create(content, name)["notebook_id"])
    return 0


def list_notebooks(client: Client, args) -> int:
    """`notebooks ls [--json]`: the caller's notebooks, as a table or JSON."""
    notebooks = client.list_notebooks()
    if args.json:
        print_json(notebooks)
    else:
        print_table(
            ["ID", "NAME", "STATUS", "LAST RUN (UTC)"],
            [[nb["notebook_id"], nb["notebook_name"], nb["status"], when(nb.get("last_run"))] for nb in notebooks],
        )
    return 0


def remove(client: Client, args) -> int:
    """`notebooks rm ID...`: delete the notebooks; exit 1 when none was deleted."""
    try:
        client.delete(args.notebook_ids)
    except ApiError as error:
        if error.status != 200 or isinstance(error, UnexpectedAnswer):
            raise
        # The seed's "No notebooks deleted" (an error body under HTTP 200): none was the caller's.
        ids = "this id" if len(args.notebook_ids) == 1 else "these ids"
        raise UserError(f"no notebook deleted: you have no notebook with {ids}") from None
    return 0


def show_parameters(client: Client, args) -> int:
    """`notebooks params ID [--json]`: the parameters the notebook declares."""
    parameters = client.parameters(args.notebook_id)
    if args.json:
        print_json(parameters)
    else:
        print_table(
            ["NAME", "TYPE", "DEFAULT", "HELP"], [[p["name"], p["type"], p["default"], p["help"]] for p in parameters]
        )
    return 0


def run(client: Client, args) -> int:
    """`notebooks run ID [-p NAME VALUE]... [--timeout S] [--wait]`: print the run id; with
    `--wait`, follow its log on stderr until it ends."""
    parameters = read_parameters(client, args.parameters, [args.notebook_id])
    run_id = client.run(args.notebook_id, parameters, args.timeout)["run_id"]
    try:
        print(run_id, flush=True)
        return outcome(client.wait(run_id, on_log=to_stream(sys.stderr))) if args.wait else 0
    except KeyboardInterrupt:  # the run is the server's: it goes on
        raise KeyboardInterrupt(f"run {run_id} goes on ('{PROG} cancel {run_id}' stops it)") from None


def list_runs(client: Client, args) -> int:
    """`notebooks runs [--notebook ID] [--status S] [--limit N] [--json]`: the newest N
    runs (0: all), newest first."""
    runs = client.list_runs(args.notebook, args.status, limit=args.limit or None)
    if args.json:
        print_json(runs)
    else:
        print_table(
            ["RUN ID", "NOTEBOOK ID", "STATUS", "TRIGGER", "CREATED (UTC)", "FINISHED (UTC)"],
            [
                [
                    r["run_id"],
                    r["notebook_id"],
                    r["status"],
                    r["trigger"],
                    when(r["created_at"]),
                    when(r.get("finished_at")),
                ]
                for r in runs
            ],
        )
    return 0


def status(client: Client, args) -> int:
    """`notebooks status RUN_ID`: the run object as JSON."""
    print_json(client.get_run(args.run_id))
    return 0


def logs(client: Client, args) -> int:
    """`notebooks logs RUN_ID [--follow]`: the run's log; with `--follow`, until it ends."""
    if args.follow:
        return outcome(client.wait(args.run_id, on_log=to_stream(sys.stdout)))
    sys.stdout.write(client.log(args.run_id))
    return 0


def cancel(client: Client, args) -> int:
    """`notebooks cancel RUN_ID`: cancel the run; print its status then."""
    print(client.cancel(args.run_id)["status"])
    return 0


def rerun(client: Client, args) -> int:
    """`notebooks rerun RUN_ID [-p NAME VALUE]...`: print the new run's id."""
    notebook_ids = []
    if args.parameters:  # the declarations are those of the run's notebook
        notebook_ids = unless_refused(lambda: [client.get_run(args.run_id)["notebook_id"]], [])
    print(client.rerun(args.run_id, read_parameters(client, args.parameters, notebook_ids))["run_id"])
    return 0


def output(client: Client, args) -> int:
    """`notebooks output RUN_ID [--html] [-o FILE]`: the executed notebook, to FILE or stdout."""
    if args.html:
        text = client.output_html(args.run_id)
    else:
        text = json.dumps(client.output(args.run_id), indent=1, ensure_ascii=False) + "\n"
    write_text(args.output_file, text)
    return 0


def schedule(client: Client, args) -> int:
    """`notebooks schedule ID... --until ...`: schedule the notebooks."""
    client.schedule(
        args.notebook_ids,
        args.until,
        time_of_day=args.time,
        period=args.period,
        timezone=args.timezone,
        parameters=read_parameters(client, args.parameters, args.notebook_ids) or None,
    )
    return 0


def unschedule(client: Client, args) -> int:
    """`notebooks unschedule ID...`: remove the notebooks' schedules."""
    client.unschedule(args.notebook_ids)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line: connection options (before or after the command), then commands."""
    connection = _Parser(add_help=False)
    connection.add_argument("--url", default=argparse.SUPPRESS, help="the API's base URL (env NOTEBOOKS_URL)")
    connection.add_argument("--user", default=argparse.SUPPRESS, help="username (env NOTEBOOKS_USER)")
    connection.add_argument(
        "--password", default=argparse.SUPPRESS, help="password (env NOTEBOOKS_PASSWORD; asked for on a terminal)"
    )
    parser = _Parser(prog=PROG, parents=[connection], description="Jupyter notebooks as jobs, over the notebooks API.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name, handler, help_text):
        sub = commands.add_parser(name, parents=[connection], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def parameter_option(sub):
        sub.add_argument(
            "-p",
            "--parameter",
            nargs=2,
            action="append",
            dest="parameters",
            metavar=("NAME", "VALUE"),
            help="a papermill parameter; VALUE is True, False, None, else JSON where it parses, else a string"
            " (as written for a parameter the notebook declares as str; read by int() or float() for one"
            " declared as int or float)",
        )

    sub = command("create", create, "upload a notebook file; prints its id")
    sub.add_argument("file", metavar="FILE.ipynb")
    sub.add_argument("--name", type=not_empty("a name"), help="the notebook's name (default: the file's name)")
    sub = command("ls", list_notebooks, "list your notebooks")
    sub.add_argument("--json", action="store_true", help="the API's notebook objects as JSON")
    sub = command("rm", remove, "delete notebooks, with their schedules and runs")
    sub.add_argument("notebook_ids", nargs="+", type=identifier, metavar="ID")
    sub = command("params", show_parameters, "the parameters a notebook declares")
    sub.add_argument("notebook_id", type=identifier, metavar="ID")
    sub.add_argument("--json", action="store_true", help="as JSON")
    sub = command("run", run, "run a notebook; prints the run id")
    sub.add_argument("notebook_id", type=identifier, metavar="ID")
    parameter_option(sub)
    sub.add_argument("--timeout", type=seconds, metavar="S", help="stop the run after S seconds")
    sub.add_argument(
        "--wait", action="store_true", help="follow the log on stderr until the run ends; exit 1 unless it succeeded"
    )
    sub = command("runs", list_runs, "list runs, newest first")
    sub.add_argument("--notebook", type=identifier, metavar="ID", help="only this notebook's runs")
    sub.add_argument(
        "--status",
        type=not_empty("a status"),
        metavar="S",
        help="only runs of this status (queued, running, succeeded, ...)",
    )
    sub.add_argument(
        "--limit",
        type=count,
        default=RUNS_LISTED,
        metavar="N",
        help=f"only the newest N runs (default: {RUNS_LISTED}; 0: all of them)",
    )
    sub.add_argument("--json", action="store_true", help="the API's run objects as JSON")
    sub = command("status", status, "a run's details, as JSON")
    sub.add_argument("run_id", type=identifier, metavar="RUN_ID")
    sub = command("logs", logs, "a run's log: its output and error tracebacks")
    sub.add_argument("run_id", type=identifier, metavar="RUN_ID")
    sub.add_argument(
        "--follow", action="store_true", help="print the log as it grows until the run ends; exit 1 unless it succeeded"
    )
    sub = command("cancel", cancel, "cancel a queued or running run; prints its status then")
    sub.add_argument("run_id", type=identifier, metavar="RUN_ID")
    sub = command("rerun", rerun, "run a past run's notebook version again; prints the new run id")
    sub.add_argument("run_id", type=identifier, metavar="RUN_ID")
    parameter_option(sub)
    sub = command("output", output, "a run's executed notebook")
    sub.add_argument("run_id", type=identifier, metavar="RUN_ID")
    sub.add_argument("--html", action="store_true", help="rendered as an HTML page")
    sub.add_argument("-o", "--output", dest="output_file", metavar="FILE", help="write it to FILE, not stdout")
    sub = command("schedule", schedule, "run notebooks on a schedule")
    sub.add_argument("notebook_ids", nargs="+", type=identifier, metavar="ID")
    sub.add_argument("--until", required=True, metavar="'YYYY-MM-DD HH:MM'", help="the schedule's end")
    sub.add_argument("--time", metavar="HH:MM", help="time of day (default: the time in --until)")
    sub.add_argument("--period", metavar="DAY", help="a weekday (default: every day)")
    sub.add_argument("--timezone", metavar="ZONE", help="an IANA zone (default: the deployment's)")
    parameter_option(sub)
    sub = command("unschedule", unschedule, "remove notebooks' schedules")
    sub.add_argument("notebook_ids", nargs="+", type=identifier, metavar="ID")
    return parser


def setting(args, option: str, variable: str):
    """The option's value when given, even empty; else the environment variable's, or None."""
    return getattr(args, option) if hasattr(args, option) else os.environ.get(variable)


def client_from(args) -> Client:
    """A client from the options, else the environment (a password asked for on a terminal)."""
    url = setting(args, "url", "NOTEBOOKS_URL")
    user = setting(args, "user", "NOTEBOOKS_USER")
    password = setting(args, "password", "NOTEBOOKS_PASSWORD")
    if url is None:
        raise UserError("no API URL: give --url or set NOTEBOOKS_URL")
    if not user:
        raise UserError("no username: give --user or set NOTEBOOKS_USER")
    if password is None:
        if not sys.stdin.isatty():
            raise UserError("no password: give --password or set NOTEBOOKS_PASSWORD")
        try:
            password = getpass.getpass(f"Password for {user}: ")
        except EOFError:  # Ctrl-D at the prompt
            print(file=sys.stderr)  # the error on a line of its own, not after the prompt
            raise UserError("no password given") from None
    try:
        return Client(url, user, password)
    except ValueError as error:
        raise UserError(str(error)) from None


def main(argv=None) -> int:
    """Run the command in `argv` (default: sys.argv); its exit status."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:  # started with it closed (`>&-`): what goes there is dropped
            setattr(sys, name, open(os.devnull, "w"))
        stream = getattr(sys, name)
        if isinstance(stream, io.TextIOWrapper):  # what it cannot encode is written escaped, not a traceback
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        status = args.handler(client_from(args), args)
        sys.stdout.flush()  # here, not at exit, so that a reader who left is the BrokenPipeError below
        return status
    except ApiError as error:
        hint = ": check the username and password (--user, --password)" if error.status == 401 else ""
        say(f"{error}{hint}")
        return EXIT_FAILED
    except UserError as error:
        say(str(error))
        return EXIT_FAILED
    except KeyboardInterrupt as interruption:
        say("interrupted" + (f": {interruption}" if str(interruption) else ""))
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `notebooks ls | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_FAILED
