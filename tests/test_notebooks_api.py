"""The notebooks API of the seed and the contract, through Chalice's test client on moto."""

import base64
import json
import re
import uuid

import nbformat
import pytest

from chalicelib import services
from chalicelib.api.requests import CreateRequest, RenameRequest
from chalicelib.storage.files import notebook_key
from tests.conftest import basic, error
from tests.helpers import leftovers, stored_state

# A well-formed id no notebook has; fixed, so that every pytest-xdist worker collects the same tests.
UNKNOWN_ID = "0b6c3a52-8e1f-4d7a-9b2e-5f4c1d0e9a87"

BASE = "/_notebooks/notebooks"
DEFAULT_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}:\d{2}:\d{2}_admin(_\d+)?\.ipynb$")


def stored_notebook(stack, owner, notebook_id):
    body = stack.files.get(notebook_key(owner, notebook_id))
    return None if body is None else nbformat.reads(body.decode(), as_version=4)


# --- The seed's sample requests, as written (only the host changed) -----------------


def test_seed_create_sample_without_body_or_content_type(api, stack):
    response = api.call("POST", BASE + "/", raw=b"", headers={"Content-Type": ""})
    assert response.status_code == 200
    created = json.loads(response.body)
    assert set(created) == {"username", "notebook_name", "path", "notebook_id"}
    assert created["username"] == "admin"
    assert DEFAULT_NAME.match(created["notebook_name"])
    assert created["path"] == f"/notebooks/admin/{created['notebook_name']}"
    notebook = stored_notebook(stack, "admin", created["notebook_id"])
    nbformat.validate(notebook)
    assert notebook.nbformat == 4 and notebook.metadata.kernelspec.name == "python3"


def test_seed_delete_sample(api, stack):
    notebook_id = api.create()["notebook_id"]
    response = api.call("DELETE", BASE + "/", raw=json.dumps({"nbk_ids": [notebook_id]}))
    assert response.status_code == 200 and json.loads(response.body) == "Success"
    assert stored_notebook(stack, "admin", notebook_id) is None
    assert error(api.call("GET", f"{BASE}/{notebook_id}")) == (400, "Notebook ID invalid.")


def test_seed_rename_sample_without_id_or_body(api):
    response = api.call("PUT", BASE + "/", raw=b"", headers={"Content-Type": ""})
    assert error(response) == (400, "Notebook ID is missing")


def test_seed_fetch_list_count_samples(api):
    created = api.create()
    fetched = api.json("GET", f"{BASE}/{created['notebook_id']}")
    assert fetched == {
        "schedule": {"period": None, "until": None, "time": None},
        "notebook_name": created["notebook_name"],
        "updated_at": fetched["created_at"],
        "updated_by": "admin",
        "created_at": fetched["created_at"],
        "last_run": None,
        "attributes": {"path": "/notebooks/admin/"},
        "created_by": "admin",
        "no_of_runs": 0,
        "notebook_id": created["notebook_id"],
        "status": "Not Scheduled",
    }
    listed = api.json("GET", BASE + "/_all")
    assert listed == [{**fetched, "last_run": "-"}]
    assert api.json("GET", BASE + "/_count") == {"Total Notebooks": 1, "Not Scheduled": 1, "Scheduled": 0}


@pytest.mark.parametrize("path", [BASE + "/_all/", BASE + "/_count/", BASE + "/"])
def test_trailing_slash_variants(api, path):
    api.create()
    method = "POST" if path == BASE + "/" else "GET"
    assert api.call(method, path).status_code == 200
    assert api.call(method, path.rstrip("/")).status_code == 200


# --- Create ------------------------------------------------------------------------


def test_two_creates_in_the_same_second_get_distinct_names(stack):
    stack.notebooks._clock = lambda: 1_700_000_000.25
    first = stack.notebooks.create("admin", CreateRequest())
    second = stack.notebooks.create("admin", CreateRequest())
    assert first["notebook_name"] == "2023-11-14_22:13:20_admin.ipynb"
    assert second["notebook_name"] == "2023-11-14_22:13:20_admin_2.ipynb"


