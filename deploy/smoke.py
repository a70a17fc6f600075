"""`make smoke URL=...`: drive a deployed API through the seed's samples and one real run,
and print what passed.

    make smoke URL=https://abc123.execute-api.eu-west-1.amazonaws.com/api SMOKE_USER=admin

The password comes from SMOKE_PASSWORD, or is asked for. The checks work on one new
notebook, which is deleted at the end, passed or not. Exit status 0 when all passed.
"""

import argparse
import getpass
import os
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

import requests

from chalicelib.common.model import FINAL, RunStatus

NOTEBOOKS = "/_notebooks/notebooks"
RUNS = "/_notebooks/runs"
PRINTED = "smoke test ran here"
NOTEBOOK = {
    "nbformat": 4,
    "nbformat_minor": 5,
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "cells": [
        {"cell_type": "markdown", "id": "title", "metadata": {}, "source": "# Smoke test"},
        {
            "cell_type": "code",
            "id": "print",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": f"print({PRINTED!r})",
        },
    ],
}
# A run's first start on Lambda includes a cold start and a kernel's first start.
RUN_SECONDS = 300


class Failed(Exception):
    """A check that did not hold."""


def expect(condition: bool, what) -> None:
    if not condition:
        raise Failed(what)


class Smoke:
    """The checks, in the seed's order, against one API."""

    def __init__(self, url: str, user: str, password: str, log=print):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (user, password)
        self.log = log
        self.notebook_id = None
        self.run_id = None
        self.results = []

    def call(self, method: str, path: str, expect_status=200, **kwargs):
        response = self.session.request(method, self.url + path, timeout=60, **kwargs)
        expect(
            response.status_code == expect_status, f"{method} {path}: HTTP {response.status_code} {response.text[:300]}"
        )
        return response

    def check(self, name: str, step) -> bool:
        try:
            detail = step()
        except (Failed, requests.RequestException, ValueError, KeyError) as error:
            self.results.append(False)
            self.log(f"FAIL  {name}: {error}")
            return False
        self.results.append(True)
        self.log(f"PASS  {name}" + (f": {detail}" if detail else ""))
        return True

    def openapi_without_credentials(self):
        document = requests.get(self.url + "/_notebooks/openapi.json", timeout=60)
        expect(document.status_code == 200, f"HTTP {document.status_code}")
        expect(NOTEBOOKS + "/_run" in document.json()["paths"], "no Run route in the document")

    def refuses_without_credentials(self):
        response = requests.get(self.url + NOTEBOOKS + "/_count", timeout=60)
        expect(response.status_code == 401, f"HTTP {response.status_code}")

    def create(self):
        created = self.call("POST", NOTEBOOKS + "/").json()  # the seed's Create: no body
        self.notebook_id = created["notebook_id"]
        return created["notebook_name"]

    def write_content(self):
        expect(
            self.call("PUT", f"{NOTEBOOKS}/{self.notebook_id}/content", json=NOTEBOOK).json() == "Success",
            "not Success",
        )

    def read_content(self):
        cells = self.call("GET", f"{NOTEBOOKS}/{self.notebook_id}/content").json()["cells"]
        expect(
            [cell["source"] for cell in cells] == [cell["source"] for cell in NOTEBOOK["cells"]],
            "content differs from what was written",
        )

    def rename(self):
        name = f"smoke-{uuid.uuid4().hex[:8]}"
        answer = self.call("PUT", f"{NOTEBOOKS}/{self.notebook_id}", json={"new_name": name}).json()
        expect(answer == "Rename Successful", answer)
        fetched = self.call("GET", f"{NOTEBOOKS}/{self.notebook_id}").json()
        expect(fetched["notebook_name"] == name + ".ipynb", fetched)

    def list_all(self):
        ids = [item["notebook_id"] for item in self.call("GET", NOTEBOOKS + "/_all").json()]
        expect(self.notebook_id in ids, "the new notebook is not listed")

    def count(self):
        counts = self.call("GET", NOTEBOOKS + "/_count").json()
        expect(counts["Total Notebooks"] >= 1, counts)
        return counts

    def run(self):
        # The seed's Run sample as written: a GET with a body, `//` in the path, keys unquoted.
        body = '{nbkIds: ["%s"], module: "notebooks"}' % self.notebook_id
        [run] = self.call(
            "GET", "/" + NOTEBOOKS + "/_run", data=body, headers={"Content-Type": "application/json"}
        ).json()["runs"]
        self.run_id = run["run_id"]
        deadline = time.monotonic() + RUN_SECONDS
        while time.monotonic() < deadline:
            record = self.call("GET", f"{RUNS}/{self.run_id}").json()
            if record["status"] in FINAL:
                expect(record["status"] == RunStatus.SUCCEEDED, record)
                seconds = (record["finished_at"] - record["created_at"]) / 1000
                return f"run {self.run_id} succeeded in {seconds:.1f} s"
            time.sleep(1)
        raise Failed(f"run {self.run_id} did not end in {RUN_SECONDS} s")

    def output_ipynb(self):
        cells = self.call("GET", f"{RUNS}/{self.run_id}/output").json()["cells"]
        expect(cells[1]["outputs"][0]["text"] == PRINTED + "\n", cells[1]["outputs"])

    def output_html(self):
        page = self.call("GET", f"{RUNS}/{self.run_id}/output", params={"format": "html"})
        expect(PRINTED in page.text, "the printed text is not on the page")
        expect("sandbox" in page.headers.get("Content-Security-Policy", ""), "no sandboxing CSP")

    def schedule(self):
        until = (datetime.now(timezone.utc) + timedelta(days=30)).strftime("%Y-%m-%d %H:%M")
        body = {"nbk_ids": [self.notebook_id], "period": "Monday", "time": "06:50", "until": until}
        expect(self.call("GET", NOTEBOOKS + "/_schedule", json=body).json() == "Success", "not Success")
        status = self.call("GET", f"{NOTEBOOKS}/{self.notebook_id}").json()["status"]
        expect(status == "Scheduled", status)

    def unschedule(self):
        body = {"nbk_ids": [self.notebook_id]}
        expect(self.call("GET", NOTEBOOKS + "/_unschedule", json=body).json() == "Success", "not Success")
        status = self.call("GET", f"{NOTEBOOKS}/{self.notebook_id}").json()["status"]
        expect(status == "Not Scheduled", status)

    def delete(self):
        answer = self.call("DELETE", NOTEBOOKS + "/", json={"nbk_ids": [self.notebook_id]}).json()
        expect(answer == "Success", answer)
        self.call("GET", f"{NOTEBOOKS}/{self.notebook_id}", expect_status=400)
        self.notebook_id = None

    def all(self) -> bool:
        """Run every check; True when all passed."""
        self.check("OpenAPI document without credentials", self.openapi_without_credentials)
        self.check("401 without credentials", self.refuses_without_credentials)
        if self.check("Create", self.create):
            try:
                self.check("Write content", self.write_content)
                self.check("Read content", self.read_content)
                self.check("Rename and Get", self.rename)
                self.check("List all", self.list_all)
                self.check("Count", self.count)
                if self.check("Run (the seed's sample) until succeeded", self.run):
                    self.check("Run output as ipynb", self.output_ipynb)
                    self.check("Run output as HTML", self.output_html)
                self.check("Schedule", self.schedule)
                self.check("Unschedule", self.unschedule)
            finally:
                self.check("Delete", self.delete)
        self.log(f"{sum(self.results)} of {len(self.results)} checks passed")
        return all(self.results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the API's base URL (the stack's EndpointURL output)")
    parser.add_argument("--user", default=os.environ.get("SMOKE_USER") or "admin")
    args = parser.parse_args(argv)
    password = os.environ.get("SMOKE_PASSWORD") or getpass.getpass(f"Password of {args.user}: ")
    return 0 if Smoke(args.url, args.user, password).all() else 1


if __name__ == "__main__":
    sys.exit(main())
