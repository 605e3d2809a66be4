"""Build the book: run what is out of date, generate the reproducibility page, build strictly.

:func:`build_book` is ``adamqlr book build``:

1. :func:`adamqlr.book.runner.run_book` (unless ``run=False``): execute the stale notebooks;
2. :func:`adamqlr.book.reproducibility.write`: regenerate ``book/reproducibility.md`` (a build
   product: git-ignored, never edited);
3. :func:`adamqlr.book.scan.scan_notebooks`: refuse notebooks with active content in outputs;
4. ``jupyter-book build <root> -W -n --keep-going``: every warning (a missing reference, an
   unknown citation, text a notebook printed on stderr) fails the build.

Sphinx builds incrementally and reports warnings only for the pages it re-reads, so after a
failed build its saved environment is deleted: the next build reads every page again and cannot
pass by forgetting an old warning.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from adamqlr.book import reproducibility
from adamqlr.book.project import Project
from adamqlr.book.runner import RunOutcome, freshness, run_book
from adamqlr.book.scan import Finding, scan_notebooks

__all__ = ["BookBuildFailed", "BuildResult", "build_book", "build_html", "jupyter_book_command"]

log = logging.getLogger(__name__)

#: The strict flags: warnings are errors, nitpicky references, report all warnings before failing.
STRICT_FLAGS: tuple[str, ...] = ("-W", "-n", "--keep-going")


class BookBuildFailed(RuntimeError):
    """The book did not build: a notebook failed, an output is unsafe, or Sphinx warned.

    Attributes:
        problems: One line per problem (notebook errors, findings or Sphinx warnings).
    """

    def __init__(self, summary: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        shown = self.problems[:60]
        more = len(self.problems) - len(shown)
        lines = [summary, *(f"  {p}" for p in shown)]
        if more > 0:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


@dataclass
class BuildResult:
    """What :func:`build_book` did.

    Attributes:
        html: The folder of the built HTML (``.../_build/html``).
        outcomes: What the runner did with each notebook (empty with ``run=False``).
        page_written: Whether the reproducibility page changed.
    """

    html: Path
    outcomes: list[RunOutcome] = field(default_factory=list)
    page_written: bool = False


def jupyter_book_command(
    root: str | os.PathLike[str], path_output: str | os.PathLike[str] | None = None
) -> list[str]:
    """Return the strict ``jupyter-book build`` command line for the project at ``root``."""
    command = [
        sys.executable,
        "-c",
        "import sys; from jupyter_book.cli.main import main; sys.exit(main())",
        "build",
        str(root),
        *STRICT_FLAGS,
    ]
    if path_output is not None:
        command += ["--path-output", str(path_output)]
    return command


def _warnings(output: str) -> list[str]:
    keys = ("WARNING", "ERROR", "CRITICAL", "Exception occurred", "Traceback")
    return [line.strip() for line in output.splitlines() if any(k in line for k in keys)]


def build_html(
    project: Project, *, path_output: str | os.PathLike[str] | None = None, timeout: float = 1800
) -> Path:
    """Run the strict ``jupyter-book build`` (after regenerating the reproducibility page).

    The page ``book/reproducibility.md`` is generated from the executed notebooks, never edited
    or committed (it is git-ignored), so every build shows the pages it builds.

    Args:
        project: The project.
        path_output: Folder that receives ``_build/`` (default: the project root).
        timeout: Seconds the build may take.

    Returns:
        The HTML folder.

    Raises:
        BookBuildFailed: With every warning, if Sphinx warned or failed.
    """
    if reproducibility.write(project):
        log.info("wrote %s", reproducibility.PAGE)
    out = Path(path_output) if path_output is not None else project.root
    build_dir = out / "_build"
    command = jupyter_book_command(project.root, path_output)
    log.info("building the book: jupyter-book build %s %s", project.root, " ".join(STRICT_FLAGS))
    try:
        done = subprocess.run(
            command,
            cwd=project.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        shutil.rmtree(build_dir / ".doctrees", ignore_errors=True)
        raise BookBuildFailed(f"jupyter-book build timed out after {timeout:.0f} s") from err
    output = done.stdout + "\n" + done.stderr
    problems = _warnings(output)
    html = build_dir / "html"
    if done.returncode != 0 or problems or not (html / "index.html").is_file():
        shutil.rmtree(build_dir / ".doctrees", ignore_errors=True)
        if not problems:
            problems = output.strip().splitlines()[-30:]
        raise BookBuildFailed(
            f"jupyter-book build failed (exit status {done.returncode}), "
            f"{len(problems)} warnings or errors:",
            problems,
        )
    return html


def build_book(
    project: Project,
    *,
    run: bool = True,
    profile: str | None = None,
    only: Sequence[str] | None = None,
    force: bool = False,
    cell_timeout: float | None = None,
    path_output: str | os.PathLike[str] | None = None,
) -> BuildResult:
    """Run the out-of-date notebooks, then build the book strictly.

    Args:
        project: The project.
        run: Execute out-of-date notebooks first (``False``: build the pages as they are).
        profile: Profile for the notebooks that run (default: per notebook, see
            :func:`adamqlr.book.runner.choose_profile`).
        only: Run only these notebooks (the build still covers the whole book).
        force: Run notebooks even if up to date.
        cell_timeout: Seconds a single cell may run.
        path_output: Folder that receives ``_build/`` (default: the project root).

    Returns:
        The result, with the HTML folder.

    Raises:
        BookBuildFailed: If a notebook failed, an output holds active content, or the build
            warned.
    """
    outcomes: list[RunOutcome] = []
    if run:
        outcomes = run_book(
            project, profile=profile, only=only, force=force, cell_timeout=cell_timeout
        )
        failed = [o for o in outcomes if o.status == "failed"]
        if failed:
            raise BookBuildFailed(
                f"{len(failed)} notebook(s) failed; the book was not built:",
                [line for o in failed for line in o.detail.splitlines()],
            )
    entries = project.notebooks()
    stale = [state for state in (freshness(project, e) for e in entries) if not state.up_to_date]
    for state in stale:
        log.warning(
            "%s is out of date (%s); building it as it is",
            state.entry.name,
            "; ".join(state.reasons),
        )
    page_written = reproducibility.write(project)
    if page_written:
        log.info("wrote %s", reproducibility.PAGE)
    findings: list[Finding] = scan_notebooks(e.target for e in entries if e.target.is_file())
    if findings:
        raise BookBuildFailed(
            f"active content in {len(findings)} stored output(s); refusing to build:",
            [str(f) for f in findings],
        )
    missing = [str(e.target.relative_to(project.root)) for e in entries if not e.target.is_file()]
    if missing:
        raise BookBuildFailed("notebooks never executed (run `adamqlr book run`):", missing)
    absent = project.missing_pages()
    if absent:
        raise BookBuildFailed(
            "_toc.yml names pages with neither a .md file nor a notebook source:", absent
        )
    html = build_html(project, path_output=path_output)
    log.info("the book is in %s", html / "index.html")
    return BuildResult(html=html, outcomes=outcomes, page_written=page_written)
