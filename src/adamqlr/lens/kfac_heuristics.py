"""K-FAC's own heuristics, recomputed from scratch (chapter "K-FAC's heuristics").

K-FAC as the paper runs it (kfac-jax) adds four things to its Kronecker-factored curvature:

1. a normalised exponential moving average of the factors ``A`` and ``G``;
2. factored Tikhonov damping with the pi-adjustment, ``(A + pi sqrt(lambda) I) (x)
   (G + sqrt(lambda)/pi I)`` in place of ``A (x) G + lambda I``;
3. the update ``delta = w_1 Delta + w_2 v`` (``Delta`` the preconditioned gradient, ``v`` the
   previous update) with ``w`` the minimiser of the exact damped quadratic model over the plane
   they span: a learning rate ``-w_1`` and a momentum ``w_2`` in closed form;
4. the Levenberg-Marquardt rule on ``lambda``, with the reduction ratio ``rho`` measured against the
   *undamped* model change.

This module recomputes each of them without the library's K-FAC code, from dense matrices of a
network small enough to hold them, so that the chapter can check the library step by step:

* :func:`kronecker_factors_exact`: each dense layer's ``A`` and the exact expectation ``G`` from
  per-example Jacobians and output Hessians (``torch.func``), not from hooks;
* :func:`pi_adjustment`, :func:`cross_term_trace`, :func:`damping_eigenvalues`: the damping
  algebra on a pair of factors;
* :func:`dense_kfac_direction`: ``Delta`` by a dense solve with the Kronecker product;
* :func:`solve_two_coefficients`: the learning rate and momentum by Cramer's rule;
* :func:`lm_damping`: the damping rule, written out;
* :func:`audit_kfac_run`: a run of the library's :class:`adamqlr.kfac.KFAC` with every step
  recomputed alongside (one row per step), and :func:`landscape` for the plane of one step;
* :func:`kfac_heuristics_study` and :func:`kfac_quadratic_run`: the chapter's runs.

Everything is float64 and meant for networks of a few hundred parameters (``nn.Sequential`` of
``nn.Linear`` layers and parameter-free activations, without buffers).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import hessian, jacrev, vmap

from adamqlr.kfac import KFAC
from adamqlr.lens.products import pooled_images
from adamqlr.lens.training import batch_stream
from adamqlr.losses import CrossEntropyLoss, Loss, SquaredErrorLoss
from adamqlr.profiles import Profile, pick
from adamqlr.tasks import get_task
from adamqlr.tasks._common import MLP
from adamqlr.tasks.base import Split
from adamqlr.testing import _check_loss, ggn_gram

__all__ = [
    "KFACHeuristicsConfig",
    "KFACHeuristicsStudy",
    "Snapshot",
    "TwoCoefficientSolution",
    "audit_kfac_run",
    "cross_term_trace",
    "damping_eigenvalues",
    "dense_kfac_direction",
    "kfac_heuristics_study",
    "kfac_quadratic_run",
    "kronecker_factors_exact",
    "landscape",
    "lm_damping",
    "pi_adjustment",
    "solve_two_coefficients",
    "tiny_classifier",
]

#: kfac-jax's damping factor (``damping_adaptation_decay``), thresholds and bounds.
KFAC_DECAY = 0.9
RHO_LOW, RHO_HIGH = 0.25, 0.75
KFAC_DAMPING_BOUNDS = (1e-8, math.inf)
NAN_RHO = -100.0


# ------------------------------------------------------------------------------ the network
def _linear_layers(model: nn.Module) -> list[tuple[int, nn.Linear]]:
    """Return the indices and modules of the dense layers of a supported ``nn.Sequential``."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"invalid model: {type(model).__name__} (expected an nn.Sequential)")
    layers = []
    for i, module in enumerate(model):
        if isinstance(module, nn.Linear):
            layers.append((i, module))
        elif any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            raise ValueError(
                f"invalid model: layer {i} ({type(module).__name__}) has parameters or buffers; "
                "only nn.Linear layers and parameter-free activations are supported"
            )
    if not layers:
        raise ValueError("invalid model: it has no nn.Linear layer")
    return layers


