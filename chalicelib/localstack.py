"""The local stack behind `make dev`: embedded AWS (moto's server on loopback) and Chalice's
local server, with local stand-ins for Lambda (a worker pool) and the EventBridge clock.

No AWS account and no Docker: everything runs in this one process, and stops with it.
"""
import logging
import os
import re
import signal
import socket
import sys

from . import aws, services
from .config import Settings
from .metadata import create_tables
from .schedules import LocalEventClock
from .users import UserStore, parse_user_list


# Credentials for the embedded AWS only: moto accepts any, real AWS none of these.
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def provision(settings: Settings, users=()) -> None:
    """Create the bucket and tables (if missing) and add `users` [(name, password)]."""
    s3 = aws.client("s3", settings.region)
    existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
    if settings.bucket not in existing:
        s3.create_bucket(Bucket=settings.bucket)
    create_tables(aws.client("dynamodb", settings.region), settings)
    store = UserStore(aws.dynamodb_table(settings.users_table, settings.region))
    for name, password in users:
        store.add(name, password)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_embedded_aws():
    """Start moto's server on loopback and point this process's AWS clients at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(LOCAL_AWS_ENV)
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    services.reset()
    return server


def _request_handler():
    """Chalice's local request handler, with two fixes for clients written against the seed."""
    from chalice.local import ChaliceRequestHandler

    from .errors import error_response

    class RequestHandler(ChaliceRequestHandler):
        def _generic_handle(self):
            # The seed's Run sample has a double slash (`//_notebooks`); treat `//` as `/`.
            self.path = re.sub(r"/{2,}", "/", self.path)
            super()._generic_handle()

        def _send_error_response(self, error):
            # The gateway's "Missing Authentication Token" means no such route: a 404.
            not_found = error_response(404, "Not found")
            self._send_http_response(404, dict(not_found.headers), not_found.to_dict()["body"])

    return RequestHandler


def serve(host: str, port: int):
    """Chalice's local server for app.py, without its autoreloader (state lives here)."""
    import functools

    from chalice.config import Config
    from chalice.local import create_local_server

    import app as application

    config = Config.create(chalice_stage="dev", app_name="notebooks", chalice_app=application.app)
    server = create_local_server(application.app, config, host, port)
    server.server.RequestHandlerClass = functools.partial(
        _request_handler(), app_object=application.app, config=config
    )
    return server


def main() -> int:
    """`make dev`: embedded AWS, tables, users, workers, clock, and the API on $PORT."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's own request log
    port = int(os.environ.get("PORT", "8000"))
    os.environ["NOTEBOOKS_DISPATCH"] = "local"
    embedded_aws = start_embedded_aws()
    settings = Settings.from_env()
    users = parse_user_list(settings.local_users)
    provision(settings, users)
    local = services.get()
    local.dispatcher.start()  # the local Lambda: workers, each with a kernel started ahead
    clock = LocalEventClock(aws.client("events", settings.region), settings.rule_prefix, local.dispatcher.dispatch)
    clock.start()
    server = serve("127.0.0.1", port)
    # Ctrl-C and SIGTERM both end serve_forever; everything started here stops after it.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"Embedded AWS (moto) on {os.environ['AWS_ENDPOINT_URL']}", flush=True)
    print("Local-only credentials: " + ", ".join(f"{name}:{password}" for name, password in users), flush=True)
    print(f"Notebooks API on http://127.0.0.1:{port} (Ctrl-C stops everything)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server.server_close()
        clock.stop()
        local.dispatcher.stop()
        embedded_aws.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
