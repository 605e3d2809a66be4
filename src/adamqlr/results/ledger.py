"""Tuning-trial ledgers: the summaries of many short runs, kept as one table per arm.

A paper-scale search makes thousands of tuning trials (200 configurations per arm, rungs of
successive halving); a full record of each (metric curve, provenance, manifest: about 9 kB in
three files) would outgrow the repository, and nothing reads a trial's curve: the search only
needs each trial's final values. A *ledger* keeps those, one JSON line per trial, gzip-compressed
(the rows repeat most of their provenance, so the file is about a sixth of the text), under the
store's ``tuning/`` folder::

    tuning/<task>/<optimiser>/trials-<profile>.jsonl.gz

A ledger written before compression (``trials-<profile>.jsonl``, plain text) is still read: its
rows are merged over the compressed file's, and the next write folds them into the compressed
file and removes the plain one (``adamqlr study fold`` does so for every ledger of a store).

A row holds the experiment key, the manifest's fields (algorithm version, seed, stop reason, row
count, when it was written), the last non-missing value of every metric column (``final``) and
the step it was reached at, the provenance without the fields a summary does not need (the
command line, the data files' sources; the spec and the commit stay), the SHA-256 of the full
record it summarises, and the SHA-256 of the row itself, which every read checks.

:meth:`ResultStore.status <adamqlr.results.store.ResultStore.status>` and
:meth:`~adamqlr.results.store.ResultStore.load` fall back to the ledger when a spec has no record
folder: a trial found there is ``"complete"`` (or ``"stale"``), and loads as a
:class:`~adamqlr.results.store.RunRecord` whose metric table is one row of final values (its
manifest says ``"form": "summary"``), so a search's choice is the same as from the full records.

Writing is atomic: the whole ledger is rewritten to a temporary file and renamed, under a lock;
the compressed bytes depend only on the rows (no time stamp in the gzip header);
a record folder is deleted only after its row is durably in the ledger (see
:meth:`ResultStore.summarise <adamqlr.results.store.ResultStore.summarise>`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adamqlr.results.atomic import atomic_write_bytes, file_lock

__all__ = [
    "LEDGER_VERSION", "TrialLedger", "ledger_files", "ledger_lines", "ledger_path",
    "ledger_profile", "legacy_ledgers", "summary_row",
]  # fmt: skip

#: Version of the row layout.
LEDGER_VERSION = 1
#: Provenance fields a summary drops: the command line, the resolved settings (derived from the
#: spec again on reading) and what the row holds at its top level.
_DROPPED = (
    "argv", "settings", "load_average", "key", "schema_version", "algorithm_version",
    "package_version", "stop_reason",
)  # fmt: skip
#: Fields of the provenance's ``data`` entry a summary keeps (the data files' hashes stay in the
#: repeats' full records, made from the same data).
_KEPT_DATA = ("dataset", "profile", "sizes", "preprocessing")


class LedgerError(ValueError):
    """A ledger file or row that does not check out (the message names the file and line)."""


def ledger_path(root: str | os.PathLike[str], task: str, optimiser: str, profile: str) -> Path:
    """Return where the ledger of ``(task, optimiser, profile)`` lives under the store ``root``."""
    for name, value in (("task", task), ("optimiser", optimiser), ("profile", profile)):
        if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
            raise ValueError(f"invalid {name} {value!r} for a ledger path")
    return Path(root) / "tuning" / task / optimiser / f"trials-{profile}.jsonl.gz"


def ledger_files(path: str | os.PathLike[str]) -> tuple[Path, ...]:
    """Return the files a ledger's rows are read from, in reading order.

    For the compressed ledger ``path``: itself, then the plain-text ledger it replaces
    (``.jsonl.gz`` → ``.jsonl``), either of which may be missing. A plain-text ``path`` is
    its only file.
    """
    path = Path(path)
    return (path, path.with_suffix("")) if path.suffix == ".gz" else (path,)


def ledger_profile(path: str | os.PathLike[str]) -> str | None:
    """Return the profile in a ledger file's name (``trials-<profile>.jsonl[.gz]``); else None."""
    name = Path(path).name
    for suffix in (".jsonl.gz", ".jsonl"):
        if (
            name.startswith("trials-")
            and name.endswith(suffix)
            and len(name) > len("trials-") + len(suffix)
        ):
            return name[len("trials-") : -len(suffix)]
    return None


def ledger_lines(path: str | os.PathLike[str]) -> list[tuple[Path, int, bytes]]:
    """Return the non-blank lines of a ledger as ``(file, line number, line)``, in reading order.

    ``path`` is the compressed ledger; the lines of a plain-text ledger beside it (written before
    compression) follow its own, so that a row in both reads as the plain file has it. Either
    file may be missing (no lines from it).

    Raises:
        LedgerError: The compressed file is not valid gzip.
    """
    out: list[tuple[Path, int, bytes]] = []
    for file in ledger_files(path):
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            continue
        if file.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as err:
                raise LedgerError(f"{file}: not a gzip file: {err}") from err
        out.extend((file, n, line) for n, line in enumerate(data.splitlines(), 1) if line.strip())
    return out


