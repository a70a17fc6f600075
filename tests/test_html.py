"""HTML output: nothing in a notebook can make the rendered page run script, even when
the page is saved to disk and opened without its Content-Security-Policy."""

import base64
import re

import bleach
import bs4
import nbformat
import pytest

from chalicelib.runs import html

# Links and sources that run script, spelled as attackers spell them.
SCRIPT_URLS = [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "&#106;avascript:alert(1)",
    "&#x6A;avascript:alert(1)",
    "java&#9;script:alert(1)",
    "java&#x0A;script:alert(1)",
    "vbscript:msgbox(1)",
    "data:text/html;base64," + base64.b64encode(b"<script>alert(1)</script>").decode(),
    "data:text/html,<script>alert(1)</script>",
    "data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=",
]
MARKDOWN_ATTACKS = (
    [f"[click]({url})" for url in SCRIPT_URLS if " " not in url and "<" not in url]
    + [f"![image]({url})" for url in SCRIPT_URLS if " " not in url and "<" not in url]
    + [f"<{url}>" for url in SCRIPT_URLS[:3]]
    + [
        "[ref][x]\n\n[x]: javascript:alert(1)",
    ]
)
HTML_ATTACKS = (
    [f'<a href="{url}">x</a>' for url in SCRIPT_URLS]
    + [f'<img src="{url}">' for url in SCRIPT_URLS if not url.startswith("data:image")]
    + [
        '<img src=x onerror="alert(1)">',
        "<script>alert(1)</script>",
        '<iframe src="javascript:alert(1)"></iframe>',
        '<form action="javascript:alert(1)"><button>go</button></form>',
        '<body onload="alert(1)">',
        '<object data="javascript:alert(1)"></object>',
        '<embed src="javascript:alert(1)">',
        '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
        '<base href="javascript:alert(1)//">',
        '<svg onload="alert(1)"><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>',
        '<math><a href="javascript:alert(1)">x</a></math>',
        '<details open ontoggle="alert(1)">',
    ]
)
SVG_ATTACKS = [
    '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(1)</script></svg>',
    '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink">'
    '<a xlink:href="javascript:alert(1)"><text y="10">x</text></a></svg>',
    '<svg xmlns="http://www.w3.org/2000/svg"><foreignObject><iframe src="javascript:alert(1)"/></foreignObject></svg>',
]


def markdown_cell(text):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])


def output(mime, text):
    cell = nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("display_data", data={mime: text})])
    return nbformat.v4.new_notebook(cells=[cell])


def raw_cell(text):
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_raw_cell(text, metadata={"format": "text/html"})])


CASES = (
    [("markdown cell", markdown_cell(text)) for text in MARKDOWN_ATTACKS + HTML_ATTACKS]
    + [("markdown output", output("text/markdown", text)) for text in MARKDOWN_ATTACKS + HTML_ATTACKS]
    + [("html output", output("text/html", text)) for text in HTML_ATTACKS]
    + [("raw cell", raw_cell(text)) for text in HTML_ATTACKS]
    + [("svg output", output("image/svg+xml", text)) for text in SVG_ATTACKS]
    + [("markdown cell", markdown_cell(text)) for text in SVG_ATTACKS]
)


def active_content(page: str) -> list:
    """What in `page` a browser without a CSP would run, found independently of runs/html.py:
    script elements, event handlers, and script URLs in any attribute a browser follows."""
    found = []
    soup = bs4.BeautifulSoup(page, "html.parser")
    found += [str(element)[:80] for element in soup.find_all(["script", "iframe", "object", "embed", "base"])]
    for element in soup.find_all(True):
        for name, value in element.attrs.items():
            for item in value if isinstance(value, list) else [value]:
                url = re.sub(r"[\x00-\x20]", "", item).lower()
                image = re.match(r"data:image/(png|gif|jpeg);", url) or (
                    element.name == "img" and name == "src" and url.startswith("data:image/svg+xml")
                )
                if (
                    name.lower().startswith("on")
                    or name == "http-equiv"
                    or (url.startswith(("javascript:", "vbscript:", "data:")) and not image)
                ):
                    found.append(f"<{element.name} {name}={item[:60]!r}>")
    return found


