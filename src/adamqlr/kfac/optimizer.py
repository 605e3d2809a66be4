"""K-FAC in PyTorch, with kfac-jax's adaptive heuristics, fixed hyperparameters, or any mix.

One :meth:`KFAC.step` on a mini-batch, in kfac-jax's order (``Optimizer._step``):

1. one forward pass records each layer's inputs; a backward pass gives the gradient ``g``; a second
   backward pass of the loss at targets *sampled* from the model gives the output gradients
   (:mod:`adamqlr.kfac.blocks`);
2. the factors' normalised exponential moving averages are updated (decay 0.95):
   ``F_t = sum_k 0.95^k S_{t-k} / sum_k 0.95^k``;
3. every ``inverse_update_period`` steps the damped inverses are refreshed with the current damping;
4. the K-FAC direction ``Delta = F_tilde^{-1} g`` (block by block);
5. the update ``delta = w_1 Delta + w_2 v`` with ``v`` the previous update, by the step rule
   (:data:`STEP_RULES`):

   - ``"alpha-momentum"`` (kfac-jax's adaptive learning rate and momentum): ``w`` minimises the
     exact damped quadratic model ``Q(w) = 1/2 w^T (A + lambda D) w + w^T b`` on the mini-batch
     (:func:`adamqlr.kfac.quadratic.solve_quadratic_model`); on the first step only ``w_1`` is
     free and ``w_2 = 0``;
   - ``"alpha"``: the same model restricted to ``w_2 = 0``: ``w_1 = -g^T Delta / (Delta^T C Delta
     + lambda ||Delta||^2)``, the exact minimiser along ``Delta`` (AdamQLR's rule on K-FAC's
     direction; kfac-jax with an adaptive learning rate and momentum fixed at 0);
   - ``"constant"``: ``w = (-lr, momentum)``, momentum 0 on the first step;

6. ``theta <- theta + delta``;
7. by the damping update (:data:`DAMPING_UPDATES`): ``"fixed"`` keeps ``lambda = initial_damping``;
   ``"adaptive"`` (every ``damping_interval`` steps) computes the trial loss on the same batch,
   the reduction ratio ``rho = (f_new - f_old) / (Q(w) - Q(0))`` with the *undamped* model change
   (kfac-jax's ``include_damping_in_quad_change=False``; ``damping_in_rho=True`` includes it), a
   NaN ``rho`` read as -100, and the Levenberg-Marquardt update of
   :class:`adamqlr.heuristics.LevenbergMarquardt` with factors 0.9 and 1/0.9 and the bound
   ``lambda >= 1e-8``. With the ``"constant"`` rule, ``Q(w) - Q(0)`` is the model's change at the
   step taken, ``1/2 delta^T C delta + g^T delta`` (plus ``lambda/2 ||delta||^2`` with
   ``damping_in_rho``), with the exact curvature ``C`` of the mini-batch: kfac-jax's
   ``_compute_quad_change_for_damping`` with ``always_use_exact_qmodel_for_damping_adjustment=True``
   (its default uses the K-FAC approximation of ``C`` there; the exact ``C`` makes ``rho`` the same
   measurement under every step rule, so that only the rule differs between the factorial's cells).

``mode`` is shorthand: ``"adaptive"`` is ``("alpha-momentum", "adaptive")`` (the paper's K-FAC),
``"unadaptive"`` is ``("constant", "fixed")`` (K-FAC (Unadaptive)). The damping also enters the
preconditioner (pi-adjusted factored Tikhonov), so K-FAC has no truly undamped cell: "no damping"
is ``damping_update="fixed"`` with ``initial_damping`` at the floor 1e-8 (kfac-jax's
``min_damping``, and the lower bound of the adaptive rule here): with ``lambda = 0`` a
rank-deficient factor (e.g. a layer with more inputs than the batch has rows) is singular.

Departures from kfac-jax, all on failure paths: a non-finite loss, gradient, curvature statistic,
coefficient or trial loss never reaches the parameters -- the step is skipped with a
``RuntimeWarning`` (and, with adaptive damping, the damping raised as for ``rho < 1/4``); kfac-jax
would apply the step. Burn-in is not offered (the paper's runs never perform it). ``l2_reg`` is 0.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from adamqlr._random import replayed_rng as _replayed_rng
from adamqlr._state import OptimiserWideState
from adamqlr._step_hooks import hooked_step
from adamqlr._validation import check as _check
from adamqlr._validation import integer as _int
from adamqlr._validation import real as _real
from adamqlr.curvature import loss_at
from adamqlr.heuristics import LevenbergMarquardt, reduction_ratio
from adamqlr.kfac.blocks import ESTIMATIONS, Block, KroneckerBlock, build_blocks
from adamqlr.kfac.quadratic import curvature_gram, output_bilinear, solve_quadratic_model
from adamqlr.kfac.tangents import (
    call_forward_hooks,
    forward_with_tape,
    output_tangents,
    sequential_plan,
)
from adamqlr.losses import CrossEntropyLoss, Loss, SquaredErrorLoss, get_loss
from adamqlr.rules import AdaptiveDamping, Damping, FixedDamping, refuse_conflicts

__all__ = [
    "DEFAULT_KFAC_DAMPING",
    "DAMPING_UPDATES",
    "KFAC",
    "KFACStepStats",
    "MODES",
    "NO_DAMPING",
    "STEP_RULES",
    "sample_targets",
]

#: The two modes: kfac-jax's adaptive learning rate, momentum and damping, or all three fixed.
MODES: tuple[str, ...] = ("adaptive", "unadaptive")
#: How the learning rate and momentum are chosen: fixed; the 1-D minimiser of the damped quadratic
#: model along the K-FAC direction (momentum 0); the 2-D minimiser over direction and velocity.
STEP_RULES: tuple[str, ...] = ("constant", "alpha", "alpha-momentum")
#: How the damping evolves: constant at ``initial_damping``, or the Levenberg-Marquardt rule.
DAMPING_UPDATES: tuple[str, ...] = ("fixed", "adaptive")
#: The smallest damping K-FAC uses (kfac-jax's ``min_damping``): "no damping" for the K-FAC
#: direction is ``damping_update="fixed"`` at this value, since the damping also regularises the
#: inverted Kronecker factors and cannot be 0 in general.
NO_DAMPING: float = 1e-8
#: What each mode is shorthand for: ``(step_rule, damping_update)``.
_MODE_RULES: dict[str, tuple[str, str]] = {
    "adaptive": ("alpha-momentum", "adaptive"),
    "unadaptive": ("constant", "fixed"),
}

#: K-FAC's default damping: ``lambda_0 = 1`` (the paper's placeholder, tuned), kfac-jax's factor
#: 0.9 tied (``increase = 1/0.9``), bounds ``[1e-8, inf)``, adapted every step, the damping left
#: out of rho (``in_rho=None``: K-FAC's convention). ``KFAC(damping=...)`` takes any
#: :class:`~adamqlr.rules.AdaptiveDamping`, :class:`~adamqlr.rules.FixedDamping` or ``None``.
DEFAULT_KFAC_DAMPING = AdaptiveDamping(1.0, LevenbergMarquardt.tied(0.9))

_GLOBAL = "kfac"  # key of the optimiser-wide state in ``self.state``
_NAN_RHO = -100.0  # kfac-jax's replacement for a NaN reduction ratio


@dataclass(frozen=True)
class _Pass:
    """What the gradient pass of a step leaves behind."""

    loss: Tensor
    grads: list[Tensor | None]
    num_terms: int
    outputs: Tensor
    plan: list[nn.Module] | None  # layer-wise pass only: its layers and their tape
    tape: list[Tensor | None] | None


@dataclass(frozen=True)
class KFACStepStats:
    """What one K-FAC step did.

    Attributes:
        loss: Mini-batch loss before the step.
        lr: Learning rate applied, ``-w_1`` (0.0 when the step was skipped).
        momentum: Momentum coefficient applied, ``w_2``.
        damping: Damping after this step's update (the value the next step uses).
        rho: Reduction ratio (NaN when not computed).
        accepted: Whether the parameters moved.
        reason: Why a step was skipped, else ``""``.
        quad_change: Change of the quadratic model used for ``rho`` (NaN when not computed).
        trial_loss: Mini-batch loss after the step (NaN when not computed).
        damping_used: The damping that entered this step.
        step: Number of accepted steps so far, this one included.
    """

    loss: float
    lr: float
    momentum: float
    damping: float
    rho: float
    accepted: bool
    reason: str
    quad_change: float
    trial_loss: float
    damping_used: float
    step: int

    def as_dict(self) -> dict[str, Any]:
        """Return the statistics as a plain dict (for logging)."""
        return asdict(self)


def sample_targets(
    loss: Loss, outputs: Tensor, targets: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Draw one target per loss term from the model's predictive distribution.

    Cross-entropy: a class from ``softmax(outputs)`` (positions whose target is ``ignore_index``
    keep it). Half squared error: ``outputs + eps`` with ``eps ~ N(0, I)``, the Gaussian of unit
    variance whose negative log-likelihood the loss is.

    Args:
        loss: :class:`~adamqlr.losses.CrossEntropyLoss` or
            :class:`~adamqlr.losses.SquaredErrorLoss`.
        outputs: Network outputs.
        targets: The true targets (for their shape and the ignored positions).
        generator: The random generator to draw from (``None``: torch's global one).

    Returns:
        Targets shaped as the loss expects.

    Raises:
        ValueError: For any other loss.
    """
    outputs = outputs.detach()
    if isinstance(loss, CrossEntropyLoss):
        probs = torch.softmax(outputs.reshape(-1, outputs.shape[-1]), dim=-1)
        drawn = probs.multinomial(num_samples=1, generator=generator).reshape(targets.shape)
        return torch.where(targets == loss.ignore_index, targets, drawn)
    if isinstance(loss, SquaredErrorLoss):
        noise = torch.randn(
            outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device
        )
        return outputs + noise
    raise ValueError(f"cannot sample targets for loss {loss!r}; use estimation='empirical'")


