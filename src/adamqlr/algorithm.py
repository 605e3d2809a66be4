"""One AdamQLR iteration as a pure function: the reference the optimiser is tested against.

:class:`adamqlr.AdamQLR` is written for speed (cached curvature engines, in-place arithmetic, one
host synchronisation per phase). This module writes the same iteration plainly, in the paper's
order, as a function of explicit values::

    new_params, new_state, stats = adamqlr_iteration(model, params, state, batch, settings, loss)

1. loss ``f0`` and gradient ``g`` at ``params`` on the batch;
2. Adam's moments :func:`adam_moments`, bias-corrected (:func:`bias_corrected`), and the
   direction ``d = m_hat / (sqrt(v_hat) + eps)`` (:func:`adam_direction`);
3. the curvature ``q = d^T C d`` (the GGN by forward-mode autograd, or the Hessian by
   forward-over-reverse: :mod:`adamqlr.curvature`);
4. the step size from the damped quadratic model (:func:`adamqlr.heuristics.propose_step`) and
   the proposal ``theta' = (1 - w) theta - alpha d``;
5. on damping-adaptation steps, the trial loss ``f1``, the reduction ratio ``rho`` and the
   Levenberg-Marquardt update of the damping;
6. the commit: new parameters, moments and counters (or, for a rejected step, only a larger
   damping).

Nothing is modified in place: neither ``params`` nor ``state`` nor the model (its parameters and
buffers are only read; batch-norm running statistics are not updated). Random layers are not
supported (no random state is replayed between the passes). The derivation chapters use
:func:`adam_moments`, :func:`bias_corrected` and :func:`adam_direction` for Adam's direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from adamqlr.curvature import ggn_quadratic, hessian_quadratic, loss_at
from adamqlr.heuristics import LevenbergMarquardt, propose_step, reduction_ratio
from adamqlr.losses import Loss

if TYPE_CHECKING:
    from adamqlr.optim import AdamQLR, StepStats

__all__ = [
    "AdamQLRSettings",
    "AdamQLRState",
    "adam_direction",
    "adam_moments",
    "adamqlr_iteration",
    "bias_corrected",
]


# --------------------------------------------------------------------------- Adam's direction
def adam_moments(
    exp_avg: Tensor, exp_avg_sq: Tensor, grad: Tensor, betas: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """Return Adam's moments after one more gradient.

    ``m <- beta1 m + (1 - beta1) g`` and ``v <- beta2 v + (1 - beta2) g^2`` (zero before the
    first step).

    Args:
        exp_avg: ``m``.
        exp_avg_sq: ``v``.
        grad: ``g``.
        betas: ``(beta1, beta2)``.

    Returns:
        ``(m, v)``, new tensors.
    """
    beta1, beta2 = betas
    return beta1 * exp_avg + (1 - beta1) * grad, beta2 * exp_avg_sq + (1 - beta2) * grad * grad


def bias_corrected(
    exp_avg: Tensor, exp_avg_sq: Tensor, step: int | float, betas: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """Return ``m_hat = m / (1 - beta1^t)`` and ``v_hat = v / (1 - beta2^t)``.

    Args:
        exp_avg: ``m`` after ``t`` steps.
        exp_avg_sq: ``v`` after ``t`` steps.
        step: ``t`` (>= 1).
        betas: ``(beta1, beta2)``.

    Raises:
        ValueError: If ``step`` is below 1 (the moments are not defined before a step).
    """
    if not step >= 1:
        raise ValueError(f"invalid step: {step!r} (expected >= 1)")
    beta1, beta2 = betas
    return exp_avg / (1 - beta1**step), exp_avg_sq / (1 - beta2**step)


def adam_direction(m_hat: Tensor, v_hat: Tensor, eps: float) -> Tensor:
    """Return Adam's update at learning rate 1, ``d = m_hat / (sqrt(v_hat) + eps)``."""
    return m_hat / (v_hat.sqrt() + eps)


