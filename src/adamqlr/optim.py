"""AdamQLR and SGDQLR: a direction plus K-FAC's step-size and damping heuristics.

:class:`QuadraticModelOptimizer` holds everything that does not depend on the direction: the
gradient pass, the curvature along the direction, the step size from the damped quadratic model,
the trial loss, the reduction ratio and the Levenberg-Marquardt damping (all from
:mod:`adamqlr.heuristics`), and the guards against non-finite numbers. The options are grouped as
the paper groups them: the damping rule (``damping``, :class:`adamqlr.rules.AdaptiveDamping`,
:class:`~adamqlr.rules.FixedDamping` or ``None``), the step-size rule with its clip and
amplification (``step_size``, :class:`adamqlr.rules.StepSize`), Adam's ``betas`` and ``eps``;
the old flat keywords (``initial_damping=``, ``lr_clip=``, ...) map onto them. A subclass
supplies only the direction: :class:`AdamQLR` Adam's bias-corrected
``m_hat / (sqrt(v_hat) + eps)``, :class:`SGDQLR` the gradient itself.

One call of :meth:`QuadraticModelOptimizer.step` on a mini-batch ``(inputs, targets)`` costs one
forward and backward pass (the gradient), then the curvature along the direction on the same
batch, and, on steps that adapt the damping, one more forward pass for the trial loss (never with
``damping=FixedDamping(...)`` or ``None``; ``step_size=StepSize("alpha-momentum")`` adds a second
curvature product, along the previous update: :mod:`adamqlr.rules` says what each costs; with
``rho_data="next"`` the trial forward pass is at the previous parameters on this batch
instead, :mod:`adamqlr.heldout`). With
``"fisher"`` the curvature is one forward-mode JVP: for a sequential MLP that
:func:`adamqlr.curvature.layerwise_plan` covers, the gradient pass itself runs layer by layer
and keeps its activations, so the JVP computes tangents only
(:func:`adamqlr.curvature.layerwise_tangent`); for any other model,
:func:`adamqlr.curvature.ggn_quadratic` (forward-mode autograd). With ``"hessian"`` the gradient
pass keeps its graph (``create_graph=True``) and ``H d`` is one more backward pass through it
(reverse over reverse): no second forward pass, the same batch-norm statistics and dropout masks
by construction, at the price of holding the gradient's graph until then. Models whose operations
have no double backward (e.g. cuDNN RNNs) cannot use ``"hessian"``.

In a training loop the optimisers follow ``torch.optim``'s conventions where they can: parameter
groups with an ``lr`` (a factor on the step size, 1.0 by default, so torch's learning-rate
schedulers work), :meth:`~QuadraticModelOptimizer.add_param_group`, ``state_dict`` round trips.
Where they cannot, they say so: the step takes the batch (``opt.step(inputs, targets)``, no
closure, no ``backward()`` before it), so gradient clipping is the ``max_grad_norm`` option. Bad
batches and state dicts are refused with a ``ValueError`` naming the value (:mod:`adamqlr._checks`),
and a run whose steps no longer change the loss is flagged (``StepStats.stalled``, ``on_stall``).
Models people train today work as they are: attention runs with kernels that have the second
derivatives the curvature needs (:mod:`adamqlr.backends`; a ``torch.compile``-d module is refused
with the fix), any loss module or function gets its output-space Hessian by autograd and a model
returning a dict or tuple takes ``output=`` (:mod:`adamqlr.losses`, :mod:`adamqlr.outputs`), the
step's scalars are accumulated in float32 or wider under ``torch.autocast``
(:mod:`adamqlr.precision`), and with a ``torch.distributed`` process group every rank takes the
same step (:mod:`adamqlr.distributed`).

Everything that touches every parameter (Adam's moments, the sums, the update) uses torch's
``_foreach`` kernels, and the host waits for the device three times per step: for the loss and
the sums, for the curvature, and for the trial loss.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from adamqlr import _checks
from adamqlr import heldout as _heldout
from adamqlr import rules as _rules
from adamqlr._state import OptimiserWideState
from adamqlr._step_hooks import hooked_step
from adamqlr._validation import check as _check
from adamqlr._validation import integer as _integer
from adamqlr._validation import real as _real
from adamqlr.backends import check_model, curvature_safe_attention
from adamqlr.curvature import CURVATURES, CurvatureEngine, EngineCache, _all_wide, _dots
from adamqlr.distributed import DistributedEngine, process_group, unwrap
from adamqlr.heuristics import (
    PlaneProposal,
    Proposal,
    propose_step,
)
from adamqlr.losses import Loss, get_loss
from adamqlr.outputs import OutputSelector, check_selector
from adamqlr.precision import cpu_number, forget_cast_weights, rounding_dtype
from adamqlr.rules import DEFAULT_DAMPING, DEFAULT_STEP_SIZE, Damping, FlatOptions, StepSize

if sys.version_info >= (3, 11):  # imported, not only for mypy: the API page evaluates the hints
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

__all__ = [
    "AdamQLR",
    "NonFiniteStepError",
    "QuadraticModelOptimizer",
    "SGDQLR",
    "StallError",
    "StepStats",
]

_GLOBAL = "qlr"  # key of the optimiser-wide state (damping, step counters) in ``self.state``
_ON_STALL = ("warn", "raise", "ignore")


class NonFiniteStepError(FloatingPointError):
    """Raised by a step with ``on_nonfinite="raise"`` when a non-finite number appears."""


class StallError(RuntimeError):
    """Raised by a step with ``on_stall="raise"`` when the steps have stopped changing the loss."""


class _Rejected(Exception):  # noqa: N818 - control flow inside a step, never seen outside
    """A step refused: why, the loss before it, and what was known by then."""

    def __init__(self, reason: str, loss: float, extra: dict[str, float] | None = None) -> None:
        super().__init__(reason)
        self.reason, self.loss, self.extra = reason, loss, extra or {}


@dataclass(frozen=True)
class StepStats:
    """What one optimiser step did.

    Attributes:
        loss: Mini-batch loss *before* the step.
        lr: Step size ``alpha`` applied (0.0 when the step was rejected).
        damping: Damping ``lambda`` after this step's update (the value the next step uses).
        rho: Reduction ratio (NaN when not computed on this step). With ``rho_data="next"``,
            the held-out ratio of the previous step, measured on this step's batch
            (:mod:`adamqlr.heldout`); ``trial_loss`` is then that batch's loss at the previous
            parameters.
        accepted: Whether the parameters moved.
        reason: Why a step was rejected (``"nonfinite_loss"``, ``"nonfinite_gradient"`` (also
            when the new Adam moments overflow), ``"nonfinite_curvature"``,
            ``"nonpositive_curvature"``, ``"nonfinite_step"`` (a non-finite step size, or
            parameters that would become non-finite), ``"nonfinite_trial_loss"``), ``"no_gradient"``
            (no parameter received a gradient: nothing changes), or ``""``.
        curvature: ``q = d^T C d``.
        grad_dot_dir: ``g^T d``.
        direction_sq_norm: ``||d||^2``.
        predicted_change: Change of the damped quadratic model for the applied step.
        trial_loss: Mini-batch loss after the step (NaN when not computed).
        damping_used: The damping that entered the step size (the previous step's value).
        step: Number of accepted steps so far, this one included.
        loss_unresolved: The trial loss differed from the loss by no more than the loss's
            rounding level (:func:`adamqlr.heuristics.loss_difference_trustworthy` in the least
            precise dtype of the loss, the outputs and the autocast in force:
            :func:`adamqlr.precision.rounding_dtype`), so ``rho`` was not computed (NaN) and the
            damping followed :meth:`adamqlr.heuristics.LevenbergMarquardt.after_unresolved`
            instead.
        stalled: The last ``stall_patience`` damping-adaptation steps (this one included) all had
            an unresolved loss change: the steps no longer change the loss.
        grad_norm: The gradient's norm before ``max_grad_norm`` clipped it (NaN without it).
        momentum: With ``step_rule="alpha-momentum"``, the coefficient ``b`` of the previous
            update in the step ``theta <- theta - lr d + b v2`` (0.0 on the first step, and when
            ``d`` and the previous update are parallel); NaN with the ``"alpha"`` rule and on a
            rejected step.
    """

    loss: float
    lr: float
    damping: float
    rho: float
    accepted: bool
    reason: str
    curvature: float
    grad_dot_dir: float
    direction_sq_norm: float
    predicted_change: float
    trial_loss: float
    damping_used: float
    step: int
    loss_unresolved: bool = False
    stalled: bool = False
    grad_norm: float = math.nan
    momentum: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        """Return the statistics as a plain dict (for logging)."""
        return asdict(self)


class QuadraticModelOptimizer(OptimiserWideState, torch.optim.Optimizer):
    """Base class: a direction from a subclass, the step size and damping from the heuristics.

    Subclasses implement :meth:`_direction`. See :class:`AdamQLR` for every argument.
    """

    #: The step needs the batch, not a closure (the curvature needs the model and the data).
    step_requires_batch = True
    global_key = _GLOBAL

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss | nn.Module | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        curvature: str = "fisher",
        *,
        damping: Damping | None = DEFAULT_DAMPING,
        step_size: StepSize = DEFAULT_STEP_SIZE,
        rho_data: str = "same",
        weight_decay: float = 0.0,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None = None,
        max_grad_norm: float | None = None,
        nonpositive_curvature: str = "reject",
        on_nonfinite: str = "skip",
        on_stall: str = "warn",
        stall_patience: int = 20,
        resolve_loss: bool = True,
        ignore_index: int = -100,
        output: OutputSelector = None,
        distributed: bool | str | Any = "auto",
        group_defaults: dict[str, Any] | None = None,
        **flat: Unpack[FlatOptions],
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"invalid model: {model!r} (expected a torch.nn.Module)")
        check_model(model)  # [loops] e.g. a torch.compile-d module, with the fix (backends.py)
        check_selector(output)  # [loops] outputs.py
        process_group(distributed)  # [loops] validates the setting (distributed.py)
        model = unwrap(model)  # [loops] a DDP wrapper: the step averages over ranks itself
        if isinstance(loss, str) and loss == "cross_entropy":
            loss_obj = get_loss(loss, ignore_index=ignore_index)
        else:
            loss_obj = get_loss(loss)
        _check("curvature", curvature, curvature in CURVATURES, f"one of {CURVATURES}")
        # [rules] the one path from the arguments (grouped, or the old flat keywords) to the
        # settings (rules.py); the flat attributes below are read by the step
        damping, step_size = _rules.grouped(
            damping, step_size, flat, owner=f"{type(self).__name__}.__init__()"
        )
        damping_mode, initial_damping, lm, damping_interval, damping_in_rho = _rules.damping_parts(
            damping
        )
        rho_data = _heldout.rho_data(rho_data, damping_mode)  # [heldout] heldout.py
        weight_decay = _real("weight_decay", weight_decay)
        _check("weight_decay", weight_decay, 0 <= weight_decay < 1, "in [0, 1)")
        if max_grad_norm is not None:
            max_grad_norm = _real("max_grad_norm", max_grad_norm)
            _check(
                "max_grad_norm",
                max_grad_norm,
                0 < max_grad_norm < math.inf,
                "> 0 and finite, or None",
            )
        _check(
            "nonpositive_curvature",
            nonpositive_curvature,
            nonpositive_curvature in ("reject", "absolute"),
            "'reject' or 'absolute'",
        )
        _check("on_nonfinite", on_nonfinite, on_nonfinite in ("skip", "raise"), "'skip' or 'raise'")
        _check("on_stall", on_stall, on_stall in _ON_STALL, f"one of {_ON_STALL}")
        stall_patience = _integer("stall_patience", stall_patience, 1)
        _check("resolve_loss", resolve_loss, isinstance(resolve_loss, bool), "a bool")

        # add_param_group (called by torch for each group) needs the model to name the parameters
        self.model = model
        source = model.parameters() if params is None else params
        if isinstance(source, Tensor):
            raise ValueError("invalid params: a single Tensor (expected an iterable of tensors)")
        groups = list(source)
        if not groups:
            raise ValueError("invalid params: empty (the optimiser needs at least one parameter)")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        defaults = dict(lr=1.0, weight_decay=weight_decay, **(group_defaults or {}))
        super().__init__(groups, defaults)  # type: ignore[arg-type]  # dicts or tensors, checked above

        self.loss = loss_obj
        self.curvature = curvature
        #: The damping setting (:class:`~adamqlr.rules.AdaptiveDamping`,
        #: :class:`~adamqlr.rules.FixedDamping` or ``None``) and the
        #: :class:`~adamqlr.rules.StepSize`; the attributes after them are their parts, as the
        #: step reads them.
        self.damping_setting = damping
        self.step_size = step_size
        self.damping_rule = lm
        self.initial_damping = initial_damping
        self.damping_interval = damping_interval
        self.damping_in_rho = damping_in_rho
        self.lr_clip = step_size.clip
        self.amplification = step_size.amplification
        self.undamped = damping_mode == "none"
        self.damping_mode = damping_mode
        self.step_rule = step_size.rule
        self.rho_data = rho_data
        self.max_grad_norm = max_grad_norm
        self.nonpositive_curvature = nonpositive_curvature
        self.on_nonfinite = on_nonfinite
        self.on_stall = on_stall
        self.stall_patience = stall_patience
        self.resolve_loss = resolve_loss
        self.state[_GLOBAL] = self._fresh_global_state()
        self.output = output
        self.distributed = distributed
        self._engines = EngineCache(model, curvature, loss_obj, output)
        self._last_outputs: Tensor | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group, as :meth:`torch.optim.Optimizer.add_param_group` does.

        The parameters must be the model's own (e.g. a layer unfrozen during fine-tuning); they
        are named from ``model.named_parameters()`` (the name is how the curvature pass finds
        them), so no ``param_names`` entry is needed. Options the group leaves out take the
        optimiser's defaults (``lr`` 1.0, ``weight_decay``, and for :class:`AdamQLR` ``betas`` and
        ``eps``); the new parameters start with empty state.

        Raises:
            ValueError: Naming the parameter or option, if a parameter is not the model's, is
                already in a group, is not a real floating-point tensor, or an option is unknown
                or invalid. The optimiser is unchanged then.
        """
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise ValueError(
                f"invalid params: group {param_group!r} (expected a dict with a 'params' entry)"
            )
        names = {id(p): n for n, p in self.model.named_parameters()}
        plist = param_group["params"]
        if isinstance(plist, set):
            raise ValueError("invalid params: a set (its order changes between runs; pass a list)")
        plist = [plist] if isinstance(plist, Tensor) else list(plist)
        if not plist:
            raise ValueError("invalid params: a parameter group with no parameters")
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        for p in plist:
            if not isinstance(p, Tensor) or id(p) not in names:
                raise ValueError(
                    f"invalid params: {type(p).__name__} {tuple(getattr(p, 'shape', ()))} is "
                    "not a parameter of the model (pass the model's own parameters)"
                )
            if id(p) in seen:
                raise ValueError(
                    f"invalid params: {names[id(p)]} is given more than once (each parameter "
                    "may appear in one group, once)"
                )
            seen.add(id(p))
            if not p.is_floating_point() or p.is_complex():
                raise ValueError(
                    f"invalid params: {names[id(p)]} has dtype {p.dtype} (expected a real "
                    "floating-point dtype; complex parameters are not supported)"
                )
        own = [names[id(p)] for p in plist]
        given = param_group.get("param_names")
        if given is not None and list(given) != own:
            raise ValueError(
                f"invalid param_names: {list(given)!r} (the model names these parameters {own!r};"
                " leave param_names out, it is filled in)"
            )
        self._validate_group({**self.defaults, **param_group, "params": plist})
        param_group["params"] = plist
        param_group["param_names"] = own
        super().add_param_group(param_group)

    # ----------------------------------------------------------------------------------- hooks
    def _validate_group(self, group: dict[str, Any]) -> None:
        unknown = sorted(set(group) - {"params", "param_names"} - set(self.defaults))
        if unknown:
            raise ValueError(
                f"invalid parameter group option(s) {unknown} (a group accepts "
                f"{sorted(self.defaults)})"
            )
        self._validate_group_values(group)

    def _validate_group_values(self, group: dict[str, Any]) -> None:
        """Check the values of the options a group has (also those loaded from a state dict)."""
        lr = _real("lr", group["lr"])
        _check("lr", lr, 0 <= lr < math.inf, ">= 0 and finite (a factor on the step size)")
        wd = _real("weight_decay", group["weight_decay"])
        _check("weight_decay", wd, 0 <= wd < 1, "in [0, 1)")

    def _direction(
        self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], Any]:
        """Return the direction per parameter, 0-d tensors that must be finite, and a candidate.

        Must not modify ``self.state``: the step may still be rejected. The second list holds
        checks on the state the step would commit (e.g. the largest entries of Adam's new second
        moments), so that an overflow there rejects the step before anything is written. The
        candidate (e.g. Adam's new moments, computed once) is handed to :meth:`_commit` if the
        step is accepted. The step overwrites the returned directions, so they must not alias the
        gradients or the state.
        """
        raise NotImplementedError

    def _commit(
        self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any], candidate: Any
    ) -> None:
        """Write the per-parameter state of an accepted step: the candidate of :meth:`_direction`.

        The base class keeps no state.
        """

    # ------------------------------------------------------------------------------ state
    def _fresh_global_state(self) -> dict[str, Any]:
        return {
            "step": 0,
            "damping": self.initial_damping,
            "rejected_steps": 0,
            "nonfinite_steps": 0,
            "calls": 0,
            "unresolved_streak": 0,
            "stalls": 0,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by :meth:`state_dict` (the input is not modified).

        Groups saved before an option existed (e.g. ``lr``) take its default. The parameter
        names stay the model's own (the saved ones may differ, e.g. after wrapping the model).

        Raises:
            ValueError: Before anything is loaded, naming the entry and its value, for a state
                dict from another optimiser (no ``'qlr'`` entry), from another model (other group
                sizes, or state whose shapes are not the parameters'), with an invalid option
                (``betas``, ``eps``, ``lr``, ``weight_decay``), or an invalid damping or counter.
        """
        _checks.check_loaded_state(
            state_dict,
            self.param_groups,
            _GLOBAL,
            self.defaults,
            self._validate_group_values,
            counters=("step", "rejected_steps", "nonfinite_steps", "calls", "unresolved_streak"),
            max_damping=self.damping_rule.upper,
        )
        names = [list(group["param_names"]) for group in self.param_groups]
        # torch's own loader adds "differentiable" to the defaults; it is no option of ours
        options = {k: v for k, v in self.defaults.items() if k != "differentiable"}
        super().load_state_dict(state_dict)
        for group, own in zip(self.param_groups, names, strict=True):
            for key, value in options.items():
                group.setdefault(key, value)
            group["param_names"] = own

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer keeps only defaults, state and param groups; here the model, the loss
        # and every setting belong to the optimiser too, or a copy could not step. Hooks are not
        # carried over, as in torch.
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_optimizer_")}
        # The engine cache is rebuilt, not copied; the last outputs are not part of the state.
        state["_engines"] = None
        state["_last_outputs"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:  # noqa: D105
        super().__setstate__(state)
        # [rules] an optimiser pickled before the damping modes and step rules existed
        self.__dict__.setdefault("damping_mode", "none" if state.get("undamped") else "adaptive")
        self.__dict__.setdefault("step_rule", "alpha")
        self.__dict__.setdefault("rho_data", "same")
        if self.__dict__.get("_engines") is None and "model" in self.__dict__:
            self._engines = EngineCache(
                self.model, self.curvature, self.loss, self.__dict__.get("output")
            )
            self._last_outputs = None

    @property
    def damping(self) -> float:
        """The current damping ``lambda`` (used by the next step)."""
        return float(self.state[_GLOBAL]["damping"])

    # ------------------------------------------------------------------------------- step
    @property
    def curvature_engine(self) -> CurvatureEngine | None:
        """The engine the last step used for ``d^T C d`` (``None`` before the first step).

        :class:`adamqlr.curvature.LayerwiseFisher` is the fast path for sequential MLPs; see
        :func:`adamqlr.curvature.curvature_engine` for the choice.
        """
        return self._engines._engine

    def last_outputs(self) -> Tensor | None:
        """Return the network outputs of the last step's gradient pass (detached), or ``None``.

        They are the outputs at the parameters *before* that step, on its mini-batch: a training
        loop reads e.g. the mini-batch accuracy from them without another forward pass or a hook.
        Kept until the next step.
        """
        return self._last_outputs

    def _reject(self, rejection: _Rejected) -> StepStats:
        """Record a rejected step: damping up, counters, a warning (or raise); nothing moves."""
        reason, loss, extra = rejection.reason, rejection.loss, rejection.extra
        glob = self.state[_GLOBAL]
        nonfinite = reason.startswith("nonfinite")
        if nonfinite and self.on_nonfinite == "raise":
            raise NonFiniteStepError(
                f"{type(self).__name__} step {glob['step'] + 1}: {reason.replace('_', ' ')}"
            )
        damping_used = glob["damping"]
        if self.damping_mode == "adaptive":  # [rules] "fixed" and "none" keep lambda
            # The jump past negative curvature is for the step refused because of it; any other
            # rejection (e.g. a NaN trial loss after an "absolute" step) just raises lambda.
            glob["damping"] = self.damping_rule.after_rejection(
                damping_used,
                extra.get("curvature", math.nan) if reason == "nonpositive_curvature" else math.nan,
                extra.get("direction_sq_norm", math.nan),
            )
        glob["rejected_steps"] += 1
        glob["nonfinite_steps"] += int(nonfinite)
        warnings.warn(
            f"{type(self).__name__}: step rejected ({reason}); parameters unchanged, damping "
            f"{damping_used:.3g} -> {glob['damping']:.3g}",
            RuntimeWarning,
            stacklevel=4,  # _reject <- step <- the step wrapper (_step_hooks) <- the caller
        )
        return StepStats(
            loss=loss,
            lr=0.0,
            damping=glob["damping"],
            rho=math.nan,
            accepted=False,
            reason=reason,
            curvature=extra.get("curvature", math.nan),
            grad_dot_dir=extra.get("grad_dot_dir", math.nan),
            direction_sq_norm=extra.get("direction_sq_norm", math.nan),
            predicted_change=math.nan,
            trial_loss=extra.get("trial_loss", math.nan),
            damping_used=damping_used,
            step=glob["step"],
            stalled=glob["unresolved_streak"] >= self.stall_patience,
            grad_norm=extra.get("grad_norm", math.nan),
        )

    def _check_batch(self, inputs: object, targets: object) -> None:
        devices = {p.device for group in self.param_groups for p in group["params"]}
        _checks.check_batch(inputs, targets, devices)

    @hooked_step
    def step(  # type: ignore[override]
        self, inputs: Any = None, targets: Tensor | None = None, *, closure: Any = None
    ) -> StepStats:
        """Take one full step on the mini-batch ``(inputs, targets)``.

        1. Forward and backward pass: loss ``f0`` and gradient ``g`` (this pass, an ordinary call
           of the module, is the only one that updates batch-norm running statistics).
        2. Direction ``d`` (from the subclass) and curvature ``q = d^T C d`` on the same batch
           (the Hessian's through the gradient pass's own graph).
        3. Step size ``alpha = g^T d / (q + lambda ||d||^2)``, optionally clipped and amplified;
           ``theta <- theta - alpha d - w theta``.
        4. On damping-adaptation steps: trial loss ``f1`` on the same batch, reduction ratio
           ``rho = (f1 - f0) / (M(alpha) - M(0))`` and the Levenberg-Marquardt update of lambda.

        Unlike ``torch.optim`` optimisers, the step takes the batch, not gradients or a closure: it
        computes the gradient itself (``zero_grad`` and ``loss.backward()`` are not needed, and
        gradients left in ``.grad`` are overwritten), because the curvature and the trial loss
        need the model evaluated on the same batch. For the same reason
        ``torch.nn.utils.clip_grad_norm_`` before the step has no effect: use ``max_grad_norm``,
        which clips the gradient inside the step (before Adam's moments, ``g^T d`` and the
        step size see it). Each parameter group's ``lr`` multiplies the step size (see
        :class:`AdamQLR`), so torch's learning-rate schedulers scale the steps.

        A non-finite loss, gradient, curvature or trial loss never reaches the parameters: the
        step is rejected (parameters and direction state unchanged), the damping is increased, a
        ``RuntimeWarning`` is issued, and ``StepStats.accepted`` is false (or
        :class:`NonFiniteStepError` is raised with ``on_nonfinite="raise"``). A non-positive
        damped curvature is handled as ``nonpositive_curvature`` says.

        A trial loss that differs from the loss by no more than the loss's rounding level (a few
        ulps of its dtype, :func:`adamqlr.heuristics.loss_difference_trustworthy`) gives no
        reduction ratio: ``rho`` is NaN, ``StepStats.loss_unresolved`` is true, and the damping
        is left alone, or lowered by ``damping_decrease`` when the predicted change was itself
        below that level (the step was too small to be measured; this is how a damping driven
        up by a run of rejected steps comes back down). When ``stall_patience`` adaptation steps
        in a row are unresolved, the run has stalled: ``StepStats.stalled`` is true from then on
        until a step changes the loss measurably, and one ``RuntimeWarning`` is issued (or
        :class:`StallError` is raised after the step, with ``on_stall="raise"``).

        Random layers (dropout) see the same random numbers in the curvature and trial passes as
        in the gradient pass (the random state is replayed), so all of them evaluate the same
        function; afterwards the global random state is as the gradient pass left it.

        Args:
            inputs: The mini-batch inputs, passed to ``model(inputs)``.
            targets: The mini-batch targets for the loss (on the parameters' device; class
                indices in ``[0, C)`` or ``ignore_index`` for cross-entropy, real values shaped
                like the outputs for squared error).
            closure: Not supported (accepted by name only to explain why): the step needs the
                batch itself.

        Returns:
            The :class:`StepStats` of this step.

        Raises:
            TypeError: If no batch is given (``step()``, ``step(closure)``,
                ``step(closure=...)``), with the call to use instead.
            ValueError: Naming ``targets`` (or ``inputs``) and the bad value, for targets that
                are not a tensor, an empty batch, a batch on another device than the parameters,
                or targets the loss cannot use (see :meth:`adamqlr.losses.Loss.check_shapes`);
                nothing changes then, except batch-norm running statistics when the problem is
                found after the forward pass.
        """
        if targets is None or closure is not None:
            raise _checks.missing_batch_error(
                type(self).__name__, closure if closure is not None else inputs
            )
        self._check_batch(inputs, targets)
        engine = self._engines.engine(inputs)
        group = process_group(self.__dict__.get("distributed", False))  # [loops] distributed.py
        if group is not None:
            engine = DistributedEngine(engine, group)  # type: ignore[assignment]
        # [loops] Attention uses kernels that have forward-mode and double-backward rules
        # (backends.py). A model that cannot reach an attention kernel (decided once per model
        # signature, with the engine) skips the process-wide switches (~30 us a step).
        guard = curvature_safe_attention() if engine.may_use_attention else contextlib.nullcontext()
        try:
            # Everything but the engine's gradient pass runs without recording a graph.
            with guard, torch.no_grad():
                return self._iteration(engine, inputs, targets)
        except _Rejected as rejection:
            return self._reject(rejection)
        finally:
            engine.release()

    def _iteration(self, engine: CurvatureEngine, inputs: Any, targets: Tensor) -> StepStats:
        """One AdamQLR iteration in the paper's order; a rejection raises :class:`_Rejected`."""
        glob = self.state[_GLOBAL]
        step = glob["step"] + 1

        # 1. Gradient pass: f0 and g (the engine keeps what the curvature needs), then the
        # optional clipping of g (no host sync: the factor stays on the device).
        everything = [p for group in self.param_groups for p in group["params"]]
        for p in everything:
            p.grad = None
        previous_outputs = self._last_outputs
        f0_t, self._last_outputs = engine.gradient_pass(inputs, targets, everything)
        glob["calls"] += 1  # a batch the loss refused (ValueError above) is no call
        grad_norm_t = None
        if self.max_grad_norm is not None:
            grads = [p.grad for p in everything if p.grad is not None]
            if grads:
                grad_norm_t = _clip_gradients(grads, self.max_grad_norm)

        # 2. Direction d, group by group: nothing is written to the state until the commit.
        names: list[str] = []
        ps: list[Tensor] = []
        gs: list[Tensor] = []
        ds: list[Tensor] = []
        decays: list[float] = []
        checks: list[Tensor] = []
        lrs: list[float] = []
        group_dirs: list[list[Tensor]] = []
        pending: list[tuple[list[Tensor], list[Tensor], dict[str, Any], Any]] = []
        for group in self.param_groups:
            live = [
                (n, p)
                for n, p in zip(group["param_names"], group["params"], strict=True)
                if p.grad is not None
            ]
            if not live:
                continue
            group_ps = [p for _, p in live]
            group_gs = [p.grad for p in group_ps]
            group_ds, group_checks, candidate = self._direction(group_ps, group_gs, group)
            lr = float(group["lr"])
            names += [n for n, _ in live]
            ps += group_ps
            gs += group_gs
            ds += group_ds
            checks += group_checks
            decays += [group["weight_decay"] * lr if lr != 1.0 else group["weight_decay"]] * len(
                live
            )
            lrs.append(lr)
            group_dirs.append(group_ds)
            pending.append((group_ps, group_gs, group, candidate))
        if not ds:
            f0 = float(f0_t)
            damping = self.damping
            nan = math.nan
            return StepStats(f0, 0.0, damping, nan, False, "no_gradient", nan, nan, nan, nan, nan,
                             damping, glob["step"])  # fmt: skip
        # The groups' lr: the largest multiplies the step size, the others' ratios to it scale
        # their groups' directions (all 1.0 by default: nothing to do).
        lr_scale = max(lrs)
        for group_ds, lr in zip(group_dirs, lrs, strict=True):
            ratio = lr / lr_scale if lr_scale > 0.0 else 0.0
            if ratio != 1.0:
                torch._foreach_mul_(group_ds, ratio)
        del group_dirs

        # 3. Curvature along d, then one host sync for the loss, g^T d, ||d||^2, the finiteness
        # of the new direction state (a finite gradient can still overflow Adam's second moment
        # in float32) and q. A non-finite gradient makes d non-finite, so ||d||^2 catches it.
        # [rules] step_rule="alpha-momentum": the plane of d and the previous update (rules.py)
        momentum_rule = self.step_rule == "alpha-momentum"
        plane = _rules.previous_update(self.state, ps) if momentum_rule else None
        plane_t: list[Tensor] = []
        if plane is None:
            q_t = engine.along(names, ps, ds)
        else:
            q_t, cross_t, second_t = engine.along_pair(names, ps, ds, plane)
            plane_t = [cross_t, second_t, *_rules.plane_scalars(gs, ds, plane)]
        wide_enough = _all_wide(gs) and _all_wide(ds)  # one dtype check for both reductions
        dots = _dots(gs, ds, wide_enough)
        extra_t = [] if grad_norm_t is None else [grad_norm_t]
        values = _host([f0_t, q_t, *dots, *_norms(ds, wide_enough), *checks, *extra_t, *plane_t])
        plane_values = [values.pop() for _ in plane_t][::-1]
        grad_norm = values.pop() if extra_t else math.nan
        f0, q = values[0], values[1]
        if not math.isfinite(f0):
            # The targets' value checks were left to a failing loss (curvature.checked_value):
            # one whose value is NaN without failing (e.g. every target ignore_index) is refused
            # here, as before the pass: no call counted, no gradient, the last outputs kept.
            try:
                self.loss.check_values(self._last_outputs, targets)
            except ValueError:
                glob["calls"] -= 1
                for p in everything:
                    p.grad = None
                self._last_outputs = previous_outputs
                raise
            raise _Rejected("nonfinite_loss", f0, {"grad_norm": grad_norm})
        heldout = self.rho_data == "next"
        rho, f1, unresolved = math.nan, math.nan, False
        if heldout:  # [heldout] the previous step judged on this batch (heldout.py)
            low = rounding_dtype(f0_t.dtype, self._last_outputs.dtype, device_type=f0_t.device.type)
            rho, f1, unresolved = _heldout.judge_previous(
                self.state, glob, self.param_groups, engine, self.damping_rule, f0, low,
                self.resolve_loss,
            )  # fmt: skip
        k = len(ds)
        grad_dot_dir = math.fsum(values[2 : 2 + k])
        sq_norm = math.fsum(v * v for v in values[2 + k : 2 + 2 * k])
        state_finite = all(math.isfinite(v) for v in values[2 + 2 * k :])
        if not (math.isfinite(grad_dot_dir) and math.isfinite(sq_norm) and state_finite):
            raise _Rejected("nonfinite_gradient", f0, {"grad_norm": grad_norm})
        extra = dict(
            curvature=q, grad_dot_dir=grad_dot_dir, direction_sq_norm=sq_norm, grad_norm=grad_norm
        )
        if not math.isfinite(q):
            raise _Rejected("nonfinite_curvature", f0, extra)

        # 4. Proposal: the step size from the damped quadratic model.
        damping_used = glob["damping"]
        amplification = self.amplification * lr_scale if lr_scale != 1.0 else self.amplification
        proposal: Proposal | PlaneProposal
        if plane_values:  # [rules] the plane step (rules.py)
            proposal = _rules.plane_proposal(
                plane_values[2:],
                curvature=q,
                grad_dot_dir=grad_dot_dir,
                sq_norm=sq_norm,
                cross=plane_values[0],
                second=plane_values[1],
                damping=damping_used,
                alpha_max=self.lr_clip,
                amplification=amplification,
                include_damping=self.damping_in_rho,
                nonpositive_curvature=self.nonpositive_curvature,
            )
        else:
            proposal = propose_step(
                grad_dot_dir,
                q,
                damping_used,
                sq_norm,
                alpha_max=self.lr_clip,
                amplification=amplification,
                include_damping=self.damping_in_rho,
                nonpositive_curvature=self.nonpositive_curvature,
            )
        if not proposal.accepted:
            raise _Rejected(proposal.reason, f0, extra)
        if isinstance(proposal, PlaneProposal):
            alpha, momentum = proposal.lr, proposal.momentum
        else:
            alpha, momentum = proposal.alpha, math.nan
        if not (math.isfinite(alpha) and (math.isfinite(momentum) or not plane_values)):
            raise _Rejected("nonfinite_step", f0, extra)
        update: list[Tensor] | None = None
        if plane_values:
            new, update = _rules.plane_step(ps, ds, plane, decays, alpha, momentum)
        else:
            if momentum_rule:  # the first step of the plane rule: the alpha rule, remembered
                update, momentum = list(torch._foreach_mul(ds, -alpha)), 0.0
            new = _moved(ps, ds, decays, alpha)  # written over d
        del ds

        # 5. Trial loss and reduction ratio, on damping-adaptation steps. One host sync for the
        # trial loss and the finiteness of the new parameters (a finite alpha times a finite d
        # can still overflow, or meet inf * 0).
        adapt = self.damping_mode == "adaptive" and step % self.damping_interval == 0
        trial = adapt and not heldout
        new_norms = torch._foreach_norm(new)
        if trial:
            # [rules] the plane step is -alpha d + momentum v2 (the engine may use linearity)
            plane_kw = {"momentum": momentum} if plane_values else {}
            f1_t = engine.trial_loss(names, new, alpha=alpha, decays=decays, **plane_kw)
            f1, *norms = _host([f1_t, *new_norms])
        else:
            norms = _host(list(new_norms))
        norm = sum(norms)
        if not math.isfinite(norm):
            raise _Rejected("nonfinite_step", f0, extra | {"trial_loss": f1})
        if trial and not math.isfinite(f1):
            raise _Rejected("nonfinite_trial_loss", f0, extra | {"trial_loss": f1})

        # 6. Damping and commit. A loss change below the loss's rounding level gives no rho.
        # [loops] The rounding level is that of the least precise of the loss's dtype, the
        # outputs' dtype and the autocast dtype (precision.rounding_dtype): under bfloat16
        # autocast the loss is float32, computed from bfloat16 logits.
        if trial:
            low = rounding_dtype(f0_t.dtype, self._last_outputs.dtype, device_type=f0_t.device.type)
            glob["damping"], rho, unresolved = self.damping_rule.after_trial(
                damping_used, f0, f1, proposal.predicted_change, low, resolve=self.resolve_loss
            )
            glob["unresolved_streak"] = glob["unresolved_streak"] + 1 if unresolved else 0
        elif adapt:  # [heldout] theta_t and M_t wait for the next batch (heldout.py)
            _heldout.remember(self.state, glob, self.param_groups, ps, proposal.predicted_change)
        torch._foreach_copy_(ps, new)
        forget_cast_weights()  # [loops] autocast's cached copies are stale (precision.py)
        for group_ps, group_gs, group, candidate in pending:
            self._commit(group_ps, group_gs, group, candidate)
        if update is not None:  # [rules] the next step's second vector
            _rules.remember_update(self.state, self.param_groups, ps, update)
        glob["step"] = step
        stats = StepStats(
            loss=f0,
            lr=alpha,
            damping=glob["damping"],
            rho=rho,
            accepted=True,
            reason="",
            curvature=q,
            grad_dot_dir=grad_dot_dir,
            direction_sq_norm=sq_norm,
            predicted_change=proposal.predicted_change,
            trial_loss=f1,
            damping_used=damping_used,
            step=step,
            loss_unresolved=unresolved,
            stalled=glob["unresolved_streak"] >= self.stall_patience,
            grad_norm=grad_norm,
            momentum=momentum,
        )
        if unresolved and glob["unresolved_streak"] == self.stall_patience:
            self._stalled(glob)
        return stats

    def _stalled(self, glob: dict[str, Any]) -> None:
        """Say once that the last ``stall_patience`` steps have not changed the loss."""
        glob["stalls"] += 1
        message = (
            f"{type(self).__name__}: the last {self.stall_patience} steps (to step {glob['step']}) "
            "changed the loss by no more than its rounding level: training has stalled (damping "
            f"{glob['damping']:.3g}; see StepStats.loss_unresolved). Check the data and the "
            "learning-rate factor, or use a wider dtype."
        )
        if self.on_stall == "raise":
            raise StallError(message)
        if self.on_stall == "warn":
            # _stalled <- _iteration <- step <- the step wrapper (_step_hooks) <- the caller
            warnings.warn(message, RuntimeWarning, stacklevel=5)

    def __repr__(self) -> str:
        opts = (
            f"loss={self.loss!r}, curvature={self.curvature!r}, damping={self.damping:.3g}, "
            f"damping_mode={self.damping_mode!r}, step_rule={self.step_rule!r}, "
            f"lr_clip={self.lr_clip}, amplification={self.amplification}"
        )
        return f"{type(self).__name__}({opts}, groups={len(self.param_groups)})"