def _resolve_rules(
    mode: str | None, step_rule: str | None, damping_update: str | None
) -> tuple[str, str]:
    """Return ``(step_rule, damping_update)`` from the constructor's three options.

    Raises:
        ValueError: For an unknown value, or a rule that contradicts ``mode`` (naming both).
    """
    if mode is not None:
        _check("mode", mode, mode in MODES, f"one of {MODES} or None")
    if step_rule is not None:
        _check("step_rule", step_rule, step_rule in STEP_RULES, f"one of {STEP_RULES}")
    if damping_update is not None:
        _check(
            "damping_update",
            damping_update,
            damping_update in DAMPING_UPDATES,
            f"one of {DAMPING_UPDATES}",
        )
    if mode is None:
        return step_rule or "alpha-momentum", damping_update or "adaptive"
    implied = _MODE_RULES[mode]
    for name, given, meant in (
        ("step_rule", step_rule, implied[0]),
        ("damping_update", damping_update, implied[1]),
    ):
        if given is not None and given != meant:
            raise ValueError(
                f"invalid {name}: {given!r} contradicts mode={mode!r}, which means "
                f"step_rule={implied[0]!r}, damping_update={implied[1]!r} (pass mode=None to "
                "combine the rules freely)"
            )
    return implied


def _flat_view(damping: Damping | None) -> dict[str, Any]:
    """Return K-FAC's flat damping keywords that ``damping`` fixes, with their values.

    ``damping_decay`` only for a rule whose factors are tied (``increase == 1 / decrease``), the
    only rules that keyword can describe.
    """
    if damping is None:
        return {"damping_update": "fixed", "initial_damping": NO_DAMPING}
    in_rho = False if damping.in_rho is None else damping.in_rho
    if isinstance(damping, FixedDamping):
        return {
            "damping_update": "fixed",
            "initial_damping": damping.value,
            "damping_in_rho": in_rho,
        }
    rule = damping.rule
    view = {
        "damping_update": "adaptive",
        "initial_damping": damping.initial,
        "damping_bounds": (rule.lower, rule.upper),
        "damping_interval": damping.interval,
        "damping_in_rho": in_rho,
    }
    if rule.increase == 1.0 / rule.decrease:
        view["damping_decay"] = rule.decrease
    return view


