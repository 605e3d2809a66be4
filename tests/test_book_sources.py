"""Published text speaks to readers: no page or docstring names the project's internal notes.

The book cites the paper, the authors' code at its commit, the public reviews of the ICLR 2024
submission and its own runs; what could not be checked is said once, on the Sources page. Words
that only make sense to the authors of the book ("UNCONFIRMED", "fact sheet", "paper.md",
"official-code.md", "our recollection") must not reach a reader: not in a notebook source, a prose
page, the library's code and docstrings (rendered by ``help()`` and API docs), or the built HTML.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _book import PROJECT, ROOT, built_book  # noqa: F401

INTERNAL = re.compile(
    r"unconfirmed|fact[\s-]*sheet|paper\.md|official-code(?:\.md)?|our\s+recollection",
    re.IGNORECASE,
)


def _hits(text: str) -> list[str]:
    lines = text.splitlines()
    out = []
    for match in INTERNAL.finditer(text):
        number = text.count("\n", 0, match.start())
        out.append(f"line {number + 1}: {lines[number].strip()[:120]}")
    return out


def _sources() -> list[Path]:
    files = sorted((ROOT / "notebooks").glob("*.py"))
    files += sorted((ROOT / "book").glob("*.md"))
    files += sorted((ROOT / "src" / "adamqlr").rglob("*.py"))
    files += [ROOT / "README.md", ROOT / "_config.yml", ROOT / "CITATION.cff"]
    return [f for f in files if f.is_file()]


def test_the_pattern_catches_each_internal_word() -> None:
    for text in (
        "is UNCONFIRMED in",
        "our fact sheet says",
        "see `paper.md`",
        "(official-code.md section 1)",
        "Our recollection is",
        "our fact-sheet",
    ):
        assert INTERNAL.search(text), text
    assert not INTERNAL.search("the authors' official code at commit ab3dea5")


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_source_names_no_internal_note(path: Path) -> None:
    hits = _hits(path.read_text(encoding="utf-8"))
    assert not hits, f"{path.relative_to(ROOT)} names internal notes:\n" + "\n".join(hits)


def test_executed_pages_name_no_internal_note() -> None:
    found = {}
    for entry in PROJECT.notebooks():
        if entry.target.is_file():
            hits = _hits(entry.target.read_text(encoding="utf-8"))
            if hits:
                found[entry.name] = hits[:3]
    assert not found, f"executed pages to re-run (`adamqlr book run`): {found}"


def test_built_html_names_no_internal_note(built_book) -> None:  # noqa: F811
    found = {}
    for page in sorted(built_book.rglob("*.html")):
        text = re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8"))
        hits = _hits(text)
        if hits:
            found[page.relative_to(built_book).as_posix()] = hits[:3]
    assert not found, found


def test_sources_page_says_once_what_could_not_be_checked(built_book) -> None:  # noqa: F811
    assert "book/sources" in PROJECT.toc_files()
    text = (ROOT / "book" / "sources.md").read_text(encoding="utf-8")
    assert re.search(r"could not be (read|checked)", text)
    for cited in ("clarke24a", "clarke2024code", "clarke2023openreview", "CVldG5ohCy", "ab3dea5"):
        assert cited in text, cited
    html = (built_book / "book" / "sources.html").read_text(encoding="utf-8")
    assert "openreview.net/forum?id=CVldG5ohCy" in html
