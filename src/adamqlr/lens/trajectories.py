"""Optimiser paths on the Rosenbrock function (the paper's demonstration, chapter "Rosenbrock").

Every run minimises the least-squares form of :class:`adamqlr.tasks.rosenbrock.Rosenbrock` (the
loss is ``f / 4``) in float64 for a fixed number of full steps from a fixed start, and records the
position after every step together with, for the AdamQLR variants, the step size ``alpha``, the
damping ``lambda`` and the reduction ratio ``rho``.

Gradient descent and Adam have a learning rate that the paper tuned (ASHA, 200 samples, on the
final training loss, from random starts). Here :func:`tune_learning_rate` picks it from a log grid
by the final loss of the plotted run itself, which is at least as generous to them. AdamQLR runs
untuned, with the paper's defaults.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from adamqlr.kfac import KFAC
from adamqlr.losses import SquaredErrorLoss
from adamqlr.optim import AdamQLR
from adamqlr.profiles import Profile, pick
from adamqlr.tasks.rosenbrock import START, RosenbrockResiduals

__all__ = [
    "OPTIMIZERS",
    "RosenbrockConfig",
    "RosenbrockStudy",
    "Trajectory",
    "rosenbrock_study",
    "run_trajectory",
    "tune_learning_rate",
]

#: Optimisers :func:`run_trajectory` knows: plain gradient descent, gradient descent with
#: heavy-ball momentum, Adam (all from ``torch.optim``), AdamQLR and K-FAC.
OPTIMIZERS: tuple[str, ...] = ("gd", "gd-momentum", "adam", "adamqlr", "kfac")
_QUADRATIC_MODEL_OPTIMIZERS = ("adamqlr", "kfac")


@dataclass(frozen=True)
class Trajectory:
    """One optimiser's path.

    Attributes:
        label: Legend label.
        optimizer: One of :data:`OPTIMIZERS`.
        settings: The optimiser's settings.
        x: Positions along x, the start first (length ``steps + 1``).
        y: Positions along y.
        loss: The loss ``f / 4`` at each position.
        lr: Step size per step (AdamQLR's ``alpha``, K-FAC's adaptive learning rate, or the fixed
            learning rate of the others).
        damping: Damping after each step (NaN for optimisers without one).
        rho: Reduction ratio of each step (NaN where not computed).
        accepted: Whether each step moved the parameters.
    """

    label: str
    optimizer: str
    settings: dict[str, Any]
    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    lr: np.ndarray
    damping: np.ndarray
    rho: np.ndarray
    accepted: np.ndarray

    @property
    def steps(self) -> int:
        """Number of steps taken."""
        return len(self.x) - 1

    @property
    def final_loss(self) -> float:
        """The loss at the last position."""
        return float(self.loss[-1])

    def distance_to_minimum(self, a: float = 1.0) -> np.ndarray:
        """Euclidean distance of every position from the minimum ``(a, a^2)``."""
        return np.hypot(self.x - a, self.y - a * a)

    def frame(self) -> pd.DataFrame:
        """Return the per-step traces as a long table (step 0 is the start)."""
        pad = np.array([math.nan])
        return pd.DataFrame(
            {
                "label": self.label,
                "step": np.arange(len(self.x)),
                "x": self.x,
                "y": self.y,
                "loss": self.loss,
                "lr": np.concatenate([pad, self.lr]),
                "damping": np.concatenate([pad, self.damping]),
                "rho": np.concatenate([pad, self.rho]),
                "accepted": np.concatenate([[True], self.accepted]),
            }
        )


def _torch_optimizer(
    optimizer: str, model: RosenbrockResiduals, settings: dict[str, Any]
) -> torch.optim.Optimizer:
    if optimizer == "gd":
        return torch.optim.SGD(model.parameters(), lr=settings["lr"])
    if optimizer == "gd-momentum":
        return torch.optim.SGD(
            model.parameters(), lr=settings["lr"], momentum=settings.get("momentum", 0.9)
        )
    return torch.optim.Adam(
        model.parameters(), lr=settings["lr"], betas=settings.get("betas", (0.9, 0.999))
    )


def run_trajectory(
    optimizer: str,
    *,
    steps: int = 200,
    start: tuple[float, float] = START,
    label: str | None = None,
    a: float = 1.0,
    b: float = 100.0,
    **settings: Any,
) -> Trajectory:
    """Run one optimiser on the least-squares Rosenbrock problem and record its path.

    Args:
        optimizer: One of :data:`OPTIMIZERS`.
        steps: Number of full steps (>= 1).
        start: Initial ``(x, y)``.
        label: Legend label (default: ``optimizer``).
        a: Rosenbrock's ``a``.
        b: Rosenbrock's ``b``.
        **settings: ``lr`` (and ``momentum`` for ``"gd-momentum"``, ``betas`` for ``"adam"``) for
            the torch optimisers; for ``"adamqlr"``, any keyword argument of
            :class:`adamqlr.AdamQLR`.

    Returns:
        The :class:`Trajectory`. A run that reaches a non-finite loss stops there and its remaining
        positions are NaN.

    Raises:
        ValueError: For an unknown optimiser, ``steps < 1``, or a missing or non-positive ``lr``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"invalid steps: {steps!r} (expected an int >= 1)")
    if optimizer not in _QUADRATIC_MODEL_OPTIMIZERS and not (settings.get("lr", 0) > 0):
        raise ValueError(f"invalid lr: {settings.get('lr')!r} (expected > 0 for {optimizer})")
    model = RosenbrockResiduals(start=start, a=a, b=b, dtype=torch.float64)
    inputs = torch.zeros(1, 1, dtype=torch.float64)
    targets = torch.zeros(2, 1, dtype=torch.float64)
    loss = SquaredErrorLoss()
    xs = np.full(steps + 1, math.nan)
    ys = np.full(steps + 1, math.nan)
    lr, damping, rho = (np.full(steps, math.nan) for _ in range(3))
    accepted = np.zeros(steps, dtype=bool)
    xs[0], ys[0] = model.position()
    if optimizer == "adamqlr":
        opt: Any = AdamQLR(model, loss=loss, **settings)
    elif optimizer == "kfac":
        opt = KFAC(model, loss=loss, **settings)
    else:
        opt = _torch_optimizer(optimizer, model, settings)
    with warnings.catch_warnings():
        # Rejected steps (non-positive Hessian curvature for AdamQLR; a zero gradient at the exact
        # minimum for K-FAC) are recorded, not shouted.
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(steps):
            if optimizer in _QUADRATIC_MODEL_OPTIMIZERS:
                stats = opt.step(inputs, targets)
                lr[i], damping[i], rho[i] = stats.lr, stats.damping, stats.rho
                accepted[i] = stats.accepted
            else:
                opt.zero_grad()
                value = loss.value(model(inputs), targets)
                if not torch.isfinite(value):
                    break
                value.backward()
                opt.step()
                lr[i], accepted[i] = settings["lr"], True
            xs[i + 1], ys[i + 1] = model.position()
            if not (math.isfinite(xs[i + 1]) and math.isfinite(ys[i + 1])):
                break
    with np.errstate(over="ignore", invalid="ignore"):
        values = ((a - xs) ** 2 + b * (ys - xs**2) ** 2) / 4.0
    return Trajectory(
        label=label or optimizer,
        optimizer=optimizer,
        settings=dict(settings),
        x=xs,
        y=ys,
        loss=values,
        lr=lr,
        damping=damping,
        rho=rho,
        accepted=accepted,
    )