def test_create_with_name_and_content(api, stack):
    content = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    created = api.create(notebook_name="report", content=content)
    assert created["notebook_name"] == "report.ipynb"
    assert stored_notebook(stack, "admin", created["notebook_id"]).cells[0].source == "print(1)"
    assert api.json("GET", f"{BASE}/{created['notebook_id']}/content")["cells"][0]["source"] == "print(1)"


def test_content_without_a_kernelspec_gets_python3s(api, stack):
    content = {"nbformat": 4, "nbformat_minor": 4, "metadata": {}, "cells": []}
    notebook_id = api.create(content=content)["notebook_id"]
    assert stored_notebook(stack, "admin", notebook_id).metadata.kernelspec.name == "python3"


def test_create_with_taken_name_is_409_and_leaves_no_file(api, stack):
    api.create(notebook_name="a.ipynb")
    before = stored_state(stack.settings)
    assert error(api.call("POST", BASE, {"notebook_name": "a"})) == (409, "A notebook with that name already exists")
    assert stored_state(stack.settings) == before


def test_create_metadata_failure_removes_the_file(api, stack, monkeypatch):
    table = stack.notebooks._table

    def failing_create(item):
        raise RuntimeError("DynamoDB went away")

    monkeypatch.setattr(table, "create", failing_create)
    before = stored_state(stack.settings)
    assert api.call("POST", BASE).status_code == 500
    assert stored_state(stack.settings) == before


_V4 = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}}


@pytest.mark.parametrize(
    "content, reason",
    [
        ({"cells": []}, "nbformat must be 4"),
        ({**_V4, "nbformat": 4.0, "cells": []}, "nbformat must be 4"),
        ({**_V4, "nbformat_minor": "5", "cells": []}, "nbformat_minor"),
        ({**_V4, "cells": "x"}, "cells must be"),
        ({**_V4, "cells": [None]}, "cells must be"),
        ({**_V4, "cells": [{"cell_type": 5}]}, "Invalid notebook"),
        ({**_V4, "metadata": None, "cells": []}, "metadata must be"),
        (
            {
                **_V4,
                "cells": [
                    {"cell_type": "code", "source": "x", "metadata": {}, "outputs": [5], "execution_count": None}
                ],
            },
            "Invalid notebook",
        ),
        ({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "bogus"}]}, "Invalid notebook"),
        ([1, 2], "must be a notebook"),
    ],
)
def test_create_with_invalid_content_is_400(api, stack, content, reason):
    before = stored_state(stack.settings)
    status, message = error(api.call("POST", BASE, {"content": content}))
    assert status == 400 and reason in message
    assert message.startswith("Error occurred while creating the notebook file: ")
    assert stored_state(stack.settings) == before


# --- Rename ------------------------------------------------------------------------


def test_rename_and_the_old_name_is_free_again(api):
    notebook_id = api.create(notebook_name="old")["notebook_id"]
    assert api.json("PUT", f"{BASE}/{notebook_id}", {"new_name": "new"}) == "Rename Successful"
    assert api.json("GET", f"{BASE}/{notebook_id}")["notebook_name"] == "new.ipynb"
    assert api.create(notebook_name="old")["notebook_name"] == "old.ipynb"


def test_rename_to_its_current_name_succeeds(api):
    notebook_id = api.create(notebook_name="same")["notebook_id"]
    assert api.json("PUT", f"{BASE}/{notebook_id}", {"new_name": "same.ipynb"}) == "Rename Successful"


def test_rename_to_a_taken_name_is_409(api, stack):
    api.create(notebook_name="taken")
    notebook_id = api.create(notebook_name="mine")["notebook_id"]
    before = stored_state(stack.settings)
    assert error(api.call("PUT", f"{BASE}/{notebook_id}", {"new_name": "taken"})) == (
        409,
        "A notebook with that name already exists",
    )
    assert stored_state(stack.settings) == before


