"""One data file's identity: where it lives, where it comes from, and its digests.

A leaf of :mod:`adamqlr.data`: the registry (:mod:`adamqlr.data.registry`) lists
:class:`FileSpec` values, and the store (:mod:`adamqlr.data.store`) finds, checks and caches them.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

__all__ = ["FileSpec", "file_digest"]

_HEX = {"sha256": re.compile(r"^[0-9a-f]{64}$"), "md5": re.compile(r"^[0-9a-f]{32}$")}


@dataclass(frozen=True)
class FileSpec:
    """One data file: where it lives, where it comes from, and its digests.

    Attributes:
        key: ``"<dataset>/<file name>"``, the file's path inside the mirror and the cache.
        sha256: Lower-case hex SHA-256 of the file, or ``None`` where it is not known.
        md5: Lower-case hex MD5 as published by the dataset's maintainers, or ``None``.
        url: Canonical download address, or ``None`` where no download exists.
        how_to_obtain: One sentence for error messages: where a person gets the file.
    """

    key: str
    sha256: str | None
    md5: str | None = None
    url: str | None = None
    how_to_obtain: str = ""

    def __post_init__(self) -> None:
        parts = self.key.split("/")
        if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
            raise ValueError(f"FileSpec key must be '<dataset>/<file>', got {self.key!r}")
        for kind in ("sha256", "md5"):
            value = getattr(self, kind)
            if value is not None and not _HEX[kind].match(value):
                raise ValueError(f"{self.key}: {kind} must be lower-case hex, got {value!r}")

    @property
    def dataset(self) -> str:
        """The folder of the file (``"fashion-mnist"``)."""
        return self.key.split("/")[0]

    @property
    def filename(self) -> str:
        """The file's own name."""
        return self.key.split("/")[1]


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Return the hex digest of a file, read in 1 MiB chunks.

    Args:
        path: The file.
        algorithm: ``"sha256"`` or ``"md5"``.

    Returns:
        The lower-case hex digest.

    Raises:
        ValueError: If ``algorithm`` is neither.
    """
    if algorithm not in _HEX:
        raise ValueError(f"algorithm must be 'sha256' or 'md5', got {algorithm!r}")
    h = hashlib.new(algorithm) if algorithm == "sha256" else hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
