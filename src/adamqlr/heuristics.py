"""K-FAC's step-size and damping heuristics, for any update direction.

These are pure functions of a handful of scalars, so each formula is tested alone and each
chapter of the book can show it. Nothing here knows which direction it is given: Adam's
(:class:`adamqlr.AdamQLR`), the gradient (:class:`adamqlr.SGDQLR`) or K-FAC's all use the same code.

Notation (the book's, equation numbers refer to its chapters): ``g`` the mini-batch gradient, ``d``
the direction (pointing uphill, like the gradient), ``q = d^T C d`` the curvature along it,
``lambda`` the Levenberg-Marquardt damping. The damped quadratic model of the loss along the step
``delta = -alpha d`` is

    M(alpha) = f - alpha g^T d + 1/2 alpha^2 (q + lambda ||d||^2),

minimised by ``alpha* = g^T d / (q + lambda ||d||^2)``. After the step, the reduction ratio
``rho = (f_new - f_old) / (M(alpha) - M(0))`` compares the actual change with the predicted one,
and the damping grows when the model was too optimistic (rho < 1/4) and shrinks when it was
trustworthy (rho > 3/4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from adamqlr._validation import real as _real

__all__ = [
    "DEFAULT_MAX_DAMPING",
    "LOSS_RESOLUTION_ULPS",
    "LevenbergMarquardt",
    "PlaneProposal",
    "Proposal",
    "clip_step_size",
    "damped_curvature",
    "loss_difference_trustworthy",
    "loss_resolution",
    "predicted_change",
    "propose_plane_step",
    "propose_step",
    "reduction_ratio",
    "step_size",
]


def damped_curvature(curvature: float, damping: float, sq_norm: float) -> float:
    """Return ``q + lambda ||d||^2``, the curvature of the damped model along ``d``."""
    return curvature + damping * sq_norm


def step_size(grad_dot_dir: float, curvature: float, damping: float, sq_norm: float) -> float:
    """Return the exact minimiser ``alpha* = g^T d / (q + lambda ||d||^2)`` of the damped model.

    The caller guarantees ``q + lambda ||d||^2 > 0`` (see :func:`propose_step` for the rule that
    handles the other case). ``alpha*`` is negative when ``g^T d < 0``: the step then goes along
    ``+d``, which is still downhill for the model.
    """
    return grad_dot_dir / damped_curvature(curvature, damping, sq_norm)


def clip_step_size(alpha: float, alpha_max: float | None) -> float:
    """Clip ``alpha`` symmetrically to ``[-alpha_max, alpha_max]`` (no clipping when ``None``)."""
    if alpha_max is None:
        return alpha
    return max(-alpha_max, min(alpha_max, alpha))


def predicted_change(
    alpha: float,
    grad_dot_dir: float,
    curvature: float,
    damping: float,
    sq_norm: float,
    *,
    include_damping: bool = True,
) -> float:
    """Return ``M(alpha) - M(0) = -alpha g^T d + 1/2 alpha^2 (q + lambda ||d||^2)``.

    With ``include_damping=False`` the damping term is left out of the model change (kfac-jax's
    convention); AdamQLR includes it by default, as the official code does.
    """
    curv = damped_curvature(curvature, damping, sq_norm) if include_damping else curvature
    return -alpha * grad_dot_dir + 0.5 * alpha * alpha * curv


#: How many units in the last place of the loss's dtype (at the loss's magnitude) a change of the
#: loss must exceed before it is trusted: two evaluations of the same mini-batch loss (the gradient
#: pass and the trial pass, which may sum in another order) can differ by a few ulps.
LOSS_RESOLUTION_ULPS = 4.0

#: The default upper bound on the damping of :class:`adamqlr.AdamQLR` and :class:`adamqlr.SGDQLR`.
#: The paper bounds lambda only from below; without an upper bound a long run of rejected steps
#: (e.g. non-finite batches, each doubling lambda) can drive lambda to infinity, where the step
#: size is exactly zero. 1e8 is far above any damping a converging run uses (lambda enters
#: ``q + lambda ||d||^2`` beside curvatures of order one per direction element).
DEFAULT_MAX_DAMPING = 1e8


def loss_resolution(
    loss: float, dtype: torch.dtype = torch.float32, ulps: float = LOSS_RESOLUTION_ULPS
) -> float:
    """Return the smallest change of a loss of size ``loss`` in ``dtype`` that can be trusted.

    That is ``ulps`` units in the last place of ``dtype`` at ``|loss|``: ``ulps * eps * 2^(e-1)``
    for ``|loss| = m 2^e`` with ``m`` in [0.5, 1) (``eps`` is ``torch.finfo(dtype).eps``). At zero
    (or below the smallest normal number) it is ``ulps`` times the smallest normal number.

    Args:
        loss: The loss value (the larger magnitude of the two being compared).
        dtype: The floating-point dtype the loss was computed in.
        ulps: How many units in the last place.

    Raises:
        ValueError: If ``dtype`` is not a floating-point dtype or ``ulps`` is negative or NaN.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"invalid dtype: {dtype!r} (expected a floating-point torch.dtype)")
    if not ulps >= 0.0:
        raise ValueError(f"invalid ulps: {ulps!r} (expected >= 0)")
    info = torch.finfo(dtype)
    magnitude = abs(loss)
    if not math.isfinite(magnitude):
        return math.inf
    if magnitude < info.tiny:
        return ulps * info.tiny
    _, exponent = math.frexp(magnitude)
    return ulps * info.eps * math.ldexp(1.0, exponent - 1)


