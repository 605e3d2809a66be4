"""Studies: the named lists of experiments behind each experiment chapter of the book.

A :class:`Study` is a list of :class:`Arm` objects. An arm is one line of a figure: a label (the
paper's figure label, e.g. ``"AdamQLR (Untuned)"``) and the experiment specs whose records give its
median and band. There are three kinds of arm:

* a **fixed** arm: one configuration, repeated over the study's seeds (``grid`` empty);
* a **tuned** arm (our stand-in for the paper's hyperparameter search): a small grid of
  configurations is run once each with a tuning seed, the configuration with the lowest final
  validation loss is chosen (the paper's objective in its fixed-epoch regime: the last reported
  validation loss; a run that diverged counts as ``+inf``), and that configuration is then
  repeated over fresh seeds, as the paper repeats its best configuration;
* an arm **around** another arm's choice (:class:`BestOf`): the chosen configuration of a tuned
  arm, possibly in another study, with some overrides; the sensitivity studies vary one
  hyperparameter of the tuned configuration this way, as the paper's do.

So which specs a study needs depends on records: the repeats of a tuned arm are known only once
its trials are finished. :func:`plan` works this out against a results store; :func:`missing`
lists what is still to run (and what is blocked on it); :func:`run_study` runs it, stage by stage;
:func:`obtain` returns the records a notebook draws from, computing them if asked, and otherwise
raising :class:`StudyIncomplete` naming the missing runs and the command that makes them.

Specs are ordinary :class:`~adamqlr.experiment.ExperimentSpec` objects, so a study's records are
exactly what ``adamqlr run`` writes, and two studies (or two arms) that need the same experiment
share one record.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adamqlr.experiment.spec import ExperimentSpec, RunSettings
from adamqlr.profiles import Profile, parse_profile
from adamqlr.results.store import MissingRecordError, ResultStore, RunRecord

__all__ = [
    "Arm",
    "ArmPlan",
    "BestOf",
    "Search",
    "SearchState",
    "Study",
    "StudyIncomplete",
    "StudyRecords",
    "apply_variation",
    "describe_spec",
    "final_value",
    "grid",
    "missing",
    "obtain",
    "plan",
    "run_study",
    "scale_budget",
    "search_state",
]

logger = logging.getLogger(__name__)

#: Spec fields a variation may set directly; any other key is a hyperparameter.
SPEC_FIELDS: frozenset[str] = frozenset(
    {"batch_size", "epochs", "steps", "seconds", "eval_every", "padding_dilution"}
)


def grid(*axes: Mapping[Any, Sequence[Any]]) -> tuple[dict[str, Any], ...]:
    """Return the cartesian product of hyperparameter axes as a tuple of variations.

    Each axis is a mapping from a name to its values. A name may be a tuple of names whose values
    are tuples: those names move together (e.g. the damping factors tied as
    ``omega_inc = 1/omega_dec``). Later axes vary fastest.

    Example::

        grid({"batch_size": (50, 400)}, {"lr": (1e-4, 1e-3)})
        # ({'batch_size': 50, 'lr': 1e-4}, {'batch_size': 50, 'lr': 1e-3}, ...)

    Raises:
        ValueError: If an axis is empty, or a tied name's value has the wrong length.
    """
    items: list[tuple[Any, Sequence[Any]]] = []
    for axis in axes:
        for name, values in axis.items():
            values = tuple(values)
            if not values:
                raise ValueError(f"grid axis {name!r} has no values")
            if isinstance(name, tuple):
                for v in values:
                    if not isinstance(v, tuple) or len(v) != len(name):
                        raise ValueError(
                            f"grid axis {name!r}: value {v!r} is not a tuple of {len(name)}"
                        )
            items.append((name, values))
    out = []
    for combo in itertools.product(*(values for _, values in items)):
        variation: dict[str, Any] = {}
        for (name, _), value in zip(items, combo, strict=True):
            if isinstance(name, tuple):
                variation.update(zip(name, value, strict=True))
            else:
                variation[name] = value
        out.append(variation)
    return tuple(out)


def apply_variation(spec: ExperimentSpec, variation: Mapping[str, Any]) -> ExperimentSpec:
    """Return ``spec`` with ``variation`` applied.

    Keys in :data:`SPEC_FIELDS` (``batch_size``, ``padding_dilution``, budgets) replace the spec's
    field; every other key overrides a hyperparameter.

    Raises:
        ValueError: If the result is not a valid spec (unknown hyperparameter, bad value).
    """
    fields = {k: v for k, v in variation.items() if k in SPEC_FIELDS}
    hparams = {**spec.hparams, **{k: v for k, v in variation.items() if k not in SPEC_FIELDS}}
    return spec.replace(hyperparameters=hparams, **fields)


def final_value(record: RunRecord, metric: str = "val_loss") -> float:
    """Return the last logged value of ``metric``, or ``+inf`` if the run diverged.

    Rows without an evaluation (NaN) are skipped. A run that stopped on a non-finite loss
    (``stop_reason`` starting with ``"nonfinite"``), whose last value is not finite, or that has
    no value at all counts as ``+inf``, as a failed trial does in the paper's search.

    Raises:
        ValueError: If the record has no column ``metric``.
    """
    frame = record.metrics
    if metric not in frame:
        raise ValueError(f"record {record.path} has no column {metric!r}")
    if str(record.provenance.get("stop_reason", "")).startswith("nonfinite"):
        return math.inf
    values = frame[metric].dropna().to_numpy(dtype=float)  # NaN: rows without an evaluation
    if not len(values) or not math.isfinite(values[-1]):
        return math.inf
    return float(values[-1])


@dataclass(frozen=True)
class Search:
    """A random search with successive halving: how a tuned arm chooses its configuration.

    The paper's protocol (ASHA in Ray Tune: 200 random samples, reduction factor 4), with the
    rungs on the run's budget instead of wall-clock seconds, so that the choice does not depend on
    how loaded the machine was. ``n_trials`` configurations are drawn from ``space``
    (:func:`adamqlr.tune.spaces.draw`: configuration ``k`` from ``stream``, ``seed`` and ``k``;
    trial ``k`` trains with seed ``tune_seed + k`` of its arm). With ``R`` rungs (the most for which
    ``n_trials // reduction_factor ** (R - 1) >= 1``, at most ``max_rungs``), rung ``r`` runs the
    best ``n_trials // reduction_factor ** r`` configurations of rung ``r - 1`` (by the arm's
    objective; a diverged run counts as ``+inf``) on ``reduction_factor ** (r - R + 1)`` of the
    budget (epochs, steps and seconds scaled alike; the last rung is the full budget). The choice
    is the configuration with the lowest objective at the highest rung it reached, among all
    configurations (Ray's ``get_best_result``: trials stopped early are candidates too).

    Attributes:
        space: ``{name: dimension}`` from :func:`adamqlr.tune.spaces.search_space` (a
            ``batch_size`` dimension sets the spec's batch size).
        n_trials: Configurations drawn.
        reduction_factor: Successive-halving reduction factor.
        seed: Seed of the draws.
        max_rungs: Largest number of rungs.
        stream: Names the search's random stream (e.g. ``"uci-energy/adam"``), so that searches
            with the same seed draw independently.
        eval_points: Evaluation points of each trial run (``None``: as the study sets for its
            other runs). A trial is judged by its final objective only, so a paper-scale search
            sets 2 (evaluations before the first step, after it and after the last): on
            Fashion-MNIST, evaluating 100 points of a short trial cost ten times its training.
    """

    space: Mapping[str, Any]
    n_trials: int
    reduction_factor: int = 4
    seed: int = 0
    max_rungs: int = 4
    stream: str = ""
    eval_points: int | None = None

    def __post_init__(self) -> None:
        if self.n_trials < 1 or self.reduction_factor < 2 or self.max_rungs < 1:
            raise ValueError(
                f"invalid search: n_trials={self.n_trials!r}, reduction_factor="
                f"{self.reduction_factor!r}, max_rungs={self.max_rungs!r}"
            )
        if self.eval_points is not None and (
            not isinstance(self.eval_points, int) or self.eval_points < 2
        ):
            raise ValueError(f"invalid search: eval_points={self.eval_points!r} (expected >= 2)")
        object.__setattr__(self, "space", dict(self.space))

    @property
    def rungs(self) -> tuple[tuple[int, float], ...]:
        """``(configurations, budget fraction)`` per rung, lowest rung first."""
        counts = [self.n_trials]
        while len(counts) < self.max_rungs and counts[-1] // self.reduction_factor >= 1:
            counts.append(counts[-1] // self.reduction_factor)
        n = len(counts)
        return tuple((c, float(self.reduction_factor) ** (r - n + 1)) for r, c in enumerate(counts))

    def configuration(self, number: int) -> dict[str, Any]:
        """Return configuration ``number`` (a variation for :func:`apply_variation`)."""
        from adamqlr.tune.spaces import draw

        return draw(self.space, self.seed, number, self.stream)


def scale_budget(spec: ExperimentSpec, fraction: float) -> ExperimentSpec:
    """Return ``spec`` with its resolved budget (epochs, steps, seconds) scaled by ``fraction``.

    ``fraction == 1`` returns ``spec`` unchanged; steps are rounded up.
    """
    if fraction == 1:
        return spec
    st = spec.settings()
    return spec.replace(
        epochs=None if st.epochs is None else float(f"{st.epochs * fraction:.12g}"),
        steps=None if st.steps is None else max(1, math.ceil(st.steps * fraction)),
        seconds=None if st.seconds is None else float(f"{st.seconds * fraction:.12g}"),
    )


@dataclass(frozen=True)
class BestOf:
    """The configuration chosen by a tuned arm, as the base of another arm.

    Attributes:
        study: Name of the study that holds the tuned arm.
        arm: The tuned arm's id.
    """

    study: str
    arm: str


@dataclass(frozen=True)
class Arm:
    """One line of a figure: a label and the experiments behind it.

    Attributes:
        id: Identifier, unique within its study (e.g. ``"fashion-mnist/adam"``).
        label: The figure label (e.g. ``"Adam"``, ``"AdamQLR (Untuned)"``).
        base: The base spec (its seed is ignored), or :class:`BestOf` another arm's choice.
        seeds: The seeds the (chosen) configuration is repeated over.
        grid: Variations tried with ``tune_seed`` before the repeats (empty: a fixed arm).
        overrides: Applied to the base (after the choice, for a :class:`BestOf` base).
        tune_seed: Seed of the tuning trials (distinct from the repeat seeds).
        objective: Metric whose final value chooses among the trials (lower is better).
        group: Free tag that notebooks select arms by (e.g. ``"batch_size"`` in a sensitivity
            study).
        value: The value of the varied quantity, for sensitivity colour scales.
        search: A random search with successive halving (instead of ``grid``) that chooses the
            configuration (see :class:`Search`).
        trial_task: The task the tuning trials run on when it differs from the repeats' (the
            paper tunes Rosenbrock from random starts, ``"rosenbrock-random-start"``, and runs
            the choice from ``(1, -1)``); ``None``: the base's task.
    """

    id: str
    label: str
    base: ExperimentSpec | BestOf
    seeds: tuple[int, ...]
    grid: tuple[Mapping[str, Any], ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    tune_seed: int = 1000
    objective: str = "val_loss"
    group: str = ""
    value: float | None = None
    search: Search | None = None
    trial_task: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"invalid arm id {self.id!r}")
        if not isinstance(self.base, (ExperimentSpec, BestOf)):
            raise ValueError(f"arm {self.id!r}: invalid base {self.base!r}")
        seeds = tuple(self.seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(
                f"arm {self.id!r}: seeds {self.seeds!r} must be distinct and non-empty"
            )
        if self.grid and self.search is not None:
            raise ValueError(f"arm {self.id!r}: give a grid or a search, not both")
        if self.search is not None and isinstance(self.base, BestOf):
            raise ValueError(f"arm {self.id!r}: an arm around another arm's choice cannot tune")
        if self.search is not None and set(seeds) & set(
            range(self.tune_seed, self.tune_seed + self.search.n_trials)
        ):
            raise ValueError(
                f"arm {self.id!r}: the tuning seeds {self.tune_seed}.. overlap the repeat seeds "
                "(repeats must use fresh seeds)"
            )
        if self.grid and self.tune_seed in seeds:
            raise ValueError(
                f"arm {self.id!r}: the tuning seed {self.tune_seed} is also a repeat seed "
                "(repeats must use fresh seeds)"
            )
        if self.grid and isinstance(self.base, BestOf):
            raise ValueError(f"arm {self.id!r}: an arm around another arm's choice cannot tune")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "grid", tuple(dict(v) for v in self.grid))
        object.__setattr__(self, "overrides", dict(self.overrides))

    @property
    def tuned(self) -> bool:
        """Whether the arm chooses its configuration (from a grid or a search)."""
        return bool(self.grid) or self.search is not None

    def trial_spec(self, number: int, fraction: float = 1.0) -> ExperimentSpec:
        """Return search trial ``number`` on ``fraction`` of the budget (search arms only)."""
        if self.search is None:
            raise ValueError(f"arm {self.id!r} has no search")
        base = apply_variation(self.base, self.overrides)  # type: ignore[arg-type]
        spec = apply_variation(base, self.search.configuration(number))
        if self.trial_task is not None:
            spec = spec.replace(task=self.trial_task)
        if self.search.eval_points is not None:
            spec = spec.replace(eval_points=self.search.eval_points, eval_every=None)
        return scale_budget(spec.replace(seed=self.tune_seed + number), fraction)

    def trials(self) -> tuple[ExperimentSpec, ...]:
        """Return the grid's tuning trials.

        Empty for a fixed arm, an arm around another's choice, and a search arm (whose trials
        depend on records: see :func:`plan` and :func:`search_state`).
        """
        if not self.grid:
            return ()
        base = apply_variation(self.base, self.overrides)  # type: ignore[arg-type]
        if self.trial_task is not None:
            base = base.replace(task=self.trial_task)
        return tuple(apply_variation(base, v).replace(seed=self.tune_seed) for v in self.grid)

    def repeats_of(self, spec: ExperimentSpec) -> tuple[ExperimentSpec, ...]:
        """Return the repeats of the configuration ``spec`` over the arm's seeds."""
        return tuple(spec.replace(seed=s) for s in self.seeds)


