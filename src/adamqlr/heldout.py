"""The reduction ratio on the next mini-batch: ``rho_data="next"`` of :class:`adamqlr.AdamQLR`.

Why
    The Levenberg-Marquardt rule trusts the quadratic model more (lowers lambda) when the loss fell
    about as much as the model predicted. By default (``rho_data="same"``, the paper's rule) both
    are measured on the mini-batch ``B_t`` the step was fitted to: the model ``M_t`` is built from
    ``B_t``'s gradient and curvature, and the actual change ``L_{B_t}(theta_{t+1}) -
    L_{B_t}(theta_t)`` is measured there too. That ratio is optimistic: the step was chosen to
    reduce exactly that loss (the book's chapter 04 measures rho near 1.00 on the step's own
    batch, near 0.18 on held-out data). With ``rho_data="next"`` the actual change is measured on
    the next mini-batch instead, data the step has not seen::

        rho_t = (L_{B_{t+1}}(theta_{t+1}) - L_{B_{t+1}}(theta_t)) / M_t(delta_t)

What it costs, per step, beside the default
    The next step's gradient pass evaluates ``L_{B_{t+1}}(theta_{t+1})`` anyway (its ``f0``): free.
    ``L_{B_{t+1}}(theta_t)`` is one forward pass at the old parameters on the new batch
    (:meth:`adamqlr.curvature.CurvatureEngine.trial_loss` with the old values), and it replaces
    the default's trial forward pass at the new parameters on the old batch: the same number of
    forward passes (one per damping-adaptation step, none on the first step), the same number of
    host syncs (the trial loss's sync moves from the end of step ``t`` to the middle of step
    ``t+1``). The difference is memory: the old parameters ``theta_t`` are kept from one step to
    the next, one parameter-sized buffer (a copy per adaptation step), which the state dict
    carries (:data:`PREVIOUS_PARAMS`). A cheaper estimator exists (the first-order
    ``L_{B_{t+1}}(theta_t) ~ L_{B_{t+1}}(theta_{t+1}) - g_{t+1}^T delta_t``, no forward pass at
    all) but it is not a measured change: it would judge the model with another linear model,
    so it is not offered.

Which model's prediction
    ``M_t(delta_t)`` is the prediction made on ``B_t`` when the step was chosen
    (``StepStats.predicted_change`` of step ``t``), not a model rebuilt on ``B_{t+1}``. The
    question rho answers is whether the model that chose ``alpha_t`` can be trusted; rebuilding
    it on ``B_{t+1}`` would need ``g_{B_{t+1}}(theta_t)`` and a curvature product along
    ``delta_t`` at ``theta_t`` on ``B_{t+1}`` (a second gradient pass and a second curvature
    product: the full cost of another step), and would judge a model that chose nothing.

What a bad rho does
    A held-out rho cannot reject the step it judges: that step was committed one step earlier
    (no same-batch trial, so no ``nonfinite_trial_loss`` rejection either; a step whose new
    parameters give a non-finite loss is rejected by the next step's own ``nonfinite_loss``
    check, as any step is). Undoing it would throw away the gradient pass at ``theta_{t+1}``
    that has just been paid for, and a mini-batch ratio is noisy enough that undoing on it would
    reverse many good steps. So it only moves lambda, with the same Levenberg-Marquardt rule
    (and the same handling of a change below the loss's rounding level), before step ``t+1``
    chooses its step size: the held-out ratio of step ``t`` sets the damping of step ``t+1``,
    exactly as the same-batch ratio of step ``t`` does by default. A step rejected before its
    loss is known (a non-finite loss) leaves the pending judgement for the step after it; the
    old loss being non-finite gives no rho (lambda unchanged).

What to expect of the damping
    The Levenberg-Marquardt thresholds (lower lambda above 3/4, raise it below 1/4) rest on the
    same-batch ratio tending to 1 as the step shrinks (the model is exact to first order). The
    held-out ratio does not: for a small step ``delta_t = -alpha_t d_t`` it tends to
    ``g_{t+1}^T d_t / g_t^T d_t``, how far the next batch's gradient agrees with this batch's
    along ``d_t``, which mini-batch noise can put below 1/4 (or below 0) however small the step.
    Where it does, the rule keeps raising lambda until the steps no longer change the loss
    measurably: the run stops diverging, but also stops learning. With the full batch
    (``B_{t+1} = B_t``) the two ratios agree up to the one-step delay.

What the statistics say
    With ``rho_data="next"``, ``StepStats.rho`` and ``StepStats.trial_loss`` of step ``t+1`` are
    the held-out ratio of step ``t`` and ``L_{B_{t+1}}(theta_t)`` (NaN on the first step and
    after a step that adapted nothing); ``loss_unresolved`` refers to that judgement.

The step size on the next batch (the issue's second option) is not offered: ``alpha_t`` must be
chosen before ``theta`` moves, so computing it on ``B_{t+1}`` means holding step ``t`` until
``B_{t+1}`` arrives and then paying a gradient pass and a curvature product at ``theta_t`` on
``B_{t+1}`` besides the ones at ``theta_{t+1}``: a second full step's cost, not a free re-use.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from adamqlr.heuristics import LevenbergMarquardt

__all__ = [
    "PENDING_CHANGE",
    "PREVIOUS_PARAMS",
    "RHO_DATA",
    "forget",
    "judge",
    "judge_previous",
    "pending",
    "remember",
    "rho_data",
]

#: Where the reduction ratio's actual change is measured, see the module docstring.
RHO_DATA: tuple[str, ...] = ("same", "next")
#: Key of ``theta_t`` in the per-parameter state, kept until the next step judges step ``t``.
PREVIOUS_PARAMS = "heldout_previous"
#: Key of ``M_t(delta_t)`` in the optimiser-wide state (NaN: nothing to judge).
PENDING_CHANGE = "heldout_change"


def rho_data(value: object, damping_mode: str) -> str:
    """Return ``value`` checked: one of :data:`RHO_DATA`, ``"next"`` only with adaptive damping.

    Raises:
        ValueError: Naming the value, for anything else.
    """
    if not isinstance(value, str) or value not in RHO_DATA:
        raise ValueError(f"invalid rho_data: {value!r} (expected one of {RHO_DATA})")
    if value == "next" and damping_mode != "adaptive":
        raise ValueError(
            f"invalid rho_data: 'next' with damping_mode {damping_mode!r} (rho is computed only "
            "to adapt the damping: use damping_mode='adaptive', or rho_data='same')"
        )
    return value


def remember(
    state: Any,
    glob: dict[str, Any],
    param_groups: list[dict[str, Any]],
    params: list[Tensor],
    predicted_change: float,
) -> None:
    """Keep ``theta_t`` (``params`` before they move) and ``M_t(delta_t)`` for the next step.

    Call before the parameters are overwritten. Parameters that do not move keep no copy.
    """
    for group in param_groups:
        for p in group["params"]:
            if p in state:
                state[p].pop(PREVIOUS_PARAMS, None)
    for p in params:
        state[p][PREVIOUS_PARAMS] = p.detach().clone()
    glob[PENDING_CHANGE] = predicted_change


def pending(
    state: Any, glob: dict[str, Any], param_groups: list[dict[str, Any]]
) -> tuple[list[str], list[Tensor], float] | None:
    """Return the names and old values of the moved parameters and ``M_t``, or ``None``."""
    change = glob.get(PENDING_CHANGE, math.nan)
    if math.isnan(change):
        return None
    names: list[str] = []
    values: list[Tensor] = []
    for group in param_groups:
        for name, p in zip(group["param_names"], group["params"], strict=True):
            old = state[p].get(PREVIOUS_PARAMS) if p in state else None
            if old is not None:
                names.append(name)
                values.append(old)
    return names, values, change


def forget(state: Any, glob: dict[str, Any], param_groups: list[dict[str, Any]]) -> None:
    """Drop the pending judgement (after it is made)."""
    glob[PENDING_CHANGE] = math.nan
    for group in param_groups:
        for p in group["params"]:
            if p in state:
                state[p].pop(PREVIOUS_PARAMS, None)


def judge(
    rule: LevenbergMarquardt,
    glob: dict[str, Any],
    old_loss: float,
    new_loss: float,
    change: float,
    low: Any,
    resolve: bool,
) -> tuple[float, bool]:
    """Update ``glob["damping"]`` from the held-out ratio; return ``(rho, unresolved)``.

    ``old_loss`` is ``L_{B_{t+1}}(theta_t)``, ``new_loss`` ``L_{B_{t+1}}(theta_{t+1})``,
    ``change`` ``M_t(delta_t)``, ``low`` the dtype whose rounding level decides whether the loss
    change is resolved (``resolve``: apply that test at all). The same rule as the same-batch
    ratio's (:meth:`adamqlr.QuadraticModelOptimizer.step`); a non-finite ``old_loss`` gives no
    ratio and leaves lambda unchanged.
    """
    if not math.isfinite(old_loss):
        return math.nan, False
    glob["damping"], rho, unresolved = rule.after_trial(
        glob["damping"], old_loss, new_loss, change, low, resolve=resolve
    )
    glob["unresolved_streak"] = glob["unresolved_streak"] + 1 if unresolved else 0
    return rho, unresolved


def judge_previous(
    state: Any,
    glob: dict[str, Any],
    param_groups: list[dict[str, Any]],
    engine: Any,
    rule: LevenbergMarquardt,
    new_loss: float,
    low: Any,
    resolve: bool,
) -> tuple[float, float, bool]:
    """Judge the pending step on this step's batch; return ``(rho, old_loss, unresolved)``.

    Called after this step's gradient pass, whose finite loss ``new_loss`` is
    ``L_{B_{t+1}}(theta_{t+1})``; ``engine`` holds that batch and gives ``L_{B_{t+1}}(theta_t)``
    by one forward pass (:meth:`adamqlr.curvature.CurvatureEngine.trial_loss`, one host sync).
    Updates the damping (:func:`judge`) and forgets the pending step. ``(NaN, NaN, False)`` when
    nothing is pending.
    """
    found = pending(state, glob, param_groups)
    if found is None:
        return math.nan, math.nan, False
    names, values, change = found
    forget(state, glob, param_groups)
    if not names:  # nothing moved: nothing to judge
        return math.nan, math.nan, False
    old_loss = engine.trial_loss(names, values).item()
    rho, unresolved = judge(rule, glob, old_loss, new_loss, change, low, resolve)
    return rho, old_loss, unresolved
