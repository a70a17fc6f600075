"""The explicit contracts: the run vocabulary defined once, the runner's events parsed
by one function, the protocols the services rely on, the router's refusal of an unknown
engine, the domain errors' one table at the edge, and the request bodies: unknown
fields refused, JSON required."""

import ast
import json
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from chalicelib.api import errors as api_errors
from chalicelib.api.requests import RUN_FIELDS
from chalicelib.common import errors, runner_events
from chalicelib.common.clock import Clock
from chalicelib.common.model import FINAL, Engine, Pool, RunStatus, Trigger
from chalicelib.runs.engines import Dispatcher, EngineRouter, FargateTasks, LambdaDispatcher, UnknownEngine
from chalicelib.storage.files import FileStore, NotebookFiles
from tests.conftest import error
from tests.helpers import stored_state
from tests.test_runs import dispatched  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parent.parent
BASE = "/_notebooks/notebooks"
RUNS = "/_notebooks/runs"
SOME_ID = "8da5dd53-8ce0-4817-b6a1-e088f1aac8a7"
CANCEL = f"{RUNS}/{SOME_ID}/cancel"

# --- The run vocabulary, defined once ------------------------------------------------


def _shipped_and_dev_modules():
    for folder in ("chalicelib", "devstack", "deploy"):
        yield from (ROOT / folder).rglob("*.py")
    yield ROOT / "app.py"


def test_run_statuses_triggers_and_engines_are_spelled_out_only_in_the_model():
    """No module but common/model.py names a run status, trigger or engine as a constant
    (`QUEUED = "queued"`) or lists two of one kind in a literal (`("succeeded", "failed")`):
    each is defined once and imported."""
    vocabularies = [set(RunStatus), set(Trigger), set(Engine)]
    model = ROOT / "chalicelib" / "common" / "model.py"
    found = []
    for path in _shipped_and_dev_modules():
        if path == model:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                words = {elt.value for elt in node.elts if isinstance(elt, ast.Constant)}
                if any(len(words & vocabulary) >= 2 for vocabulary in vocabularies):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} lists {sorted(words)}")
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                names = [target.id for target in node.targets if isinstance(target, ast.Name)]
                if any(name.isupper() for name in names) and any(node.value.value in v for v in vocabularies):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} defines {names} = {node.value.value!r}")
    assert found == []


def test_the_model_is_the_strings_the_api_and_tables_hold():
    assert [str(status) for status in RunStatus] == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert FINAL == ("succeeded", "failed", "cancelled")
    assert list(Trigger) == ["manual", "schedule", "rerun"] and list(Engine) == ["lambda", "fargate", "local"]
    assert list(Pool) == ["runner", "fargate"]
    assert json.dumps({"status": RunStatus.QUEUED}) == '{"status": "queued"}'


# --- The runner function's events ----------------------------------------------------


def test_every_event_the_builders_make_is_parsed_as_itself():
    built = [
        runner_events.schedule_firing("admin", SOME_ID),
        runner_events.webhook_delivery("r-2"),
        runner_events.remove_rules("admin", [SOME_ID]),
        runner_events.drain(),
        runner_events.drain("r-3"),
        runner_events.reap(),
        runner_events.drain(pool=Pool.FARGATE),
        runner_events.drain("r-4", Pool.FARGATE),
        {"Records": [{"body": "{}"}]},  # the failed events' queue, as SQS hands it over
    ]
    assert [runner_events.parse(event) for event in built] == built
    assert built[0] == {"notebook_id": SOME_ID, "owner": "admin", "trigger": "schedule"}
    assert built[3:8] == [
        {"drain": {}},
        {"drain": {"run_id": "r-3"}},
        {"reap": {}},
        {"drain": {"pool": "fargate"}},
        {"drain": {"run_id": "r-4", "pool": "fargate"}},
    ]
    assert [runner_events.drain_pool(event) for event in (built[4], built[7])] == [Pool.RUNNER, Pool.FARGATE]