@pytest.mark.parametrize("body", [None, {}, {"new_name": ""}, {"new_name": "   "}, {"new_name": None}])
def test_rename_without_a_new_name(api, body):
    notebook_id = api.create()["notebook_id"]
    assert error(api.call("PUT", f"{BASE}/{notebook_id}", body)) == (400, "Missing new name")


@pytest.mark.parametrize(
    "name, why",
    [
        ("a/b", "'/'"),
        ("a\\b", "'/' or '\\'"),
        ("..", "'..'"),
        ("x..y", "'..'"),
        ("a\x00b", "control"),
        ("a\nb", "control"),
        ("a\x7fb", "control"),
        ("invoice\u202egnp.ipynb", "bidirectional control"),
        ("a\u2066b", "bidirectional control"),
        ("a\u200fb", "bidirectional control"),
        ("a\u061cb", "bidirectional control"),
        ("a\u200bb", "zero-width"),
        ("a\u2060b", "zero-width"),
        ("\ufeffa", "zero-width"),
        ("n" * 256, "too long"),
        (42, "must be a string"),
        (["a"], "must be a string"),
    ],
)
def test_rename_rejects_bad_names_and_changes_nothing(api, stack, name, why):
    notebook_id = api.create(notebook_name="keep")["notebook_id"]
    before = stored_state(stack.settings)
    status, message = error(api.call("PUT", f"{BASE}/{notebook_id}", {"new_name": name}))
    assert status == 400 and why in message and "new_name" in message
    assert stored_state(stack.settings) == before


def test_the_name_limit_counts_the_name_as_given(api):
    assert api.create(notebook_name="n" * 255)["notebook_name"] == "n" * 255 + ".ipynb"
    assert error(api.call("POST", BASE, {"notebook_name": "m" * 256}))[0] == 400


def test_unicode_names_work_end_to_end(api):
    notebook_id = api.create(notebook_name="Résumé 数据.ipynb")["notebook_id"]
    assert api.json("GET", f"{BASE}/{notebook_id}")["notebook_name"] == "Résumé 数据.ipynb"
    api.json("PUT", f"{BASE}/{notebook_id}", {"new_name": "Ünïcødé ✓"})
    assert [n["notebook_name"] for n in api.json("GET", BASE + "/_all")] == ["Ünïcødé ✓.ipynb"]
    # the decomposed spelling of the same name is the same name
    assert api.call("POST", BASE, {"notebook_name": "U\u0308nïcødé ✓"}).status_code == 409


@pytest.mark.parametrize("notebook_id", [UNKNOWN_ID, "not-a-uuid", "..%2F.."])
def test_rename_unknown_id(api, notebook_id):
    assert error(api.call("PUT", f"{BASE}/{notebook_id}", {"new_name": "x"})) == (400, "No Notebook found")


def test_rename_racing_another_rename_rereads_and_never_shares_a_name(stack, monkeypatch):
    """A rename whose read went stale (another rename landed first) fails its condition,
    re-reads, and lands; the name claims always match the notebooks."""
    service, table = stack.notebooks, stack.notebooks._table
    notebook_id = service.create("admin", CreateRequest("a.ipynb"))["notebook_id"]
    real_rename = table.rename
    raced = []

    def rename_after_a_rival(owner, nid, old_name, new_name, changes):
        if not raced:  # the rival lands between our read and our write
            raced.append(True)
            real_rename(owner, nid, old_name, "rival.ipynb", changes)
        return real_rename(owner, nid, old_name, new_name, changes)

    monkeypatch.setattr(table, "rename", rename_after_a_rival)
    service.rename("admin", notebook_id, RenameRequest("mine.ipynb"))
    assert service.fetch("admin", notebook_id)["notebook_name"] == "mine.ipynb"
    _, items = stored_state(stack.settings)
    claims = sorted(item["sk"] for item in items if item["sk"].startswith("name#"))
    assert claims == ["name#mine.ipynb"]  # neither "a" nor "rival" is left claimed