def _as_matrix(layer: nn.Linear, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``[W, b]`` (``out x (in [+1])``): the layout of one Kronecker block."""
    if layer.bias is None:
        return weight
    return torch.cat([weight, cast(Tensor, bias).unsqueeze(1)], dim=1)


def kronecker_factors_exact(
    model: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss
) -> dict[str, tuple[Tensor, Tensor]]:
    """Return each dense layer's Kronecker factors ``(A, G)`` on one batch, computed densely.

    ``A = (1/N) sum_n a_n a_n^T`` with ``a_n`` the layer's input for example ``n`` (and a 1
    appended when the layer has a bias); ``G = (1/N) sum_n J_n^T H_n J_n`` with ``J_n`` the
    Jacobian of example ``n``'s outputs with respect to the layer's pre-activations and ``H_n``
    the Hessian of its loss term with respect to the outputs: the exact expectation over the
    model's predictive distribution of the sampled statistic that K-FAC averages (for the paper's
    losses the Fisher equals the GGN). Both Jacobian and Hessian come from ``torch.func``; nothing
    of :mod:`adamqlr.kfac` is used.

    Args:
        model: An ``nn.Sequential`` of ``nn.Linear`` layers and parameter-free activations.
        inputs: The batch's inputs ``(N, in)``.
        targets: Its targets.
        loss: :class:`~adamqlr.losses.CrossEntropyLoss` or
            :class:`~adamqlr.losses.SquaredErrorLoss`.

    Returns:
        ``{module name: (A, G)}`` for every dense layer, in order.

    Raises:
        ValueError: For an unsupported model or loss.
    """
    layers = _linear_layers(model)
    _check_loss(loss)
    with torch.no_grad():
        outputs = model(inputs)

    def term(z: Tensor, t: Tensor) -> Tensor:
        return loss.value(z.unsqueeze(0), t.unsqueeze(0))

    h_out = vmap(hessian(term))(outputs.detach(), targets)  # (N, K, K)
    n = inputs.shape[0]
    factors: dict[str, tuple[Tensor, Tensor]] = {}
    a = inputs.detach()
    modules = list(cast(nn.Sequential, model))
    position = 0
    for index, layer in layers:
        with torch.no_grad():
            for module in modules[position:index]:
                a = module(a)
            s = layer(a)
        tail = nn.Sequential(*modules[index + 1 :])

        def rest(s_n: Tensor, tail: nn.Module = tail) -> Tensor:
            return tail(s_n.unsqueeze(0)).squeeze(0)

        jac = vmap(jacrev(rest))(s)  # (N, K, width)
        g = torch.einsum("nkw,nkl,nlv->wv", jac, h_out, jac) / n
        rows = a if layer.bias is None else torch.cat([a, a.new_ones(n, 1)], dim=1)
        factors[str(index)] = (rows.T @ rows / n, g)
        with torch.no_grad():
            a = s
        position = index + 1
    return factors


# ---------------------------------------------------------------------------- the damping
def pi_adjustment(a: Tensor, g: Tensor) -> float:
    """Return ``pi = sqrt((tr A / dim A) / (tr G / dim G))``, the split of the damping.

    Raises:
        ValueError: If either factor has a non-positive trace.
    """
    mean_a = float(torch.diagonal(a).mean())
    mean_g = float(torch.diagonal(g).mean())
    if not (mean_a > 0.0 and mean_g > 0.0):
        raise ValueError(f"pi needs factors with positive traces; got means {mean_a}, {mean_g}")
    return math.sqrt(mean_a / mean_g)


def cross_term_trace(a: Tensor, g: Tensor, damping: float, pi: float) -> float:
    """Return ``tr E(pi)``, the trace of what factored damping adds beyond ``lambda I``.

    ``(A + pi sqrt(lambda) I) (x) (G + sqrt(lambda)/pi I) = A (x) G + lambda I + E(pi)`` with
    ``E(pi) = (sqrt(lambda)/pi) A (x) I + pi sqrt(lambda) I (x) G``, so
    ``tr E = sqrt(lambda) (tr A dim G / pi + pi dim A tr G)``.

    Raises:
        ValueError: If ``damping < 0`` or ``pi <= 0``.
    """
    if not (damping >= 0.0 and pi > 0.0):
        raise ValueError(f"invalid damping {damping!r} or pi {pi!r} (expected >= 0 and > 0)")
    root = math.sqrt(damping)
    tr_a, tr_g = float(torch.trace(a)), float(torch.trace(g))
    return root * (tr_a * g.shape[0] / pi + pi * a.shape[0] * tr_g)


def damping_eigenvalues(
    a: Tensor, g: Tensor, damping: float, pi: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return the eigenvalues of ``A (x) G + lambda I`` and of the factored damped block.

    ``A (x) G`` and ``A_d (x) G_d`` share the eigenvectors ``u_i (x) w_j``; their eigenvalues are
    ``a_i g_j + lambda`` and ``(a_i + pi sqrt(lambda)) (g_j + sqrt(lambda)/pi)``, returned in the
    same order (``i`` major), so the second is never below the first.

    Raises:
        ValueError: If ``damping < 0`` or ``pi <= 0``.
    """
    if not (damping >= 0.0 and pi > 0.0):
        raise ValueError(f"invalid damping {damping!r} or pi {pi!r} (expected >= 0 and > 0)")
    ea = torch.linalg.eigvalsh(a.double()).clamp_min(0.0).numpy()
    eg = torch.linalg.eigvalsh(g.double()).clamp_min(0.0).numpy()
    root = math.sqrt(damping)
    exact = np.outer(ea, eg).ravel() + damping
    factored = np.outer(ea + pi * root, eg + root / pi).ravel()
    return exact, factored


