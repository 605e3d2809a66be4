"""kfac-jax's joint choice of learning rate and momentum from a small quadratic model.

Given ``k`` (here 1 or 2) update vectors ``V = [v_1, ..., v_k]`` -- the K-FAC direction
``Delta = F_tilde^{-1} g`` and the previous update (the "velocity") -- K-FAC takes the update
``delta = V w`` that minimises the damped quadratic model of the mini-batch loss

    Q(w) = 1/2 w^T (V^T C V + lambda V^T V) w + w^T V^T g,

where ``C`` is the exact curvature (the GGN, equal to the Fisher for the paper's losses) on the
current mini-batch. With ``A = V^T C V``, ``D = V^T V`` and ``b = V^T g`` the minimiser is
``w = -(A + lambda D)^{-1} b``; ``-w_1`` is the learning rate and ``w_2`` the momentum.

``A`` needs only the bilinear forms ``v_i^T C v_j``: one forward-mode JVP per vector gives
``u_i = J v_i``, then ``u_i^T H_L u_j`` in output space (:func:`output_bilinear`). No matrix is
formed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from adamqlr._random import replayed_rng
from adamqlr.curvature import copied_buffers
from adamqlr.losses import Loss, SquaredErrorLoss

__all__ = [
    "QuadraticSolution",
    "curvature_gram",
    "output_bilinear",
    "output_jvp",
    "solve_quadratic_model",
]


def output_bilinear(loss: Loss, outputs: Tensor, u1: Tensor, u2: Tensor, targets: Tensor) -> Tensor:
    """Return ``u1^T H_L u2`` for the Hessian ``H_L`` of the mean loss w.r.t. the outputs.

    Delegates to :meth:`adamqlr.losses.Loss.output_bilinear` (closed forms for the package's
    losses, polarisation of ``output_quadratic`` for any other). For squared error the mean runs
    over the batch's own rows: K-FAC is not subject to the official code's padding dilution, so
    ``curvature_count`` is ignored.

    Args:
        loss: The loss.
        outputs: Network outputs where ``H_L`` is evaluated.
        u1: First output-space vector (same shape as ``outputs``).
        u2: Second output-space vector.
        targets: The targets.

    Returns:
        A scalar tensor.
    """
    if isinstance(loss, SquaredErrorLoss) and loss.curvature_count is not None:
        loss = SquaredErrorLoss()
    return loss.output_bilinear(outputs, u1, u2, targets)


def output_jvp(
    model: nn.Module,
    params: Mapping[str, Tensor],
    direction: Mapping[str, Tensor],
    inputs: object,
) -> tuple[Tensor, Tensor]:
    """Return the outputs ``z`` and ``u = J d`` by one forward-mode JVP through ``model``.

    Buffers are copied inside the transformed function (so batch norm's in-place update touches a
    tensor of this call, which ``torch.func`` allows, and never the model's running statistics); in
    training mode the JVP includes how the batch statistics depend on the parameters (as
    :func:`adamqlr.curvature.ggn_quadratic` does).

    Args:
        model: The network.
        params: Parameter values by name (others keep the module's values).
        direction: A tangent for every key of ``params``.
        inputs: The mini-batch inputs.

    Returns:
        ``(outputs, u)``, both detached.
    """
    names = list(params)

    def outputs_of(*values: Tensor) -> Tensor:
        return functional_call(
            model,
            (dict(zip(names, values, strict=True)), copied_buffers(model)),
            (inputs,),
            strict=False,
        )

    with torch.no_grad():
        return jvp(  # type: ignore[return-value]  # torch types jvp as 2 or 3 values (has_aux)
            outputs_of,
            tuple(params[n].detach() for n in names),
            tuple(direction[n].detach().to(params[n].dtype) for n in names),
        )


def curvature_gram(
    model: nn.Module,
    params: Mapping[str, Tensor],
    vectors: Sequence[Mapping[str, Tensor]],
    inputs: object,
    targets: Tensor,
    loss: Loss,
    random_state: tuple[Tensor, list[Tensor] | None] | None = None,
) -> Tensor:
    """Return the ``k x k`` matrix ``A_ij = v_i^T C v_j`` for the GGN ``C`` of the mean loss.

    One JVP per vector, then the output-space bilinear forms.

    Args:
        model: The network.
        params: Parameter values by name.
        vectors: The ``k`` vectors, each a tangent for every key of ``params``.
        inputs: The mini-batch inputs.
        targets: The targets.
        loss: The loss.
        random_state: ``(torch.get_rng_state(), CUDA states or None)`` taken before the gradient
            pass: every JVP then runs under it (:func:`adamqlr._random.replayed_rng`), so that
            each vector's product sees the gradient pass's dropout masks. ``None``: the global
            random state as it is.

    Returns:
        A float64 tensor of shape ``(k, k)``, symmetric.
    """
    outs = []
    for v in vectors:
        if random_state is None:
            outs.append(output_jvp(model, params, v, inputs))
        else:
            with replayed_rng(*random_state):
                outs.append(output_jvp(model, params, v, inputs))
    outputs = outs[0][0]
    k = len(vectors)
    gram = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(i, k):
            value = float(output_bilinear(loss, outputs, outs[i][1], outs[j][1], targets))
            gram[i, j] = gram[j, i] = value
    return gram


@dataclass(frozen=True)
class QuadraticSolution:
    """The coefficients chosen from the quadratic model, and the model's change.

    Attributes:
        coefficients: ``w``; the update is ``sum_i w_i v_i`` (so the learning rate is ``-w_1``
            and the momentum ``w_2``).
        quad_change: ``1/2 w^T A w + w^T b`` (undamped: kfac-jax's ``include_damping_in_quad_change
            = False``).
        quad_change_damped: ``1/2 w^T (A + lambda D) w + w^T b``.
        ok: Whether every coefficient is finite.
    """

    coefficients: tuple[float, ...]
    quad_change: float
    quad_change_damped: float
    ok: bool


def solve_quadratic_model(
    curvature: Tensor,
    gram: Tensor,
    grad_dots: Tensor,
    damping: float,
    fixed: Sequence[float | None] | None = None,
) -> QuadraticSolution:
    """Minimise ``Q(w) = 1/2 w^T (A + lambda D) w + w^T b`` over the free coefficients.

    Mirrors kfac-jax's ``_solve_quad_model``: with all coefficients free it returns
    ``w = -(A + lambda D)^{-1} b``, except that when the second vector is zero (the velocity on the
    first step: the second row and column of ``A + lambda D`` and ``b_2`` all vanish) it solves for
    the first coefficient alone and sets the second to 0. Coefficients given in ``fixed`` are kept
    and the others minimise ``Q`` with them held.

    Args:
        curvature: ``A = V^T C V``, shape ``(k, k)``.
        gram: ``D = V^T V``, shape ``(k, k)``.
        grad_dots: ``b = V^T g``, shape ``(k,)``.
        damping: ``lambda``.
        fixed: Per coefficient, a value to keep or ``None`` to solve for (default: all free).

    Returns:
        The :class:`QuadraticSolution`.

    Raises:
        ValueError: If the shapes disagree or ``k`` is not 1 or 2.
    """
    k = grad_dots.shape[0] if grad_dots.dim() == 1 else -1
    if k not in (1, 2) or curvature.shape != (k, k) or gram.shape != (k, k):
        raise ValueError(
            f"quadratic model needs A, D of shape (k, k) and b of shape (k,) with k in (1, 2); got "
            f"{tuple(curvature.shape)}, {tuple(gram.shape)}, {tuple(grad_dots.shape)}"
        )
    fixed = list(fixed) if fixed is not None else [None] * k
    if len(fixed) != k:
        raise ValueError(f"fixed has {len(fixed)} entries for {k} vectors")
    # A 1x1 or 2x2 problem: in Python floats (IEEE double, as float64 tensors, and in the same
    # order of operations), which costs a few microseconds where a dozen tiny tensor operations
    # cost about a hundred; only the 2x2 solve stays with LAPACK (its pivoting and rounding).
    a = curvature.to(torch.float64).tolist()
    d = gram.to(torch.float64).tolist()
    b = grad_dots.to(torch.float64).tolist()
    a_d = [[a[i][j] + damping * d[i][j] for j in range(k)] for i in range(k)]
    w = [0.0 if c is None else float(c) for c in fixed]
    free = [i for i in range(k) if fixed[i] is None]
    if len(free) == k == 2:
        if a_d[0][1] == 0 and a_d[1][0] == 0 and a_d[1][1] == 0 and b[1] == 0:
            w = [_div(-b[0], a_d[0][0]), 0.0]
        else:
            w = _negated_solve(a_d, b)
    elif len(free) == k == 1:
        w[0] = 0.0 if (a_d[0][0] == 0 and b[0] == 0) else _div(-b[0], a_d[0][0])
    elif len(free) == 1:
        i, j = free[0], 1 - free[0]
        w[i] = _div(-(b[i] + a_d[i][j] * w[j]), a_d[i][i])
    coefficients = tuple(w)
    ok = all(math.isfinite(c) for c in coefficients)
    return QuadraticSolution(coefficients, _model(w, a, b), _model(w, a_d, b), ok)


def _div(x: float, y: float) -> float:
    """``x / y`` as IEEE arithmetic (and a tensor) gives it: a zero ``y`` gives ±inf or NaN."""
    if y != 0:
        return x / y
    if x == 0 or math.isnan(x):
        return math.nan
    return math.copysign(math.inf, x) * math.copysign(1.0, y)


def _negated_solve(m: list[list[float]], b: list[float]) -> list[float]:
    """Return ``-(m^{-1} b)`` for a 2x2 ``m``: LAPACK's solve, bit for bit as before.

    NaN for both entries when ``m`` is singular or its determinant is not finite.
    """
    mt = torch.tensor(m, dtype=torch.float64)
    det = float(torch.linalg.det(mt))
    if det == 0 or not math.isfinite(det):
        return [math.nan, math.nan]
    return (-torch.linalg.solve(mt, torch.tensor(b, dtype=torch.float64))).tolist()


def _model(w: list[float], m: list[list[float]], b: list[float]) -> float:
    """``1/2 w^T m w + w^T b``, in the order ``(0.5 w)^T m w + w^T b``."""
    half = [0.5 * x for x in w]
    k = len(w)
    mw = sum(sum(half[i] * m[i][j] for i in range(k)) * w[j] for j in range(k))
    return mw + sum(x * y for x, y in zip(w, b, strict=True))