def legacy_ledgers(root: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """Return ``(task, optimiser, profile)`` of each ledger that still has a plain-text file."""
    out = []
    for plain in sorted(Path(root).glob("tuning/*/*/trials-*.jsonl")):
        profile = ledger_profile(plain)
        if profile is not None:
            out.append((plain.parent.parent.name, plain.parent.name, profile))
    return out


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _float(value: Any) -> float:
    return float(value)  # float("inf"), float("nan") read the strings back


def _digest(row: Mapping[str, Any]) -> str:
    body = {k: v for k, v in row.items() if k != "row_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def summary_row(
    manifest: Mapping[str, Any],
    provenance: Mapping[str, Any],
    final: Mapping[str, float],
    final_step: int | None,
) -> dict[str, Any]:
    """Build a ledger row from a full record's parts.

    Args:
        manifest: The record's manifest.
        provenance: The record's provenance.
        final: ``{column: last non-missing value}`` of its metric table.
        final_step: The ``step`` of its last row (``None`` without a step column).

    Returns:
        The row, with its own SHA-256 in ``row_sha256``.
    """
    prov = {k: v for k, v in provenance.items() if k not in _DROPPED}
    if isinstance(prov.get("data"), Mapping):
        prov["data"] = {k: v for k, v in prov["data"].items() if k in _KEPT_DATA}
    if isinstance(prov.get("campaign"), Mapping):
        prov["campaign"] = {"id": prov["campaign"].get("id")}
    row = {
        "ledger_version": LEDGER_VERSION,
        "key": str(manifest["key"]),
        "task": manifest["task"],
        "optimiser": manifest["optimiser"],
        "profile": manifest["profile"],
        "seed": int(manifest["seed"]),
        "algorithm_version": int(manifest["algorithm_version"]),
        "package_version": manifest.get("package_version"),
        "schema_version": int(manifest["schema_version"]),
        "stop_reason": manifest.get("stop_reason"),
        "rows": int(manifest.get("rows", 0)),
        "written_at": manifest.get("written_at"),
        "record_sha256": hashlib.sha256(
            json.dumps(dict(manifest), sort_keys=True).encode()
        ).hexdigest(),
        "final": {str(k): _json_value(float(v)) for k, v in final.items()},
        "final_step": None if final_step is None else int(final_step),
        "provenance": json.loads(json.dumps(prov, default=str, allow_nan=True)),
    }
    row["provenance"] = _clean(row["provenance"])
    row["row_sha256"] = _digest(row)
    return row


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return _json_value(obj)


class TrialLedger:
    """One ledger file: read (checked, cached by modification time), extended atomically.

    Args:
        path: The ledger file (see :func:`ledger_path`).
        lock_dir: Where its lock file lives (the store's ``.locks``).
    """

    def __init__(self, path: str | os.PathLike[str], lock_dir: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        name = ledger_files(self.path)[-1].stem  # trials-<profile>: the plain-text one's lock too
        self._lock = Path(lock_dir) / f"ledger-{self.path.parent.parent.name}-" \
            f"{self.path.parent.name}-{name}.lock"  # fmt: skip
        self._cache: tuple[tuple[tuple[int, int], ...], dict[str, dict[str, Any]]] | None = None

    def __repr__(self) -> str:
        return f"TrialLedger({str(self.path)!r})"

    def rows(self) -> dict[str, dict[str, Any]]:
        """Return ``{key: row}`` (empty when the file does not exist).

        Raises:
            LedgerError: A file that is not gzip, a line that is not JSON, or a row whose
                ``row_sha256`` does not match.
        """
        stamp = tuple(_stamp(f) for f in ledger_files(self.path))
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        rows: dict[str, dict[str, Any]] = {}
        for file, number, line in ledger_lines(self.path):
            try:
                row = json.loads(line)
            except ValueError as err:
                raise LedgerError(f"{file}:{number}: not JSON: {err}") from err
            if not isinstance(row, dict) or row.get("row_sha256") != _digest(row):
                raise LedgerError(
                    f"{file}:{number}: row SHA-256 does not match its content (edited or damaged)"
                )
            rows[str(row["key"])] = row
        self._cache = (stamp, rows)
        return rows

    def get(self, key: str) -> dict[str, Any] | None:
        """Return the row of ``key``, or ``None``."""
        return self.rows().get(key)

    def extend(self, new_rows: Iterable[Mapping[str, Any]]) -> int:
        """Add (or replace, by key) rows; rewrite the file atomically under its lock.

        Returns:
            How many rows were added or replaced.
        """
        new = [dict(r) for r in new_rows]
        if not new:
            return 0
        for row in new:
            if row.get("row_sha256") != _digest(row):
                raise LedgerError(f"row for key {row.get('key')!r} has a wrong row_sha256")
        with file_lock(self._lock):
            self._cache = None
            rows = self.rows()
            for row in new:
                rows[row["key"]] = row  # dicts keep insertion order; a replaced key keeps its place
            self._write(rows)
        return len(new)

    def remove(self, key: str) -> bool:
        """Remove ``key``'s row. Returns whether there was one."""
        with file_lock(self._lock):
            self._cache = None
            rows = self.rows()
            if key not in rows:
                return False
            del rows[key]
            self._write(rows)
            return True

    def compress(self) -> bool:
        """Fold a plain-text ledger beside this one into the compressed file; remove it.

        Returns:
            Whether there was a plain-text file to fold.
        """
        with file_lock(self._lock):
            plain = ledger_files(self.path)[1:]
            if not plain or not plain[0].exists():
                return False
            self._cache = None
            self._write(self.rows())
            return True

    def _write(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows.values())
        data = gzip.compress(text.encode(), compresslevel=9, mtime=0)
        atomic_write_bytes(self.path, data)
        for plain in ledger_files(self.path)[1:]:
            plain.unlink(missing_ok=True)  # its rows are in the compressed file now
        self._cache = None

    @staticmethod
    def final_values(row: Mapping[str, Any]) -> dict[str, float]:
        """Return the row's final values as floats (``"inf"``/``"nan"`` read back)."""
        return {k: _float(v) for k, v in row["final"].items()}