@dataclass(frozen=True)
class Study:
    """A named list of arms: the experiments of one chapter under one profile.

    Attributes:
        name: Registry name (``"untuned-vs-tuned"``).
        profile: The profile every spec uses.
        title: One line for listings and captions.
        arms: The arms.
        description: A paragraph: what the study asks and how it deviates from the paper.
        chapter: The notebook that draws it (``"07_untuned_vs_tuned"``).
        finalise: Applied to every spec the study resolves (trials and repeats), after the
            variations: a policy that depends on the resolved configuration, such as the
            evaluation cadence for the chosen batch size. Must be a pure function of the spec.
        resolve: ``resolve(name, profile) -> Study``, how a :class:`BestOf` that names another
            study finds it (the catalogue's :func:`~adamqlr.studies.catalogue.get_study` sets
            its own); ``None`` for a study whose arms refer only to itself.
        parent: For a selection of a study's arms (:func:`adamqlr.studies.selection.
            select_arms`), the whole study: a :class:`BestOf` naming this study finds its arm
            there, so an arm's dependencies come with it. ``None`` for a whole study.
        selection: For a selection, its filter as command-line options (``--task ...``), which
            :attr:`command` repeats; ``""`` for a whole study.
    """

    name: str
    profile: Profile
    title: str
    arms: tuple[Arm, ...]
    description: str = ""
    chapter: str = ""
    finalise: Callable[[ExperimentSpec], ExperimentSpec] | None = field(default=None, compare=False)
    resolve: Callable[[str, Profile], Study] | None = field(default=None, compare=False, repr=False)
    parent: Study | None = field(default=None, compare=False, repr=False)
    selection: str = field(default="", compare=False)
    _trials: dict[tuple[str, int, float], tuple[ExperimentSpec, RunSettings]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def trial(self, arm: Arm, number: int, fraction: float) -> tuple[ExperimentSpec, RunSettings]:
        """Return search trial ``number`` of ``arm`` on ``fraction`` of the budget, with settings.

        The spec is finalised (:meth:`spec`). Cached per study: a campaign works out every
        search's trials again after each run (thousands of specs under ``paper``), and they
        never change.
        """
        memo_key = (arm.id, number, fraction)
        hit = self._trials.get(memo_key)
        if hit is None:
            spec = self.spec(arm.trial_spec(number, fraction))
            hit = self._trials[memo_key] = (spec, spec.settings())
        return hit

    def spec(self, spec: ExperimentSpec) -> ExperimentSpec:
        """Apply the study's :attr:`finalise` policy (e.g. the evaluation cadence) to ``spec``."""
        return self.finalise(spec) if self.finalise is not None else spec

    def __post_init__(self) -> None:
        object.__setattr__(self, "profile", parse_profile(self.profile))
        ids = [a.id for a in self.arms]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"study {self.name!r}: duplicate arm ids {dup}")
        for arm in self.arms:
            if isinstance(arm.base, ExperimentSpec) and arm.base.profile != self.profile:
                raise ValueError(
                    f"study {self.name!r} ({self.profile}): arm {arm.id!r} uses profile "
                    f"{arm.base.profile!r}"
                )

    def arm(self, arm_id: str) -> Arm:
        """Return the arm called ``arm_id``.

        Raises:
            ValueError: If there is none (the message lists the ids).
        """
        for arm in self.arms:
            if arm.id == arm_id:
                return arm
        raise ValueError(
            f"study {self.name!r} has no arm {arm_id!r}; expected one of "
            f"{[a.id for a in self.arms]}"
        )

    def select(self, *, group: str | None = None, task: str | None = None) -> list[Arm]:
        """Return the arms with the given group and/or task (task of a fixed or tuned base)."""
        out = []
        for arm in self.arms:
            if group is not None and arm.group != group:
                continue
            if task is not None and arm_task(self, arm) != task:
                continue
            out.append(arm)
        return out

    def tasks(self, *, group: str | None = None) -> list[str]:
        """Return the tasks of the study's arms (of ``group`` only, if given), in arm order."""
        return list(dict.fromkeys(arm_task(self, arm) for arm in self.select(group=group)))

    @property
    def command(self) -> str:
        """Return the command that runs this study (or ``python -m adamqlr.studies run ...``)."""
        command = f"adamqlr study run {self.name} --profile {self.profile}"
        return f"{command} {self.selection}" if self.selection else command


