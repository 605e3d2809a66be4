"""The loss and its damped quadratic models along AdamQLR's direction (chapter "The step size").

:func:`probe_step` looks at the step an :class:`adamqlr.AdamQLR` is about to take on a batch,
without taking it: it forms the gradient ``g`` and Adam's direction ``d`` from the optimiser's
state by the formulas of the book (those of :mod:`adamqlr.algorithm`, not by calling the
optimiser), the curvatures ``d^T G d`` and ``d^T H d``, and the true loss
``f(theta - alpha d)`` on a grid of step sizes. A :class:`LineProbe` then evaluates the damped
quadratic model for any curvature and damping.
:func:`step_size_study` runs the chapter's experiment on Fashion-MNIST.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from adamqlr import algorithm
from adamqlr.curvature import ggn_quadratic, hessian_quadratic, loss_at
from adamqlr.lens.training import batch_stream, fashion_mnist_setup, record_steps
from adamqlr.losses import Loss
from adamqlr.optim import AdamQLR
from adamqlr.profiles import Profile, pick

__all__ = [
    "LineProbe",
    "StepSizeConfig",
    "StepSizeStudy",
    "adam_direction",
    "probe_step",
    "step_size_study",
]


def adam_direction(optimizer: AdamQLR, grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """Return the direction ``d = m_hat / (sqrt(v_hat) + eps)`` the next step of ``optimizer`` uses.

    The moments are advanced by one step with ``grads`` from the optimiser's stored state (zero
    before the first step), bias-corrected with the next step count, and divided; nothing is
    written back. The arithmetic is :mod:`adamqlr.algorithm`'s (its ``adam_moments``,
    ``bias_corrected`` and ``adam_direction``): the one definition of Adam's direction, the one
    the optimiser is tested against.

    Args:
        optimizer: An :class:`adamqlr.AdamQLR` with one parameter group.
        grads: The mini-batch gradient, by parameter name.

    Returns:
        The direction, by parameter name.

    Raises:
        ValueError: If the optimiser has several parameter groups or a gradient is missing.
    """
    if len(optimizer.param_groups) != 1:
        raise ValueError("invalid optimizer: expected one parameter group")
    group = optimizer.param_groups[0]
    betas, eps = tuple(group["betas"]), group["eps"]
    out = {}
    for name, p in zip(group["param_names"], group["params"], strict=True):
        if name not in grads:
            raise ValueError(f"invalid grads: no gradient for {name!r}")
        g = grads[name]
        state = optimizer.state.get(p, {})
        m, v = algorithm.adam_moments(
            state.get("exp_avg", torch.zeros_like(g)),
            state.get("exp_avg_sq", torch.zeros_like(g)),
            g,
            betas,
        )
        t = state.get("step", 0) + 1
        out[name] = algorithm.adam_direction(*algorithm.bias_corrected(m, v, t, betas), eps)
    return out


@dataclass(frozen=True)
class LineProbe:
    """The loss along ``theta - alpha d`` and everything its quadratic models need.

    Attributes:
        f0: The mini-batch loss at ``theta``.
        grad_dot_dir: ``g^T d``.
        sq_norm: ``||d||^2``.
        q_ggn: ``d^T G d``.
        q_hessian: ``d^T H d``.
        damping: The damping ``lambda`` the optimiser's next step uses.
        alphas: Step sizes at which the true loss was evaluated.
        losses: ``f(theta - alpha d)`` at ``alphas``.
        fd_step: The step ``h`` of the central differences below.
        fd_slope: ``(f(theta - h d) - f(theta + h d)) / (2 h)``, the slope of the loss along
            ``-d`` at ``alpha = 0`` by finite differences.
        fd_curvature: ``(f(theta - h d) - 2 f(theta) + f(theta + h d)) / h^2``, its curvature.
    """

    f0: float
    grad_dot_dir: float
    sq_norm: float
    q_ggn: float
    q_hessian: float
    damping: float
    alphas: np.ndarray
    losses: np.ndarray
    fd_step: float
    fd_slope: float
    fd_curvature: float

    def curvature(self, kind: str) -> float:
        """Return ``d^T C d`` for ``kind`` = ``"ggn"`` or ``"hessian"``.

        Raises:
            ValueError: For another ``kind``.
        """
        if kind not in ("ggn", "hessian"):
            raise ValueError(f"invalid curvature kind: {kind!r} (expected 'ggn' or 'hessian')")
        return self.q_ggn if kind == "ggn" else self.q_hessian

    def model(self, alphas: np.ndarray, kind: str, damping: float) -> np.ndarray:
        """Return ``M(alpha) = f0 - alpha g^T d + 1/2 alpha^2 (q + lambda ||d||^2)``."""
        alphas = np.asarray(alphas, dtype=float)
        q = self.curvature(kind) + damping * self.sq_norm
        return self.f0 - alphas * self.grad_dot_dir + 0.5 * alphas**2 * q

    def alpha_star(self, kind: str, damping: float) -> float:
        """Return the model's minimiser ``g^T d / (q + lambda ||d||^2)`` (NaN if it has none)."""
        q = self.curvature(kind) + damping * self.sq_norm
        return self.grad_dot_dir / q if q > 0 else math.nan

    def frame(self, kind: str, dampings: dict[str, float]) -> pd.DataFrame:
        """Return the true loss and the models for several dampings as one long table."""
        rows = [pd.DataFrame({"alpha": self.alphas, "value": self.losses, "curve": "true loss"})]
        for label, lam in dampings.items():
            rows.append(
                pd.DataFrame(
                    {
                        "alpha": self.alphas,
                        "value": self.model(self.alphas, kind, lam),
                        "curve": label,
                    }
                )
            )
        return pd.concat(rows, ignore_index=True)