def tune_learning_rate(
    optimizer: str,
    lrs: Sequence[float],
    *,
    steps: int = 200,
    start: tuple[float, float] = START,
    grid: dict[str, Sequence[Any]] | None = None,
) -> pd.DataFrame:
    """Run ``optimizer`` for every learning rate (and every combination of ``grid``).

    Args:
        optimizer: ``"gd"``, ``"gd-momentum"`` or ``"adam"``.
        lrs: Learning rates to try.
        steps: Steps per run.
        start: Start of every run.
        grid: Further settings to cross with the learning rates, e.g. ``{"momentum": [0.5, 0.9]}``.

    Returns:
        One row per run, columns ``lr``, the grid's keys and ``final_loss`` (``inf`` for a run that
        diverged), sorted by final loss: the first row is the best.

    Raises:
        ValueError: If ``optimizer`` is ``"adamqlr"`` (it has no learning rate) or ``lrs`` is empty.
    """
    if optimizer in _QUADRATIC_MODEL_OPTIMIZERS:
        raise ValueError(f"invalid optimizer: {optimizer!r} (it has no learning rate to tune)")
    if len(lrs) == 0:
        raise ValueError("invalid lrs: empty")
    grid = grid or {}
    rows = []
    for values in itertools.product(lrs, *grid.values()):
        settings = dict(zip(["lr", *grid], values, strict=True))
        traj = run_trajectory(optimizer, steps=steps, start=start, **settings)
        final = traj.final_loss
        rows.append({**settings, "final_loss": final if math.isfinite(final) else math.inf})
    return pd.DataFrame(rows).sort_values("final_loss", kind="stable").reset_index(drop=True)


def _log_grid(low: float, high: float, num: int) -> tuple[float, ...]:
    return tuple(float(v) for v in np.logspace(low, high, num))


