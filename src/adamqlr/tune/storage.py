"""Where a study lives: an Optuna storage from a URL, and the file lock that goes with it.

* ``None`` (default): an embedded SQLite file, ``<results>/tuning/optuna.sqlite3``.
* ``sqlite:///PATH``: that SQLite file (fine for one worker, or a few on one machine: our file
  lock serialises the queue; Optuna itself advises against SQLite for parallel work).
* ``journal:PATH``: Optuna's ``JournalStorage`` over a ``JournalFileBackend`` at ``PATH``, an
  append-only, fsynced log of JSON lines: the recommended storage for many workers on one machine
  or on a shared (NFS-safe) filesystem.
* Any other URL (``postgresql://...``, ``mysql+pymysql://...``): an Optuna ``RDBStorage``, for
  workers on many machines.

File-based storages come with a lock file beside them, ``<file>.adamqlr-lock`` (not
``<file>.lock``, which is the journal backend's own lock), which the tuner holds while it creates,
pops or fails trials.
"""

from __future__ import annotations

import os
from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

__all__ = ["default_storage_url", "open_storage"]

_SQLITE = "sqlite:///"
_JOURNAL = "journal:"


def default_storage_url(root: str | os.PathLike[str] | None = None) -> str:
    """Return the default storage URL: an SQLite file under the results folder.

    Args:
        root: The results folder (default :func:`adamqlr.results.default_root`).
    """
    if root is None:
        from adamqlr.results import default_root

        root = default_root()
    return _SQLITE + str(Path(root) / "tuning" / "optuna.sqlite3")


def open_storage(
    storage: str | BaseStorage | None, *, root: str | os.PathLike[str] | None = None
) -> tuple[BaseStorage, Path | None]:
    """Open a storage from a URL (see the module docstring) or pass a storage object through.

    Args:
        storage: URL, ``journal:PATH``, an Optuna storage, or ``None`` for the default.
        root: Results folder for the default.

    Returns:
        ``(storage, lock_path)``; ``lock_path`` is ``None`` for server databases and objects.

    Raises:
        ValueError: For an empty or malformed URL.
    """
    if isinstance(storage, BaseStorage):
        return storage, None
    url = default_storage_url(root) if storage is None else storage
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"invalid storage {storage!r} (expected a URL or journal:PATH)")
    if url.startswith(_JOURNAL):
        path = Path(url[len(_JOURNAL) :]).expanduser()
        if not path.name:
            raise ValueError(f"invalid storage {url!r}: journal:PATH needs a file path")
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path))
        return JournalStorage(backend), path.with_name(path.name + ".adamqlr-lock")
    if url.startswith(_SQLITE):
        path = Path(url[len(_SQLITE) :]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        rdb = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        return rdb, path.with_name(path.name + ".adamqlr-lock")
    if "://" not in url:
        raise ValueError(
            f"invalid storage {url!r}: expected sqlite:///PATH, journal:PATH or a database URL"
        )
    return RDBStorage(url), None
