"""The web dashboard's files (static/), served by the API under /_notebooks/ui/.

Plain HTML, CSS and JavaScript, read at request time from the files shipped in this
package: no build step. Only the names in ASSETS are served. Every answer carries a
Content-Security-Policy that allows the page's own files and nothing else: no inline
script or style, no other origin, no framing of the dashboard. The page frames run
outputs (`/_notebooks/runs/<id>/output?format=html`, same origin), which carry their own
policy (runs/html.py).

The page learns who is signed in from a `<meta name="notebooks-user">` element of the
index page, filled here with the caller's name (escaped): no script reads credentials.
"""

import html
from pathlib import Path

from chalicelib.api.errors import ApiError

STATIC = Path(__file__).parent / "static"
INDEX = "index.html"
ASSETS = {
    INDEX: "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; frame-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The index names its user: never from a shared cache; every file checked again after a deploy.
    "Cache-Control": "no-cache, private",
}
_USER_SLOT = "{{user}}"


def asset(name: str, username: str) -> tuple:
    """(body, headers) of the dashboard file `name`; a 404 for a name not in ASSETS."""
    if name not in ASSETS:
        raise ApiError(404, "Not found")
    body = (STATIC / name).read_text(encoding="utf-8")
    if name == INDEX:
        body = body.replace(_USER_SLOT, html.escape(username, quote=True))
    return body, {**HEADERS, "Content-Type": ASSETS[name]}
