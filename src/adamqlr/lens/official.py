"""The authors' AdamQLR step, written plainly: no rejected steps, no guards.

This module reproduces, in torch, one step of ``WrappedQuadraticLROptimiser.step`` with the
``kfac`` damping algorithm and its training loop's stopping rule, as in the authors' JAX code
(github.com/rmclarke/AdamThroughASecondOrderLens at commit
``ab3dea570f04561b9dce1cb6612041cd5ca66560``), for the untuned configuration
(``AdamQLR_NoHPO_NoLRClipping``: Fisher curvature, lambda_0 = 1e-3, factors 0.5 / 2.0, lambda
clipped below at 1e-8 and not above, no step-size clipping, Adam's Optax defaults). One step:

1. ``f0`` and ``g`` at ``theta`` on the mini-batch;
2. Adam's moments and ``d = m_hat / (sqrt(v_hat) + eps)`` (count incremented first);
3. ``q = d^T C d`` at the old ``theta`` on the same batch, ``Q = q + lambda ||d||^2`` with the
   previous step's ``lambda``;
4. ``a = g^T d``, ``step_size = -a / Q`` (``alpha = a / Q``), ``theta' = theta + step_size d``;
5. ``f1`` at ``theta'`` on the same batch, ``M = 1/2 step_size^2 Q + step_size a``,
   ``rho = (f1 - f0) / M``; ``lambda <- 0.5 lambda`` if ``rho > 3/4``, ``2 lambda`` if
   ``rho < 1/4`` (strict comparisons: a NaN ``rho`` leaves ``lambda`` alone), then
   ``lambda <- max(lambda, 1e-8)``.

Nothing is checked: a step is never rejected, ``Q <= 0`` or a non-finite value goes straight
into the update. The scalars (``a``, ``||d||^2``, ``Q``, the step size, ``M``, ``rho``,
``lambda``) are 0-d tensors of the parameters' dtype, as in the authors' float32 JAX code, so a
division by zero gives ``inf`` or ``NaN`` as it does there. The training loop
(:func:`run_official`) stops after the first step whose pre-update training loss, or whose
validation or test loss at the new parameters, is not finite.

:func:`official_step` is a pure function of explicit values, like
:func:`adamqlr.algorithm.adamqlr_iteration`, whose Adam pieces it reuses; the step acceptance,
``rho`` and ``lambda`` follow the authors' code, not :class:`adamqlr.AdamQLR`. Not reproduced:
JAX's random permutation of the training set (the caller supplies the batches), the NaN rows the
authors pad an incomplete last batch with, and XLA's float32 kernels (torch's give other
roundings).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call

from adamqlr.algorithm import adam_direction, adam_moments, bias_corrected
from adamqlr.curvature import ggn_quadratic, hessian_quadratic, loss_at
from adamqlr.losses import Loss

__all__ = [
    "OfficialRun",
    "OfficialSettings",
    "OfficialState",
    "OfficialStats",
    "kfac_damping_update",
    "official_step",
    "run_official",
]

#: The reasons :func:`run_official` stops for.
STOP_REASONS = ("steps", "nonfinite_train_loss", "nonfinite_val_loss", "nonfinite_test_loss")


@dataclass(frozen=True)
class OfficialSettings:
    """The settings of the authors' AdamQLR with ``kfac`` damping (defaults: untuned).

    Attributes:
        curvature: ``"fisher"`` (the GGN, one JVP) or ``"hessian"``.
        betas: Adam's ``(b1, b2)``.
        eps: Adam's ``eps``, added outside the square root (``eps_root`` is 0).
        initial_damping: ``lambda_0``.
        damping_decrease: ``omega_dec``, applied when ``rho > 3/4``.
        damping_increase: ``omega_inc``, applied when ``rho < 1/4``.
        damping_min: Lower clip on ``lambda`` (``None``: none). There is no upper clip.
    """

    curvature: str = "fisher"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    initial_damping: float = 1e-3
    damping_decrease: float = 0.5
    damping_increase: float = 2.0
    damping_min: float | None = 1e-8

    def __post_init__(self) -> None:
        if self.curvature not in ("fisher", "hessian"):
            raise ValueError(
                f"invalid curvature: {self.curvature!r} (expected one of fisher, hessian)"
            )
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"invalid betas: {self.betas!r} (expected each in [0, 1))")
        if not self.eps >= 0.0:
            raise ValueError(f"invalid eps: {self.eps!r} (expected >= 0)")
        if not (math.isfinite(self.initial_damping) and self.initial_damping >= 0.0):
            raise ValueError(
                f"invalid initial_damping: {self.initial_damping!r} (expected finite, >= 0)"
            )
        if not (self.damping_decrease > 0.0 and self.damping_increase > 0.0):
            raise ValueError(
                f"invalid damping factors: {(self.damping_decrease, self.damping_increase)!r} "
                "(expected both > 0)"
            )


@dataclass(frozen=True)
class OfficialState:
    """What the authors' step carries to the next one.

    Attributes:
        count: Adam's step count (every step counts: none is rejected).
        damping: ``lambda``, a 0-d tensor in the parameters' dtype.
        mu: Adam's first moments by parameter name.
        nu: Adam's second moments by parameter name.
    """

    count: int
    damping: Tensor
    mu: dict[str, Tensor] = field(default_factory=dict)
    nu: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def initial(cls, params: Mapping[str, Tensor], settings: OfficialSettings) -> OfficialState:
        """Return the state before the first step (zero moments, ``lambda_0``)."""
        if not params:
            raise ValueError("invalid params: expected at least one parameter")
        first = next(iter(params.values()))
        return cls(
            0,
            torch.tensor(settings.initial_damping, dtype=first.dtype),
            {n: torch.zeros_like(p) for n, p in params.items()},
            {n: torch.zeros_like(p) for n, p in params.items()},
        )


@dataclass(frozen=True)
class OfficialStats:
    """What one step of the authors' code computed (as floats).

    Attributes:
        loss: ``f0``, the pre-update mini-batch loss (their ``Loss/Training``).
        alpha: ``a / Q`` (their logged ``learning_rate``).
        damping: ``lambda`` after this step's update.
        damping_used: ``lambda`` that entered ``Q``.
        rho: The reduction ratio.
        curvature: ``q = d^T C d``.
        damped_curvature: ``Q = q + lambda ||d||^2``.
        grad_dot_dir: ``a = g^T d``.
        direction_sq_norm: ``||d||^2``.
        model_change: ``M``.
        trial_loss: ``f1``, the loss at the new parameters on the same batch.
        step: Adam's count after this step.
    """

    loss: float
    alpha: float
    damping: float
    damping_used: float
    rho: float
    curvature: float
    damped_curvature: float
    grad_dot_dir: float
    direction_sq_norm: float
    model_change: float
    trial_loss: float
    step: int

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a dict."""
        return asdict(self)


