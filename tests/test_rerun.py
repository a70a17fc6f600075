"""Versions and rerun: each run pins the notebook version it executes; rerun runs it again."""

from datetime import datetime, timezone

import boto3
import pytest

from chalicelib.storage.files import notebook_key
from tests.conftest import error
from tests.helpers import stored_state
from tests.test_runs import BASE, RUNS, notebook_of, run_all, stream_text
from tests.test_scale import UNTIL, configure

pytest_plugins = ["tests.test_runs"]  # its fixtures: dispatched, executor


def old_and_new(api):
    """A notebook whose content changed after a run was accepted; (notebook id, run id)."""
    notebook_id = api.create(content=notebook_of("print('old', x, y)", parameters_cell="x: int = 1\ny = 'a'"))[
        "notebook_id"
    ]
    [run] = api.json(
        "POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m", "parameters": {"x": 5, "y": "b"}}
    )["runs"]
    api.json("PUT", f"{BASE}/{notebook_id}/content", notebook_of("print('new', z)", parameters_cell="z = 0"))
    return notebook_id, run["run_id"]


def test_each_content_write_is_a_version_and_the_bucket_is_versioned(api, stack):
    s3 = boto3.client("s3", region_name=stack.settings.region)
    assert s3.get_bucket_versioning(Bucket=stack.settings.bucket)["Status"] == "Enabled"
    notebook_id = api.create()["notebook_id"]
    api.json("PUT", f"{BASE}/{notebook_id}/content", notebook_of("1"))
    versions = s3.list_object_versions(Bucket=stack.settings.bucket, Prefix=notebook_key("admin", notebook_id))
    assert len(versions["Versions"]) == 2


def test_a_run_executes_the_version_of_its_run_request_and_rerun_runs_it_again(api, dispatched, executor):
    notebook_id, run_id = old_and_new(api)
    run_all(executor, dispatched)  # the content changed before the runner read it
    first = api.json("GET", f"{RUNS}/{run_id}")
    assert first["status"] == "succeeded" and first["notebook_version"]
    assert stream_text(api.json("GET", f"{RUNS}/{run_id}/output")).strip() == "old 5 b"

    answer = api.json("POST", f"{RUNS}/{run_id}/rerun", {"parameters": {"x": 7}})
    [again] = answer["runs"]
    assert set(again) == {"run_id", "notebook_id", "status"} and again["notebook_id"] == notebook_id
    assert again["status"] == "queued" and again["run_id"] != run_id
    run_all(executor, dispatched)
    rerun = api.json("GET", f"{RUNS}/{again['run_id']}")
    assert rerun["trigger"] == "rerun" and rerun["parameters"] == {"x": 7, "y": "b"} and rerun["module"] == "m"
    assert rerun["notebook_version"] == first["notebook_version"] and rerun["status"] == "succeeded"
    assert stream_text(api.json("GET", f"{RUNS}/{again['run_id']}/output")).strip() == "old 7 b"
    # without a body: the same parameters
    [plain] = api.json("POST", f"{RUNS}/{run_id}/rerun")["runs"]
    assert api.json("GET", f"{RUNS}/{plain['run_id']}")["parameters"] == {"x": 5, "y": "b"}
    assert api.json("GET", f"{BASE}/{notebook_id}")["no_of_runs"] == 3
    # a new Run executes the new content, a new version
    [new] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    run_all(executor, dispatched)
    assert stream_text(api.json("GET", f"{RUNS}/{new['run_id']}/output")).strip() == "new 0"
    assert api.json("GET", f"{RUNS}/{new['run_id']}")["notebook_version"] != first["notebook_version"]


def test_rerun_parameters_are_checked_against_the_version_rerun(api, stack, dispatched):
    _, run_id = old_and_new(api)
    before = stored_state(stack.settings)
    for parameters, named in [({"z": 1}, "z"), ({"x": "seven"}, "x"), ({"x": 1.5}, "x")]:
        status, message = error(api.call("POST", f"{RUNS}/{run_id}/rerun", {"parameters": parameters}))
        assert status == 400 and repr(named) in message
    for body, field in [({"parameters": [1]}, "parameters"), ({"parameters": {"no way": 1}}, "parameters")]:
        status, message = error(api.call("POST", f"{RUNS}/{run_id}/rerun", body))
        assert status == 400 and field in message
    assert error(api.call("POST", f"{RUNS}/{run_id}/rerun", raw=b"{nope"))[0] == 400
    assert stored_state(stack.settings) == before and len(dispatched.events) == 1  # the first run only


def test_rerun_of_a_version_that_no_longer_exists_is_a_409(api, stack, dispatched):
    notebook_id, run_id = old_and_new(api)
    version = api.json("GET", f"{RUNS}/{run_id}")["notebook_version"]
    stack.files.delete(notebook_key("admin", notebook_id), version)  # as the bucket's lifecycle rule would
    before = stored_state(stack.settings)
    status, message = error(api.call("POST", f"{RUNS}/{run_id}/rerun"))
    assert status == 409 and "version" in message
    assert stored_state(stack.settings) == before


def test_rerun_of_a_deleted_notebooks_run_is_not_found(api, dispatched):
    notebook_id, run_id = old_and_new(api)
    api.json("DELETE", BASE, {"nbk_ids": [notebook_id]})
    assert error(api.call("POST", f"{RUNS}/{run_id}/rerun")) == (404, "Run not found")


