"""Request bodies as typed requests: each body is parsed once, here at the edge, into the
dataclass its service takes whole.

Every field is checked in the order the API has always checked it (api/payloads.py holds
the checks of single fields), after a field the body does not define is refused with a
400 naming it. Checks that need stored state (a notebook's declared parameters, whether
an id is the caller's) or the clock (a schedule's `until`) stay with the services; so
does a notebook's own validation (nbformat's, which also refuses unknown top-level
fields) and a webhook's url (resolved when set, with the resolver the service holds).
"""

from dataclasses import dataclass, field
from typing import Optional

from chalicelib.api import payloads
from chalicelib.api.errors import cut
from chalicelib.common.config import Settings
from chalicelib.common.errors import NOTEBOOK_IDS_REQUIRED, RUN_IDS_REQUIRED, InvalidInput

# The fields of each body; the seed's own first (Run's sample sends `nbkIds` and
# `module`; `nbk_ids` is also taken there, as in every other body).
RUN_FIELDS = ("nbkIds", "nbk_ids", "module", "parameters", "timeout", "client_token")
RERUN_FIELDS = ("parameters", "timeout")
SCHEDULE_FIELDS = ("nbk_ids", "until", "period", "time", "timezone", "parameters")
IDS_FIELDS = ("nbk_ids",)
CREATE_FIELDS = ("notebook_name", "content")
RENAME_FIELDS = ("new_name",)
WEBHOOK_FIELDS = ("url", "secret", "events")


def known_fields(body: dict, fields: tuple) -> dict:
    """`body`, if every field in it is one of `fields`; else a 400 naming the first that
    is not (a typo such as `paramters` would otherwise be ignored silently)."""
    for name in body:
        if name not in fields:
            takes = ", ".join(fields) or "no fields"
            raise InvalidInput(f"Unknown field: {cut(name, 100)} (this request takes {takes})", field=name)
    return body


def run_timeout(body: dict, settings: Settings) -> float:
    """A run's `timeout` in `body`: the deployment's run timeout by default, at most the
    longest its engines take."""
    longest = settings.longest_run()
    why = (
        " (longer runs need ECS Fargate, which this deployment has not set up)"
        if longest < settings.max_run_timeout
        else ""
    )
    return payloads.timeout(body, settings.run_timeout, longest, why)


@dataclass(frozen=True)
class RunRequest:
    """Run: start `ids` (in order, without repeats) with `module`, `parameters`, `timeout`
    seconds; `client_token` (header `Idempotency-Key`, else the body's) makes it once."""

    ids: list
    module: str
    parameters: dict
    timeout: float
    client_token: Optional[str] = None

    @classmethod
    def parse(cls, body: dict, idempotency_key, settings: Settings) -> "RunRequest":
        """The Run request in `body` and the `Idempotency-Key` header."""
        known_fields(body, RUN_FIELDS)
        ids_field = "nbk_ids" if "nbkIds" not in body and "nbk_ids" in body else "nbkIds"
        return cls(
            ids=payloads.id_list(body, ids_field, RUN_IDS_REQUIRED, settings.max_ids),
            module=payloads.module_name(body),
            parameters=payloads.parameters(body, settings.max_parameters_bytes),
            timeout=run_timeout(body, settings),
            client_token=payloads.client_token(body, idempotency_key),
        )


@dataclass(frozen=True)
class RerunRequest:
    """Rerun: `parameters` merged over the run's; `timeout` (None: the run's own)."""

    parameters: dict = field(default_factory=dict)
    timeout: Optional[float] = None

    @classmethod
    def parse(cls, body: dict, settings: Settings) -> "RerunRequest":
        """The rerun request in `body`."""
        known_fields(body, RERUN_FIELDS)
        parameters = payloads.parameters(body, settings.max_parameters_bytes)
        timeout = run_timeout(body, settings) if body.get("timeout") is not None else None
        return cls(parameters=parameters, timeout=timeout)


@dataclass(frozen=True)
class ScheduleRequest:
    """Schedule `ids` until `until`, on `period` (a weekday; None: daily) at `time`, in
    `timezone`, each firing with `parameters` (None: none given). The schedule fields are
    checked by the scheduler (schedules/cron.py), which knows the time now."""

    ids: list
    until: object = None
    period: object = None
    time: object = None
    timezone: object = None
    parameters: Optional[dict] = None

    @classmethod
    def parse(cls, body: dict, settings: Settings) -> "ScheduleRequest":
        """The Schedule request in `body`."""
        known_fields(body, SCHEDULE_FIELDS)
        ids = payloads.id_list(body, "nbk_ids", NOTEBOOK_IDS_REQUIRED, settings.max_ids)
        parameters = (
            payloads.parameters(body, settings.max_parameters_bytes) if body.get("parameters") is not None else None
        )
        return cls(ids, body.get("until"), body.get("period"), body.get("time"), body.get("timezone"), parameters)

    def schedule_fields(self) -> dict:
        """The fields cron.parse_schedule reads."""
        return {"until": self.until, "period": self.period, "time": self.time, "timezone": self.timezone}


@dataclass(frozen=True)
class IdsRequest:
    """Delete and Unschedule: the notebooks `ids` (in order, without repeats)."""

    ids: list

    @classmethod
    def parse(cls, body: dict, settings: Settings) -> "IdsRequest":
        """The list of notebooks in `body`."""
        known_fields(body, IDS_FIELDS)
        return cls(payloads.id_list(body, "nbk_ids", NOTEBOOK_IDS_REQUIRED, settings.max_ids))


@dataclass(frozen=True)
class CreateRequest:
    """Create: an optional name (checked, `.ipynb` appended) and content (a notebook,
    checked by the notebook service; None: an empty notebook)."""

    notebook_name: Optional[str] = None
    content: object = None

    @classmethod
    def parse(cls, body: dict) -> "CreateRequest":
        """The Create request in `body`."""
        known_fields(body, CREATE_FIELDS)
        name = body.get("notebook_name")
        if name is not None:
            name = payloads.notebook_name(name, field="notebook_name")
        return cls(name, body.get("content"))


@dataclass(frozen=True)
class RenameRequest:
    """Rename: the checked `new_name`, `.ipynb` appended."""

    new_name: str

    @classmethod
    def parse(cls, body: dict) -> "RenameRequest":
        """The Rename request in `body`."""
        known_fields(body, RENAME_FIELDS)
        return cls(payloads.notebook_name(body.get("new_name")))


@dataclass(frozen=True)
class ContentRequest:
    """A content write: the body is the notebook itself."""

    notebook: dict

    @classmethod
    def parse(cls, body: dict) -> "ContentRequest":
        """The notebook in `body` (its fields are nbformat's to check)."""
        return cls(body)


@dataclass(frozen=True)
class WebhookRequest:
    """A webhook to set: `url`, `secret`, `events`, as sent (the webhooks service checks
    them, the url against what its host resolves to)."""

    url: object = None
    secret: object = None
    events: object = None

    @classmethod
    def parse(cls, body: dict) -> "WebhookRequest":
        """The webhook in `body`."""
        known_fields(body, WEBHOOK_FIELDS)
        return cls(body.get("url"), body.get("secret"), body.get("events"))
