"""The named studies of the book's experiment chapters, under each profile.

=====================  ====================================================================
study                  chapter and question
=====================  ====================================================================
``untuned-vs-tuned``   07: untuned AdamQLR against tuned and untuned Adam, SGD and K-FAC
``fisher-vs-hessian``  08: the Fisher (GGN) or the Hessian as AdamQLR's curvature
``damping``            09: damped against undamped AdamQLR; the official code's padding dilution
``lr-clipping``        10: the step-size clip alpha_max (on in arXiv v2, off in the camera-ready)
``sensitivity``        11: batch size, initial damping, stepping factor, amplification (and
                       Adam's learning rate and batch size) around the tuned configurations
``kfac-sensitivity``   11: K-FAC's batch size and initial damping around the tuned K-FAC
``runtime``            12: the cost of one step, per optimiser and batch size
``rosenbrock``         06: the paper's Rosenbrock trajectories, tuned as the paper tuned them
``fixed-runtime``      07: the paper's two fixed-runtime regimes (tuned on training or
                       validation loss under a time cap)
``factorial``          15: which heuristic does the work: direction x step-size rule x
                       damping, every cell tuned with the same budget (and one extra
                       row: AdamQLR with rho on the next mini-batch)
=====================  ====================================================================

**Tuning.** The paper tunes every "tuned" optimiser with 200 random-search samples under ASHA
(Ray Tune; reduction factor 4) and repeats the best configuration 50 times with fresh seeds. A
tuned arm here does the same (:class:`adamqlr.studies.core.Search`): configurations drawn from the
search spaces that ``adamqlr tune`` uses (:func:`adamqlr.tune.spaces.search_space`, the one table
of the paper's spaces), successive halving with reduction factor 4 on the run's budget (epochs,
steps or seconds) rather than on wall-clock seconds, the choice by the final value of the arm's
objective (validation loss; training loss on Rosenbrock and in the runtime regime tuned on
training loss), then the repeats.

**Profiles.**

* ``paper`` (the paper's protocol, sized for a 2-core CPU): the tasks' paper budgets (Rosenbrock
  200 steps, UCI Energy 4000 epochs, UCI Protein 200, Fashion-MNIST 10), 200 random-search samples
  per tuned arm (rungs of 200, 50, 12 and 3 runs on 1/64, 1/16, 1/4 and all of the budget), 50
  repeat seeds (one run from (1, -1) on Rosenbrock; 10 seeds per value in the sensitivity and
  clipping grids and in the runtime regimes), every optimiser of the paper's main comparison, the
  paper's sensitivity grids, the clip at batch sizes 50, 100, 200 and 3200, and the runtime
  regimes with caps scaled to this machine (UCI Energy 15 s, Fashion-MNIST 30 s of optimisation
  time; the paper: 900 s). The stepping-factor grid starts at 2^0.2: our Levenberg-Marquardt
  rule needs ``omega_inc > 1``, so the paper's 2^0 (a constant damping) is left out. Runs are
  evaluated at about 100 log-spaced steps (plus the last), so a record stays small;
* ``quick`` (committed records, a 2-core CPU, minutes): the tasks' quick budgets (UCI Energy 1000
  epochs, UCI Protein 10, Fashion-MNIST 2), 4 random-search samples per tuned arm (8 on
  Rosenbrock), 3 repeat seeds, a subset of the optimisers, sensitivity grids of 4 to 5 values;
* ``smoke``: one seed, two samples per tuned arm, the tasks' smoke budgets (for tests).

`adamqlr study plan NAME --profile paper` counts the runs and steps of a study and estimates its
core-hours from measured per-step costs (:mod:`adamqlr.studies.costs`).

Every study's specs are ordinary experiment specs; identical specs in two studies share a record.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.profiles import Profile, parse_profile
from adamqlr.results.store import ResultStore
from adamqlr.studies.core import Arm, BestOf, Search, Study, StudyIncomplete, StudyRecords, obtain
from adamqlr.studies.factorial import CELLS as FACTORIAL_CELLS
from adamqlr.studies.factorial import EXTRA_CELLS as FACTORIAL_EXTRA_CELLS
from adamqlr.studies.selection import ArmFilter, select_arms
from adamqlr.tune.spaces import search_space

__all__ = ["STUDIES", "get_study", "notebook_records", "study_names"]


@dataclass(frozen=True)
class _Profile:
    seeds: tuple[int, ...]
    tune_seed: int
    tasks_main: tuple[str, ...]  # chapter 7
    tasks_ablation: tuple[str, ...]  # chapters 8 and 9
    tasks_clip: tuple[str, ...]  # chapter 10
    runtime_tasks: Mapping[str, tuple[int, ...]]  # chapter 12: task -> batch sizes
    runtime_steps: int
    runtime_seeds: tuple[int, ...]
    n_trials: int = 2  # random-search configurations per tuned arm
    grid_seeds: tuple[int, ...] = (0,)  # seeds of the sensitivity and clipping grids
    main_optimisers: tuple[str, ...] = ("adamqlr-untuned", "adam-untuned", "kfac-untuned",
                                        "adamqlr", "adam", "sgd")  # fmt: skip
    clip_batches: tuple[int, ...] = (3200,)
    runtime_caps: Mapping[str, float] = dataclasses.field(default_factory=dict)
    runtime_regime_optimisers: tuple[str, ...] = ("adam", "adamqlr")
    runtime_regime_seeds: tuple[int, ...] = (0,)
    rosenbrock_trials: int = 2
    eval_points: int | None = None
    trial_eval_points: int | None = None  # evaluations of a tuning trial (see Search)
    factorial_tasks: tuple[str, ...] = ("uci-energy",)  # chapter 15
    factorial_trials: int = 2  # the same search budget for every cell
    factorial_seeds: tuple[int, ...] = (0,)


#: Every optimiser of the paper's main comparison (issue: the campaign at the paper's protocol).
_ALL_MAIN = (
    "sgd", "sgd-full", "adam", "adam-untuned", "kfac", "kfac-untuned", "kfac-unadaptive",
    "baydin-sgd", "adamqlr", "adamqlr-untuned",
)  # fmt: skip

_PROFILES: dict[Profile, _Profile] = {
    Profile.SMOKE: _Profile(
        seeds=(0,),
        tune_seed=1000,
        tasks_main=("uci-energy", "fashion-mnist"),
        tasks_ablation=("fashion-mnist",),
        tasks_clip=("uci-energy",),
        runtime_tasks={"uci-energy": (588,)},
        runtime_steps=5,
        runtime_seeds=(0,),
        n_trials=2,
        clip_batches=(50,),
        runtime_caps={"uci-energy": 0.5},
        runtime_regime_optimisers=("adamqlr",),
    ),
    Profile.QUICK: _Profile(
        seeds=(0, 1, 2),
        tune_seed=1000,
        tasks_main=("uci-energy", "uci-protein", "fashion-mnist"),
        tasks_ablation=("fashion-mnist",),
        tasks_clip=("uci-energy", "uci-protein", "fashion-mnist"),
        runtime_tasks={"fashion-mnist": (50, 400, 3200)},
        runtime_steps=50,
        runtime_seeds=(0, 1, 2),
        n_trials=4,
        grid_seeds=(0, 1, 2),
        clip_batches=(100, 3200),
        runtime_caps={"uci-energy": 2.0, "fashion-mnist": 4.0},
        runtime_regime_seeds=(0, 1, 2),
        rosenbrock_trials=8,
        # Fashion-MNIST only: at the quick budget of UCI Energy (1000 epochs) a batch-50 K-FAC
        # cell takes minutes a run; the paper profile covers the three tasks.
        factorial_tasks=("fashion-mnist",),
        factorial_trials=4,
        factorial_seeds=(0, 1, 2),
    ),
    Profile.PAPER: _Profile(
        seeds=tuple(range(50)),
        tune_seed=1000,
        tasks_main=("uci-energy", "uci-protein", "fashion-mnist"),
        tasks_ablation=("fashion-mnist",),
        tasks_clip=("uci-energy", "uci-protein", "fashion-mnist"),
        runtime_tasks={"fashion-mnist": (50, 400, 3200)},
        runtime_steps=100,
        runtime_seeds=(0, 1, 2),
        n_trials=200,
        grid_seeds=tuple(range(10)),
        main_optimisers=_ALL_MAIN,
        clip_batches=(50, 100, 200, 3200),
        # The paper's 900 s cap on its GPUs, scaled to what a 2-core CPU campaign can afford.
        runtime_caps={"uci-energy": 15.0, "fashion-mnist": 30.0},
        runtime_regime_optimisers=("sgd", "sgd-full", "adam", "kfac", "adamqlr"),
        runtime_regime_seeds=tuple(range(10)),
        rosenbrock_trials=200,
        eval_points=100,
        trial_eval_points=2,
        factorial_tasks=("uci-energy", "uci-protein", "fashion-mnist"),
        factorial_trials=64,
        factorial_seeds=tuple(range(20)),
    ),
}

#: The untuned damping factors, as a tied pair (omega_dec, omega_inc).
_UNTUNED_OMEGA = (0.5, 2.0)
_OMEGA = ("damping_decrease", "damping_increase")


def _decades(lo: float, hi: float, per_decade: float) -> tuple[float, ...]:
    """10**x for x from lo to hi in steps of 1/per_decade (rounded to 12 significant figures)."""
    n = round((hi - lo) * per_decade)
    return tuple(float(f"{10 ** (lo + i / per_decade):.12g}") for i in range(n + 1))


def _powers2(lo: float, hi: float, step: float) -> tuple[float, ...]:
    n = round((hi - lo) / step)
    return tuple(float(f"{2 ** (lo + i * step):.12g}") for i in range(n + 1))


def _tied(values: Sequence[float]) -> tuple[tuple[float, float], ...]:
    """Return stepping factors v as (omega_dec, omega_inc) = (1/v, v)."""
    return tuple((float(f"{1 / v:.12g}"), float(f"{v:.12g}")) for v in values)


#: Training-set sizes (the tasks' full splits; the quick and paper profiles use all of them).
_TRAIN_SIZE = {"uci-energy": 588, "uci-protein": 34983, "fashion-mnist": 50000, "cifar-10": 45000}
#: Evaluations per epoch, per profile and task. A task's profile evaluates every so many *steps*,
#: which leaves a large-batch run (untuned AdamQLR at 3200 takes 16 steps per Fashion-MNIST epoch)
#: with two points on its test-loss curve; so the studies set the cadence per batch size. Tasks not
#: listed keep their profile's cadence (UCI Energy: every 10 steps; one step is one epoch there).
_EVALS_PER_EPOCH = {
    Profile.QUICK: {"fashion-mnist": 4, "uci-protein": 2},
    Profile.PAPER: {"fashion-mnist": 10, "uci-protein": 4, "cifar-10": 2},
}


def _cadence(spec: ExperimentSpec) -> ExperimentSpec:
    """Set the evaluation cadence of ``spec`` from its batch size (unless the spec sets one).

    Evaluation time is excluded from the optimisation clock, so the cadence changes how densely
    the validation and test curves are drawn, not the runtime axis.
    """
    points = _PROFILES[spec.profile].eval_points
    if points is not None and spec.eval_every is None and spec.eval_points is None:
        return spec.replace(eval_points=points)
    per_epoch = _EVALS_PER_EPOCH.get(spec.profile, {}).get(spec.task)
    if spec.eval_every is not None or spec.eval_points is not None or per_epoch is None:
        return spec
    steps_per_epoch = math.ceil(_TRAIN_SIZE[spec.task] / spec.settings().batch_size)
    return spec.replace(eval_every=max(1, steps_per_epoch // per_epoch))


_TUNED_LABELS = {
    "adam": "Adam",
    "sgd": "SGD Minimal",
    "sgd-full": "SGD Full",
    "kfac": "K-FAC",
    "kfac-unadaptive": "K-FAC (Unadaptive)",
    "baydin-sgd": "Baydin SGD",
    "adamqlr": "AdamQLR",
    "adamqlr-hessian": "AdamQLR (Hessian)",
    "adamqlr-undamped": "AdamQLR (Undamped)",
    "adamqlr-heldout": "AdamQLR (held-out ρ)",
}
_FIXED_LABELS = {
    "adamqlr-untuned": "AdamQLR (Untuned)",
    "adam-untuned": "Adam (Untuned)",
    "kfac-untuned": "K-FAC (Untuned)",
    "adamqlr-untuned-hessian": "AdamQLR (Untuned, Hessian)",
    "adamqlr-untuned-heldout": "AdamQLR (Untuned, held-out ρ)",
}


def _spec(task: str, optimiser: str, profile: Profile, **fields: Any) -> ExperimentSpec:
    return ExperimentSpec(task, optimiser, profile=profile, **fields)


def _fixed(task: str, optimiser: str, profile: Profile, label: str | None = None, **kw: Any) -> Arm:
    p = _PROFILES[profile]
    name = kw.pop("id", optimiser)
    return Arm(
        id=f"{task}/{name}",
        label=label or _FIXED_LABELS[optimiser],
        base=_spec(task, optimiser, profile, **kw.pop("fields", {})),
        seeds=kw.pop("seeds", p.seeds),
        **kw,
    )


def _tuned(
    task: str,
    optimiser: str,
    profile: Profile,
    label: str | None = None,
    *,
    seeds: tuple[int, ...] | None = None,
    n_trials: int | None = None,
    objective: str = "val_loss",
    fields: Mapping[str, Any] | None = None,
    id: str | None = None,
    group: str = "",
    trial_task: str | None = None,
) -> Arm:
    """Return a tuned arm: the paper's random search with successive halving, then the repeats."""
    p = _PROFILES[profile]
    return Arm(
        id=id or f"{task}/{optimiser}",
        label=label or _TUNED_LABELS[optimiser],
        base=_spec(task, optimiser, profile, **dict(fields or {})),
        seeds=p.seeds if seeds is None else seeds,
        search=Search(
            search_space(optimiser, task),
            n_trials or p.n_trials,
            stream=f"{task}/{optimiser}",
            eval_points=p.trial_eval_points,
        ),
        tune_seed=p.tune_seed,
        objective=objective,
        group=group,
        trial_task=trial_task,
    )


