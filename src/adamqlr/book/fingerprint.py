"""What an executed notebook depends on, and the input hash the runner skips on.

A page is *up to date* when its recorded ``input_hash`` equals the hash of its inputs now. The
inputs are

1. the notebook's source file (``notebooks/NN_topic.py``, byte for byte);
2. the profile and the other papermill parameters;
3. :data:`adamqlr.ALGORITHM_VERSION` and :data:`RUNNER_VERSION` (what the runner adds to a
   notebook: the Colab cell, the metadata);
4. the run records the notebook read. The runner logs, in the kernel, every record manifest and
   trial-ledger row the results store read or looked for (:mod:`adamqlr.results.reads`): those
   files and rows are hashed (one looked for and missing counts as missing, so a record that
   appears later makes the page stale), and a record or trial added beside them for another
   study does not. The notebook
   also declares its reads, lines ``# reads: <glob>`` in its code cells, globs relative to the
   project root: every matching file is hashed (a glob that matches nothing counts too), except
   the store's own files when the page has a read log (they are covered exactly by it); a page
   executed without a log (one that never opened a store) is judged by its globs alone;
5. the package's code that the notebook actually ran: the ``adamqlr`` modules loaded in the kernel
   at the end of the run (recorded by the runner), each fingerprinted by its syntax tree without
   docstrings, so that editing a comment or a docstring does not make every page stale, while any
   change to what the code does (or a module imported by the notebook disappearing) does.

Items 1 to 3 and the globs are known before a run; the read log and item 5 only after it. The
*content hash* covers items 1 to 4; the recorded ``input_hash`` combines it with the code
fingerprints.

Hashing the same files (some 8,000 run records and 80 modules) for every ``adamqlr book status``
took seconds, so digests are kept between processes in :class:`StampedCache`
(``$ADAMQLR_CACHE/book-hashes.json``, default ``~/.cache/adamqlr``): a file's digest is reused
while its inode, size, modification and change times are those it was hashed at, and a file
modified within two seconds of being hashed is not cached at all (an edit within the file
system's timestamp resolution could otherwise go unseen, the "racy git" problem).
"""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RUNNER_VERSION",
    "Inputs",
    "StampedCache",
    "cached_digest",
    "code_fingerprint",
    "code_fingerprints",
    "declared_reads",
    "disk_cache",
    "gather_inputs",
    "input_hash",
    "package_dir",
    "relative_path",
    "relative_reads",
    "sha256_bytes",
    "sha256_file",
    "store_hashes",
    "store_reads_of",
]

#: Bumped when what the runner writes into a notebook changes (injected cells, metadata layout),
#: so that every page is re-executed once.
RUNNER_VERSION = 3

_READS = re.compile(r"^\s*#\s*reads:\s*(?P<pattern>\S.*?)\s*$")


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:] or [ast.Pass()]
    return tree


#: Fingerprints already computed in this process, keyed by file identity and modification stamp:
#: ``adamqlr book status`` asks for the same ~30 modules once per page.
_FINGERPRINTS: dict[tuple[str, int, int, int], str] = {}

#: A file modified this recently (seconds) is hashed but its digest is not kept on disk.
RACY_SECONDS = 2.0


def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


class StampedCache:
    """Digests of files kept on disk between processes, valid while the file is unchanged.

    An entry is ``{absolute path: {"stamp": [inode, size, mtime_ns, ctime_ns], kind: value}}``; a
    lookup whose stamp differs is a miss. The file is written atomically; an unreadable or
    unwritable cache only makes lookups miss. Entries of files that no longer exist are dropped
    when it is saved.

    Args:
        path: The JSON file (default ``$ADAMQLR_CACHE/book-hashes.json`` or
            ``~/.cache/adamqlr/book-hashes.json``).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            folder = os.environ.get("ADAMQLR_CACHE") or os.path.join("~", ".cache", "adamqlr")
            path = os.path.join(os.path.expanduser(folder), "book-hashes.json")
        self.path = Path(path)
        self._entries: dict[str, dict[str, Any]] | None = None
        self._dirty = False

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._entries = {}
        return self._entries

    def get(self, path: str | os.PathLike[str], kind: str, compute: Callable[[Path], Any]) -> Any:
        """Return ``compute(path)``, from the cache while the file is unchanged.

        Args:
            path: The file.
            kind: What is computed (``"sha256"``, ``"code"``, ...): one file has one value per
                kind.
            compute: The function of the file's path (its result must be JSON).

        Returns:
            The value.
        """
        real = os.path.abspath(path)  # not realpath: its lstat of every folder cost seconds
        stat = os.stat(real)
        stamp = _stamp(stat)
        entries = self._load()
        entry = entries.get(real)
        if entry is not None and entry.get("stamp") == stamp and kind in entry:
            return entry[kind]
        value = compute(Path(real))
        if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > RACY_SECONDS * 1e9:
            if entry is None or entry.get("stamp") != stamp:
                entry = entries[real] = {"stamp": stamp}
            entry[kind] = value
            self._dirty = True
        return value

    def save(self) -> None:
        """Write the cache (atomically) if anything was added; keep entries of existing files."""
        if not self._dirty or self._entries is None:
            return
        entries = {k: v for k, v in self._entries.items() if os.path.exists(k)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".book-hashes-")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(entries, fh, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError:
            return  # a cache that cannot be written only costs time
        self._entries, self._dirty = entries, False


_DISK: StampedCache | None = None


def disk_cache() -> StampedCache:
    """Return this process's :class:`StampedCache` (made on first use)."""
    global _DISK
    if _DISK is None:
        _DISK = StampedCache()
    return _DISK


