"""The tuning protocol: random search with successive halving, then repeats of the best.

One study per (task, optimiser, regime, profile), in any Optuna storage, worked on by any number
of worker processes (:func:`run_worker`), each asking the study for the next trial:

1. **Tuning**: ``n_trials`` random configurations (:class:`TrialSeededRandomSampler`: the draws of
   trial ``k`` depend only on the study seed and ``k``, so they do not depend on how many workers
   there are). Each trial reports its objective at *rungs* of optimisation time and Optuna's
   :class:`~optuna.pruners.SuccessiveHalvingPruner` (reduction factor 4, minimum resource 1)
   stops the ones outside the best quarter at a rung, like the paper's Ray Tune ASHA (grace
   period 1 s, reduction factor 4). A rung is reached when the run's optimisation time passes
   ``rung_unit_s * 4**k``: with the paper profile's unit of 1 s the rungs fall at 1, 4, 16, 64,
   256 (and 1024) s, Ray's rungs for a 900 s (3600 s) cap. Unlike Ray, Optuna promotes only the
   best trial at a rung that fewer than four trials have reached. Tuning trial ``k`` trains with
   seed ``tune_seed_base + k``.
2. **Best configuration**: the lowest final objective among the completed *and* the pruned
   tuning trials (Ray's ``get_best_result``: last reported value; NaN and infinity excluded).
3. **Repeats**: ``n_repeats`` trials enqueued with the best parameters and seeds
   ``0, ..., n_repeats - 1`` (fresh: never a tuning seed), popped by the workers from the queue.

Reliability (`reliability.md` 2.4 and 6, T1-T4):

* Trial creation, queue pops, the enqueueing of repeats and the failing of dead trials run under an
  inter-process file lock beside a file-based storage (SQLite, journal), so workers on one machine
  never duplicate or lose a trial. With a database server (PostgreSQL, MySQL) there is no shared
  lock: queue pops are safe (row locks), but a race may create a few more tuning trials than asked.
* A running trial holds a **lease** (user attribute ``lease``: owner and expiry time), refreshed
  by a background thread. On start-up and before every new trial a worker fails the ``RUNNING``
  trials whose lease expired (a killed worker's trials: Optuna's journal storage has no heartbeat)
  and enqueues each once more with the same parameters and seed (user attribute ``retry_of``);
  the experiment runner then resumes the run from its checkpoint.
* An objective that raises or returns NaN fails its trial (the error is kept in the trial's user
  attributes) and the study goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import numbers
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import optuna
from optuna.pruners import SuccessiveHalvingPruner
from optuna.samplers import RandomSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from adamqlr.profiles import PROFILES as ALL_PROFILES
from adamqlr.profiles import Profile, parse_profile
from adamqlr.tune.spaces import Choice, Dimension, LogUniform, OneMinus, is_untuned, search_space
from adamqlr.tune.storage import open_storage

__all__ = [
    "PROFILES",
    "REGIMES",
    "Outcome",
    "TrialRequest",
    "TrialSeededRandomSampler",
    "TuneConfig",
    "TuneObjective",
    "WorkerSummary",
    "best_trial",
    "describe_study",
    "open_study",
    "reap_expired_trials",
    "repeat_trials",
    "run_worker",
    "suggest",
]

logger = logging.getLogger(__name__)

#: The paper's three tuning regimes: the objective and the budget of a trial.
#: ``"fixed-epochs"``: the task's epoch budget (trials also capped at the time cap), validation
#: loss; ``"runtime-train"``: the time cap only, last mini-batch training loss;
#: ``"runtime-val"``: the time cap only, validation loss.
REGIMES: tuple[str, ...] = ("fixed-epochs", "runtime-train", "runtime-val")


@dataclass(frozen=True)
class _Budget:
    n_trials: int
    n_repeats: int
    time_cap_s: float
    reference_cap_s: float  # the paper's cap, which ``rung_unit_s`` scales against


#: Tuning profiles. ``paper``: 200 trials, 50 repeats (10 on Penn Treebank, 1 on Rosenbrock), the
#: paper's caps (900 s; 3600 s on Penn Treebank and, in the runtime regimes, CIFAR-10); rungs every
#: factor 4 from 1 s. ``quick`` (a reader's CPU): 8 trials, 3 repeats, a 60 s cap, rungs scaled
#: by 60/900 (at 0.067, 0.27, 1.1, 4.3, 17 s). ``smoke`` (tests): 3 trials, 2 repeats, 10 s cap.
PROFILES: tuple[Profile, ...] = ALL_PROFILES

#: Profile -> (trials, repeats, time cap in seconds; ``None``: the paper's cap).
_SIZES: dict[Profile, tuple[int, int, float | None]] = {
    Profile.SMOKE: (3, 2, 10.0),
    Profile.QUICK: (8, 3, 60.0),
    Profile.PAPER: (200, 50, None),
}
#: Repeats under the paper's protocol where it is not the table's.
_PAPER_REPEATS = {"penn-treebank": 10, "rosenbrock": 1}


def _paper_cap(task: str, regime: str) -> float:
    if task == "penn-treebank" or (task == "cifar-10" and regime != "fixed-epochs"):
        return 3600.0
    return 900.0


def _budget(profile: Profile, task: str, regime: str) -> _Budget:
    ref = _paper_cap(task, regime)
    trials, repeats, cap = _SIZES[profile]
    if profile is Profile.PAPER:
        repeats = _PAPER_REPEATS.get(task, repeats)
    return _Budget(trials, repeats, ref if cap is None else cap, ref)


def _positive(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0 < cast(float, value) < math.inf
    ):
        raise ValueError(f"invalid {name}: {value!r} (expected a positive finite number)")
    return float(value)


def _count(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"invalid {name}: {value!r} (expected an int >= {minimum})")
    return int(value)


@dataclass(frozen=True)
class TuneConfig:
    """One tuning study: what is tuned, how, and on what budget.

    ``None`` fields take the profile's value (:data:`PROFILES`).

    Attributes:
        task: Task name.
        optimiser: Optimiser registry name (tunable, or untuned: then only repeats run).
        regime: One of :data:`REGIMES`.
        profile: A :class:`~adamqlr.profiles.Profile` (or its name); also the task profile of
            every run.
        n_trials: Tuning trials (0 for untuned configurations, whatever is given).
        n_repeats: Repeats of the best configuration.
        time_cap_s: Optimisation-time cap of a tuning trial (and of repeats in runtime regimes).
        rung_unit_s: Seconds of optimisation time per unit of the pruner's resource.
        reduction_factor: Successive-halving reduction factor (4, as Ray's ASHA).
        seed: Seed of the random search.
        tune_seed_base: Tuning trial ``k`` trains with seed ``tune_seed_base + k``.
        study_name: Study name (default ``"<task>/<optimiser>/<regime>/<profile>"``).
        lease_timeout_s: A running trial whose lease is older than this is taken as dead.
        lease_interval_s: How often a running trial refreshes its lease.
    """

    task: str
    optimiser: str
    regime: str = "fixed-epochs"
    profile: Profile = Profile.QUICK
    n_trials: int | None = None
    n_repeats: int | None = None
    time_cap_s: float | None = None
    rung_unit_s: float | None = None
    reduction_factor: int = 4
    seed: int = 0
    tune_seed_base: int = 1_000_000
    study_name: str | None = None
    lease_timeout_s: float = 300.0
    lease_interval_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("task", "optimiser"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"invalid {name}: {value!r} (expected a name)")
        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; expected one of {REGIMES}")
        object.__setattr__(self, "profile", parse_profile(self.profile))
        search_space(self.optimiser, self.task)  # raises for an optimiser without a space
        if self.n_trials is not None:
            _count("n_trials", self.n_trials)
        if self.n_repeats is not None:
            _count("n_repeats", self.n_repeats)
        for name in ("time_cap_s", "rung_unit_s"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _count("reduction_factor", self.reduction_factor, 2)
        _count("seed", self.seed)
        _count("tune_seed_base", self.tune_seed_base)
        _positive("lease_timeout_s", self.lease_timeout_s)
        _positive("lease_interval_s", self.lease_interval_s)
        if self.lease_interval_s >= self.lease_timeout_s:
            raise ValueError(
                f"invalid lease_interval_s: {self.lease_interval_s!r} (expected less than "
                f"lease_timeout_s={self.lease_timeout_s!r})"
            )

    # ----------------------------------------------------------------- resolved values
    @property
    def trials(self) -> int:
        """Number of tuning trials (0 for an untuned configuration)."""
        if is_untuned(self.optimiser):
            return 0
        return self.n_trials if self.n_trials is not None else self._budget.n_trials

    @property
    def repeats(self) -> int:
        """Number of repeats of the best configuration."""
        return self.n_repeats if self.n_repeats is not None else self._budget.n_repeats

    @property
    def cap_s(self) -> float:
        """Optimisation-time cap of a trial in seconds."""
        return self.time_cap_s if self.time_cap_s is not None else self._budget.time_cap_s

    @property
    def unit_s(self) -> float:
        """Seconds of optimisation time per pruner resource unit."""
        if self.rung_unit_s is not None:
            return self.rung_unit_s
        return self.cap_s / self._budget.reference_cap_s

    @property
    def name(self) -> str:
        """The study name."""
        return self.study_name or f"{self.task}/{self.optimiser}/{self.regime}/{self.profile}"

    @property
    def space(self) -> dict[str, Dimension]:
        """The search space (:func:`adamqlr.tune.spaces.search_space`)."""
        return search_space(self.optimiser, self.task)

    @property
    def _budget(self) -> _Budget:
        return _budget(self.profile, self.task, self.regime)

    def protocol(self) -> dict[str, Any]:
        """Return the settings that define the study's results (stored in it, checked on reuse)."""
        return {
            "task": self.task,
            "optimiser": self.optimiser,
            "regime": self.regime,
            "profile": self.profile.value,
            "n_trials": self.trials,
            "n_repeats": self.repeats,
            "time_cap_s": self.cap_s,
            "rung_unit_s": self.unit_s,
            "reduction_factor": self.reduction_factor,
            "seed": self.seed,
            "tune_seed_base": self.tune_seed_base,
        }

    def as_dict(self) -> dict[str, Any]:
        """All fields, as given (the profile as its name)."""
        return {**asdict(self), "profile": self.profile.value}


# ----------------------------------------------------------------------------- the objective
@dataclass(frozen=True)
class TrialRequest:
    """What a trial must run.

    Attributes:
        number: The Optuna trial number.
        role: ``"tune"`` or ``"repeat"``.
        hyperparameters: Optimiser hyperparameters (the search space's, batch size excluded).
        batch_size: The tuned batch size, or ``None`` (the configuration's default).
        seed: The run's seed.
        repeat_index: For a repeat, its index (``0 .. n_repeats - 1``).
        retry_of: The number of the dead trial this one retries, if any.
    """

    number: int
    role: str
    hyperparameters: dict[str, Any]
    batch_size: int | None
    seed: int
    repeat_index: int | None = None
    retry_of: int | None = None


@dataclass(frozen=True)
class Outcome:
    """What an objective returns.

    Attributes:
        value: The final objective (lower is better); NaN or infinity fails the trial.
        pruned: Whether the pruner stopped the run (the trial is then marked ``PRUNED``).
        attrs: Extra JSON-able facts stored as the trial's user attributes (e.g. the record key).
    """

    value: float
    pruned: bool = False
    attrs: Mapping[str, Any] = field(default_factory=dict)


#: ``report(value, optimisation_seconds) -> stop``: called by the objective as its run
#: progresses; returns True when the pruner wants the run stopped.
Reporter = Callable[[float, float], bool]


class TuneObjective(Protocol):
    """An objective: run ``request``, calling ``report`` as it goes, and return its outcome."""

    def __call__(self, request: TrialRequest, report: Reporter) -> Outcome | float:
        """Run one trial."""
        ...


# ----------------------------------------------------------------------- sampling
class TrialSeededRandomSampler(RandomSampler):
    """Optuna's random sampler, reseeded per (trial number, parameter) from a study seed.

    Trial ``k`` draws the same configuration whichever worker runs it and however many workers
    there are, so a seeded study is reproducible under parallelism.

    Args:
        seed: The study seed.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._study_seed = int(seed)

    def sample_independent(  # noqa: D102
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        digest = hashlib.sha256(f"{self._study_seed}:{trial.number}:{param_name}".encode()).digest()
        self._rng.rng.seed(int.from_bytes(digest[:4], "little"))
        return super().sample_independent(study, trial, param_name, param_distribution)


def suggest(trial: Trial, space: Mapping[str, Dimension]) -> tuple[dict[str, Any], int | None]:
    """Draw (or, for an enqueued trial, read back) a configuration from ``space``.

    Optuna parameter names are the hyperparameter names, except that a :class:`OneMinus`
    dimension ``name`` is stored as ``"1-name"`` (the drawn ``x``; the hyperparameter is ``1 - x``).

    Returns:
        ``(hyperparameters, batch_size)``; ``batch_size`` is ``None`` when not tuned.
    """
    hparams: dict[str, Any] = {}
    batch_size = None
    for name, dim in space.items():
        if isinstance(dim, LogUniform):
            value: Any = trial.suggest_float(name, dim.low, dim.high, log=True)
        elif isinstance(dim, OneMinus):
            value = 1.0 - trial.suggest_float(f"1-{name}", dim.low, dim.high, log=True)
        elif isinstance(dim, Choice):
            value = trial.suggest_categorical(name, list(dim.values))
        else:  # pragma: no cover - Dimension is closed
            raise TypeError(f"unknown dimension {dim!r}")
        if name == "batch_size":
            batch_size = int(value)
        else:
            hparams[name] = value
    return hparams, batch_size


# ----------------------------------------------------------------------- study and leases
def _lock(path: Path | None) -> contextlib.AbstractContextManager[None]:
    if path is None:
        return contextlib.nullcontext()
    from adamqlr.results.atomic import file_lock

    return file_lock(path)


def open_study(
    config: TuneConfig,
    storage: str | BaseStorage | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
) -> tuple[optuna.Study, Path | None]:
    """Create or load the study of ``config``; check that an existing one has the same protocol.

    Args:
        config: The tuning configuration.
        storage: An Optuna storage URL (``sqlite:///...``, ``postgresql://...``), ``journal:PATH``,
            a storage object, or ``None`` for the default SQLite file under the results folder
            (:func:`adamqlr.tune.storage.open_storage`).
        root: Results folder for the default storage.

    Returns:
        ``(study, lock_path)``; ``lock_path`` is ``None`` for server storages.

    Raises:
        ValueError: If a study of that name exists with another protocol.
    """
    store, lock_path = open_storage(storage, root=root)
    pruner = SuccessiveHalvingPruner(
        min_resource=1, reduction_factor=config.reduction_factor, min_early_stopping_rate=0
    )
    with _lock(lock_path):
        study = optuna.create_study(
            storage=store,
            study_name=config.name,
            direction="minimize",
            sampler=TrialSeededRandomSampler(config.seed),
            pruner=pruner,
            load_if_exists=True,
        )
        stored = study.user_attrs.get("adamqlr.protocol")
        wanted = config.protocol()
        if stored is None:
            study.set_user_attr("adamqlr.protocol", wanted)
        elif stored != wanted:
            diff = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
            raise ValueError(
                f"study {config.name!r} exists with another protocol (stored, requested): {diff}; "
                "choose another --study name or storage"
            )
    return study, lock_path


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Lease:
    """Keep a running trial's lease fresh from a background thread."""

    def __init__(self, trial: Trial, timeout_s: float, interval_s: float) -> None:
        self.trial = trial
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="adamqlr-lease", daemon=True)

    def write(self) -> None:
        self.trial.set_user_attr(
            "lease", {"owner": _owner(), "expires": time.time() + self.timeout_s}
        )

    def _refresh(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.write()
            except Exception as err:  # noqa: BLE001 - keep trying; the reaper decides
                logger.warning("trial %d: could not refresh its lease: %s", self.trial.number, err)

    def __enter__(self) -> _Lease:
        self.write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _retry_attrs(trial: FrozenTrial, reason: str) -> dict[str, Any]:
    keep = ("role", "seed", "repeat_index", "best_trial")
    attrs = {k: trial.user_attrs[k] for k in keep if k in trial.user_attrs}
    return attrs | {"retry_of": trial.number, "retry_reason": reason}


def reap_expired_trials(
    study: optuna.Study, timeout_s: float, now: float | None = None
) -> list[int]:
    """Fail the running trials whose lease expired; enqueue each once more with the same params.

    A trial that never wrote a lease counts from its start time. A trial that is itself a retry
    is failed but not retried again.

    Args:
        study: The study.
        timeout_s: Lease timeout (used for trials without a lease).
        now: The current time (default ``time.time()``).

    Returns:
        The numbers of the trials failed.
    """
    now = time.time() if now is None else now
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lease = t.user_attrs.get("lease")
        if isinstance(lease, Mapping) and "expires" in lease:
            expires = float(lease["expires"])
        else:
            start = t.datetime_start.timestamp() if t.datetime_start else now
            expires = start + timeout_s
        if expires >= now:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError) as err:  # finished meanwhile (by its owner or a reaper)
            logger.info("trial %d: not failed (%s)", t.number, err)
            continue
        failed.append(t.number)
        owner = lease.get("owner") if isinstance(lease, Mapping) else None
        if "retry_of" in t.user_attrs:
            logger.warning(
                "trial %d (a retry) lost its worker %s; not retried again", t.number, owner
            )
            continue
        study.enqueue_trial(dict(t.params), user_attrs=_retry_attrs(t, "lease_expired"))
        logger.warning("trial %d lost its worker %s: failed and re-enqueued", t.number, owner)
    return failed


def _role(t: FrozenTrial) -> str:
    return str(t.user_attrs.get("role", "tune"))


def _objective_value(t: FrozenTrial) -> float:
    value = t.user_attrs.get("objective")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return math.nan


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """Return the tuning trial with the lowest final objective, completed or pruned.

    Returns:
        The trial, or ``None`` if no tuning trial has a finite objective.
    """
    candidates = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if _role(t) == "tune" and math.isfinite(_objective_value(t))
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda t: (_objective_value(t), t.number))