def describe_spec(spec: ExperimentSpec) -> str:
    """Return ``str(spec)`` plus the fields it leaves out (batch size, budget, dilution)."""
    extras = [
        f"{name}={value}"
        for name in ("batch_size", "epochs", "steps", "seconds", "eval_every")
        if (value := getattr(spec, name)) is not None
    ]
    if spec.padding_dilution:
        extras.append("padding_dilution")
    return " ".join([str(spec), *extras])


def _referenced(study: Study, ref: BestOf) -> tuple[Study, Arm]:
    if ref.study == study.name:
        other = study if study.parent is None else study.parent  # a selection: the whole study
    elif study.resolve is None:
        raise ValueError(
            f"study {study.name!r}: BestOf({ref.study!r}, {ref.arm!r}) refers to another study, "
            "but the study has no resolve function (studies from get_study have one)"
        )
    else:
        other = study.resolve(ref.study, study.profile)
    arm = other.arm(ref.arm)
    if not arm.tuned:
        raise ValueError(
            f"study {study.name!r}: BestOf({ref.study!r}, {ref.arm!r}) refers to an arm that is "
            "not tuned"
        )
    return other, arm


def arm_task(study: Study, arm: Arm) -> str:
    """Return the task of ``arm`` (following a :class:`BestOf` reference)."""
    if isinstance(arm.base, BestOf):
        other, ref = _referenced(study, arm.base)
        return arm_task(other, ref)
    return arm.base.task


