"""The notebooks API over HTTP, with the standard library only (urllib).

Every method returns what the API answers, as plain dicts, lists or text. Every failure,
an error answer of the API or a server that cannot be reached, raises `ApiError`; an
answer of another shape than the API's (another server at the URL) raises its subclass
`UnexpectedAnswer`.
"""

import base64
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from typing import Callable, Mapping, NamedTuple, Optional

from . import answers
from .logs import LogFollower

NOTEBOOKS = "/_notebooks/notebooks"
RUNS = "/_notebooks/runs"
# The run statuses that do not change any more.
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# The `module` recorded on the runs this client starts (the API requires one).
MODULE = "notebooks"
# Items asked for per page of a paged list: the API's largest page by default.
PAGE_SIZE = 1000
# Seconds to wait for one HTTP answer (Cancel alone may take 10 s on the server).
REQUEST_TIMEOUT = 60
# Polls in a row that `wait` lets fail (no answer, or a 5xx) before it gives up.
WAIT_FAILURES_TOLERATED = 5
USER_AGENT = "notebooks-client/0.1.0"


class ApiError(Exception):
    """A request that failed: `status` is the HTTP status of the API's error answer (None
    when no answer came: the server could not be reached), `message` says why."""

    def __init__(self, status: Optional[int], message: str):
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.message} (HTTP {self.status})"


class UnexpectedAnswer(ApiError):
    """An answer that is not of the shape the notebooks API answers: the URL is most likely
    not the API's. `status` is the answer's HTTP status; the message says what came."""

    def __str__(self) -> str:
        return self.message


