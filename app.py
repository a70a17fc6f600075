"""The notebooks API: routes that parse the request, call chalicelib, shape the response.

Every route but the OpenAPI document needs HTTP Basic credentials (chalicelib/api/web.py).
"""

import json
import logging
import os

from chalice import Chalice, CORSConfig, Response

from chalicelib import services
from chalicelib.api import openapi, payloads, responses, web
from chalicelib.api.requests import (
    ContentRequest,
    CreateRequest,
    IdsRequest,
    RenameRequest,
    RerunRequest,
    RunRequest,
    ScheduleRequest,
    WebhookRequest,
    known_fields,
)
from chalicelib.common.config import Settings
from chalicelib.common.errors import NOTEBOOK_ID_MISSING, InvalidInput, SandboxError
from chalicelib.dashboard import assets

app = Chalice(app_name="notebooks")
app.register_middleware(web.handle, "http")

NOTEBOOKS = "/_notebooks/notebooks"
RUNS = "/_notebooks/runs"
UI = "/_notebooks/ui"
_origin = Settings.from_env().cors_origin  # CORS is decided when the API is built
CORS = (
    CORSConfig(
        allow_origin=_origin,
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        expose_headers=["X-Next-Token"],
    )
    if _origin
    else False
)


def route(path, methods, failure, explain=False):
    """A route that takes any body type and answers AWS failures with `failure`; with
    `explain`, its 400s take the seed's `failure: {str(e)}` form too."""

    def register(view):
        return app.route(path, methods=methods, content_types=web.ANY_CONTENT_TYPE, cors=CORS)(
            web.seed_failures(failure, explain)(view)
        )

    return register


def word(text: str) -> Response:
    """A bare-word success body, `{"Success"}` in the seed, sent as the JSON string."""
    return Response(body=json.dumps(text), headers={"Content-Type": "application/json"})


def caller() -> str:
    """The authenticated username of the current request."""
    return app.current_request.username


def body(lenient: bool = False) -> dict:
    """The current request's JSON body (`{}` when empty; labelled JSON: web.require_json)."""
    return payloads.parse_body(app.current_request.raw_body, lenient=lenient)


def settings():
    """This deployment's settings."""
    return services.get().settings


def notebooks():
    """The notebook service."""
    return services.get().notebooks


@route(NOTEBOOKS, ["POST"], "Error occurred while creating the notebook file", explain=True)
def create_notebook():
    return notebooks().create(caller(), CreateRequest.parse(body()))


@route(NOTEBOOKS, ["DELETE"], "Error occurred during notebook deletion", explain=True)
def delete_notebooks():
    notebooks().delete(caller(), IdsRequest.parse(body(), settings()))
    return word("Success")


@route(NOTEBOOKS, ["PUT"], "Error occurred while renaming the notebook file")
def rename_without_id():
    raise InvalidInput(NOTEBOOK_ID_MISSING)


@route(NOTEBOOKS + "/_all", ["GET"], "Error occurred while retrieving notebook information", explain=True)
def list_notebooks():
    query = app.current_request.query_params or {}
    limit = payloads.page_limit(query.get("limit"), settings().max_ids)
    items, next_token = notebooks().list(caller(), limit, query.get("next_token"))
    return bounded(items, next_token)


def bounded(items: list, next_token) -> Response:
    """A JSON array with its next page's token; past Lambda's response limit, a 303 to it."""
    return responses.bounded_json(
        items,
        caller(),
        services.get().files,
        settings().max_response_bytes,
        {"X-Next-Token": next_token} if next_token else {},
    )


@route(NOTEBOOKS + "/_count", ["GET"], "Error occurred while retrieving notebook metrics")
def count_notebooks():
    return notebooks().count(caller())


@route(NOTEBOOKS + "/{notebook_id}", ["GET"], "Error occurred during notebook retrieval")
def fetch_notebook(notebook_id):
    return notebooks().fetch(caller(), notebook_id)


@route(NOTEBOOKS + "/{notebook_id}", ["PUT"], "Error occurred while renaming the notebook file")
def rename_notebook(notebook_id):
    notebooks().rename(caller(), notebook_id, RenameRequest.parse(body()))
    return word("Rename Successful")


@route(NOTEBOOKS + "/{notebook_id}/content", ["GET"], "Error occurred while reading the notebook file")
def get_content(notebook_id):
    return notebooks().content(caller(), notebook_id)


@route(NOTEBOOKS + "/{notebook_id}/content", ["PUT"], "Error occurred while writing the notebook file")
def put_content(notebook_id):
    notebooks().replace_content(caller(), notebook_id, ContentRequest.parse(body()))
    return word("Success")


@route(NOTEBOOKS + "/{notebook_id}/parameters", ["GET"], "Error occurred while reading the notebook parameters")
def notebook_parameters(notebook_id):
    return notebooks().parameters(caller(), notebook_id)


@route(NOTEBOOKS + "/_run", ["GET", "POST"], "Error occurred during notebook execution", explain=True)
def run_notebooks():
    # The seed's own sample sends unquoted keys: `{nbkIds: [...], module: "notebooks"}`.
    request = RunRequest.parse(body(lenient=True), app.current_request.headers.get("idempotency-key"), settings())
    return services.get().runs.start(caller(), request)