# ------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class ArmPlan:
    """Where one arm stands against a results store.

    Attributes:
        arm: The arm.
        trials: Its tuning trials (for an arm around another's choice: that arm's trials, which
            must finish first).
        repeats: The repeat specs, or ``()`` while the choice is not known.
        choice: The chosen variation (tuned arms and arms around one), or ``None``.
        objectives: Final objective value of each trial (NaN while missing).
        blocked: Why the repeats are not known yet, or ``None``.
        variations: The configuration of each trial (as ``trials``).
        rungs: The successive-halving rung of each trial (0 for grid trials).
    """

    arm: Arm
    trials: tuple[ExperimentSpec, ...]
    repeats: tuple[ExperimentSpec, ...]
    choice: Mapping[str, Any] | None
    objectives: tuple[float, ...]
    blocked: str | None
    variations: tuple[Mapping[str, Any], ...] = ()
    rungs: tuple[int, ...] = ()

    @property
    def specs(self) -> tuple[ExperimentSpec, ...]:
        """Every spec known now: trials and (if known) repeats."""
        return self.trials + self.repeats


def _objective(
    store: ResultStore,
    spec: ExperimentSpec,
    metric: str,
    allow_stale: bool,
    settings: RunSettings | None = None,
) -> float | None:
    """Return the final ``metric`` of ``spec``'s record, or ``None`` while it has none.

    Cached in the store's memo under the record's identity: a campaign works its plan out again
    after every run, and reading thousands of metric tables each time would cost more than the
    runs themselves.
    """
    status, ident = store.state(settings if settings is not None else spec)
    if not (status == "complete" or (status == "stale" and allow_stale)):
        return None
    memo_key = ("final_value", (settings or spec).key, metric, allow_stale)
    hit = store.memo.get(memo_key)
    if hit is not None and hit[0] == ident:
        return float(hit[1])
    value = final_value(store.load(spec, allow_stale=allow_stale), metric)
    store.memo[memo_key] = (ident, value)
    return value