def _num_terms(loss: Loss, outputs: Tensor, targets: Tensor) -> int:
    if isinstance(loss, CrossEntropyLoss):
        return max(1, int((targets != loss.ignore_index).sum()))
    return int(outputs.shape[0])


def _summed_loss(loss: Loss, outputs: Tensor, targets: Tensor, num_terms: int) -> Tensor:
    if isinstance(loss, CrossEntropyLoss):
        return F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]),
            targets.reshape(-1),
            ignore_index=loss.ignore_index,
            reduction="sum",
        )
    return loss.value(outputs, targets) * num_terms


def _hessian_sqrt_columns(loss: Loss, outputs: Tensor, targets: Tensor) -> Iterator[Tensor]:
    """Yield the columns of a square root ``S`` (``S S^T = H``) of each term's output Hessian."""
    outputs = outputs.detach()
    if isinstance(loss, CrossEntropyLoss):
        p = torch.softmax(outputs, dim=-1)
        s = p.sqrt()
        keep = (targets != loss.ignore_index).unsqueeze(-1).to(p.dtype)
        for c in range(p.shape[-1]):
            col = -p * s[..., c : c + 1]
            col[..., c] += s[..., c]
            yield col * keep
    elif isinstance(loss, SquaredErrorLoss):
        flat = outputs.reshape(outputs.shape[0], -1)
        for c in range(flat.shape[1]):
            col = torch.zeros_like(flat)
            col[:, c] = 1.0
            yield col.reshape(outputs.shape)
    else:
        raise ValueError(f"no output-Hessian square root for loss {loss!r}")