@route(NOTEBOOKS + "/_schedule", ["GET", "POST"], "Error occurred during request processing", explain=True)
def schedule_notebooks():
    services.get().scheduler.schedule(caller(), ScheduleRequest.parse(body(), settings()))
    return word("Success")


@route(NOTEBOOKS + "/_unschedule", ["GET", "POST"], "Error occurred during request processing", explain=True)
def unschedule_notebooks():
    services.get().scheduler.unschedule(caller(), IdsRequest.parse(body(), settings()))
    return word("Success")


@route(NOTEBOOKS + "/{notebook_id}/runs", ["GET"], "Error occurred while retrieving runs")
def notebook_runs(notebook_id):
    query = app.current_request.query_params or {}
    limit = payloads.page_limit(query.get("limit"), settings().max_ids)
    runs, next_token = services.get().runs.for_notebook(caller(), notebook_id, limit, query.get("next_token"))
    return bounded(runs, next_token)


@route(RUNS, ["GET"], "Error occurred while retrieving runs")
def list_runs():
    query = app.current_request.query_params or {}
    # An empty filter is none: a form leaves its empty fields in the query. (limit and
    # next_token are read as List reads them.)
    query = {name: value for name, value in query.items() if value != "" or name not in ("status", "notebook_id")}
    limit = payloads.page_limit(query.get("limit"), services.get().settings.max_ids)
    runs, next_token = services.get().runs.across_notebooks(
        caller(), query.get("status"), query.get("notebook_id"), limit, query.get("next_token")
    )
    return bounded(runs, next_token)


@route(RUNS + "/{run_id}", ["GET"], "Error occurred while retrieving the run")
def get_run(run_id):
    return services.get().runs.get(caller(), run_id)


@route(RUNS + "/{run_id}/output", ["GET"], "Error occurred while retrieving the run output")
def run_output(run_id):
    output_format = (app.current_request.query_params or {}).get("format", "ipynb")
    return _sent(services.get().runs.output(caller(), run_id, output_format))


@route(RUNS + "/{run_id}/log", ["GET"], "Error occurred while retrieving the run log")
def run_log(run_id):
    return _sent(services.get().runs.log(caller(), run_id))


def _sent(output) -> Response:
    """A run's output or log (runs.RunOutput): its body, or a 303 to its download link."""
    if output.location:
        return Response(body="", status_code=303, headers={"Location": output.location})
    return Response(body=output.body, headers=output.headers)


@route(NOTEBOOKS + "/{notebook_id}/webhook", ["PUT"], "Error occurred while setting the webhook")
def put_webhook(notebook_id):
    return services.get().webhooks.put(caller(), notebook_id, WebhookRequest.parse(body()))


@route(NOTEBOOKS + "/{notebook_id}/webhook", ["GET"], "Error occurred while retrieving the webhook")
def get_webhook(notebook_id):
    return services.get().webhooks.get(caller(), notebook_id)


@route(NOTEBOOKS + "/{notebook_id}/webhook", ["DELETE"], "Error occurred while removing the webhook")
def delete_webhook(notebook_id):
    known_fields(body(), ())  # none: a body may be empty or {}
    services.get().webhooks.delete(caller(), notebook_id)
    return word("Success")


@route(RUNS + "/{run_id}/cancel", ["POST"], "Error occurred while cancelling the run")
def cancel_run(run_id):
    known_fields(body(), ())
    return services.get().runs.cancel(caller(), run_id)


@route(RUNS + "/{run_id}/rerun", ["POST"], "Error occurred while rerunning the notebook")
def rerun(run_id):
    return services.get().runs.rerun(caller(), run_id, RerunRequest.parse(body(), settings()))


@app.route(UI, methods=["GET"], content_types=web.ANY_CONTENT_TYPE)
def dashboard():
    # `/_notebooks/ui` and `/_notebooks/ui/` both come here; the page's links are relative
    # (the API may sit under a stage prefix), so they need the slash.
    if not app.current_request.context.get("path", "").endswith("/"):
        return Response(body="", status_code=302, headers={"Location": "ui/"})
    return dashboard_file(assets.INDEX)


@app.route(UI + "/{name}", methods=["GET"], content_types=web.ANY_CONTENT_TYPE)
def dashboard_file(name):
    page, headers = assets.asset(name, caller())
    return Response(body=page, headers=headers)


@app.route(web.OPENAPI_PATH, methods=["GET"], content_types=web.ANY_CONTENT_TYPE, cors=CORS)
def openapi_document():
    return openapi.document()


@app.lambda_function(name="runner")
def runner(event, context):
    """The runner function: executes runs dispatched by the API and fired by schedules,
    reaps lost runs, and consumes its own failed events (see RunExecutor.handle)."""
    try:
        return services.get().runner_executor().handle(event, getattr(context, "aws_request_id", None))
    except SandboxError:
        # What a run left could not be removed: end this container, and Lambda starts a
        # clean one (the run itself was recorded; a retried event finds it done).
        logging.getLogger(__name__).exception("runner container is unfit for another run")
        os._exit(1)