# ------------------------------------------------------------------------------------ studies
def _untuned_vs_tuned(profile: Profile) -> Study:
    p = _PROFILES[profile]
    arms: list[Arm] = []
    for task in p.tasks_main:
        for optimiser in p.main_optimisers:
            if optimiser in _FIXED_LABELS:
                arms.append(_fixed(task, optimiser, profile))
            else:
                arms.append(_tuned(task, optimiser, profile))
    return Study(
        "untuned-vs-tuned",
        profile,
        "Untuned AdamQLR against tuned and untuned baselines",
        tuple(arms),
        description=(
            "AdamQLR with the paper's untuned defaults (batch 3200), Adam at lr 1e-3 and K-FAC "
            "at its defaults (batch 3200), against AdamQLR, Adam and SGD tuned on a grid of "
            "their search spaces by final validation loss."
        ),
        chapter="07_untuned_vs_tuned",
        finalise=_cadence,
    )


def _fisher_vs_hessian(profile: Profile) -> Study:
    p = _PROFILES[profile]
    arms: list[Arm] = []
    for task in p.tasks_ablation:
        arms += [
            _tuned(task, "adam", profile),
            _tuned(task, "adamqlr", profile, label="AdamQLR (Fisher)"),
            _tuned(task, "adamqlr-hessian", profile),
            _fixed(task, "adamqlr-untuned", profile, label="AdamQLR (Untuned, Fisher)"),
            _fixed(task, "adamqlr-untuned-hessian", profile),
        ]
    return Study(
        "fisher-vs-hessian",
        profile,
        "Fisher (GGN) against Hessian curvature in AdamQLR",
        tuple(arms),
        description=(
            "AdamQLR with the Fisher (the generalised Gauss-Newton matrix) or the Hessian in its "
            "quadratic model, each tuned on the same grid, and at the untuned defaults; tuned "
            "Adam for reference."
        ),
        chapter="08_fisher_vs_hessian",
        finalise=_cadence,
    )