def kfac_damping_update(damping: Tensor, rho: Tensor, settings: OfficialSettings) -> Tensor:
    """Return ``lambda`` after the authors' ``kfac`` rule for a step with ratio ``rho``.

    ``omega_dec lambda`` if ``rho > 3/4``, else ``omega_inc lambda`` if ``rho < 1/4``, else
    unchanged (so a NaN ``rho`` leaves it unchanged); then clipped below at ``damping_min``.
    """
    if bool(rho > 0.75):
        damping = damping * settings.damping_decrease
    elif bool(rho < 0.25):
        damping = damping * settings.damping_increase
    if settings.damping_min is not None:
        damping = torch.clamp(damping, min=settings.damping_min)
    return damping


def _tree_sum(values: Iterable[Tensor]) -> Tensor:
    return torch.stack([v.sum() for v in values]).sum()


def official_step(
    model: nn.Module,
    params: Mapping[str, Tensor],
    state: OfficialState,
    batch: tuple[Any, Tensor],
    settings: OfficialSettings,
    loss: Loss,
) -> tuple[dict[str, Tensor], OfficialState, OfficialStats]:
    """Return the parameters, state and statistics after one step of the authors' AdamQLR.

    Args:
        model: The network (its own parameters are replaced by ``params`` for every pass; it is
            not modified).
        params: Parameter values by name: all those the step updates, each with a gradient.
        state: The state after the previous step (:meth:`OfficialState.initial` at first).
        batch: ``(inputs, targets)``.
        settings: The settings.
        loss: The loss.

    Returns:
        ``(new_params, new_state, stats)``. The parameters always move (possibly to non-finite
        values).

    Raises:
        ValueError: If ``params`` is empty or a parameter gets no gradient.
    """
    if not params:
        raise ValueError("invalid params: expected at least one parameter")
    inputs, targets = batch
    names = list(params)
    dtype = next(iter(params.values())).dtype

    # 1. Loss and gradient at theta.
    leaves = {n: params[n].detach().requires_grad_(True) for n in names}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    with torch.enable_grad():
        f0 = loss.value(functional_call(model, (leaves, buffers), (inputs,)), targets)
        grads = torch.autograd.grad(f0, [leaves[n] for n in names], allow_unused=True)
    missing = [n for n, g in zip(names, grads, strict=True) if g is None]
    if missing:
        raise ValueError(f"invalid params: {missing!r} get no gradient from the loss")
    g = {n: gr.detach() for n, gr in zip(names, grads, strict=True)}
    f0 = f0.detach()

    # 2. Adam (Optax's scale_by_adam: the count is incremented before the bias correction).
    count = state.count + 1
    mu, nu, d = {}, {}, {}
    for n in names:
        mu[n], nu[n] = adam_moments(state.mu[n], state.nu[n], g[n], settings.betas)
        d[n] = adam_direction(*bias_corrected(mu[n], nu[n], count, settings.betas), settings.eps)

    # 3. Curvature along d at the old theta, damped with the previous lambda.
    at = {n: params[n].detach() for n in names}
    if settings.curvature == "fisher":
        q = ggn_quadratic(model, at, d, inputs, targets, loss)
    else:
        q = hessian_quadratic(model, at, d, inputs, targets, loss)
    q = q.detach().to(dtype)
    sq_norm = _tree_sum(d[n] * d[n] for n in names)
    damped = q + state.damping * sq_norm

    # 4. Step size and update: no guard of any kind.
    a = _tree_sum(g[n] * d[n] for n in names)
    step_size = -a / damped
    new_params = {n: at[n] + step_size * d[n] for n in names}

    # 5. kfac damping: the trial loss on the same batch, rho, lambda (never a rejection).
    f1 = loss_at(model, new_params, inputs, targets, loss).to(dtype)
    model_change = 0.5 * step_size * step_size * damped + step_size * a
    rho = (f1 - f0) / model_change
    damping = kfac_damping_update(state.damping, rho, settings)

    new_state = OfficialState(count, damping, mu, nu)
    stats = OfficialStats(
        loss=float(f0),
        alpha=float(-step_size),
        damping=float(damping),
        damping_used=float(state.damping),
        rho=float(rho),
        curvature=float(q),
        damped_curvature=float(damped),
        grad_dot_dir=float(a),
        direction_sq_norm=float(sq_norm),
        model_change=float(model_change),
        trial_loss=float(f1),
        step=count,
    )
    return new_params, new_state, stats