def cached_digest(path: str | os.PathLike[str], kind: str, compute: Callable[[Path], Any]) -> Any:
    """Return ``compute(path)`` through the process's on-disk :class:`StampedCache`."""
    return disk_cache().get(path, kind, compute)


def code_fingerprint(path: str | os.PathLike[str]) -> str:
    """Fingerprint a Python file by what it does: its syntax tree without docstrings.

    Comments, docstrings, blank lines and formatting do not change the fingerprint; any change of
    code does. A file that does not parse is fingerprinted by its bytes. Within a process the
    result is cached per file and reused while the file's size, inode and modification time
    (nanoseconds) are unchanged.

    Args:
        path: The ``.py`` file.

    Returns:
        A hex SHA-256.
    """
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    cached = _FINGERPRINTS.get(key)
    if cached is None:
        cached = _FINGERPRINTS[key] = cached_digest(path, "code", _code_fingerprint)
    return cached


def _code_fingerprint(path: str | os.PathLike[str]) -> str:
    text = Path(path).read_bytes()
    try:
        tree = _strip_docstrings(ast.parse(text))
    except (SyntaxError, ValueError):
        return sha256_bytes(text)
    return sha256_bytes(ast.dump(tree, annotate_fields=False, include_attributes=False).encode())


def package_dir() -> Path:
    """Return the folder of the installed ``adamqlr`` package (``src/adamqlr`` in a checkout)."""
    return Path(__file__).resolve().parent.parent


def code_fingerprints(
    relpaths: Iterable[str], base: str | os.PathLike[str] | None = None
) -> dict[str, str | None]:
    """Fingerprint package files given relative to the package folder.

    Args:
        relpaths: Paths like ``"optim.py"`` or ``"tasks/base.py"``.
        base: The package folder (default :func:`package_dir`).

    Returns:
        ``{relpath: fingerprint}``, with ``None`` for a file that no longer exists.
    """
    folder = Path(base) if base is not None else package_dir()
    out: dict[str, str | None] = {}
    for rel in sorted(set(relpaths)):
        path = folder / rel
        out[rel] = code_fingerprint(path) if path.is_file() else None
    return out


def declared_reads(code_cells: Iterable[str]) -> list[str]:
    """Return the ``# reads: <glob>`` declarations found in the given code-cell sources.

    Args:
        code_cells: Sources of the notebook's code cells.

    Returns:
        The globs, in order of appearance, without duplicates.

    Raises:
        ValueError: If a glob is absolute or climbs out of the project (``..``).
    """
    patterns: list[str] = []
    for source in code_cells:
        for line in source.splitlines():
            match = _READS.match(line)
            if not match:
                continue
            pattern = match.group("pattern")
            if os.path.isabs(pattern) or ".." in Path(pattern).parts:
                raise ValueError(
                    f"invalid '# reads:' pattern {pattern!r} (expected a glob relative to the "
                    "project root, without '..')"
                )
            if pattern not in patterns:
                patterns.append(pattern)
    return patterns


def record_hashes(
    root: str | os.PathLike[str],
    patterns: Iterable[str],
    profile: str | None = None,
    *,
    store_files: bool = True,
) -> dict[str, Any]:
    """Hash every file matched by the declared globs.

    Args:
        root: The project root the globs are relative to.
        patterns: Globs (``**`` allowed).
        profile: If given, a run record's ``manifest.json`` made under another profile is left
            out: a page run under ``quick`` reads only quick records, so a paper-profile campaign
            writing into the same store does not make it stale.
        store_files: Whether to hash the results store's own files (record manifests and trial
            ledgers); ``False`` when a read log covers them (:func:`store_hashes`).

    Returns:
        ``{pattern: {relpath: sha256}}``; an empty mapping for a glob that matches nothing.
    """
    root = Path(root)
    out: dict[str, Any] = {}
    for pattern in patterns:
        files = sorted(
            p
            for p in glob.glob(str(root / pattern), recursive=True)
            if os.path.isfile(p) and _counted(p, profile, store_files)
        )
        out[pattern] = {
            Path(p).relative_to(root).as_posix(): cached_digest(p, "sha256", sha256_file)
            for p in files
        }
    return out