def _damping(profile: Profile) -> Study:
    p = _PROFILES[profile]
    arms: list[Arm] = []
    for task in p.tasks_ablation:
        arms += [
            _tuned(task, "adam", profile),
            _tuned(task, "adamqlr", profile),
            _tuned(task, "adamqlr-undamped", profile),
            _fixed(task, "adamqlr-untuned", profile),
        ]
    task = "uci-energy"
    arms += [
        _fixed(task, "adamqlr-untuned", profile, group="dilution"),
        _fixed(
            task,
            "adamqlr-untuned",
            profile,
            label="AdamQLR (Untuned, padding dilution)",
            id="adamqlr-untuned-dilution",
            fields={"padding_dilution": True},
            group="dilution",
        ),
    ]
    return Study(
        "damping",
        profile,
        "Damped against undamped AdamQLR, and the official code's padding dilution",
        tuple(arms),
        description=(
            "AdamQLR with Levenberg-Marquardt damping (tuned) against AdamQLR without damping "
            "(only the batch size tuned), with tuned Adam for reference; and untuned AdamQLR on "
            "UCI Energy at batch 3200 with and without the official code's dilution of the "
            "squared-error curvature by padding rows."
        ),
        chapter="09_damping",
        finalise=_cadence,
    )


def _lr_clipping(profile: Profile) -> Study:
    p = _PROFILES[profile]
    arms: list[Arm] = []
    for task in p.tasks_clip:
        arms += [
            _fixed(task, "adamqlr-untuned", profile, label="AdamQLR (Untuned, no clipping)"),
            _fixed(
                task,
                "adamqlr-untuned",
                profile,
                label="AdamQLR (Untuned, α_max = 0.1)",
                id="adamqlr-untuned-clipped",
                overrides={"lr_clip": 0.1},
                group="clipped",
            ),
        ]
    for batch in p.clip_batches:  # where the clip binds: small batches (noisy curvature)
        for clip in (None, 0.1):
            arms.append(
                _fixed(
                    "fashion-mnist",
                    "adamqlr-untuned",
                    profile,
                    label=f"batch {batch}, " + ("no clipping" if clip is None else "α_max = 0.1"),
                    id=f"adamqlr-untuned/batch={batch}/clip={clip}",
                    fields={"batch_size": batch},
                    overrides={} if clip is None else {"lr_clip": clip},
                    group="clip_batch",
                    value=float(batch),
                    seeds=p.grid_seeds,
                )
            )
    values = {
        Profile.SMOKE: (1e-2,),
        Profile.QUICK: _decades(-3, 0, 1),
        Profile.PAPER: _decades(-4, 1, 2),
    }[profile]
    arms += _around(profile, "lr_clip", values, "α_max = {:.3g}")
    return Study(
        "lr-clipping",
        profile,
        "Clipping AdamQLR's step size (alpha_max)",
        tuple(arms),
        description=(
            "Untuned AdamQLR without and with the arXiv-v2 untuned clip alpha_max = 0.1, and a "
            "sweep of alpha_max around the tuned AdamQLR configuration on Fashion-MNIST (the v2 "
            "sensitivity study)."
        ),
        chapter="10_lr_clipping",
        finalise=_cadence,
    )