def repeat_trials(
    study: optuna.Study, states: tuple[TrialState, ...] = (TrialState.COMPLETE,)
) -> list[FrozenTrial]:
    """Return the repeat trials in ``states``, one per repeat index (the earliest), by index."""
    by_index: dict[int, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=states):
        if _role(t) == "repeat":
            i = int(t.user_attrs["repeat_index"])
            if i not in by_index or t.number < by_index[i].number:
                by_index[i] = t
    return [by_index[i] for i in sorted(by_index)]


@dataclass
class WorkerSummary:
    """What one worker did.

    Attributes:
        status: ``"done"`` (tuning and repeats finished), ``"max_trials"``, ``"idle"`` (nothing
            to do right now and ``wait`` was false) or ``"no_best"`` (every tuning trial failed).
        trials: Numbers of the trials this worker ran.
        reaped: Numbers of dead trials this worker failed (and re-enqueued).
        states: Final state name of each trial this worker ran.
    """

    status: str = ""
    trials: list[int] = field(default_factory=list)
    reaped: list[int] = field(default_factory=list)
    states: dict[int, str] = field(default_factory=dict)


class _RungReporter:
    """Report the objective to Optuna at rungs ``unit * rf**k`` of optimisation time."""

    def __init__(self, trial: Trial, unit_s: float, reduction_factor: int) -> None:
        self.trial = trial
        self.unit_s = unit_s
        self.rf = reduction_factor
        self.next_rung = 1
        self.pruned = False

    def __call__(self, value: float, seconds: float) -> bool:
        if self.pruned:
            return True
        if not math.isfinite(value):
            return False
        units = seconds / self.unit_s
        if units < self.next_rung:
            return False
        while units >= self.next_rung * self.rf:
            self.next_rung *= self.rf
        self.trial.report(value, self.next_rung)
        self.next_rung *= self.rf
        self.pruned = self.trial.should_prune()
        return self.pruned