def _grads(model: nn.Module, inputs: Any, targets: Tensor, loss: Loss) -> dict[str, Tensor]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with torch.enable_grad():
        value = loss.value(model(inputs), targets)
        grads = torch.autograd.grad(value, [p for _, p in named])
    return {n: g.detach() for (n, _), g in zip(named, grads, strict=True)}


def probe_step(
    optimizer: AdamQLR, inputs: Any, targets: Tensor, alphas: np.ndarray | None = None
) -> LineProbe:
    """Probe the step ``optimizer`` would take on ``(inputs, targets)``, without taking it.

    Args:
        optimizer: An :class:`adamqlr.AdamQLR`.
        inputs: The mini-batch inputs.
        targets: Its targets.
        alphas: Step sizes for the true loss (default: 61 values from ``-0.5 a`` to ``2.5 a``,
            ``a`` the undamped GGN step size).

    Returns:
        The :class:`LineProbe`. Model, parameters and optimiser state are unchanged.
    """
    model, loss = optimizer.model, optimizer.loss
    params = {n: p.detach() for n, p in model.named_parameters()}
    grads = _grads(model, inputs, targets, loss)
    direction = adam_direction(optimizer, grads)
    gtd = float(sum((grads[n].double() * direction[n].double()).sum() for n in direction))
    sq = float(sum(direction[n].double().pow(2).sum() for n in direction))
    q_g = float(ggn_quadratic(model, params, direction, inputs, targets, loss))
    q_h = float(hessian_quadratic(model, params, direction, inputs, targets, loss))
    f0 = float(loss_at(model, params, inputs, targets, loss))
    if alphas is None:
        a = gtd / q_g if q_g > 0 else 1.0
        alphas = np.linspace(-0.5 * a, 2.5 * a, 61)
    alphas = np.asarray(alphas, dtype=float)

    def along(a: float) -> float:
        moved = {n: params[n] - a * direction[n].to(params[n].dtype) for n in params}
        return float(loss_at(model, moved, inputs, targets, loss))

    losses = np.array([along(a) for a in alphas])
    h = 1e-3 * (gtd / q_g if q_g > 0 else 1.0)
    f_minus, f_plus = along(h), along(-h)  # theta - h d, theta + h d
    slope = (f_minus - f_plus) / (2 * h)
    curvature = (f_minus - 2 * f0 + f_plus) / (h * h)
    return LineProbe(f0, gtd, sq, q_g, q_h, optimizer.damping, alphas, losses, h, slope, curvature)


#: The configuration's fields that differ from its defaults, by profile.
_STEP_SIZE_SIZES: dict[Profile, dict[str, Any]] = {
    Profile.SMOKE: dict(batch_size=500, warm_steps=5),
    Profile.QUICK: {},
    Profile.PAPER: dict(warm_steps=100),
}


@dataclass(frozen=True)
class StepSizeConfig:
    """What the step-size chapter runs under one profile.

    Attributes:
        batch_size: Mini-batch size (3200: the paper's untuned AdamQLR).
        warm_steps: AdamQLR steps taken before the probed one.
        seed: Seed of the model and the batch order.
    """

    batch_size: int = 3200
    warm_steps: int = 30
    seed: int = 0

    @classmethod
    def for_profile(cls, profile: Profile | str) -> StepSizeConfig:
        """Return the configuration of ``profile``.

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        return cls(**pick(_STEP_SIZE_SIZES, profile))


@dataclass(frozen=True)
class StepSizeStudy:
    """The chapter's experiment.

    Attributes:
        config: The configuration.
        probes: Step number -> the probe taken just before that step (the first step, and the
            step after the warm-up).
        stats: Step number -> what AdamQLR then did on the probed batch (``StepStats.as_dict()``).
        trace: Every step's statistics.
        batches: Step number -> the probed mini-batch ``(inputs, targets)``.
        optimizer: The optimiser after the last step.
    """

    config: StepSizeConfig
    probes: dict[int, LineProbe]
    stats: dict[int, dict[str, Any]]
    trace: pd.DataFrame
    batches: dict[int, tuple[Tensor, Tensor]]
    optimizer: AdamQLR


def step_size_study(config: StepSizeConfig, profile: Profile | str) -> StepSizeStudy:
    """Train the Fashion-MNIST MLP with untuned AdamQLR (float64), probing two of its steps.

    The first step and step ``warm_steps + 1`` are probed (:func:`probe_step`) just before the
    optimiser takes them on the same batch.

    Args:
        config: What to run.
        profile: The Fashion-MNIST data profile.

    Returns:
        The :class:`StepSizeStudy`.
    """
    _, data, model = fashion_mnist_setup(profile, config.seed, dtype=torch.float64)
    batch_size = min(config.batch_size, len(data.train))
    stream = batch_stream(data.train, batch_size, config.seed, dtype=torch.float64)
    optimizer = AdamQLR(model, loss="cross_entropy")
    probed = (1, config.warm_steps + 1)
    probes: dict[int, LineProbe] = {}
    batches: dict[int, tuple[Tensor, Tensor]] = {}

    def probing() -> Iterator[tuple[Tensor, Tensor]]:
        for step in range(1, config.warm_steps + 2):
            inputs, targets = next(stream)
            if step in probed:
                probes[step] = probe_step(optimizer, inputs, targets)
                batches[step] = (inputs, targets)
            yield inputs, targets

    trace = record_steps(optimizer, probing(), config.warm_steps + 1)
    stats = {s: trace.iloc[s - 1].to_dict() for s in probed}
    return StepSizeStudy(config, probes, stats, trace, batches, optimizer)
