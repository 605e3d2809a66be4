"""Levenberg-Marquardt damping and the reduction ratio in practice (chapter "Damping").

* :func:`damping_study` trains the Fashion-MNIST MLP with AdamQLR under several damping
  policies (adaptive, frozen at a value, none) and records every step;
* :func:`quadratic_rho_run` runs AdamQLR on an exactly quadratic problem (linear least squares on
  UCI Energy, where the GGN is the Hessian), where the reduction ratio has a closed form.

A frozen damping is AdamQLR with the damping clipped to one value (``damping_bounds=(v, v)``), and
"no damping" is the same with ``v = 0``; both still compute ``rho`` (one forward pass per step),
so its trace can be compared across policies. (The paper's "Undamped" variant skips that pass;
its parameters follow the same path as ``v = 0``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from adamqlr.experiment.loop import evaluate
from adamqlr.lens.training import batch_stream, fashion_mnist_setup, record_steps
from adamqlr.losses import CrossEntropyLoss, SquaredErrorLoss
from adamqlr.optim import AdamQLR, QuadraticModelOptimizer
from adamqlr.profiles import Profile, pick
from adamqlr.results.aggregate import blown_up
from adamqlr.tasks import get_task

__all__ = [
    "DAMPING_POLICIES",
    "DampingConfig",
    "DampingStudy",
    "damping_study",
    "quadratic_rho_run",
]

#: Label -> AdamQLR keyword arguments of each damping policy (all else the untuned defaults).
DAMPING_POLICIES: dict[str, dict[str, Any]] = {
    "adaptive (untuned)": {},
    "frozen at 1e-3": {"initial_damping": 1e-3, "damping_bounds": (1e-3, 1e-3)},
    "frozen at 1": {"initial_damping": 1.0, "damping_bounds": (1.0, 1.0)},
    "none (0)": {"initial_damping": 0.0, "damping_bounds": (0.0, 0.0)},
}


#: The configuration's fields that differ from its defaults, by profile.
_DAMPING_SIZES: dict[Profile, dict[str, Any]] = {
    Profile.SMOKE: dict(regimes={"B = 500": (500, 8), "B = 50": (50, 40)}),
    Profile.QUICK: {},
    Profile.PAPER: dict(seeds=(0, 1, 2, 3, 4)),
}


@dataclass(frozen=True)
class DampingConfig:
    """What the damping chapter runs under one profile.

    Attributes:
        regimes: Label -> ``(batch_size, steps)``. The defaults are the paper's untuned batch
            size 3200 for ten epochs (156 steps), and batch size 50 (Fashion-MNIST's default for
            the baselines, and the smallest in the paper's search space) for 400 steps.
        seeds: Seeds; each policy runs once per seed and regime (same initial weights and batches
            across policies for a given seed and regime).
        policies: Labels of :data:`DAMPING_POLICIES` to run.
        heldout_size: Validation images on which every step's loss change is also measured.
    """

    regimes: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {"B = 3200": (3200, 156), "B = 50": (50, 400)}
    )
    seeds: tuple[int, ...] = (0,)
    policies: tuple[str, ...] = field(default_factory=lambda: tuple(DAMPING_POLICIES))
    heldout_size: int = 2000

    @classmethod
    def for_profile(cls, profile: Profile | str) -> DampingConfig:
        """Return the configuration of ``profile``.

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        return cls(**pick(_DAMPING_SIZES, profile))


@dataclass(frozen=True)
class DampingStudy:
    """The chapter's runs.

    Attributes:
        config: The configuration.
        trace: Every step of every run: ``regime``, ``label`` (the policy), ``seed``,
            ``iteration``, the :class:`adamqlr.StepStats` fields, and ``heldout_change`` and
            ``rho_heldout``: the change of the loss on held-out validation images over the step,
            and its ratio to the change the mini-batch model predicted.
        final: One row per run: ``regime``, ``label``, ``seed``, the step at which the loss first
            became non-finite or exceeded 1e6 (``diverged``, NaN if never), the number of rejected
            steps, the mean training-batch loss over the last tenth of the steps, and the loss over
            the whole test split.
    """

    config: DampingConfig
    trace: pd.DataFrame
    final: pd.DataFrame


def damping_study(config: DampingConfig, profile: Profile | str) -> DampingStudy:
    """Train the Fashion-MNIST MLP with AdamQLR under each damping policy and regime.

    Args:
        config: What to run.
        profile: The Fashion-MNIST data profile.

    Returns:
        The :class:`DampingStudy`.

    Raises:
        ValueError: If a policy label is unknown.
    """
    unknown = [p for p in config.policies if p not in DAMPING_POLICIES]
    if unknown:
        raise ValueError(f"invalid policies: {unknown} (expected some of {list(DAMPING_POLICIES)})")
    traces, finals = [], []
    for seed in config.seeds:
        task, data, _ = fashion_mnist_setup(profile, seed)
        held_x = data.val.inputs[: config.heldout_size]
        held_y = data.val.targets[: config.heldout_size]
        for regime, (batch_size, steps) in config.regimes.items():
            batch_size = min(batch_size, len(data.train))
            for label in config.policies:
                model = task.make_model(seed, profile)
                optimizer = AdamQLR(model, loss="cross_entropy", **DAMPING_POLICIES[label])
                stream = batch_stream(data.train, batch_size, seed)
                heldout = _HeldOut(model, held_x, held_y)
                trace = record_steps(optimizer, stream, steps, label=label, callback=heldout)
                trace.insert(0, "regime", regime)
                trace.insert(2, "seed", seed)
                traces.append(trace)
                bad = trace.index[blown_up(trace["loss"])]
                tail = trace["loss"].iloc[-max(1, steps // 10) :]
                finals.append(
                    {
                        "regime": regime,
                        "label": label,
                        "seed": seed,
                        "diverged": float(trace.loc[bad[0], "iteration"]) if len(bad) else np.nan,
                        "rejected steps": int((~trace["accepted"]).sum()),
                        "final batch loss": float(tail.mean()),
                        "test loss": evaluate(
                            model,
                            data.test,
                            CrossEntropyLoss(),
                            device=torch.device("cpu"),
                            chunk=5000,
                            accuracy=False,
                        )["loss"],
                    }
                )
    trace = pd.concat(traces, ignore_index=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        trace["rho_heldout"] = trace["heldout_change"] / trace["predicted_change"]
    return DampingStudy(config, trace, pd.DataFrame(finals))


class _HeldOut:
    """Callback for :func:`record_steps`: the loss change of each step on held-out data."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.model, self.inputs, self.targets = model, inputs, targets
        self.loss = CrossEntropyLoss()
        self.previous = self._value()

    def _value(self) -> float:
        with torch.no_grad():
            return float(self.loss.value(self.model(self.inputs), self.targets))

    def __call__(self, iteration: int, optimizer: QuadraticModelOptimizer) -> dict[str, Any]:
        del iteration, optimizer
        now = self._value()
        change, self.previous = now - self.previous, now
        return {"heldout_change": change}


def quadratic_rho_run(profile: Profile | str, steps: int = 40, seed: int = 0) -> pd.DataFrame:
    """Run untuned AdamQLR on linear least squares (UCI Energy, full batch, float64).

    A linear model with half the squared error has an exactly quadratic loss whose Hessian is its
    GGN, so the quadratic model along ``d`` is exact up to the damping term.

    Args:
        profile: The UCI Energy data profile.
        steps: Number of steps.
        seed: Seed of the initial weights.

    Returns:
        Every step's statistics (:func:`adamqlr.lens.training.record_steps`).
    """
    data = get_task("uci-energy").load_data(profile)
    x = data.train.inputs.double()
    t = data.train.targets.double()
    torch.manual_seed(seed)
    model = nn.Linear(x.shape[1], t.shape[1]).double()
    optimizer = AdamQLR(model, loss=SquaredErrorLoss())

    def full_batch():
        while True:
            yield x, t

    return record_steps(optimizer, full_batch(), steps)