def _never_stop(value: float, seconds: float) -> bool:
    return False


def _next_action(study: optuna.Study, config: TuneConfig) -> tuple[str, Trial | None]:
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return "run", study.ask()
    tuning = [t for t in trials if _role(t) == "tune"]
    if sum(1 for t in tuning if "retry_of" not in t.user_attrs) < config.trials:
        trial = study.ask()
        trial.set_user_attr("role", "tune")
        trial.set_user_attr("seed", config.tune_seed_base + trial.number)
        return "run", trial
    if any(not t.state.is_finished() for t in tuning):
        return "wait", None
    if "adamqlr.repeats_enqueued" not in study.user_attrs:
        if config.trials == 0:
            params: dict[str, Any] = {}
            best_number = None
        else:
            best = best_trial(study)
            if best is None:
                study.set_user_attr("adamqlr.no_best", True)
                return "no_best", None
            params, best_number = dict(best.params), best.number
        for i in range(config.repeats):
            attrs = {"role": "repeat", "repeat_index": i, "seed": i, "best_trial": best_number}
            study.enqueue_trial(params, user_attrs=attrs)
        study.set_user_attr("adamqlr.repeats_enqueued", config.repeats)
        return "again", None
    if any(not t.state.is_finished() for t in trials):
        return "wait", None
    return "done", None


