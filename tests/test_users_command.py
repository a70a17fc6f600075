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
    ],
)
def test_an_unreachable_users_table_is_one_line_saying_what_to_do(aws, reason, tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "NOTEBOOKS_"))}
    env.update(HOME=str(tmp_path), AWS_DEFAULT_REGION="us-east-1", AWS_MAX_ATTEMPTS="1", **aws)
    result = subprocess.run(
        [sys.executable, "-m", "chalicelib.auth.users", "list"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert reason in line and "devstack.stack env" in line and "NOTEBOOKS_USERS_TABLE" in line, line
