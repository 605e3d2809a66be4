"""A real browser renders the built book: headless Chromium (Debian's package) driven by Playwright.

The book is served from a local HTTP server; every request to another host (MathJax's CDN, fonts)
is refused, so the test is offline and shows what a reader sees without them. Nothing is installed
at run time: without ``/usr/bin/chromium`` (``make test`` installs it) the test is skipped.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator

import pytest
from _book import built_book  # noqa: F401

CHROMIUM = os.environ.get("ADAMQLR_CHROMIUM", "/usr/bin/chromium")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM} (install Debian's `chromium` package, as `make test` "
        "does, or set ADAMQLR_CHROMIUM)",
    ),
]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(built_book) -> Iterator[str]:  # noqa: F811
    handler = functools.partial(_Quiet, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


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

        def local_only(route) -> None:
            if route.request.url.startswith(server):
                route.continue_()
            else:
                route.abort()

        tab.route("**/*", local_only)
        tab.set_default_timeout(30_000)
        try:
            yield tab
        finally:
            browser.close()


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