def dense_kfac_direction(
    model: nn.Module,
    factors: Mapping[str, tuple[Tensor, Tensor]],
    grads: Mapping[str, Tensor],
    damping: float,
) -> dict[str, Tensor]:
    """Return ``Delta = F_tilde^{-1} g``, one dense solve per layer with the Kronecker product.

    For each dense layer, ``vec([dW, db]) = (A_d (x) G_d)^{-1} vec([gW, gb])`` with ``vec``
    stacking columns and ``(A_d, G_d)`` the pi-damped factors (:func:`pi_adjustment`). The
    ``P_l x P_l`` matrix is formed and solved, which is what the library avoids.

    Args:
        model: The network (an ``nn.Sequential`` as for :func:`kronecker_factors_exact`).
        factors: ``{module name: (A, G)}``.
        grads: Gradient by parameter name (as in ``model.named_parameters()``).
        damping: ``lambda``.

    Returns:
        ``Delta`` by parameter name.

    Raises:
        ValueError: If a layer's factors are missing.
    """
    out: dict[str, Tensor] = {}
    for index, layer in _linear_layers(model):
        name = str(index)
        if name not in factors:
            raise ValueError(f"no factors for layer {name!r} (have {sorted(factors)})")
        a, g = (f.double() for f in factors[name])
        pi = pi_adjustment(a, g)
        root = math.sqrt(damping)
        a_d = a + pi * root * torch.eye(a.shape[0], dtype=a.dtype)
        g_d = g + root / pi * torch.eye(g.shape[0], dtype=g.dtype)
        bias = grads.get(f"{name}.bias") if layer.bias is not None else None
        mat = _as_matrix(layer, grads[f"{name}.weight"].double(), bias)
        vec = mat.T.reshape(-1)  # columns of [W, b], stacked
        solved = torch.linalg.solve(torch.kron(a_d, g_d), vec).reshape(mat.shape[1], -1).T
        width = layer.weight.shape[1]
        out[f"{name}.weight"] = solved[:, :width]
        if layer.bias is not None:
            out[f"{name}.bias"] = solved[:, width]
    return out


# ---------------------------------------------------------------------- learning rate, momentum
@dataclass(frozen=True)
class TwoCoefficientSolution:
    """The minimiser of the damped quadratic model over ``w`` (``delta = w_1 Delta + w_2 v``).

    Attributes:
        w1: Coefficient of ``Delta``; the learning rate is ``-w1``.
        w2: Coefficient of ``v``: the momentum (0 when ``v = 0``).
        quad_damped: ``Q_lambda(w) = 1/2 w^T (A + lambda D) w + w^T b`` at the minimiser
            (``= 1/2 w^T b``).
        quad_undamped: ``Q_0(w) = 1/2 w^T A w + w^T b`` at the same ``w``
            (``= quad_damped - lambda ||delta||^2 / 2``).
        w1_line: The minimiser along ``Delta`` alone (``w_2 = 0``): ``-b_1 / (A_11 + lambda D_11)``,
            AdamQLR's step size with ``d = -Delta``.
        quad_line: ``Q_lambda`` at ``(w1_line, 0)`` (``= -b_1^2 / (2 (A_11 + lambda D_11))``).
    """

    w1: float
    w2: float
    quad_damped: float
    quad_undamped: float
    w1_line: float
    quad_line: float


