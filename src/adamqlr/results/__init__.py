"""The results store: run records written atomically, loaded intact, queried by experiment.

See :mod:`adamqlr.results.store` for the layout and the guarantees, and
:mod:`adamqlr.results.aggregate` for the paper's aggregation over repeats (bootstrap medians on a
common time grid).
"""

from adamqlr.results.atomic import LockTimeout, atomic_write, atomic_write_json, file_lock
from adamqlr.results.provenance import validate_provenance
from adamqlr.results.store import (
    SCHEMA_VERSION,
    CorruptRecordError,
    MissingRecordError,
    RecordError,
    ResultStore,
    RunRecord,
    StaleRecordError,
    default_root,
    load,
)

__all__ = [
    "SCHEMA_VERSION",
    "CorruptRecordError",
    "LockTimeout",
    "MissingRecordError",
    "RecordError",
    "ResultStore",
    "RunRecord",
    "StaleRecordError",
    "atomic_write",
    "atomic_write_json",
    "default_root",
    "file_lock",
    "load",
    "validate_provenance",
]