# --- Fetch, List, Count ------------------------------------------------------------


@pytest.mark.parametrize("notebook_id", [UNKNOWN_ID, "nope", "1" * 300])
def test_fetch_unknown_or_malformed_id(api, notebook_id):
    assert error(api.call("GET", f"{BASE}/{notebook_id}")) == (400, "Notebook ID invalid.")


def test_list_is_oldest_first_and_pages(api, stack):
    clock = iter(range(1_700_000_000, 1_700_000_100))
    stack.notebooks._clock = lambda: next(clock)
    ids = [api.create()["notebook_id"] for _ in range(5)]
    assert [n["notebook_id"] for n in api.json("GET", BASE + "/_all")] == ids
    seen, token = [], None
    while True:
        query = "?limit=2" + (f"&next_token={token}" if token else "")
        response = api.call("GET", BASE + "/_all" + query)
        page = json.loads(response.body)
        assert len(page) <= 2
        seen += [n["notebook_id"] for n in page]
        token = response.headers.get("X-Next-Token")
        if not token:
            break
    assert seen == ids


@pytest.mark.parametrize(
    "query, field",
    [("limit=0", "limit"), ("limit=abc", "limit"), ("limit=-1", "limit"), ("limit=2&next_token=garbage", "next_token")],
)
def test_list_rejects_bad_paging(api, query, field):
    status, message = error(api.call("GET", f"{BASE}/_all?{query}"))
    assert status == 400 and field in message


def test_list_token_of_another_user_is_refused(api):
    for _ in range(3):
        api.create()
    token = api.call("GET", BASE + "/_all?limit=1").headers["X-Next-Token"]
    status, message = error(api.call("GET", f"{BASE}/_all?limit=1&next_token={token}", user="bob"))
    assert status == 400 and "next_token" in message


def test_count(api):
    for _ in range(3):
        api.create()
    api.create(user="bob")
    assert api.json("GET", BASE + "/_count") == {"Total Notebooks": 3, "Not Scheduled": 3, "Scheduled": 0}
    assert api.json("GET", BASE + "/_count", user="bob")["Total Notebooks"] == 1


# --- Delete ------------------------------------------------------------------------


def test_delete_removes_file_metadata_and_name(api, stack):
    created = api.create(notebook_name="gone")
    api.json("DELETE", BASE, {"nbk_ids": [created["notebook_id"]]})
    assert leftovers(stack.settings) == ([], [])
    assert api.create(notebook_name="gone")["notebook_name"] == "gone.ipynb"


def test_delete_of_nothing_known_is_the_seed_200_error(api, stack):
    api.create()
    before = stored_state(stack.settings)
    assert error(api.call("DELETE", BASE, {"nbk_ids": [str(uuid.uuid4())]})) == (200, "No notebooks deleted")
    assert stored_state(stack.settings) == before


@pytest.mark.parametrize(
    "body, message",
    [
        (None, "Notebook IDs are required"),
        ({}, "Notebook IDs are required"),
        ({"nbk_ids": []}, "Notebook IDs are required"),
        ({"nbk_ids": None}, "Notebook IDs are required"),
        ({"nbk_ids": "abc"}, "nbk_ids must be a list"),
        ({"nbk_ids": [1, 2]}, "nbk_ids must contain only strings"),
        ({"nbk_ids": [{"id": 1}]}, "nbk_ids must contain only strings"),
        ({"nbk_ids": ["x"] * 1001}, "at most 1000"),
    ],
)
def test_delete_bad_input_is_400_and_changes_nothing(api, stack, body, message):
    api.create()
    before = stored_state(stack.settings)
    status, got = error(api.call("DELETE", BASE, body))
    assert status == 400 and message in got
    assert stored_state(stack.settings) == before


