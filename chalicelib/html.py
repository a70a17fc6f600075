"""Executed notebooks rendered as HTML pages that cannot script the API's origin.

Two layers: nbconvert's SanitizeHTML preprocessor (bleach) cleans the HTML of Markdown,
raw cells and outputs, with an allowlist wide enough for headings, tables and DataFrames
(nbconvert's own `sanitize_html` flag escapes even <h1> and <p>), and every page is served with a
Content-Security-Policy that allows no script at all and sandboxes the page into an
opaque origin, so even markup that slipped through cannot call the API with the
browser's cached credentials. Plots stay visible: images are inline `data:` URIs.
"""
import threading

import bleach

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; sandbox"
)
HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_TAGS = sorted({
    *bleach.ALLOWED_TAGS, "p", "div", "span", "pre", "code", "br", "hr", "img", "sub", "sup", "del", "s",
    "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption",
    "dl", "dt", "dd", "details", "summary",
})
_ATTRIBUTES = {
    "*": ["class", "title", "align"],
    "a": ["href", "title"],
    "img": ["src", "alt", "width", "height"],
    "th": ["colspan", "rowspan"],
    "td": ["colspan", "rowspan"],
    "table": ["border"],
}
_lock = threading.Lock()
_exporter = None


def render(notebook) -> str:
    """`notebook` (a NotebookNode) as a self-contained, sanitised HTML page."""
    global _exporter
    with _lock:  # building the exporter loads its templates: once a process, one at a time
        if _exporter is None:
            # Imported on first use: nbconvert is large, and the API function's start-up
            # (every cold start) should not wait for it.
            from nbconvert import HTMLExporter
            from nbconvert.preprocessors.sanitize import SanitizeHTML
            from traitlets.config import Config

            config = Config({"SanitizeHTML": {
                "tags": _TAGS, "attributes": _ATTRIBUTES,
                # SVG plots stay: the page embeds them as <img src="data:...">, where
                # browsers run no script.
                "safe_output_keys": [*SanitizeHTML().safe_output_keys, "image/svg+xml"],
            }})
            _exporter = HTMLExporter(config=config)
            _exporter.register_preprocessor(SanitizeHTML, enabled=True)
        body, _ = _exporter.from_notebook_node(notebook)
    return body
