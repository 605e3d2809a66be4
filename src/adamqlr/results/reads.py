"""Which files of a results store a process read: what an executed book page depended on.

While the log is on (``ADAMQLR_LOG_READS=1`` in the environment when this module is first
imported, or :func:`start`), :class:`adamqlr.results.store.ResultStore` notes

- the manifest of every run record it reads, and of every record it looked for and did not find
  (a record that appears later changes what the reader would see);
- every trial-ledger row it consulted, by ledger and experiment key (a tuning trial folded into
  a ledger is read from there; a row looked for and missing counts too), so that rows another
  study's campaign adds to the same ledger do not count;
- every glob it scanned (:meth:`~adamqlr.results.store.ResultStore.manifests`).

The book runner turns the log on in the kernel that executes a page and keeps it with the page
(:mod:`adamqlr.book.fingerprint`), so that the page goes stale when a record it read changes or
one it looked for appears, and not when a campaign adds records of other studies beside them.
Paths are absolute; the runner makes them relative to the project.
"""

from __future__ import annotations

import os

__all__ = [
    "ENV",
    "ROW_SEPARATOR",
    "active",
    "logged",
    "note_file",
    "note_row",
    "note_scan",
    "start",
    "stop",
]

#: The environment variable that turns the log on when this module is imported.
ENV = "ADAMQLR_LOG_READS"

#: What separates a ledger's path from a row's key in a logged row.
ROW_SEPARATOR = "#"

_files: set[str] | None = None
_scans: set[str] | None = None
_rows: set[str] | None = None


def start() -> None:
    """Turn the log on (what was logged before is kept)."""
    global _files, _scans, _rows
    if _files is None or _scans is None or _rows is None:
        _files, _scans, _rows = set(), set(), set()


def stop() -> None:
    """Turn the log off and forget it."""
    global _files, _scans, _rows
    _files = _scans = _rows = None


def active() -> bool:
    """Whether reads are being logged."""
    return _files is not None


def note_file(path: str | os.PathLike[str]) -> None:
    """Note that ``path`` was read or looked for (nothing happens while the log is off)."""
    if _files is not None:
        _files.add(os.path.abspath(path))


def note_row(ledger: str | os.PathLike[str], key: str) -> None:
    """Note that the row of experiment ``key`` in the trial ledger ``ledger`` was looked up."""
    if _rows is not None:
        _rows.add(f"{os.path.abspath(ledger)}{ROW_SEPARATOR}{key}")


def note_scan(pattern: str | os.PathLike[str]) -> None:
    """Note that every file matching the glob ``pattern`` was read."""
    if _scans is not None:
        _scans.add(os.path.abspath(pattern))


def logged() -> dict[str, list[str]] | None:
    """Return ``{"files": [...], "scans": [...], "rows": [...]}``, or ``None`` if off.

    Files and scans are sorted absolute paths; rows are ``"<ledger path>#<key>"``.
    """
    if _files is None or _scans is None or _rows is None:
        return None
    return {"files": sorted(_files), "scans": sorted(_scans), "rows": sorted(_rows)}


def _from_environment() -> None:
    if os.environ.get(ENV, "") not in ("", "0"):
        start()


_from_environment()
