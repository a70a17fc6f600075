"""The local server's HTTP handling: Chalice's local request handler, with fixes for
clients written against the seed and for bodies Chalice's own handler does not read safely.

Every answer is in the seed's error shape, those http.server gives on its own too: an
unknown method is a 405, a request line over 64 KiB a 414, a header line over 64 KiB or
more than 100 headers a 431. A refused request whose body is left unread (too large: 413)
is answered and then closed lingeringly: the server stops sending, reads and discards what
the client still sends (up to a bound), and closes only then, so a client that sends its
whole body before reading (urllib, requests) reads the 413 instead of a reset connection.
"""

import re
import socket
import time
from http import HTTPStatus

# What a lingering close reads and discards at most, in bytes and in seconds.
_DRAIN_BYTES = 64 * 1024 * 1024
_DRAIN_SECONDS = 10.0
_METHODS = ("GET", "PUT", "POST", "HEAD", "DELETE", "PATCH", "OPTIONS")


class _Refused(Exception):
    """A request the local server answers itself, before the app sees it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def request_handler(max_body_bytes: int):
    """Chalice's local request handler, with fixes for clients written against the seed
    and for bodies Chalice's own handler does not read safely."""
    from chalice.local import ChaliceRequestHandler

    from chalicelib.api.errors import error_response

    class RequestHandler(ChaliceRequestHandler):
        def _generic_handle(self):
            # The source address API Gateway would give (Chalice's own says 127.0.0.1):
            # failed logins are counted per source.
            self.local_gateway.event_converter.LOCAL_SOURCE_IP = self.client_address[0]
            # The seed's Run sample has a double slash (`//_notebooks`); treat `//` as `/`.
            self.path = re.sub(r"/{2,}", "/", self.path)
            try:
                self._body = self._read_body()
            except _Refused as refusal:
                self._refuse(refusal.status, refusal.message)
                return
            super()._generic_handle()

        def send_error(self, code, message=None, explain=None):
            """http.server's own refusals (bad request line, 414, 431, unknown method), in
            the seed's shape. It has no handler for a method it does not know: a 405."""
            headers = {}
            if code == HTTPStatus.NOT_IMPLEMENTED:
                code, message = HTTPStatus.METHOD_NOT_ALLOWED, f"Unsupported method: {self.command}"
                headers["Allow"] = ", ".join(_METHODS)
            self._refuse(int(code), message or HTTPStatus(code).phrase, headers)

        def _refuse(self, status, message, headers=None):
            """Answer `status` and close the connection, whose request was not read whole."""
            self.close_connection = True
            self._send_seed_error(status, message, {"Connection": "close", **(headers or {})})
            self._linger()

        def _linger(self):
            """Stop sending, then read and discard what the client still sends (bounded),
            so closing with unread data does not reset the connection before the client
            has read the answer."""
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
                self.connection.settimeout(1.0)
                deadline, drained = time.monotonic() + _DRAIN_SECONDS, 0
                while drained < _DRAIN_BYTES and time.monotonic() < deadline:
                    chunk = self.connection.recv(65536)
                    if not chunk:
                        return
                    drained += len(chunk)
            except OSError:
                pass  # the client went away: nothing left to protect

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
                    raise _Refused(400, "Malformed chunked request body") from None
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

        def _send_seed_error(self, status, message, headers=None):
            response = error_response(status, message, headers)
            body = None if self.command == "HEAD" else response.to_dict()["body"]
            self._send_http_response(status, dict(response.headers), body)

    return RequestHandler