def _around(
    profile: Profile,
    key: str | tuple[str, str],
    values: Sequence[Any],
    fmt: str,
    *,
    task: str = "fashion-mnist",
    ref: str = "adamqlr",
    group: str | None = None,
    transform: Callable[[Any], Any] | None = None,
    study: str = "untuned-vs-tuned",
) -> list[Arm]:
    p = _PROFILES[profile]
    group = group or (key if isinstance(key, str) else "stepping_factor")
    arms = []
    for value in values:
        setting = transform(value) if transform else value
        if isinstance(key, tuple):
            overrides = dict(zip(key, setting, strict=True))
        else:
            overrides = {key: setting}
        arms.append(
            Arm(
                id=f"{task}/{ref}/{group}={value:.6g}",
                label=fmt.format(value),
                base=BestOf(study, f"{task}/{ref}"),
                seeds=p.grid_seeds,
                overrides=overrides,
                group=group,
                value=float(value),
            )
        )
    return arms


def _sensitivity(profile: Profile) -> Study:
    table: dict[Profile, dict[str, tuple[float, ...]]] = {
        Profile.SMOKE: {
            "batch_size": (50, 100),
            "initial_damping": (1e-8, 1.0),
            "stepping": (2.0, 4.0),
            "amplification": (0.5, 2.0),
            "adam_lr": (1e-3, 1e-2),
            "adam_batch_size": (50, 100),
        },
        Profile.QUICK: {
            "batch_size": (100, 400, 1600, 3200),
            "initial_damping": _decades(-8, 0, 0.5),
            "stepping": _powers2(0.5, 2.0, 0.5),
            "amplification": _powers2(-1, 1, 0.5),
            "adam_lr": _decades(-5, -1, 1),
            "adam_batch_size": (100, 400, 1600, 3200),
        },
        Profile.PAPER: {
            "batch_size": (50, 100, 200, 400, 800, 1600, 3200),
            "initial_damping": _decades(-8, 0, 2),
            "stepping": _powers2(0.2, 2.0, 0.2),
            "amplification": _powers2(-1, 1, 0.2),
            "adam_lr": _decades(-6, 0, 3),
            "adam_batch_size": (50, 100, 200, 400, 800, 1600, 3200),
        },
    }
    grids = table[profile]
    arms = (
        _around(profile, "batch_size", [int(b) for b in grids["batch_size"]], "batch {:d}")
        + _around(profile, "initial_damping", grids["initial_damping"], "λ₀ = {:.0e}")
        + _around(
            profile,
            _OMEGA,
            grids["stepping"],
            "ω_inc = 1/ω_dec = {:.3g}",
            group="stepping_factor",
            transform=lambda v: _tied((v,))[0],
        )
        + _around(profile, "amplification", grids["amplification"], "k = {:.3g}")
        + _around(profile, "lr", grids["adam_lr"], "Adam lr = {:.0e}", ref="adam", group="adam_lr")
        + _around(
            profile,
            "batch_size",
            [int(b) for b in grids["adam_batch_size"]],
            "Adam batch {:d}",
            ref="adam",
            group="adam_batch_size",
        )
    )
    return Study(
        "sensitivity",
        profile,
        "Sensitivity of AdamQLR (and Adam) to one hyperparameter at a time",
        tuple(arms),
        description=(
            "Starting from the tuned AdamQLR configuration on Fashion-MNIST, vary the batch size, "
            "the initial damping, the stepping factor (omega_inc = 1/omega_dec) or the update "
            "amplification k, one at a time; and Adam's learning rate and batch size around "
            "tuned Adam."
        ),
        chapter="11_sensitivity",
        finalise=_cadence,
    )