def solve_two_coefficients(
    curvature: Sequence[Sequence[float]] | np.ndarray,
    gram: Sequence[Sequence[float]] | np.ndarray,
    grad_dots: Sequence[float] | np.ndarray,
    damping: float,
) -> TwoCoefficientSolution:
    """Minimise ``Q_lambda(w) = 1/2 w^T (A + lambda D) w + w^T b`` over ``w`` in the plane.

    Cramer's rule on the 2 x 2 system ``(A + lambda D) w = -b``, with ``m = A + lambda D``:
    ``w_1 = (m_12 b_2 - m_22 b_1) / det m`` and ``w_2 = (m_12 b_1 - m_11 b_2) / det m``. When the
    second vector is zero (``D_22 = 0``: the first step) the plane is a line: ``w_2 = 0`` and
    ``w_1 = -b_1 / m_11``.

    Args:
        curvature: ``A = V^T C V`` (2 x 2).
        gram: ``D = V^T V`` (2 x 2).
        grad_dots: ``b = V^T g`` (2,).
        damping: ``lambda >= 0``.

    Returns:
        The :class:`TwoCoefficientSolution`.

    Raises:
        ValueError: For wrong shapes, a negative damping, or a model that is not convex in the
            plane (``m_11 <= 0`` or ``det m <= 0`` with a non-zero second vector).
    """
    a = np.asarray(curvature, dtype=np.float64)
    d = np.asarray(gram, dtype=np.float64)
    b = np.asarray(grad_dots, dtype=np.float64)
    if a.shape != (2, 2) or d.shape != (2, 2) or b.shape != (2,):
        raise ValueError(
            f"invalid shapes {a.shape}, {d.shape}, {b.shape} (expected (2, 2), (2, 2), (2,))"
        )
    if not damping >= 0.0:
        raise ValueError(f"invalid damping: {damping!r} (expected >= 0)")
    m = a + damping * d
    if not m[0, 0] > 0.0:
        raise ValueError(f"the model is not convex along Delta: m_11 = {m[0, 0]!r}")
    w1_line = -b[0] / m[0, 0]
    quad_line = -0.5 * b[0] ** 2 / m[0, 0]
    if d[1, 1] == 0.0:
        w = np.array([w1_line, 0.0])
    else:
        det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
        if not det > 0.0:
            raise ValueError(f"the model is not convex in the plane: det = {det!r}")
        w = np.array(
            [(m[0, 1] * b[1] - m[1, 1] * b[0]) / det, (m[1, 0] * b[0] - m[0, 0] * b[1]) / det]
        )
    return TwoCoefficientSolution(
        w1=float(w[0]),
        w2=float(w[1]),
        quad_damped=float(0.5 * w @ m @ w + w @ b),
        quad_undamped=float(0.5 * w @ a @ w + w @ b),
        w1_line=float(w1_line),
        quad_line=float(quad_line),
    )


def lm_damping(
    damping: float,
    rho: float,
    *,
    decay: float = KFAC_DECAY,
    bounds: tuple[float, float] = KFAC_DAMPING_BOUNDS,
) -> float:
    """kfac-jax's damping rule: times ``decay`` if ``rho > 3/4``, over ``decay`` if ``rho < 1/4``.

    A NaN ``rho`` counts as -100 (raises the damping); the result is clipped to ``bounds``.
    """
    if math.isnan(rho):
        rho = NAN_RHO
    if rho > RHO_HIGH:
        damping = damping * decay
    elif rho < RHO_LOW:
        damping = damping / decay
    return min(bounds[1], max(bounds[0], damping))


# -------------------------------------------------------------------------------- the audit
@dataclass(frozen=True)
class Snapshot:
    """One step's plane: enough to evaluate the loss and the models at any ``w``.

    Attributes:
        iteration: The step (1-based).
        params: Parameters before the step, by name.
        direction: ``Delta`` by name.
        velocity: ``v`` (the previous update) by name.
        inputs: The step's batch inputs.
        targets: Its targets.
        loss0: The batch loss before the step.
        curvature: ``A = V^T G V``.
        gram: ``D = V^T V``.
        grad_dots: ``b = V^T g``.
        damping: ``lambda`` of the step.
        solution: The step's :class:`TwoCoefficientSolution`.
    """

    iteration: int
    params: dict[str, Tensor]
    direction: dict[str, Tensor]
    velocity: dict[str, Tensor]
    inputs: Tensor
    targets: Tensor
    loss0: float
    curvature: np.ndarray
    gram: np.ndarray
    grad_dots: np.ndarray
    damping: float
    solution: TwoCoefficientSolution