@pytest.mark.parametrize("where, notebook", CASES, ids=[f"{where}-{i}" for i, (where, _) in enumerate(CASES)])
def test_no_attack_string_survives_anywhere(where, notebook):
    assert active_content(html.render(notebook)) == []


def test_the_page_has_no_script_of_its_own_either():
    """nbconvert's MathJax, RequireJS and Mermaid loaders would run when saved to disk,
    fetching code from CDNs and feeding it the notebook's text."""
    page = html.render(markdown_cell("$x^2$ and ```mermaid\ngraph TD; A-->B\n```"))
    assert "<script" not in page.lower()


def test_safe_links_images_and_plots_stay():
    png = "data:image/png;base64,iVBORw0KGgo="
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="5" height="5"/></svg>'
    notebook = markdown_cell(f"[docs](https://example.org/a?b=1) [mail](mailto:a@b.c) [top](#top) ![plot]({png})")
    notebook.cells.append(output("image/svg+xml", svg).cells[0])
    soup = bs4.BeautifulSoup(html.render(notebook), "html.parser")
    assert {a.get("href") for a in soup.find_all("a")} >= {"https://example.org/a?b=1", "mailto:a@b.c", "#top"}
    sources = [img.get("src", "") for img in soup.find_all("img")]
    assert png in sources and any(src.startswith("data:image/svg+xml;base64,") for src in sources)


def test_the_checker_finds_what_it_looks_for():
    """The test's own detector catches each kind of attack in a page that was not cleaned."""
    for raw in [
        '<a href="java\tscript:x">',
        "<img src=x onerror=y>",
        "<script>x</script>",
        '<a href="DATA:text/html,x">',
        '<svg><a xlink:href="javascript:x"></a></svg>',
    ]:
        assert active_content(raw), raw


def visible_text(page: str) -> str:
    """What a browser shows of `page`: its body's text, without the template's styles."""
    soup = bs4.BeautifulSoup(page, "html.parser")
    for element in soup.find_all(["style", "script"]):
        element.decompose()
    return soup.body.get_text()


def test_a_dataframe_renders_as_a_table_without_its_css_as_text():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"city": ["Oslo", "Lima"], "people": [709_000, 10_000_000]})
    assert "<style scoped>" in frame._repr_html_()  # what pandas sends, and bleach escaped
    page = html.render(output("text/html", frame._repr_html_()))
    table = bs4.BeautifulSoup(page, "html.parser").find("table", class_="dataframe")
    assert table is not None and "Lima" in table.get_text()
    assert ".dataframe" not in visible_text(page) and "vertical-align" not in visible_text(page)


def test_style_elements_are_dropped_however_written():
    assert html.drop_style_elements("a<STYLE media=x>p{}</style >b<style>c") == "ab"
    assert html.drop_style_elements("<styles>x</styles>") == "<styles>x</styles>"


def test_html_nested_deeper_than_the_cap_is_a_notice_not_sanitised(monkeypatch):
    sanitised = []
    real = bleach.sanitizer.Cleaner.clean
    monkeypatch.setattr(
        bleach.sanitizer.Cleaner, "clean", lambda self, text: sanitised.append(text) or real(self, text)
    )
    deep = "<div>" * 5000 + "deep" + "</div>" * 5000
    page = html.render(output("text/html", deep))
    assert html.TOO_DEEP_NOTICE in page and "deep</div>" not in page
    assert all(len(text) < 1000 for text in sanitised)  # the deep HTML never reached the sanitiser


@pytest.mark.parametrize(
    "markup, too_deep",
    [
        ("<div>" * 101, True),
        ("<div/>" * 101, True),  # HTML reads <div/> as an open <div>
        ("<div>" * 100, False),
        ("<div></div>" * 5000, False),
        ("<p><br><img src=x>" * 50, False),  # void elements hold nothing
        ("<svg>" + "<path/>" * 5000 + "</svg>", False),  # self-closing in SVG
        ("<div></span>" * 101, True),  # an end tag without its start closes nothing
        ("<b><i></b>" * 101, True),  # each <i> closed by </b> is reopened by the parser
        ("<b><i></i></b>" * 101, False),
        ("<div><i></div></i>" * 101, False),  # a lingering <i> ends at its own end tag
    ],
)
def test_the_depth_gauge(markup, too_deep):
    assert html.nests_too_deep(markup) is too_deep