@pytest.mark.parametrize(
    "event",
    [
        {},
        [],
        "run",
        None,
        {"run_id": "r"},  # a Fargate task's command, never the runner function's event
        {"run_id": 5},
        {"run_id": "r", "extra": 1},
        {"runid": "r"},
        {"notebook_id": SOME_ID, "owner": "admin", "trigger": "manual"},
        {"notebook_id": SOME_ID, "owner": "admin"},
        {"deliver_webhook": ["r"]},
        {"remove_rules": {"owner": "admin"}},
        {"remove_rules": {"owner": "admin", "notebook_ids": "x"}},
        {"remove_rules": {"owner": "admin", "notebook_ids": [1]}},
        {"deliver_webhook": "r", "run_id": "r"},
        {"drain": None},
        {"drain": {"run_id": 5}},
        {"drain": {"runid": "r"}},
        {"drain": {}, "run_id": "r"},
        {"drain": {"pool": "runner"}},
        {"drain": {"pool": "lambda"}},
        {"drain": {"pool": ["fargate"]}},
        {"reap": None},
        {"reap": {"now": 1}},
        {"Records": "x"},
        {"Records": ["x"]},
    ],
)
def test_an_event_of_no_known_shape_is_refused_loudly(event):
    with pytest.raises(runner_events.UnknownEvent, match="the runner function takes"):
        runner_events.parse(event)


def test_the_runner_refuses_an_unknown_event_before_doing_anything(stack):
    executor = stack.executor_on(runner=None)  # nothing may reach the runner
    with pytest.raises(runner_events.UnknownEvent):
        executor.handle({"notebook_id": SOME_ID, "owner": "admin", "trigger": "rerun"})


# --- Protocols and the engine router -------------------------------------------------


class _Lambda:
    """The runner function's invocations, recorded."""

    engine = Engine.LAMBDA

    def __init__(self):
        self.events = []

    def invoke(self, event):
        self.events.append(event)


class _Tasks:
    """Fargate tasks started and stopped, recorded."""

    def __init__(self):
        self.calls = []

    def start(self, run):
        self.calls.append(("start", run["run_id"]))
        return {"task_arn": "arn:task/" + run["run_id"]}

    def stop(self, run):
        self.calls.append(("stop", run["run_id"]))


def test_the_real_implementations_and_the_local_stand_ins_satisfy_the_protocols(stack):
    on_lambda = LambdaDispatcher(None, "runner")
    local = LambdaDispatcher(None, "runner", engine=Engine.LOCAL)  # the local stack's Lambda
    tasks = FargateTasks(None, "cluster", "task", "runner", ["subnet"], ["sg"], False)
    for dispatcher in (on_lambda, local, EngineRouter(on_lambda, tasks, 840), stack.dispatcher):
        assert isinstance(dispatcher, Dispatcher)
    assert not isinstance(tasks, Dispatcher)
    assert isinstance(stack.files, NotebookFiles) and isinstance(stack.files, FileStore)
    assert isinstance(time.time, Clock) and isinstance(lambda: 0.0, Clock)


def test_the_router_refuses_a_run_naming_an_engine_it_does_not_have():
    on_lambda, tasks = _Lambda(), _Tasks()
    router = EngineRouter(on_lambda, tasks, lambda_limit=840)
    for engine in ("ecs", "LAMBDA", "local"):
        with pytest.raises(UnknownEngine, match=f"names engine '{engine}'"):
            router.dispatch({"run_id": "r", "engine": engine})
        with pytest.raises(UnknownEngine):
            router.stop({"run_id": "r", "engine": engine})
        with pytest.raises(UnknownEngine):
            router.start_task({"run_id": "r", "engine": engine})
    assert (on_lambda.events, tasks.calls) == ([], [])
    with pytest.raises(UnknownEngine, match="not in a task"):
        router.start_task({"run_id": "short", "engine": "lambda"})
    with pytest.raises(UnknownEngine, match="needs a Fargate task"):
        LambdaDispatcher(None, "runner").start_task({"run_id": "long", "engine": "fargate"})
    router.dispatch({"run_id": "old"})  # recorded before runs had an engine: a Lambda run
    router.dispatch({"run_id": "long", "engine": "fargate"})
    assert on_lambda.events == [{"drain": {"run_id": "old"}}, {"drain": {"run_id": "long", "pool": "fargate"}}]
    assert router.start_task({"run_id": "long", "engine": "fargate"}) == {"task_arn": "arn:task/long"}
    router.stop({"run_id": "old"})
    router.stop({"run_id": "long", "engine": "fargate"})
    assert tasks.calls == [("start", "long"), ("stop", "long")]