@dataclass(frozen=True)
class OfficialRun:
    """A run of the authors' training loop.

    Attributes:
        frame: One row per step taken: ``iteration`` (1-based), the fields of
            :class:`OfficialStats`, and ``val_loss``/``test_loss`` at the new parameters for
            each held-out set given.
        stop_reason: One of ``"steps"`` (the step limit, or the batches ran out),
            ``"nonfinite_train_loss"``, ``"nonfinite_val_loss"``, ``"nonfinite_test_loss"``.
        stop_step: The step after which the run stopped on a non-finite loss (``None`` when it
            did not).
        params: The parameters at the end.
        state: The optimiser state at the end.
    """

    frame: pd.DataFrame
    stop_reason: str
    stop_step: int | None
    params: dict[str, Tensor]
    state: OfficialState


def run_official(
    model: nn.Module,
    batches: Iterable[tuple[Any, Tensor]],
    steps: int,
    loss: Loss,
    *,
    settings: OfficialSettings | None = None,
    held_out: Mapping[str, tuple[Any, Tensor]] | None = None,
) -> OfficialRun:
    """Train ``model``'s parameters with the authors' step until ``steps`` or a non-finite loss.

    After each step, as the authors' loop does, the pre-update training loss and the loss on
    each held-out set (``"val"``, ``"test"``) at the new parameters are checked, and the run
    ends after the first step where one of them is not finite.

    Args:
        model: The network; its parameters are the starting point and are not modified.
        batches: The mini-batches, in order.
        steps: The largest number of steps (>= 1).
        loss: The loss.
        settings: The settings (default: the untuned configuration).
        held_out: Held-out sets by name (``"val"``, ``"test"``), each ``(inputs, targets)``,
            evaluated after every step (none: only the training loss is checked).

    Returns:
        The :class:`OfficialRun`.

    Raises:
        ValueError: If ``steps`` is not a positive int or a held-out name is not val or test.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"invalid steps: {steps!r} (expected an int >= 1)")
    held = dict(held_out or {})
    unknown = sorted(set(held) - {"val", "test"})
    if unknown:
        raise ValueError(f"invalid held_out names: {unknown!r} (expected val, test)")
    settings = settings if settings is not None else OfficialSettings()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = OfficialState.initial(params, settings)
    rows: list[dict[str, Any]] = []
    reason, stop_step = "steps", None
    stream = iter(batches)
    for i in range(1, steps + 1):
        try:
            batch = next(stream)
        except StopIteration:
            break
        params, state, stats = official_step(model, params, state, batch, settings, loss)
        row: dict[str, Any] = {"iteration": i, **stats.as_dict()}
        bad = "" if math.isfinite(stats.loss) else "nonfinite_train_loss"
        for name in ("val", "test"):
            if name in held:
                x, t = held[name]
                value = float(loss_at(model, params, x, t, loss))
                row[f"{name}_loss"] = value
                if not bad and not math.isfinite(value):
                    bad = f"nonfinite_{name}_loss"
        rows.append(row)
        if bad:
            reason, stop_step = bad, i
            break
    return OfficialRun(pd.DataFrame(rows), reason, stop_step, params, state)
