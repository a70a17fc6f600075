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
import threading

from . import aws, embedded_aws, services
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


_CONNECTION_BACKLOG = 128


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _embedded_aws_server():
    """Moto's threaded server, answering one AWS request at a time.

    Moto's backends are not thread-safe: under concurrent requests a DynamoDB transaction
    loses its atomicity (two notebooks got one name) or fails inside moto. Real DynamoDB
    is atomic; serialising the embedded one makes it so here too.
    """
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    one_at_a_time = threading.Lock()
    moto_app = DomainDispatcherApplication(create_backend_app)

    def serialised_app(environ, start_response):
        with one_at_a_time:
            return list(moto_app(environ, start_response))

    class SerialMotoServer(ThreadedMotoServer):
        def _server_entry(self):
            self._server = make_server(self._ip_address, self._port, serialised_app, True,
                                       request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    return SerialMotoServer(ip_address="127.0.0.1", port=0, verbose=False)


def start_embedded_aws():
    """Start moto's server on loopback and point this process's AWS clients at it."""
    embedded_aws.install()
    server = _embedded_aws_server()
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(LOCAL_AWS_ENV)
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    services.reset()
    return server


class _Refused(Exception):
    """A request the local server answers itself, before the app sees it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _request_handler(max_body_bytes: int):
    """Chalice's local request handler, with fixes for clients written against the seed
    and for bodies Chalice's own handler does not read safely."""
    from chalice.local import ChaliceRequestHandler

    from .errors import error_response

    class RequestHandler(ChaliceRequestHandler):
        def _generic_handle(self):
            # The seed's Run sample has a double slash (`//_notebooks`); treat `//` as `/`.
            self.path = re.sub(r"/{2,}", "/", self.path)
            try:
                self._body = self._read_body()
            except _Refused as refusal:
                self.close_connection = True  # the unread body makes the connection unusable
                self._send_seed_error(refusal.status, refusal.message)
                return
            super()._generic_handle()

        def _parse_payload(self):
            return dict(self.headers), self._body

        def _read_body(self):
            """The body, by Content-Length or chunked, refused past the size limit."""
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked()
            length = self.headers.get("Content-Length", "0").strip()
            if not length.isdigit():
                raise _Refused(400, "Invalid Content-Length header")
            if int(length) > max_body_bytes:
                raise _Refused(413, f"Request body too large: at most {max_body_bytes} bytes")
            return self.rfile.read(int(length)) if int(length) else None

        def _read_chunked(self):
            body = bytearray()
            while True:
                try:
                    size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
                except ValueError:
                    raise _Refused(400, "Malformed chunked request body")
                if size == 0:
                    while self.rfile.readline(65536).strip():
                        pass  # trailers
                    return bytes(body) or None
                if len(body) + size > max_body_bytes:
                    raise _Refused(413, f"Request body too large: at most {max_body_bytes} bytes")
                body += self.rfile.read(size)
                self.rfile.readline()  # the CRLF after each chunk

        # The parent binds its own _generic_handle to every method: bind ours instead.
        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _generic_handle

        def _send_error_response(self, error):
            # The gateway's "Missing Authentication Token" means no such route: a 404.
            self._send_seed_error(404, "Not found")

        def _send_seed_error(self, status, message):
            response = error_response(status, message)
            self._send_http_response(status, dict(response.headers), response.to_dict()["body"])

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
        _request_handler(services.get().settings.max_body_bytes), app_object=application.app, config=config
    )
    # http.server queues 5 connections; a burst of clients would be reset. Listening again
    # on the bound socket raises the backlog.
    server.server.socket.listen(_CONNECTION_BACKLOG)
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
