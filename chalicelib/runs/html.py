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

Rendering time is bounded whatever the HTML's shape: the sanitiser (html5lib's tree
builder) is quadratic in nesting depth, so each piece of HTML (a Markdown or raw cell, a
`text/html` or `text/markdown` output) nested deeper than MAX_HTML_DEPTH elements is shown
as a notice instead, found by one linear pass before it is sanitised. `<style>` elements
are dropped before sanitising (bleach would print their CSS as text, as above every
pandas DataFrame): a page's look is the template's.
"""

import re
import threading
from html.parser import HTMLParser

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
# Deepest element nesting a piece of HTML may have to be shown. A DataFrame's table is
# about 6 deep; nested lists and block quotes a few dozen at most.
MAX_HTML_DEPTH = 100
TOO_DEEP_NOTICE = (
    f"<p>[This HTML is nested more than {MAX_HTML_DEPTH} elements deep, too deep to show here: "
    "download the notebook (format=ipynb) to see it.]</p>"
)
# Elements that never hold others, whatever the markup says.
_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "param",
    "source",
    "track",
    "wbr",
}
_FOREIGN = ("svg", "math")  # where `<x/>` closes itself, as in XML


# HTML's formatting elements: one closed by an enclosing element's end tag stays
# "active", and the parser reopens it before later content (`<b><i></b>x`: x is in an <i>).
_FORMATTING = {"a", "b", "big", "code", "em", "font", "i", "nobr", "s", "small", "strike", "strong", "tt", "u"}


class _DepthGauge(HTMLParser):
    """Whether HTML nests deeper than `limit`, in one pass: a stack of open elements, an
    end tag closing up to its match (ignored without one), as a browser's parser does,
    and every formatting element closed that way still counted, since the parser may
    reopen it. It errs on the deep side: implied ends (a `<p>` closing an open `<p>`)
    close nothing here."""

    def __init__(self, limit: int):
        super().__init__(convert_charrefs=False)
        self.limit, self.too_deep = limit, False
        self.open: list[str] = []
        self.lingering: dict[str, int] = {}  # formatting elements closed by an enclosing end tag, by name

    def _measure(self) -> None:
        self.too_deep = self.too_deep or len(self.open) + sum(self.lingering.values()) > self.limit

    def handle_starttag(self, tag, attrs):
        if tag not in _VOID:
            self.open.append(tag)
            self._measure()

    def handle_startendtag(self, tag, attrs):
        if not any(name in self.open for name in _FOREIGN):  # HTML reads `<div/>` as `<div>`
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in self.open:
            match = len(self.open) - 1 - self.open[::-1].index(tag)
            for inner in self.open[match + 1 :]:
                if inner in _FORMATTING:
                    self.lingering[inner] = self.lingering.get(inner, 0) + 1
            del self.open[match:]
            self._measure()
        elif self.lingering.get(tag):
            self.lingering[tag] -= 1


def nests_too_deep(markup: str, limit: int = MAX_HTML_DEPTH) -> bool:
    """Whether `markup` nests elements more than `limit` deep (its cost is linear: the
    stack never grows past `limit + 1` before the answer is known)."""
    gauge = _DepthGauge(limit)
    step = 4096
    for start in range(0, len(markup), step):
        gauge.feed(markup[start : start + step])
        if gauge.too_deep:
            return True
    gauge.close()
    return gauge.too_deep


def drop_style_elements(markup: str) -> str:
    """`markup` without its `<style>` elements and their content; an unclosed one runs to
    the end, as browsers read it. Linear in the length of `markup`."""
    lowered, kept, position = markup.lower(), [], 0
    while True:
        start = lowered.find("<style", position)
        while start != -1 and lowered[start + 6 : start + 7] not in (">", "/", " ", "\t", "\n", "\r", "\f", ""):
            start = lowered.find("<style", start + 6)  # <styles>, not a style element
        if start == -1:
            kept.append(markup[position:])
            return "".join(kept)
        kept.append(markup[position:start])
        end = lowered.find("</style", start)
        if end == -1:
            return "".join(kept)
        close = lowered.find(">", end)
        position = len(markup) if close == -1 else close + 1


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

            class BoundedSanitizeHTML(SanitizeHTML):
                """SanitizeHTML on HTML whose styles are dropped, and only if not too deep."""

                def sanitize_html_tags(self, html_str):
                    html_str = drop_style_elements(html_str)
                    if nests_too_deep(html_str):
                        return TOO_DEEP_NOTICE
                    return super().sanitize_html_tags(html_str)

            config = Config(
                {
                    "BoundedSanitizeHTML": {
                        "tags": _TAGS,
                        "attributes": _ATTRIBUTES,
                        # SVG plots stay: the page embeds them as <img src="data:...">, where
                        # browsers run no script.
                        "safe_output_keys": [*SanitizeHTML().safe_output_keys, "image/svg+xml"],
                    }
                }
            )
            _exporter = HTMLExporter(config=config)
            _exporter.register_preprocessor(BoundedSanitizeHTML, enabled=True)
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