# ------------------------------------------------------------------------- settings and state
@dataclass(frozen=True)
class AdamQLRSettings:
    """The settings of one AdamQLR run (the arguments of :class:`adamqlr.AdamQLR`, one group).

    Attributes mirror the optimiser's arguments of the same names; see its documentation.
    """

    curvature: str = "fisher"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    initial_damping: float = 1e-3
    damping_decrease: float = 0.5
    damping_increase: float = 2.0
    damping_bounds: tuple[float, float] = (1e-8, math.inf)
    damping_interval: int = 1
    damping_in_rho: bool = True
    lr_clip: float | None = None
    amplification: float = 1.0
    undamped: bool = False
    nonpositive_curvature: str = "reject"

    def __post_init__(self) -> None:
        if self.curvature not in ("fisher", "hessian"):
            raise ValueError(
                f"invalid curvature: {self.curvature!r} (expected one of fisher, hessian)"
            )
        if self.nonpositive_curvature not in ("reject", "absolute"):
            raise ValueError(
                f"invalid nonpositive_curvature: {self.nonpositive_curvature!r} "
                "(expected 'reject' or 'absolute')"
            )

    @property
    def damping_rule(self) -> LevenbergMarquardt:
        """The Levenberg-Marquardt rule these settings define."""
        lower, upper = self.damping_bounds
        return LevenbergMarquardt(self.damping_decrease, self.damping_increase, lower, upper)

    @classmethod
    def of(cls, optimizer: AdamQLR) -> AdamQLRSettings:
        """Return the settings of an :class:`adamqlr.AdamQLR` with one parameter group.

        Raises:
            ValueError: If the optimiser has several parameter groups, or a damping mode or step
                rule this reference does not write out (``damping_mode="fixed"``,
                ``step_rule="alpha-momentum"``: :mod:`adamqlr.rules`).
        """
        if len(optimizer.param_groups) != 1:
            raise ValueError("invalid optimizer: expected one parameter group")
        mode = getattr(optimizer, "damping_mode", "none" if optimizer.undamped else "adaptive")
        rule = getattr(optimizer, "step_rule", "alpha")
        if mode == "fixed" or rule != "alpha":
            raise ValueError(
                f"invalid optimizer: damping_mode={mode!r}, step_rule={rule!r} (the reference "
                "iteration covers the adaptive and undamped modes of the 'alpha' rule)"
            )
        group, rule = optimizer.param_groups[0], optimizer.damping_rule
        return cls(
            curvature=optimizer.curvature,
            betas=tuple(group["betas"]),
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            initial_damping=optimizer.initial_damping,
            damping_decrease=rule.decrease,
            damping_increase=rule.increase,
            damping_bounds=(rule.lower, rule.upper),
            damping_interval=optimizer.damping_interval,
            damping_in_rho=optimizer.damping_in_rho,
            lr_clip=optimizer.lr_clip,
            amplification=optimizer.amplification,
            undamped=optimizer.undamped,
            nonpositive_curvature=optimizer.nonpositive_curvature,
        )


@dataclass(frozen=True)
class AdamQLRState:
    """Everything an AdamQLR iteration carries to the next one.

    Attributes:
        step: Accepted steps so far.
        damping: The damping ``lambda`` the next step uses.
        exp_avg: Adam's ``m`` by parameter name (absent: zero, no step yet).
        exp_avg_sq: Adam's ``v`` by parameter name.
        moment_steps: Steps that parameter's moments have seen (a parameter without a gradient
            keeps its count).
        rejected_steps: Rejected steps so far.
    """

    step: int
    damping: float
    exp_avg: dict[str, Tensor] = field(default_factory=dict)
    exp_avg_sq: dict[str, Tensor] = field(default_factory=dict)
    moment_steps: dict[str, int] = field(default_factory=dict)
    rejected_steps: int = 0

    @classmethod
    def initial(cls, settings: AdamQLRSettings) -> AdamQLRState:
        """Return the state before the first step."""
        return cls(0, 0.0 if settings.undamped else settings.initial_damping)

    @classmethod
    def of(cls, optimizer: AdamQLR) -> AdamQLRState:
        """Return a copy of the state of an :class:`adamqlr.AdamQLR` with one parameter group."""
        group = optimizer.param_groups[0]
        glob = optimizer.state[optimizer.global_key]
        m, v, t = {}, {}, {}
        for name, p in zip(group["param_names"], group["params"], strict=True):
            st = optimizer.state.get(p)
            if st:
                m[name], v[name] = st["exp_avg"].clone(), st["exp_avg_sq"].clone()
                t[name] = int(st["step"])
        return cls(glob["step"], float(glob["damping"]), m, v, t, glob["rejected_steps"])


# ----------------------------------------------------------------------------- the iteration
def _stats(**values: Any) -> StepStats:
    from adamqlr.optim import StepStats

    nan = math.nan
    defaults = dict(
        lr=0.0,
        rho=nan,
        accepted=False,
        reason="",
        curvature=nan,
        grad_dot_dir=nan,
        direction_sq_norm=nan,
        predicted_change=nan,
        trial_loss=nan,
    )
    merged: dict[str, Any] = defaults | values
    return StepStats(**merged)


def _rejected(
    reason: str,
    state: AdamQLRState,
    settings: AdamQLRSettings,
    params: dict[str, Tensor],
    f0: float,
    **known: float,
) -> tuple[dict[str, Tensor], AdamQLRState, StepStats]:
    damping = state.damping
    if not settings.undamped:
        curvature = (
            known.get("curvature", math.nan) if reason == "nonpositive_curvature" else math.nan
        )
        damping = settings.damping_rule.after_rejection(
            state.damping, curvature, known.get("direction_sq_norm", math.nan)
        )
    new_state = AdamQLRState(
        state.step,
        damping,
        state.exp_avg,
        state.exp_avg_sq,
        state.moment_steps,
        state.rejected_steps + 1,
    )
    stats = _stats(
        loss=f0,
        damping=damping,
        damping_used=state.damping,
        step=state.step,
        reason=reason,
        **known,
    )
    return dict(params), new_state, stats