def _counted(path: str, profile: str | None, store_files: bool) -> bool:
    """Whether a glob's match is hashed (see :func:`record_hashes`)."""
    found = _record_profile(path)
    if found is None:  # not a store file (or an unreadable manifest: hashed as it is)
        return True
    return store_files and (profile is None or found == profile)


#: The key of :func:`store_hashes`' files in ``Inputs.records``; scanned globs are keyed by
#: this prefix and the glob; trial-ledger rows by :data:`ROWS_KEY`.
STORE_KEY = "store"
SCAN_PREFIX = "scan:"
ROWS_KEY = "ledger rows"
#: What separates a ledger's path from a row's key in a read log: the separator of
#: :mod:`adamqlr.results.reads` (not imported: the runner keeps clear of the store's imports).
ROW_SEPARATOR = "#"


def store_hashes(root: str | os.PathLike[str], store_reads: Mapping[str, Any]) -> dict[str, Any]:
    """Hash the results-store files a page read (its read log, :mod:`adamqlr.results.reads`).

    Args:
        root: The project root (relative paths in the log are relative to it).
        store_reads: ``{"files": [...], "scans": [...], "rows": [...]}``: the files read or
            looked for, the globs scanned (every match counts), and the trial-ledger rows looked
            up (``"<ledger>#<key>"``; only those rows count, not the rest of their ledger).

    Returns:
        ``{"store": {path: sha256 or None for a missing file}, "scan:<glob>": {path: sha256},
        "ledger rows": {"<ledger>#<key>": sha256 of the row's line, or None}}`` (the last only
        when rows were logged).
    """
    root = Path(root)
    files = {
        rel: (cached_digest(root / rel, "sha256", sha256_file) if (root / rel).is_file() else None)
        for rel in sorted(store_reads.get("files", []))
    }
    out: dict[str, Any] = {STORE_KEY: files}
    for pattern in sorted(store_reads.get("scans", [])):
        matches = sorted(p for p in glob.glob(str(root / pattern)) if os.path.isfile(p))
        out[SCAN_PREFIX + pattern] = {
            relative_path(p, root): cached_digest(p, "sha256", sha256_file) for p in matches
        }
    rows = sorted(store_reads.get("rows", []))
    if rows:
        lines: dict[str, dict[str, str]] = {}
        digests: dict[str, str | None] = {}
        for entry in rows:
            ledger, _, key = entry.rpartition(ROW_SEPARATOR)
            if ledger not in lines:
                lines[ledger] = _ledger_lines(root / ledger)
            digests[entry] = lines[ledger].get(key)
        out[ROWS_KEY] = digests
    return out


#: Parsed ledgers of this process, by path: the stamps of the compressed and the plain-text
#: file (:func:`_file_stamp`), and ``{key: sha256 of its line}``.
_LEDGERS: dict[Path, tuple[tuple[tuple[int, ...], ...], dict[str, str]]] = {}


def _file_stamp(path: Path) -> tuple[int, ...]:
    """``(inode, size, mtime_ns, ctime_ns)`` of ``path``; ``()`` when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _ledger_lines(path: Path) -> dict[str, str]:
    """Return ``{key: sha256 of its line}`` of a trial ledger (empty when missing).

    ``path`` is the compressed ledger; a plain-text one beside it is read after it, as the store
    reads them (:func:`adamqlr.results.ledger.ledger_lines`), and a line's digest is of its text,
    so compressing a ledger leaves every row's digest as it was.

    A line that is not a JSON object with a ``key`` is skipped here: the store refuses such a
    ledger when it reads it, so a page could not have read it. A ledger is parsed once per
    process while its file is unchanged (``book status`` asks for the rows of every page).
    """
    from adamqlr.results.ledger import LedgerError, ledger_files, ledger_lines  # stdlib only

    stamp = tuple(_file_stamp(f) for f in ledger_files(path))
    if path in _LEDGERS and _LEDGERS[path][0] == stamp:
        return _LEDGERS[path][1]
    try:
        lines = ledger_lines(path)
    except LedgerError:
        lines = []  # the store refuses it too: every row the page read reads as missing
    out = {}
    for _, _, line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "key" in row:
            out[str(row["key"])] = hashlib.sha256(line).hexdigest()
    _LEDGERS[path] = (stamp, out)
    return out


def store_reads_of(records: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """Return the read log that :func:`store_hashes` hashed into ``records`` (``None``: none)."""
    if STORE_KEY not in records:
        return None
    scans = [k[len(SCAN_PREFIX) :] for k in records if k.startswith(SCAN_PREFIX)]
    out = {"files": sorted(records[STORE_KEY]), "scans": sorted(scans)}
    if ROWS_KEY in records:
        out["rows"] = sorted(records[ROWS_KEY])
    return out


def relative_reads(logged: Mapping[str, Any], root: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Return a kernel's read log with its paths relative to ``root`` where they lie under it."""
    out = {
        kind: sorted({relative_path(p, Path(root)) for p in logged.get(kind, [])})
        for kind in ("files", "scans")
    }
    rows = set()
    for entry in logged.get("rows", []):
        ledger, _, key = entry.rpartition(ROW_SEPARATOR)
        rows.add(f"{relative_path(ledger, Path(root))}{ROW_SEPARATOR}{key}")
    if rows:
        out["rows"] = sorted(rows)
    return out