class AdamQLR(QuadraticModelOptimizer):
    """Adam's direction with K-FAC's step-size and Levenberg-Marquardt damping heuristics.

    The defaults are the paper's untuned setting (Fisher curvature, initial damping 1e-3,
    decrease/increase factors 0.5/2, damping bounded below by 1e-8, adapted every step, no step-size
    clipping, Adam's betas (0.9, 0.999) and eps 1e-8). The direction is Adam's update at learning
    rate 1, ``d = m_hat / (sqrt(v_hat) + eps)``, and the step size is chosen each step by the damped
    quadratic model along ``d``: ``theta <- theta - alpha d`` with
    ``alpha = g^T d / (d^T C d + lambda ||d||^2)``.

    The options are grouped as the paper groups them: the damping rule is one object
    (``damping``), the step-size rule with its clip and amplification another (``step_size``),
    Adam's constants are ``betas`` and ``eps``. The switches under *Advanced* are keyword-only and
    rarely changed.

    Example::

        from adamqlr import AdamQLR, AdaptiveDamping, LevenbergMarquardt, StepSize

        opt = AdamQLR(model, loss="cross_entropy")          # the paper's untuned setting
        tuned = AdamQLR(
            model,
            damping=AdaptiveDamping(1.0, LevenbergMarquardt.tied(0.95)),  # increase 1/0.95
            step_size=StepSize(clip=0.1),
        )
        for inputs, targets in loader:
            stats = opt.step(inputs, targets)   # no zero_grad/backward: the step does it
            print(stats.loss, stats.lr, stats.damping, stats.rho)

    Args:
        model: The network. ``model(inputs)`` must return the outputs the loss expects.
        loss: ``"cross_entropy"`` (mean over examples and token positions, like
            ``torch.nn.functional.cross_entropy``; positions whose target is ``ignore_index`` are
            skipped), ``"squared_error"``/``"mse"`` (mean over examples of half the squared error,
            summed over output dimensions), a :class:`adamqlr.losses.Loss`, a ``torch.nn`` loss
            module (``nn.MSELoss()``, ``nn.CrossEntropyLoss()``, ``nn.HuberLoss()``, ...) or a
            function ``loss(outputs, targets) -> 0-d tensor``. Modules and functions get their
            output-space Hessian by double backward (exact); ``nn.MSELoss`` and
            ``nn.CrossEntropyLoss`` with closed forms keep them (:func:`adamqlr.losses.get_loss`).
        curvature: ``"fisher"`` (the generalised Gauss-Newton matrix, equal to the Fisher for these
            losses; one forward-mode JVP) or ``"hessian"`` (forward-over-reverse).
        damping: The damping rule (:mod:`adamqlr.rules`).
            :class:`~adamqlr.rules.AdaptiveDamping` ``(initial, rule, interval, in_rho)``: the
            paper's -- ``lambda`` starts at ``initial`` (``lambda_0``) and the
            :class:`~adamqlr.heuristics.LevenbergMarquardt` ``rule`` multiplies it by
            ``decrease`` when ``rho > 3/4`` and by ``increase`` when ``rho < 1/4``, then clips it
            to ``[lower, upper]``, every ``interval`` steps (each costs a trial forward pass);
            ``in_rho`` (default ``None``: yes, as in the paper's code) says whether the damping
            enters rho's predicted change; ``LevenbergMarquardt.tied(decrease)`` ties
            ``increase = 1 / decrease``. The default,
            ``AdaptiveDamping()``, is ``lambda_0 = 1e-3``, factors 0.5/2, bounds
            ``(1e-8, DEFAULT_MAX_DAMPING)``: the paper bounds lambda only from below, and the
            upper bound :data:`adamqlr.heuristics.DEFAULT_MAX_DAMPING` (1e8) keeps a long run of
            rejected steps from driving lambda to infinity, where the step size is zero (a rule
            built without ``upper`` is the paper's exact one; the experiment runner uses it).
            :class:`~adamqlr.rules.FixedDamping` ``(value)``: ``lambda`` stays ``value``, also
            after a rejected step; no trial loss, no rho, so no extra forward pass.
            ``None``: no damping at all (lambda = 0, no trial loss, no rho).
        step_size: The step-size rule, :class:`~adamqlr.rules.StepSize`
            ``(rule, clip, amplification)``. ``rule``: ``"alpha"`` (the paper's,
            ``theta <- theta - alpha d``, the default) or ``"alpha-momentum"`` (K-FAC's joint
            learning rate and momentum on this direction: ``theta <- theta + a v1 + b v2`` with
            ``v1 = -d`` and ``v2`` the previous update, ``(a, b)`` minimising the damped quadratic
            model on their plane; the first step is the ``"alpha"`` rule's; ``StepStats.lr`` is
            ``a``, ``StepStats.momentum`` is ``b``; the plane costs a second curvature product
            per step). ``clip``: optional symmetric clip ``alpha_max`` on the step size (on ``a``
            with ``"alpha-momentum"``; ``b`` is then chosen again by the model with ``a`` held at
            the clip). ``amplification``: factor ``k`` on the step size after clipping (on both
            coefficients with ``"alpha-momentum"``). The default ``StepSize()`` is the paper's
            untuned rule: ``"alpha"``, no clip, ``k = 1``.
        betas: Adam's ``(beta1, beta2)``, each in [0, 1). With ``eps``, a parameter group's
            option (as in ``torch.optim.Adam``), so they stay two arguments.
        rho_data: Where rho's actual loss change is measured: ``"same"`` (the paper's rule, the
            default: on the step's own mini-batch, by the trial forward pass) or ``"next"`` (on
            the next step's mini-batch, data the step was not fitted to:
            ``rho_t = (L_{t+1}(theta_{t+1}) - L_{t+1}(theta_t)) / M_t``, which then sets the
            damping of step ``t+1``; the same number of forward passes, one parameter-sized
            buffer more; :mod:`adamqlr.heldout` says why, what it costs and what to expect).
            ``"next"`` needs adaptive damping.
        eps: Adam's epsilon (> 0), added outside the square root.
        weight_decay: Decoupled weight decay ``w`` in [0, 1): ``theta <- theta - alpha d - w theta``
            (absolute, not scaled by the step size, as in the paper's code; scaled by the group's
            ``lr``, see below).
        params: The parameters to optimise (default: all of ``model``'s), or parameter groups
            (dicts) with their own ``lr``, ``betas``, ``eps`` and ``weight_decay``. More groups
            can be added later with :meth:`add_param_group`.

    Advanced:
        max_grad_norm: If given (> 0), the gradient is clipped to this total norm inside the
            step, with the rule of ``torch.nn.utils.clip_grad_norm_``, before Adam's moments and
            the step size see it (``StepStats.grad_norm`` is the norm before clipping).
            ``clip_grad_norm_`` called before :meth:`step` has no effect, because the step
            computes the gradient itself.
        nonpositive_curvature: ``"reject"`` (default: when ``q + lambda ||d||^2 <= 0``, no step is
            taken and lambda jumps to ``omega_inc * max(lambda, -q/||d||^2)``) or ``"absolute"``
            (divide by its absolute value, the saddle-free choice).
        on_nonfinite: ``"skip"`` (reject the step with a warning) or ``"raise"``.
        on_stall: What to do when ``stall_patience`` damping-adaptation steps in a row changed
            the loss by no more than its rounding level (``StepStats.stalled``): ``"warn"`` (one
            ``RuntimeWarning`` per stall), ``"raise"`` (:class:`StallError`, after the step) or
            ``"ignore"`` (the flag only).
        stall_patience: How many such steps in a row make a stall (an int >= 1).
        resolve_loss: Compute no reduction ratio from a loss change within the loss's rounding
            level (the default; see :meth:`step`). ``False`` keeps the paper's rule, a ratio from
            any loss difference, however small: the book's experiments run with it, so that they
            run the paper's algorithm exactly.
        ignore_index: Target value skipped by the cross-entropy loss.
        output: For a model that returns a dict, tuple or object: which tensor the loss
            compares -- a key (``"logits"``), an index (``0``) or a callable
            (``lambda out: out["logits"]``); see :mod:`adamqlr.outputs`. ``None``: the model
            returns a tensor.
        distributed: Average the step over the ranks of a ``torch.distributed`` process group,
            so that every rank takes the same step on its shard of the batch: ``"auto"`` (when
            a process group with more than one rank is initialised), ``True``, ``False`` or a
            ``ProcessGroup``. The gradient, the loss, the curvature and the trial loss are
            averaged (:mod:`adamqlr.distributed`); a ``DistributedDataParallel`` wrapper is
            unwrapped and its own gradient averaging bypassed, so a plain module works too.
            Every rank must call ``step`` equally often; pass ``False`` when the ranks train
            different models (e.g. independent runs in one process group).

    Flat keywords: the options that ``damping`` and ``step_size`` group are also accepted one by
    one, as before they were grouped (the grouped form is preferred; the experiment registry and
    the tuner keep their flat configuration keys and build the objects from them with
    :func:`adamqlr.rules.grouped`). ``initial_damping`` (``lambda_0``, >= 0; the value of a
    fixed damping), ``damping_decrease`` and ``damping_increase`` (the rule's factors),
    ``damping_bounds`` (``(lower, upper)``), ``damping_interval`` and ``damping_in_rho`` build
    the ``damping``; ``damping_mode`` (``"adaptive"``, ``"fixed"`` or ``"none"``; ``None``:
    ``"none"`` if ``undamped`` else ``"adaptive"``) and the legacy ``undamped`` (``True`` is
    ``damping_mode="none"``) choose its kind. ``step_rule``, ``lr_clip`` and ``amplification``
    build the ``step_size``. Given beside an explicit ``damping`` or ``step_size`` object, a
    flat keyword must agree with it (a ``ValueError`` names both otherwise).

    Parameter groups follow ``torch.optim``'s conventions. Each has an ``lr`` (default 1.0), a
    factor on the step size chosen by the quadratic model, so torch's learning-rate schedulers
    (``StepLR``, ``LambdaLR``, ``CosineAnnealingLR``, ...) scale the steps: with one group (or
    every group at the same ``lr``) the step is ``theta <- theta - lr (alpha d + w theta)``, and
    ``StepStats.lr`` is the applied ``lr * alpha`` (``alpha`` after ``lr_clip`` and
    ``amplification``). The predicted change, and so rho, is that of the step actually taken.
    Groups at different ``lr`` scale their part of the direction by ``lr / max(lr)`` before the
    model chooses ``alpha``, which is then multiplied by the largest ``lr``. There is no ``lr``
    argument to the constructor: ``lr`` is not a learning rate to tune, and 1.0 is the paper's
    algorithm.

    Raises:
        ValueError: At construction, naming the argument and value, for any invalid setting.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss | nn.Module | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        curvature: str = "fisher",
        *,
        damping: Damping | None = DEFAULT_DAMPING,
        step_size: StepSize = DEFAULT_STEP_SIZE,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        rho_data: str = "same",
        weight_decay: float = 0.0,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None = None,
        max_grad_norm: float | None = None,
        nonpositive_curvature: str = "reject",
        on_nonfinite: str = "skip",
        on_stall: str = "warn",
        stall_patience: int = 20,
        resolve_loss: bool = True,
        ignore_index: int = -100,
        output: OutputSelector = None,
        distributed: bool | str | Any = "auto",
        **flat: Unpack[FlatOptions],
    ) -> None:
        super().__init__(
            model,
            loss,
            curvature,
            damping=damping,
            step_size=step_size,
            rho_data=rho_data,
            weight_decay=weight_decay,
            params=params,
            max_grad_norm=max_grad_norm,
            nonpositive_curvature=nonpositive_curvature,
            on_nonfinite=on_nonfinite,
            on_stall=on_stall,
            stall_patience=stall_patience,
            resolve_loss=resolve_loss,
            ignore_index=ignore_index,
            output=output,
            distributed=distributed,
            group_defaults=dict(betas=betas, eps=eps),
            **flat,
        )

    def _validate_group_values(self, group: dict[str, Any]) -> None:
        super()._validate_group_values(group)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"invalid betas: {betas!r} (expected a pair (beta1, beta2))")
        for i, b in enumerate(betas):
            b = _real(f"betas[{i}]", b)
            _check(f"betas[{i}]", b, 0.0 <= b < 1.0, "in [0, 1)")
        eps = _real("eps", group["eps"])
        _check("eps", eps, 0.0 < eps < math.inf, "> 0 and finite")

    #: Elements per chunk of the direction's temporary (the denominator), so that it never takes
    #: more than a few MB beside the parameters, the moments and the direction.
    _CHUNK = 1 << 20

    def _direction(
        self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], Any]:
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        states = [self.state.get(p) for p in params]  # no empty entry on a rejected step
        # per parameter: a frozen layer keeps its own count
        steps = [st["step"] + 1 if st else 1 for st in states]
        # The moments this step commits if accepted, computed once (algorithm.adam_moments):
        # m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
        ms = [
            st["exp_avg"] if st else torch.zeros_like(p)
            for st, p in zip(states, params, strict=True)
        ]
        vs = [
            st["exp_avg_sq"] if st else torch.zeros_like(p)
            for st, p in zip(states, params, strict=True)
        ]
        # [loops] On the CPU, a Python number operand costs a conversion per tensor (see
        # _cpu_scalar); a 0-d tensor of the same value and dtype gives the same numbers. (A list
        # of them: the one-tensor overload of _foreach_add_ reads it back with .item().)
        dtype = _cpu_scalar_dtype(ms, vs)
        m = torch._foreach_lerp(ms, grads, 1.0 - beta1)
        v = torch._foreach_mul(vs, beta2 if dtype is None else cpu_number(beta2, dtype))
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
        # A non-finite m makes d non-finite, which the step catches; a v that overflows to inf
        # makes d zero instead, so v is the one to check: v >= 0, so its largest entry is finite
        # exactly when every entry is (the maximum propagates NaN). Half the cost of a norm, and
        # no false alarm from a finite v whose norm overflows. (Empty tensors have no maximum.)
        nonempty = [t for t in v if t.numel()]
        checks = list(torch._foreach_max(nonempty)) if nonempty else []
        # d = m_hat / (sqrt(v_hat) + eps), m_hat = m / c1, v_hat = v / c2, c_i = 1 - beta_i^t,
        # computed as (m / (sqrt(v) + eps sqrt(c2))) * (sqrt(c2) / c1): the same number up to
        # rounding, in fewer passes
        root_c2 = [math.sqrt(1.0 - beta2**t) for t in steps]
        # the numbers added to sqrt(v) and multiplying the quotient, per tensor
        shifts: list[Any] = [eps * r for r in root_c2]
        scales: list[Any] = [r / (1.0 - beta1**t) for r, t in zip(root_c2, steps, strict=True)]
        if dtype is not None and all(t == steps[0] for t in steps):  # one count: one number each
            shifts = [_cpu_scalar(shifts[0], dtype)] * len(params)
            scales = [_cpu_scalar(scales[0], dtype)] * len(params)
        directions: list[Tensor] = []
        for chunk in _chunks(params, self._CHUNK):
            denominator = torch._foreach_sqrt([v[i] for i in chunk])
            torch._foreach_add_(denominator, [shifts[i] for i in chunk])
            d = torch._foreach_div([m[i] for i in chunk], denominator)
            del denominator
            torch._foreach_mul_(d, [scales[i] for i in chunk])
            directions += d
        return directions, checks, (steps, m, v, states)

    def _commit(
        self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any], candidate: Any
    ) -> None:
        steps, ms, vs, states = candidate
        for p, st, t, m, v in zip(params, states, steps, ms, vs, strict=True):
            if not st:  # a first step: the entry is made now (the looked-up one is reused)
                st = self.state[p]
            st["step"] = t
            st["exp_avg"] = m
            st["exp_avg_sq"] = v


def _host(tensors: list[Tensor]) -> list[float]:
    """Return the values of 0-d tensors as Python floats, in one transfer from the device.

    [loops] On the CPU there is no transfer to batch: each value is read where it is
    (``.item()``, the same float as ``tolist`` gives), which saves the ``stack`` of a dozen
    tensors (about 10 us a step on a small model).
    """
    if all(t.is_cpu for t in tensors):
        return [t.item() for t in tensors]
    flat = [t if t.dim() == 0 else t.reshape(()) for t in tensors]
    dtype = flat[0].dtype
    if all(t.dtype == dtype for t in flat):
        return torch.stack(flat).tolist()  # exact: every float dtype converts exactly to float64
    return torch.stack([t.to(torch.float64) for t in flat]).tolist()


#: Where :func:`_cpu_scalar` makes its tensors (explicitly: a default device set by the caller
#: must not apply).
_CPU = torch.device("cpu")


def _cpu_scalar_dtype(*lists: list[Tensor]) -> torch.dtype | None:
    """Return the tensors' dtype if they are all CPU float32 or all CPU float64, else ``None``.

    For those, :func:`_cpu_scalar` may pass a Python number to an elementwise operation as a 0-d
    tensor instead.
    """
    dtype = lists[0][0].dtype if lists and lists[0] else None
    if dtype is not torch.float32 and dtype is not torch.float64:
        return None
    for tensors in lists:
        for t in tensors:
            if t.dtype is not dtype or not t.is_cpu:
                return None
    return dtype


def _cpu_scalar(value: float, dtype: torch.dtype | None) -> float | Tensor:
    """Return ``value`` as a 0-d CPU tensor of ``dtype`` (``None``: the number itself).

    [loops] On the CPU, ``tensor * 0.9`` converts the number to a tensor and then to the tensor's
    dtype (``aten::to``, ``_to_copy``, ``copy_``: about 5 us per tensor, so 20 us for a
    four-tensor ``_foreach`` operation), while ``tensor * t`` with a 0-d tensor ``t`` of the same
    dtype does not. The numbers are the same: the CPU kernels compute float32 and float64
    tensors' operations with a number in the tensor's own dtype (the number rounded to it, as
    ``torch.full`` rounds it). Only for float32 and float64 (:func:`_cpu_scalar_dtype`): the
    16-bit dtypes compute in float32, so a 16-bit 0-d tensor would round the number further.
    """
    return value if dtype is None else torch.full((), value, dtype=dtype, device=_CPU)


def _moved(
    params: list[Tensor], ds: list[Tensor], decays: list[float], alpha: float
) -> list[Tensor]:
    """Return ``(1 - w) theta - alpha d`` per parameter, written over ``d`` (no new buffer)."""
    for p, d, w in zip(params, ds, decays, strict=True):
        if w:
            d.mul_(-alpha).add_(p, alpha=1.0 - w)
        else:
            torch.add(p, d, alpha=-alpha, out=d)  # one pass: theta - alpha d, into d
    return ds


def _clip_gradients(grads: list[Tensor], max_norm: float) -> Tensor:
    """Scale ``grads`` in place to total norm at most ``max_norm``; return the norm before.

    The rule of ``torch.nn.utils.clip_grad_norm_`` (factor ``max_norm / (norm + 1e-6)``, capped at
    1), without a host sync. A non-finite norm makes the gradients non-finite, so the step rejects
    them as it would the unclipped ones.
    """
    norms = torch._foreach_norm(grads)
    wide = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    device = grads[0].device
    total = torch.linalg.vector_norm(torch.stack([n.to(device, wide) for n in norms]))
    factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
    by_device: dict[torch.device, list[Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for dev, group in by_device.items():
        torch._foreach_mul_(group, factor.to(dev))
    return total


def _norms(tensors: list[Tensor], wide_enough: bool | None = None) -> list[Tensor]:
    """Return the 2-norm of each tensor, accumulated in float32 or wider.

    ``wide_enough``: as for :func:`_dots`.
    """
    if wide_enough if wide_enough is not None else _all_wide(tensors):
        return list(torch._foreach_norm(tensors))
    # [loops] 16-bit parameters (precision.py); float64 if any parameter is float64
    widest = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return list(torch._foreach_norm(tensors, 2, dtype=widest))


def _chunks(tensors: list[Tensor], limit: int) -> Iterator[list[int]]:
    """Yield index lists of consecutive tensors with at most ``limit`` elements in all.

    A tensor larger than ``limit`` makes a chunk of its own.
    """
    chunk: list[int] = []
    size = 0
    for i, t in enumerate(tensors):
        if chunk and size + t.numel() > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(i)
        size += t.numel()
    if chunk:
        yield chunk


class SGDQLR(QuadraticModelOptimizer):
    """The same heuristics on the plain gradient direction: ``d = g``.

    ``alpha = ||g||^2 / (g^T C g + lambda ||g||^2)``. Exists to show that the heuristics do not
    depend on Adam; it takes every argument of :class:`AdamQLR` except ``betas`` and ``eps``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss | nn.Module | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        curvature: str = "fisher",
        *,
        damping: Damping | None = DEFAULT_DAMPING,
        step_size: StepSize = DEFAULT_STEP_SIZE,
        rho_data: str = "same",
        weight_decay: float = 0.0,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None = None,
        max_grad_norm: float | None = None,
        nonpositive_curvature: str = "reject",
        on_nonfinite: str = "skip",
        on_stall: str = "warn",
        stall_patience: int = 20,
        resolve_loss: bool = True,
        ignore_index: int = -100,
        output: OutputSelector = None,
        distributed: bool | str | Any = "auto",
        **flat: Unpack[FlatOptions],
    ) -> None:
        super().__init__(
            model,
            loss,
            curvature,
            damping=damping,
            step_size=step_size,
            rho_data=rho_data,
            weight_decay=weight_decay,
            params=params,
            max_grad_norm=max_grad_norm,
            nonpositive_curvature=nonpositive_curvature,
            on_nonfinite=on_nonfinite,
            on_stall=on_stall,
            stall_patience=stall_patience,
            resolve_loss=resolve_loss,
            ignore_index=ignore_index,
            output=output,
            distributed=distributed,
            **flat,
        )

    def _direction(
        self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], Any]:
        # a copy: the step overwrites d with the new parameters, and g is the user's .grad
        return list(torch._foreach_mul(grads, 1.0)), [], None