# --- Domain errors and their one table ----------------------------------------------


def _all_domain_errors():
    pending, seen = [errors.DomainError], []
    while pending:
        for kind in pending.pop().__subclasses__():
            seen.append(kind)
            pending.append(kind)
    return seen


EXAMPLES = {
    errors.InvalidInput: (errors.InvalidInput("x is wrong", field="x"), 400, {}),
    errors.NotFound: (errors.NotFound(errors.RUN_NOT_FOUND), 404, {}),
    errors.Conflict: (errors.Conflict("Run already finished"), 409, {}),
    errors.NameTaken: (errors.NameTaken(), 409, {}),
    errors.QuotaExceeded: (errors.QuotaExceeded("Too many runs"), 429, {}),
    errors.TooLarge: (errors.TooLarge("Notebook too large"), 413, {}),
    errors.NothingDeleted: (errors.NothingDeleted(), 200, {}),
    errors.Unauthenticated: (errors.Unauthenticated(), 401, api_errors.AUTH_HEADERS),
    errors.TooManyFailures: (errors.TooManyFailures(7), 429, {"Retry-After": "7"}),
}


def test_the_table_at_the_edge_maps_every_domain_error_to_its_status_and_message():
    assert set(_all_domain_errors()) == set(EXAMPLES), "a domain error without an example here"
    for raised, status, headers in EXAMPLES.values():
        answer = api_errors.from_domain(raised)
        assert (answer.status, answer.message, answer.headers) == (status, raised.message, headers)
    assert errors.NameTaken().message == "A notebook with that name already exists"
    assert errors.NothingDeleted().message == "No notebooks deleted"
    assert errors.TooManyFailures(7).message == "Too many failed logins: try again in 7 seconds"


def test_the_domain_errors_know_no_http():
    source = (ROOT / "chalicelib" / "common" / "errors.py").read_text()
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= {"typing"}


def test_services_raise_no_http_errors():
    """ApiError is made at the edge only: api/ (the table, the middleware) and the
    dashboard's static files, which answer HTTP themselves."""
    edge = (ROOT / "chalicelib" / "api", ROOT / "chalicelib" / "dashboard")
    for path in (ROOT / "chalicelib").rglob("*.py"):
        if not path.is_relative_to(edge[0]) and not path.is_relative_to(edge[1]):
            assert "ApiError" not in path.read_text(), path


# --- Request bodies: unknown fields refused -------------------------------------------

CREATED = "Error occurred while creating the notebook file: "
EXECUTED = "Error occurred during notebook execution: "
PROCESSED = "Error occurred during request processing: "
# (method, path, a body with one field it does not define, that field, the seed's prefix)
UNKNOWN_FIELD_CASES = [
    ("POST", BASE + "/", {"notebook_name": "n", "nmae": "x"}, "nmae", CREATED),
    (
        "DELETE",
        BASE + "/",
        {"nbk_ids": [SOME_ID], "ids": [SOME_ID]},
        "ids",
        "Error occurred during notebook deletion: ",
    ),
    ("PUT", BASE + "/" + SOME_ID, {"new_name": "n", "name": "m"}, "name", ""),
    ("POST", BASE + "/_run", {"nbkIds": [SOME_ID], "module": "m", "paramters": {"n": 5}}, "paramters", EXECUTED),
    ("GET", BASE + "/_run", {"nbk_ids": [SOME_ID], "module": "m", "timeot": 5}, "timeot", EXECUTED),
    (
        "POST",
        BASE + "/_schedule",
        {"nbk_ids": [SOME_ID], "until": "2030-01-01 00:00", "perod": "Monday"},
        "perod",
        PROCESSED,
    ),
    ("GET", BASE + "/_unschedule", {"nbk_ids": [SOME_ID], "until": "2030-01-01 00:00"}, "until", PROCESSED),
    (
        "PUT",
        BASE + f"/{SOME_ID}/webhook",
        {"url": "https://example.com", "secret": "s", "event": ["failed"]},
        "event",
        "",
    ),
    ("POST", RUNS + f"/{SOME_ID}/rerun", {"parameters": {}, "timeout": 5, "module": "m"}, "module", ""),
    # Bodiless requests: a body, if any, may only be {}.
    ("POST", RUNS + f"/{SOME_ID}/cancel", {"reason": "typo"}, "reason", ""),
    ("DELETE", BASE + f"/{SOME_ID}/webhook", {"url": "https://example.com"}, "url", ""),
]


