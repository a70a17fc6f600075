"""The local server's HTTP handling: Chalice's local request handler, with fixes for
clients written against the seed and for bodies Chalice's own handler does not read safely.
"""
import re


class _Refused(Exception):
    """A request the local server answers itself, before the app sees it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def request_handler(max_body_bytes: int):
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
