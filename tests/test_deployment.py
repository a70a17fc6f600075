"""The deployed stack's extra resources: generated from the code, so they cannot drift."""
import json
from pathlib import Path

from chalicelib.config import Settings
from chalicelib.deployment import merge_template
from chalicelib.metadata import table_definitions

ROOT = Path(__file__).resolve().parent.parent


def test_committed_merge_template_is_the_generated_one():
    committed = json.loads((ROOT / ".chalice" / "resources.json").read_text())
    assert committed == merge_template(), "run: python -m chalicelib.deployment > .chalice/resources.json"


def test_tables_match_the_table_design():
    resources = merge_template()["Resources"]
    for logical_id, definition in zip(("NotebooksTable", "RunsTable", "UsersTable"), table_definitions(Settings())):
        properties = resources[logical_id]["Properties"]
        assert {k: properties[k] for k in definition} == definition


def test_eventbridge_may_invoke_the_runner_for_this_services_rules_only():
    permission = merge_template()["Resources"]["RunnerInvokedByScheduleRules"]["Properties"]
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["FunctionName"] == {"Ref": "Runner"}
    assert permission["SourceArn"]["Fn::Sub"].endswith(":rule/notebooks-*")


def test_the_runner_is_invoked_by_name_and_targeted_by_arn():
    variables = merge_template()["Resources"]["APIHandler"]["Properties"]["Environment"]["Variables"]
    assert variables["NOTEBOOKS_RUNNER_FUNCTION"] == {"Ref": "Runner"}
    assert variables["NOTEBOOKS_RUNNER_ARN"] == {"Fn::GetAtt": ["Runner", "Arn"]}


def test_the_runner_function_has_lambdas_maximum_time_and_the_run_timeout_ends_first():
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    runner = config["stages"]["dev"]["lambda_functions"]["runner"]
    assert runner["lambda_timeout"] == 900
    assert float(config["environment_variables"]["NOTEBOOKS_RUN_TIMEOUT"]) < 900