def _flat(named: Mapping[str, Tensor], names: Sequence[str]) -> Tensor:
    return torch.cat([named[n].detach().double().reshape(-1) for n in names])


def _batch_loss(model: nn.Module, params: Mapping[str, Tensor], inputs, targets, loss) -> float:
    trial = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in trial.named_parameters():
            p.copy_(params[n])
        return float(loss.value(trial(inputs), targets))


def _rel(x: float | Tensor, y: float | Tensor) -> float:
    """``|x - y| / max(|y|, tiny)`` (norms for tensors)."""
    if isinstance(x, Tensor):
        yt = cast(Tensor, y)
        return float((x - yt).detach().norm() / max(float(yt.detach().norm()), 1e-300))
    yf = cast(float, y)
    return abs(x - yf) / max(abs(yf), 1e-300)


def audit_kfac_run(
    model: nn.Module,
    loss: Loss,
    batches: Iterator[tuple[Tensor, Tensor]],
    steps: int,
    *,
    estimation: str = "sampled",
    seed: int | None = 0,
    snapshot_at: Iterable[int] = (),
    **kfac_kwargs: Any,
) -> tuple[pd.DataFrame, dict[int, Snapshot], KFAC]:
    """Run adaptive :class:`~adamqlr.kfac.KFAC` and recompute every step independently.

    Before each step: the gradient ``g`` (autograd), a copy of the network for the GGN products
    on the batch (:func:`adamqlr.testing.ggn_gram`), the exact per-batch factors
    (:func:`kronecker_factors_exact`) and the previous update ``v`` (from the optimiser's state).
    After it: the library's factors (the moving averages the step used), from which ``Delta``
    follows by :func:`dense_kfac_direction`; then ``A``, ``D``, ``b``, the coefficients by
    :func:`solve_two_coefficients`, the trial loss by a separate forward pass, both reduction
    ratios and the damping rule. The library's own numbers sit beside them in the same row.

    Args:
        model: A float64 ``nn.Sequential`` (see :func:`kronecker_factors_exact`); trained in place.
        loss: Its loss.
        batches: Source of mini-batches.
        steps: Number of steps.
        estimation: K-FAC's factor estimation (``"sampled"``, the paper's, or ``"exact"``).
        seed: K-FAC's sampling seed.
        snapshot_at: Steps (1-based) whose plane is kept as a :class:`Snapshot`.
        **kfac_kwargs: Further :class:`~adamqlr.kfac.KFAC` arguments (``mode`` is ``"adaptive"``).

    Returns:
        ``(trace, snapshots, optimiser)``. ``trace`` has one row per step with the library's
        :class:`~adamqlr.kfac.KFACStepStats` fields and the recomputed ones: ``w1``, ``w2``,
        ``quad_damped``, ``quad_undamped``, ``w1_line``, ``quad_line``, ``trial_loss_own``,
        ``change``, ``change_line`` (the batch loss change of the line-only step),
        ``rho_undamped`` (kfac-jax's convention) and ``rho_damped`` (AdamQLR's), ``damping_rule``
        (the rule applied to the library's ``rho``), ``update_error`` (relative error of
        ``w1 Delta + w2 v`` against the parameters' actual change), ``ema_error`` (largest relative
        error of a library factor against the moving average of the exact per-batch factors),
        the model's entries ``A11``, ``A12``, ``A22``, ``D11``, ``D12``, ``D22``, ``b1``, ``b2``,
        ``curvature_dd`` (``Delta^T G Delta``), ``damping_dd`` (``lambda ||Delta||^2``),
        ``grad_dot_dir`` (``g^T Delta``), ``cos_dv`` (cosine of ``Delta`` and ``v``), and per
        layer ``pi_<name>``.

    Raises:
        ValueError: For an unsupported model or loss, or a step the library skipped.
    """
    _linear_layers(model)  # refuses an unsupported model before anything runs
    _check_loss(loss)
    kfac_kwargs = {**kfac_kwargs, "mode": "adaptive"}
    decay = kfac_kwargs.get("ema_decay", 0.95)
    opt = KFAC(model, loss=loss, estimation=estimation, seed=seed, **kfac_kwargs)
    lm_kwargs = {
        "decay": kfac_kwargs.get("damping_decay", KFAC_DECAY),
        "bounds": kfac_kwargs.get("damping_bounds", KFAC_DAMPING_BOUNDS),
    }
    names = [n for n, _ in model.named_parameters()]
    wanted = set(snapshot_at)
    ema_sum: dict[str, list[Tensor]] = {}
    ema_weight = 0.0
    rows, snapshots = [], {}
    for it in range(1, steps + 1):
        inputs, targets = next(batches)
        params0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        model_before = copy.deepcopy(model)
        velocity = {
            n: opt.state[p].get("velocity", torch.zeros_like(p)).detach().clone()
            for n, p in model.named_parameters()
        }
        with torch.enable_grad():
            value = loss.value(model(inputs), targets)
            grads = dict(zip(names, torch.autograd.grad(value, list(model.parameters())),
                             strict=True))  # fmt: skip
        f0 = float(value.detach())
        batch_factors = kronecker_factors_exact(model, inputs, targets, loss)
        ema_weight = decay * ema_weight + 1.0
        for key, pair in batch_factors.items():
            old = ema_sum.get(key)
            ema_sum[key] = [p.clone() if old is None else decay * o + p
                            for p, o in zip(pair, old or (None, None), strict=True)]  # fmt: skip

        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            stats = opt.step(inputs, targets)
        if not stats.accepted:
            raise ValueError(f"step {it} was skipped by the library ({stats.reason})")
        params1 = {n: p.detach().clone() for n, p in model.named_parameters()}
        factors = _library_factors(opt)
        damping = stats.damping_used
        direction = dense_kfac_direction(model, factors, grads, damping)
        vd, vv, vg = _flat(direction, names), _flat(velocity, names), _flat(grads, names)
        vecs = torch.stack([vd, vv])
        curv = ggn_gram(model_before, inputs, targets, loss, [vd, vv]).numpy()
        gram = (vecs @ vecs.T).numpy()
        bvec = (vecs @ vg).numpy()
        sol = solve_two_coefficients(curv, gram, bvec, damping)
        actual = _flat(params1, names) - _flat(params0, names)
        predicted_update = sol.w1 * vd + sol.w2 * vv
        trial = _batch_loss(model, params1, inputs, targets, loss)
        line = {n: params0[n] + sol.w1_line * direction[n] for n in names}
        change_line = _batch_loss(model, line, inputs, targets, loss) - f0
        ema_error = max(
            _rel(lib, own / ema_weight)
            for key in factors
            for lib, own in zip(factors[key], ema_sum[key], strict=True)
        )
        row = {
            "iteration": it,
            **stats.as_dict(),
            "loss_own": f0,
            "w1": sol.w1,
            "w2": sol.w2,
            "quad_damped": sol.quad_damped,
            "quad_undamped": sol.quad_undamped,
            "w1_line": sol.w1_line,
            "quad_line": sol.quad_line,
            "trial_loss_own": trial,
            "change": trial - f0,
            "change_line": change_line,
            "rho_undamped": (trial - f0) / sol.quad_undamped,
            "rho_damped": (trial - f0) / sol.quad_damped,
            "damping_rule": lm_damping(damping, stats.rho, **lm_kwargs),
            "update_error": _rel(predicted_update, actual),
            "ema_error": ema_error,
            **{f"A{i + 1}{j + 1}": float(curv[i, j]) for i in range(2) for j in range(i, 2)},
            **{f"D{i + 1}{j + 1}": float(gram[i, j]) for i in range(2) for j in range(i, 2)},
            "b1": float(bvec[0]),
            "b2": float(bvec[1]),
            "curvature_dd": float(curv[0, 0]),
            "damping_dd": damping * float(gram[0, 0]),
            "grad_dot_dir": float(bvec[0]),
            "cos_dv": float(gram[0, 1] / math.sqrt(gram[0, 0] * gram[1, 1]))
            if gram[1, 1] > 0
            else math.nan,
        }
        for key, (a, g) in factors.items():
            row[f"pi_{key}"] = pi_adjustment(a, g)
        rows.append(row)
        if it in wanted:
            snapshots[it] = Snapshot(
                iteration=it,
                params=params0,
                direction=direction,
                velocity=velocity,
                inputs=inputs,
                targets=targets,
                loss0=f0,
                curvature=curv,
                gram=gram,
                grad_dots=bvec,
                damping=damping,
                solution=sol,
            )
    return pd.DataFrame(rows), snapshots, opt


