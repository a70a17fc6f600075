"""The users command (`python -m chalicelib.auth.users`) when it cannot reach a users table."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "aws, reason",
    [
        ({}, "NoCredentialsError"),  # the local stack's environment was never set
        (
            {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
            "EndpointConnectionError",  # a stack that is not running
        ),
        (
            {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "127.0.0.1:9"},
            "Invalid endpoint: 127.0.0.1:9",  # botocore's ValueError: no scheme
        ),
    ],
)
def test_an_unreachable_users_table_is_one_line_saying_what_to_do(aws, reason, tmp_path):
    result = users_command(["list"], aws, tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert reason in line and "devstack.stack env" in line and "NOTEBOOKS_USERS_TABLE" in line, line


def users_command(argv, env_changes, home, stdin=""):
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "NOTEBOOKS_"))}
    env.update(HOME=str(home), AWS_DEFAULT_REGION="us-east-1", AWS_MAX_ATTEMPTS="1", **env_changes)
    return subprocess.run(
        [sys.executable, "-m", "chalicelib.auth.users", *argv],
        env=env,
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # no controlling terminal, whoever runs the tests: getpass reads stdin
    )


def test_a_setting_that_does_not_parse_is_one_line(tmp_path):
    result = users_command(["list"], {"NOTEBOOKS_RUN_TIMEOUT": "abc"}, tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "NOTEBOOKS_RUN_TIMEOUT" in line, line


def test_no_password_on_an_ended_standard_input_is_one_line(tmp_path):
    """Standard input empty and no terminal: getpass falls back to it and finds nothing."""
    credentials = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    for argv in (["add", "zed"], ["add", "zed", "--password-stdin"]):
        result = users_command(argv, credentials, tmp_path)
        assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr, argv
        assert result.stderr.endswith("error: no password given (standard input ended)\n"), result.stderr
