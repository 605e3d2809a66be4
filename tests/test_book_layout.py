"""Every built page fits a wide, a narrow and a phone-sized window: nothing overflows its column.

Headless Chromium opens each page of the built book at 1400, 800 and 390 px and measures what the
reader sees: no table, no figure and no displayed equation is wider than the column it sits in (a
wide table or equation must scroll inside it), and, at 800 px and wider, no figure is shown at
less than 70 % of its natural width, where its text would be too small to read (a figure drawn 16
inches wide and squeezed into the column). On a phone every figure is scaled down; there the test
only asks that it fit.

As in ``test_book_browser.py``: without ``/usr/bin/chromium`` (or ``ADAMQLR_CHROMIUM``) or
Playwright the tests are skipped; the book is the session's strict build, or the built HTML
folder named by ``ADAMQLR_BOOK_HTML`` (skipped when that folder holds no built book).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from _book import PROJECT, book_html, built_book, serve  # noqa: F401 (used by the fixtures)

CHROMIUM = os.environ.get("ADAMQLR_CHROMIUM", "/usr/bin/chromium")
WIDTHS = (1400, 800, 390)
#: Below this window width figures are expected to shrink (a phone): only their fit is checked.
LEGIBLE_FROM = 800
#: A figure shown below this share of its natural width is too small to read.
SMALLEST_SHARE = 0.7

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM} (install Debian's `chromium` package, as `make test` "
        "does, or set ADAMQLR_CHROMIUM)",
    ),
]

PAGES = PROJECT.toc_files()


@pytest.fixture(scope="module")
def server(book_html) -> Iterator[str]:  # noqa: F811
    with serve(book_html) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module", params=WIDTHS, ids=lambda w: f"{w}px")
def tab(request, browser, server):
    context = browser.new_context(viewport={"width": request.param, "height": 900})
    page = context.new_page()
    page.route(
        "**/*", lambda route: route.continue_() if route.request.url.startswith(server) else
        route.abort()
    )  # fmt: skip
    page.set_default_timeout(30_000)
    yield page
    context.close()


#: Each table and figure image of the article, its width, its column's content width, and
#: (images) the natural width of the picture, once every image has loaded.
_LAYOUT = r"""
async () => {
  const article = document.querySelector("article") || document.querySelector("main");
  await Promise.all([...article.querySelectorAll("img")].map(im => im.complete ? null :
    new Promise(done => { im.onload = im.onerror = done; })));
  const content = el => {
    const s = getComputedStyle(el);
    return el.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
  };
  const column = el => {
    for (let up = el.parentElement; up; up = up.parentElement) {
      if (up === article || up.matches("figure, .cell_output, section, .output")) {
        if (getComputedStyle(up).display !== "inline") return content(up);
      }
    }
    return content(article);
  };
  const name = el => (el.closest("figure") && el.closest("figure").id) || el.id ||
    (el.getAttribute("src") || el.className || el.tagName).toString().split("/").pop().slice(0, 40);
  const tables = [...article.querySelectorAll("table")].map(t => ({
    name: name(t), width: t.getBoundingClientRect().width, column: column(t)}));
  const images = [...article.querySelectorAll("figure img, .cell_output img")]
    .filter(im => im.naturalWidth > 0)
    .map(im => ({name: name(im), width: im.getBoundingClientRect().width, column: column(im),
                 natural: im.naturalWidth}));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  const equations = [...article.querySelectorAll("mjx-container")]
    .filter(m => getComputedStyle(m).display === "block")
    .map(m => ({name: "equation " + ((m.closest("[id]") || {}).id || ""),
                width: m.getBoundingClientRect().width, column: column(m)}));
  return {article: content(article), tables, images, equations};
}
"""


@pytest.mark.parametrize("docname", PAGES)
def test_tables_figures_and_equations_fit_their_column_and_stay_legible(
    tab, server, docname
) -> None:
    tab.goto(f"{server}/{docname}.html", wait_until="load")
    report = tab.evaluate(_LAYOUT)
    width = tab.viewport_size["width"]
    assert report["article"] > 0.5 * min(width, 800) - 40, report["article"]  # a column
    wide = [
        f"{item['name']}: {item['width']:.0f} px in a {item['column']:.0f} px column"
        for item in report["tables"] + report["images"] + report["equations"]
        if item["width"] > item["column"] + 1
    ]
    assert not wide, f"{docname} at {width} px: wider than the column: {wide}"
    small = [
        f"{im['name']}: {im['width']:.0f} of {im['natural']} px"
        for im in report["images"]
        if width >= LEGIBLE_FROM and im["width"] < SMALLEST_SHARE * im["natural"]
    ]
    assert not small, (
        f"{docname} at {width} px: figures shown below {SMALLEST_SHARE:.0%} of their natural "
        f"width (draw them narrower): {small}"
    )
