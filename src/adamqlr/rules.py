"""The damping and step-size rules of :class:`adamqlr.AdamQLR` and :class:`adamqlr.SGDQLR`.

The optimisers take two options that pick a cell of the factorial study (direction x step-size
rule x damping, :mod:`adamqlr.studies.factorial`):

``damping_mode`` (:data:`DAMPING_MODES`)
    ``"adaptive"`` (the default, the paper's AdamQLR): lambda starts at ``initial_damping`` and
    the Levenberg-Marquardt rule adapts it from the reduction ratio ``rho`` every
    ``damping_interval`` steps, which costs one more forward pass (the trial loss) on those steps.
    ``"fixed"``: lambda stays ``initial_damping`` for the whole run, also after a rejected step;
    no trial loss and no ``rho`` are computed (``StepStats.rho`` and ``trial_loss`` are NaN), so a
    step costs what an undamped one does. ``"none"``: lambda = 0, no trial loss, no ``rho``
    (the old ``undamped=True``, which stays as an alias).

``step_rule`` (:data:`STEP_RULES`)
    ``"alpha"`` (the default, the paper's): ``theta <- theta - alpha d`` with ``alpha`` the
    minimiser of the damped quadratic model along the direction ``d``
    (:func:`adamqlr.heuristics.propose_step`). ``"alpha-momentum"``: K-FAC's joint choice of a
    learning rate and a momentum, on any direction: with ``v1 = -d`` and ``v2`` the previous
    update, the step ``a v1 + b v2`` minimises the damped quadratic model on the plane of the two
    (:func:`adamqlr.heuristics.propose_plane_step`); at the first step (no previous update) it is
    exactly the ``"alpha"`` rule.

What the plane costs, per step, beside the ``"alpha"`` rule's: a second curvature product
(:meth:`adamqlr.curvature.CurvatureEngine.along_pair`: for the layer-wise Fisher a second tangent
pass over the gradient pass's activations, no forward pass; for the forward-mode Fisher a second
JVP, which is a second forward pass with tangents; for the Hessian a second backward pass through
the gradient's graph), three more reductions per parameter (``g^T v2``, ``d^T v2``,
``||v2||^2``, in the same host transfer as the others) and one parameter-sized buffer of state
(the previous update); the trial forward pass (adaptive damping only) is the same one, and with
the layer-wise Fisher it still evaluates the first linear layer by linearity, from both
directions' tangents there. The first step costs what the ``"alpha"`` rule's does, plus the copy
of the update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from adamqlr.heuristics import PlaneProposal, propose_plane_step
from adamqlr.precision import wide

__all__ = [
    "DAMPING_MODES",
    "PREVIOUS_UPDATE",
    "STEP_RULES",
    "damping_mode",
    "plane_proposal",
    "plane_scalars",
    "plane_step",
    "previous_update",
    "remember_update",
    "step_rule",
]

#: The damping rules, see the module docstring.
DAMPING_MODES: tuple[str, ...] = ("adaptive", "fixed", "none")
#: The step-size rules, see the module docstring.
STEP_RULES: tuple[str, ...] = ("alpha", "alpha-momentum")


def damping_mode(mode: str | None, undamped: bool) -> str:
    """Return the damping rule that ``damping_mode`` and the legacy ``undamped`` flag select.

    Args:
        mode: One of :data:`DAMPING_MODES`, or ``None`` (``"none"`` if ``undamped`` else
            ``"adaptive"``).
        undamped: The legacy flag: ``True`` means ``"none"``.

    Raises:
        ValueError: Naming the value, for an unknown mode or ``undamped=True`` with a mode other
            than ``"none"``.
    """
    if mode is None:
        return "none" if undamped else "adaptive"
    if mode not in DAMPING_MODES:
        raise ValueError(f"invalid damping_mode: {mode!r} (expected one of {DAMPING_MODES})")
    if undamped and mode != "none":
        raise ValueError(
            f"invalid damping_mode: {mode!r} with undamped=True (undamped=True is "
            "damping_mode='none'; pass one of them)"
        )
    return mode


def step_rule(rule: str) -> str:
    """Return ``rule`` if it is one of :data:`STEP_RULES`.

    Raises:
        ValueError: Naming the value otherwise.
    """
    if rule not in STEP_RULES:
        raise ValueError(f"invalid step_rule: {rule!r} (expected one of {STEP_RULES})")
    return rule


#: Key of the previous update in the per-parameter state (``step_rule="alpha-momentum"``).
PREVIOUS_UPDATE = "previous_update"


def previous_update(
    state: Mapping[Tensor, Mapping[str, Any]], params: list[Tensor]
) -> list[Tensor] | None:
    """Return the previous update of ``params`` (zero where none is kept), or ``None`` if none is.

    ``None`` means the plane has no second vector: the step is the ``"alpha"`` rule's.
    """
    found = [state[p].get(PREVIOUS_UPDATE) if p in state else None for p in params]
    if all(v is None for v in found):
        return None
    return [torch.zeros_like(p) if v is None else v for v, p in zip(found, params, strict=True)]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.dot(wide(a).reshape(-1), wide(b).reshape(-1))


def plane_scalars(
    grads: list[Tensor], directions: list[Tensor], previous: list[Tensor]
) -> list[Tensor]:
    """Return the 0-d tensors ``g_i^T v2_i``, ``d_i^T v2_i`` and ``v2_i^T v2_i``, per parameter."""
    return [
        *(_dot(g, v) for g, v in zip(grads, previous, strict=True)),
        *(_dot(d, v) for d, v in zip(directions, previous, strict=True)),
        *(_dot(v, v) for v in previous),
    ]


def plane_proposal(
    values: list[float],
    *,
    curvature: float,
    grad_dot_dir: float,
    sq_norm: float,
    cross: float,
    second: float,
    damping: float,
    alpha_max: float | None,
    amplification: float,
    include_damping: bool,
    nonpositive_curvature: str,
) -> PlaneProposal:
    """Return the plane step from the host values of :func:`plane_scalars` and the curvatures.

    The optimiser's ``d`` points uphill, so ``v1 = -d``: ``g^T v1 = -g^T d``,
    ``v1^T C v2 = -d^T C v2`` and ``v1^T v2 = -d^T v2``
    (:func:`adamqlr.heuristics.propose_plane_step`).

    Args:
        values: The host values of :func:`plane_scalars`, in its order.
        curvature: ``d^T C d``.
        grad_dot_dir: ``g^T d``.
        sq_norm: ``||d||^2``.
        cross: ``d^T C v2``.
        second: ``v2^T C v2``.
        damping: ``lambda``.
        alpha_max: ``lr_clip``.
        amplification: The factor on both coefficients.
        include_damping: Whether the damping enters the predicted change.
        nonpositive_curvature: ``"reject"`` or ``"absolute"``.
    """
    k = len(values) // 3
    g2 = math.fsum(values[:k])
    dv = math.fsum(values[k : 2 * k])
    n22 = math.fsum(values[2 * k :])
    if not all(math.isfinite(x) for x in (g2, dv, n22, cross, second)):
        return PlaneProposal(math.nan, math.nan, True, "", math.nan)  # caught as nonfinite_step
    return propose_plane_step(
        (-grad_dot_dir, g2),
        (curvature, -cross, second),
        (sq_norm, -dv, n22),
        damping,
        alpha_max=alpha_max,
        amplification=amplification,
        include_damping=include_damping,
        nonpositive_curvature=nonpositive_curvature,
    )


def plane_step(
    params: list[Tensor],
    directions: list[Tensor],
    previous: list[Tensor] | None,
    decays: list[float],
    lr: float,
    momentum: float,
) -> tuple[list[Tensor], list[Tensor]]:
    """Return the new parameters ``(1 - w) theta + delta`` and the update ``delta``.

    ``delta = -lr d + momentum v2`` (``v2`` the previous update; ``None``: zero). The new
    parameters are written over ``directions``, as :func:`adamqlr.optim._moved` does.
    """
    update = list(torch._foreach_mul(directions, -lr))
    if previous is not None and momentum != 0.0:
        torch._foreach_add_(update, previous, alpha=momentum)
    for p, d, u, w in zip(params, directions, update, decays, strict=True):
        if w:
            torch.add(u, p, alpha=1.0 - w, out=d)
        else:
            torch.add(p, u, out=d)
    return directions, update


def remember_update(
    state: Any, param_groups: list[dict[str, Any]], params: list[Tensor], update: list[Tensor]
) -> None:
    """Keep ``update`` as the previous update of ``params``; forget it for every other parameter.

    A parameter that did not move on this step (no gradient) has a zero previous update.
    """
    moved = {id(p) for p in params}
    for group in param_groups:
        for p in group["params"]:
            if id(p) not in moved and p in state:
                state[p].pop(PREVIOUS_UPDATE, None)
    for p, u in zip(params, update, strict=True):
        state[p][PREVIOUS_UPDATE] = u
