"""Find a data file, verify its checksum, and say exactly what to do when that fails.

Where a file is looked for, in order:

1. the **offline mirror**, the folder named by the environment variable ``ADAMQLR_DATA``
   (layout ``<mirror>/<dataset>/<file>``, e.g. ``$ADAMQLR_DATA/penn-treebank/ptb.test.txt``);
2. the **cache**, ``$ADAMQLR_CACHE`` or ``~/.cache/adamqlr`` (same layout);
3. a **download** from the canonical source into the cache with ``pooch`` (imported only then, so
   reading from a mirror needs nothing beyond numpy and torch).

Whatever the source, the file is checked against the digest in the registry before it is used. The
rules (reliability goal S3):

* Every file in the registry has a digest. An entry with neither a SHA-256 nor a published MD5 is
  refused with :class:`MissingDigestError`, even when the file is present.
* The SHA-256 is checked whenever it is known. Two canonical files could not be hashed here (the
  official ``cifar-10-python.tar.gz`` and SVHN's ``*_32x32.mat``): for them the registry holds the
  MD5 that the dataset's publishers give, and that is what is verified. A SHA-256 for them can be
  supplied in a ``sha256sum``-style file named by ``ADAMQLR_DIGESTS`` (lines
  ``<hex>  <dataset>/<file>``), and is then checked as well; it may add a digest but never
  contradict one in the registry. Setting ``ADAMQLR_REQUIRE_SHA256=1`` refuses MD5-only files.
* A missing file raises :class:`MissingDataError`, a mismatch :class:`ChecksumError`; both name
  the file, the expected digest and how to obtain the file. Nothing is ever substituted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from adamqlr.data.files import _HEX, FileSpec, file_digest
from adamqlr.data.registry import REGISTRY

__all__ = [
    "ChecksumError",
    "DataError",
    "DataStore",
    "FileSpec",
    "MissingDataError",
    "MissingDigestError",
    "default_cache_dir",
    "file_digest",
]

logger = logging.getLogger(__name__)


class DataError(RuntimeError):
    """Base class of every data-loading failure."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file is in neither the mirror nor the cache and could not be downloaded."""


class ChecksumError(DataError, ValueError):
    """A data file's contents do not match the digest in the registry."""


class MissingDigestError(DataError, ValueError):
    """A data file has no digest to check it against, so it is not used."""


def default_cache_dir() -> Path:
    """Return ``$ADAMQLR_CACHE`` if set, else ``~/.cache/adamqlr``."""
    env = os.environ.get("ADAMQLR_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/adamqlr").expanduser()