def _library_factors(opt: KFAC) -> dict[str, tuple[Tensor, Tensor]]:
    """Return the optimiser's moving-average factors of each Kronecker block, by module name."""
    return {
        b.name: (opt.factors(b)["A"], opt.factors(b)["G"])
        for b in opt.blocks
        if b.kind == "kronecker"
    }


def landscape(
    model: nn.Module,
    loss: Loss,
    snapshot: Snapshot,
    lrs: np.ndarray,
    momenta: np.ndarray,
) -> pd.DataFrame:
    """Evaluate the batch loss change and both quadratic models over a grid of ``(lr, momentum)``.

    At ``w = (-lr, momentum)``: ``change`` is ``f(theta + w_1 Delta + w_2 v) - f(theta)`` on the
    snapshot's batch (one forward pass per point), ``model_damped`` is ``Q_lambda(w)`` and
    ``model_undamped`` is ``Q_0(w)``.

    Args:
        model: The network (its parameters are not modified).
        loss: Its loss.
        snapshot: The step.
        lrs: Learning rates (``-w_1``).
        momenta: Momenta (``w_2``).

    Returns:
        One row per grid point: ``lr``, ``momentum``, ``change``, ``model_damped``,
        ``model_undamped``.
    """
    trial = copy.deepcopy(model)
    a, d, b = snapshot.curvature, snapshot.gram, snapshot.grad_dots
    m = a + snapshot.damping * d
    rows = []
    with torch.no_grad():
        for lr in lrs:
            for mom in momenta:
                w = np.array([-lr, mom])
                for n, p in trial.named_parameters():
                    p.copy_(
                        snapshot.params[n]
                        + w[0] * snapshot.direction[n]
                        + w[1] * snapshot.velocity[n]
                    )
                change = (
                    float(loss.value(trial(snapshot.inputs), snapshot.targets)) - snapshot.loss0
                )
                rows.append(
                    {
                        "lr": float(lr),
                        "momentum": float(mom),
                        "change": change,
                        "model_damped": float(0.5 * w @ m @ w + w @ b),
                        "model_undamped": float(0.5 * w @ a @ w + w @ b),
                    }
                )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------- the runs