def adamqlr_iteration(
    model: nn.Module,
    params: dict[str, Tensor],
    state: AdamQLRState,
    batch: tuple[Any, Tensor],
    settings: AdamQLRSettings,
    loss: Loss,
) -> tuple[dict[str, Tensor], AdamQLRState, StepStats]:
    """Return the parameters, state and statistics after one AdamQLR iteration.

    Args:
        model: The network (its own parameters are replaced by ``params`` for every pass).
        params: Parameter values by name: those the optimiser updates.
        state: The state after the previous iteration (:meth:`AdamQLRState.initial` at first).
        batch: ``(inputs, targets)``.
        settings: The settings.
        loss: The loss.

    Returns:
        ``(new_params, new_state, stats)``; ``stats`` is an :class:`adamqlr.StepStats` with the
        same meaning as the optimiser's.
    """
    inputs, targets = batch
    names = list(params)
    step = state.step + 1

    # 1. Loss and gradient.
    leaves = {n: params[n].detach().requires_grad_(True) for n in names}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    with torch.enable_grad():
        f0_t = loss.value(functional_call(model, (leaves, buffers), (inputs,)), targets)
        found = (
            torch.autograd.grad(
                f0_t, [leaves[n] for n in names], allow_unused=True, materialize_grads=False
            )
            if f0_t.requires_grad
            else [None] * len(names)
        )
    grads = {n: g.detach() for n, g in zip(names, found, strict=True) if g is not None}
    f0 = float(f0_t.detach())
    if not grads:
        return (
            dict(params),
            state,
            _stats(
                loss=f0,
                damping=state.damping,
                reason="no_gradient",
                damping_used=state.damping,
                step=state.step,
            ),
        )
    if not math.isfinite(f0):
        return _rejected("nonfinite_loss", state, settings, params, f0)

    # 2. Adam's moments and direction.
    m, v, t, d = {}, {}, {}, {}
    for n, g in grads.items():
        t[n] = state.moment_steps.get(n, 0) + 1
        m[n], v[n] = adam_moments(
            state.exp_avg.get(n, torch.zeros_like(g)),
            state.exp_avg_sq.get(n, torch.zeros_like(g)),
            g,
            settings.betas,
        )
        d[n] = adam_direction(*bias_corrected(m[n], v[n], t[n], settings.betas), settings.eps)
    grad_dot_dir = math.fsum(float((grads[n] * d[n]).sum()) for n in d)
    sq_norm = math.fsum(float(d[n].pow(2).sum()) for n in d)
    moments_finite = all(bool(torch.isfinite(v[n]).all()) for n in v)
    if not (math.isfinite(grad_dot_dir) and math.isfinite(sq_norm) and moments_finite):
        return _rejected("nonfinite_gradient", state, settings, params, f0)

    # 3. Curvature along d, at params, on the same batch.
    at = {n: params[n].detach() for n in d}
    if settings.curvature == "fisher":
        q = float(ggn_quadratic(model, at, d, inputs, targets, loss, method="func"))
    else:
        q = float(hessian_quadratic(model, at, d, inputs, targets, loss))
    known = dict(curvature=q, grad_dot_dir=grad_dot_dir, direction_sq_norm=sq_norm)
    if not math.isfinite(q):
        return _rejected("nonfinite_curvature", state, settings, params, f0, **known)

    # 4. Step size and proposal.
    proposal = propose_step(
        grad_dot_dir,
        q,
        state.damping,
        sq_norm,
        alpha_max=settings.lr_clip,
        amplification=settings.amplification,
        include_damping=settings.damping_in_rho,
        nonpositive_curvature=settings.nonpositive_curvature,
    )
    if not proposal.accepted:
        return _rejected(proposal.reason, state, settings, params, f0, **known)
    alpha = proposal.alpha
    if not math.isfinite(alpha):
        return _rejected("nonfinite_step", state, settings, params, f0, **known)
    w = settings.weight_decay
    new_params = dict(params)
    for n in d:
        new_params[n] = (1 - w) * params[n].detach() - alpha * d[n]

    # 5. Trial loss, reduction ratio, damping.
    adapt = not settings.undamped and step % settings.damping_interval == 0
    f1 = float(loss_at(model, new_params, inputs, targets, loss)) if adapt else math.nan
    if not all(bool(torch.isfinite(new_params[n]).all()) for n in d):
        return _rejected("nonfinite_step", state, settings, params, f0, trial_loss=f1, **known)
    if adapt and not math.isfinite(f1):
        return _rejected(
            "nonfinite_trial_loss", state, settings, params, f0, trial_loss=f1, **known
        )
    rho, damping = math.nan, state.damping
    if adapt:
        rho = reduction_ratio(f1 - f0, proposal.predicted_change)
        damping = settings.damping_rule.update(state.damping, rho)

    # 6. Commit.
    new_state = AdamQLRState(
        step,
        damping,
        state.exp_avg | m,
        state.exp_avg_sq | v,
        state.moment_steps | t,
        state.rejected_steps,
    )
    stats = _stats(
        loss=f0,
        lr=alpha,
        damping=damping,
        rho=rho,
        accepted=True,
        predicted_change=proposal.predicted_change,
        trial_loss=f1,
        damping_used=state.damping,
        step=step,
        **known,
    )
    return new_params, new_state, stats
