"""The web dashboard (/_notebooks/ui/): its routes, and the whole workflow in headless
Chromium (Debian's, driven by Playwright) against a real local stack.

`make test` installs Chromium first (`make browser`). With DASHBOARD_SCREENSHOTS=<folder>,
the browser test also saves a screenshot of each page state there.
"""

import json
import os
import re

import pytest
import requests

from chalicelib.dashboard import assets
from devstack.stack import free_port
from tests.conftest import error
from tests.local_stack import ADMIN, BASE, RunningStack, code_notebook, remove_state, state_folder

UI = "/_notebooks/ui"
CHROMIUM = "/usr/bin/chromium"
# What works in a container as root: no sandbox, no GPU, nothing fetched from elsewhere.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 120_000  # a run on the local stack starts a kernel: seconds, more on a busy machine


# --- The routes (Chalice's test client) ---------------------------------------------


@pytest.mark.parametrize("name", sorted(assets.ASSETS))
def test_each_file_is_served_with_its_type_and_the_strict_policy(api, name):
    response = api.call("GET", f"{UI}/{name}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == assets.ASSETS[name]
    policy = response.headers["Content-Security-Policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in policy.split("; "), directive
    assert "unsafe" not in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_index_names_the_caller_and_has_no_inline_script_or_style(api):
    page = api.call("GET", UI + "/", user="bob").body.decode()
    assert '<meta name="notebooks-user" content="bob">' in page
    assert "{{user}}" not in page
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", page, re.S)
    assert scripts == [""], "every script is a file"
    assert "<style" not in page and " style=" not in page and not re.search(r"\son[a-z]+=", page)


def test_the_index_escapes_the_username():
    page, _ = assets.asset(assets.INDEX, 'a"><script>x</script>')
    assert 'content="a&quot;&gt;&lt;script&gt;x&lt;/script&gt;"' in page
    assert "<script>x" not in page


def test_without_the_slash_the_page_redirects_to_it(api):
    response = api.call("GET", UI)
    assert response.status_code == 302 and response.headers["Location"] == "ui/"


@pytest.mark.parametrize("name", ["secret.py", "assets.py", "..", "%2e%2e%2fassets.py", "INDEX.HTML", "app.js.map"])
def test_a_name_not_in_the_list_is_a_404_in_the_seed_shape(api, name):
    response = api.call("GET", f"{UI}/{name}")
    assert error(response) == (404, "Not found")


@pytest.mark.parametrize("path", [UI + "/", UI + "/app.js"])
def test_other_methods_are_405_in_the_seed_shape(api, path):
    response = api.call("POST", path, {})
    assert error(response)[0] == 405


@pytest.mark.parametrize("path", [UI, UI + "/", UI + "/app.js", UI + "/nothing"])
def test_the_dashboard_needs_credentials(api, path):
    for user in (None, "nobody"):
        headers = {} if user is None else {"Authorization": "Basic bm9ib2R5Om5vcGU="}
        response = api.call("GET", path, user=None, headers=headers)
        assert error(response) == (401, "Authentication required")
        assert response.headers["WWW-Authenticate"] == 'Basic realm="notebooks"'


def test_outputs_may_be_framed_by_the_api_origin_only_and_still_run_no_script():
    from chalicelib.runs import html

    policy = html.CONTENT_SECURITY_POLICY.split("; ")
    assert "frame-ancestors 'self'" in policy and "sandbox" in policy
    assert not any(directive.startswith(("script-src", "default-src 'self'")) for directive in policy)
    assert "default-src 'none'" in policy


# --- The workflow in Chromium --------------------------------------------------------

REPORT = code_notebook(
    "import time\nfor step in range(n):\n    print(f'step {step} of {label}', flush=True)\n    time.sleep(pause)\n",
    "print('verbose' if verbose else 'quiet', n * 2)\n"
    "print('flag is truthy' if flag else 'flag is falsy', repr(nothing), repr(os2))",
)
REPORT["cells"].insert(
    0,
    {
        "cell_type": "code",
        "id": "params",
        "metadata": {"tags": ["parameters"]},
        "execution_count": None,
        "outputs": [],
        "source": "from typing import Optional\n"
        'label: str = "plain"\nn: int = 1\npause: float = 0.0\nverbose: bool = False\n'
        "flag = True\nnothing = 0\nos2: Optional[str] = None",
    },
)
LABEL = "<b>from the form</b> & more"
# A name a page that wrote HTML would run (a CSP violation at least): shown as text.
NAME = "<img src=x onerror=alert(1)> report.ipynb"


def running_stack(**env):
    state = state_folder()
    stack = RunningStack(state, free_port(), **env).started()
    try:
        yield stack
    finally:
        stack.interrupt()
        remove_state(state)


@pytest.fixture(scope="module")
def ui_stack():
    yield from running_stack()


@pytest.fixture
def small_responses_stack():
    """A stack whose responses are capped at 6,000 bytes (4 KB of it Lambda's envelope)."""
    yield from running_stack(NOTEBOOKS_MAX_RESPONSE_BYTES="6000")


@pytest.fixture(scope="module")
def chromium():
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: `make browser` installs it (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright's own browsers cannot be downloaded here: Debian's Chromium, with a
        # fresh profile of Playwright's making.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def signed_in(browser):
    """A browser context that answers the Basic prompt as admin, as a user would, once for the
    whole origin."""
    return browser.new_context(
        http_credentials={"username": "admin", "password": "admin"},
        viewport={"width": 1280, "height": 900},
        timezone_id="Europe/Paris",
    )


class Watched:
    """A page whose console errors, uncaught errors and CSP violations are collected."""

    def __init__(self, context):
        context.set_default_timeout(WAIT_MS)
        context.add_init_script(
            "window.__violations = [];"
            "document.addEventListener('securitypolicyviolation', (e) =>"
            " window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        self.page = context.new_page()
        self.problems = []
        self.page.on(
            "console",
            lambda message: message.type == "error" and self.problems.append(f"{message.text} {message.location}"),
        )
        self.page.on("pageerror", lambda failure: self.problems.append(str(failure)))

    def violations(self) -> list:
        return self.page.evaluate("window.__violations")

    def shot(self, name: str) -> None:
        folder = os.environ.get("DASHBOARD_SCREENSHOTS")
        if folder:
            frame = self.page.locator("#output-frame")
            if frame.is_visible():
                # Chromium does not paint an isolated frame out of view: bring it in view first.
                frame.scroll_into_view_if_needed()
                self.page.wait_for_timeout(1000)  # for it to paint: a picture, not a check
            self.page.screenshot(path=os.path.join(folder, f"dashboard-{name}.png"), full_page=True)


@pytest.mark.stack
def test_the_whole_workflow_in_the_dashboard(ui_stack, chromium, tmp_path):
    from playwright.sync_api import expect

    notebook_file = tmp_path / "report.ipynb"
    notebook_file.write_text(json.dumps(REPORT))
    (tmp_path / "other.ipynb").write_text(json.dumps(code_notebook("print(1)")))
    context = signed_in(chromium)
    expect.set_options(timeout=WAIT_MS)
    watched = Watched(context)
    page = watched.page
    try:
        # Log in: the page names the user and lists nothing yet.
        page.goto(ui_stack.url + UI)
        assert page.url == ui_stack.url + UI + "/"
        expect(page.locator("#user")).to_have_text("admin")
        expect(page.locator("#no-notebooks")).to_be_visible()
        watched.shot("1-empty")

        # Upload under a name that is HTML: the notebook is listed and opened, as text, with
        # a form from its parameters (empty fields, the defaults as placeholders).
        page.set_input_files("#upload-file", str(notebook_file))
        page.fill("#upload-name", NAME)
        page.click("#upload-button")
        expect(page.locator("#notebooks tbody tr")).to_have_count(1)
        expect(page.locator("#notebooks tbody tr td").first).to_have_text(NAME)
        expect(page.locator("#detail-name")).to_have_text(NAME)
        assert page.locator("img").count() == 0
        form = page.locator("#run-form")
        assert form.locator("input[name=label]").get_attribute("type") == "text"
        assert form.locator("input[name=n]").get_attribute("type") == "number"
        assert form.locator("input[name=pause]").get_attribute("type") == "number"
        assert form.locator("[name=verbose]").evaluate("e => e.tagName") == "SELECT"
        for name, default in (("label", '"plain"'), ("n", "1"), ("pause", "0.0")):
            expect(form.locator(f"input[name={name}]")).to_have_value("")
            assert form.locator(f"input[name={name}]").get_attribute("placeholder") == default
        expect(page.locator("#schedule-timezone")).to_have_value("Europe/Paris")  # the browser's zone
        watched.shot("2-notebook")

        # A value the field cannot send is refused on the page, naming the parameter.
        form.locator("input[name=n]").fill("1.5")
        page.click("#run-button")
        expect(page.locator("#message")).to_have_text(re.compile("Parameter n must be a whole number, not 1.5"))
        assert form.locator("input[name=n]").get_attribute("aria-invalid") == "true"
        expect(page.locator("#no-runs")).to_be_visible()

        # Run with values from the form (a double click runs once): typed JSON reaches the
        # notebook; a field edited then emptied is left out, so its default applies.
        form.locator("input[name=label]").fill(LABEL)
        form.locator("input[name=n]").fill("3")
        form.locator("input[name=pause]").fill("0.25")
        form.locator("input[name=pause]").fill("")
        form.locator("[name=verbose]").select_option("true")
        # Untyped: True, False and None as papermill's -p reads them; Optional[str]: text.
        form.locator("input[name=flag]").fill("False")
        form.locator("input[name=nothing]").fill("None")
        form.locator("input[name=os2]").fill("123")
        page.dblclick("#run-button")
        expect(page.locator("#run-status")).to_have_text("succeeded")
        expect(page.locator("#message")).to_be_hidden()
        run_id = page.text_content("#run-id")
        run = requests.get(f"{ui_stack.url}/_notebooks/runs/{run_id}", auth=ADMIN).json()
        assert run["parameters"] == {
            "label": LABEL,
            "n": 3,
            "verbose": True,
            "flag": False,
            "nothing": None,
            "os2": "123",
        }
        expect(page.locator("#run-meta")).to_contain_text(f"manual run of {NAME}")
        expect(page.locator("#run-log")).to_contain_text(f"step 2 of {LABEL}")
        expect(page.locator("#run-progress-text")).to_have_text("4 / 4 cells")  # papermill adds a cell for the values

        # Its HTML output, in the sandboxed frame: the parameter's value is there, as text.
        assert page.get_attribute("#output-frame", "sandbox") == ""
        frame = page.frame_locator("#output-frame")
        expect(frame.locator("body")).to_contain_text(f"step 2 of {LABEL}")
        expect(frame.locator("body")).to_contain_text("verbose 6")
        expect(frame.locator("body")).to_contain_text("flag is falsy None '123'")
        expect(page.locator("#runs tbody tr")).to_have_count(1)  # the double click ran it once
        expect(page.locator("#notebooks tbody tr td").nth(3)).to_have_text("1")
        watched.shot("3-run-succeeded")

        # Rerun: a new run with the same parameters. The notebooks list fails to load as it
        # ends: the run's end and its log show all the same, with the failure as the message.
        failing_list = f"**{BASE}/_all?*"
        page.route(
            failing_list,
            lambda route: route.fulfill(
                status=500,
                content_type="application/json",
                body=json.dumps({"error": {"status": 500, "message": "injected: no list"}}),
            ),
        )
        page.click("#rerun")
        expect(page.locator("#run-id")).not_to_have_text(run_id)
        expect(page.locator("#run-status")).to_have_text("succeeded")
        expect(page.locator("#message")).to_have_text(re.compile("injected: no list"))
        expect(page.locator("#cancel-run")).to_be_hidden()
        expect(page.locator("#rerun")).to_be_visible()
        expect(page.locator("#run-log")).to_contain_text(f"step 2 of {LABEL}")
        expect(page.locator("#output")).to_be_visible()
        page.unroute(failing_list)
        failures = [problem for problem in watched.problems if "status of 500" in problem and "/_all" in problem]
        assert failures and len(failures) == len(watched.problems)
        watched.problems.clear()
        rerun_id = page.text_content("#run-id")
        rerun = requests.get(f"{ui_stack.url}/_notebooks/runs/{rerun_id}", auth=ADMIN).json()
        assert rerun["trigger"] == "rerun" and rerun["parameters"] == run["parameters"]
        expect(page.locator("#runs tbody tr")).to_have_count(2)

        # A long run: its live log while it runs, then cancel.
        form.locator("input[name=n]").fill("600")
        form.locator("input[name=pause]").fill("0.5")
        page.fill("#run-timeout", "300")
        page.click("#run-button")
        expect(page.locator("#run-id")).not_to_have_text(rerun_id)
        long_run_id = page.text_content("#run-id")
        expect(page.locator("#run-status")).to_have_text("running")
        expect(page.locator("#run-log")).to_contain_text("step 1 of")
        expect(page.locator("#cancel-run")).to_be_visible()
        watched.shot("4-run-live")

        # Open clicked on the run watched while a look at it is under way: one loop goes on.
        looks, holding = [], [True]
        page.route(
            f"**/_notebooks/runs/{long_run_id}",
            lambda route: looks.append(route) if holding[0] else route.continue_(),
        )
        while not looks:
            page.wait_for_timeout(50)  # the loop's next look, held
        page.locator(f"#runs tbody tr[data-run-id='{long_run_id}'] button").click()
        while len(looks) < 2:
            page.wait_for_timeout(50)  # the first look of the loop Open starts, held
        for look in looks[:2]:
            look.continue_()
        while len(looks) < 3:
            page.wait_for_timeout(50)
        page.wait_for_timeout(2000)  # two poll intervals: a second loop would look again meanwhile
        assert len(looks) == 3
        holding[0] = False
        looks[2].continue_()
        page.unroute(f"**/_notebooks/runs/{long_run_id}")
        page.click("#cancel-run")
        expect(page.locator("#run-status")).to_have_text("cancelled")
        expect(page.locator("#run-id")).to_have_text(long_run_id)  # that run, not another started by a stray click
        assert requests.get(f"{ui_stack.url}/_notebooks/runs/{long_run_id}", auth=ADMIN).json()["status"] == "cancelled"
        expect(page.locator("#rerun")).to_be_visible()
        expect(page.locator("#runs tbody tr")).to_have_count(3)

        # Another notebook opened: nothing of the first one's stays (its run, its forms),
        # its runs not even while the new one's are loading.
        runs_of_any = re.compile(r".*/_notebooks/notebooks/[^/]+/runs\?.*")
        held_runs = []
        page.route(runs_of_any, lambda route: held_runs.append(route))
        page.set_input_files("#upload-file", str(tmp_path / "other.ipynb"))
        page.click("#upload-button")
        expect(page.locator("#detail-name")).to_have_text("other.ipynb")
        expect(page.locator("#runs tbody tr")).to_have_count(0)
        expect(page.locator("#run")).to_be_hidden()
        while not held_runs:
            page.wait_for_timeout(50)
        held_runs[0].continue_()
        page.unroute(runs_of_any)
        expect(page.locator("#no-runs")).to_be_visible()
        expect(page.locator("#run-parameters")).to_have_text(re.compile("declares no parameters"))
        expect(page.locator("#run-timeout")).to_have_value("")

        # A click whose answer comes after a later click's shows nothing: the later one stays.
        rows = page.locator("#notebooks tbody tr")
        notebook_id, other_id = [
            item["notebook_id"] for item in requests.get(f"{ui_stack.url}{BASE}/_all", auth=ADMIN).json()
        ]
        held = []
        page.route(f"**{BASE}/{notebook_id}", lambda route: held.append(route))
        with page.expect_request(f"**{BASE}/{notebook_id}"):
            rows.first.locator("button").click()
        with page.expect_response(f"**{BASE}/{other_id}/runs?*"):  # the last request of opening it
            rows.nth(1).locator("button").click()
        while not held:
            page.wait_for_timeout(50)  # the route's handler runs while Playwright waits
        with page.expect_response(f"**{BASE}/{notebook_id}") as late:
            held[0].continue_()
        late.value.finished()
        page.evaluate("() => new Promise((resolve) => setTimeout(resolve, 200))")  # the page reads the late answer
        page.unroute(f"**{BASE}/{notebook_id}")
        expect(page.locator("#detail-name")).to_have_text("other.ipynb")
        expect(page.locator("#run-parameters")).to_have_text(re.compile("declares no parameters"))

        rows.first.locator("button").click()
        expect(page.locator("#detail-name")).to_have_text(NAME)

        # Schedule in a time zone with parameters from the form (the run form's fields).
        schedule_form = page.locator("#schedule-form")
        page.fill("#schedule-until", "2030-01-07T09:30")
        page.select_option("#schedule-period", "Monday")
        page.select_option("#schedule-timezone", "America/New_York")
        schedule_form.locator("input[name=n]").fill("7")
        schedule_form.locator("[name=verbose]").select_option("false")
        schedule_form.locator("input[name=os2]").fill("None")  # an Optional[str]'s None
        page.click("#schedule-button")
        expect(page.locator("#detail-status")).to_have_text("Scheduled")
        first_row = page.locator("#notebooks tbody tr").first.locator("td")
        expect(first_row.nth(1)).to_have_text("Scheduled")
        # List's schedule has no zone: the row has it from Fetch.
        expect(first_row.nth(2)).to_have_text("Mondays at 09:30 (America/New_York) until 2030-01-07 09:30")
        expect(page.locator("#schedule-current")).to_contain_text("Mondays at 09:30 (America/New_York)")
        expect(page.locator("#schedule-current-parameters")).to_have_text("Parameters: n=7, verbose=false, os2=null")
        notebook_id = requests.get(f"{ui_stack.url}{BASE}/_all", auth=ADMIN).json()[0]["notebook_id"]
        schedule = requests.get(f"{ui_stack.url}{BASE}/{notebook_id}", auth=ADMIN).json()["schedule"]
        assert (schedule["until"], schedule["timezone"]) == ("2030-01-07 09:30", "America/New_York")
        assert schedule["period"].lower() == "monday"
        assert schedule["parameters"] == {"n": 7, "verbose": False, "os2": None}
        watched.shot("5-scheduled")

        # Opened afresh, the form holds the schedule as it is: scheduling again with another
        # time keeps its parameters, and an emptied field leaves its parameter out.
        page.reload()
        page.locator("#notebooks tbody tr").first.locator("button").click()
        expect(schedule_form.locator("input[name=n]")).to_have_value("7")
        expect(schedule_form.locator("[name=verbose]")).to_have_value("false")
        expect(schedule_form.locator("input[name=label]")).to_have_value("")
        expect(schedule_form.locator("input[name=os2]")).to_have_value("None")
        expect(page.locator("#schedule-timezone")).to_have_value("America/New_York")
        expect(page.locator("#schedule-until")).to_have_value("2030-01-07T09:30")
        page.fill("#schedule-time", "07:15")
        schedule_form.locator("[name=verbose]").select_option("")
        page.click("#schedule-button")
        expect(page.locator("#schedule-current-parameters")).to_have_text("Parameters: n=7, os2=null")
        schedule = requests.get(f"{ui_stack.url}{BASE}/{notebook_id}", auth=ADMIN).json()["schedule"]
        assert (schedule["time"], schedule["parameters"]) == ("07:15", {"n": 7, "os2": None})

        page.click("#unschedule-button")
        expect(page.locator("#detail-status")).to_have_text("Not Scheduled")
        expect(first_row.nth(1)).to_have_text("Not Scheduled")
        expect(page.locator("#unschedule-button")).to_be_hidden()
        assert requests.get(f"{ui_stack.url}{BASE}/{notebook_id}", auth=ADMIN).json()["schedule"]["until"] is None

        assert watched.violations() == []
        assert watched.problems == []

        # A refusal from the API is shown as its message (Chromium logs the 400 itself).
        page.fill("#schedule-until", "2001-01-01T00:00")
        page.click("#schedule-button")
        expect(page.locator("#message")).to_contain_text("until")
        watched.shot("6-refused")
        refused = watched.problems.pop()
        assert "status of 400" in refused and "/_schedule" in refused

        # Delete, confirmed in the browser's dialog.
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#delete-notebook")
        expect(page.locator("#detail")).to_be_hidden()
        expect(page.locator("#notebooks tbody tr")).to_have_count(1)
        assert [
            notebook["notebook_name"] for notebook in requests.get(f"{ui_stack.url}{BASE}/_all", auth=ADMIN).json()
        ] == ["other.ipynb"]

        # More notebooks than a page: the table drawn again (a schedule made) keeps the rows
        # "Show more" added, and shows the zone of a schedule on the second page.
        for number in range(50):
            created = requests.post(f"{ui_stack.url}{BASE}", json={"notebook_name": f"more-{number:02}"}, auth=ADMIN)
            created.raise_for_status()
        page.reload()
        expect(rows).to_have_count(50)
        page.click("#more-notebooks")
        expect(rows).to_have_count(51)
        expect(page.locator("#more-notebooks")).to_be_hidden()
        rows.last.locator("button").click()
        expect(page.locator("#detail-name")).to_have_text("more-49.ipynb")
        page.fill("#schedule-until", "2030-01-07T09:30")
        page.select_option("#schedule-timezone", "Australia/Sydney")
        page.click("#schedule-button")
        expect(rows.last.locator("td").nth(2)).to_have_text(
            "Every day at 09:30 (Australia/Sydney) until 2030-01-07 09:30"
        )
        expect(rows).to_have_count(51)

        # The list drawn again (another schedule made) reads with Fetch only the notebook whose
        # schedule changed, once (the open notebook's Fetch): the other's zone is known.
        fetches = []

        def fetched(request):
            if re.search(rf"{BASE}/[^/_?][^/?]*$", request.url):
                fetches.append(request.url.rsplit("/", 1)[1])

        other_row = page.locator("#notebooks tbody tr", has_text="other.ipynb")
        other_row.locator("button").click()
        expect(page.locator("#detail-name")).to_have_text("other.ipynb")
        page.on("request", fetched)
        page.fill("#schedule-until", "2030-02-01T08:00")
        page.click("#schedule-button")
        expect(other_row.locator("td").nth(2)).to_have_text("Every day at 08:00 (Europe/Paris) until 2030-02-01 08:00")
        expect(page.locator("#schedule-button")).to_be_enabled()
        expect(rows.last.locator("td").nth(2)).to_have_text(
            "Every day at 09:30 (Australia/Sydney) until 2030-01-07 09:30"
        )
        page.remove_listener("request", fetched)
        assert fetches == [other_id]
        # A schedule whose zone alone changed elsewhere (here: the API) shows at the next redraw.
        last_id = rows.last.get_attribute("data-notebook-id")
        body = {"nbk_ids": [last_id], "until": "2030-01-07 09:30", "timezone": "Asia/Tokyo"}
        requests.post(f"{ui_stack.url}{BASE}/_schedule", json=body, auth=ADMIN).raise_for_status()
        page.click("#schedule-button")  # other.ipynb's again: the list is drawn again
        expect(rows.last.locator("td").nth(2)).to_have_text("Every day at 09:30 (Asia/Tokyo) until 2030-01-07 09:30")

        assert watched.violations() == []
        assert watched.problems == []
    finally:
        context.close()


@pytest.mark.stack
def test_a_log_too_large_for_a_response_is_a_link_and_such_an_output_its_reason(small_responses_stack, chromium):
    from playwright.sync_api import expect

    url = small_responses_stack.url
    content = code_notebook("print('x' * 4000)")
    requests.post(f"{url}{BASE}", json={"notebook_name": "big", "content": content}, auth=ADMIN).raise_for_status()
    context = signed_in(chromium)
    expect.set_options(timeout=WAIT_MS)
    watched = Watched(context)
    page = watched.page
    try:
        page.goto(url + UI + "/")
        page.click("text=big.ipynb")
        page.click("#run-button")
        expect(page.locator("#run-status")).to_have_text("succeeded")
        # The log is a redirect to storage: a link that opens it in a tab.
        expect(page.locator("#run-log")).to_contain_text("The log is too large to show here")
        link = page.get_attribute("#run-log a", "href")
        assert requests.get(link, auth=ADMIN).text.startswith("x" * 4000)
        # The page is refused with the API's reason, shown in the frame (Chromium logs the 413).
        frame = page.frame_locator("#output-frame")
        expect(frame.locator("body")).to_contain_text("Run output too large to show as HTML")
        watched.shot("7-too-large")
        assert watched.violations() == []
        assert [problem for problem in watched.problems if "status of 413" not in problem] == []
    finally:
        context.close()


def test_the_files_ship_in_the_api_functions_package(tmp_path, monkeypatch):
    from deploy import package

    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    _, code = package.chalice_package(tmp_path)
    for name in assets.ASSETS:
        shipped = code / "chalicelib" / "dashboard" / "static" / name
        assert shipped.read_bytes() == (assets.STATIC / name).read_bytes(), name