def _kfac_sensitivity(profile: Profile) -> Study:
    table: dict[Profile, dict[str, tuple[float, ...]]] = {
        Profile.SMOKE: {"batch_size": (50, 100), "initial_damping": (1e-3, 1.0)},
        Profile.QUICK: {
            "batch_size": (100, 400, 1600, 3200),
            "initial_damping": _decades(-8, 0, 0.5),
        },
        Profile.PAPER: {
            "batch_size": (50, 100, 200, 400, 800, 1600, 3200),
            "initial_damping": _decades(-8, 0, 2),
        },
    }
    grids = table[profile]
    name = "kfac-sensitivity"
    # The tuned K-FAC is the one of untuned-vs-tuned (the same search, so the same runs), held
    # here so that this study does not wait for the rest of that one.
    arms = [_tuned("fashion-mnist", "kfac", profile)]
    arms += _around(
        profile,
        "batch_size",
        [int(b) for b in grids["batch_size"]],
        "K-FAC batch {:d}",
        ref="kfac",
        group="kfac_batch_size",
        study=name,
    )
    arms += _around(
        profile,
        "initial_damping",
        grids["initial_damping"],
        "K-FAC λ₀ = {:.0e}",
        ref="kfac",
        group="kfac_initial_damping",
        study=name,
    )
    return Study(
        name,
        profile,
        "Sensitivity of K-FAC to its batch size and initial damping",
        tuple(arms),
        description=(
            "Starting from the tuned K-FAC on Fashion-MNIST (adaptive step size, momentum and "
            "damping), vary the batch size or the initial damping lambda_0, one at a time, over "
            "the grids of AdamQLR's sensitivity study."
        ),
        chapter="11_sensitivity",
        finalise=_cadence,
    )


