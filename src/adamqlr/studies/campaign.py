"""A campaign: the missing runs of one or more studies, on N worker processes, resumable.

::

    from adamqlr.studies import Campaign, get_study

    Campaign([get_study("untuned-vs-tuned", "quick")], jobs=2).run()

or ``adamqlr study run untuned-vs-tuned --profile quick --jobs 2``.

* **Workers.** ``jobs`` processes (default: the number of cores), started with ``spawn``, each with
  one torch thread (unless told otherwise). A worker loads a task's data once, the first time a
  run of that task comes to it, and keeps it for all its later runs.
* **Order.** The runs known now are handed out tuning trials first, interleaved across arms
  (trial 0 of every arm, then trial 1, ...), then repeats interleaved *seed-major* (seed 0 of every
  arm, then seed 1, ...), so that whatever load the machine is under falls on every arm of a
  comparison alike. Only ``jobs`` runs are in flight at a time, and the plan is worked out again
  after each run finishes: a tuned arm's repeats (and the arms around its choice) join as soon as
  its last trial is stored.
* **Resume.** Records are written atomically as runs finish, and a stored run is loaded, never
  rerun. A campaign that was killed (even with ``SIGKILL`` to its process group) is resumed by
  running it again: finished runs are skipped and an interrupted run continues from its
  checkpoint. (``force=True``, ``--force``, makes every run again instead, once each.)
* **Provenance.** Each record made by a campaign holds ``campaign`` (an id, the studies, the
  number of workers, whether a dirty tree was allowed), ``load_average`` (the 1, 5 and 15 minute
  load averages when the run started) and ``concurrent_workers`` (how many runs were in flight,
  this one included, when it was handed out).
* **Clean trees.** Under the ``paper`` profile a campaign refuses to run from a source tree with
  uncommitted changes (its records are what a book page reads) unless ``allow_dirty`` is given;
  then the records say so.
* **Tuning tables.** At the end, each search's state is written as one small table
  (:func:`adamqlr.studies.tables.write_tuning_tables`), ``results/tuning/...``.
* **Trial ledgers.** Every ``fold_every`` finished runs and at the end, the full records of
  finished tuning trials are folded into one ledger per arm (:func:`adamqlr.studies.tables.
  fold_trials`): the search reads the same final values, and the store stays small enough to
  commit. Repeats keep their full records.
* **Stopping.** ``SIGINT`` (Ctrl-C) or ``SIGTERM`` stops the campaign at once: the workers are
  terminated (a run in flight keeps its last checkpoint and continues from it next time) and
  the call raises :class:`CampaignInterrupted` (the command exits with status 130 or 143).
* **Progress.** One line per finished run: runs done, runs left (and arms still waiting for their
  tuning), an ETA from the mean duration so far.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.profiles import Profile
from adamqlr.results.store import ResultStore
from adamqlr.studies.core import ArmPlan, Study, plan

__all__ = [
    "Campaign",
    "CampaignInterrupted",
    "CampaignSummary",
    "DirtyTreeError",
    "campaign_order",
    "default_jobs",
]

logger = logging.getLogger(__name__)


class DirtyTreeError(RuntimeError):
    """A paper-profile campaign was asked to run from a tree with uncommitted changes."""


class CampaignInterrupted(KeyboardInterrupt):
    """A campaign was stopped by a signal (its number is :attr:`signum`); workers are gone."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"campaign stopped by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`CampaignInterrupted` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        raise CampaignInterrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _stop_workers(executor: cf.ProcessPoolExecutor, timeout: float = 10.0) -> None:
    """Terminate the pool's worker processes and wait (briefly) for them to exit."""
    processes = list((getattr(executor, "_processes", None) or {}).values())  # no public API
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.terminate()
    executor.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + timeout
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)


