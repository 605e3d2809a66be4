"""The damping and step-size rules of :class:`adamqlr.AdamQLR` and :class:`adamqlr.SGDQLR`.

The optimisers take two settings that pick a cell of the factorial study (direction x step-size
rule x damping, :mod:`adamqlr.studies.factorial`), each one frozen object, as the paper groups
them:

``damping``: :class:`AdaptiveDamping`, :class:`FixedDamping` or ``None`` (:data:`DAMPING_MODES`)
    :class:`AdaptiveDamping` (``"adaptive"``, the default, the paper's AdamQLR): lambda starts at
    ``initial`` and its :class:`~adamqlr.heuristics.LevenbergMarquardt` rule adapts it from the
    reduction ratio ``rho`` every ``interval`` steps, which costs one more forward pass (the
    trial loss) on those steps. :class:`FixedDamping` (``"fixed"``): lambda stays ``value`` for
    the whole run, also after a rejected step; no trial loss and no ``rho`` are computed
    (``StepStats.rho`` and ``trial_loss`` are NaN), so a step costs what an undamped one does.
    ``None`` (``"none"``): lambda = 0, no trial loss, no ``rho``.

``step_size``: :class:`StepSize` (``rule`` one of :data:`STEP_RULES`, ``clip``, ``amplification``)
    ``"alpha"`` (the default, the paper's): ``theta <- theta - alpha d`` with ``alpha`` the
    minimiser of the damped quadratic model along the direction ``d``
    (:func:`adamqlr.heuristics.propose_step`), clipped to ``[-clip, clip]`` and multiplied by
    ``amplification``. ``"alpha-momentum"``: K-FAC's joint choice of a learning rate and a
    momentum, on any direction: with ``v1 = -d`` and ``v2`` the previous update, the step
    ``a v1 + b v2`` minimises the damped quadratic model on the plane of the two
    (:func:`adamqlr.heuristics.propose_plane_step`); at the first step (no previous update) it is
    exactly the ``"alpha"`` rule.

The flat keywords these objects group (``initial_damping``, ``damping_decrease``, ...,
``damping_mode``, ``undamped``, ``step_rule``, ``lr_clip``, ``amplification``:
:class:`FlatOptions`) are still accepted; :func:`grouped` maps them onto the objects, the one path
from an optimiser's arguments to its settings. The experiment registry and the tuner keep their
flat configuration keys (run records are keyed by them) and build the objects the same way.

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
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias, TypedDict

import torch
from torch import Tensor

from adamqlr._validation import check as _check
from adamqlr._validation import integer as _integer
from adamqlr._validation import real as _real
from adamqlr.curvature import _dots
from adamqlr.heuristics import (
    DEFAULT_MAX_DAMPING,
    LevenbergMarquardt,
    PlaneProposal,
    propose_plane_step,
)

__all__ = [
    "DAMPING_KEYWORDS",
    "DAMPING_MODES",
    "DAMPING_WORDS",
    "DEFAULT_DAMPING",
    "DEFAULT_STEP_SIZE",
    "PREVIOUS_UPDATE",
    "STEP_RULES",
    "STEP_RULE_WORDS",
    "STEP_SIZE_KEYWORDS",
    "AdaptiveDamping",
    "Damping",
    "FixedDamping",
    "FlatOptions",
    "StepSize",
    "cell_label",
    "damping_from_flat",
    "damping_mode",
    "damping_parts",
    "flat_view",
    "grouped",
    "refuse_conflicts",
    "step_size_from_flat",
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

#: How labels name the factorial's step-size rules (``"constant"``: a tuned learning rate, with
#: K-FAC also a tuned momentum; ``"alpha"``: the 1-D quadratic model's step; ``"alpha-mom"``: the
#: 2-D learning rate and momentum), one vocabulary for the registry's cell entries and the
#: factorial chapter (:func:`cell_label`).
STEP_RULE_WORDS: Mapping[str, str] = MappingProxyType(
    {"constant": "tuned lr", "alpha": "α*", "alpha-mom": "α*, μ*"}
)
#: How labels name the damping rules (:data:`DAMPING_MODES`).
DAMPING_WORDS: Mapping[str, str] = MappingProxyType(
    {"none": "no damping", "fixed": "fixed λ", "adaptive": "adaptive λ"}
)


def cell_label(direction: str, rule: str, damping: str) -> str:
    """Return the label of a factorial cell, e.g. ``"Adam · α* · adaptive λ"``.

    K-FAC's constant rule tunes its momentum beside the learning rate (as K-FAC (Unadaptive)
    does), so its cells read ``"K-FAC · tuned lr, μ · ..."``.

    Args:
        direction: ``"SGD"``, ``"Adam"`` or ``"K-FAC"`` (as labels write it).
        rule: ``"constant"``, ``"alpha"`` or ``"alpha-mom"``.
        damping: ``"none"``, ``"fixed"`` or ``"adaptive"``.

    Raises:
        ValueError: Naming the rule or damping that has no word.
    """
    if rule not in STEP_RULE_WORDS:
        raise ValueError(f"invalid rule: {rule!r} (expected one of {sorted(STEP_RULE_WORDS)})")
    if damping not in DAMPING_WORDS:
        raise ValueError(f"invalid damping: {damping!r} (expected one of {sorted(DAMPING_WORDS)})")
    words = STEP_RULE_WORDS[rule]
    if rule == "constant" and direction == "K-FAC":
        words += ", μ"
    return f"{direction} · {words} · {DAMPING_WORDS[damping]}"


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


# --------------------------------------------------------------------------- grouped options
def _bool_or_none(value: object) -> bool:
    return value is None or isinstance(value, bool)


@dataclass(frozen=True)
class AdaptiveDamping:
    """The paper's damping: ``lambda`` starts at ``initial`` and ``rule`` adapts it from ``rho``.

    ``damping_mode="adaptive"``. Every ``interval`` steps the trial loss is computed (one more
    forward pass), then ``rho``, and the rule's
    :meth:`~adamqlr.heuristics.LevenbergMarquardt.update` gives the next ``lambda``.

    ``lambda_0`` lives here, beside the rule, and not in the
    :class:`~adamqlr.heuristics.LevenbergMarquardt` rule: the rule is the map from one ``lambda``
    to the next (K-FAC and the reference iteration share it), while a damping *setting* is
    incomplete without its starting point (the paper tunes ``lambda_0`` with the factors, and a
    fixed damping is nothing but its value). So a setting is one object:
    ``AdaptiveDamping(1.0, LevenbergMarquardt.tied(0.95))``.

    Attributes:
        initial: ``lambda_0``, >= 0 and within the rule's ``[lower, upper]``.
        rule: The :class:`~adamqlr.heuristics.LevenbergMarquardt` rule. The default is the
            paper's untuned one (0.5 / 2, bounded below by 1e-8) with the upper bound
            :data:`adamqlr.heuristics.DEFAULT_MAX_DAMPING` (1e8), which keeps a long run of
            rejected steps from driving ``lambda`` to infinity; a rule built without ``upper``
            is the paper's exact, unbounded one.
        interval: Adapt ``lambda`` (and pay the trial forward pass) every this many steps.
        in_rho: Whether the damping term enters ``rho``'s predicted change; ``None`` (default):
            the optimiser's convention (:class:`adamqlr.AdamQLR`: yes, as the paper's code;
            :class:`adamqlr.KFAC`: no, as kfac-jax).

    Raises:
        ValueError: Naming the field and its value, for an invalid one.
    """

    initial: float = 1e-3
    rule: LevenbergMarquardt = LevenbergMarquardt(upper=DEFAULT_MAX_DAMPING)
    interval: int = 1
    in_rho: bool | None = None

    def __post_init__(self) -> None:
        _check(
            "AdaptiveDamping rule",
            self.rule,
            isinstance(self.rule, LevenbergMarquardt),
            "a LevenbergMarquardt rule",
        )
        initial = _real("AdaptiveDamping initial", self.initial)
        _check("AdaptiveDamping initial", self.initial, 0.0 <= initial < math.inf, ">= 0, finite")
        _check(
            "AdaptiveDamping initial",
            self.initial,
            self.rule.lower <= initial <= self.rule.upper,
            f"within the rule's bounds ({self.rule.lower!r}, {self.rule.upper!r})",
        )
        _integer("AdaptiveDamping interval", self.interval, 1)
        _check("AdaptiveDamping in_rho", self.in_rho, _bool_or_none(self.in_rho), "a bool or None")


@dataclass(frozen=True)
class FixedDamping:
    """A constant damping: ``lambda = value`` for the whole run, also after a rejected step.

    ``damping_mode="fixed"``: no trial loss and no ``rho`` are computed, so a step costs what an
    undamped one does. (No damping at all is ``damping=None``.)

    Attributes:
        value: ``lambda``, >= 0 and finite.
        in_rho: Whether the damping term enters the predicted change (``StepStats
            .predicted_change``; no ``rho`` is computed from it); ``None`` (default): the
            optimiser's convention, as for :class:`AdaptiveDamping`.

    Raises:
        ValueError: Naming the field and its value, for an invalid one.
    """

    value: float
    in_rho: bool | None = None

    def __post_init__(self) -> None:
        value = _real("FixedDamping value", self.value)
        _check("FixedDamping value", self.value, 0.0 <= value < math.inf, ">= 0, finite")
        _check("FixedDamping in_rho", self.in_rho, _bool_or_none(self.in_rho), "a bool or None")


#: A damping setting; ``None`` in its place means no damping (``lambda = 0``).
Damping: TypeAlias = AdaptiveDamping | FixedDamping


@dataclass(frozen=True)
class StepSize:
    """The step-size rule and its two options: the clip ``alpha_max`` and the amplification ``k``.

    Attributes:
        rule: One of :data:`STEP_RULES`: ``"alpha"`` (the paper's, ``theta <- theta - alpha d``)
            or ``"alpha-momentum"`` (K-FAC's learning rate and momentum on the plane of ``-d``
            and the previous update; see the module docstring).
        clip: Optional symmetric clip ``alpha_max`` on the step size (with ``"alpha-momentum"``,
            on the coefficient of ``-d``; the momentum is then chosen again with it held), > 0
            and finite, or ``None`` (no clip, the paper's untuned setting).
        amplification: Factor ``k`` > 0 on the step size after clipping (on both coefficients
            with ``"alpha-momentum"``).

    Raises:
        ValueError: Naming the field and its value, for an invalid one.
    """

    rule: str = "alpha"
    clip: float | None = None
    amplification: float = 1.0

    def __post_init__(self) -> None:
        _check("StepSize rule", self.rule, self.rule in STEP_RULES, f"one of {STEP_RULES}")
        if self.clip is not None:
            clip = _real("StepSize clip", self.clip)
            _check("StepSize clip", self.clip, 0.0 < clip < math.inf, "> 0 and finite, or None")
        k = _real("StepSize amplification", self.amplification)
        _check("StepSize amplification", self.amplification, 0.0 < k < math.inf, "> 0 and finite")


#: The default damping and step size of :class:`adamqlr.AdamQLR` (the paper's untuned setting).
#: The optimisers tell "not given" from "given" by identity with these objects.
DEFAULT_DAMPING = AdaptiveDamping()
DEFAULT_STEP_SIZE = StepSize()


class FlatOptions(TypedDict, total=False):
    """The flat keywords the optimisers still accept beside the grouped settings.

    :class:`AdaptiveDamping`, :class:`FixedDamping` and :class:`StepSize` group them; the grouped
    form is preferred.

    ``initial_damping``, ``damping_decrease``, ``damping_increase``, ``damping_bounds``,
    ``damping_interval``, ``damping_in_rho``, ``undamped`` and ``damping_mode`` make the damping
    (:func:`damping_from_flat`); ``step_rule``, ``lr_clip`` and ``amplification`` the step size.
    """

    initial_damping: float
    damping_decrease: float
    damping_increase: float
    damping_bounds: tuple[float, float]
    damping_interval: int
    damping_in_rho: bool | None
    undamped: bool
    damping_mode: str | None
    step_rule: str
    lr_clip: float | None
    amplification: float


#: The flat keywords of the damping, then of the step size, with their defaults.
DAMPING_KEYWORDS: dict[str, Any] = {
    "initial_damping": 1e-3,
    "damping_decrease": 0.5,
    "damping_increase": 2.0,
    "damping_bounds": (1e-8, DEFAULT_MAX_DAMPING),
    "damping_interval": 1,
    "damping_in_rho": None,  # the optimiser's convention (AdamQLR: True)
    "undamped": False,
    "damping_mode": None,
}
STEP_SIZE_KEYWORDS: dict[str, Any] = {"step_rule": "alpha", "lr_clip": None, "amplification": 1.0}


def damping_from_flat(flat: Mapping[str, Any]) -> Damping | None:
    """Return the damping setting that the flat keywords in ``flat`` describe.

    Keywords left out take their defaults (:data:`DAMPING_KEYWORDS`); ``damping_mode`` and
    ``undamped`` choose the kind (:func:`damping_mode`): ``"adaptive"`` gives an
    :class:`AdaptiveDamping`, ``"fixed"`` a :class:`FixedDamping` at ``initial_damping`` (which
    must lie within ``damping_bounds``), ``"none"`` gives ``None``.

    Raises:
        ValueError: Naming the keyword and its value, for an invalid one.
    """
    opts = {**DAMPING_KEYWORDS, **flat}
    initial = _real("initial_damping", opts["initial_damping"])
    _check("initial_damping", initial, 0 <= initial < math.inf, ">= 0, finite")
    bounds = opts["damping_bounds"]
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"invalid damping_bounds: {bounds!r} (expected (lower, upper))")
    lower = _real("damping_bounds lower", bounds[0])
    upper = _real("damping_bounds upper", bounds[1])
    rule = LevenbergMarquardt(
        decrease=_real("damping_decrease", opts["damping_decrease"]),
        increase=_real("damping_increase", opts["damping_increase"]),
        lower=lower,
        upper=upper,
    )
    undamped = opts["undamped"]
    _check("undamped", undamped, isinstance(undamped, bool), "a bool")
    mode = damping_mode(opts["damping_mode"], undamped)
    if mode != "none":
        _check(
            "initial_damping",
            initial,
            lower <= initial <= upper,
            f"within damping_bounds {tuple(bounds)}",
        )
    interval = opts["damping_interval"]
    _check(
        "damping_interval",
        interval,
        isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1,
        "an int >= 1",
    )
    in_rho = opts["damping_in_rho"]
    _check("damping_in_rho", in_rho, _bool_or_none(in_rho), "a bool")
    if mode == "none":
        return None
    if mode == "fixed":
        return FixedDamping(initial, in_rho)
    return AdaptiveDamping(initial, rule, interval, in_rho)


def step_size_from_flat(flat: Mapping[str, Any]) -> StepSize:
    """Return the :class:`StepSize` that ``step_rule``, ``lr_clip`` and ``amplification`` give.

    Raises:
        ValueError: Naming the keyword and its value, for an invalid one.
    """
    opts = {**STEP_SIZE_KEYWORDS, **flat}
    rule = step_rule(opts["step_rule"])
    clip = opts["lr_clip"]
    if clip is not None:
        clip = _real("lr_clip", clip)
        _check("lr_clip", clip, 0 < clip < math.inf, "> 0 and finite, or None")
    k = _real("amplification", opts["amplification"])
    _check("amplification", k, 0 < k < math.inf, "> 0 and finite")
    return StepSize(rule, clip, k)


def flat_view(setting: Damping | StepSize | None, *, in_rho: bool = True) -> dict[str, Any]:
    """Return the flat keywords of :class:`adamqlr.AdamQLR` that ``setting`` fixes, with values.

    A keyword that does not apply (e.g. ``damping_decrease`` for a :class:`FixedDamping`) is
    absent. ``in_rho`` is the optimiser's convention, the value of an ``in_rho`` of ``None``.
    """
    if isinstance(setting, StepSize):
        return {
            "step_rule": setting.rule,
            "lr_clip": setting.clip,
            "amplification": setting.amplification,
        }
    if setting is None:
        return {"undamped": True, "damping_mode": "none"}
    own = setting.in_rho
    common = {"undamped": False, "damping_in_rho": in_rho if own is None else own}
    if isinstance(setting, FixedDamping):
        return {**common, "damping_mode": "fixed", "initial_damping": setting.value}
    rule = setting.rule
    return {
        **common,
        "damping_mode": "adaptive",
        "initial_damping": setting.initial,
        "damping_decrease": rule.decrease,
        "damping_increase": rule.increase,
        "damping_bounds": (rule.lower, rule.upper),
        "damping_interval": setting.interval,
    }


def _agrees(key: str, given: Any, held: Any) -> bool:
    if key == "damping_bounds":
        return isinstance(given, (tuple, list)) and tuple(given) == tuple(held)
    if isinstance(held, bool) or isinstance(given, bool):
        return given is held
    return bool(given == held)


def refuse_conflicts(
    name: str, setting: object, flat: Mapping[str, Any], held: Mapping[str, Any]
) -> None:
    """Raise unless every flat keyword in ``flat`` agrees with ``held``, what ``setting`` fixes.

    A keyword given as ``None`` where ``None`` means "from the others" (``damping_mode``,
    ``damping_update``) or "the optimiser's convention" (``damping_in_rho``) says nothing and
    is skipped.

    Raises:
        ValueError: Naming the keyword, its value and ``name=setting``, for a keyword that
            ``setting`` has not (it does not apply) or holds at another value.
    """
    for key, given in flat.items():
        if given is None and key in ("damping_mode", "damping_update", "damping_in_rho"):
            continue
        if key not in held:
            raise ValueError(
                f"invalid {key}: {given!r} given with {name}={setting!r}, which has no {key} "
                f"(pass one of them; the grouped {name}= is preferred)"
            )
        if not _agrees(key, given, held[key]):
            raise ValueError(
                f"invalid {key}: {given!r} conflicts with {name}={setting!r}, which has "
                f"{key}={held[key]!r} (pass one of them; the grouped {name}= is preferred)"
            )


def _merge(name: str, setting: Any, default: Any, flat: Mapping[str, Any], build: Any) -> Any:
    """Return ``setting``, or what the flat keywords build when ``setting`` was not given."""
    if not flat:
        return setting
    if setting is default:  # not given: the flat keywords describe the setting
        return build(flat)
    refuse_conflicts(name, setting, flat, flat_view(setting))
    return setting


def grouped(
    damping: Damping | None,
    step_size: StepSize,
    flat: Mapping[str, Any],
    *,
    owner: str = "the optimiser",
) -> tuple[Damping | None, StepSize]:
    """Return the damping and step size from the grouped arguments and the flat keywords.

    The one path from an optimiser's arguments to its settings. A flat keyword refines the
    default (``damping`` is :data:`DEFAULT_DAMPING`, ``step_size`` :data:`DEFAULT_STEP_SIZE`, by
    identity), so old code keeps working; given beside an object, it must agree with it.

    Raises:
        TypeError: For a keyword that is no flat option (as Python raises for any unknown
            keyword), naming it and ``owner``.
        ValueError: For a damping or step size of the wrong type, an invalid flat keyword, or a
            flat keyword that contradicts (or does not apply to) the object given beside it,
            naming both.
    """
    unknown = sorted(set(flat) - set(DAMPING_KEYWORDS) - set(STEP_SIZE_KEYWORDS))
    if unknown:
        raise TypeError(f"{owner} got an unexpected keyword argument {unknown[0]!r}")
    _check(
        "damping",
        damping,
        damping is None or isinstance(damping, (AdaptiveDamping, FixedDamping)),
        "AdaptiveDamping(...), FixedDamping(value) or None (no damping)",
    )
    _check("step_size", step_size, isinstance(step_size, StepSize), "StepSize(...)")
    damping_flat = {k: v for k, v in flat.items() if k in DAMPING_KEYWORDS}
    step_flat = {k: v for k, v in flat.items() if k in STEP_SIZE_KEYWORDS}
    return (
        _merge("damping", damping, DEFAULT_DAMPING, damping_flat, damping_from_flat),
        _merge("step_size", step_size, DEFAULT_STEP_SIZE, step_flat, step_size_from_flat),
    )


def damping_parts(
    damping: Damping | None, *, in_rho: bool = True
) -> tuple[str, float, LevenbergMarquardt, int, bool]:
    """Return ``(mode, lambda_0, rule, interval, in_rho)`` for a damping setting.

    ``mode`` is one of :data:`DAMPING_MODES`. A fixed (or no) damping has the rule that keeps
    ``lambda`` where it is (bounds ``[lambda, lambda]``) and adapts never (interval 1, unused).
    The keyword ``in_rho`` is the optimiser's convention, taken where the setting's is ``None``
    (and with no damping, where ``lambda = 0`` makes it moot).
    """
    if damping is None:
        return "none", 0.0, LevenbergMarquardt(lower=0.0, upper=0.0), 1, in_rho
    own = in_rho if damping.in_rho is None else damping.in_rho
    if isinstance(damping, FixedDamping):
        value = damping.value
        return "fixed", value, LevenbergMarquardt(lower=value, upper=value), 1, own
    return "adaptive", damping.initial, damping.rule, damping.interval, own


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


def plane_scalars(
    grads: list[Tensor], directions: list[Tensor], previous: list[Tensor]
) -> list[Tensor]:
    """Return the 0-d tensors ``g_i^T v2_i``, ``d_i^T v2_i`` and ``v2_i^T v2_i``, per parameter."""
    return [*_dots(grads, previous), *_dots(directions, previous), *_dots(previous, previous)]


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