#: The batch-size mechanism study's variants of untuned AdamQLR: (id, label, overrides).
_MECHANISM_VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("default", "untuned", {}),
    ("clipped", "α_max = 0.1", {"lr_clip": 0.1}),
    # lambda = 1 throughout: the damping never adapts within the budget
    ("fixed-damping", "fixed λ = 1", {"initial_damping": 1.0, "damping_interval": 10**9}),
)
#: Variants that are another registered optimiser: (id, label, optimiser). rho on the next
#: mini-batch (adamqlr.heldout) is an option of the optimiser, not an override of the paper's
#: untuned entry, whose records keep their hyperparameters.
_MECHANISM_OPTIMISERS: tuple[tuple[str, str, str], ...] = (
    ("heldout-rho", "held-out ρ", "adamqlr-untuned-heldout"),
)


def _batch_mechanism(profile: Profile) -> Study:
    batches: tuple[int, ...] = {
        Profile.SMOKE: (50, 3200),
        Profile.QUICK: (50, 100, 200, 400, 800, 1600, 3200),
        Profile.PAPER: (50, 100, 200, 400, 800, 1600, 3200),
    }[profile]
    seeds: tuple[int, ...] = {
        Profile.SMOKE: (0,),
        Profile.QUICK: tuple(range(10)),
        Profile.PAPER: tuple(range(10)),
    }[profile]
    arms = [
        _fixed(
            "fashion-mnist",
            "adamqlr-untuned",
            profile,
            label=f"batch {batch}, {label}",
            id=f"adamqlr-untuned/batch={batch}/{variant}",
            fields={"batch_size": batch},
            overrides=overrides,
            group=variant,
            value=float(batch),
            seeds=seeds,
        )
        for variant, label, overrides in _MECHANISM_VARIANTS
        for batch in batches
    ]
    arms += [
        _fixed(
            "fashion-mnist",
            optimiser,
            profile,
            label=f"batch {batch}, {label}",
            id=f"adamqlr-untuned/batch={batch}/{variant}",
            fields={"batch_size": batch},
            group=variant,
            value=float(batch),
            seeds=seeds,
        )
        for variant, label, optimiser in _MECHANISM_OPTIMISERS
        for batch in batches
    ]
    return Study(
        "batch-mechanism",
        profile,
        "Why untuned AdamQLR diverges at small batch sizes",
        tuple(arms),
        description=(
            "Untuned AdamQLR on Fashion-MNIST at batch sizes 50 to 3200, ten seeds each: as "
            "published (adaptive damping from 1e-3, no clipping), with the step size clipped at "
            "alpha_max = 0.1, with the damping held at 1, and with rho measured on the next "
            "mini-batch (rho_data='next'). Each record keeps every step's "
            "g^T d, d^T G d, ||d||^2, alpha, lambda and rho."
        ),
        chapter="11_sensitivity",
        finalise=_cadence,
    )


_RUNTIME_OPTIMISERS = {
    "sgd": "SGD Minimal",
    "adam": "Adam",
    "adamqlr-untuned": "AdamQLR (Fisher)",
    "adamqlr-untuned-hessian": "AdamQLR (Hessian)",
    "kfac-untuned": "K-FAC",
}


def _runtime(profile: Profile) -> Study:
    p = _PROFILES[profile]
    arms = []
    for task, batches in p.runtime_tasks.items():
        for optimiser, label in _RUNTIME_OPTIMISERS.items():
            for batch in batches:
                arms.append(
                    Arm(
                        id=f"{task}/{optimiser}/batch={batch}",
                        label=label,
                        base=_spec(
                            task,
                            optimiser,
                            profile,
                            batch_size=batch,
                            steps=p.runtime_steps,
                            eval_every=p.runtime_steps,
                        ),
                        seeds=p.runtime_seeds,
                        group=optimiser,
                        value=float(batch),
                    )
                )
    return Study(
        "runtime",
        profile,
        "The cost of one optimisation step",
        tuple(arms),
        description=(
            f"{p.runtime_steps} steps of each optimiser at several batch sizes, evaluated only "
            "at the start and the end, to time one step (optimisation time only)."
        ),
        chapter="12_runtime",
        finalise=_cadence,
    )