def relative_path(path: str | os.PathLike[str], root: Path) -> str:
    """``path`` relative to ``root`` (POSIX separators), or absolute when it lies outside."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(root.resolve()).as_posix()
    except ValueError:
        return absolute.as_posix()


def _record_profile(path: str) -> str | None:
    """Return the profile of a run record's manifest or a trial ledger (``None``: another file)."""
    from adamqlr.results.ledger import ledger_profile  # stdlib only; imported late

    profile = ledger_profile(path)
    if profile is not None:
        return profile
    if os.path.basename(path) != "manifest.json":
        return None
    return cached_digest(path, "profile", _manifest_profile)


def _manifest_profile(path: str | os.PathLike[str]) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            profile = json.load(f).get("profile")
    except (OSError, ValueError, AttributeError):
        return None  # unreadable: hashed as it is, so that a change still shows
    return profile if isinstance(profile, str) else None


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True)
class Inputs:
    """The inputs of one notebook run that are known before it starts.

    Attributes:
        source_sha256: SHA-256 of the source file.
        profile: ``smoke``, ``quick`` or ``paper``.
        parameters: Other papermill parameters (JSON values).
        algorithm_version: :data:`adamqlr.ALGORITHM_VERSION`.
        runner_version: :data:`RUNNER_VERSION`.
        records: ``{glob: {relpath: sha256}}`` for the declared run records.
    """

    source_sha256: str
    profile: str
    parameters: dict[str, Any] = field(default_factory=dict)
    algorithm_version: int = 0
    runner_version: int = RUNNER_VERSION
    records: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the inputs as a JSON-ready dict."""
        return asdict(self)

    def content_hash(self) -> str:
        """Hash of everything but the code (items 1 to 4 of the module docstring)."""
        return sha256_bytes(_canonical(self.as_dict()))


def input_hash(content_hash: str, code: Mapping[str, str | None]) -> str:
    """Combine the content hash and the code fingerprints into the recorded input hash."""
    return sha256_bytes(_canonical({"content": content_hash, "code": dict(sorted(code.items()))}))


def gather_inputs(
    root: str | os.PathLike[str],
    source: str | os.PathLike[str],
    code_cells: Iterable[str],
    profile: str,
    parameters: Mapping[str, Any] | None = None,
    store_reads: Mapping[str, Any] | None = None,
) -> Inputs:
    """Collect the :class:`Inputs` of a notebook run.

    Args:
        root: The project root (declared reads are relative to it).
        source: The notebook's source file.
        code_cells: Sources of its code cells (where ``# reads:`` lines are looked for).
        profile: The profile it runs under.
        parameters: Other papermill parameters.
        store_reads: The page's read log (:func:`relative_reads`), known after a run: its files
            are hashed and stand for the store's files among the globs' matches (``None``: the
            globs alone).

    Returns:
        The inputs.

    Raises:
        ValueError: If a parameter value is not JSON-serialisable (papermill could not inject it
            faithfully either), or a ``# reads:`` glob is invalid.
    """
    from adamqlr.version import ALGORITHM_VERSION

    params = dict(sorted((parameters or {}).items()))
    try:
        _canonical(params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid parameters {params!r}: not JSON values ({err})") from None
    return Inputs(
        source_sha256=sha256_file(source),
        profile=profile,
        parameters=params,
        algorithm_version=int(ALGORITHM_VERSION),
        runner_version=RUNNER_VERSION,
        records=record_hashes(
            root, declared_reads(code_cells), profile, store_files=store_reads is None
        )
        | ({} if store_reads is None else store_hashes(root, store_reads)),
    )