def _all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every entry of every tensor is finite (one check over their concatenation)."""
    return bool(torch.isfinite(torch.cat([t.reshape(-1) for t in tensors])).all())


def _inner_products(vectors: list[dict[str, Tensor]]) -> Tensor:
    """Return the ``k x k`` matrix of inner products of parameter-shaped vectors (float64, CPU).

    One matrix product per parameter over the stacked vectors, accumulated in float64.
    """
    k = len(vectors)
    total = torch.zeros(k, k, dtype=torch.float64)
    parts = []
    for name in vectors[0]:
        stack = torch.stack([v[name].reshape(-1) for v in vectors])
        parts.append((stack @ stack.T).double())
    if parts:
        total += torch.stack(parts).sum(0).cpu()
    return total


def _tangent_gram(
    opt: KFAC, gradient_pass: _Pass, vectors: list[dict[str, Tensor]], targets: Tensor
) -> Tensor:
    """``A_ij = v_i^T C v_j`` from the layer-wise tape of the gradient pass (float64, CPU)."""
    assert gradient_pass.plan is not None and gradient_pass.tape is not None
    tangents = output_tangents(gradient_pass.plan, gradient_pass.tape, opt._names, vectors)
    outputs = gradient_pass.outputs
    k = len(vectors)
    upper = {
        (i, j): float(output_bilinear(opt.loss, outputs, tangents[i], tangents[j], targets))
        for i in range(k)
        for j in range(i, k)
    }
    # one tensor from the floats (indexed writes into a zeros tensor cost ~4 operations each)
    rows = [[upper[min(i, j), max(i, j)] for j in range(k)] for i in range(k)]
    return torch.tensor(rows, dtype=torch.float64)


class KFAC(OptimiserWideState, torch.optim.Optimizer):
    """K-FAC for ``nn.Linear`` and ``nn.Conv2d`` layers, with a choice of step rule and damping.

    Kronecker-factored blocks for dense and convolution layers, diagonal blocks for normalisation
    layers' scale and shift and for any other parameter (:mod:`adamqlr.kfac.blocks`); factors from
    gradients at sampled targets (kfac-jax's ``"fisher_gradients"``), averaged with decay 0.95 and
    inverted with pi-adjusted factored Tikhonov damping.

    The step-size rule and the damping update are independent options (every K-FAC cell of the
    direction x step rule x damping factorial is one configuration):

    ======================  ===============================================================
    ``step_rule``           learning rate ``-w_1`` and momentum ``w_2``
    ======================  ===============================================================
    ``"constant"``          ``lr`` and ``momentum`` as given (momentum 0 on the first step)
    ``"alpha"``             ``w_1`` minimises the exact damped quadratic model along
                            ``Delta``; ``w_2 = 0`` (no velocity is kept)
    ``"alpha-momentum"``    ``(w_1, w_2)`` minimise it on the plane of ``Delta`` and the
                            previous update (kfac-jax's adaptive learning rate and momentum)
    ======================  ===============================================================

    ``damping_update="fixed"`` keeps ``lambda = initial_damping`` (at :data:`NO_DAMPING`, 1e-8, the
    factorial's "none"); ``"adaptive"`` applies the Levenberg-Marquardt rule with factors 0.9 and
    1/0.9 (kfac-jax's defaults) to ``rho``, computed from the undamped model change at the step
    taken. ``mode="adaptive"`` (the paper's "K-FAC") is ``("alpha-momentum", "adaptive")``;
    ``mode="unadaptive"`` ("K-FAC (Unadaptive)") is ``("constant", "fixed")``.

    The damping is one object, as for :class:`adamqlr.AdamQLR`: ``damping=`` an
    :class:`~adamqlr.rules.AdaptiveDamping` (``damping_update="adaptive"``), a
    :class:`~adamqlr.rules.FixedDamping` (``"fixed"``) or ``None`` (fixed at :data:`NO_DAMPING`);
    the flat keywords below (``initial_damping``, ``damping_decay``, ...) still work, and given
    beside an object must agree with it.

    Example::

        opt = KFAC(model, loss="cross_entropy", mode="adaptive", initial_damping=1.0)
        # the same optimiser: KFAC(model, "cross_entropy", step_rule="alpha-momentum",
        #                          damping_update="adaptive", initial_damping=1.0)
        # and: KFAC(model, damping=AdaptiveDamping(1.0, LevenbergMarquardt.tied(0.9)))
        for inputs, targets in loader:
            stats = opt.step(inputs, targets)
            print(stats.loss, stats.lr, stats.momentum, stats.damping, stats.rho)

    Args:
        model: The network; every parameter that requires a gradient is optimised.
        loss: ``"cross_entropy"``, ``"squared_error"``/``"mse"`` or a
            :class:`~adamqlr.losses.Loss` (others only with ``estimation="empirical"``).
        mode: Shorthand for both rules: ``"adaptive"`` = ``("alpha-momentum", "adaptive")``,
            ``"unadaptive"`` = ``("constant", "fixed")``. ``None`` (default): from ``step_rule``
            and ``damping_update`` (or ``damping``), or ``"adaptive"`` when neither is given.
        damping: The damping rule, the objects :class:`adamqlr.AdamQLR` takes:
            :class:`~adamqlr.rules.AdaptiveDamping` (``lambda_0``, a
            :class:`~adamqlr.heuristics.LevenbergMarquardt` rule, whose factors need not be
            tied, the interval and ``in_rho``, ``None`` meaning K-FAC's no),
            :class:`~adamqlr.rules.FixedDamping` (``lambda`` throughout) or ``None`` (fixed at
            :data:`NO_DAMPING`: the damping also regularises the inverted factors). Default
            :data:`adamqlr.kfac.DEFAULT_KFAC_DAMPING`, the flat keywords' defaults; given with
            ``mode``, its kind must agree with the mode's damping update.
        step_rule: One of :data:`STEP_RULES` (default ``"alpha-momentum"``, or the mode's). Given
            with ``mode`` it must agree with it.
        damping_update: One of :data:`DAMPING_UPDATES` (default ``"adaptive"``, or the mode's).
            Given with ``mode`` it must agree with it.
        lr: Fixed learning rate (``step_rule="constant"`` only; default 1e-3, the paper's
            placeholder).
        momentum: Fixed momentum in [0, 1) (``step_rule="constant"`` only; default 0.9).
        initial_damping: ``lambda_0`` (the damping throughout with ``damping_update="fixed"``),
            >= 0 (``None``: 1.0).
        damping_decay: Factor in (0, 1): ``lambda`` is multiplied by it when ``rho > 3/4`` and
            divided by it when ``rho < 1/4`` (adaptive damping only; ``None``: 0.9). The rule is
            ``LevenbergMarquardt.tied(damping_decay)``.
        damping_bounds: ``(lower, upper)`` clip on ``lambda`` after each adaptation (``None``:
            ``(1e-8, inf)``).
        damping_interval: Adapt the damping every this many steps (kfac-jax's
            ``damping_adaptation_interval``; the paper: 1; ``None``: 1).
        damping_in_rho: Include the damping in the model change used for ``rho`` (kfac-jax and the
            paper: no; ``None``: no).
        ema_decay: Decay of the factors' moving averages, in [0, 1).
        inverse_update_period: Refresh the damped inverses every this many steps.
        estimation: ``"sampled"`` (default), ``"exact"`` or ``"empirical"``
            (:data:`adamqlr.kfac.blocks.ESTIMATIONS`).
        seed: Seed of the optimiser's own generator for the sampled targets (saved in
            :meth:`state_dict`); ``None`` (default) draws them from torch's global generator, like
            dropout, so that the run's seed and its checkpointed random state govern them.
        ignore_index: Target value skipped by the cross-entropy loss.

    Raises:
        ValueError: At construction, naming the argument and value, for any invalid setting.
    """

    step_requires_batch = True

    global_key = _GLOBAL

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss = "cross_entropy",
        mode: str | None = None,
        *,
        damping: Damping | None = DEFAULT_KFAC_DAMPING,
        step_rule: str | None = None,
        damping_update: str | None = None,
        lr: float | None = None,
        momentum: float | None = None,
        initial_damping: float | None = None,
        damping_decay: float | None = None,
        damping_bounds: tuple[float, float] | None = None,
        damping_interval: int | None = None,
        damping_in_rho: bool | None = None,
        ema_decay: float = 0.95,
        inverse_update_period: int = 1,
        estimation: str = "sampled",
        seed: int | None = None,
        ignore_index: int = -100,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"invalid model: {model!r} (expected a torch.nn.Module)")
        loss_obj = (
            get_loss(loss, ignore_index=ignore_index)
            if isinstance(loss, str) and loss == "cross_entropy"
            else get_loss(loss)
        )
        given = damping is not DEFAULT_KFAC_DAMPING
        if given:  # the object is the damping; a flat keyword beside it must agree with it
            _check(
                "damping",
                damping,
                damping is None or isinstance(damping, (AdaptiveDamping, FixedDamping)),
                "AdaptiveDamping(...), FixedDamping(value) or None (fixed at NO_DAMPING)",
            )
            flat = {
                "damping_update": damping_update,
                "initial_damping": initial_damping,
                "damping_decay": damping_decay,
                "damping_bounds": damping_bounds,
                "damping_interval": damping_interval,
                "damping_in_rho": damping_in_rho,
            }
            refuse_conflicts(
                "damping",
                damping,
                {k: v for k, v in flat.items() if v is not None},
                _flat_view(damping),
            )
            damping_update = "adaptive" if isinstance(damping, AdaptiveDamping) else "fixed"
            if mode in _MODE_RULES and _MODE_RULES[mode][1] != damping_update:
                raise ValueError(
                    f"invalid damping: {damping!r} contradicts mode={mode!r}, which means "
                    f"damping_update={_MODE_RULES[mode][1]!r} (pass mode=None to combine the "
                    "rules freely)"
                )
        step_rule, damping_update = _resolve_rules(mode, step_rule, damping_update)
        _check("estimation", estimation, estimation in ESTIMATIONS, f"one of {ESTIMATIONS}")
        if estimation != "empirical" and not isinstance(
            loss_obj, (CrossEntropyLoss, SquaredErrorLoss)
        ):
            raise ValueError(
                f"invalid estimation: {estimation!r} needs a predictive distribution, which loss "
                f"{loss_obj!r} does not define (use estimation='empirical')"
            )
        if step_rule != "constant":
            chooser = f"mode={mode!r}" if mode is not None else f"step_rule={step_rule!r}"
            for name, value in (("lr", lr), ("momentum", momentum)):
                if value is not None:
                    what = (
                        "fixes it at 0"
                        if name == "momentum" and step_rule == "alpha"
                        else "chooses it each step"
                    )
                    raise ValueError(
                        f"invalid {name}: {value!r} ({chooser} {what}; pass None or use "
                        "step_rule='constant')"
                    )
        else:
            lr = _real("lr", 1e-3 if lr is None else lr)
            _check("lr", lr, 0.0 < lr < math.inf, "> 0 and finite")
            momentum = _real("momentum", 0.9 if momentum is None else momentum)
            _check("momentum", momentum, 0.0 <= momentum < 1.0, "in [0, 1)")
        if not given:  # the flat keywords, each at K-FAC's default when left out
            initial_damping = _real(
                "initial_damping", 1.0 if initial_damping is None else initial_damping
            )
            _check(
                "initial_damping",
                initial_damping,
                0.0 <= initial_damping < math.inf,
                ">= 0, finite",
            )
            damping_decay = _real("damping_decay", 0.9 if damping_decay is None else damping_decay)
            _check("damping_decay", damping_decay, 0.0 < damping_decay < 1.0, "in (0, 1)")
            if damping_bounds is None:
                damping_bounds = (1e-8, math.inf)
            if not isinstance(damping_bounds, (tuple, list)) or len(damping_bounds) != 2:
                raise ValueError(
                    f"invalid damping_bounds: {damping_bounds!r} (expected (lower, upper))"
                )
            rule = LevenbergMarquardt.tied(
                damping_decay,
                lower=_real("damping_bounds lower", damping_bounds[0]),
                upper=_real("damping_bounds upper", damping_bounds[1]),
            )
            interval = 1 if damping_interval is None else damping_interval
            in_rho = False if damping_in_rho is None else damping_in_rho
        elif damping is None:  # no damping: K-FAC's floor, fixed
            initial_damping, rule, interval, in_rho = (
                NO_DAMPING,
                DEFAULT_KFAC_DAMPING.rule,
                1,
                False,
            )
        elif isinstance(damping, FixedDamping):
            initial_damping, rule, interval = damping.value, DEFAULT_KFAC_DAMPING.rule, 1
            in_rho = False if damping.in_rho is None else damping.in_rho
        else:
            initial_damping, rule, interval = damping.initial, damping.rule, damping.interval
            in_rho = False if damping.in_rho is None else damping.in_rho
        self.damping_rule = rule
        ema_decay = _real("ema_decay", ema_decay)
        _check("ema_decay", ema_decay, 0.0 <= ema_decay < 1.0, "in [0, 1)")
        _check("damping_in_rho", in_rho, isinstance(in_rho, bool), "a bool")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"invalid seed: {seed!r} (expected an int or None)")

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("invalid model: it has no parameter that requires a gradient")
        for n, p in named:
            if not p.is_floating_point() or p.is_complex():
                raise ValueError(f"invalid parameter {n}: dtype {p.dtype} (expected real floating)")
        super().__init__(
            [{"params": [p for _, p in named], "param_names": [n for n, _ in named]}],
            dict(lr=lr, momentum=momentum),
        )
        self.model = model
        self.loss = loss_obj
        self.step_rule = step_rule
        self.damping_update = damping_update
        #: The shorthand these rules are, or ``None`` for the other combinations.
        self.mode: str | None = next(
            (m for m, rules in _MODE_RULES.items() if rules == (step_rule, damping_update)), None
        )
        self.initial_damping = initial_damping
        self.damping_interval = _int("damping_interval", interval, 1)
        self.damping_in_rho = in_rho
        self.ema_decay = ema_decay
        self.inverse_update_period = _int("inverse_update_period", inverse_update_period, 1)
        self.estimation = estimation
        self.seed = None if seed is None else int(seed)
        self._named = named
        self._last_outputs: Tensor | None = None
        self.blocks: list[Block] = build_blocks(model, named)
        self._params = [p for _, p in named]
        self._names = {id(p): n for n, p in named}
        self._naive = [b for b in self.blocks if b.wants_param_grads]
        self._kronecker_of = {
            id(b.module): b
            for b in self.blocks
            if isinstance(b, KroneckerBlock) and isinstance(b.module, nn.Linear)
        }
        # Whether a sequential network may take the layer-wise gradient pass and curvature
        # products (:mod:`adamqlr.kfac.tangents`); off, every model takes the generic path.
        self._layerwise = True
        self._generator: torch.Generator | None = None
        self.state[_GLOBAL] = self._fresh_global_state()

    # ----------------------------------------------------------------------------- state
    def _fresh_global_state(self) -> dict[str, Any]:
        return {
            "step": 0,
            "damping": self.initial_damping,
            "inverse_damping": math.nan,
            "rejected_steps": 0,
            "calls": 0,
            "generator_state": None,
            "step_rule": self.step_rule,
            "damping_update": self.damping_update,
        }

    @property
    def damping(self) -> float:
        """The current damping ``lambda`` (used by the next step)."""
        return float(self.state[_GLOBAL]["damping"])

    def factors(self, block: Block) -> dict[str, Tensor]:
        """Return the current (normalised moving-average) statistics of ``block``.

        Raises:
            KeyError: If no step has recorded statistics for the block yet.
        """
        st = self.state[block.params[0][1]]
        weight = st["ema_weight"]
        return {k[len("factor.") :]: v / weight for k, v in st.items() if k.startswith("factor.")}

    def last_outputs(self) -> Tensor | None:
        """Return the network outputs of the last step's gradient pass (detached), or ``None``.

        They are the outputs at the parameters *before* that step, on its mini-batch: a training
        loop reads e.g. the mini-batch accuracy from them without another forward pass or a hook.
        Kept until the next step.
        """
        return self._last_outputs

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict (the input is not modified), including the sampling generator.

        Raises:
            ValueError: If the state dict was saved by a K-FAC with another step rule or damping
                update (a state dict from before these options existed is taken as it is).
        """
        saved = state_dict.get("state", {}).get(_GLOBAL, {})
        if isinstance(saved, Mapping):
            for name in ("step_rule", "damping_update"):
                if name in saved and saved[name] != getattr(self, name):
                    raise ValueError(
                        f"invalid state_dict: saved with {name}={saved[name]!r}, but this "
                        f"optimiser has {name}={getattr(self, name)!r}"
                    )
        super().load_state_dict(state_dict)
        self._last_outputs = None
        self._generator = None
        gen_state = self.state[_GLOBAL]["generator_state"]
        if gen_state is not None:
            self._generator = torch.Generator(device=self._named[0][1].device)
            self._generator.set_state(gen_state)

    def _generator_for(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._generator is None or self._generator.device.type != device.type:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
        return self._generator

    # ------------------------------------------------------------------------------ step
    def _skip(self, reason: str, loss: float, **extra: float) -> KFACStepStats:
        glob = self.state[_GLOBAL]
        damping_used = glob["damping"]
        if self.damping_update == "adaptive":
            glob["damping"] = self.damping_rule.update(damping_used, _NAN_RHO)
        glob["rejected_steps"] += 1
        warnings.warn(
            f"KFAC: step skipped ({reason}); parameters unchanged, damping "
            f"{damping_used:.3g} -> {glob['damping']:.3g}",
            RuntimeWarning,
            stacklevel=4,  # _skip <- step <- the step wrapper (_step_hooks) <- the caller
        )
        return KFACStepStats(
            loss=loss,
            lr=0.0,
            momentum=0.0,
            damping=glob["damping"],
            rho=math.nan,
            accepted=False,
            reason=reason,
            quad_change=extra.get("quad_change", math.nan),
            trial_loss=extra.get("trial_loss", math.nan),
            damping_used=damping_used,
            step=glob["step"],
        )

    def _record(self, inputs: Any, targets: Tensor) -> _Pass:
        """Forward pass, gradient, and the blocks' statistics for this batch.

        The output gradients of the sampled (or exact, or empirical) loss come from a second
        backward pass through the gradient pass's own graph, asked only for the gradients of the
        recorded layer outputs (as :class:`torch.autograd.graph.GradientEdge`, so an in-place
        operation after a layer changes nothing) and of the naive-diagonal parameters: no
        parameter gradient of a Kronecker block is formed.
        """
        for block in self.blocks:
            block.reset()
        edges: list[tuple[Block, int, GradientEdge]] = []
        plan = sequential_plan(self.model) if self._layerwise else None
        handles = []
        if plan is None:

            def make_hook(block: Block):
                def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
                    token = block.record_input(module, args, output)
                    if isinstance(output, Tensor) and output.requires_grad:
                        edges.append((block, token, get_gradient_edge(output)))

                return hook

            for block in self.blocks:
                module = block.hook_module()
                if module is not None:
                    handles.append(module.register_forward_hook(make_hook(block)))
        params = self._params
        naive = self._naive
        tape: list[Tensor | None] | None = None
        try:
            with torch.enable_grad():
                if plan is None:
                    outputs = self.model(inputs)
                else:
                    by_module = self._kronecker_of

                    def on_linear(layer: nn.Module, h: Tensor, out: Tensor) -> None:
                        block = by_module.get(id(layer))
                        if block is None:
                            return
                        block.record_rows(h.detach().reshape(-1, h.shape[-1]))
                        if out.requires_grad:
                            edges.append((block, 0, get_gradient_edge(out)))

                    outputs, tape = forward_with_tape(plan, inputs, on_linear)
                    hooked = call_forward_hooks(self.model, inputs, outputs)
                    if hooked is not outputs:  # a hook replaced the outputs: generic products
                        outputs, plan, tape = hooked, None, None
                self.loss.check_shapes(outputs, targets)
                loss_t = self.loss.value(outputs, targets)
                if not torch.isfinite(loss_t.detach()):
                    return _Pass(
                        loss_t.detach(), [None] * len(params), 0, outputs.detach(), None, None
                    )
                grads: list[Tensor | None] = list(
                    torch.autograd.grad(loss_t, params, retain_graph=True, allow_unused=True)
                )
                num_terms = _num_terms(self.loss, outputs, targets)
                # tensors and gradient edges together (torch's stub types a list of one kind)
                wanted: list[Any] = [e for _, _, e in edges] + [
                    p for b in naive for _, p in b.params
                ]
                if wanted:
                    if self.estimation == "exact":
                        for col in _hessian_sqrt_columns(self.loss, outputs, targets):
                            got = torch.autograd.grad(
                                outputs, wanted, grad_outputs=col, retain_graph=True,
                                allow_unused=True,
                            )  # fmt: skip
                            self._dispatch(edges, got)
                    else:
                        drawn = (
                            targets
                            if self.estimation == "empirical"
                            else sample_targets(
                                self.loss, outputs, targets, self._generator_for(outputs.device)
                            )
                        )
                        summed = _summed_loss(self.loss, outputs, drawn, num_terms)
                        self._dispatch(
                            edges, torch.autograd.grad(summed, wanted, allow_unused=True)
                        )
        finally:
            for h in handles:
                h.remove()
        return _Pass(loss_t.detach(), grads, num_terms, outputs.detach(), plan, tape)

    def _dispatch(
        self, edges: list[tuple[Block, int, GradientEdge]], got: Sequence[Tensor | None]
    ) -> None:
        """Hand the gradients of one backward pass to the blocks that asked for them."""
        for (block, token, _), g in zip(edges, got, strict=False):
            if g is not None:
                block.record_output_grad(g, token)
        rest = iter(got[len(edges) :])
        for b in self._naive:
            b.record_param_grads([next(rest) for _ in b.params])

    def _update_factors(self, num_terms: int) -> bool:
        """Fold this batch's statistics into the moving averages; False if any is non-finite."""
        batch = [(b, s) for b in self.blocks if (s := b.batch_statistics(num_terms)) is not None]
        sums = [v.sum() for _, stats in batch for v in stats.values()]
        if sums and not bool(torch.isfinite(torch.stack([x.float() for x in sums])).all()):
            return False
        for block, stats in batch:
            st = self.state[block.params[0][1]]
            st["ema_weight"] = self.ema_decay * st.get("ema_weight", 0.0) + 1.0
            for k, v in stats.items():
                key = "factor." + k
                if key in st:
                    st[key].mul_(self.ema_decay).add_(v)
                else:
                    st[key] = v
        return True

    def _refresh_inverses(self, damping: float) -> None:
        for block in self.blocks:
            st = self.state[block.params[0][1]]
            if "ema_weight" not in st:
                continue
            for k, v in block.inverse(self.factors(block), damping, owned=True).items():
                st["inverse." + k] = v
        self.state[_GLOBAL]["inverse_damping"] = damping

    def _precondition(self, grads: dict[str, Tensor], damping: float) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for block in self.blocks:
            names = [n for n, _ in block.params]
            if not any(n in grads for n in names):
                continue
            gs = [grads.get(n, torch.zeros_like(p)) for n, p in block.params]
            st = self.state[block.params[0][1]]
            if "ema_weight" not in st:  # never observed: plain damped gradient
                pre = [g / max(damping, 1e-30) for g in gs]
            else:
                inverses = {
                    k[len("inverse.") :]: v for k, v in st.items() if k.startswith("inverse.")
                } or None
                factors: dict[str, Any] | None = (
                    {} if inverses is not None and block.kind == "kronecker" else None
                )
                pre = block.precondition(
                    gs, self.factors(block) if factors is None else factors, inverses, damping
                )
            for (n, _), d in zip(block.params, pre, strict=True):
                if n in grads:
                    out[n] = d
        return out

    @hooked_step
    def step(self, inputs: Any, targets: Tensor) -> KFACStepStats:  # type: ignore[override]
        """Take one K-FAC step on the mini-batch ``(inputs, targets)``.

        Costs one forward and two backward passes (``"exact"`` estimation: one backward per
        output dimension), the block inverses on refresh steps, one curvature product per vector
        of the quadratic model (the ``"alpha"`` rule: 1; ``"alpha-momentum"``: 1 on the first
        step, then 2; ``"constant"`` with adaptive damping: 1, for ``rho``; each one forward-mode
        JVP, or a tangent pass over the gradient pass's tape for a sequential network), and with
        adaptive damping one trial forward pass.

        Args:
            inputs: The mini-batch inputs, passed to ``model(inputs)``.
            targets: The mini-batch targets.

        Returns:
            The :class:`KFACStepStats` of this step.
        """
        if not isinstance(targets, Tensor):
            raise ValueError(f"invalid targets: {type(targets).__name__} (expected a Tensor)")
        glob = self.state[_GLOBAL]
        glob["calls"] += 1
        step_index = glob["step"]
        cpu_rng = torch.get_rng_state()
        cuda_rng = (
            torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and any(p.is_cuda for _, p in self._named)
            else None
        )

        gradient_pass = self._record(inputs, targets)
        self._last_outputs = gradient_pass.outputs.detach()
        grad_list, num_terms = gradient_pass.grads, gradient_pass.num_terms
        f0 = float(gradient_pass.loss)
        if self._generator is not None:
            glob["generator_state"] = self._generator.get_state()
        if not math.isfinite(f0):
            return self._skip("nonfinite_loss", f0)
        for (_, p), g in zip(self._named, grad_list, strict=True):
            p.grad = None if g is None else g.detach()
        grads = {
            n: g.detach() for (n, _), g in zip(self._named, grad_list, strict=True) if g is not None
        }
        if not grads:
            return self._skip("no_gradient", f0)
        if not _all_finite(grads.values()):
            return self._skip("nonfinite_gradient", f0)
        if not self._update_factors(num_terms):
            return self._skip("nonfinite_curvature", f0)

        damping = float(glob["damping"])
        if step_index % self.inverse_update_period == 0 or math.isnan(glob["inverse_damping"]):
            self._refresh_inverses(damping)
        direction = self._precondition(grads, damping)
        params = {n: p for n, p in self._named if n in grads}
        velocity = (
            {n: self.state[p].get("velocity", torch.zeros_like(p)) for n, p in params.items()}
            if self.step_rule != "alpha"
            else {}
        )
        adapt = self.damping_update == "adaptive" and step_index % self.damping_interval == 0
        random_state = (cpu_rng, cuda_rng)

        quad_change = math.nan
        if self.step_rule != "constant":
            if self.step_rule == "alpha-momentum":
                inner = _inner_products([direction, velocity, grads])  # one pass over the params
                has_velocity = step_index > 0 and float(inner[1, 1]) > 0.0
                vectors = [direction, velocity] if has_velocity else [direction]
                k = len(vectors)
                gram, grad_dots = inner[:k, :k], inner[:k, 2]
            else:
                inner = _inner_products([direction, grads])
                vectors = [direction]
                gram, grad_dots = inner[:1, :1], inner[:1, 1]
            curv = self._curvature(gradient_pass, params, vectors, inputs, targets, random_state)
            sol = solve_quadratic_model(curv, gram, grad_dots, damping)
            w1, w2 = sol.coefficients[0], (sol.coefficients[1] if len(vectors) == 2 else 0.0)
            quad_change = sol.quad_change_damped if self.damping_in_rho else sol.quad_change
            if not (sol.ok and math.isfinite(quad_change)):
                return self._skip("nonfinite_coefficients", f0, quad_change=quad_change)
            delta = (
                {n: w1 * direction[n] + w2 * velocity[n] for n in params}
                if velocity
                else {n: w1 * direction[n] for n in params}
            )
        else:
            if not _all_finite(direction.values()):
                return self._skip("nonfinite_update", f0)
            group = self.param_groups[0]
            w1, w2 = -float(group["lr"]), (float(group["momentum"]) if step_index > 0 else 0.0)
            delta = {n: w1 * direction[n] + w2 * velocity[n] for n in params}
            if adapt:  # the model's change at the step taken, for rho
                quad_change = self._step_quad_change(
                    gradient_pass, params, delta, grads, damping, inputs, targets, random_state
                )
                if not math.isfinite(quad_change):
                    return self._skip("nonfinite_quad_change", f0, quad_change=quad_change)

        old = {n: p.detach().clone() for n, p in params.items()} if adapt else {}
        with torch.no_grad():
            for n, p in params.items():
                p.add_(delta[n].to(p.dtype))

        rho, f1 = math.nan, math.nan
        if adapt:
            with _replayed_rng(cpu_rng, cuda_rng):
                f1 = float(self._trial_loss(gradient_pass, params, inputs, targets))
            if not math.isfinite(f1):
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(old[n])
                return self._skip(
                    "nonfinite_trial_loss", f0, quad_change=quad_change, trial_loss=f1
                )
            rho = reduction_ratio(f1 - f0, quad_change)
            glob["damping"] = self.damping_rule.update(
                damping, _NAN_RHO if math.isnan(rho) else rho
            )

        if self.step_rule != "alpha":  # the "alpha" rule never reads a velocity: keep none
            for n, p in params.items():
                self.state[p]["velocity"] = delta[n].to(p.dtype)
        glob["step"] = step_index + 1
        return KFACStepStats(
            loss=f0,
            lr=-w1,
            momentum=w2,
            damping=float(glob["damping"]),
            rho=rho,
            accepted=True,
            reason="",
            quad_change=quad_change,
            trial_loss=f1,
            damping_used=damping,
            step=step_index + 1,
        )

    def _curvature(
        self,
        gradient_pass: _Pass,
        params: Mapping[str, Tensor],
        vectors: list[dict[str, Tensor]],
        inputs: Any,
        targets: Tensor,
        random_state: tuple[Tensor, list[Tensor] | None],
    ) -> Tensor:
        """Return ``A_ij = v_i^T C v_j`` for the exact curvature ``C`` of the batch (float64, CPU).

        From the gradient pass's layer-wise tape when there is one, else by forward-mode JVPs
        under the gradient pass's random state (call before the parameters move).
        """
        if gradient_pass.tape is not None:
            return _tangent_gram(self, gradient_pass, vectors, targets)
        detached = {n: p.detach() for n, p in params.items()}
        return curvature_gram(
            self.model, detached, vectors, inputs, targets, self.loss, random_state
        )

    def _step_quad_change(
        self,
        gradient_pass: _Pass,
        params: Mapping[str, Tensor],
        delta: dict[str, Tensor],
        grads: dict[str, Tensor],
        damping: float,
        inputs: Any,
        targets: Tensor,
        random_state: tuple[Tensor, list[Tensor] | None],
    ) -> float:
        """Return the quadratic model's change ``Q(delta) - Q(0)`` at a given step ``delta``.

        ``1/2 delta^T C delta + g^T delta``, plus ``lambda/2 ||delta||^2`` when
        ``damping_in_rho``: the model of :func:`~adamqlr.kfac.quadratic.solve_quadratic_model`
        over the single vector ``delta`` with its coefficient held at 1.
        """
        inner = _inner_products([delta, grads])
        curv = self._curvature(gradient_pass, params, [delta], inputs, targets, random_state)
        sol = solve_quadratic_model(curv, inner[:1, :1], inner[:1, 1], damping, fixed=[1.0])
        return sol.quad_change_damped if self.damping_in_rho else sol.quad_change

    def _trial_loss(
        self, gradient_pass: _Pass, params: Mapping[str, Tensor], inputs: Any, targets: Tensor
    ) -> Tensor:
        """Return the mini-batch loss at the updated parameters (call under the replayed state)."""
        plan = gradient_pass.plan
        if plan is None:
            detached = {n: p.detach() for n, p in params.items()}
            return loss_at(self.model, detached, inputs, targets, self.loss)
        with torch.no_grad():  # a sequential network without buffers: its own forward pass
            outputs = forward_with_tape(plan, inputs)[0]
            return self.loss.value(call_forward_hooks(self.model, inputs, outputs), targets)

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for b in self.blocks:
            kinds[b.kind] = kinds.get(b.kind, 0) + 1
        return (
            f"KFAC(step_rule={self.step_rule!r}, damping_update={self.damping_update!r}, "
            f"loss={self.loss!r}, damping={self.damping:.3g}, "
            f"estimation={self.estimation!r}, blocks={kinds})"
        )