_ROSENBROCK = {
    "sgd": "GD Minimal",
    "sgd-full": "GD Full",
    "adam": "Adam",
    "adamqlr-hessian": "AdamQLR (Hessian)",
    "adamqlr-untuned-hessian": "AdamQLR (Untuned, Hessian)",
    "kfac": "K-FAC",
}


def _rosenbrock(profile: Profile) -> Study:
    p = _PROFILES[profile]
    arms = []
    for optimiser, label in _ROSENBROCK.items():
        if optimiser in _FIXED_LABELS:
            arms.append(_fixed("rosenbrock", optimiser, profile, label=label, seeds=(0,)))
        else:
            arms.append(
                _tuned(
                    "rosenbrock",
                    optimiser,
                    profile,
                    label=label,
                    seeds=(0,),
                    n_trials=p.rosenbrock_trials,
                    objective="train_loss",
                    trial_task="rosenbrock-random-start",
                )
            )
    return Study(
        "rosenbrock",
        profile,
        "Trajectories on the Rosenbrock function",
        tuple(arms),
        description=(
            "200 full steps on the Rosenbrock function, written as least squares, from (1, -1): "
            "gradient descent with and without momentum, Adam and K-FAC, tuned by random search "
            "with successive halving on the final training loss, and AdamQLR with Hessian "
            "curvature, tuned and at its defaults; the chosen configuration is run once, as in "
            "the paper. As in the authors' code, each tuning trial starts from its own random "
            "point (each coordinate drawn from N(0, 1) by the trial's seed)."
        ),
        chapter="06_rosenbrock",
        finalise=_cadence,
    )


def _fixed_runtime(profile: Profile) -> Study:
    p = _PROFILES[profile]
    arms = []
    for task, cap in p.runtime_caps.items():
        for regime, metric in (("runtime-train", "train_loss"), ("runtime-val", "val_loss")):
            for optimiser in p.runtime_regime_optimisers:
                arms.append(
                    _tuned(
                        task,
                        optimiser,
                        profile,
                        id=f"{task}/{regime}/{optimiser}",
                        seeds=p.runtime_regime_seeds,
                        objective=metric,
                        fields={"seconds": cap},
                        group=regime,
                    )
                )
            arms.append(
                _fixed(
                    task,
                    "adamqlr-untuned",
                    profile,
                    id=f"{regime}/adamqlr-untuned",
                    fields={"seconds": cap},
                    seeds=p.runtime_regime_seeds,
                    group=regime,
                )
            )
    caps = ", ".join(f"{t} {c:g} s" for t, c in p.runtime_caps.items())
    return Study(
        "fixed-runtime",
        profile,
        "The fixed-runtime regimes: tuned on training or validation loss under a time cap",
        tuple(arms),
        description=(
            "The paper's second and third tuning regimes: no epoch limit, each run stopped at a "
            f"cap of optimisation time ({caps}; the paper: 900 s on its GPUs), tuned by random "
            "search with successive halving on the final mini-batch training loss or on the "
            "final validation loss; untuned AdamQLR under the same cap."
        ),
        chapter="07_untuned_vs_tuned",
        finalise=_cadence,
    )


def _factorial(profile: Profile) -> Study:
    p = _PROFILES[profile]
    arms = [
        _tuned(
            task,
            c.optimiser,
            profile,
            label=c.label,
            seeds=p.factorial_seeds,
            n_trials=p.factorial_trials,
            id=f"{task}/factorial/{c.key}",
            group=c.key,
        )
        for task in p.factorial_tasks
        for c in (*FACTORIAL_CELLS, *FACTORIAL_EXTRA_CELLS)
    ]
    return Study(
        "factorial",
        profile,
        "Which heuristic does the work: direction x step-size rule x damping",
        tuple(arms),
        description=(
            "Every cell of the factorial of adamqlr.studies.factorial (the gradient, Adam's or "
            "K-FAC's direction; a tuned constant learning rate, the quadratic model's alpha, or "
            "K-FAC's joint learning rate and momentum; no, fixed or adaptive damping), each tuned "
            "by a random search of the same size with successive halving, then repeated; and "
            "one extra row, AdamQLR with rho measured on the next mini-batch."
        ),
        chapter="15_which_heuristic",
        finalise=_cadence,
    )


#: Study name -> builder(profile).
STUDIES: dict[str, Callable[[Profile], Study]] = {
    "untuned-vs-tuned": _untuned_vs_tuned,
    "fisher-vs-hessian": _fisher_vs_hessian,
    "damping": _damping,
    "lr-clipping": _lr_clipping,
    "sensitivity": _sensitivity,
    "kfac-sensitivity": _kfac_sensitivity,
    "batch-mechanism": _batch_mechanism,
    "runtime": _runtime,
    "rosenbrock": _rosenbrock,
    "fixed-runtime": _fixed_runtime,
    "factorial": _factorial,
}