def _request(trial: Trial, config: TuneConfig) -> TrialRequest:
    hparams, batch_size = suggest(trial, config.space)
    attrs = trial.user_attrs
    return TrialRequest(
        number=trial.number,
        role=str(attrs.get("role", "tune")),
        hyperparameters=hparams,
        batch_size=batch_size,
        seed=int(attrs.get("seed", config.tune_seed_base + trial.number)),
        repeat_index=attrs.get("repeat_index"),
        retry_of=attrs.get("retry_of"),
    )


def _execute(
    study: optuna.Study, trial: Trial, config: TuneConfig, objective: TuneObjective
) -> str:
    if trial.user_attrs.get("role") == "repeat":  # repeats run their whole budget, unpruned
        reporter: Any = _never_stop
    else:
        reporter = _RungReporter(trial, config.unit_s, config.reduction_factor)
    error: Exception | None = None
    outcome: Outcome | float = math.nan
    try:
        with _Lease(trial, config.lease_timeout_s, config.lease_interval_s):
            try:
                outcome = objective(_request(trial, config), reporter)
            except Exception as err:  # noqa: BLE001 - a failed objective fails its trial only
                error = err
    except BaseException:  # interrupted (Ctrl-C, SystemExit): fail it, let it be retried, stop
        trial.set_user_attr("error", "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        frozen = study.get_trials(deepcopy=False)[trial.number]
        if "retry_of" not in frozen.user_attrs:
            study.enqueue_trial(dict(frozen.params), user_attrs=_retry_attrs(frozen, "interrupted"))
        raise
    if error is not None:
        trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
        logger.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
        study.tell(trial, state=TrialState.FAIL)
        return "FAIL"
    if not isinstance(outcome, Outcome):
        outcome = Outcome(float(outcome))
    value = float(outcome.value)
    for key, item in dict(outcome.attrs).items():
        trial.set_user_attr(key, item)
    trial.set_user_attr("objective", value if math.isfinite(value) else repr(value))
    if not math.isfinite(value):
        trial.set_user_attr("error", f"objective returned {value!r}")
        study.tell(trial, state=TrialState.FAIL)
        return "FAIL"
    if outcome.pruned or getattr(reporter, "pruned", False):
        study.tell(trial, state=TrialState.PRUNED)
        return "PRUNED"
    study.tell(trial, value)
    return "COMPLETE"


def run_worker(
    config: TuneConfig,
    objective: TuneObjective,
    storage: str | BaseStorage | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    max_trials: int | None = None,
    wait: bool = True,
    poll_s: float = 1.0,
) -> WorkerSummary:
    """Work on the study of ``config`` until it is finished (or ``max_trials`` were run).

    Any number of workers, in any processes, may run on the same study at once. A worker that
    finds nothing to do while other workers still run trials waits (``wait=True``) and polls every
    ``poll_s`` seconds, failing and re-enqueueing trials whose lease expired.

    Args:
        config: The tuning configuration.
        objective: Runs one trial (e.g. :class:`adamqlr.tune.objective.SpecObjective`).
        storage: Storage URL or object (see :func:`open_study`).
        root: Results folder for the default storage.
        max_trials: Stop after running this many trials.
        wait: Wait for other workers' trials (else return ``"idle"`` when nothing is left to run).
        poll_s: Poll interval while waiting.

    Returns:
        The :class:`WorkerSummary`.
    """
    study, lock_path = open_study(config, storage, root=root)
    summary = WorkerSummary()
    while max_trials is None or len(summary.trials) < max_trials:
        with _lock(lock_path):
            summary.reaped += reap_expired_trials(study, config.lease_timeout_s)
            action, trial = _next_action(study, config)
        if action == "again":
            continue
        if action in ("done", "no_best"):
            summary.status = action
            return summary
        if action == "wait":
            if not wait:
                summary.status = "idle"
                return summary
            time.sleep(poll_s)
            continue
        assert trial is not None
        summary.trials.append(trial.number)
        summary.states[trial.number] = _execute(study, trial, config, objective)
    summary.status = "max_trials"
    return summary


def describe_study(study: optuna.Study) -> dict[str, Any]:
    """Summarise a study: trial counts by role and state, the best configuration, the repeats.

    Returns:
        A JSON-able dict with ``counts`` (``{"tune": {"COMPLETE": n, ...}, "repeat": {...}}``),
        ``best`` (trial number, objective, parameters, seed; or ``None``), ``repeats`` (finished
        repeat seeds) and ``protocol``.
    """
    counts: dict[str, dict[str, int]] = {}
    for t in study.get_trials(deepcopy=False):
        by_state = counts.setdefault(_role(t), {})
        by_state[t.state.name] = by_state.get(t.state.name, 0) + 1
    best = best_trial(study)
    return {
        "study": study.study_name,
        "protocol": study.user_attrs.get("adamqlr.protocol"),
        "counts": counts,
        "best": None
        if best is None
        else {
            "trial": best.number,
            "objective": _objective_value(best),
            "params": dict(best.params),
            "seed": best.user_attrs.get("seed"),
            "state": best.state.name,
        },
        "repeats": [int(t.user_attrs["seed"]) for t in repeat_trials(study)],
        "repeats_enqueued": study.user_attrs.get("adamqlr.repeats_enqueued"),
        "no_best": bool(study.user_attrs.get("adamqlr.no_best", False)),
    }