class _Answer(NamedTuple):
    """A successful answer: its decoded body (JSON value, or text) and the API's headers
    (those of the first answer when it was a redirect: `X-Next-Token` is there)."""

    body: object
    headers: Mapping


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects come back as answers: the client follows them itself, without credentials."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class Client:
    """The notebooks API at `url` (e.g. http://127.0.0.1:8000), as `user` with `password`.

    A `url` that is not http(s) raises ValueError; every request's failure raises ApiError.
    """

    def __init__(
        self, url: str, user: str, password: str, page_size: int = PAGE_SIZE, request_timeout: float = REQUEST_TIMEOUT
    ):
        try:
            parts = urllib.parse.urlsplit(url)
        except ValueError as error:  # e.g. "Invalid IPv6 URL"
            raise ValueError(f"invalid URL {url!r}: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.netloc or not url.isprintable() or " " in url:
            raise ValueError(f"invalid URL {url!r}: expected http://HOST[:PORT] or https://HOST[/PATH]")
        if "@" in parts.netloc:  # urllib would take it for part of the host, and say it in errors
            raise ValueError("invalid URL: give the username and password as settings, not in the URL")
        self.url = url.rstrip("/")
        token = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
        self._authorization = f"Basic {token}"
        self._page_size = page_size
        self._request_timeout = request_timeout

    # Notebooks

    def create(self, content: Optional[dict] = None, name: Optional[str] = None) -> dict:
        """Create a notebook from `content` (an nbformat v4 notebook; omitted: an empty
        one) named `name` (omitted: the API names it); the API's answer, `notebook_id` in it."""
        body = {key: value for key, value in (("notebook_name", name), ("content", content)) if value is not None}
        return self._call("POST", NOTEBOOKS, answers.CREATED, body).body

    def list_notebooks(self) -> list:
        """All of the caller's notebooks, oldest first (every page, followed)."""
        return self._all_pages(NOTEBOOKS + "/_all", {}, answers.NOTEBOOKS)

    def get_notebook(self, notebook_id: str) -> dict:
        """One notebook's details."""
        return self._call("GET", f"{NOTEBOOKS}/{_quoted(notebook_id)}", answers.NOTEBOOK).body

    def delete(self, notebook_ids: list) -> None:
        """Delete these notebooks with their schedules, runs and outputs."""
        self._call("DELETE", NOTEBOOKS, answers.SUCCESS, {"nbk_ids": list(notebook_ids)})

    def parameters(self, notebook_id: str) -> list:
        """What the notebook's `parameters` cell declares: [{"name", "type", "default", "help"}]."""
        return self._call("GET", f"{NOTEBOOKS}/{_quoted(notebook_id)}/parameters", answers.PARAMETERS).body[
            "parameters"
        ]

    def schedule(
        self,
        notebook_ids: list,
        until: str,
        time_of_day: Optional[str] = None,
        period: Optional[str] = None,
        timezone: Optional[str] = None,
        parameters: Optional[dict] = None,
    ) -> None:
        """Run these notebooks at `time_of_day` ("HH:MM"; omitted: the time in `until`) on
        `period` (a weekday; omitted: every day) until `until` ("YYYY-MM-DD HH:MM"), in
        `timezone` (an IANA name; omitted: the deployment's), with papermill `parameters`."""
        optional = {"time": time_of_day, "period": period, "timezone": timezone, "parameters": parameters}
        body = {
            "nbk_ids": list(notebook_ids),
            "until": until,
            **{key: value for key, value in optional.items() if value is not None},
        }
        self._call("POST", NOTEBOOKS + "/_schedule", answers.SUCCESS, body)

    def unschedule(self, notebook_ids: list) -> None:
        """Remove the schedules of these notebooks."""
        self._call("POST", NOTEBOOKS + "/_unschedule", answers.SUCCESS, {"nbk_ids": list(notebook_ids)})

    # Runs

    def run(
        self,
        notebook_id: str,
        parameters: Optional[dict] = None,
        timeout: Optional[float] = None,
        wait: bool = False,
        on_log: Optional[Callable[[str], None]] = None,
        poll_seconds: float = 1.0,
    ) -> dict:
        """Run the notebook with papermill `parameters`, stopped after `timeout` seconds
        (omitted: the deployment's default). Without `wait`: {"run_id", "notebook_id",
        "status"} as the run starts; with it, the run object once the run has ended (see
        `wait`)."""
        body = {"nbkIds": [notebook_id], "module": MODULE, "parameters": parameters or {}}
        if timeout is not None:
            body["timeout"] = timeout
        [started] = self._call("POST", NOTEBOOKS + "/_run", answers.ONE_STARTED, body).body["runs"]
        return self.wait(started["run_id"], on_log, poll_seconds) if wait else started

    def wait(self, run_id: str, on_log: Optional[Callable[[str], None]] = None, poll_seconds: float = 1.0) -> dict:
        """The run object once the run has ended (succeeded, failed or cancelled), polled
        every `poll_seconds`; `on_log`, if given, is called with each new piece of its log
        (see notebooks_client.logs): once the run has ended, what it was given ends with
        what the run's stored log ends with, past the server's cap on a log's size too.

        Up to WAIT_FAILURES_TOLERATED polls in a row may fail for want of an answer or
        with a 5xx (a restarting server, a dropped connection): the run goes on meanwhile."""
        follower, failures = LogFollower(on_log) if on_log is not None else None, 0
        while True:
            try:
                run = self.get_run(run_id)
                log = self.log(run_id) if on_log is not None else ""  # after the status: the last one is whole
            except ApiError as error:
                failures += 1
                if failures > WAIT_FAILURES_TOLERATED or (error.status is not None and error.status < 500):
                    raise
                time.sleep(poll_seconds)
                continue
            failures = 0
            if follower is not None:
                follower.update(log)
            if run["status"] in FINAL_STATUSES:
                return run
            time.sleep(poll_seconds)

    def list_runs(
        self, notebook_id: Optional[str] = None, status: Optional[str] = None, limit: Optional[int] = None
    ) -> list:
        """Runs newest first, all of them or those of one notebook (an empty id raises
        ValueError), of one status; the first `limit` of them (omitted: all; pages are read
        only as far as they are needed).

        A server without the list of all runs (GET /_notebooks/runs) answers 404; then one
        notebook's runs come from that notebook's list, filtered by status here."""
        if notebook_id is not None:
            _quoted(notebook_id)  # an empty one raises ValueError
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be 1 or more (None: all), not {limit!r}")
        query = {key: value for key, value in (("notebook_id", notebook_id), ("status", status)) if value}
        try:
            return self._all_pages(RUNS, query, answers.RUNS, limit)
        except ApiError as error:
            if not _is_missing_route(error):
                raise
            if not notebook_id:
                raise ApiError(error.status, "this server lists runs by notebook only: give a notebook id") from None
        return self._all_pages(
            f"{NOTEBOOKS}/{_quoted(notebook_id)}/runs",
            {},
            answers.RUNS,
            limit,
            keep=lambda run: not status or run["status"] == status,
        )

    def get_run(self, run_id: str) -> dict:
        """The run object: status, progress, error, parameters, times."""
        return self._call("GET", f"{RUNS}/{_quoted(run_id)}", answers.RUN).body

    def log(self, run_id: str) -> str:
        """The run's log so far: its stream output and error tracebacks."""
        return self._call("GET", f"{RUNS}/{_quoted(run_id)}/log", answers.LOG).body

    def cancel(self, run_id: str) -> dict:
        """Cancel a queued or running run; the run object as it is then."""
        return self._call("POST", f"{RUNS}/{_quoted(run_id)}/cancel", answers.RUN).body

    def rerun(self, run_id: str, parameters: Optional[dict] = None) -> dict:
        """Run the notebook version of a past run again, its parameters updated with
        `parameters`; {"run_id", "notebook_id", "status"} of the new run."""
        body = {"parameters": parameters} if parameters else None
        [started] = self._call("POST", f"{RUNS}/{_quoted(run_id)}/rerun", answers.ONE_STARTED, body).body["runs"]
        return started

    def output(self, run_id: str) -> dict:
        """The executed notebook (nbformat JSON as a dict)."""
        return self._call("GET", f"{RUNS}/{_quoted(run_id)}/output", answers.EXECUTED).body

    def output_html(self, run_id: str) -> str:
        """The executed notebook rendered as an HTML page."""
        return self._call("GET", f"{RUNS}/{_quoted(run_id)}/output", answers.HTML, query={"format": "html"}).body

    # HTTP

    def _all_pages(
        self,
        path: str,
        query: dict,
        shape: answers.Shape,
        limit: Optional[int] = None,
        keep: Optional[Callable[[dict], bool]] = None,
    ) -> list:
        """The items of a paged list (each page fitting `shape`) that `keep` keeps (omitted:
        all), following `X-Next-Token` from page to page: every one, or the first `limit`."""
        items, next_token, tokens_seen = [], None, set()
        while True:
            size = self._page_size if limit is None or keep else min(self._page_size, limit - len(items))
            page_query = {**query, "limit": size, **({"next_token": next_token} if next_token else {})}
            answer = self._call("GET", path, shape, query=page_query)
            items.extend(item for item in answer.body if keep is None or keep(item))
            next_token = answer.headers.get("X-Next-Token")
            if limit is not None and len(items) >= limit:
                return items[:limit]
            if not next_token:
                return items
            if next_token in tokens_seen:  # a page seen before: following the links would never end
                raise UnexpectedAnswer(
                    200, f"unexpected answer from {self.url}: not the notebooks API? (GET {path} links back to a page)"
                )
            tokens_seen.add(next_token)

    def _call(self, method: str, path: str, shape: answers.Shape, body=None, query: Optional[dict] = None) -> _Answer:
        """One API request, whose successful answer must fit `shape`; a `303 See Other` is
        followed (a GET, without credentials: the link carries its own signature). An error
        body is raised as ApiError, even under HTTP 200 (the seed's "No notebooks deleted");
        an answer of another shape than `shape`, as UnexpectedAnswer."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Authorization": self._authorization, "User-Agent": USER_AGENT}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        status, api_headers, payload = self._send(urllib.request.Request(url, data, headers, method=method))
        if status == 303 and api_headers.get("Location"):
            target = urllib.parse.urljoin(url, api_headers["Location"])
            if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
                raise ApiError(None, f"the server sent a download link that is not http(s): {_origin(target)}")
            status, _, payload = self._send(urllib.request.Request(target, headers={"User-Agent": USER_AGENT}))
        if status >= 300:
            raise ApiError(
                status,
                _seed_error(payload.json) or _gateway_error(payload.json) or f"unexpected answer to {method} {path}",
            )
        message = _seed_error(payload.json)
        if message is not None:
            raise ApiError(status, message)
        value = payload.text if shape.content_type else payload.json
        typed = payload.content_type == shape.content_type if shape.content_type else payload.is_json
        if not (typed and shape.fits(value)):
            raise UnexpectedAnswer(
                status,
                f"unexpected answer from {self.url}: not the notebooks API? ({method} {path} answered "
                f"HTTP {status} {payload.content_type}, not {shape.expected})",
            )
        return _Answer(value, api_headers)

    def _send(self, request: urllib.request.Request) -> tuple:
        """(status, headers, _Payload) of one HTTP exchange; ApiError(None, ...) when none."""
        try:
            try:
                response = _OPENER.open(request, timeout=self._request_timeout)
            except urllib.error.HTTPError as error:  # an answer all the same: 3xx, 4xx, 5xx
                response = error
            with response:  # the body is read here, where its failure is caught below
                return response.status, response.headers, _Payload(response.headers, response.read())
        except urllib.error.URLError as error:
            raise ApiError(None, f"cannot reach {_origin(request.full_url)}: {_reason(error.reason)}") from None
        except (socket.timeout, TimeoutError):
            raise ApiError(
                None, f"no answer from {_origin(request.full_url)} within {self._request_timeout:g} s"
            ) from None
        except (OSError, HTTPException) as error:
            raise ApiError(None, f"cannot reach {_origin(request.full_url)}: {_reason(error)}") from None


class _Payload:
    """An answer's body: its text, and its JSON value when it is JSON."""

    def __init__(self, headers, raw: bytes):
        try:
            self.text = raw.decode(headers.get_content_charset() or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know: read it as UTF-8
            self.text = raw.decode("utf-8", errors="replace")
        self.content_type = headers.get_content_type()  # S3 serves notebooks as application/x-ipynb+json
        self.is_json = self.content_type == "application/json" or self.content_type.endswith("+json")
        self.json = None
        if self.is_json:
            try:
                self.json = json.loads(self.text)
            except (ValueError, RecursionError):  # RecursionError: nested deeper than Python reads
                self.is_json = False


def _seed_error(value) -> Optional[str]:
    """The message of the API's error body `{"error": {"status", "message"}}`, else None."""
    if isinstance(value, dict) and isinstance(value.get("error"), dict) and "message" in value["error"]:
        return str(value["error"]["message"])
    return None


def _gateway_error(value) -> Optional[str]:
    """The message of API Gateway's own error body `{"message"}`, else None."""
    if isinstance(value, dict) and set(value) == {"message"}:
        return str(value["message"])
    return None


def _is_missing_route(error: ApiError) -> bool:
    """Whether the server has no such route: a 404, or API Gateway's 403 for it."""
    return error.status == 404 or (error.status == 403 and error.message == "Missing Authentication Token")


def _quoted(identifier: str) -> str:
    """An id as one path segment, whatever it holds: `/`, `?`, `#` and `%` percent-encoded,
    and `.` too, so that `..` is no segment a server or proxy would resolve. An empty id
    (it would name another route) raises ValueError."""
    if not identifier:
        raise ValueError("an id cannot be empty")
    return urllib.parse.quote(identifier, safe="").replace(".", "%2E")


def _origin(url: str) -> str:
    """Scheme, host and port of a URL (a presigned link's signature left out)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _reason(reason) -> str:
    """A short cause: `Connection refused`, not `[Errno 111] Connection refused`."""
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
