"""Shared helpers of the book tests: the real project, tiny projects, and the built book.

The real book is built once per test session (with pytest-xdist: once for all workers, guarded by
a file lock) into a temporary folder, never into the checkout.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from adamqlr.book.build import BookBuildFailed, build_html
from adamqlr.book.project import Project

ROOT = Path(__file__).resolve().parents[1]
PROJECT = Project(ROOT)

#: A tiny notebook source: cells 0 (markdown), 1 (parameters), 2, 3 ({body}), 4.
TINY = """\
# %% [markdown]
# # Tiny

# %% tags=["parameters"]
profile = "quick"
scale = 1

# %%
x = 1 * scale

# %%
{body}

# %%
y = 2
"""

TINY_CONFIG = """\
title: Tiny
author: Tests
only_build_toc_files: true
exclude_patterns: [_build, notebooks]
execute:
  execute_notebooks: "off"
"""


def make_project(root: Path, sources: dict[str, str], *, config: str = TINY_CONFIG) -> Project:
    """Write a tiny book project: config, a toc listing ``sources`` in order, and the sources."""
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    (root / "book").mkdir(exist_ok=True)
    (root / "_config.yml").write_text(config)
    chapters = "".join(f"  - file: book/{name}\n" for name in sources)
    (root / "_toc.yml").write_text(
        f"format: jb-book\nroot: book/intro\nchapters:\n{chapters}"
        if sources
        else "format: jb-book\nroot: book/intro\n"
    )
    (root / "book" / "intro.md").write_text("# Intro\n\nA tiny book.\n")
    for name, text in sources.items():
        (root / "notebooks" / f"{name}.py").write_text(text)
    return Project(root)


def toc_notebooks() -> list:
    """The notebooks of the real book (empty if the table of contents is broken)."""
    try:
        return PROJECT.notebooks()
    except Exception:  # noqa: BLE001 - reported by test_toc_lists_notebooks
        return []


@pytest.fixture(scope="session")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the real book strictly, once per session; return its HTML folder."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "book-build"
    marker = shared / "book-build.json"
    with FileLock(str(shared / "book-build.lock")):
        if not marker.is_file():
            shutil.rmtree(out, ignore_errors=True)
            try:
                html = build_html(PROJECT, path_output=out)
                result = {"html": str(html), "error": None}
            except BookBuildFailed as err:
                result = {"html": None, "error": str(err)}
            marker.write_text(json.dumps(result))
        result = json.loads(marker.read_text())
    if result["error"]:
        pytest.fail(f"the book does not build strictly:\n{result['error']}", pytrace=False)
    return Path(result["html"])


@pytest.fixture(scope="session")
def book_html(request: pytest.FixtureRequest) -> Path:
    """The built HTML the browser tests open: the folder named by ``ADAMQLR_BOOK_HTML`` (a book
    already built, e.g. by a fresh clone's ``make book``), else the session's strict build."""
    given = os.environ.get("ADAMQLR_BOOK_HTML")
    if given:
        folder = Path(given)
        if not (folder / "index.html").is_file():
            pytest.skip(f"ADAMQLR_BOOK_HTML={given} holds no built book")
        return folder
    return request.getfixturevalue("built_book")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on a free local port; yield its base URL."""
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