def loss_difference_trustworthy(
    old: float, new: float, dtype: torch.dtype = torch.float32, ulps: float = LOSS_RESOLUTION_ULPS
) -> bool:
    """Return whether ``new - old`` is larger than the rounding level of the loss in ``dtype``.

    A difference of at most :func:`loss_resolution` ``(max(|old|, |new|), dtype, ulps)`` (in
    particular an exact zero, when a step is too small to change the rounded loss at all) says
    nothing about the step, so the reduction ratio must not be computed from it: rho would be 0
    (or noise) and the damping would grow for no reason, which makes the next step smaller still.
    Non-finite values are never trustworthy.

    Args:
        old: The loss before the step.
        new: The loss after it (the trial loss).
        dtype: The floating-point dtype both were computed in.
        ulps: How many units in the last place the difference must exceed.
    """
    if not (math.isfinite(old) and math.isfinite(new)):
        return False
    return abs(new - old) > loss_resolution(max(abs(old), abs(new)), dtype, ulps)


def reduction_ratio(true_change: float, model_change: float) -> float:
    """Return ``rho = true_change / model_change``; NaN when the model predicts no change."""
    if model_change == 0.0:
        return math.nan
    return true_change / model_change


@dataclass(frozen=True)
class Proposal:
    """A step proposed by the damped quadratic model.

    Attributes:
        alpha: The step size applied (after clipping and amplification), or NaN if ``accepted`` is
            false.
        accepted: Whether the model admits a step at all.
        reason: Why not, when ``accepted`` is false (``"nonpositive_curvature"``), else ``""``.
        damped_curvature: ``q + lambda ||d||^2`` (possibly made positive, see ``rule``).
        predicted_change: ``M(alpha) - M(0)`` for the applied ``alpha``.
    """

    alpha: float
    accepted: bool
    reason: str
    damped_curvature: float
    predicted_change: float


def propose_step(
    grad_dot_dir: float,
    curvature: float,
    damping: float,
    sq_norm: float,
    *,
    alpha_max: float | None = None,
    amplification: float = 1.0,
    include_damping: bool = True,
    nonpositive_curvature: str = "reject",
) -> Proposal:
    """Choose the step size along ``d`` from the damped quadratic model.

    Args:
        grad_dot_dir: ``g^T d``.
        curvature: ``q = d^T C d``.
        damping: ``lambda``.
        sq_norm: ``||d||^2``.
        alpha_max: Optional symmetric clip on the step size.
        amplification: Factor ``k`` applied after clipping (the paper's update amplification).
        include_damping: Whether the damping term enters the predicted change.
        nonpositive_curvature: What to do when ``q + lambda ||d||^2 <= 0`` (possible with the
            Hessian, or with the undamped Fisher when ``J d = 0``): ``"reject"`` proposes no step
            (the optimiser then leaves the parameters alone and raises the damping), ``"absolute"``
            divides by ``|q + lambda ||d||^2|`` (the saddle-free choice; still rejects exact zero).

    Returns:
        The :class:`Proposal`.
    """
    q_damped = damped_curvature(curvature, damping, sq_norm)
    if sq_norm == 0.0:
        return Proposal(0.0, True, "", q_damped, 0.0)
    if nonpositive_curvature == "absolute" and q_damped != 0.0:
        q_damped = abs(q_damped)
    if not q_damped > 0.0:
        return Proposal(math.nan, False, "nonpositive_curvature", q_damped, math.nan)
    alpha = clip_step_size(grad_dot_dir / q_damped, alpha_max) * amplification
    curv_for_model = q_damped if include_damping else q_damped - damping * sq_norm
    change = -alpha * grad_dot_dir + 0.5 * alpha * alpha * curv_for_model
    return Proposal(alpha, True, "", q_damped, change)


