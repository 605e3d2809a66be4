"""Refuse active content in the book's stored outputs (``reliability.md`` B3, section 5.2).

MyST-NB copies ``text/html`` and ``application/javascript`` outputs into the page verbatim, and a
static book applies no notebook trust model, so anyone who can change a committed ``.ipynb`` could
put script into the site. The book renders only notebooks made by the runner, and this scan
checks every stored output (and the Markdown cells, which are rendered as HTML too): no
JavaScript outputs, no widget views (they load scripts), and no ``<script>``, ``<iframe>``,
``<object>``, ``<embed>``, ``javascript:`` URLs or ``on...=`` event handlers in HTML, SVG or
Markdown.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ACTIVE_MIME_TYPES", "Finding", "scan_notebook", "scan_notebooks"]

#: Output types that are active content in themselves.
ACTIVE_MIME_TYPES: frozenset[str] = frozenset(
    {
        "application/javascript",
        "application/x-javascript",
        "text/javascript",
        "application/vnd.jupyter.widget-view+json",
        "application/vnd.jupyter.widget-state+json",
    }
)
#: Output types whose text is rendered as markup, and is searched for active elements.
MARKUP_MIME_TYPES: frozenset[str] = frozenset({"text/html", "image/svg+xml", "text/markdown"})

_ACTIVE = re.compile(
    r"<\s*(script|iframe|object|embed)\b"  # elements that run or load code
    r"|javascript\s*:"  # javascript: URLs
    r"|<[^>]*\s on[a-z]+\s*=",  # event-handler attributes inside a tag
    re.IGNORECASE | re.VERBOSE,
)


@dataclass(frozen=True)
class Finding:
    """Active content found in a notebook.

    Attributes:
        notebook: The notebook's path.
        cell: Index of the cell (0-based, in the stored notebook).
        where: The output's MIME type, or ``"markdown cell"``.
        excerpt: The offending text (up to 80 characters).
    """

    notebook: str
    cell: int
    where: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.notebook}, cell {self.cell}, {self.where}: {self.excerpt!r}"


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


def scan_notebook(
    path: str | os.PathLike[str], allow: Collection[tuple[str, int]] = ()
) -> list[Finding]:
    """Scan one stored notebook for active content.

    Args:
        path: The ``.ipynb`` file.
        allow: ``(file name, cell index)`` pairs exempted after review (the allowlist).

    Returns:
        Every finding, in cell order (empty when the notebook is clean).
    """
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    found: list[Finding] = []

    def check(cell: int, where: str, text: str) -> None:
        match = _ACTIVE.search(text)
        if match and (path.name, cell) not in allow:
            start = max(match.start() - 20, 0)
            found.append(Finding(str(path), cell, where, text[start : match.end() + 40][:80]))

    for i, cell in enumerate(nb.get("cells", [])):
        if (path.name, i) in allow:
            continue
        if cell.get("cell_type") == "markdown":
            check(i, "markdown cell", _text(cell.get("source", "")))
        for output in cell.get("outputs", []):
            data = output.get("data", {}) if isinstance(output, dict) else {}
            for mime, value in data.items():
                if mime in ACTIVE_MIME_TYPES:
                    found.append(Finding(str(path), i, mime, _text(value)[:80]))
                elif mime in MARKUP_MIME_TYPES:
                    check(i, mime, _text(value))
    return found


def scan_notebooks(
    paths: Iterable[str | os.PathLike[str]], allow: Collection[tuple[str, int]] = ()
) -> list[Finding]:
    """Scan several notebooks; see :func:`scan_notebook`."""
    return [finding for path in paths for finding in scan_notebook(path, allow)]
