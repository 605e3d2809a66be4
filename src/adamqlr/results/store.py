"""The results store: one run record per experiment key, written atomically, read back intact.

Layout under the store's root (``results/`` of the repository by default; ``ADAMQLR_RESULTS`` or
an argument chooses another)::

    <task>/<optimiser>/<profile>-seed<seed>-<key[:16]>/
        metrics-<sha256[:16]>.npz         the metric table, compressed numpy arrays: the float64
                                          columns as one matrix, any other column on its own
                                          (schema 3; schema 2: one array per column; schema 1:
                                          a .parquet; :meth:`ResultStore.upgrade` rewrites both)
        provenance-<sha256[:16]>.json     spec, settings, device, versions, commit, clocks, data
        manifest.json                     written last: the record exists only once this does
    .checkpoints/<key>.pt                 checkpoint of a run in progress (never committed)
    .locks/<key[:16]>.lock                one lock per experiment (writers and sweeps take it)
    tuning/...                            tuning tables of the studies' searches (not records)
    tuning/<task>/<optimiser>/trials-<profile>.jsonl.gz
                                          ledgers: summaries of tuning trials whose full records
                                          were folded away (:mod:`adamqlr.results.ledger`)

Writing a record: data files first (each one atomically: temporary file in the same directory,
``fsync``, ``os.replace``, ``fsync`` of the directory), the manifest last, then the files the
previous manifest named (a forced rerun) are deleted. Data files are named by their content hash,
so a rewrite never touches a file that the current manifest names: a reader sees the old record or
the new one, never a mixture. The manifest carries every file's SHA-256, which
:meth:`ResultStore.load` checks.

When a store is opened it sweeps what killed writers left behind: temporary files whose writer
process is gone, record folders without a manifest, data files no manifest names, and checkpoints
of finished records; it only touches an experiment whose lock it can take at once, so a live
writer is never disturbed.

A tuning trial may live as a row of a ledger instead of a folder (:meth:`ResultStore.summarise`):
:meth:`ResultStore.status` and :meth:`ResultStore.load` look there when a spec has no folder, and
load it as a one-row summary record.

A record made by an older (or newer) algorithm (:data:`adamqlr.ALGORITHM_VERSION`) is *stale*:
:meth:`ResultStore.load` raises :class:`StaleRecordError` unless ``allow_stale=True``, and
:func:`adamqlr.experiment.run` reruns it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from adamqlr import version
from adamqlr.results import reads
from adamqlr.results.atomic import (
    atomic_write_bytes,
    file_lock,
    fsync_dir,
    is_temporary,
    sweep_temporaries,
)
from adamqlr.results.ledger import (
    LedgerError,
    TrialLedger,
    ledger_path,
    legacy_ledgers,
    summary_row,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


class SettingsLike(Protocol):
    """What the store reads from resolved settings (:class:`adamqlr.experiment.RunSettings`).

    The store sits below :mod:`adamqlr.experiment` and knows a run only through these two
    protocols, so that it never imports the layer that writes to it.
    """

    @property
    def task(self) -> str:
        """The task's name."""
        ...

    @property
    def optimiser(self) -> str:
        """The optimiser's registry name."""
        ...

    @property
    def profile(self) -> str:
        """The profile's name."""
        ...

    @property
    def seed(self) -> int:
        """The seed."""
        ...

    @property
    def key(self) -> str:
        """The experiment's key (SHA-256 hex)."""
        ...

    def as_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready data."""
        ...


class SpecLike(Protocol):
    """What the store reads from an experiment (:class:`adamqlr.experiment.ExperimentSpec`)."""

    def settings(self) -> SettingsLike:
        """Return the resolved settings."""
        ...

    def as_dict(self) -> dict[str, Any]:
        """Return the spec as JSON-ready data."""
        ...

    def command(self) -> str:
        """Return the command line that runs it."""
        ...


#: Turns a record's stored spec (``provenance["spec"]``) back into a spec object.
SpecDecoder = Callable[[dict[str, Any]], Any]

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMAS",
    "CorruptRecordError",
    "MissingRecordError",
    "RecordError",
    "ResultStore",
    "RunRecord",
    "StaleRecordError",
    "default_root",
    "load",
]

logger = logging.getLogger(__name__)

#: Version of the record layout written now (3: metrics as a compressed ``.npz`` whose float64
#: columns form one matrix, about 9 kB for a run evaluated at 100 points; 2: one array per column,
#: a quarter larger, since each array carries its own headers; 1: metrics as parquet).
SCHEMA_VERSION = 3
#: Record layouts this code reads.
SUPPORTED_SCHEMAS = (1, 2, 3)
#: Folders of the store's root that hold no records (tuning tables), left alone by the sweep.
NOT_RECORDS = frozenset({"tuning"})
#: Name of the array that holds the column order in a metrics ``.npz``.
_COLUMNS = "__columns__"


#: Names, in a schema-3 metrics ``.npz``, of the float64 matrix and of its columns' positions.
_FLOATS, _PACKED = "floats", "__packed__"


def _metrics_npz(metrics: pd.DataFrame) -> bytes:
    """Return ``metrics`` as schema-3 ``.npz`` bytes (see the module's layout).

    The float64 columns are the rows of one compressed matrix (``floats``, with their positions
    in ``__packed__``); every other column is an array ``c<position>`` of its own dtype; the
    column names, in order, are ``__columns__``. One matrix instead of twenty arrays saves the
    per-array headers, a quarter of a small record.
    """
    import numpy as np

    columns = [metrics[c].to_numpy() for c in metrics.columns]
    columns = [v.astype(float) if v.dtype == object else v for v in columns]
    packed = [i for i, v in enumerate(columns) if v.dtype == np.float64]
    arrays = {
        _COLUMNS: np.array([str(c) for c in metrics.columns]),
        _PACKED: np.array(packed, dtype=np.int64),
        _FLOATS: (
            np.stack([columns[i] for i in packed])
            if packed
            else np.empty((0, len(metrics)), dtype=np.float64)
        ),
    }
    for i, values in enumerate(columns):
        if i not in packed:
            arrays[f"c{i}"] = values
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # numpy types ** as allow_pickle
    return buf.getvalue()


def _read_metrics(data: bytes, name: str) -> pd.DataFrame:
    """Return the metric table stored in ``data`` (any schema; ``name`` tells parquet apart)."""
    import numpy as np
    import pandas as pd

    if name.endswith(".parquet"):  # schema 1
        return pd.read_parquet(io.BytesIO(data), engine="pyarrow")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        columns = [str(c) for c in z[_COLUMNS]]
        values: dict[int, Any] = {}
        if _FLOATS in z.files:  # schema 3: the float64 columns as one matrix
            matrix = z[_FLOATS]
            values.update(zip((int(i) for i in z[_PACKED]), matrix, strict=True))
        for i in range(len(columns)):
            if i not in values:
                values[i] = z[f"c{i}"]
        return pd.DataFrame({c: values[i] for i, c in enumerate(columns)}, columns=columns)


#: Name of the file that completes a record.
MANIFEST = "manifest.json"


def _write_data_file(folder: Path, kind: str, data: bytes, ext: str) -> dict[str, Any]:
    """Write one of a record's data files, named by its hash; return its manifest entry."""
    digest = _sha256(data)
    name = f"{kind}-{digest[:16]}.{ext}"
    atomic_write_bytes(folder / name, data)
    return {"name": name, "sha256": digest, "bytes": len(data)}


def _write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Write a record's manifest, the file that completes it (last, atomically)."""
    atomic_write_bytes(
        folder / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    )


_DATA_FILES = ("metrics", "provenance")


class RecordError(LookupError):
    """Base class of the store's errors about one record."""


class MissingRecordError(RecordError):
    """No complete record exists for a spec; the message says how to make it."""


class StaleRecordError(RecordError):
    """The record was made by another algorithm version than this code's."""


class CorruptRecordError(RecordError):
    """A record's manifest or files do not check out (wrong hash, unreadable, wrong key)."""


def default_root() -> Path:
    """Return the default store root.

    ``$ADAMQLR_RESULTS`` when set; otherwise ``results/`` of the source checkout the package is
    imported from (a ``pyproject.toml`` two levels above ``src/adamqlr``); otherwise
    ``./results``.
    """
    env = os.environ.get("ADAMQLR_RESULTS")
    if env:
        return Path(env).expanduser()
    package = Path(__file__).resolve().parent.parent
    repo = package.parent.parent
    if package.parent.name == "src" and (repo / "pyproject.toml").is_file():
        return repo / "results"
    return Path.cwd() / "results"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _clean_json(obj: Any) -> Any:
    """Round-trip through JSON so that what is stored equals what a reader gets back."""
    text = json.dumps(obj, default=_json_default, allow_nan=True, sort_keys=True)
    value = json.loads(text)

    def fix(v: Any) -> Any:  # NaN/inf are not JSON: store them as strings
        if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            return repr(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(value)


@dataclass(eq=False)
class RunRecord:
    """A stored run: its spec, its metric table and where it came from.

    Attributes:
        spec: The experiment spec: the caller's spec type for :meth:`ResultStore.load`, the
            store's ``decode_spec`` for records found otherwise; ``None`` when it cannot be
            decoded (no decoder, or a task or optimiser no longer registered).
            ``provenance["spec"]`` always has it as data.
        metrics: The metric table, one row per step (row 0: the evaluation before training).
        provenance: Spec, resolved settings, device, versions, commit, times, data, stop reason.
        manifest: The manifest (schema version, key, algorithm version, files and hashes).
        path: The record's folder.
        stale: Whether the record was made by another algorithm version.
    """

    spec: Any
    metrics: pd.DataFrame
    provenance: dict[str, Any]
    manifest: dict[str, Any]
    path: Path
    stale: bool = False
    _extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        """The experiment key."""
        return str(self.manifest["key"])

    @property
    def settings(self) -> dict[str, Any]:
        """The resolved settings (batch size, budget, all hyperparameters)."""
        return dict(self.provenance["settings"])

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the manifest: changes whenever the record's content does."""
        return _sha256(json.dumps(self.manifest, sort_keys=True).encode())

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"RunRecord({m['task']}/{m['optimiser']}/{m['profile']}/seed{m['seed']}, "
            f"rows={len(self.metrics)}, stop={self.provenance.get('stop_reason')!r}, "
            f"stale={self.stale})"
        )


class ResultStore:
    """A folder of run records keyed by experiment (see the module docstring for the layout).

    Args:
        root: The folder (default :func:`default_root`); created if missing.
        sweep: Clean up after killed writers on opening (see :meth:`sweep`).
        decode_spec: How :meth:`load_dir` and :meth:`records` turn a stored spec back into an
            object, e.g. :meth:`adamqlr.experiment.ExperimentSpec.from_dict` (``None``: their
            records' ``spec`` is ``None``; :meth:`load` always decodes with the given spec's type).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        sweep: bool = True,
        decode_spec: SpecDecoder | None = None,
    ) -> None:
        self.decode_spec = decode_spec
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self._ledgers: dict[Path, TrialLedger] = {}
        #: A cache for values derived from records, keyed by what the caller chooses together
        #: with :meth:`state`'s identity of the record (so a rewritten record is never served).
        self.memo: dict[Any, Any] = {}
        if sweep:
            self.sweep()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.root)!r})"

    # ------------------------------------------------------------------------------ paths
    @staticmethod
    def _settings(spec: SpecLike | SettingsLike) -> SettingsLike:
        return spec.settings() if hasattr(spec, "settings") else spec

    def record_dir(self, spec: SpecLike | SettingsLike) -> Path:
        """Return the folder of ``spec``'s record (whether or not it exists)."""
        s = self._settings(spec)
        return self._dir(s.task, s.optimiser, s.profile, s.seed, s.key)

    def _dir(self, task: str, optimiser: str, profile: str, seed: int, key: str) -> Path:
        return self.root / task / optimiser / f"{profile}-seed{seed}-{key[:16]}"

    def ledger(self, task: str, optimiser: str, profile: str) -> TrialLedger:
        """Return the tuning-trial ledger of ``(task, optimiser, profile)`` (see the module doc)."""
        path = ledger_path(self.root, task, optimiser, profile)
        if path not in self._ledgers:
            self._ledgers[path] = TrialLedger(path, self.root / ".locks")
        return self._ledgers[path]

    def compress_ledgers(self) -> list[Path]:
        """Fold every plain-text ledger (written before compression) into its compressed file.

        Returns:
            The compressed ledgers that took in a plain-text file.
        """
        done = []
        for task, optimiser, profile in legacy_ledgers(self.root):
            ledger = self.ledger(task, optimiser, profile)
            if ledger.compress():
                done.append(ledger.path)
        return done

    def _ledger_row(self, settings: SettingsLike) -> tuple[TrialLedger, dict[str, Any]] | None:
        ledger = self.ledger(settings.task, settings.optimiser, settings.profile)
        reads.note_row(ledger.path, settings.key)
        row = ledger.get(settings.key)
        return None if row is None else (ledger, row)

    def checkpoint_path(self, key: str) -> Path:
        """Where a run in progress keeps its checkpoint."""
        return self.root / ".checkpoints" / f"{key}.pt"

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float = -1) -> Iterator[None]:
        """Hold the experiment's inter-process lock (``timeout`` as in :func:`file_lock`)."""
        with file_lock(self.root / ".locks" / f"{key[:16]}.lock", timeout=timeout):
            yield

    # ------------------------------------------------------------------------------ write
    def save(
        self,
        spec: SpecLike,
        metrics: pd.DataFrame,
        provenance: Mapping[str, Any],
        *,
        locked: bool = False,
    ) -> Path:
        """Write ``spec``'s record: data files, then the manifest (atomically, durably).

        Args:
            spec: The experiment.
            metrics: Its metric table.
            provenance: Its provenance (JSON-able; ``spec``, ``settings``, ``key`` and
                ``schema_version`` are filled in here).
            locked: The caller already holds :meth:`lock` for this key.

        Returns:
            The record's folder.
        """
        settings = spec.settings()
        key = settings.key
        prov = dict(provenance)
        prov.update(
            schema_version=SCHEMA_VERSION,
            key=key,
            spec=spec.as_dict(),
            settings=settings.as_dict(),
        )
        prov.setdefault("algorithm_version", version.ALGORITHM_VERSION)
        meta = {
            "task": settings.task,
            "optimiser": settings.optimiser,
            "profile": settings.profile,
            "seed": settings.seed,
        }
        ctx = contextlib.nullcontext() if locked else self.lock(key)
        with ctx:
            return self._write(key, meta, metrics, prov)

    def _write(
        self, key: str, meta: dict[str, Any], metrics: pd.DataFrame, prov: dict[str, Any]
    ) -> Path:
        folder = self._dir(meta["task"], meta["optimiser"], meta["profile"], meta["seed"], key)
        folder.mkdir(parents=True, exist_ok=True)
        payloads = {
            "metrics": (_metrics_npz(metrics), "npz"),
            "provenance": (
                (json.dumps(_clean_json(prov), indent=1, sort_keys=True) + "\n").encode(),
                "json",
            ),
        }
        files = {
            kind: _write_data_file(folder, kind, data, ext)
            for kind, (data, ext) in payloads.items()
        }
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "key": key,
            "algorithm_version": int(prov["algorithm_version"]),
            "package_version": version.__version__,
            **meta,
            "stop_reason": prov.get("stop_reason"),
            "rows": int(len(metrics)),
            "written_at": _now(),
            "files": files,
        }
        _write_manifest(folder, manifest)
        self._remove_unreferenced(folder, manifest)
        return folder

    @staticmethod
    def _remove_unreferenced(folder: Path, manifest: Mapping[str, Any]) -> list[Path]:
        keep = {MANIFEST, *(f["name"] for f in manifest["files"].values())}
        removed = []
        for entry in os.scandir(folder):
            if entry.name not in keep and entry.is_file() and not is_temporary(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
        if removed:
            fsync_dir(folder)
        return removed

    def delete(self, spec: SpecLike) -> bool:
        """Remove ``spec``'s record (manifest first) and ledger row; return whether one existed."""
        settings = spec.settings()
        folder = self.record_dir(settings)
        with self.lock(settings.key):
            in_ledger = self.ledger(settings.task, settings.optimiser, settings.profile).remove(
                settings.key
            )
            if not folder.exists():
                return in_ledger
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / MANIFEST)
                fsync_dir(folder)
            shutil.rmtree(folder, ignore_errors=True)
            return True

    # ------------------------------------------------------------------------------- read
    def _read_manifest(self, folder: Path) -> dict[str, Any]:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as err:
            raise CorruptRecordError(f"unreadable manifest in {folder}: {err}") from err
        if not isinstance(manifest, dict) or "schema_version" not in manifest:
            raise CorruptRecordError(f"malformed manifest in {folder}")
        if manifest["schema_version"] not in SUPPORTED_SCHEMAS:
            raise CorruptRecordError(
                f"record {folder} has schema version {manifest['schema_version']!r}; this adamqlr "
                f"({version.__version__}) reads {SUPPORTED_SCHEMAS}: upgrade the package"
            )
        return manifest

    @staticmethod
    def is_stale(manifest: Mapping[str, Any]) -> bool:
        """Whether a manifest's algorithm version differs from :data:`adamqlr.ALGORITHM_VERSION`."""
        return manifest.get("algorithm_version") != version.ALGORITHM_VERSION

    def status(self, spec: SpecLike | SettingsLike) -> str:
        """Return ``"missing"``, ``"complete"`` (current algorithm), ``"stale"`` or ``"corrupt"``.

        Only the manifest (or the ledger row) is read; :meth:`load` also checks the files' hashes.
        """
        return self.state(spec)[0]

    def state(self, spec: SpecLike | SettingsLike) -> tuple[str, str | None]:
        """Return :meth:`status` and an identity of the record that changes whenever it does.

        The identity is the SHA-256 of the manifest (or the ledger row's own hash), ``None``
        for a missing or corrupt record: readers that derive values from a record (a search's
        objectives) cache them in :attr:`memo` under it.
        """
        settings = self._settings(spec)
        folder = self.record_dir(settings)
        try:
            text = (folder / MANIFEST).read_bytes()
            reads.note_file(folder / MANIFEST)
            manifest = self._read_manifest(folder)
        except FileNotFoundError:
            try:
                found = self._ledger_row(settings)
            except LedgerError:
                return "corrupt", None
            if found is None:
                reads.note_file(folder / MANIFEST)  # looked for: its appearing would matter
                return "missing", None
            row = found[1]
            return ("stale" if self.is_stale(row) else "complete"), "ledger:" + row["row_sha256"]
        except CorruptRecordError:
            return "corrupt", None
        if manifest.get("key") != settings.key:
            return "corrupt", None
        return ("stale" if self.is_stale(manifest) else "complete"), _sha256(text)

    def load(
        self,
        spec: SpecLike | SettingsLike,
        *,
        allow_stale: bool = False,
        verify: bool = True,
    ) -> RunRecord:
        """Return the record of ``spec``.

        Args:
            spec: The experiment (or its resolved settings).
            allow_stale: Return a stale record (flagged ``stale=True``) instead of raising.
            verify: Check every file's SHA-256 against the manifest.

        Raises:
            MissingRecordError: No complete record (the message gives the command that makes it).
            StaleRecordError: The record was made by another algorithm version.
            CorruptRecordError: The record does not check out.
        """
        settings = self._settings(spec)
        folder = self.record_dir(settings)
        decode = getattr(type(spec), "from_dict", None) if hasattr(spec, "settings") else None
        try:
            record = self.load_dir(
                folder, allow_stale=allow_stale, verify=verify, decode_spec=decode
            )
        except FileNotFoundError as err:
            try:
                found = self._ledger_row(settings)
            except LedgerError as bad:
                raise CorruptRecordError(str(bad)) from bad
            if found is not None:
                return self._summary_record(
                    found[0], found[1], settings, allow_stale=allow_stale, decode_spec=decode
                )
            reads.note_file(folder / MANIFEST)  # looked for: its appearing would matter
            command = spec.command() if hasattr(spec, "command") else ""
            raise MissingRecordError(
                f"no run record for {spec} in {self.root}"
                + (f"; make it with: {command} --results {self.root}" if command else "")
            ) from err
        if record.key != settings.key:
            raise CorruptRecordError(
                f"record {folder} has key {record.key[:16]}..., expected {settings.key[:16]}..."
            )
        return record

    def load_dir(
        self,
        folder: str | os.PathLike[str],
        *,
        allow_stale: bool = False,
        verify: bool = True,
        decode_spec: SpecDecoder | None = None,
    ) -> RunRecord:
        """Load the record in ``folder`` (see :meth:`load`).

        ``decode_spec`` (default: the store's) decodes the record's spec.

        Raises:
            FileNotFoundError: No manifest in ``folder``.
            StaleRecordError, CorruptRecordError: As in :meth:`load`.
        """
        folder = Path(folder)
        for attempt in range(3):  # a concurrent forced rewrite may replace the files under us
            manifest = self._read_manifest(folder)
            reads.note_file(folder / MANIFEST)
            try:
                blobs = {}
                for kind in _DATA_FILES:
                    info = manifest["files"][kind]
                    data = (folder / info["name"]).read_bytes()
                    if verify and _sha256(data) != info["sha256"]:
                        raise CorruptRecordError(
                            f"{folder / info['name']}: SHA-256 {_sha256(data)[:16]}... does not "
                            f"match the manifest's {info['sha256'][:16]}..."
                        )
                    blobs[kind] = data
                break
            except FileNotFoundError as err:
                if attempt == 2:
                    raise CorruptRecordError(
                        f"{folder}: a file named by the manifest is missing"
                    ) from err
            except (KeyError, TypeError) as err:
                raise CorruptRecordError(f"malformed manifest in {folder}: {err!r}") from err
        stale = self.is_stale(manifest)
        if stale and not allow_stale:
            raise StaleRecordError(
                f"record {folder} was made by algorithm version {manifest.get('algorithm_version')}"
                f", this code is version {version.ALGORITHM_VERSION}: rerun it (adamqlr run "
                "--force ...) or load it with allow_stale=True"
            )
        try:
            metrics = _read_metrics(blobs["metrics"], manifest["files"]["metrics"]["name"])
            provenance = json.loads(blobs["provenance"])
        except Exception as err:  # noqa: BLE001 - any parse failure is a corrupt record
            raise CorruptRecordError(f"{folder}: cannot parse record files: {err}") from err
        return RunRecord(
            spec=_spec_from(provenance.get("spec"), decode_spec or self.decode_spec),
            metrics=metrics,
            provenance=provenance,
            manifest=manifest,
            path=folder,
            stale=stale,
        )

    def _summary_record(
        self,
        ledger: TrialLedger,
        row: Mapping[str, Any],
        settings: SettingsLike,
        *,
        allow_stale: bool,
        decode_spec: SpecDecoder | None = None,
    ) -> RunRecord:
        import pandas as pd

        stale = self.is_stale(row)
        if stale and not allow_stale:
            raise StaleRecordError(
                f"trial {row['key'][:16]}... in {ledger.path} was made by algorithm version "
                f"{row['algorithm_version']}, this code is version {version.ALGORITHM_VERSION}: "
                "rerun it (adamqlr run --force ...) or load it with allow_stale=True"
            )
        final = TrialLedger.final_values(row)
        if row.get("final_step") is not None:
            final["step"] = float(row["final_step"])
        metrics = pd.DataFrame({k: [v] for k, v in final.items()})
        provenance = dict(row["provenance"])
        for name in ("key", "algorithm_version", "package_version", "schema_version",
                     "stop_reason"):  # fmt: skip
            provenance.setdefault(name, row[name])  # kept once, at the row's top level
        spec = _spec_from(provenance.get("spec"), decode_spec or self.decode_spec)
        # the row was found by these settings' key (the same settings the stored spec resolves to)
        provenance["settings"] = (spec.settings() if spec is not None else settings).as_dict()
        provenance["summary"] = True
        manifest = {
            k: row[k]
            for k in ("key", "task", "optimiser", "profile", "seed", "algorithm_version",
                      "package_version", "schema_version", "stop_reason", "rows", "written_at")
        }  # fmt: skip
        manifest.update(form="summary", files={}, record_sha256=row["record_sha256"])
        return RunRecord(
            spec=spec, metrics=metrics, provenance=provenance, manifest=manifest,
            path=ledger.path, stale=stale,
        )  # fmt: skip

    def summarise(self, specs: Sequence[SpecLike]) -> list[Path]:
        """Fold the full records of ``specs`` (tuning trials) into their ledgers.

        Each record is loaded (hashes checked), its summary row written to the ledger of its
        task, optimiser and profile (atomically), and only then is its folder deleted, under the
        experiment's lock and only if the folder still holds the record that was summarised (a
        concurrent forced rerun wins). Missing, corrupt and already-summarised specs are skipped,
        so the call can be repeated; a kill at any point leaves every trial readable.

        Args:
            specs: The specs to fold (callers pass tuning trials, never repeats).

        Returns:
            The record folders removed.
        """
        by_ledger: dict[Path, list[tuple[SettingsLike, dict[str, Any]]]] = {}
        for spec in specs:
            settings = self._settings(spec)
            folder = self.record_dir(settings)
            try:
                record = self.load_dir(folder, allow_stale=True)
            except FileNotFoundError:
                continue
            except CorruptRecordError as err:
                logger.warning("not summarising %s: %s", folder, err)
                continue
            if record.key != settings.key:
                continue
            frame = record.metrics
            final = {
                str(c): float(frame[c].dropna().iloc[-1]) if frame[c].notna().any() else math.nan
                for c in frame.columns
                if c != "step" and frame[c].dtype.kind in "fiub"
            }
            step = int(frame["step"].iloc[-1]) if "step" in frame and len(frame) else None
            row = summary_row(record.manifest, record.provenance, final, step)
            path = ledger_path(self.root, settings.task, settings.optimiser, settings.profile)
            by_ledger.setdefault(path, []).append((settings, row))
        removed: list[Path] = []
        for entries in by_ledger.values():
            s0 = entries[0][0]
            self.ledger(s0.task, s0.optimiser, s0.profile).extend(row for _, row in entries)
            for settings, row in entries:
                folder = self.record_dir(settings)
                with self.lock(settings.key):
                    try:
                        manifest = self._read_manifest(folder)
                    except (FileNotFoundError, CorruptRecordError):
                        continue
                    now = _sha256(json.dumps(manifest, sort_keys=True).encode())
                    if now != row["record_sha256"]:
                        continue  # rewritten since it was read: keep the new record
                    os.unlink(folder / MANIFEST)
                    fsync_dir(folder)
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
        return removed

    def upgrade(self) -> list[Path]:
        """Rewrite every record of an older layout in the current one (:data:`SCHEMA_VERSION`).

        Only the metrics file and the manifest change, record by record under the experiment's
        lock, in the order :meth:`save` writes (new data file, then the manifest, then the old
        file is removed), so a kill at any point leaves every record readable. A record is
        rewritten only after its files' hashes check out and its table reads back from the new
        file exactly (same columns, dtypes and values, NaN included); the provenance file is
        kept byte for byte (it still says which layout the run was first written in), and the
        manifest says when, and by which package version and commit, the record was upgraded
        (the commit of the run itself stays in the provenance). Corrupt records are left alone
        (with a warning); the call can be repeated.

        Returns:
            The folders of the records rewritten.
        """
        from adamqlr.results.provenance import git_state

        upgraded = []
        by: dict[str, Any] | None = None
        for folder, manifest in list(self.manifests()):
            if manifest.get("schema_version") == SCHEMA_VERSION:
                continue
            if by is None:  # asked once, and only when there is something to do
                by = {"package_version": version.__version__, "git": git_state(("src",))}
            if self._upgrade_record(folder, manifest["key"], by):
                upgraded.append(folder)
        return upgraded

    def _upgrade_record(self, folder: Path, key: str, by: Mapping[str, Any]) -> bool:
        import pandas as pd

        with self.lock(key):
            try:
                record = self.load_dir(folder, allow_stale=True)
            except FileNotFoundError:  # folded or deleted meanwhile
                return False
            except CorruptRecordError as err:
                logger.warning("not upgrading %s: %s", folder, err)
                return False
            old = record.manifest
            if old.get("schema_version") == SCHEMA_VERSION or old.get("key") != key:
                return False
            data = _metrics_npz(record.metrics)
            try:
                pd.testing.assert_frame_equal(
                    _read_metrics(data, "metrics.npz"), record.metrics, check_exact=True
                )
            except AssertionError as err:
                raise ValueError(
                    f"{folder}: its metrics would not read back unchanged in schema "
                    f"{SCHEMA_VERSION}, so the record was left as it is: {err}"
                ) from err
            files = {**old["files"], "metrics": _write_data_file(folder, "metrics", data, "npz")}
            manifest = {
                **old,
                "schema_version": SCHEMA_VERSION,
                "files": files,
                "upgraded": {"from_schema": old["schema_version"], **by, "at": _now()},
            }
            _write_manifest(folder, manifest)
            self._remove_unreferenced(folder, manifest)
            return True

    # ------------------------------------------------------------------------------ query
    def manifests(
        self,
        *,
        task: str | None = None,
        optimiser: str | None = None,
        profile: str | None = None,
    ) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Yield ``(folder, manifest)`` of every complete record matching the filters."""
        pattern = f"{task or '*'}/{optimiser or '*'}/{profile or '*'}-seed*/{MANIFEST}"
        reads.note_scan(self.root / pattern)
        for path in sorted(self.root.glob(pattern)):
            try:
                yield path.parent, self._read_manifest(path.parent)
            except (FileNotFoundError, CorruptRecordError) as err:
                logger.warning("skipping %s: %s", path.parent, err)

    def query(
        self,
        *,
        task: str | None = None,
        optimiser: str | None = None,
        profile: str | None = None,
        seeds: Sequence[int] | None = None,
        include_stale: bool = False,
    ) -> pd.DataFrame:
        """Return an index of the records matching the filters, one row per record.

        Columns: ``task``, ``optimiser``, ``profile``, ``seed``, ``key``, ``stale``,
        ``algorithm_version``, ``stop_reason``, ``rows``, ``written_at``, ``path``.
        """
        import pandas as pd

        rows = []
        for folder, m in self.manifests(task=task, optimiser=optimiser, profile=profile):
            if seeds is not None and m["seed"] not in seeds:
                continue
            stale = self.is_stale(m)
            if stale and not include_stale:
                continue
            rows.append(
                {
                    **{k: m[k] for k in ("task", "optimiser", "profile", "seed", "key")},
                    "stale": stale,
                    **{k: m.get(k) for k in ("algorithm_version", "stop_reason", "rows")},
                    "written_at": m.get("written_at"),
                    "path": str(folder),
                }
            )
        columns = [
            "task", "optimiser", "profile", "seed", "key", "stale", "algorithm_version",
            "stop_reason", "rows", "written_at", "path",
        ]  # fmt: skip
        return pd.DataFrame(rows, columns=columns)

    def records(self, **filters: Any) -> list[RunRecord]:
        """Load every record :meth:`query` lists (same filters)."""
        allow = bool(filters.get("include_stale"))
        return [self.load_dir(p, allow_stale=allow) for p in self.query(**filters)["path"]]

    def load_many(self, specs: Sequence[SpecLike], *, allow_stale: bool = False) -> list[RunRecord]:
        """Load the records of ``specs``, or raise one error naming every missing or stale run.

        Raises:
            MissingRecordError: Listing each missing or stale run with the command that makes it.
        """
        records, problems = [], []
        for spec in specs:
            try:
                records.append(self.load(spec, allow_stale=allow_stale))
            except (MissingRecordError, StaleRecordError) as err:
                kind = "stale" if isinstance(err, StaleRecordError) else "missing"
                problems.append(f"  {kind}: {spec}\n    {spec.command()} --results {self.root}")
        if problems:
            raise MissingRecordError(
                f"{len(problems)} of {len(specs)} run records are not available in {self.root}:\n"
                + "\n".join(problems)
            )
        return records

    # ------------------------------------------------------------------------------ sweep
    def sweep(self) -> list[Path]:
        """Remove what killed writers left behind.

        That is: dead writers' temporary files, record folders without a manifest, data files no
        manifest names, and checkpoints of finished records.

        An experiment is only touched when its lock can be taken at once (no live writer).

        Returns:
            The removed paths.
        """
        removed = sweep_temporaries(self.root)
        for task_dir in self._subdirs(self.root):
            if task_dir.name in NOT_RECORDS:
                continue
            for opt_dir in self._subdirs(task_dir):
                for folder in self._subdirs(opt_dir):
                    removed += self._sweep_record(folder)
                with contextlib.suppress(OSError):
                    if not any(opt_dir.iterdir()):
                        opt_dir.rmdir()
            with contextlib.suppress(OSError):
                if not any(task_dir.iterdir()):
                    task_dir.rmdir()
        ckpts = self.root / ".checkpoints"
        if ckpts.is_dir():
            for path in ckpts.glob("*.pt"):
                removed += self._sweep_checkpoint(path)
        return removed

    @staticmethod
    def _subdirs(folder: Path) -> list[Path]:
        try:
            return [Path(e.path) for e in os.scandir(folder) if e.is_dir() and e.name[0] != "."]
        except FileNotFoundError:
            return []

    def _sweep_record(self, folder: Path) -> list[Path]:
        names = [e.name for e in os.scandir(folder)]
        if MANIFEST in names and len(names) == 1 + len(_DATA_FILES):
            return []  # the common case: nothing to inspect
        key_prefix = folder.name.rsplit("-", 1)[-1]
        try:
            with file_lock(self.root / ".locks" / f"{key_prefix}.lock", timeout=0):
                # Listed again under the lock: a writer may have finished between the first
                # listing and the lock (then its record is whole and nothing here is debris).
                try:
                    names = [e.name for e in os.scandir(folder)]
                except FileNotFoundError:
                    return []
                if MANIFEST not in names:
                    removed = [folder / n for n in names if not is_temporary(n)]
                    for path in removed:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                    return removed
                try:
                    manifest = self._read_manifest(folder)
                except (FileNotFoundError, CorruptRecordError):
                    return []
                return self._remove_unreferenced(folder, manifest)
        except TimeoutError:
            return []

    def _sweep_checkpoint(self, path: Path) -> list[Path]:
        key = path.stem
        try:
            with file_lock(self.root / ".locks" / f"{key[:16]}.lock", timeout=0):
                for _folder, m in self._manifests_with_prefix(key[:16]):
                    if m.get("key") == key and not self.is_stale(m):
                        path.unlink(missing_ok=True)
                        return [path]
        except TimeoutError:
            pass
        return []

    def _manifests_with_prefix(self, prefix: str) -> Iterator[tuple[Path, dict[str, Any]]]:
        for path in self.root.glob(f"*/*/*-{prefix}/{MANIFEST}"):
            with contextlib.suppress(FileNotFoundError, CorruptRecordError):
                yield path.parent, self._read_manifest(path.parent)


def _spec_from(data: Any, decode: SpecDecoder | None) -> Any:
    if decode is None or not isinstance(data, dict):
        return None
    try:
        return decode(data)
    except (ValueError, TypeError):
        return None


def load(
    spec: SpecLike,
    *,
    root: str | os.PathLike[str] | None = None,
    allow_stale: bool = False,
    verify: bool = True,
) -> RunRecord:
    """Load ``spec``'s record from the store at ``root`` (see :meth:`ResultStore.load`)."""
    return ResultStore(root, sweep=False).load(spec, allow_stale=allow_stale, verify=verify)
