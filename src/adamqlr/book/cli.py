"""``adamqlr book``: run the notebooks, build the book, say what is out of date.

::

    adamqlr book run    [--profile P] [--only NAME]... [--force] [--keep-going] [--cell-timeout S]
                        (also regenerates book/reproducibility.md when a notebook ran)
    adamqlr book build  [the same] [--no-run] [--path-output DIR]
    adamqlr book status

Exit status: 0 on success; 1 when a notebook failed, the build failed or (``status``) a page is
out of date; 2 for a usage error (unknown notebook or profile, no project found).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from adamqlr.profiles import PROFILES, profile_argument

__all__ = ["register"]


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        type=profile_argument,
        default=None,
        metavar="{" + ",".join(PROFILES) + "}",
        help="profile for the notebooks that run (default: the published page's profile if it "
        "is quick or paper, else the notebook's own default, normally quick)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this notebook (e.g. 01_quickstart); repeatable",
    )
    parser.add_argument("--force", action="store_true", help="run even if the inputs are unchanged")
    parser.add_argument(
        "--cell-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fail a notebook whose cell runs longer than this (default: no limit)",
    )


def _add_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        default=None,
        help="the project folder holding _toc.yml and _config.yml (default: found from the "
        "working directory upwards)",
    )


def register(subparsers: Any) -> None:
    """Add ``book`` and its subcommands to the ``adamqlr`` command line.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.
    """
    book = subparsers.add_parser(
        "book",
        help="run the notebooks with papermill and build the Jupyter Book",
        description="Run the book's notebooks (papermill) and build the book (Jupyter Book).",
    )
    book.set_defaults(handler=lambda args: (book.print_help(), 2)[1])
    commands = book.add_subparsers(dest="book_command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="execute the notebooks whose inputs changed",
        description="Execute the notebooks listed in _toc.yml whose inputs changed, writing "
        "book/NN_topic.ipynb; a failure keeps the last good page and exits non-zero.",
    )
    _add_run_options(run)
    run.add_argument(
        "--keep-going", action="store_true", help="after a failure, run the other notebooks"
    )
    _add_root(run)
    run.set_defaults(handler=_run)

    build = commands.add_parser(
        "build",
        help="run what is out of date, then build the book strictly (zero warnings)",
        description="Run the out-of-date notebooks (default profile quick; pages published "
        "under paper keep reading their stored run records), regenerate the reproducibility "
        "page, and run jupyter-book build -W -n --keep-going.",
    )
    _add_run_options(build)
    build.add_argument(
        "--no-run", action="store_true", help="build the executed notebooks as they are"
    )
    build.add_argument(
        "--path-output", default=None, help="folder that receives _build/ (default: the root)"
    )
    _add_root(build)
    build.set_defaults(handler=_build)

    status = commands.add_parser(
        "status",
        help="list the pages that are out of date, and why",
        description="Compare every executed notebook's recorded inputs with the current ones.",
    )
    _add_root(status)
    status.set_defaults(handler=_status)


class _StderrHandler(logging.StreamHandler):
    """Write to whatever ``sys.stderr`` is at the time of each message."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _logging() -> None:
    logger = logging.getLogger("adamqlr.book")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("adamqlr book: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _project(args: argparse.Namespace) -> Any:
    from adamqlr.book.project import Project

    return Project.find(args.root)


def _usage_error(err: Exception) -> int:
    print(f"adamqlr book: error: {err}", file=sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from adamqlr.book.project import ProjectError
    from adamqlr.book.runner import run_book

    _logging()
    try:
        outcomes = run_book(
            _project(args),
            profile=args.profile,
            only=args.only,
            force=args.force,
            keep_going=args.keep_going,
            cell_timeout=args.cell_timeout,
        )
    except (ProjectError, ValueError) as err:
        return _usage_error(err)
    if any(o.status == "executed" for o in outcomes):
        from adamqlr.book import reproducibility

        if reproducibility.write(_project(args)):
            logging.getLogger("adamqlr.book").info("wrote %s", reproducibility.PAGE)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("executed", "skipped", "failed")}
    print(
        f"adamqlr book: {counts['executed']} executed, {counts['skipped']} up to date, "
        f"{counts['failed']} failed",
        file=sys.stderr,
    )
    return 1 if counts["failed"] else 0


def _build(args: argparse.Namespace) -> int:
    from adamqlr.book.build import BookBuildFailed, build_book
    from adamqlr.book.project import ProjectError

    _logging()
    try:
        result = build_book(
            _project(args),
            run=not args.no_run,
            profile=args.profile,
            only=args.only,
            force=args.force,
            cell_timeout=args.cell_timeout,
            path_output=args.path_output,
        )
    except (ProjectError, ValueError) as err:
        return _usage_error(err)
    except BookBuildFailed as err:
        print(f"adamqlr book: {err}", file=sys.stderr)
        return 1
    print(f"adamqlr book: built {result.html / 'index.html'}", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    from adamqlr.book.project import ProjectError
    from adamqlr.book.runner import freshness, save_caches

    try:
        project = _project(args)
        states = [freshness(project, entry) for entry in project.notebooks()]
    except (ProjectError, ValueError) as err:
        return _usage_error(err)
    finally:
        save_caches()
    for state in states:
        verdict = "up to date" if state.up_to_date else "STALE: " + "; ".join(state.reasons)
        print(f"{state.entry.name:<32} {state.profile:<6} {verdict}")
    return 0 if all(s.up_to_date for s in states) else 1