def default_jobs() -> int:
    """Return the default number of workers: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def campaign_order(
    studies: Sequence[Study],
    store: ResultStore,
    plans: Sequence[Sequence[ArmPlan]] | None = None,
    *,
    include_complete: bool = False,
) -> list[ExperimentSpec]:
    """Return the runs of ``studies`` known now that have no current record, in campaign order.

    Tuning trials first, interleaved across arms (each arm's first trial, then each arm's second,
    ...), then repeats interleaved seed-major (the first seed of every arm, then the second, ...).
    A run needed by several arms or studies appears once, at its first place.

    Args:
        studies: The studies.
        store: The results store.
        plans: ``[plan(study, store) for study in studies]`` if already worked out.
        include_complete: Return the runs that have a current record too (every run known now).
    """
    if plans is None:
        plans = [plan(study, store) for study in studies]
    trials: list[list[ExperimentSpec]] = []
    repeats: list[list[ExperimentSpec]] = []
    for study_plans in plans:
        for p in study_plans:
            trials.append(list(p.trials))
            repeats.append(list(p.repeats))
    ordered: list[ExperimentSpec] = []
    for lists in (trials, repeats):
        depth = max((len(x) for x in lists), default=0)
        for i in range(depth):
            ordered += [x[i] for x in lists if i < len(x)]
    seen: set[str] = set()
    out = []
    for spec in ordered:
        key = spec.key
        if key in seen:
            continue
        seen.add(key)
        if include_complete or store.status(spec) != "complete":
            out.append(spec)
    return out


def _blocked(plans: Sequence[Sequence[ArmPlan]]) -> int:
    return sum(1 for study_plans in plans for p in study_plans if p.blocked)


# --------------------------------------------------------------------------------- the workers
_WORKER: dict[str, Any] = {}


def _init_worker(root: str, threads: int | None) -> None:
    """Set up a worker process: torch threads, its store, an empty data cache."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    _WORKER["store"] = ResultStore(root, sweep=False)
    _WORKER["data"] = {}


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not available
        return None


