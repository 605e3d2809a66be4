"""Atomic, durable file writes and the locks that keep two writers of one record apart.

The primitive (`reliability.md` section 4.1): write a temporary file *in the same directory*, flush
and ``fsync`` it, ``os.replace`` it onto the final name, then ``fsync`` the directory. After a crash
the name points to the old or the new content, never a mixture. Temporary files carry the writer's
host and process id in their name (``.<name>.<host>.<pid>.<random>.tmp``), so that a sweep at
start-up (:func:`sweep_temporaries`) can remove those left by a killed process without touching
one that a live writer is still filling.

Locks: :func:`file_lock` uses the ``filelock`` package when it is installed and otherwise an
``O_CREAT | O_EXCL`` lock file holding the owner's host and pid, which a later process breaks when
that owner is dead.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "LockTimeout",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "file_lock",
    "fsync_dir",
    "is_temporary",
    "sweep_temporaries",
]

_HOST = socket.gethostname().replace(".", "_") or "host"
_TMP_SUFFIX = ".tmp"


class LockTimeout(TimeoutError):
    """Raised when a lock cannot be acquired in time."""


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """``fsync`` a directory so that a rename or creation in it is durable (where supported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _temp_name(target: Path) -> Path:
    return target.with_name(
        f".{target.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
    )


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named like a temporary file of :func:`atomic_write`."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(_TMP_SUFFIX)


def atomic_write(target: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file atomically and durably: ``write(f)`` fills a temporary file, then rename.

    Args:
        target: Final path. Its directory is created if missing.
        write: Called with a binary file object open for writing.

    Returns:
        The final path.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
    return target


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and durably."""
    return atomic_write(target, lambda f: f.write(data))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (NaN and infinity refused) atomically."""
    text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_bytes(target, text.encode())


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    return True


def _owner_dead(name: str, max_age_s: float, path: Path) -> bool:
    """Whether the writer that named a temporary or lock file ``name`` is gone."""
    parts = name.rsplit(".", 4)
    # ".<target>.<host>.<pid>.<rand>.tmp" -> [..., host, pid, rand, "tmp"]
    try:
        host, pid = parts[-4], int(parts[-3])
    except (IndexError, ValueError):
        host, pid = "", -1
    if host == _HOST:
        return not _pid_alive(pid)
    try:
        return time.time() - path.stat().st_mtime > max_age_s
    except FileNotFoundError:
        return False


def sweep_temporaries(root: str | os.PathLike[str], *, max_age_s: float = 86400.0) -> list[Path]:
    """Remove temporary files under ``root`` whose writer is dead.

    A temporary file written on this host is removed when its process no longer exists; one from
    another host (a shared filesystem) when it is older than ``max_age_s``.

    Returns:
        The removed paths.
    """
    removed: list[Path] = []
    root = Path(root)
    if not root.exists():
        return removed
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not is_temporary(name):
                continue
            path = Path(dirpath) / name
            if _owner_dead(name, max_age_s, path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


class _ExclusiveLock:
    """A lock file created with ``O_CREAT | O_EXCL``; broken when its owner process is dead."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._held = False

    def acquire(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout if timeout >= 0 else float("inf")
        delay = 0.01
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale()
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(f"{_HOST} {os.getpid()}\n")
                self._held = True
                return
            if time.monotonic() >= deadline:
                raise LockTimeout(f"could not lock {self.path} within {timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _break_if_stale(self) -> None:
        try:
            host, pid = self.path.read_text().split()
            stale = host == _HOST and not _pid_alive(int(pid))
        except FileNotFoundError:
            return
        except ValueError:  # being written, or garbage: judge by age
            try:
                stale = time.time() - self.path.stat().st_mtime > 60
            except FileNotFoundError:
                return
        if stale:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def release(self) -> None:
        if self._held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._held = False


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], timeout: float = -1) -> Iterator[None]:
    """Hold an inter-process lock on ``path`` for the body.

    Args:
        path: The lock file (its directory is created).
        timeout: Seconds to wait; ``-1`` waits forever, ``0`` tries once.

    Raises:
        LockTimeout: If the lock was not acquired in time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import filelock
    except ImportError:
        lock = _ExclusiveLock(path)
        lock.acquire(timeout)
        try:
            yield
        finally:
            lock.release()
        return
    flock = filelock.FileLock(str(path), timeout=timeout)
    try:
        flock.acquire()
    except filelock.Timeout as err:
        raise LockTimeout(f"could not lock {path} within {timeout} s") from err
    except OSError as err:  # pragma: no cover - e.g. a filesystem without flock
        if err.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        lock = _ExclusiveLock(path.with_suffix(path.suffix + ".excl"))
        lock.acquire(timeout)
        try:
            yield
        finally:
            lock.release()
        return
    try:
        yield
    finally:
        flock.release()
