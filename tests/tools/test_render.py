"""The exit view: HTML structure and escaping, then the page in headless Chromium.

The browser test needs Selenium and Debian's chromium + chromium-driver, which
CI installs: without them it fails saying what to install, it does not skip."""

import io
import threading
from html.parser import HTMLParser

import pytest
import spacy
from spacy.tokens import Span

from spacy_earlyexit import render
from spacy_earlyexit.tools.render import layer_colour, make_server
from spacy_earlyexit.tools.screenshot import BrowserUnavailable, chromium_driver, screenshot_page

TEXTS = [
    "Angela Merkel visited Paris on Tuesday .",
    "John sat on the mat in Berlin . The cat visited Paris .",
]
HOSTILE = 'Paris <script>window.pwned = 1</script> <img src=x onerror="window.pwned=2"> & "John"'
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "div", "span", "mark"}


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of the page."""

    def __init__(self, html: str):
        super().__init__()
        self.tags, self.text = [], []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def with_class(self, name):
        return [attrs for tag, attrs in self.tags if name in (attrs.get("class") or "").split()]


@pytest.fixture(scope="module")
def nlp(saved_pipeline):
    return spacy.load(saved_pipeline)


@pytest.fixture(scope="module")
def docs(nlp):
    return [nlp(text) for text in TEXTS]


def test_every_token_is_one_element_with_its_exit_layer_tag_and_shade(docs):
    page = Elements(render(docs))
    tokens = page.with_class("ee-token")
    expected = [t for doc in docs for t in doc]
    assert [a["data-exit-layer"] for a in tokens] == [str(t._.exit_layer) for t in expected]
    assert [a["data-tag"] for a in tokens] == [t.tag_ for t in expected]
    for attrs, token in zip(tokens, expected):
        assert layer_colour(token._.exit_layer, 3) in attrs["style"]
        assert token.text in attrs["title"] and f"exit layer {token._.exit_layer} of 3" in attrs["title"]
    assert len({a["data-exit-layer"] for a in tokens}) > 1
    assert [a["data-exit-layer"] for a in page.with_class("ee-swatch")] == ["1", "2", "3"]
    assert [a["data-label"] for a in page.with_class("ee-ent")] == [e.label_ for doc in docs for e in doc.ents]
    assert [float(a["data-speedup"]) for a in page.with_class("ee-doc")] == [
        pytest.approx(doc._.earlyexit_speedup, abs=1e-4) for doc in docs
    ]
    assert any(t.startswith("speed-up ") for t in page.text)
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS


def test_one_component_and_a_fragment(docs):
    html = render(docs[0], page=False, component="earlyexit_tagger", show_tags=False)
    assert not html.startswith("<!DOCTYPE") and html.startswith("<style>")
    page = Elements(html)
    assert [a["data-exit-layer"] for a in page.with_class("ee-token")] == [
        str(t._.exit_layers["earlyexit_tagger"]) for t in docs[0]
    ]
    assert not page.with_class("ee-tag")


def test_hostile_text_labels_and_tags_stay_text(nlp):
    doc = nlp(HOSTILE)
    doc.ents = [Span(doc, 0, 1, label='<b onclick="x">PER</b>')]
    doc[2].tag_ = '"><script>alert(1)</script>'
    doc.user_data["title"] = "</title><script>alert(2)</script>"
    html = render(doc)
    page = Elements(html)
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS
    assert "<script" not in html and "<img" not in html and "<b " not in html
    assert len(page.with_class("ee-token")) == len(doc)
    assert "".join(page.text).count("<script>") == 2  # shown, as text
    assert page.with_class("ee-ent")[0]["data-label"] == '<b onclick="x">PER</b>'


def test_docs_without_exit_information_still_render():
    doc = spacy.blank("en")("No pipeline here .")
    page = Elements(render(doc))
    assert [a["data-exit-layer"] for a in page.with_class("ee-token")] == [""] * 4
    assert not page.with_class("ee-swatch") and "no early-exit annotation" in "".join(page.text)


@pytest.fixture(scope="module")
def browser():
    try:
        with chromium_driver(width=1000) as driver:
            yield driver
    except BrowserUnavailable as err:
        pytest.fail(f"{err} CI installs these; this test must run.", pytrace=False)


def test_the_served_page_in_headless_chromium(browser, nlp, docs):
    from PIL import Image
    from selenium.webdriver.common.by import By

    hostile = nlp(HOSTILE)
    shown = docs + [hostile]
    server = make_server(shown, port=0, host="127.0.0.1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        png = screenshot_page(browser, f"http://127.0.0.1:{server.server_port}/", width=1000)
        tokens = browser.find_elements(By.CSS_SELECTOR, ".ee-token")
        expected = [t for doc in shown for t in doc]
        assert len(tokens) == len(expected)
        layers = [int(el.get_attribute("data-exit-layer")) for el in tokens]
        assert layers == [t._.exit_layer for t in expected]
        shade = {}
        for el, layer in zip(tokens, layers):
            shade.setdefault(layer, set()).add(el.value_of_css_property("background-color"))
        assert len(shade) > 1 and all(len(colours) == 1 for colours in shade.values())
        assert len({next(iter(colours)) for colours in shade.values()}) == len(shade)  # one shade per layer
        labels = [el.text for el in browser.find_elements(By.CSS_SELECTOR, ".ee-ent .ee-label")]
        assert labels == [e.label_ for doc in shown for e in doc.ents] and labels
        tags = [el.text for el in browser.find_elements(By.CSS_SELECTOR, ".ee-tag")]
        assert tags == [t.tag_ for t in expected]
        texts = [el.text for el in browser.find_elements(By.CSS_SELECTOR, ".ee-token .ee-text")]
        assert texts == [t.text for t in expected] and "<script" in "".join(texts)  # shown, not run
        assert browser.execute_script("return window.pwned === undefined;")
        swatches = [
            (el.rect, el.get_attribute("data-exit-layer"))
            for el in browser.find_elements(By.CSS_SELECTOR, ".ee-swatch")
        ]
    finally:
        server.shutdown()
        server.server_close()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width >= 900 and image.height >= 200
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
    # the legend's three shades are on the screenshot, each different
    assert [layer for _, layer in swatches] == ["1", "2", "3"]
    pixels = [image.getpixel((int(r["x"] + 3), int(r["y"] + r["height"] / 2))) for r, _ in swatches]
    assert len(set(pixels)) == 3
    assert sum(pixels[0]) > sum(pixels[1]) > sum(pixels[2])  # darker for deeper exits