@dataclass(frozen=True)
class SearchState:
    """Where a search arm's successive halving stands against a store.

    Attributes:
        trials: ``(number, rung, spec)`` of every trial known now.
        objectives: ``(number, rung) -> objective`` of the finished ones.
        choice: The chosen configuration once every rung is finished, else ``None``.
        pending: Trials of the current rung without a record.
    """

    trials: tuple[tuple[int, int, ExperimentSpec], ...]
    objectives: Mapping[tuple[int, int], float]
    choice: Mapping[str, Any] | None
    pending: int


def search_state(
    study: Study, arm: Arm, store: ResultStore, allow_stale: bool = False
) -> SearchState:
    """Work out a search arm's rungs against ``store`` (see :class:`Search`)."""
    assert arm.search is not None
    trials: list[tuple[int, int, ExperimentSpec]] = []
    objectives: dict[tuple[int, int], float] = {}
    alive = list(range(arm.search.n_trials))
    for rung, (count, fraction) in enumerate(arm.search.rungs):
        if rung:  # promote the best `count` of the previous rung
            ranked = sorted(alive, key=lambda n: (objectives[(n, rung - 1)], n))
            alive = sorted(ranked[:count])
        pending = 0
        for number in alive:
            spec, settings = study.trial(arm, number, fraction)
            trials.append((number, rung, spec))
            value = _objective(store, spec, arm.objective, allow_stale, settings)
            if value is None:
                pending += 1
            else:
                objectives[(number, rung)] = value
        if pending:
            return SearchState(tuple(trials), objectives, None, pending)
    last: dict[int, tuple[int, float]] = {}
    for (number, rung), value in objectives.items():
        if number not in last or rung > last[number][0]:
            last[number] = (rung, value)
    best = min(last, key=lambda n: (last[n][1], n))
    if math.isinf(last[best][1]):
        logger.warning("arm %s: every tuning trial diverged; keeping the first", arm.id)
    return SearchState(tuple(trials), objectives, arm.search.configuration(best), 0)


