"""Where the book's files are: the project root, the table of contents and the notebooks.

Conventions (``design.md`` section 2):

- ``_config.yml`` and ``_toc.yml`` sit at the project root;
- a notebook's source is ``notebooks/NN_topic.py`` (Jupytext percent format) and its executed copy,
  the page the book renders, is ``book/NN_topic.ipynb``; ``_toc.yml`` names the page
  (``file: book/NN_topic``);
- prose pages are ``book/*.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["NotebookEntry", "Project", "ProjectError"]

TOC_FILE = "_toc.yml"
CONFIG_FILE = "_config.yml"
BOOK_DIR = "book"
SOURCE_DIR = "notebooks"


class ProjectError(ValueError):
    """The project layout or the table of contents is not what the book needs."""


@dataclass(frozen=True)
class NotebookEntry:
    """One notebook of the book.

    Attributes:
        name: Stem shared by source and page, e.g. ``"01_quickstart"``.
        docname: The page as ``_toc.yml`` names it, e.g. ``"book/01_quickstart"``.
        source: The Jupytext source, ``notebooks/01_quickstart.py``.
        target: The executed notebook, ``book/01_quickstart.ipynb``.
    """

    name: str
    docname: str
    source: Path
    target: Path

    def failed_path(self) -> Path:
        """Where a failed run keeps its partial output (``book/NN_topic.failed.ipynb``)."""
        return self.target.with_name(f"{self.name}.failed.ipynb")


def _walk_toc(node: Any) -> Iterator[str]:
    """Yield every ``file``/``root`` entry of a table of contents, in reading order."""
    if isinstance(node, dict):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                yield node[key]
        if "glob" in node:
            raise ProjectError(f"_toc.yml: 'glob' entries are not supported ({node['glob']!r})")
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                yield from _walk_toc(child)
    elif isinstance(node, list):
        for child in node:
            yield from _walk_toc(child)


@dataclass(frozen=True)
class Project:
    """A checkout of the companion: the folder holding ``_toc.yml`` and ``_config.yml``.

    Attributes:
        root: The project root (absolute).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @classmethod
    def find(cls, start: str | os.PathLike[str] | None = None) -> Project:
        """Find the project root at or above ``start`` (default: the working directory).

        Raises:
            ProjectError: If no folder at or above ``start`` holds both ``_toc.yml`` and
                ``_config.yml``.
        """
        here = Path(start if start is not None else Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / TOC_FILE).is_file() and (folder / CONFIG_FILE).is_file():
                return cls(folder)
        raise ProjectError(
            f"no book project at or above {str(here)!r} (expected {TOC_FILE} and {CONFIG_FILE}); "
            "run the command from a checkout of the companion or pass --root"
        )

    @property
    def toc_path(self) -> Path:
        """``_toc.yml``."""
        return self.root / TOC_FILE

    @property
    def book_dir(self) -> Path:
        """``book/``: prose pages and executed notebooks."""
        return self.root / BOOK_DIR

    @property
    def source_dir(self) -> Path:
        """``notebooks/``: the Jupytext sources."""
        return self.root / SOURCE_DIR

    def toc(self) -> dict[str, Any]:
        """Return ``_toc.yml`` parsed (safely).

        Raises:
            ProjectError: If the file is not a mapping with a ``root`` entry.
        """
        with open(self.toc_path, encoding="utf-8") as fh:
            toc = yaml.safe_load(fh)
        if not isinstance(toc, dict) or not isinstance(toc.get("root"), str):
            raise ProjectError(f"{self.toc_path}: expected a mapping with a 'root' entry")
        return toc

    def toc_files(self) -> list[str]:
        """Every page named in ``_toc.yml``, in reading order, without suffix."""
        pages = []
        for entry in _walk_toc(self.toc()):
            stem = entry.removesuffix(".ipynb").removesuffix(".md")
            if stem not in pages:
                pages.append(stem)
        return pages

    def notebooks(self) -> list[NotebookEntry]:
        """Every notebook page of the book, in reading order.

        A page ``book/NAME`` is a notebook when ``notebooks/NAME.py`` exists; other pages are
        prose (``book/NAME.md``, see :meth:`missing_pages`).

        Raises:
            ProjectError: If an executed notebook named in ``_toc.yml`` has no source.
        """
        entries = []
        for docname in self.toc_files():
            page = self.root / docname
            source = self.source_dir / f"{page.name}.py"
            if page.parent == self.book_dir and source.is_file():
                entries.append(
                    NotebookEntry(
                        name=page.name,
                        docname=docname,
                        source=source,
                        target=page.with_name(f"{page.name}.ipynb"),
                    )
                )
            elif page.with_name(f"{page.name}.ipynb").is_file():
                raise ProjectError(
                    f"_toc.yml names {docname!r}, an executed notebook without a source "
                    f"{source.relative_to(self.root)}: only notebooks the runner made are published"
                )
        return entries

    def missing_pages(self) -> list[str]:
        """Pages named in ``_toc.yml`` that have neither a Markdown file nor a notebook source."""
        missing = []
        for docname in self.toc_files():
            page = self.root / docname
            source = self.source_dir / f"{page.name}.py"
            if not (page.with_name(f"{page.name}.md").is_file() or source.is_file()):
                missing.append(docname)
        return missing

    def notebook(self, name: str) -> NotebookEntry:
        """Return the notebook called ``name`` (``01_quickstart``, or a path to its source/page).

        Raises:
            ProjectError: If no notebook in ``_toc.yml`` has that name.
        """
        stem = Path(name).name.removesuffix(".py").removesuffix(".ipynb")
        entries = self.notebooks()
        for entry in entries:
            if entry.name == stem:
                return entry
        raise ProjectError(
            f"unknown notebook {name!r}; _toc.yml lists {[e.name for e in entries] or 'none'}"
        )