#: Relative size of ``det G`` (against ``G_11 G_22``) below which the plane of the two vectors
#: is taken to be a line: ``|cos|`` of the angle between them in the metric of ``G`` is then
#: within ``5e-13`` of 1, where the solve would only amplify rounding.
PLANE_DEGENERACY = 1e-12


@dataclass(frozen=True)
class PlaneProposal:
    """A step on the plane of ``v1 = -d`` and ``v2`` (the previous update), from the model.

    Attributes:
        lr: The coefficient ``a`` of ``v1`` applied (after clipping and amplification); the
            step along ``d`` alone would be ``alpha = a``. NaN if not ``accepted``.
        momentum: The coefficient ``b`` of ``v2`` applied (0.0 when the plane is a line).
        accepted: Whether the model admits a step.
        reason: ``"nonpositive_curvature"`` when the damped ``G`` is not positive definite.
        predicted_change: ``M(a, b) - M(0, 0)`` for the applied coefficients.
    """

    lr: float
    momentum: float
    accepted: bool
    reason: str
    predicted_change: float


def _absolute(g11: float, g12: float, g22: float) -> tuple[float, float, float]:
    """Return the symmetric 2x2 matrix with the same eigenvectors and absolute eigenvalues."""
    mean, half = 0.5 * (g11 + g22), math.hypot(0.5 * (g11 - g22), g12)
    low, high = mean - half, mean + half
    if half == 0.0:
        return abs(g11), 0.0, abs(g22)
    # projector on the eigenvector of ``high``: (G - low I) / (high - low)
    p11, p12, p22 = (g11 - low) / (2 * half), g12 / (2 * half), (g22 - low) / (2 * half)
    a_hi, a_lo = abs(high), abs(low)
    return (
        a_lo + (a_hi - a_lo) * p11,
        (a_hi - a_lo) * p12,
        a_lo + (a_hi - a_lo) * p22,
    )