def test_delete_passes_over_ids_that_are_not_uuids_like_unknown_ones(api, stack):
    notebook_id = api.create()["notebook_id"]
    before = stored_state(stack.settings)
    assert error(api.call("DELETE", BASE, {"nbk_ids": ["not-a-uuid", ""]})) == (200, "No notebooks deleted")
    assert stored_state(stack.settings) == before
    assert api.json("DELETE", BASE, {"nbk_ids": ["not-a-uuid", notebook_id]}) == "Success"
    assert leftovers(stack.settings) == ([], [])


def test_delete_that_fails_halfway_is_finished_by_a_retry(api, stack, monkeypatch):
    notebook_id = api.create()["notebook_id"]
    files = stack.files
    real_delete = files.delete_many
    calls = []

    def flaky_delete(keys):
        calls.append(keys)
        if len(calls) == 1:
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="s3")
        real_delete(keys)

    monkeypatch.setattr(files, "delete_many", flaky_delete)
    status, message = error(api.call("DELETE", BASE, {"nbk_ids": [notebook_id]}))
    assert status == 503 and message.startswith("Error occurred during notebook deletion")
    # half-deleted: hidden from reads, but not lost
    assert error(api.call("GET", f"{BASE}/{notebook_id}")) == (400, "Notebook ID invalid.")
    assert api.json("GET", BASE + "/_count")["Total Notebooks"] == 0
    assert api.json("DELETE", BASE, {"nbk_ids": [notebook_id]}) == "Success"
    assert leftovers(stack.settings) == ([], [])


# --- Ownership ---------------------------------------------------------------------


def test_another_user_can_neither_see_nor_change_my_notebooks(api, stack):
    notebook_id = api.create(notebook_name="private")["notebook_id"]
    before = stored_state(stack.settings)
    as_bob = {"user": "bob"}
    assert error(api.call("GET", f"{BASE}/{notebook_id}", **as_bob)) == (400, "Notebook ID invalid.")
    assert error(api.call("GET", f"{BASE}/{notebook_id}/content", **as_bob)) == (400, "Notebook ID invalid.")
    assert error(api.call("PUT", f"{BASE}/{notebook_id}/content", nbformat.v4.new_notebook(), **as_bob)) == (
        400,
        "Notebook ID invalid.",
    )
    assert error(api.call("PUT", f"{BASE}/{notebook_id}", {"new_name": "mine"}, **as_bob)) == (400, "No Notebook found")
    assert error(api.call("DELETE", BASE, {"nbk_ids": [notebook_id]}, **as_bob)) == (200, "No notebooks deleted")
    assert api.json("GET", BASE + "/_all", **as_bob) == []
    assert api.json("GET", BASE + "/_count", **as_bob)["Total Notebooks"] == 0
    assert stored_state(stack.settings) == before
    # and bob may use the same name for his own notebook
    assert api.create(user="bob", notebook_name="private")["notebook_name"] == "private.ipynb"


# --- Content -----------------------------------------------------------------------


