"""The book's "Reproducibility" page, generated from the executed notebooks and their run records.

For every notebook in ``_toc.yml`` the page gives the profile it ran under, when, on which
device, for how long, with which torch, at which commit (and whether the working tree had
uncommitted changes), all read from the ``metadata["adamqlr"]`` record the runner writes. For
notebooks that declare run records (``# reads: results/...``), it summarises the records'
provenance: how many, on which devices, when, how much compute, at which commits.

The output depends only on those files, so it is deterministic: rebuilding an unchanged book
rewrites nothing. The page is a build product (git-ignored): every strict build regenerates it
from the pages it is about to build, so it cannot fall behind them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adamqlr.book.project import Project
from adamqlr.book.runner import atomic_write_text, recorded_metadata

__all__ = ["PAGE", "record_provenance", "render", "write"]

#: The generated page, relative to the project root.
PAGE = "book/reproducibility.md"


def _short(commit: str | None) -> str:
    return commit[:10] if commit else "unknown"


def _commit_cell(git: Mapping[str, Any] | None, repository: str | None) -> str:
    git = git or {}
    commit = git.get("commit")
    text = f"`{_short(commit)}`"
    if commit and repository:
        text = f"[{text}]({repository.rstrip('/')}/commit/{commit})"
    if git.get("dirty"):
        text += " (dirty)"
    return text


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _cell(text: Any) -> str:
    return str(text if text not in (None, "") else "unknown").replace("|", "\\|").replace("\n", " ")


def record_provenance(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Read the provenance of the run records among ``paths``.

    A path counts as a record's provenance when it is a JSON object with a ``started_at`` field
    (the results store's ``provenance-*.json``); for any other path, the ``provenance-*.json``
    files in its folder are used. Each record folder counts once.

    Args:
        paths: Files matched by a notebook's ``# reads:`` globs.

    Returns:
        The provenance dicts, in path order.
    """
    seen: set[Path] = set()
    found: list[dict[str, Any]] = []
    for path in sorted(Path(p) for p in paths):
        folder = path.parent
        if folder in seen:
            continue
        candidates = (
            [path]
            if path.name.startswith("provenance")
            else sorted(folder.glob("provenance*.json"))
        )
        for candidate in candidates:
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and "started_at" in data:
                seen.add(folder)
                found.append(data)
                break
    return found


def _records_summary(project: Project, record: Mapping[str, Any]) -> list[str]:
    globs = (record.get("inputs") or {}).get("records") or {}
    if not globs:
        return []
    files = sorted({project.root / rel for matched in globs.values() for rel in matched})
    provenance = record_provenance(files)
    lines = [f"- reads {', '.join(f'`{g}`' for g in globs)}: {len(files)} files"]
    if provenance:
        devices = sorted({_cell(p.get("device_name") or p.get("device")) for p in provenance})
        starts = sorted(str(p.get("started_at")) for p in provenance if p.get("started_at"))
        total = sum(
            float(p["duration_s"])
            for p in provenance
            if isinstance(p.get("duration_s"), (int, float))
        )
        commits = sorted(
            {
                _short((p.get("git") or {}).get("commit"))
                + (" (dirty)" if (p.get("git") or {}).get("dirty") else "")
                for p in provenance
            }
        )
        lines.append(
            f"- {len(provenance)} run records, on {'; '.join(devices)}, "
            + (f"run between {starts[0]} and {starts[-1]}, " if starts else "")
            + f"{_duration(total)} of compute in all, "
            + f"at commit{'s' if len(commits) > 1 else ''} {', '.join(f'`{c}`' for c in commits)}"
        )
    return lines


def _repository(project: Project) -> str | None:
    import yaml

    try:
        with open(project.root / "_config.yml", encoding="utf-8") as fh:
            config = yaml.safe_load(fh) or {}
    except OSError:
        return None
    url = (config.get("repository") or {}).get("url")
    return url if isinstance(url, str) and url.startswith("https://") else None


def render(project: Project) -> str:
    """Return the Markdown text of the reproducibility page.

    Args:
        project: The project whose ``_toc.yml`` lists the notebooks.

    Returns:
        The page (MyST Markdown).
    """
    repository = _repository(project)
    lines = [
        "# Reproducibility",
        "",
        "<!-- Generated by `adamqlr book build` from the executed notebooks' metadata and the run",
        "     records they read; do not edit by hand. -->",
        "",
        "Every page with code in this book is a notebook executed by `adamqlr book run`, which",
        "records the run in the notebook's metadata. This page collects those records: the",
        "{term}`profile` each notebook ran under, when and on which device, how long it took, the",
        "versions of PyTorch and of this library, and the commit of the code (*dirty*: the working",
        "tree had uncommitted changes). Pages drawn from stored",
        "{term}`run records <run record>` list where those came from. {doc}`rerun` explains how to",
        "rerun any of them.",
        "",
        "| page | profile | executed (UTC) | device, software | duration | commit |",
        "|---|---|---|---|---|---|",
    ]
    details: list[str] = []
    for entry in project.notebooks():
        record = recorded_metadata(entry.target)
        link = f"{{doc}}`{entry.name}`"
        if record is None:
            lines.append(f"| {link} | not executed yet | | | | |")
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    link,
                    f"`{_cell(record.get('profile'))}`",
                    _cell(str(record.get("started", "")).replace("T", " ").rstrip("Z")[:16]),
                    f"{_cell(record.get('device'))}; torch {_cell(record.get('torch'))}, "
                    f"adamqlr {_cell(record.get('adamqlr'))}",
                    _duration(record.get("duration_s")),
                    _commit_cell(record.get("git"), repository),
                ]
            )
            + " |"
        )
        summary = _records_summary(project, record)
        if summary:
            details += ["", f"**{{doc}}`{entry.name}`**", "", *summary]
    if details:
        lines += ["", "## Run records", *details]
    lines += [
        "",
        "## What is recorded",
        "",
        "The runner writes, into `metadata.adamqlr` of each executed notebook",
        "`book/NN_topic.ipynb`, the profile and parameters, the start time and duration, the",
        "device, the versions of",
        "Python, PyTorch and `adamqlr`, the kernel, the git commit and whether the tree was dirty,",
        "and the hash of the run's inputs (the notebook's source, its parameters, the numerics",
        "version `adamqlr.ALGORITHM_VERSION`, the run records it read, and the library modules it",
        "used). papermill adds per-cell timings under `metadata.papermill`.",
        "",
    ]
    return "\n".join(lines)


def write(project: Project) -> bool:
    """Write the page to :data:`PAGE` if its text changed.

    Returns:
        Whether the file was (re)written.
    """
    path = project.root / PAGE
    text = render(project)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True