def propose_plane_step(
    grad_dots: tuple[float, float],
    curvature: tuple[float, float, float],
    gram: tuple[float, float, float],
    damping: float,
    *,
    alpha_max: float | None = None,
    amplification: float = 1.0,
    include_damping: bool = True,
    nonpositive_curvature: str = "reject",
) -> PlaneProposal:
    """Choose a learning rate and a momentum from the damped quadratic model on a plane.

    K-FAC's rule on any direction: with ``v1 = -d`` and ``v2`` the previous update, the step
    ``delta = a v1 + b v2`` minimises ``M(a, b) = g^T delta + 1/2 delta^T (C + lambda I) delta``,
    so ``(a, b) = -G^{-1} (g^T v1, g^T v2)`` with ``G_ij = v_i^T (C + lambda I) v_j``. With
    ``v2 = 0`` it is :func:`propose_step` along ``d`` (``a = alpha``, ``b = 0``); so it is when
    ``det G <= PLANE_DEGENERACY * G_11 G_22`` (the two vectors are parallel in ``G``'s metric, the
    plane is a line, and the minimiser along ``v1`` is the model's minimiser on it).

    Args:
        grad_dots: ``(g^T v1, g^T v2)``.
        curvature: ``(v1^T C v1, v1^T C v2, v2^T C v2)``.
        gram: ``(v1^T v1, v1^T v2, v2^T v2)``.
        damping: ``lambda``.
        alpha_max: Optional symmetric clip on ``a``; when it clips, ``b`` is chosen again by the
            model with ``a`` held: ``b = -(g^T v2 + G_12 a) / G_22``.
        amplification: Factor ``k`` applied to both coefficients after clipping.
        include_damping: Whether the damping enters the predicted change.
        nonpositive_curvature: When ``G`` is not positive definite: ``"reject"`` proposes no
            step (as :func:`propose_step` for ``q + lambda ||d||^2 <= 0``); ``"absolute"``
            replaces ``G`` by its absolute value (the same eigenvectors, the eigenvalues'
            magnitudes; the saddle-free choice), and still rejects a zero eigenvalue.

    Returns:
        The :class:`PlaneProposal`.
    """
    g1, g2 = grad_dots
    c11, c12, c22 = curvature
    n11, n12, n22 = gram
    if n22 == 0.0 or n11 == 0.0:
        # no second vector (or no first: nothing to choose along d, and the 1-D rule takes no
        # step either)
        one = propose_step(
            -g1,
            c11,
            damping,
            n11,
            alpha_max=alpha_max,
            amplification=amplification,
            include_damping=include_damping,
            nonpositive_curvature=nonpositive_curvature,
        )
        return PlaneProposal(one.alpha, 0.0, one.accepted, one.reason, one.predicted_change)
    d11, d12, d22 = c11 + damping * n11, c12 + damping * n12, c22 + damping * n22
    if nonpositive_curvature == "absolute" and not (d11 > 0 and d11 * d22 - d12 * d12 > 0):
        d11, d12, d22 = _absolute(d11, d12, d22)
    det = d11 * d22 - d12 * d12
    if not (d11 > 0.0 and d22 > 0.0 and math.isfinite(det)):
        return PlaneProposal(math.nan, math.nan, False, "nonpositive_curvature", math.nan)
    if det <= PLANE_DEGENERACY * d11 * d22:
        if det < -PLANE_DEGENERACY * d11 * d22:  # indefinite
            return PlaneProposal(math.nan, math.nan, False, "nonpositive_curvature", math.nan)
        line, a, b = True, -g1 / d11, 0.0  # the plane is a line: the minimiser along v1
    else:
        line = False
        a = (-g1 * d22 + g2 * d12) / det
        b = (-g2 * d11 + g1 * d12) / det
    if alpha_max is not None and abs(a) > alpha_max:
        a = clip_step_size(a, alpha_max)
        if not line:
            b = -(g2 + d12 * a) / d22
    a, b = a * amplification, b * amplification
    if include_damping:
        m11, m12, m22 = d11, d12, d22
    else:
        m11, m12, m22 = d11 - damping * n11, d12 - damping * n12, d22 - damping * n22
    change = g1 * a + g2 * b + 0.5 * (a * a * m11 + 2.0 * a * b * m12 + b * b * m22)
    return PlaneProposal(a, b, True, "", change)


