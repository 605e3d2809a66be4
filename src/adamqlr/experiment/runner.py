"""``run(spec)``: train an experiment (or find it already done) and store its record.

A run takes the experiment's lock in the store, so two processes given the same spec never train
it twice: the second waits and then finds the record. A run that was interrupted (killed, out of
time) resumes from its checkpoint the next time it is asked for; a finished run is never rerun
unless ``force`` is given or its record is stale (made by another algorithm version).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adamqlr.experiment.loop import train
from adamqlr.experiment.optimisers import get_optimiser
from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.results.provenance import environment
from adamqlr.results.store import ResultStore, RunRecord
from adamqlr.tasks import TaskData, get_task

__all__ = ["obtain", "run", "run_many"]

logger = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(
    spec: ExperimentSpec,
    *,
    root: str | os.PathLike[str] | None = None,
    store: ResultStore | None = None,
    force: bool = False,
    device: str | None = None,
    progress: bool | None = None,
    checkpoint_every_s: float = 60.0,
    checkpoint_epoch_min_s: float = 5.0,
    callback: Callable[[dict[str, float]], str | None] | None = None,
    data: TaskData | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> RunRecord:
    """Train ``spec`` and write its record, unless a current record exists; return the record.

    Args:
        spec: The experiment.
        root: Store folder (default :func:`adamqlr.results.default_root`); ignored if ``store``.
        store: An open :class:`~adamqlr.results.ResultStore`.
        force: Rerun from scratch even if a current record (or a checkpoint) exists; the old
            record stays readable until the new one replaces it.
        device: Overrides ``spec.device`` (``"auto"``, ``"cpu"``, ``"cuda"``).
        progress: Progress bar (``None``: on a terminal, after two seconds).
        checkpoint_every_s: Checkpoint cadence in seconds (see
            :func:`~adamqlr.experiment.loop.train`).
        checkpoint_epoch_min_s: Checkpoint at epoch boundaries at most this often.
        callback: Per-step callback that may stop the run (see
            :func:`~adamqlr.experiment.loop.train`).
        data: The task's data for the spec's profile, already loaded (a campaign worker loads
            each task once); ``None``: loaded here.
        provenance: Extra entries for the record's provenance (e.g. the campaign's load
            averages and concurrency); they cannot replace the entries the run writes itself.

    Returns:
        The stored :class:`~adamqlr.results.RunRecord`.

    Raises:
        ValueError: For an invalid spec or device.
    """
    store = store if store is not None else ResultStore(root)
    settings = spec.settings()
    key = settings.key
    if not force and store.status(settings) == "complete":
        return store.load(spec)
    with store.lock(key):
        status = store.status(settings)
        if not force and status == "complete":  # another process finished it meanwhile
            return store.load(spec)
        if status == "stale":
            logger.warning("record of %s is stale (older algorithm version): rerunning", spec)
        ckpt = store.checkpoint_path(key)
        if force:
            ckpt.unlink(missing_ok=True)
        started = _now()
        t0 = time.perf_counter()
        task = get_task(settings.task)
        if data is None:
            data = task.load_data(settings.profile)
        data_time = time.perf_counter() - t0
        result = train(
            settings,
            task=task,
            data=data,
            device=device or spec.device,
            checkpoint=ckpt,
            checkpoint_every_s=checkpoint_every_s,
            checkpoint_epoch_min_s=checkpoint_epoch_min_s,
            progress=progress,
            callback=callback,
        )
        provenance_row = {
            **environment(result.device),
            "task_title": task.title,
            "optimiser_label": get_optimiser(settings.optimiser).label,
            "loss": task.loss,
            "classification": bool(task.classification),
            "started_at": result.started_at if result.resumed else started,
            "session_started_at": started,
            "finished_at": _now(),
            "duration_s": result.wall_time_s,
            "optimisation_time_s": result.optimisation_time_s,
            "eval_time_s": result.eval_time_s,
            "checkpoint_time_s": result.checkpoint_time_s,
            "data_load_time_s": data_time,
            "steps": result.steps,
            "epochs": result.epochs,
            "stop_reason": result.stop_reason,
            "resumed": result.resumed,
            "train_examples": min(len(data.train), settings.train_size or len(data.train)),
            "val_examples": len(data.val),
            "test_examples": len(data.test),
            "data": dict(data.meta),
        }
        for name, value in (provenance or {}).items():
            provenance_row.setdefault(name, value)
        store.save(spec, result.metrics.frame(), provenance_row, locked=True)
        ckpt.unlink(missing_ok=True)
        logger.info(
            "%s: %d steps, %.1f s optimisation, stop %s",
            spec,
            result.steps,
            result.optimisation_time_s,
            result.stop_reason,
        )
    return store.load(spec)


def run_many(
    specs: Iterable[ExperimentSpec],
    *,
    root: str | os.PathLike[str] | Path | None = None,
    force: bool = False,
    **kwargs: object,
) -> list[RunRecord]:
    """Run each spec in turn (finished ones are loaded, not rerun); return their records."""
    store = ResultStore(root)
    return [run(spec, store=store, force=force, **kwargs) for spec in specs]  # type: ignore[arg-type]


def obtain(
    specs: Sequence[ExperimentSpec],
    *,
    compute: bool = False,
    root: str | os.PathLike[str] | Path | None = None,
    allow_stale: bool = False,
    **kwargs: object,
) -> list[RunRecord]:
    """Return the records of ``specs``: stored ones are loaded; missing ones computed if asked.

    This is what a notebook calls: under the ``paper`` profile on a machine without the stored
    records it must not silently compute something else, so with ``compute=False`` it stops with
    one error that names every missing (or stale) run and the command that makes it.

    Args:
        specs: The experiments.
        compute: Train the missing (and stale) ones with :func:`run`.
        root: Store folder.
        allow_stale: Accept stale records instead of rerunning or refusing them.
        **kwargs: Passed to :func:`run` (``progress``, ``device``, ...).

    Raises:
        adamqlr.results.MissingRecordError: With ``compute=False``, if any record is missing.
    """
    store = ResultStore(root)
    if not compute:
        return store.load_many(list(specs), allow_stale=allow_stale)
    records = []
    for spec in specs:
        if allow_stale and store.status(spec) == "stale":
            records.append(store.load(spec, allow_stale=True))
        else:
            records.append(run(spec, store=store, **kwargs))  # type: ignore[arg-type]
    return records
