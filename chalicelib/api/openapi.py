"""The OpenAPI 3 document of the whole API, served without credentials."""

from chalicelib.common.model import FINAL, Engine, RunStatus, Trigger

_ERROR = {"$ref": "#/components/schemas/Error"}
_IDS = {"type": "array", "items": {"type": "string", "format": "uuid"}, "maxItems": 1000}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _operation(summary: str, ok: dict, body: dict | None = None, errors=(400,)) -> dict:
    responses = {
        "200": {"description": "OK", **_json(ok)},
        "401": {"description": "Authentication required", **_json(_ERROR)},
        "429": {"description": "Too many failed logins (header Retry-After)", **_json(_ERROR)},
        "503": {"description": "Storage unavailable: try again", **_json(_ERROR)},
    }
    responses.update({str(code): {"description": "Error", **_json(_ERROR)} for code in errors})
    operation = {"summary": summary, "responses": responses}
    if body is not None:
        # A field the body does not define is a 400 naming it; a body not labelled JSON, a 415.
        operation["requestBody"] = {"required": False, **_json(_closed(body))}
        responses["415"] = {"description": "Content-Type must be application/json", **_json(_ERROR)}
    return operation


def _closed(schema: dict) -> dict:
    """An object schema that refuses fields it does not define (a notebook's fields are
    nbformat's schema's to check)."""
    if schema.get("type") != "object" or "properties" not in schema:
        return schema
    return {**schema, "additionalProperties": False}


def _redirected(operation: dict) -> dict:
    """An answer that, past Lambda's 6 MB, is a 303 to the same content in S3."""
    return {
        **operation,
        "responses": {
            **operation["responses"],
            "303": {
                "description": "Over Lambda's 6 MB response limit: the same content at a 5-minute S3 link in Location"
            },
        },
    }


def _paged(operation: dict) -> dict:
    """An array answer with `limit`/`next_token` paging, redirected when too large."""
    responses = _redirected(operation)["responses"]
    responses["200"] = {**responses["200"], "headers": {"X-Next-Token": {"schema": {"type": "string"}}}}
    return {
        **operation,
        "responses": responses,
        "parameters": [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            {"name": "next_token", "in": "query", "schema": {"type": "string"}},
        ],
    }


def _text(operation: dict, description: str) -> dict:
    """`operation` answering text/plain."""
    ok = {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {**operation, "responses": {**operation["responses"], "200": ok}}


def _path_id(name: str) -> list:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]