def test_put_content_replaces_the_file_and_touches_updated_at(api, stack):
    stack.notebooks._clock = iter([1_700_000_000, 1_700_000_100, 1_700_000_100]).__next__
    notebook_id = api.create()["notebook_id"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# hi")])
    assert api.json("PUT", f"{BASE}/{notebook_id}/content", notebook) == "Success"
    assert api.json("GET", f"{BASE}/{notebook_id}/content")["cells"][0]["source"] == "# hi"
    fetched = api.json("GET", f"{BASE}/{notebook_id}")
    assert fetched["updated_at"] == 1_700_000_100_000 and fetched["created_at"] == 1_700_000_000_000


def test_put_invalid_content_gives_nbformats_reason(api, stack):
    notebook_id = api.create()["notebook_id"]
    before = stored_state(stack.settings)
    bad = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code"}]}
    status, message = error(api.call("PUT", f"{BASE}/{notebook_id}/content", bad))
    assert status == 400 and "Invalid notebook" in message and "is a required property" in message
    assert stored_state(stack.settings) == before


# --- Bad input of every kind ---------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, raw",
    [
        ("POST", BASE, b"{not json"),
        ("POST", BASE, b"[1, 2]"),
        ("POST", BASE, b'"text"'),
        ("POST", BASE, b"\xff\xfe"),
        ("DELETE", BASE, b'{"nbk_ids": ['),
        ("PUT", BASE + "/{id}", b"{'new_name': 'x'}"),
        ("PUT", BASE + "/{id}/content", b"nope"),
        ("POST", BASE, b'{"notebook_name": 5}'),
        ("POST", BASE, b'{"notebook_name": "\\ud800"}'),
        ("PUT", BASE + "/{id}", b'{"new_name": "a\\udfffb"}'),
        ("POST", BASE, b'{"notebook_name": NaN}'),
        ("POST", BASE, b'{"x": 1e999}'),
        ("POST", BASE, b"[" * 100000),
        ("POST", BASE, b'{"a":' * 100000),
    ],
)
def test_malformed_bodies_are_400_and_change_nothing(api, stack, method, path, raw):
    notebook_id = api.create(notebook_name="stay")["notebook_id"]
    before = stored_state(stack.settings)
    status, message = error(api.call(method, path.replace("{id}", notebook_id), raw=raw))
    assert status == 400 and message
    assert stored_state(stack.settings) == before


def test_body_over_the_limit_is_413(api, stack, monkeypatch):
    monkeypatch.setenv("NOTEBOOKS_MAX_BODY_BYTES", "1000")
    services.reset()
    before = stored_state(stack.settings)
    status, message = error(api.call("POST", BASE, {"notebook_name": "x" * 2000}))
    assert status == 413 and "1000" in message
    assert stored_state(stack.settings) == before


# --- Auth ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer abc",
        "Basic",
        "Basic !!!",
        basic("admin", "wrong"),
        basic("ghost", "admin"),
        "Basic " + base64.b64encode(b"no-colon").decode(),
        basic("", "admin"),
        basic("a" * 5000, "x"),
        basic("a/b", "x"),
        "Basic caf\u00e9",
        "Basic \u2603\u2603\u2603\u2603",
    ],
)
def test_every_failed_login_gets_the_same_401(api, stack, header):
    before = stored_state(stack.settings)
    headers = {"Authorization": header} if header is not None else {}
    response = api.call("POST", BASE, user=None, headers=headers)
    assert error(response) == (401, "Authentication required")
    assert response.headers["WWW-Authenticate"] == 'Basic realm="notebooks"'
    assert stored_state(stack.settings) == before


def test_passwords_are_stored_as_salted_scrypt_hashes(stack):
    first = stack.users.password_hash("admin")
    assert first.startswith("scrypt$") and "admin" not in first.split("$", 4)[4]
    stack.users.add("carol", "admin")
    assert stack.users.password_hash("carol") != first  # same password, different salt


def test_removed_user_is_refused_at_once(api, stack):
    assert api.call("GET", BASE + "/_count", user="bob").status_code == 200
    stack.users.remove("bob")
    assert api.call("GET", BASE + "/_count", user="bob").status_code == 401


# --- Operations ----------------------------------------------------------------------


def test_each_request_logs_one_line_without_secrets(api, caplog):
    caplog.set_level("INFO", logger="chalicelib.access")
    api.call(
        "POST",
        BASE,
        {
            "notebook_name": "logged",
            "content": nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("SECRET_CELL = 1")]),
        },
    )
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "chalicelib.access"]
    assert len(lines) == 1
    assert lines[0]["method"] == "POST" and lines[0]["user"] == "admin" and lines[0]["status"] == 200
    assert lines[0]["path"] and lines[0]["duration_ms"] >= 0
    assert "SECRET_CELL" not in caplog.text and basic("admin", "admin") not in caplog.text


def test_cors_is_off_by_default(api):
    response = api.call("GET", BASE + "/_count", headers={"Origin": "https://evil.example"})
    assert not any(name.lower().startswith("access-control-") for name in response.headers)
