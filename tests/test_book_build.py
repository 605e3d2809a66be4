"""The built book (B2): strict build, every page, figures as images, references resolved.

The real book is built once per session from the committed pages (``_book.built_book``); a tiny
book with planted mistakes checks that the strict build really fails on them.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from _book import PROJECT, ROOT, built_book, make_project, toc_notebooks  # noqa: F401

from adamqlr.book.build import BookBuildFailed, build_book, build_html

NOTEBOOKS = toc_notebooks()


def page(html: Path, docname: str) -> str:
    return (html / f"{docname}.html").read_text(encoding="utf-8")


def test_every_toc_page_is_built(built_book) -> None:  # noqa: F811
    assert (built_book / "index.html").is_file()
    for docname in PROJECT.toc_files():
        assert (built_book / f"{docname}.html").is_file(), docname


@pytest.mark.parametrize("entry", NOTEBOOKS, ids=[e.name for e in NOTEBOOKS])
def test_notebook_figures_are_images_and_no_errors(built_book, entry) -> None:  # noqa: F811
    nb = json.loads(entry.target.read_text(encoding="utf-8"))
    shown = [
        c
        for c in nb["cells"]
        if c["cell_type"] == "code" and "remove-cell" not in c["metadata"].get("tags", [])
    ]
    images = sum(
        1
        for c in shown
        for o in c.get("outputs", [])
        if any(m.startswith("image/") for m in o.get("data", {}))
    )
    text = page(built_book, entry.docname)
    sources = re.findall(r'<img[^>]+src="(\.\./_images/[^"]+)"', text)
    assert len(sources) >= images, f"{entry.name}: {images} figures, {len(sources)} <img>"
    for src in sources:
        assert (built_book / entry.docname).parent.joinpath(src).resolve().is_file(), src
    assert "Traceback" not in text
    assert 'class="output traceback' not in text and 'class="output stderr' not in text


def test_references_resolve(built_book) -> None:  # noqa: F811
    for docname in PROJECT.toc_files():
        text = page(built_book, docname)
        assert "???" not in text, docname
        # A resolved cross-reference is a link; an unresolved one is a bare <span class="xref">.
        bare = re.findall(r'(?<!">)<span class="xref[^"]*">([^<]*)</span>', text)
        assert not bare, f"{docname}: unresolved references {bare}"
    quick = page(built_book, "book/01_quickstart")
    eq_refs = re.findall(r'<a class="reference internal" href="#equation-[^"]+">([^<]*)</a>', quick)
    assert eq_refs and all(re.fullmatch(r"\(\d+\)", r) for r in eq_refs), eq_refs
    fig_refs = re.findall(r'<span class="std std-numref">([^<]*)</span>', quick)
    assert fig_refs and all(re.fullmatch(r"Figure \d+", r) for r in fig_refs), fig_refs


def test_numbered_equations_and_figures(built_book) -> None:  # noqa: F811
    quick = page(built_book, "book/01_quickstart")
    assert re.findall(r'class="eqno">\((\d+)\)', quick)[:4] == ["1", "2", "3", "4"]
    captions = re.findall(r'<span class="caption-number">(Figure \d+) </span>', quick)
    assert captions[:2] == ["Figure 1", "Figure 2"]


def test_bibliography_glossary_and_citations(built_book) -> None:  # noqa: F811
    bib = page(built_book, "book/bibliography")
    assert "Studying K-FAC heuristics by viewing Adam" in bib
    assert "Clarke and José\xa0Miguel Hernández-Lobato" in bib  # a no-break space
    intro = page(built_book, "book/intro")
    assert re.search(r'href="bibliography.html#id\d+" title="Ross M. Clarke', intro)
    notation = page(built_book, "book/notation")
    assert re.search(r'<dl class="[^"]*glossary', notation) and 'id="term-damping"' in notation
    assert 'href="notation.html#term-damping"' in page(built_book, "book/01_quickstart")


def test_launch_download_and_repository_buttons(built_book) -> None:  # noqa: F811
    quick = page(built_book, "book/01_quickstart")
    repo = "adamqlr-companion/adamqlr"
    assert f"colab.research.google.com/github/{repo}/blob/main/book/01_quickstart.ipynb" in quick
    assert f"mybinder.org/v2/gh/{repo}/main?urlpath=tree/book/01_quickstart.ipynb" in quick
    assert "_sources/book/01_quickstart.ipynb" in quick  # download the notebook
    assert f"https://github.com/{repo}/issues/new" in quick
    assert f'href="https://github.com/{repo}"' in quick


def test_reproducibility_page_is_built_from_metadata(built_book) -> None:  # noqa: F811
    text = page(built_book, "book/reproducibility")
    for entry in NOTEBOOKS:
        assert f'href="{entry.name}.html"' in text, entry.name


# ----------------------------------------------------------------------------- strictness

BROKEN_PAGE = """\
# Broken