#: The configuration's fields that differ from its defaults, by profile.
_ROSENBROCK_SIZES: dict[Profile, dict[str, Any]] = {
    Profile.SMOKE: dict(lrs=_log_grid(-3, -1.5, 4), momenta=(0.9,)),
    Profile.QUICK: {},
    Profile.PAPER: dict(lrs=_log_grid(-6, 0, 61), momenta=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)),
}


@dataclass(frozen=True)
class RosenbrockConfig:
    """What the Rosenbrock chapter runs under one profile.

    Attributes:
        steps: Steps per run (the paper: 200).
        start: Start of the plotted runs (the paper: ``(1, -1)``).
        lrs: Learning-rate grid for gradient descent and Adam.
        momenta: Momentum grid for gradient descent with momentum.
    """

    steps: int = 200
    start: tuple[float, float] = START
    lrs: tuple[float, ...] = field(default_factory=lambda: _log_grid(-5, 0, 26))
    momenta: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)

    def describe(self) -> str:
        """Return a one-line description for the page."""
        return (
            f"{self.steps} steps from {self.start}; {len(self.lrs)} learning rates from "
            f"{min(self.lrs):.0e} to {max(self.lrs):.0e}; momenta {self.momenta}"
        )

    @classmethod
    def for_profile(cls, profile: Profile | str) -> RosenbrockConfig:
        """Return the configuration of ``profile`` (all are cheap; they differ in grid density).

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        return cls(**pick(_ROSENBROCK_SIZES, profile))


@dataclass(frozen=True)
class RosenbrockStudy:
    """The chapter's runs.

    Attributes:
        config: The configuration used.
        trajectories: Label -> trajectory, in plotting order.
        tuning: Label -> the grid search table of that baseline (best first).
    """

    config: RosenbrockConfig
    trajectories: dict[str, Trajectory]
    tuning: dict[str, pd.DataFrame]

    def frame(self) -> pd.DataFrame:
        """Return every trajectory's traces in one long table."""
        return pd.concat([t.frame() for t in self.trajectories.values()], ignore_index=True)

    def summary(self) -> pd.DataFrame:
        """Return one row per optimiser: settings, final loss, distance to (1, 1), rejections."""
        rows = []
        for label, t in self.trajectories.items():
            dist = t.distance_to_minimum()
            close = np.flatnonzero(dist < 1e-2)
            rows.append(
                {
                    "optimiser": label,
                    "settings": ", ".join(
                        f"{k}={v:.3g}" for k, v in t.settings.items() if isinstance(v, float)
                    )
                    or "defaults",
                    "final loss f/4": t.final_loss,
                    "final distance to (1, 1)": float(dist[-1]),
                    "first step within 0.01": int(close[0]) if close.size else None,
                    "rejected steps": int((~t.accepted).sum()),
                }
            )
        return pd.DataFrame(rows)


def rosenbrock_study(config: RosenbrockConfig) -> RosenbrockStudy:
    """Run the chapter's optimisers: tuned GD, GD with momentum and Adam; untuned AdamQLR and K-FAC.

    AdamQLR runs with the paper's untuned defaults, once with the GGN of the least-squares form
    (``curvature="fisher"``, which the official code could not use here) and once with the Hessian
    (what the paper's figure shows). K-FAC runs with its untuned defaults (adaptive learning rate,
    momentum and damping, ``lambda_0 = 1``; its sampled targets from its own generator, seed 0).

    Args:
        config: What to run.

    Returns:
        The :class:`RosenbrockStudy`.
    """
    kw: dict[str, Any] = dict(steps=config.steps, start=config.start)
    tuning = {
        "GD": tune_learning_rate("gd", config.lrs, **kw),
        "GD + momentum": tune_learning_rate(
            "gd-momentum", config.lrs, grid={"momentum": config.momenta}, **kw
        ),
        "Adam": tune_learning_rate("adam", config.lrs, **kw),
    }
    kinds = {"GD": "gd", "GD + momentum": "gd-momentum", "Adam": "adam"}
    trajectories: dict[str, Trajectory] = {}
    for label, table in tuning.items():
        best: dict[str, Any] = {k: float(v) for k, v in table.iloc[0].items() if k != "final_loss"}
        trajectories[label] = run_trajectory(kinds[label], label=label, **kw, **best)
    for label, curvature in (
        ("AdamQLR (Untuned, GGN)", "fisher"),
        ("AdamQLR (Untuned, Hessian)", "hessian"),
    ):
        trajectories[label] = run_trajectory("adamqlr", label=label, curvature=curvature, **kw)
    trajectories["K-FAC (Untuned)"] = run_trajectory("kfac", label="K-FAC (Untuned)", seed=0, **kw)
    return RosenbrockStudy(config=config, trajectories=trajectories, tuning=tuning)
