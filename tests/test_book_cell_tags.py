"""Experiment pages hide their data and drawing code behind a toggle; derivations show theirs.

Chapters 07-12 and 15 read run records, draw them and tabulate them: the code is plumbing, so
every code cell carries Jupyter Book's ``hide-input`` tag (a "show code" toggle), except the
parameters cell (removed from the page) and the cells that decide the page's verdict, which stay
in view. The derivation chapters 02-06 keep the code that is the explanation visible.
"""

from __future__ import annotations

import json

import jupytext
import pytest
from _book import ROOT

from adamqlr.book.runner import COLAB_TAG, PROVENANCE_TAG

NOTEBOOKS = ROOT / "notebooks"
#: The chapters that read run records: 07-12 and 15 (13 and 14 derive and demonstrate).
EXPERIMENT_CHAPTERS = (7, 8, 9, 10, 11, 12, 15)
EXPERIMENTS = sorted(
    p
    for p in NOTEBOOKS.glob("*.py")
    if p.name[:2].isdigit() and int(p.name[:2]) in EXPERIMENT_CHAPTERS
)
DERIVATIONS = sorted(
    p for p in NOTEBOOKS.glob("*.py") if p.name[:2].isdigit() and 2 <= int(p.name[:2]) <= 6
)
#: Glued names that hold a page's verdict: the cell computing one stays visible.
VERDICTS = (
    "ut_tally",
    "fh_agreement",
    "dp_v_epoch",
    "lc_small_verdict",
    "se_hypothesis",
    "se_heldout_verdict",
    "wh_order",
    "wh_paper",
    "wh_heldout",
)


def _code_cells(path):
    nb = jupytext.read(path)
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def _tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


def _decides_verdict(cell) -> bool:
    return any(f'"{name}"' in cell.source for name in VERDICTS)


def test_the_chapters_are_found() -> None:
    assert [p.name[:2] for p in EXPERIMENTS] == ["07", "08", "09", "10", "11", "12", "15"]
    assert [p.name[:2] for p in DERIVATIONS] == ["02", "03", "04", "05", "06"]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_pages_hide_the_code_that_prepares_or_draws(path) -> None:
    cells = _code_cells(path)
    shown = []
    for cell in cells:
        tags = _tags(cell)
        if "parameters" in tags or _decides_verdict(cell):
            assert "hide-input" not in tags or "parameters" in tags
            continue
        if "hide-input" not in tags:
            shown.append(cell.source.splitlines()[0])
    assert not shown, f"{path.name}: code cells without hide-input: {shown}"
    drawing = [c for c in cells if "plt." in c.source or "figure" in c.metadata.get("mystnb", {})]
    assert drawing and all("hide-input" in _tags(c) for c in drawing)


def test_verdict_cells_stay_visible() -> None:
    visible = [c for p in EXPERIMENTS for c in _code_cells(p) if _decides_verdict(c)]
    assert len(visible) == len(VERDICTS)
    assert all("hide-input" not in _tags(c) for c in visible)


@pytest.mark.parametrize("path", DERIVATIONS, ids=lambda p: p.stem)
def test_derivation_pages_keep_their_code_visible(path) -> None:
    cells = [c for c in _code_cells(path) if "parameters" not in _tags(c)]
    visible = [
        c for c in cells if not {"hide-input", "remove-input", "remove-cell"} & set(_tags(c))
    ]
    assert len(visible) * 2 >= len(cells), f"{path.name}: most of the code is hidden"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_the_executed_page_carries_the_sources_tags(path) -> None:
    """papermill keeps cell metadata: the page's code cells have the source's tags, in order."""
    page = ROOT / "book" / f"{path.stem}.ipynb"
    nb = json.loads(page.read_text(encoding="utf-8"))
    injected = {"injected-parameters", COLAB_TAG, PROVENANCE_TAG}
    executed = [
        [t for t in c["metadata"].get("tags", []) if t != "remove-cell"]
        for c in nb["cells"]
        if c["cell_type"] == "code"
        and "".join(c["source"]).strip()
        and not injected & set(c["metadata"].get("tags", []))
    ]
    assert executed == [_tags(c) for c in _code_cells(path)], (
        f"{page.name} is out of date with {path.name}: re-execute it (adamqlr book run)"
    )