@pytest.mark.parametrize("method, path, body, unknown, prefix", UNKNOWN_FIELD_CASES)
def test_a_field_the_body_does_not_define_is_a_400_naming_it_and_changes_nothing(
    api, stack, method, path, body, unknown, prefix
):
    before = stored_state(stack.settings)
    status, message = error(api.call(method, path, body))
    assert status == 400
    assert message.startswith(f"{prefix}Unknown field: {unknown} (this request takes "), message
    assert stored_state(stack.settings) == before


@pytest.mark.usefixtures("dispatched")  # nothing executes
def test_a_bodiless_request_takes_an_empty_object(api, stack):
    run_id = api.json("POST", BASE + "/_run", {"nbkIds": [api.create()["notebook_id"]], "module": "m"})["runs"][0][
        "run_id"
    ]
    status, message = error(api.call("POST", f"{RUNS}/{run_id}/cancel", {"reason": "typo"}))
    assert (status, message) == (400, "Unknown field: reason (this request takes no fields)")
    assert api.json("POST", f"{RUNS}/{run_id}/cancel", {})["status"] == "cancelled"


def test_a_typo_in_a_run_names_the_field_and_runs_nothing(api, stack):
    notebook_id = api.create()["notebook_id"]
    response = api.call("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m", "paramters": {"n": 5}})
    assert error(response) == (
        400,
        "Error occurred during notebook execution: Unknown field: paramters (this request takes "
        + ", ".join(RUN_FIELDS)
        + ")",
    )
    assert api.json("GET", f"{BASE}/{notebook_id}")["no_of_runs"] == 0


def test_a_notebook_written_with_an_unknown_top_level_field_is_refused_naming_it(api):
    notebook_id = api.create()["notebook_id"]
    body = {**nbformat.v4.new_notebook(), "cels": []}
    status, message = error(api.call("PUT", f"{BASE}/{notebook_id}/content", body))
    assert status == 400 and "'cels' was unexpected" in message


def test_an_error_quoting_a_huge_name_stays_small(api):
    """A message quotes the client's names, cut short: a 3 MB unknown field (6 MB as
    JSON's escapes) was answered in full, past what Lambda may return."""
    notebook_id = api.create()["notebook_id"]
    huge = "é" * 1_000_000
    response = api.call("POST", BASE + "/_run", {huge: 1})
    status, message = error(response)
    assert status == 400 and len(response.body) < 10_000
    assert message.startswith("Error occurred during notebook execution: Unknown field: " + "é" * 99 + "… (")
    # Any message, nbformat's here, is cut at MAX_MESSAGE_CHARS.
    response = api.call("PUT", f"{BASE}/{notebook_id}/content", {**nbformat.v4.new_notebook(), huge: []})
    status, message = error(response)
    assert status == 400 and len(response.body) < 10_000
    assert "é" * 50 in message and message.endswith("…") and len(message) == api_errors.MAX_MESSAGE_CHARS


@pytest.mark.usefixtures("dispatched")  # nothing executes
def test_the_seeds_own_fields_stay_valid(api):
    """The seed's Run sample as written (unquoted keys, `module`), and every field of the
    Schedule sample."""
    notebook_id = api.create()["notebook_id"]
    seed_run = ('{nbkIds: ["%s"], module: "notebooks"}' % notebook_id).encode()
    started = api.json("GET", BASE + "/_run", raw=seed_run)
    assert [run["notebook_id"] for run in started["runs"]] == [notebook_id]
    schedule = {"nbk_ids": [notebook_id], "period": "Monday", "time": "06:50", "until": "2030-12-13 06:50"}
    assert api.json("GET", BASE + "/_schedule", schedule) == "Success"
    assert api.json("GET", BASE + "/_unschedule", {"nbk_ids": [notebook_id]}) == "Success"