def tiny_classifier(
    profile: Profile | str, seed: int = 0, *, train_size: int = 4096
) -> tuple[nn.Sequential, Split, CrossEntropyLoss]:
    """Return the chapter's tiny classifier: Fashion-MNIST pooled to 4x4, a 16-8-10 ReLU MLP.

    The model (226 parameters, float64, the task's MLP initialisation with ``seed``) is the one of
    the chapter "Curvature products without matrices"; the data are the first ``train_size``
    training images (fewer under the ``smoke`` profile if the profile has fewer), pooled.

    Raises:
        ValueError: If ``profile`` is unknown or ``train_size < 1``.
    """
    if train_size < 1:
        raise ValueError(f"invalid train_size: {train_size!r} (expected >= 1)")
    data = get_task("fashion-mnist").load_data(profile).train
    k = min(train_size, len(data))
    split = Split(pooled_images(data.inputs[:k].double()), data.targets[:k])
    model = MLP((16, 8, 10), torch.Generator().manual_seed(seed)).double()
    return model, split, CrossEntropyLoss()


#: The configuration's fields that differ from its defaults, by profile.
_KFAC_HEURISTICS_SIZES: dict[Profile, dict[str, Any]] = {
    Profile.SMOKE: dict(
        steps=12, batch_size=64, train_size=512, seeds=(0,), snapshot_at=(2, 10), quadratic_steps=12
    ),
    Profile.QUICK: {},
    Profile.PAPER: dict(steps=500, seeds=tuple(range(10))),
}