def _choose(
    study: Study, arm: Arm, store: ResultStore, allow_stale: bool, state: SearchState | None
) -> tuple[Mapping[str, Any] | None, tuple[float, ...], str | None]:
    if arm.search is not None:
        assert state is not None
        values = tuple(state.objectives.get((n, r), math.nan) for n, r, _ in state.trials)
        if state.choice is None:
            return None, values, f"{state.pending} tuning trial(s) of the current rung not run"
        return state.choice, values, None
    trials = tuple(study.spec(t) for t in arm.trials())
    objectives: list[float] = []
    pending = 0
    for spec in trials:
        value = _objective(store, spec, arm.objective, allow_stale)
        if value is None:
            objectives.append(math.nan)
            pending += 1
        else:
            objectives.append(value)
    if pending:
        return None, tuple(objectives), f"{pending} of {len(trials)} tuning trials not run"
    best = min(range(len(trials)), key=lambda i: (objectives[i], i))
    if math.isinf(objectives[best]):
        logger.warning("arm %s: every tuning trial diverged; keeping the first", arm.id)
    return arm.grid[best], tuple(objectives), None


def _tuning(
    study: Study, arm: Arm, store: ResultStore, allow_stale: bool
) -> tuple[
    Mapping[str, Any] | None,
    tuple[float, ...],
    str | None,
    tuple[ExperimentSpec, ...],
    tuple[Mapping[str, Any], ...],
    tuple[int, ...],
]:
    """Return a tuned arm's choice, objectives, blocked reason, trials, variations and rungs."""
    if arm.search is not None:
        state = search_state(study, arm, store, allow_stale)  # worked out once per arm
        choice, objectives, blocked = _choose(study, arm, store, allow_stale, state)
        return (
            choice,
            objectives,
            blocked,
            tuple(spec for _, _, spec in state.trials),
            tuple(arm.search.configuration(n) for n, _, _ in state.trials),
            tuple(r for _, r, _ in state.trials),
        )
    choice, objectives, blocked = _choose(study, arm, store, allow_stale, None)
    trials = tuple(study.spec(t) for t in arm.trials())
    return choice, objectives, blocked, trials, tuple(arm.grid), tuple(0 for _ in arm.grid)