def test_only_the_owner_reruns_a_run(api, stack, dispatched):
    _, run_id = old_and_new(api)
    before = stored_state(stack.settings)
    for user, path in [("bob", run_id), ("admin", "00000000-0000-4000-8000-000000000000"), ("admin", "junk")]:
        assert error(api.call("POST", f"{RUNS}/{path}/rerun", user=user)) == (404, "Run not found")
    assert stored_state(stack.settings) == before


def test_rerun_takes_the_active_runs_quota(api, stack, dispatched, monkeypatch):
    configure(stack, monkeypatch, max_active_runs=1)
    _, run_id = old_and_new(api)
    assert error(api.call("POST", f"{RUNS}/{run_id}/rerun"))[0] == 429


def test_a_scheduled_run_pins_the_version_current_when_it_fires(api, stack, executor):
    notebook_id = api.create(content=notebook_of("print('v1')"))["notebook_id"]
    # Daily at this minute, so that the firing below is at a due occurrence.
    now = datetime.now(timezone.utc).strftime("%H:%M")
    api.json("POST", BASE + "/_schedule", {"nbk_ids": [notebook_id], "until": UNTIL, "time": now})
    api.json("PUT", f"{BASE}/{notebook_id}/content", notebook_of("print('v2')"))
    result = executor.handle({"trigger": "schedule", "owner": "admin", "notebook_id": notebook_id})
    fired = api.json("GET", f"{RUNS}/{result['run_id']}")
    assert fired["trigger"] == "schedule" and fired["status"] == "succeeded"
    assert stream_text(api.json("GET", f"{RUNS}/{result['run_id']}/output")).strip() == "v2"
    s3 = boto3.client("s3", region_name=stack.settings.region)
    latest = s3.head_object(Bucket=stack.settings.bucket, Key=notebook_key("admin", notebook_id))["VersionId"]
    assert fired["notebook_version"] == latest


@pytest.mark.parametrize("unversioned", [False, True])
def test_a_notebook_written_before_versions_is_pinned_by_its_runner(api, stack, dispatched, executor, unversioned):
    """Items without `content_version` (written before this change): the runner records
    the version it reads, S3's "null" for an object written while versioning was off."""
    notebook_id = api.create(content=notebook_of("print('before')"))["notebook_id"]
    settings = stack.settings
    if unversioned:
        s3 = boto3.client("s3", region_name=settings.region)
        key = notebook_key("admin", notebook_id)
        data = s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
        s3.put_bucket_versioning(Bucket=settings.bucket, VersioningConfiguration={"Status": "Suspended"})
        s3.delete_object(
            Bucket=settings.bucket, Key=key, VersionId=s3.head_object(Bucket=settings.bucket, Key=key)["VersionId"]
        )
        s3.put_object(Bucket=settings.bucket, Key=key, Body=data)
        s3.put_bucket_versioning(Bucket=settings.bucket, VersioningConfiguration={"Status": "Enabled"})
    table = boto3.resource("dynamodb", region_name=settings.region).Table(settings.notebooks_table)
    table.update_item(
        Key={"owner": "admin", "sk": "nb#" + notebook_id},
        UpdateExpression="REMOVE content_version, declared_parameters",
    )
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m"})["runs"]
    assert api.json("GET", f"{RUNS}/{run['run_id']}")["notebook_version"] is None
    assert error(api.call("POST", f"{RUNS}/{run['run_id']}/rerun"))[0] == 409  # no version known yet
    run_all(executor, dispatched)
    ran = api.json("GET", f"{RUNS}/{run['run_id']}")
    assert ran["status"] == "succeeded"
    assert ran["notebook_version"] == "null" if unversioned else ran["notebook_version"] not in (None, "null")
    [again] = api.json("POST", f"{RUNS}/{run['run_id']}/rerun")["runs"]
    run_all(executor, dispatched)
    assert stream_text(api.json("GET", f"{RUNS}/{again['run_id']}/output")).strip() == "before"


def test_a_rerun_keeps_its_runs_timeout_unless_given_one_and_within_todays_limits(api, stack, dispatched):
    notebook_id = api.create(content=notebook_of("1"))["notebook_id"]
    [run] = api.json("POST", BASE + "/_run", {"nbkIds": [notebook_id], "module": "m", "timeout": 30})["runs"]
    [kept] = api.json("POST", f"{RUNS}/{run['run_id']}/rerun")["runs"]
    assert api.json("GET", f"{RUNS}/{kept['run_id']}")["timeout"] == 30
    [given] = api.json("POST", f"{RUNS}/{run['run_id']}/rerun", {"timeout": 60})["runs"]
    assert api.json("GET", f"{RUNS}/{given['run_id']}")["timeout"] == 60
    assert error(api.call("POST", f"{RUNS}/{run['run_id']}/rerun", {"timeout": 0}))[1].startswith("timeout")
    # A run of a longer timeout than the deployment allows today (it had Fargate then).
    stack.runs._table.transition(run["run_id"], "queued", {"timeout": 7200})
    status, message = error(api.call("POST", f"{RUNS}/{run['run_id']}/rerun"))
    assert status == 400 and message.startswith("timeout must be") and "at most 840" in message