def document() -> dict:
    """The OpenAPI document."""
    word = {"type": "string", "example": "Success"}
    notebook = {"$ref": "#/components/schemas/Notebook"}
    run = {"$ref": "#/components/schemas/Run"}
    ipynb = {"type": "object", "description": "An nbformat v4 notebook"}
    schedule_body = {
        "type": "object",
        "required": ["nbk_ids", "until"],
        "properties": {
            "nbk_ids": _IDS,
            "until": {"type": "string", "example": "2030-12-13 06:50"},
            "period": {"type": "string", "example": "Monday"},
            "time": {"type": "string", "example": "06:50"},
            "timezone": {
                "type": "string",
                "example": "Europe/London",
                "description": "IANA zone that period, time "
                "and until are wall-clock in, all year (default NOTEBOOKS_TIMEZONE, else UTC)",
            },
            "parameters": {
                "type": "object",
                "description": "papermill parameters for every run the schedule fires, checked as a Run's are",
            },
        },
    }
    ids_body = {"type": "object", "required": ["nbk_ids"], "properties": {"nbk_ids": _IDS}}
    run_body: dict = {
        "type": "object",
        "required": ["nbkIds", "module"],
        "properties": {
            "nbkIds": _IDS,
            "nbk_ids": {**_IDS, "description": "taken for nbkIds when nbkIds is not given"},
            "module": {"type": "string"},
            "parameters": {
                "type": "object",
                "description": "papermill parameters, checked against the "
                "notebook's parameters cell (unknown names and ill-typed values: 400); at most "
                "NOTEBOOKS_MAX_PARAMETERS_BYTES (64 KiB) as JSON",
            },
            "client_token": {
                "type": "string",
                "maxLength": 255,
                "description": "the same token again (24 h) creates no new runs",
            },
            "timeout": {
                "type": "number",
                "minimum": 0.001,
                "description": (
                    "seconds; default NOTEBOOKS_RUN_TIMEOUT (840). Up to 840 a run executes on Lambda; beyond, "
                    "on ECS Fargate, up to NOTEBOOKS_MAX_RUN_TIMEOUT (43200) where the deployment has Fargate"
                ),
            },
        },
    }
    runs_across = _paged(
        _operation(
            "The caller's runs across notebooks, newest first (100 without limit)", {"type": "array", "items": run}
        )
    )
    runs_across["parameters"] = runs_across["parameters"] + [
        {
            "name": "status",
            "in": "query",
            "schema": {"type": "string", "enum": list(RunStatus)},
        },
        {"name": "notebook_id", "in": "query", "schema": {"type": "string"}},
    ]
    runs_started = {
        "type": "object",
        "properties": {
            "runs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {k: {"type": "string"} for k in ("run_id", "notebook_id", "status")},
                },
            }
        },
    }
    webhook: dict = {
        "type": "object",
        "properties": {
            "url": {
                "type": "string",
                "maxLength": 2048,
                "description": "https; not resolving to a loopback, private, "
                "link-local or otherwise non-public address (the local stack also takes http://127.0.0.1 and "
                "http://localhost)",
            },
            "events": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": list(FINAL)},
            },
        },
    }
    webhook_body = {
        **webhook,
        "required": ["url", "secret", "events"],
        "properties": {
            **webhook["properties"],
            "secret": {
                "type": "string",
                "minLength": 1,
                "maxLength": 256,
                "description": "HMAC-SHA256 key of X-Notebooks-Signature; never shown",
            },
        },
    }
    nb = "/_notebooks/notebooks"
    paths = {
        nb: {
            "post": _operation(
                "Create a notebook",
                {
                    "type": "object",
                    "properties": {k: {"type": "string"} for k in ("username", "notebook_name", "path", "notebook_id")},
                },
                {"type": "object", "properties": {"notebook_name": {"type": "string"}, "content": ipynb}},
                errors=(400, 409, 413),
            ),
            # The seed answers "No notebooks deleted" as an error body with status 200.
            "delete": _operation("Delete notebooks", {"oneOf": [word, _ERROR]}, ids_body),
            "put": _operation("Rename without an id: always 400 `Notebook ID is missing`", _ERROR, {"type": "object"}),
        },
        nb + "/_all": {
            "get": _paged(_operation("List the caller's notebooks, oldest first", {"type": "array", "items": notebook}))
        },
        nb + "/_count": {"get": _operation("Count the caller's notebooks", {"type": "object"})},
        nb + "/_run": {
            m: {
                **_operation("Run notebooks now", runs_started, run_body, errors=(400, 409, 429)),
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 255},
                    }
                ],
            }
            for m in ("get", "post")
        },
        nb + "/_schedule": {
            m: _operation("Schedule notebooks weekly or daily", word, schedule_body) for m in ("get", "post")
        },
        nb + "/_unschedule": {m: _operation("Unschedule notebooks", word, ids_body) for m in ("get", "post")},
        nb + "/{notebook_id}": {
            "parameters": _path_id("notebook_id"),
            "get": _operation("Fetch a notebook", notebook),
            "put": _operation(
                "Rename a notebook",
                {"type": "string", "example": "Rename Successful"},
                {"type": "object", "properties": {"new_name": {"type": "string"}}},
                errors=(400, 409),
            ),
        },
        nb + "/{notebook_id}/content": {
            "parameters": _path_id("notebook_id"),
            "get": _operation("The notebook file", ipynb),
            "put": _operation("Replace the notebook file", word, ipynb, errors=(400, 413)),
        },
        nb + "/{notebook_id}/parameters": {
            "parameters": _path_id("notebook_id"),
            "get": _operation(
                "What the notebook's parameters cell declares (papermill's inspect_notebook)",
                {
                    "type": "object",
                    "properties": {
                        "parameters": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {k: {"type": "string"} for k in ("name", "type", "default", "help")},
                            },
                        }
                    },
                },
            ),
        },
        nb + "/{notebook_id}/runs": {
            "parameters": _path_id("notebook_id"),
            "get": _paged(_operation("The notebook's runs, newest first", {"type": "array", "items": run})),
        },
        "/_notebooks/runs": {"get": runs_across},
        "/_notebooks/runs/{run_id}": {
            "parameters": _path_id("run_id"),
            "get": _operation("One run", run, errors=(404,)),
        },
        "/_notebooks/runs/{run_id}/output": {
            "parameters": _path_id("run_id")
            + [{"name": "format", "in": "query", "schema": {"type": "string", "enum": ["ipynb", "html"]}}],
            "get": _redirected(
                _operation("The executed notebook (format=html: a rendered page)", ipynb, errors=(400, 404, 413))
            ),
        },
        "/_notebooks/runs/{run_id}/rerun": {
            "parameters": _path_id("run_id"),
            "post": _operation(
                "A new run of the same notebook version, its parameters merged over the run's",
                runs_started,
                {
                    "type": "object",
                    "properties": {"parameters": {"type": "object"}, "timeout": run_body["properties"]["timeout"]},
                },
                errors=(400, 404, 409, 429),
            ),
        },
        nb + "/{notebook_id}/webhook": {
            "parameters": _path_id("notebook_id"),
            "put": _operation(
                "Set the notebook's webhook: at each run end among `events`, the run object is "
                "POSTed as JSON to `url`, signed (X-Notebooks-Signature: sha256=HMAC of the body), "
                "with X-Notebooks-Event and X-Notebooks-Delivery; up to 4 attempts",
                webhook,
                webhook_body,
            ),
            "get": _operation("The notebook's webhook, without its secret", webhook, errors=(400, 404)),
            "delete": _operation("Remove the notebook's webhook (none: succeeds too)", word),
        },
        "/_notebooks/runs/{run_id}/log": {
            "parameters": _path_id("run_id"),
            "get": _redirected(
                _text(
                    _operation(
                        "The run's stream output and error tracebacks so far, in cell order "
                        "(at most ~2 s old while it runs; empty while queued; at most "
                        "NOTEBOOKS_MAX_LOG_BYTES, cut in the middle with a marker)",
                        {"type": "string"},
                        errors=(404,),
                    ),
                    "The log, as text",
                )
            ),
        },
        "/_notebooks/runs/{run_id}/cancel": {
            "parameters": _path_id("run_id"),
            "post": _operation("Cancel a queued or running run; the run as it is then", run, errors=(404, 409)),
        },
    }
    nullable_int = {"type": "integer", "nullable": True}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Notebooks API",
            "version": "1.0.0",
            "description": "Jupyter notebooks as jobs: create, run now, schedule, read outputs.",
        },
        "security": [{"basic": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
                        }
                    },
                },
                "Notebook": {
                    "type": "object",
                    "properties": {
                        "notebook_id": {"type": "string", "format": "uuid"},
                        "notebook_name": {"type": "string"},
                        "status": {"type": "string", "enum": ["Scheduled", "Not Scheduled"]},
                        "schedule": {
                            "type": "object",
                            "properties": {
                                **{k: {"type": "string", "nullable": True} for k in ("period", "until", "time")},
                                "timezone": {
                                    "type": "string",
                                    "nullable": True,
                                    "description": "Fetch of a scheduled notebook only; null: stored before zones",
                                },
                                "next_run": {
                                    "type": "integer",
                                    "nullable": True,
                                    "description": "Fetch of a scheduled "
                                    "notebook only: epoch ms of the next occurrence; null: none before until",
                                },
                                "parameters": {
                                    "type": "object",
                                    "description": "Fetch of a scheduled notebook only: its firings' parameters",
                                },
                            },
                        },
                        "created_at": {"type": "integer"},
                        "updated_at": {"type": "integer"},
                        "created_by": {"type": "string"},
                        "updated_by": {"type": "string"},
                        "no_of_runs": {"type": "integer"},
                        "last_run": {"description": 'epoch ms; null (Fetch) or "-" (List) when never run'},
                        "attributes": {"type": "object", "properties": {"path": {"type": "string"}}},
                    },
                },
                "Run": {
                    "type": "object",
                    "properties": {
                        "run_id": {"type": "string"},
                        "notebook_id": {"type": "string"},
                        "status": {"type": "string", "enum": list(RunStatus)},
                        "trigger": {"type": "string", "enum": list(Trigger)},
                        "module": {"type": "string", "nullable": True},
                        "parameters": {"type": "object"},
                        "created_at": {"type": "integer"},
                        "started_at": nullable_int,
                        "finished_at": nullable_int,
                        "progress": {
                            "type": "object",
                            "properties": {"done": {"type": "integer"}, "total": {"type": "integer"}},
                        },
                        "error": {
                            "type": "object",
                            "nullable": True,
                            "properties": {
                                "cell_index": nullable_int,
                                "ename": {"type": "string"},
                                "evalue": {"type": "string"},
                            },
                        },
                        "notebook_version": {
                            "type": "string",
                            "nullable": True,
                            "description": "the notebook content the run executes (opaque)",
                        },
                        "engine": {"type": "string", "enum": list(Engine), "nullable": True},
                        "timeout": {"type": "number", "nullable": True, "description": "seconds"},
                        "current_cell": {
                            **nullable_int,
                            "description": "index of the cell executing; null unless running",
                        },
                        "webhook": {
                            "type": "object",
                            "nullable": True,
                            "properties": {
                                "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                                "attempts": {"type": "integer"},
                            },
                        },
                    },
                },
            },
        },
    }
