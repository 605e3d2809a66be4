"""Which files of a results store a process read: what an executed book page depended on.

While the log is on (``ADAMQLR_LOG_READS=1`` in the environment when this module is first
imported, or :func:`start`), :class:`adamqlr.results.store.ResultStore` notes

- the manifest of every run record it reads, and of every record it looked for and did not find
  (a record that appears later changes what the reader would see);
- every trial ledger it consulted (a tuning trial folded into a ledger is read from there);
- every glob it scanned (:meth:`~adamqlr.results.store.ResultStore.manifests`).

The book runner turns the log on in the kernel that executes a page and keeps it with the page
(:mod:`adamqlr.book.fingerprint`), so that the page goes stale when a record it read changes or
one it looked for appears, and not when a campaign adds records of other studies beside them.
Paths are absolute; the runner makes them relative to the project.
"""

from __future__ import annotations

import os

__all__ = ["ENV", "active", "logged", "note_file", "note_scan", "start", "stop"]

#: The environment variable that turns the log on when this module is imported.
ENV = "ADAMQLR_LOG_READS"

_files: set[str] | None = None
_scans: set[str] | None = None


def start() -> None:
    """Turn the log on (what was logged before is kept)."""
    global _files, _scans
    if _files is None or _scans is None:
        _files, _scans = set(), set()


def stop() -> None:
    """Turn the log off and forget it."""
    global _files, _scans
    _files = _scans = None


def active() -> bool:
    """Whether reads are being logged."""
    return _files is not None


def note_file(path: str | os.PathLike[str]) -> None:
    """Note that ``path`` was read or looked for (nothing happens while the log is off)."""
    if _files is not None:
        _files.add(os.path.abspath(path))


def note_scan(pattern: str | os.PathLike[str]) -> None:
    """Note that every file matching the glob ``pattern`` was read."""
    if _scans is not None:
        _scans.add(os.path.abspath(pattern))


def logged() -> dict[str, list[str]] | None:
    """Return ``{"files": [...], "scans": [...]}`` (sorted absolute paths), or ``None`` if off."""
    if _files is None or _scans is None:
        return None
    return {"files": sorted(_files), "scans": sorted(_scans)}


def _from_environment() -> None:
    if os.environ.get(ENV, "") not in ("", "0"):
        start()


_from_environment()