@dataclass(frozen=True)
class LevenbergMarquardt:
    """The Levenberg-Marquardt damping rule driven by the reduction ratio.

    ``lambda <- decrease * lambda`` if ``rho > high``; ``lambda <- increase * lambda`` if
    ``rho < low``; otherwise unchanged; then clipped to ``[lower, upper]``. The comparisons are
    strict, so a NaN ``rho`` leaves ``lambda`` unchanged (as in the official code).

    The starting value ``lambda_0`` is not part of the rule: the rule is the map from one
    ``lambda`` to the next, shared by every optimiser here (K-FAC's included) and by the reference
    iteration; :class:`adamqlr.rules.AdaptiveDamping` pairs it with a starting value.

    Where the paper ties the two factors (``omega_inc = 1 / omega_dec``, as K-FAC does), build the
    rule with :meth:`tied`, so that a setting carries one factor, not a rounded reciprocal.

    Attributes:
        decrease: Factor ``omega_dec`` in (0, 1).
        increase: Factor ``omega_inc`` > 1.
        lower: Lower bound on ``lambda`` (1e-8 in the paper).
        upper: Upper bound on ``lambda`` (none in the paper).
        low: Threshold below which the damping increases (1/4).
        high: Threshold above which the damping decreases (3/4).

    Raises:
        ValueError: Naming the field and its value, for a value that is not a real number or is
            out of range.
    """

    decrease: float = 0.5
    increase: float = 2.0
    lower: float = 1e-8
    upper: float = math.inf
    low: float = 0.25
    high: float = 0.75

    @classmethod
    def tied(
        cls,
        decrease: float,
        *,
        lower: float = 1e-8,
        upper: float = math.inf,
        low: float = 0.25,
        high: float = 0.75,
    ) -> LevenbergMarquardt:
        """Return the rule with ``increase = 1 / decrease`` (K-FAC's, and the paper's tuned form).

        ``LevenbergMarquardt.tied(0.95)`` raises ``lambda`` by ``1 / 0.95`` (computed, not the
        rounded ``1.0526``) when ``rho < low``.

        Raises:
            ValueError: Naming the value, unless ``decrease`` is a real number in (0, 1).
        """
        decrease = _real("damping_decrease", decrease)
        if not 0.0 < decrease < 1.0:
            raise ValueError(f"invalid damping_decrease: {decrease!r} (expected in (0, 1))")
        return cls(decrease, 1.0 / decrease, lower=lower, upper=upper, low=low, high=high)

    def __post_init__(self) -> None:
        for field_name, number in (
            ("damping_decrease", self.decrease),
            ("damping_increase", self.increase),
            ("damping_bounds lower", self.lower),
            ("damping_bounds upper", self.upper),
            ("rho threshold low", self.low),
            ("rho threshold high", self.high),
        ):
            _real(field_name, number)  # a real number, not NaN (a string would fail below)
        checks = [
            ("damping_decrease", self.decrease, 0.0 < self.decrease < 1.0, "in (0, 1)"),
            ("damping_increase", self.increase, 1.0 < self.increase < math.inf, "> 1 and finite"),
            ("damping_bounds lower", self.lower, 0.0 <= self.lower < math.inf, ">= 0 and finite"),
            ("damping_bounds upper", self.upper, self.upper >= self.lower, ">= the lower bound"),
            ("rho thresholds", (self.low, self.high), self.low < self.high, "low < high"),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                raise ValueError(f"invalid {name}: {value!r} (expected {expected})")

    def update(self, damping: float, rho: float) -> float:
        """Return the new damping after a step with reduction ratio ``rho``."""
        if rho > self.high:
            damping = damping * self.decrease
        elif rho < self.low:
            damping = damping * self.increase
        return min(self.upper, max(self.lower, damping))

    def after_unresolved(self, damping: float, model_change_resolved: bool) -> float:
        """Return the damping after a step whose loss change was below the loss's resolution.

        No reduction ratio can be computed (see :func:`loss_difference_trustworthy`). When the
        model's predicted change was resolvable, the step was large enough to measure and the
        damping is left unchanged. When the predicted change is itself below the resolution, the
        step is too small to be measured at all, which happens when lambda has grown far beyond
        the curvature (e.g. after a long run of rejected steps): lambda is then multiplied by
        ``decrease``, so that the steps grow back until their effect can be measured and the
        ordinary rule takes over again (a bad step is then seen, and undone by the increase).
        """
        if model_change_resolved:
            return damping
        return min(self.upper, max(self.lower, damping * self.decrease))

    def after_trial(
        self,
        damping: float,
        before: float,
        after: float,
        predicted_change: float,
        low: torch.dtype,
        *,
        resolve: bool = True,
    ) -> tuple[float, float, bool]:
        """Return ``(damping, rho, unresolved)`` after a step's measured loss change.

        The loss went from ``before`` to ``after`` where the damped model predicted
        ``predicted_change``. ``rho`` is the reduction ratio and the damping follows
        :meth:`update`; when the loss change is below the rounding level of ``low``
        (:func:`loss_difference_trustworthy`; ``resolve=False`` skips that test, the paper's
        rule) there is no ratio (NaN, ``unresolved`` true) and the damping follows
        :meth:`after_unresolved` (unchanged for a zero predicted change: a zero step teaches
        nothing about the damping).
        """
        if not resolve or loss_difference_trustworthy(before, after, low):
            rho = reduction_ratio(after - before, predicted_change)
            return self.update(damping, rho), rho, False
        if predicted_change != 0.0:
            resolution = loss_resolution(max(abs(before), abs(after)), low)
            damping = self.after_unresolved(damping, abs(predicted_change) > resolution)
        return damping, math.nan, True

    def after_rejection(self, damping: float, curvature: float, sq_norm: float) -> float:
        """Return the damping after a rejected step.

        The damping rises by ``increase``; when the curvature along ``d`` was negative it jumps
        at once to ``increase * |q| / ||d||^2``, the smallest multiple of the increase factor
        that makes the damped curvature positive on the same direction, instead of climbing
        there one factor at a time from a tiny value.
        """
        target = damping * self.increase
        if math.isfinite(curvature) and curvature < 0.0 and sq_norm > 0.0:
            target = max(target, self.increase * (-curvature) / sq_norm)
        if not math.isfinite(target):
            target = damping * self.increase
        return min(self.upper, max(self.lower, target))
