"""A real browser renders the built book: headless Chromium (Debian's package) driven by Playwright.

The book is served from a local HTTP server; every request to another host is refused and
recorded, so the tests are offline and show what a reader without a network sees: every page's
equations must be rendered by the MathJax copy the book serves itself, and no page may ask for
anything outside the book. The book is the session's strict build, or the built HTML folder named
by ``ADAMQLR_BOOK_HTML`` (e.g. a fresh clone's ``_build/html``). Nothing is installed at run
time: without ``/usr/bin/chromium`` (``make test`` installs it) the tests are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from _book import PROJECT, book_html, built_book, serve  # noqa: F401

CHROMIUM = os.environ.get("ADAMQLR_CHROMIUM", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM} (install Debian's `chromium` package, as `make test` "
        "does, or set ADAMQLR_CHROMIUM)",
    ),
]


@pytest.fixture(scope="module")
def server(book_html) -> Iterator[str]:  # noqa: F811
    with serve(book_html) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-extensions",
                "--no-first-run",
            ],
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        tab.outside = []  # requests to anything but the book's server (refused)
        tab.missing = []  # the book's own files that were asked for but not served

        def local_only(route) -> None:
            if route.request.url.startswith(server):
                route.continue_()
            else:
                tab.outside.append(route.request.url)
                route.abort()

        def served(response) -> None:
            if response.url.startswith(server) and response.status >= 400:
                tab.missing.append(f"{response.status} {response.url}")

        tab.route("**/*", local_only)
        tab.on("response", served)
        tab.set_default_timeout(30_000)
        try:
            yield tab
        finally:
            browser.close()


def _open(page, url: str) -> None:
    """Load a page with a clean request log and wait until MathJax has typeset it."""
    page.outside.clear()
    page.missing.clear()
    page.goto(url, wait_until="load")
    page.evaluate(
        "async () => { if (window.MathJax && MathJax.startup && MathJax.startup.promise)"
        " { await MathJax.startup.promise; } }"
    )


def test_index_renders_and_links_to_the_quickstart(page, server) -> None:
    page.goto(f"{server}/index.html")
    page.wait_for_url("**/book/intro.html")  # index.html redirects to the root page
    page.wait_for_load_state("load")
    assert "AdamQLR" in page.title()
    heading = page.locator("article h1").first
    assert heading.is_visible() and "AdamQLR" in heading.inner_text()
    link = page.locator("nav.bd-links a", has_text="Quickstart").first
    assert link.is_visible()
    link.click()
    page.wait_for_url("**/book/01_quickstart.html")
    assert page.locator("article h1").first.inner_text().startswith("Quickstart")


def test_chapter_shows_figure_equation_number_and_caption(page, server) -> None:
    page.goto(f"{server}/book/01_quickstart.html")
    page.wait_for_load_state("load")
    figure = page.locator("figure#fig-quickstart-traces")
    image = figure.locator("img")
    image.scroll_into_view_if_needed()
    assert image.is_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth") > 300  # really loaded
    caption = figure.locator("figcaption")
    assert caption.is_visible() and caption.inner_text().startswith("Figure 1")
    number = page.locator("span.eqno", has_text="(1)").first
    number.scroll_into_view_if_needed()
    assert number.is_visible()
    reference = page.locator("a.reference.internal", has_text="Figure 1").first
    assert reference.is_visible()
    reference.click()
    page.wait_for_url("**#fig-quickstart-traces")
    assert page.locator("a[href*='colab.research.google.com']").count() >= 1


def test_glossary_term_is_visible(page, server) -> None:
    page.goto(f"{server}/book/notation.html")
    page.wait_for_load_state("load")
    term = page.locator("dt#term-damping")
    assert term.is_visible() and "damping" in term.inner_text()


#: What the browser reports about a page's mathematics once MathJax is done: how many rendered
#: formulas, the math elements left unrendered, TeX errors, and text that still looks like TeX
#: (delimiters or a dollar before a command) outside code.
_MATH_REPORT = r"""
() => {
  const math = [...document.querySelectorAll("span.math, div.math")];
  const unrendered = math.filter(e => !e.querySelector("mjx-container"))
                         .map(e => e.textContent.trim().slice(0, 80));
  const errors = [...document.querySelectorAll(
      "mjx-container [data-mjx-error], mjx-container [data-mml-node='merror']")]
    .map(e => (e.getAttribute("data-mjx-error") || e.textContent).slice(0, 80));
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode(node) {
      const parent = node.parentElement;
      const skip = "pre, code, script, style, textarea, mjx-container, .highlight";
      if (!parent || parent.closest(skip)) return NodeFilter.FILTER_REJECT;
      return NodeFilter.FILTER_ACCEPT;
    }
  });
  const raw = [];
  while (walker.nextNode()) {
    const text = walker.currentNode.textContent;
    if (/\\\(|\\\[|\$\$|\$\\[A-Za-z]/.test(text)) raw.push(text.trim().slice(0, 100));
  }
  const scripts = [...document.querySelectorAll("script[src]")].map(s => s.src);
  return {rendered: document.querySelectorAll("mjx-container").length, math: math.length,
          unrendered, errors, raw, scripts};
}
"""

PAGES = PROJECT.toc_files()


@pytest.mark.parametrize("docname", PAGES)
def test_page_math_renders_offline_from_the_book(page, server, book_html, docname) -> None:  # noqa: F811
    _open(page, f"{server}/{docname}.html")
    report = page.evaluate(_MATH_REPORT)
    mathjax = [s for s in report["scripts"] if "mathjax" in s.lower()]
    assert all(s.startswith(server) for s in mathjax), mathjax
    source = (book_html / f"{docname}.html").read_text(encoding="utf-8")
    if 'class="math' in source:
        assert mathjax, f"{docname} has math but loads no MathJax"
        assert report["math"] > 0 and report["rendered"] >= report["math"], report
    assert not report["unrendered"], f"unrendered math on {docname}: {report['unrendered'][:5]}"
    assert not report["errors"], f"TeX errors on {docname}: {report['errors'][:5]}"
    assert not report["raw"], f"raw TeX in the text of {docname}: {report['raw'][:5]}"
    assert not page.outside, f"{docname} requested outside the book: {page.outside[:5]}"
    assert not page.missing, f"{docname} requested missing files: {page.missing[:5]}"


def test_notation_page_renders_its_formulas(page, server) -> None:
    _open(page, f"{server}/book/notation.html")
    report = page.evaluate(_MATH_REPORT)
    assert report["rendered"] >= 20, report["rendered"]
    first = page.locator("mjx-container").first
    first.scroll_into_view_if_needed()
    box = first.bounding_box()
    assert box is not None and box["width"] > 3 and box["height"] > 5
