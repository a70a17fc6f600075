"""Users: the DynamoDB user table, and a command to manage it.

    python -m chalicelib.auth.users add NAME      # asks for the password (or reads stdin)
    python -m chalicelib.auth.users list
    python -m chalicelib.auth.users remove NAME

The command talks to whatever AWS the environment names (`AWS_ENDPOINT_URL`,
`AWS_REGION`, `NOTEBOOKS_USERS_TABLE`), so it serves the local stack and a deployment.
"""

import argparse
import getpass
import re
import sys

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.auth.logins import SCRYPT_N, hash_password
from chalicelib.common import aws
from chalicelib.common.aws import error_code
from chalicelib.common.config import Settings

_USERNAME = re.compile(r"^[A-Za-z0-9_@+-][A-Za-z0-9_.@+-]{0,63}$")


def valid_username(name: str) -> bool:
    """Usernames become S3 key and path segments: letters, digits and `_.@+-` only."""
    return bool(_USERNAME.match(name))


class UserStore:
    """Users and their password hashes, one DynamoDB item each, keyed by username."""

    def __init__(self, table, scrypt_n: int = SCRYPT_N):
        self._table = table
        self.scrypt_n = scrypt_n  # the cost of new hashes

    def password_hash(self, username: str):
        """The stored hash of `username`, or None for an unknown user."""
        if not valid_username(username):
            return None  # never a user, and not always a valid DynamoDB key
        item = self._table.get_item(Key={"username": username}).get("Item")
        return item["password_hash"] if item else None

    def add(self, username: str, password: str) -> None:
        """Create or replace `username` with a fresh salted hash of `password`."""
        if not valid_username(username):
            raise ValueError(f"invalid username {username!r}: use letters, digits and _.@+- only")
        if not password:
            raise ValueError("the password must not be empty")
        self._table.put_item(Item={"username": username, "password_hash": hash_password(password, self.scrypt_n)})

    def upgrade_hash(self, username: str, password: str, old_hash: str) -> str:
        """Replace `username`'s `old_hash` by a hash of `password` (which it matched) at
        today's cost; the hash stored afterwards. A password changed meanwhile is kept."""
        new_hash = hash_password(password, self.scrypt_n)
        try:
            self._table.update_item(
                Key={"username": username},
                UpdateExpression="SET password_hash = :new",
                ConditionExpression="password_hash = :old",
                ExpressionAttributeValues={":new": new_hash, ":old": old_hash},
            )
        except ClientError as error:
            if error_code(error) != "ConditionalCheckFailedException":
                raise
            return old_hash
        return new_hash

    def remove(self, username: str) -> bool:
        """Remove `username`; whether it existed."""
        old = self._table.delete_item(Key={"username": username}, ReturnValues="ALL_OLD")
        return "Attributes" in old

    def names(self) -> list:
        """Every username, sorted."""
        items = aws.all_items(self._table.scan, ProjectionExpression="username")
        # The table also holds failed-login counts, under keys no username can have.
        return sorted(item["username"] for item in items if valid_username(item["username"]))


def parse_user_list(spec: str) -> list:
    """`name:password,...` (the NOTEBOOKS_USERS setting) as [(name, password), ...]."""
    pairs = []
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, colon, password = entry.partition(":")
        if not colon or not name or not password:
            raise ValueError(f"NOTEBOOKS_USERS entry {entry!r} is not name:password")
        pairs.append((name, password))
    return pairs


def main(argv=None) -> int:
    """The `python -m chalicelib.auth.users` command."""
    parser = argparse.ArgumentParser(prog="python -m chalicelib.auth.users", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a user, or set a new password")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    commands.add_parser("list", help="list usernames")
    remove = commands.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as error:  # a setting that does not parse
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        table = aws.dynamodb_table(settings.users_table, settings.region)
    except ValueError as error:  # botocore's, for an endpoint URL it cannot use
        return _unreachable(settings, str(error))
    try:
        return _run(args, UserStore(table, settings.password_scrypt_n))
    except (BotoCoreError, ClientError) as error:
        return _unreachable(settings, aws.failure_reason(error))
    except EOFError:
        print("error: no password given (standard input ended)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _unreachable(settings: Settings, reason: str) -> int:
    """Say in one line that the users table cannot be reached, and what to do; exit status 1."""
    print(
        f"error: cannot reach the users table {settings.users_table!r} ({reason}). "
        'Local stack: with `make dev` running, run `eval "$(.venv/bin/python -m devstack.stack env)"` first; '
        "deployed stack: set AWS credentials, AWS_REGION and NOTEBOOKS_USERS_TABLE (a stack output).",
        file=sys.stderr,
    )
    return 1


def _run(args, store: UserStore) -> int:
    """One users command on `store`; its exit status."""
    if args.command == "list":
        print("\n".join(store.names()))
    elif args.command == "add":
        if args.password_stdin:
            line = sys.stdin.readline()
            if not line:
                raise EOFError
            password = line.rstrip("\n")
        else:
            password = getpass.getpass(f"Password for {args.name}: ")
        try:
            store.add(args.name, password)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"added {args.name}")
    elif not store.remove(args.name):
        print(f"error: no user {args.name}", file=sys.stderr)
        return 1
    else:
        print(f"removed {args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