def plan(
    study: Study, store: ResultStore | None = None, *, allow_stale: bool = False
) -> list[ArmPlan]:
    """Work out every arm's specs against ``store`` (see :class:`ArmPlan`).

    Args:
        study: The study.
        store: The results store (default: the default store).
        allow_stale: Use records of another algorithm version to choose configurations.

    Returns:
        One :class:`ArmPlan` per arm, in the study's order.
    """
    store = store if store is not None else ResultStore()
    out = []
    for arm in study.arms:
        variations: tuple[Mapping[str, Any], ...] = ()
        rungs: tuple[int, ...] = ()
        repeats: tuple[ExperimentSpec, ...] = ()
        if isinstance(arm.base, BestOf):
            other, ref = _referenced(study, arm.base)
            choice, objectives, blocked, trials, variations, rungs = _tuning(
                other, ref, store, allow_stale
            )
            if choice is not None:
                base = apply_variation(apply_variation(ref.base, ref.overrides), choice)  # type: ignore[arg-type]
                repeats = arm.repeats_of(apply_variation(base, arm.overrides))
            else:
                blocked = f"waits for {other.name}:{ref.id} ({blocked})"
        elif arm.tuned:
            choice, objectives, blocked, trials, variations, rungs = _tuning(
                study, arm, store, allow_stale
            )
            if choice is not None:
                base = apply_variation(arm.base, arm.overrides)
                repeats = arm.repeats_of(apply_variation(base, choice))
        else:
            trials, choice, objectives, blocked = (), None, (), None
            repeats = arm.repeats_of(apply_variation(arm.base, arm.overrides))
        repeats = tuple(study.spec(r) for r in repeats)
        out.append(ArmPlan(arm, trials, repeats, choice, objectives, blocked, variations, rungs))
    return out


def _unique(specs: Iterable[ExperimentSpec]) -> list[ExperimentSpec]:
    seen: dict[str, ExperimentSpec] = {}
    for spec in specs:
        seen.setdefault(spec.key, spec)
    return list(seen.values())


def missing(
    study: Study, store: ResultStore | None = None, *, allow_stale: bool = False
) -> tuple[list[ExperimentSpec], list[str]]:
    """Return the study's runs that have no current record, and the arms still blocked.

    Args:
        study: The study.
        store: The results store (default: the default store).
        allow_stale: Count records of another algorithm version as present.

    Returns:
        ``(specs, blocked)``: the distinct specs known now whose record is missing, stale or
        corrupt (trials first), and one line per arm whose repeats cannot be known yet.
    """
    store = store if store is not None else ResultStore()
    plans = plan(study, store, allow_stale=allow_stale)
    ok = ("complete", "stale") if allow_stale else ("complete",)
    trials = [s for p in plans for s in p.trials]
    repeats = [s for p in plans for s in p.repeats]
    todo = [s for s in _unique(trials + repeats) if store.status(s) not in ok]
    blocked = [f"{p.arm.id}: {p.blocked}" for p in plans if p.blocked]
    return todo, blocked


def run_study(
    study: Study,
    store: ResultStore | None = None,
    *,
    device: str | None = None,
    progress: bool | None = False,
    force: bool = False,
    on_run: Callable[[ExperimentSpec, RunRecord], None] | None = None,
) -> list[RunRecord]:
    """Run every missing experiment of ``study``, stage by stage, and return the new records.

    Trials come first; once an arm's trials are finished its choice is made and its repeats run
    (also for arms around another study's choice). Finished runs are never rerun unless ``force``
    (then every run of the study known at each stage is rerun once). Runtime warnings of the
    optimisers (rejected steps) are counted and logged at INFO level, not printed.

    Args:
        study: The study.
        store: The results store (default: the default store).
        device: Device override for every run (``None``: each spec's own, ``"auto"``).
        progress: Progress bar per run.
        force: Rerun runs that already have a record.
        on_run: Called with each spec and its record after it ran.

    Returns:
        The records made by this call, in the order they were made.
    """
    from adamqlr.experiment.runner import run

    store = store if store is not None else ResultStore()
    made: list[RunRecord] = []
    done: set[str] = set()
    while True:
        todo, blocked = missing(study, store)
        if force:
            plans = plan(study, store)
            todo = [s for s in _unique(s for p in plans for s in p.specs) if s.key not in done]
        todo = [s for s in todo if s.key not in done]
        if not todo:
            for line in blocked:
                logger.warning("study %s: still blocked: %s", study.name, line)
            return made
        for i, spec in enumerate(todo, 1):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RuntimeWarning)
                record = run(spec, store=store, force=force, device=device, progress=progress)
            done.add(spec.key)
            made.append(record)
            p = record.provenance
            logger.info(
                "[%s %d/%d] %s: %s steps, %.1f s optimisation, stop=%s, %d runtime warnings",
                study.name, i, len(todo), spec, p.get("steps"), p.get("optimisation_time_s", 0.0),
                p.get("stop_reason"), len(caught),
            )  # fmt: skip
            if on_run is not None:
                on_run(spec, record)


# --------------------------------------------------------------------------------------- records
class StudyIncomplete(MissingRecordError):
    """A study's records are not all in the store; the message names them and the command."""