def _work(
    spec_data: dict[str, Any], device: str | None, extra: dict[str, Any], force: bool = False
) -> dict[str, Any]:
    """Run one spec in a worker; return a summary (the record is in the store).

    With ``force`` the run is made from scratch even if it has a record.
    """
    import warnings

    from adamqlr.experiment.runner import run
    from adamqlr.tasks import get_task

    spec = ExperimentSpec.from_dict(spec_data)
    store: ResultStore = _WORKER["store"]
    cache: dict[tuple[str, str], Any] = _WORKER["data"]
    t0 = time.perf_counter()
    data = None
    if force or store.status(spec) != "complete":
        key = (spec.task, spec.profile)
        if key not in cache:
            cache[key] = get_task(spec.task).load_data(spec.profile)
        data = cache[key]
    provenance = {**extra, "load_average": _load_average()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rejected steps: counted in the record
        record = run(
            spec,
            store=store,
            force=force,
            device=device,
            progress=False,
            data=data,
            provenance=provenance,
        )
    p = record.provenance
    return {
        "key": record.key,
        "spec": str(spec),
        "steps": p.get("steps"),
        "optimisation_time_s": p.get("optimisation_time_s"),
        "stop_reason": p.get("stop_reason"),
        "seconds": time.perf_counter() - t0,
        "pid": os.getpid(),
    }


# --------------------------------------------------------------------------------- the campaign
@dataclass
class CampaignSummary:
    """What a campaign did.

    Attributes:
        made: Summaries of the runs made (key, spec, steps, times, stop reason).
        failed: ``(spec, error)`` of the runs that raised.
        left: Runs still missing at the end (failed ones, or ones blocked behind them).
        blocked: Arms whose repeats are still unknown at the end.
        seconds: Wall time of the campaign.
    """

    made: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    left: int = 0
    blocked: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """Whether every run of the studies is stored."""
        return not self.left and not self.blocked and not self.failed


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Campaign:
    """Run the missing runs of ``studies`` on ``jobs`` worker processes (see the module doc).

    Args:
        studies: The studies (their runs are pooled; a run two studies share is made once).
        store: The results store (default: the default store).
        jobs: Worker processes (default :func:`default_jobs`).
        threads: Torch threads per worker (default 1; ``None`` leaves torch's default).
        device: Device override for every run.
        allow_dirty: Run a ``paper``-profile campaign from a tree with uncommitted changes.
        stream: Where the progress lines go (default ``sys.stderr``; ``None``: nowhere).
        on_run: Called in the parent with each finished run's summary.
        fold_every: Fold finished tuning trials into the ledgers after this many finished runs
            (and at the end); ``0``: never fold.
        protect: Further studies whose repeats must never be folded (see
            :func:`adamqlr.studies.tables.fold_trials`).
        force: Make every run again, including those with a record: each run known at the start,
            and each that becomes known while the campaign runs (a tuned arm's repeats), is
            made once from scratch (a checkpoint is discarded; the old record stays readable
            until the new one replaces it). Interrupted, a forced campaign run again with
            ``force`` starts over.

    Raises:
        ValueError: For ``jobs < 1``, ``threads < 1`` or ``fold_every < 0``.
    """

    def __init__(
        self,
        studies: Sequence[Study],
        store: ResultStore | None = None,
        *,
        jobs: int | None = None,
        threads: int | None = 1,
        device: str | None = None,
        allow_dirty: bool = False,
        stream: TextIO | None = sys.stderr,
        on_run: Callable[[dict[str, Any]], None] | None = None,
        fold_every: int = 50,
        protect: Sequence[Study] = (),
        force: bool = False,
    ) -> None:
        self.studies = list(studies)
        self.force = bool(force)
        self.store = store if store is not None else ResultStore()
        self.jobs = default_jobs() if jobs is None else int(jobs)
        if self.jobs < 1:
            raise ValueError(f"invalid jobs: {jobs!r} (expected an int >= 1)")
        if threads is not None and threads < 1:
            raise ValueError(f"invalid threads: {threads!r} (expected an int >= 1)")
        if not isinstance(fold_every, int) or fold_every < 0:
            raise ValueError(f"invalid fold_every: {fold_every!r} (expected an int >= 0)")
        self.fold_every = fold_every
        self.protect = list(protect)
        self.threads = threads
        self.device = device
        self.allow_dirty = allow_dirty
        self.stream = stream
        self.on_run = on_run
        self.id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]

    def check_tree(self) -> dict[str, Any]:
        """Return the source tree's git state; refuse a dirty one for the ``paper`` profile.

        Raises:
            DirtyTreeError: Under ``paper``, for a tree with uncommitted changes (or no git
                state at all), unless ``allow_dirty``.
        """
        from adamqlr.results.provenance import git_state

        state = git_state()
        paper = any(s.profile is Profile.PAPER for s in self.studies)
        if paper and not self.allow_dirty and (state["dirty"] or state["commit"] is None):
            what = "has uncommitted changes" if state["dirty"] else "has no known commit"
            raise DirtyTreeError(
                f"the source tree {what} (commit {state['commit']}); paper-profile records must "
                "come from a clean, committed tree: commit first, or pass --allow-dirty (the "
                "records will say so)"
            )
        return state

    def _say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)

    def _fold(self) -> None:
        if not self.fold_every:
            return
        from adamqlr.studies.tables import fold_trials

        folded = fold_trials(self.studies, self.store, protect=self.protect)
        if folded:
            self._say(f"  folded {len(folded)} finished tuning trial(s) into the ledgers")

    def run(self) -> CampaignSummary:
        """Run until nothing is missing (or only failed runs and what waits on them are left).

        Raises:
            DirtyTreeError: See :meth:`check_tree`.
            CampaignInterrupted: On SIGINT or SIGTERM (the workers are stopped first).
        """
        with _signals_raise():
            return self._run()

    def _run(self) -> CampaignSummary:
        state = self.check_tree()
        summary = CampaignSummary()
        t_start = time.perf_counter()
        names = [s.name for s in self.studies]
        base_extra = {
            "campaign": {
                "id": self.id,
                "studies": names,
                "profile": sorted({s.profile for s in self.studies}),
                "jobs": self.jobs,
                "allow_dirty": bool(self.allow_dirty and state.get("dirty")),
            }
        }
        selections = {s.name: s.selection for s in self.studies if s.parent is not None}
        if selections:  # a part of a study: which arms
            base_extra["campaign"]["selection"] = selections
        failed_keys: set[str] = set()
        in_flight: dict[cf.Future, tuple[str, ExperimentSpec, float]] = {}
        durations: list[float] = []
        ctx = multiprocessing.get_context("spawn")
        root = str(Path(self.store.root).resolve())
        remade: set[str] = set()  # with force: the runs this campaign has made (or tried)

        def pending(plans: Sequence[Sequence[ArmPlan]] | None = None) -> list[ExperimentSpec]:
            if not self.force:
                return campaign_order(self.studies, self.store, plans)
            known = campaign_order(self.studies, self.store, plans, include_complete=True)
            return [s for s in known if s.key not in remade]

        todo = pending()
        self._say(
            f"campaign {self.id}: {', '.join(names)}: {len(todo)} run(s) to make now on "
            f"{self.jobs} worker(s)"
            + (" (forced: runs with a record are made again)" if self.force else "")
        )
        executor = cf.ProcessPoolExecutor(
            max_workers=self.jobs,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(root, self.threads),
        )
        try:
            while True:
                busy = {k for k, _, _ in in_flight.values()}
                queue = [s for s in todo if s.key not in busy and s.key not in failed_keys]
                while queue and len(in_flight) < self.jobs:
                    spec = queue.pop(0)
                    extra = {**base_extra, "concurrent_workers": len(in_flight) + 1}
                    data = {**spec.as_dict(), "device": spec.device}
                    future = executor.submit(_work, data, self.device, extra, self.force)
                    in_flight[future] = (spec.key, spec, time.perf_counter())
                if not in_flight:
                    break
                done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                finished = []
                for future in done:
                    key, spec, t0 = in_flight.pop(future)
                    remade.add(key)
                    try:
                        result = future.result()
                    except Exception as err:  # noqa: BLE001 - one failed run fails only itself
                        failed_keys.add(key)
                        summary.failed.append((str(spec), f"{type(err).__name__}: {err}"))
                        self._say(f"  FAILED {spec}: {type(err).__name__}: {err}")
                        continue
                    durations.append(time.perf_counter() - t0)
                    finished.append(result)
                plans = [plan(study, self.store) for study in self.studies]  # once per finished run
                todo = pending(plans)
                left = len([s for s in todo if s.key not in failed_keys])
                blocked = _blocked(plans)
                mean = sum(durations) / len(durations) if durations else 0.0
                for result in finished:  # one progress line per finished run
                    summary.made.append(result)
                    if self.on_run is not None:
                        self.on_run(result)
                    self._say(
                        f"[{len(summary.made)} done, {left} left"
                        + (f" + {blocked} arm(s) awaiting tuning" if blocked else "")
                        + f", ETA {_fmt_s(mean * left / self.jobs)}] {result['spec']}: "
                        f"{result['steps']} steps, {result['optimisation_time_s']:.1f} s "
                        "optimisation"
                    )
                    if self.fold_every and len(summary.made) % self.fold_every == 0:
                        self._fold()
        except BaseException:
            _stop_workers(executor)
            raise
        executor.shutdown(wait=True)
        from adamqlr.studies.tables import write_tuning_tables

        write_tuning_tables(self.studies, self.store)
        self._fold()
        plans = [plan(study, self.store) for study in self.studies]
        summary.left = len(campaign_order(self.studies, self.store, plans))
        summary.blocked = _blocked(plans)
        summary.seconds = time.perf_counter() - t_start
        self._say(
            f"campaign {self.id}: {len(summary.made)} run(s) made, {len(summary.failed)} failed, "
            f"{summary.left} missing, {summary.blocked} arm(s) blocked, in "
            f"{_fmt_s(summary.seconds)}"
        )
        return summary