_CACHE: dict[tuple[str, str], Study] = {}


def study_names() -> list[str]:
    """Return the names of the studies, in chapter order."""
    return list(STUDIES)


def get_study(name: str, profile: Profile | str = Profile.QUICK) -> Study:
    """Return the study ``name`` under ``profile`` (a :class:`~adamqlr.profiles.Profile` or name).

    Raises:
        ValueError: For an unknown study or profile (the message lists the known ones).
    """
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; expected one of {study_names()}")
    profile = parse_profile(profile)
    key = (name, profile)
    if key not in _CACHE:
        _CACHE[key] = dataclasses.replace(STUDIES[name](profile), resolve=get_study)
    return _CACHE[key]


def _records_profile(profile: Profile) -> Profile:
    """Return the profile whose records a notebook under ``profile`` reads (smoke: quick's)."""
    return Profile.QUICK if profile is Profile.SMOKE else profile


def notebook_records(
    name: str,
    profile: Profile | str,
    *,
    compute: bool = False,
    store: ResultStore | None = None,
    device: str | None = None,
    fallback: Profile | str | None = None,
    task: str | None = None,
) -> StudyRecords:
    """Return the records an experiment chapter draws, under the notebook's profile.

    * ``quick`` and ``paper``: the study's records under that profile; if some are missing, they
      are computed when ``compute`` is true, and otherwise :class:`StudyIncomplete` stops the
      notebook, naming the missing runs and the command that makes them.
    * ``smoke`` (the test suite): the committed ``quick`` records, read as they are (records of
      an older algorithm version are accepted) and never computed. So the smoke run proves in
      seconds that every cell of the chapter runs on real records; the computing path is tested
      by the tests of :mod:`adamqlr.studies`, and staleness is caught when the book is built
      under ``quick``.

    Args:
        name: The study's name.
        profile: The notebook's profile.
        compute: Compute missing runs (``quick``/``paper`` only).
        store: The results store (default: the default store, ``results/`` of the checkout).
        device: Device for computed runs.
        fallback: A profile whose records stand in while those of ``profile`` are incomplete
            (and not computed), for a part of a chapter whose campaign is still under way; the
            returned ``study.profile`` says which profile the records are (the page must say so
            too). ``None``: no stand-in, :class:`StudyIncomplete` is raised.
        task: Only the arms of this task: a part of the study that stands on its own, so a
            chapter can read each task under the profile whose records are complete for it
            (with ``fallback``, the returned ``study.profile`` is that task's).

    Raises:
        ValueError: For an unknown study or profile, or a task the study has no arm of.
        StudyIncomplete: If records are missing and not computed (and, with a fallback, missing
            under the fallback profile too).
    """
    profile = parse_profile(profile)
    smoke = profile is Profile.SMOKE
    study = get_study(name, _records_profile(profile))
    if task is not None:
        study = select_arms(study, ArmFilter(tasks=(task,)))
    try:
        return obtain(
            study,
            store,
            compute=compute and not smoke,
            allow_stale=smoke,
            device=device,
        )
    except StudyIncomplete:
        if fallback is None or parse_profile(fallback) is study.profile:
            raise
        stand_in = _records_profile(parse_profile(fallback))
        if task is not None and task not in get_study(name, stand_in).tasks():
            raise  # the stand-in has no arm of this task: missing there too
        return notebook_records(name, fallback, store=store, device=device, task=task)


def notebook_records_by_task(
    name: str,
    profile: Profile | str,
    *,
    compute: bool = False,
    store: ResultStore | None = None,
    device: str | None = None,
    fallback: Profile | str | None = None,
    skip_incomplete: bool = False,
) -> dict[str, StudyRecords]:
    """Return :func:`notebook_records` of each task of the study, by task, in arm order.

    For a chapter whose campaign finishes one task at a time: with ``fallback``, each task is
    read under ``profile`` once its records are complete and under ``fallback`` until then, so
    each part's ``study.profile`` says which (and the page must say so too). A ``fallback`` equal
    to the notebook's profile adds no stand-in. With ``skip_incomplete``, a task complete under
    neither profile (for instance one the fallback's study does not run) is left out instead of
    stopping the notebook; the page must name it (``get_study(name, profile).tasks()`` lists all
    of them). Other arguments as for :func:`notebook_records`.

    Raises:
        ValueError: For an unknown study or profile.
        StudyIncomplete: If a task's records are missing and not computed (and, with a
            fallback, missing under the fallback profile too), unless ``skip_incomplete``.
    """
    parsed = parse_profile(profile)
    study = get_study(name, _records_profile(parsed))
    parts = {}
    for task in study.tasks():
        try:
            parts[task] = notebook_records(
                name, parsed, compute=compute, store=store, device=device, fallback=fallback,
                task=task,
            )  # fmt: skip
        except StudyIncomplete:
            if not skip_incomplete:
                raise
    return parts
