"""The committed pages: no active content (B3), none stale (B5), the generated reproducibility
page current, and the citation files consistent."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from _book import PROJECT, ROOT, TINY, make_project, toc_notebooks

from adamqlr.book import reproducibility
from adamqlr.book.runner import freshness
from adamqlr.book.scan import scan_notebook, scan_notebooks
from adamqlr.cli import main

NOTEBOOKS = toc_notebooks()


# ----------------------------------------------------------------------------- B3


def test_stored_outputs_hold_no_active_content() -> None:
    targets = [e.target for e in NOTEBOOKS]
    assert all(t.is_file() for t in targets), [str(t) for t in targets if not t.is_file()]
    findings = scan_notebooks(targets)
    assert not findings, "\n".join(map(str, findings))


def _notebook(tmp_path, outputs, markdown="# Fine"):
    nb = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": markdown},
            {"cell_type": "code", "metadata": {}, "source": "", "outputs": outputs},
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    return path


def _display(mime, value):
    return {"output_type": "display_data", "metadata": {}, "data": {mime: value}}


@pytest.mark.parametrize(
    ("output", "markdown"),
    [
        (_display("application/javascript", "alert(1)"), ""),
        (_display("text/html", ["<div>", "<script>alert(1)</script></div>"]), ""),
        (_display("text/html", '<a href="javascript:alert(1)">x</a>'), ""),
        (_display("text/html", '<img src=x onerror="alert(1)">'), ""),
        (_display("text/html", "<iframe src='https://example.org'></iframe>"), ""),
        (_display("image/svg+xml", "<svg><script>alert(1)</script></svg>"), ""),
        (_display("application/vnd.jupyter.widget-view+json", {"model_id": "x"}), ""),
        (None, "Text <script>alert(1)</script>"),
    ],
)
def test_scan_finds_active_content(tmp_path, output, markdown) -> None:
    path = _notebook(tmp_path, [output] if output else [], markdown or "# Fine")
    findings = scan_notebook(path)
    assert len(findings) == 1, findings
    assert scan_notebook(path, allow={("nb.ipynb", findings[0].cell)}) == []


def test_scan_passes_plain_outputs(tmp_path) -> None:
    table = '<style scoped>.dataframe td {x: 1}</style><table class="dataframe"><tr><td>one = 1'
    outputs = [
        _display("text/html", table),
        _display("image/png", "iVBORw0KGgo="),
        {"output_type": "stream", "name": "stdout", "text": "<script> in plain text is inert"},
    ]
    assert scan_notebook(_notebook(tmp_path, outputs, "# onboarding = fun")) == []


# ----------------------------------------------------------------------------- B5


@pytest.mark.parametrize("entry", NOTEBOOKS, ids=[e.name for e in NOTEBOOKS])
def test_page_is_not_stale(entry) -> None:
    """The committed page was made from the current source, parameters, records and code.

    Fails after an edit of a notebook's source or of a library module it imported (docstrings
    and comments excepted) until the page is re-executed: run `adamqlr book run` (or `make book`)
    and commit book/*.ipynb with book/reproducibility.md.
    """
    state = freshness(PROJECT, entry)
    assert state.up_to_date, (
        f"book/{entry.name}.ipynb is stale ({'; '.join(state.reasons)}); "
        f"run `adamqlr book run --only {entry.name}` and commit the page"
    )
    assert state.recorded["profile"] in ("quick", "paper")


def test_reproducibility_page_is_current() -> None:
    text = reproducibility.render(PROJECT)
    assert text == reproducibility.render(PROJECT)  # deterministic
    committed = (ROOT / reproducibility.PAGE).read_text(encoding="utf-8")
    assert committed == text, "book/reproducibility.md is out of date: run `adamqlr book build`"
    for entry in NOTEBOOKS:
        meta = json.loads(entry.target.read_text())["metadata"]["adamqlr"]
        row = next(line for line in text.splitlines() if f"{{doc}}`{entry.name}`" in line)
        assert f"`{meta['profile']}`" in row and meta["device"] in row
        assert (meta["git"]["commit"] or "unknown")[:10] in row


def test_reproducibility_summarises_run_records(tmp_path) -> None:
    project = make_project(tmp_path, {"tiny": TINY.format(body="# reads: results/**/*.json\nz=3")})
    for i, device in enumerate(["NVIDIA H100", "NVIDIA H100", "cpu"]):
        folder = tmp_path / "results" / "t" / f"run{i}"
        folder.mkdir(parents=True)
        provenance = {
            "started_at": f"2026-11-2{i}T10:00:00Z",
            "duration_s": 1800.0,
            "device_name": device,
            "git": {"commit": "abcdef1234567890", "dirty": False},
        }
        (folder / "provenance-1.json").write_text(json.dumps(provenance))
        (folder / "manifest.json").write_text("{}")
    assert main(["book", "run", "--root", str(tmp_path)]) == 0
    assert reproducibility.write(project) is True
    text = (tmp_path / reproducibility.PAGE).read_text()
    assert "| {doc}`tiny` | `quick` |" in text
    assert "6 files" in text
    assert "3 run records, on NVIDIA H100; cpu" in text
    assert "run between 2026-11-20T10:00:00Z and 2026-11-22T10:00:00Z" in text
    assert "90.0 min of compute" in text and "`abcdef1234`" in text
    assert reproducibility.write(project) is False  # unchanged: not rewritten


# ----------------------------------------------------------------------------- citation


def test_citation_files_agree() -> None:
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    paper = cff["preferred-citation"]
    assert paper["year"] == 2024 and paper["volume"] == 235
    assert [a["family-names"] for a in paper["authors"]] == ["Clarke", "Hernández-Lobato"]
    assert any("2310.14963" in i["value"] for i in paper["identifiers"])
    assert paper["url"] == "https://proceedings.mlr.press/v235/clarke24a.html"
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    cite = (ROOT / "book" / "how-to-cite.md").read_text(encoding="utf-8")
    entry = re.search(r"@inproceedings\{clarke24a,.*?\n\}", bib, re.S).group(0)
    assert entry in cite  # the how-to-cite BibTeX is the bibliography's entry
    keys = re.findall(r"^@\w+\{([^,]+),", bib, re.M)
    assert len(keys) == len(set(keys)), "duplicate BibTeX keys"
    assert cff["version"] in cite and cff["repository-code"] in cite
