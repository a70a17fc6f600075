"""Executed notebooks rendered as HTML pages that cannot script the API's origin.

Two layers: nbconvert's SanitizeHTML preprocessor (bleach) cleans the HTML of Markdown,
raw cells and outputs, with an allowlist wide enough for headings, tables and DataFrames
(nbconvert's own `sanitize_html` flag escapes even <h1> and <p>), and every page is served with a
Content-Security-Policy that allows no script at all and sandboxes the page into an
opaque origin, so even markup that slipped through cannot call the API with the
browser's cached credentials. Plots stay visible: images are inline `data:` URIs. Only
pages of the API's own origin may frame it: the dashboard (chalicelib/dashboard) shows
outputs in a sandboxed frame.

The page must be as safe saved to disk, where no CSP applies. Markdown (cells and
`text/markdown` outputs) becomes HTML only in the template, after SanitizeHTML, so a
last pass over the whole page removes what could run there: every script (nbconvert's own
MathJax, RequireJS and Mermaid loaders too, which would read notebook text as input),
every event-handler attribute, frames and embedded objects, and every `javascript:`,
`vbscript:` or non-image `data:` URL in a link or source.
"""

import re
import threading

import bleach

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox"
)
HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_TAGS = sorted(
    {
        *bleach.ALLOWED_TAGS,
        "p",
        "div",
        "span",
        "pre",
        "code",
        "br",
        "hr",
        "img",
        "sub",
        "sup",
        "del",
        "s",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "table",
        "thead",
        "tbody",
        "tfoot",
        "tr",
        "th",
        "td",
        "caption",
        "dl",
        "dt",
        "dd",
        "details",
        "summary",
    }
)
_ATTRIBUTES = {
    "*": ["class", "title", "align"],
    "a": ["href", "title"],
    "img": ["src", "alt", "width", "height"],
    "th": ["colspan", "rowspan"],
    "td": ["colspan", "rowspan"],
    "table": ["border"],
}
# Elements that run code or load active documents, removed with their content.
_ACTIVE_ELEMENTS = ["script", "iframe", "frame", "frameset", "object", "embed", "applet", "base", "portal"]
# Attributes browsers read as URLs (`xlink:href` in inline SVG).
_URL_ATTRIBUTES = {
    "href",
    "src",
    "xlink:href",
    "action",
    "formaction",
    "srcset",
    "poster",
    "background",
    "data",
    "cite",
    "ping",
    "lowsrc",
    "dynsrc",
    "manifest",
    "codebase",
}
# Browsers drop ASCII whitespace and control characters inside a URL's scheme: `java\tscript:`.
_IGNORED_IN_SCHEME = re.compile(r"[\x00-\x20\x7f]+")
_SCRIPT_SCHEMES = ("javascript:", "vbscript:", "data:")
_DATA_IMAGE = re.compile(r"data:image/(png|gif|jpeg|jpg|webp|bmp)[;,]")
_DATA_SVG = re.compile(r"data:image/svg\+xml[;,]")
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

            config = Config(
                {
                    "SanitizeHTML": {
                        "tags": _TAGS,
                        "attributes": _ATTRIBUTES,
                        # SVG plots stay: the page embeds them as <img src="data:...">, where
                        # browsers run no script.
                        "safe_output_keys": [*SanitizeHTML().safe_output_keys, "image/svg+xml"],
                    }
                }
            )
            _exporter = HTMLExporter(config=config)
            _exporter.register_preprocessor(SanitizeHTML, enabled=True)
        body, _ = _exporter.from_notebook_node(notebook)
    return remove_active_content(body)


def is_script_url(value: str, tag: str = "a") -> bool:
    """Whether a URL would run code or load an active document: `javascript:`,
    `vbscript:`, or `data:` other than an image (SVG only as an <img>, where it runs no
    script), however it is spelled (case, entities already decoded, tabs, controls)."""
    url = _IGNORED_IN_SCHEME.sub("", value).lower()
    if not url.startswith(_SCRIPT_SCHEMES):
        return False
    return not (_DATA_IMAGE.match(url) or (tag == "img" and _DATA_SVG.match(url)))


def remove_active_content(page: str) -> str:
    """`page` without scripts, event handlers, frames, objects and script URLs."""
    import bs4  # nbconvert's own HTML parser; imported where pages are rendered

    soup = bs4.BeautifulSoup(page, "html.parser")
    for element in soup.find_all(_ACTIVE_ELEMENTS):
        element.decompose()
    for element in soup.find_all("meta", attrs={"http-equiv": True}):
        element.decompose()  # a refresh to a javascript: URL
    for element in soup.find_all(True):
        for name in list(element.attrs):
            lowered = name.lower()
            value = element.attrs[name]
            values = value if isinstance(value, list) else [value]
            if lowered.startswith("on") or (
                lowered in _URL_ATTRIBUTES and any(is_script_url(v, element.name) for v in values)
            ):
                del element.attrs[name]
    return str(soup)