A reference to {numref}`fig-that-does-not-exist`, a citation {cite:p}`nobody1999`, and a term
{term}`no such term`.
"""


def test_strict_build_fails_on_broken_references_and_stderr(tmp_path) -> None:
    """The real configuration, a page with three broken references, a notebook with stderr."""
    project = make_project(tmp_path, {}, config=(ROOT / "_config.yml").read_text())
    shutil.copy(ROOT / "book" / "references.bib", tmp_path / "book" / "references.bib")
    (tmp_path / "book" / "broken.md").write_text(BROKEN_PAGE)
    nb = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# Noisy", "id": "a"},
            {
                "cell_type": "code",
                "metadata": {},
                "source": "import warnings",
                "id": "b",
                "execution_count": 1,
                "outputs": [{"output_type": "stream", "name": "stderr", "text": "UserWarning: x"}],
            },
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "P", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (tmp_path / "book" / "noisy.ipynb").write_text(json.dumps(nb))
    (tmp_path / "notebooks" / "noisy.py").write_text(
        '# %% tags=["parameters"]\nprofile = "quick"\n'
    )
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/broken\n"
        "  - file: book/noisy\n"
    )
    with pytest.raises(BookBuildFailed) as info:
        build_html(project, path_output=tmp_path / "out")
    problems = "\n".join(info.value.problems)
    assert "fig-that-does-not-exist" in problems
    assert "nobody1999" in problems
    assert "no such term" in problems
    assert "stderr" in problems.lower()
    assert not (tmp_path / "out" / "_build" / ".doctrees").exists()  # next build starts afresh


def test_build_refuses_active_content(tmp_path) -> None:
    project = make_project(tmp_path, {"tiny": '# %% tags=["parameters"]\nprofile = "quick"\n'})
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "source": "x",
                "id": "a",
                "execution_count": 1,
                "outputs": [
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {"text/html": "<b onmouseover='steal()'>hi</b>"},
                    }
                ],
            }
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (tmp_path / "book" / "tiny.ipynb").write_text(json.dumps(nb))
    with pytest.raises(BookBuildFailed, match="active content") as info:
        build_book(project, run=False, path_output=tmp_path / "out")
    assert "tiny.ipynb, cell 0, text/html" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_pages_load_scripts_and_styles_from_the_book_only(built_book) -> None:  # noqa: F811
    """Every script and stylesheet (MathJax included) is served by the book: nothing from a CDN."""
    mathjax = built_book / "_static" / "mathjax" / "tex-svg-full.js"
    assert mathjax.is_file() and mathjax.stat().st_size > 1_000_000
    with_math = 0
    for html in sorted(built_book.rglob("*.html")):
        text = html.read_text(encoding="utf-8")
        tags = re.findall(
            r"<script[^>]*\ssrc=\"([^\"]+)\"|<link[^>]*\shref=\"([^\"]+\.css[^\"]*)\"", text
        )
        remote = [a or b for a, b in tags if re.match(r"(https?:)?//", a or b)]
        assert not remote, f"{html.relative_to(built_book)} loads {remote}"
        if 'class="math' in text:
            with_math += 1
            assert "_static/mathjax/tex-svg-full.js" in text, html.relative_to(built_book)
    assert with_math >= 12
