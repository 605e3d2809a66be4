"""Data files of the paper's tasks: a checksummed registry, an offline mirror, a cache, readers.

>>> from adamqlr.data import DataStore
>>> store = DataStore()                                  # doctest: +SKIP
>>> store.path("fashion-mnist/t10k-labels-idx1-ubyte.gz")  # verified local file  # doctest: +SKIP

Environment variables:

* ``ADAMQLR_DATA``: offline mirror folder, ``<mirror>/<dataset>/<file>`` (checked first).
* ``ADAMQLR_CACHE``: cache and download folder (default ``~/.cache/adamqlr``).
* ``ADAMQLR_OFFLINE=1``: never download.
* ``ADAMQLR_DIGESTS``: a ``sha256sum``-style file adding SHA-256s for files that only have an MD5.
* ``ADAMQLR_REQUIRE_SHA256=1``: refuse files verified by MD5 only.

See :mod:`adamqlr.data.store` for the verification rules and :mod:`adamqlr.data.readers` for the
formats.
"""

from adamqlr.data.readers import FormatError
from adamqlr.data.registry import REGISTRY
from adamqlr.data.store import (
    ChecksumError,
    DataError,
    DataStore,
    FileSpec,
    MissingDataError,
    MissingDigestError,
    default_cache_dir,
    file_digest,
)

__all__ = [
    "REGISTRY",
    "ChecksumError",
    "DataError",
    "DataStore",
    "FileSpec",
    "FormatError",
    "MissingDataError",
    "MissingDigestError",
    "default_cache_dir",
    "file_digest",
]