@dataclass(frozen=True)
class KFACHeuristicsConfig:
    """What the chapter runs under one profile.

    Attributes:
        steps: Steps of each audited run.
        batch_size: Mini-batch size.
        train_size: Training images the batches are drawn from.
        seeds: One audited run per seed (initial weights, batch order, sampled targets).
        snapshot_at: Steps of the first seed's sampled run whose plane is kept.
        quadratic_steps: Steps of the exact-quadratic run.
    """

    steps: int = 200
    batch_size: int = 128
    train_size: int = 4096
    seeds: tuple[int, ...] = (0, 1, 2)
    snapshot_at: tuple[int, ...] = (2, 50)
    quadratic_steps: int = 60

    @classmethod
    def for_profile(cls, profile: Profile | str) -> KFACHeuristicsConfig:
        """Return the configuration of ``profile``.

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        return cls(**pick(_KFAC_HEURISTICS_SIZES, profile))


@dataclass(frozen=True)
class KFACHeuristicsStudy:
    """The chapter's runs.

    Attributes:
        config: The configuration.
        trace: Every step of every audited run (:func:`audit_kfac_run` columns), with ``seed`` and
            ``estimation`` (``"exact"`` or ``"sampled"``).
        snapshots: The kept planes of the first seed's sampled run.
        factors: The first seed's sampled run's final factors, ``{layer: (A, G)}``.
        final_damping: That run's final damping.
        model: A copy of that run's network at its snapshot steps' architecture (for
            :func:`landscape`).
        loss: The loss.
    """

    config: KFACHeuristicsConfig
    trace: pd.DataFrame
    snapshots: dict[int, Snapshot]
    factors: dict[str, tuple[Tensor, Tensor]]
    final_damping: float
    model: nn.Module
    loss: Loss = field(default_factory=CrossEntropyLoss)


def kfac_heuristics_study(
    config: KFACHeuristicsConfig, profile: Profile | str
) -> KFACHeuristicsStudy:
    """Audit adaptive K-FAC on the tiny classifier, with exact and with sampled factors.

    Each seed runs twice from the same initial weights and batches: with ``estimation="exact"``
    (the per-batch factors are the exact expectations, so the moving average can be checked
    against :func:`kronecker_factors_exact`) and with the paper's ``"sampled"``.

    Args:
        config: What to run.
        profile: The Fashion-MNIST data profile.

    Returns:
        The :class:`KFACHeuristicsStudy`.
    """
    traces = []
    snapshots: dict[int, Snapshot] = {}
    factors: dict[str, tuple[Tensor, Tensor]] = {}
    final_damping, kept_model = math.nan, None
    for seed in config.seeds:
        for estimation in ("exact", "sampled"):
            model, split, loss = tiny_classifier(profile, seed, train_size=config.train_size)
            batches = batch_stream(split, min(config.batch_size, len(split)), seed)
            first = seed == config.seeds[0] and estimation == "sampled"
            trace, snaps, opt = audit_kfac_run(
                model,
                loss,
                batches,
                config.steps,
                estimation=estimation,
                seed=seed,
                snapshot_at=config.snapshot_at if first else (),
            )
            trace.insert(0, "estimation", estimation)
            trace.insert(0, "seed", seed)
            traces.append(trace)
            if first:
                snapshots = snaps
                factors = _library_factors(opt)
                final_damping, kept_model = opt.damping, model
    assert kept_model is not None
    return KFACHeuristicsStudy(
        config=config,
        trace=pd.concat(traces, ignore_index=True),
        snapshots=snapshots,
        factors=factors,
        final_damping=final_damping,
        model=kept_model,
    )


def kfac_quadratic_run(profile: Profile | str, steps: int = 60, seed: int = 0) -> pd.DataFrame:
    """Audit adaptive K-FAC on linear least squares (UCI Energy, the full training set, float64).

    A linear model with half the squared error has an exactly quadratic loss whose Hessian is its
    GGN, so the undamped model of every step is the loss itself on the plane.

    Args:
        profile: The UCI Energy data profile.
        steps: Number of steps.
        seed: Seed of the initial weights and of the sampled targets.

    Returns:
        The :func:`audit_kfac_run` trace.
    """
    data = get_task("uci-energy").load_data(profile)
    x = data.train.inputs.double()
    t = data.train.targets.double()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], t.shape[1])).double()

    def full_batch() -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield x, t

    trace, _, _ = audit_kfac_run(model, SquaredErrorLoss(), full_batch(), steps, seed=seed)
    return trace