@dataclass
class StudyRecords:
    """The records of a study, by arm, with the plans that chose them.

    Attributes:
        study: The study.
        plans: The arm plans, by arm id.
        records: The repeat records, by arm id.
        trials: The tuning-trial records, by arm id (tuned arms only).
    """

    study: Study
    plans: dict[str, ArmPlan]
    records: dict[str, list[RunRecord]]
    trials: dict[str, list[RunRecord]]

    def arms(self, *, group: str | None = None, task: str | None = None) -> list[Arm]:
        """Return the study's arms with the given group and/or task."""
        return self.study.select(group=group, task=task)

    def tasks(self, *, group: str | None = None) -> list[str]:
        """Return the tasks of the study's arms (of ``group`` only, if given), in arm order."""
        return self.study.tasks(group=group)

    def task_titles(self, tasks: Sequence[str] | None = None) -> dict[str, str]:
        """Return ``{task: title}`` as the records name their task (default: :meth:`tasks`).

        The title is the first record's ``provenance["task_title"]`` (the task's name when
        the record does not say).
        """
        return {
            t: self.records[self.study.select(task=t)[0].id][0].provenance.get("task_title", t)
            for t in (self.tasks() if tasks is None else tasks)
        }

    def by_label(
        self, *, group: str | None = None, task: str | None = None, ids: Sequence[str] | None = None
    ) -> dict[str, list[RunRecord]]:
        """Return ``{label: records}`` of the selected arms (what ``plot_runs`` takes).

        ``ids`` selects arms by id, in that order; otherwise ``group`` and ``task`` filter.
        """
        arms = (
            [self.study.arm(i) for i in ids]
            if ids is not None
            else self.arms(group=group, task=task)
        )
        return {arm.label: self.records[arm.id] for arm in arms}

    def all_records(self) -> list[RunRecord]:
        """Every record (repeats and trials), each once."""
        seen: dict[str, RunRecord] = {}
        for group in (*self.records.values(), *self.trials.values()):
            for record in group:
                seen.setdefault(record.key, record)
        return list(seen.values())


def _describe_missing(study: Study, todo: list[ExperimentSpec], blocked: list[str]) -> str:
    lines = [
        f"study {study.name!r} (profile {study.profile}) is incomplete: {len(todo)} run(s) "
        f"missing" + (f", {len(blocked)} arm(s) waiting for tuning trials" if blocked else "")
    ]
    for spec in todo[:12]:
        lines.append(f"  missing: {describe_spec(spec)}")
    if len(todo) > 12:
        lines.append(f"  ... and {len(todo) - 12} more")
    for line in blocked[:6]:
        lines.append(f"  blocked: {line}")
    if len(blocked) > 6:
        lines.append(f"  ... and {len(blocked) - 6} more blocked")
    lines.append(f"make them with: {study.command}")
    lines.append(f"(or one at a time: {todo[0].command()})" if todo else "")
    return "\n".join(line for line in lines if line)


def obtain(
    study: Study,
    store: ResultStore | None = None,
    *,
    compute: bool = False,
    allow_stale: bool = False,
    device: str | None = None,
    progress: bool | None = False,
) -> StudyRecords:
    """Return the study's records; compute the missing ones only if asked.

    This is what a notebook calls: under the ``paper`` profile on a machine without the stored
    records it stops with :class:`StudyIncomplete` (naming the runs and the command) unless
    ``compute`` is true; it never silently computes something else.

    Args:
        study: The study.
        store: The results store (default: the default store).
        compute: Run whatever is missing (see :func:`run_study`).
        allow_stale: Accept records made by another algorithm version.
        device: Device for computed runs.
        progress: Progress bars for computed runs.

    Returns:
        The records.

    Raises:
        StudyIncomplete: If runs are missing and ``compute`` is false (or they could not be made).
    """
    store = store if store is not None else ResultStore()
    todo, blocked = missing(study, store, allow_stale=allow_stale)
    if (todo or blocked) and compute:
        run_study(study, store, device=device, progress=progress)
        todo, blocked = missing(study, store, allow_stale=allow_stale)
    if todo or blocked:
        raise StudyIncomplete(_describe_missing(study, todo, blocked))
    plans = {p.arm.id: p for p in plan(study, store, allow_stale=allow_stale)}
    records = {
        arm_id: [store.load(s, allow_stale=allow_stale) for s in p.repeats]
        for arm_id, p in plans.items()
    }
    trials = {
        arm_id: [store.load(s, allow_stale=allow_stale) for s in p.trials]
        for arm_id, p in plans.items()
        if p.arm.tuned
    }
    return StudyRecords(study=study, plans=plans, records=records, trials=trials)


def replace_arm(arm: Arm, **changes: Any) -> Arm:
    """Return a copy of ``arm`` with ``changes`` (validated again)."""
    return dataclasses.replace(arm, **changes)