def _read_digests_file(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style file into ``{key: sha256}``."""
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not _HEX["sha256"].match(parts[0].lower()):
            raise ValueError(
                f"{path}:{lineno}: expected '<sha256>  <dataset>/<file>', got {line!r}"
            )
        key = parts[1].lstrip("*").removeprefix("./")
        out[key] = parts[0].lower()
    return out


_UNSET = object()


class DataStore:
    """Resolves registry keys to verified local files (mirror, then cache, then download).

    Args:
        registry: ``{key: FileSpec}``; default :data:`adamqlr.data.registry.REGISTRY`. Tests pass
            their own.
        mirror: Offline mirror folder; default ``$ADAMQLR_DATA`` (``None`` when unset).
        cache: Cache folder; default :func:`default_cache_dir`.
        download: Whether a missing file may be downloaded (default: unless ``ADAMQLR_OFFLINE=1``).
        digests_file: Extra SHA-256 digests (``sha256sum`` format); default ``$ADAMQLR_DIGESTS``.
        require_sha256: Refuse files that only have an MD5 (default: ``ADAMQLR_REQUIRE_SHA256=1``).

    Raises:
        ValueError: If the digests file is malformed or contradicts the registry.
    """

    def __init__(
        self,
        registry: Mapping[str, FileSpec] | None = None,
        *,
        mirror: str | os.PathLike[str] | None = _UNSET,  # type: ignore[assignment]
        cache: str | os.PathLike[str] | None = None,
        download: bool | None = None,
        digests_file: str | os.PathLike[str] | None = _UNSET,  # type: ignore[assignment]
        require_sha256: bool | None = None,
    ) -> None:
        if registry is None:
            registry = REGISTRY
        for key, spec in registry.items():
            if key != spec.key:
                raise ValueError(f"registry key {key!r} differs from its FileSpec key {spec.key!r}")
        if mirror is _UNSET:
            mirror = os.environ.get("ADAMQLR_DATA") or None
        self.mirror = Path(mirror).expanduser() if mirror is not None else None
        self.cache = Path(cache).expanduser() if cache is not None else default_cache_dir()
        self.download = (
            os.environ.get("ADAMQLR_OFFLINE", "") not in ("1", "true", "yes")
            if download is None
            else bool(download)
        )
        self.require_sha256 = (
            os.environ.get("ADAMQLR_REQUIRE_SHA256", "") in ("1", "true", "yes")
            if require_sha256 is None
            else bool(require_sha256)
        )
        if digests_file is _UNSET:
            digests_file = os.environ.get("ADAMQLR_DIGESTS") or None
        extra = _read_digests_file(Path(digests_file)) if digests_file is not None else {}
        merged: dict[str, FileSpec] = dict(registry)
        for key, sha in extra.items():
            if key not in merged:
                continue
            spec = merged[key]
            if spec.sha256 is not None and spec.sha256 != sha:
                raise ValueError(
                    f"{digests_file}: SHA-256 {sha} for {key} contradicts the registry's "
                    f"{spec.sha256}; the registry is not overridden"
                )
            merged[key] = FileSpec(key, sha, spec.md5, spec.url, spec.how_to_obtain)
        self.registry: dict[str, FileSpec] = merged

    # ------------------------------------------------------------------ lookup
    def spec(self, key: str) -> FileSpec:
        """Return the registry entry for ``key``.

        Raises:
            ValueError: If ``key`` is not in the registry.
        """
        try:
            return self.registry[key]
        except KeyError:
            raise ValueError(f"unknown data file {key!r}; known: {sorted(self.registry)}") from None

    def _expected(self, spec: FileSpec) -> str:
        if spec.sha256:
            return f"SHA-256 {spec.sha256}"
        return f"MD5 {spec.md5} (published; no SHA-256 known)"

    def _how(self, spec: FileSpec) -> str:
        mirror = self.mirror if self.mirror is not None else "$ADAMQLR_DATA"
        where = f"place it at {self.cache / spec.key} (or at {mirror}/{spec.key})"
        src = f"download {spec.url}" if spec.url else "obtain it"
        extra = f" ({spec.how_to_obtain})" if spec.how_to_obtain else ""
        return f"To obtain it: {src}{extra} and {where}."

    def verify(self, path: Path, spec: FileSpec) -> str:
        """Check ``path`` against ``spec``'s digests and return its SHA-256.

        Raises:
            MissingDigestError: If ``spec`` has no digest (or only an MD5 when SHA-256 is required).
            ChecksumError: If a digest does not match.
        """
        if spec.sha256 is None and spec.md5 is None:
            raise MissingDigestError(
                f"{spec.key}: no SHA-256 or MD5 digest in the registry, so {path} cannot be "
                "verified and is not used. Add its SHA-256 to the registry or to the file named "
                "by ADAMQLR_DIGESTS."
            )
        if spec.sha256 is None and self.require_sha256:
            raise MissingDigestError(
                f"{spec.key}: only the published MD5 {spec.md5} is known and "
                "ADAMQLR_REQUIRE_SHA256 is set; supply its SHA-256 in the file named by "
                "ADAMQLR_DIGESTS."
            )
        sha = file_digest(path, "sha256")
        if spec.sha256 is not None and sha != spec.sha256:
            raise ChecksumError(
                f"{path}: checksum mismatch for {spec.key}: expected SHA-256 {spec.sha256}, got "
                f"{sha} ({path.stat().st_size} bytes). The file is corrupt, truncated or another "
                f"version; delete it. {self._how(spec)}"
            )
        if spec.md5 is not None:
            md5 = file_digest(path, "md5")
            if md5 != spec.md5:
                raise ChecksumError(
                    f"{path}: checksum mismatch for {spec.key}: expected MD5 {spec.md5}, got {md5} "
                    f"({path.stat().st_size} bytes). The file is corrupt, truncated or another "
                    f"version; delete it. {self._how(spec)}"
                )
        if spec.sha256 is None:
            logger.info("%s verified by its published MD5 only (SHA-256 %s)", spec.key, sha)
        return sha

    def locate(self, key: str) -> tuple[Path, str, str]:
        """Return ``(path, source, sha256)`` of the verified file for ``key``.

        ``source`` is ``"mirror"``, ``"cache"`` or ``"download"``.

        Raises:
            ValueError: If ``key`` is unknown.
            MissingDigestError: If the registry has no digest for it.
            MissingDataError: If the file is nowhere and cannot be downloaded.
            ChecksumError: If the file found does not match its digest.
        """
        spec = self.spec(key)
        if spec.sha256 is None and spec.md5 is None:
            # Refused before looking, so that a file without a digest is never read.
            raise MissingDigestError(
                f"{spec.key}: no SHA-256 or MD5 digest in the registry, so it cannot be verified "
                "and is not used. Add its SHA-256 to the registry or to the file named by "
                "ADAMQLR_DIGESTS."
            )
        looked: list[str] = []
        if self.mirror is not None:
            path = self.mirror / spec.key
            if path.is_file():
                return path, "mirror", self.verify(path, spec)
            looked.append(f"the mirror ADAMQLR_DATA ({path})")
        path = self.cache / spec.key
        if path.is_file():
            return path, "cache", self.verify(path, spec)
        looked.append(f"the cache ({path})")
        why = ""
        if spec.url is None:
            why = "no download exists"
        elif not self.download:
            why = "downloads are switched off (download=False or ADAMQLR_OFFLINE=1)"
        else:
            try:
                self._download(spec)
            except Exception as err:  # network, HTTP or pooch's own hash failure
                why = f"download from {spec.url} failed: {type(err).__name__}: {err}"
            else:
                return path, "download", self.verify(path, spec)
        raise MissingDataError(
            f"{spec.key}: data file not found. Looked in {' and '.join(looked)}; {why}. "
            f"Expected {self._expected(spec)}. {self._how(spec)}"
        )

    def path(self, key: str) -> Path:
        """Return the verified local path of ``key`` (see :meth:`locate`)."""
        return self.locate(key)[0]

    def _download(self, spec: FileSpec) -> None:
        import pooch  # lazily: only a download needs it

        known = f"sha256:{spec.sha256}" if spec.sha256 else f"md5:{spec.md5}"
        target = self.cache / spec.dataset
        target.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %s from %s", spec.key, spec.url)
        # pooch downloads to a temporary name, checks the hash, then renames into place.
        pooch.retrieve(spec.url, known_hash=known, fname=spec.filename, path=target)
