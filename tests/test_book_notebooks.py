"""Every notebook listed in ``_toc.yml`` executes under the ``smoke`` profile (one test each).

The notebooks are found by reading ``_toc.yml``, so a chapter added there is tested without
editing this file. Each runs through the book's own runner into a temporary folder (the
published pages in ``book/`` are not touched), so the checks are the runner's: no error output,
every cell executed, the run reached its last cell.
"""

from __future__ import annotations

import re

import nbformat
import pytest
from _book import PROJECT, ROOT, toc_notebooks

from adamqlr.book.runner import METADATA_KEY, execute_notebook

NOTEBOOKS = toc_notebooks()
#: What Python prints for an object without a readable repr (``<torch._C.Generator at 0x7f...>``):
#: a cell that ends on a call made for its side effect shows it on the page.
_OBJECT_REPR = re.compile(r"<[\w.]+ (object )?at 0x[0-9a-f]+>")


def _object_reprs(nb: nbformat.NotebookNode) -> list[str]:
    return [
        text
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "execute_result"
        for text in ["".join(o.get("data", {}).get("text/plain", ""))]
        if _OBJECT_REPR.search(text)
    ]


def test_toc_lists_notebooks() -> None:
    entries = PROJECT.notebooks()
    assert entries, "_toc.yml lists no notebook"
    assert entries[0].name == "01_quickstart"


@pytest.mark.parametrize("entry", NOTEBOOKS, ids=[e.name for e in NOTEBOOKS])
def test_notebook_runs_under_smoke(entry, tmp_path) -> None:
    target = tmp_path / f"{entry.name}.ipynb"
    record = execute_notebook(entry.source, target, profile="smoke", root=ROOT, cell_timeout=300)
    assert record["profile"] == "smoke"
    nb = nbformat.read(target, as_version=4)
    assert nb.metadata[METADATA_KEY]["input_hash"] == record["input_hash"]
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.execution_count is not None for c in code)
    stderr = [
        "".join(o.get("text", ""))
        for c in code
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stderr"
    ]
    assert not stderr, f"{entry.name} wrote to stderr (the strict build fails on it): {stderr}"
    assert not _object_reprs(nb), f"{entry.name} displays object reprs: {_object_reprs(nb)}"


@pytest.mark.parametrize("entry", NOTEBOOKS, ids=[e.name for e in NOTEBOOKS])
def test_the_published_page_displays_no_object_repr(entry) -> None:
    page = ROOT / "book" / f"{entry.name}.ipynb"
    nb = nbformat.read(page, as_version=4)
    assert not _object_reprs(nb), (
        f"{page.name} displays {_object_reprs(nb)}: end the cell otherwise"
    )