# --- Request bodies: JSON only --------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "text/html; charset=utf-8", "application/jsonp", ""],
)
def test_a_body_not_labelled_json_is_a_415_naming_the_type_and_changes_nothing(api, stack, content_type):
    before = stored_state(stack.settings)
    # Every route, whether it reads a body or not: a cross-site form cannot cancel a run either.
    for method, path in (("POST", BASE + "/"), ("POST", BASE + "/_run"), ("DELETE", BASE + "/"), ("POST", CANCEL)):
        response = api.call(method, path, raw=b'{"notebook_name": "csrf"}', headers={"Content-Type": content_type})
        status, message = error(response)
        assert (status, message.split(":")[0]) == (415, "Content-Type must be application/json"), (method, message)
    assert stored_state(stack.settings) == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_an_empty_form_is_a_415_too_but_a_bodiless_request_and_any_get_are_not(api, stack, content_type):
    """An empty <form method=post> from another site creates nothing; the seed's bodiless
    Create (no Content-Type) still works, and a GET with any label answers."""
    before = stored_state(stack.settings)
    for method, path in (("POST", BASE + "/"), ("POST", CANCEL)):
        response = api.call(method, path, raw=b"", headers={"Content-Type": content_type})
        assert error(response)[0] == 415, (method, path)
    assert stored_state(stack.settings) == before
    assert api.call("POST", BASE + "/", raw=b"", headers={"Content-Type": ""}).status_code == 200
    for path in ("/_notebooks/openapi.json", BASE + "/_count"):
        assert api.call("GET", path, headers={"Content-Type": content_type}).status_code == 200, path


def test_json_with_parameters_is_json(api):
    created = api.json(
        "POST",
        BASE + "/",
        raw=b'{"notebook_name": "utf8"}',
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert created["notebook_name"] == "utf8.ipynb"


def test_a_bodiless_request_needs_no_content_type(api):
    """The seed's Create sample sends no body (and curl no Content-Type); JSON's label on
    an empty body is fine too. (An empty form's label is not: see above.)"""
    for content_type in ("", "application/json"):
        response = api.call("POST", BASE + "/", raw=b"", headers={"Content-Type": content_type})
        assert response.status_code == 200, response.body


def test_a_form_or_file_upload_of_a_notebook_is_told_what_to_send(api, stack):
    notebook_id = api.create()["notebook_id"]
    boundary = uuid.uuid4().hex
    notebook = json.dumps(nbformat.v4.new_notebook())
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.ipynb"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n{notebook}\r\n--{boundary}--\r\n"
    ).encode()
    uploads = (
        (f"multipart/form-data; boundary={boundary}", multipart),  # curl -F file=@x.ipynb
        ("application/x-www-form-urlencoded", b"file=notebook"),  # curl -d @x.ipynb
        ("application/octet-stream", notebook.encode()),
        ("application/x-ipynb+json", notebook.encode()),  # a notebook's own media type
    )
    before = stored_state(stack.settings)
    for content_type, body in uploads:
        response = api.call("PUT", f"{BASE}/{notebook_id}/content", raw=body, headers={"Content-Type": content_type})
        assert error(response) == (
            415,
            "Content-Type must be application/json: send the notebook's JSON itself as the request body, "
            "with Content-Type: application/json",
        ), content_type
        for create in (BASE, BASE + "/"):
            response = api.call("POST", create, raw=body, headers={"Content-Type": content_type})
            assert error(response) == (
                415,
                'Content-Type must be application/json: send {"notebook_name": "...", "content": '
                "<the notebook's JSON>} as the request body, with Content-Type: application/json",
            ), content_type
    # Elsewhere, the label alone: a rename is not an upload.
    response = api.call("PUT", BASE, raw=b"file=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert error(response) == (415, "Content-Type must be application/json")
    assert stored_state(stack.settings) == before
