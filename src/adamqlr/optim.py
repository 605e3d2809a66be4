"""AdamQLR and SGDQLR: a direction plus K-FAC's step-size and damping heuristics.

:class:`QuadraticModelOptimizer` holds everything that does not depend on the direction: the
gradient pass, the curvature along the direction, the step size from the damped quadratic model,
the trial loss, the reduction ratio and the Levenberg-Marquardt damping (all from
:mod:`adamqlr.heuristics`), and the guards against non-finite numbers. A subclass supplies only the
direction: :class:`AdamQLR` Adam's bias-corrected ``m_hat / (sqrt(v_hat) + eps)``, :class:`SGDQLR`
the gradient itself.

One call of :meth:`QuadraticModelOptimizer.step` on a mini-batch ``(inputs, targets)`` costs one
forward and backward pass (the gradient), then the curvature along the direction on the same
batch, and, on steps that adapt the damping, one more forward pass for the trial loss. With
``"fisher"`` the curvature is one forward-mode JVP: for a sequential MLP that
:func:`adamqlr.curvature.layerwise_plan` covers, the gradient pass itself runs layer by layer
and keeps its activations, so the JVP computes tangents only
(:func:`adamqlr.curvature.layerwise_tangent`); for any other model,
:func:`adamqlr.curvature.ggn_quadratic` (forward-mode autograd). With ``"hessian"`` the gradient
pass keeps its graph (``create_graph=True``) and ``H d`` is one more backward pass through it
(reverse over reverse): no second forward pass, the same batch-norm statistics and dropout masks
by construction, at the price of holding the gradient's graph until then. Models whose operations
have no double backward (e.g. cuDNN RNNs) cannot use ``"hessian"``.

Everything that touches every parameter (Adam's moments, the sums, the update) uses torch's
``_foreach`` kernels, and the host waits for the device three times per step: for the loss and
the sums, for the curvature, and for the trial loss.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from adamqlr._random import replayed_rng as _replayed_rng
from adamqlr._state import OptimiserWideState
from adamqlr._validation import check as _check
from adamqlr._validation import real as _real
from adamqlr.curvature import (
    CURVATURES,
    layerwise_forward,
    layerwise_plan,
    layerwise_tangent,
    loss_at,
    quadratic_form,
)
from adamqlr.heuristics import LevenbergMarquardt, propose_step, reduction_ratio
from adamqlr.losses import Loss, get_loss

__all__ = ["AdamQLR", "NonFiniteStepError", "QuadraticModelOptimizer", "SGDQLR", "StepStats"]

_GLOBAL = "qlr"  # key of the optimiser-wide state (damping, step counters) in ``self.state``


class NonFiniteStepError(FloatingPointError):
    """Raised by a step with ``on_nonfinite="raise"`` when a non-finite number appears."""


@dataclass(frozen=True)
class StepStats:
    """What one optimiser step did.

    Attributes:
        loss: Mini-batch loss *before* the step.
        lr: Step size ``alpha`` applied (0.0 when the step was rejected).
        damping: Damping ``lambda`` after this step's update (the value the next step uses).
        rho: Reduction ratio (NaN when not computed on this step).
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
        loss: str | Loss = "cross_entropy",
        curvature: str = "fisher",
        *,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | None = None,
        initial_damping: float = 1e-3,
        damping_decrease: float = 0.5,
        damping_increase: float = 2.0,
        damping_bounds: tuple[float, float] = (1e-8, math.inf),
        damping_interval: int = 1,
        damping_in_rho: bool = True,
        lr_clip: float | None = None,
        amplification: float = 1.0,
        undamped: bool = False,
        weight_decay: float = 0.0,
        nonpositive_curvature: str = "reject",
        on_nonfinite: str = "skip",
        ignore_index: int = -100,
        group_defaults: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"invalid model: {model!r} (expected a torch.nn.Module)")
        if isinstance(loss, str) and loss == "cross_entropy":
            loss_obj = get_loss(loss, ignore_index=ignore_index)
        else:
            loss_obj = get_loss(loss)
        _check("curvature", curvature, curvature in CURVATURES, f"one of {CURVATURES}")
        initial_damping = _real("initial_damping", initial_damping)
        _check("initial_damping", initial_damping, 0 <= initial_damping < math.inf, ">= 0, finite")
        if not isinstance(damping_bounds, (tuple, list)) or len(damping_bounds) != 2:
            raise ValueError(
                f"invalid damping_bounds: {damping_bounds!r} (expected (lower, upper))"
            )
        lower = _real("damping_bounds lower", damping_bounds[0])
        upper = _real("damping_bounds upper", damping_bounds[1])
        lm = LevenbergMarquardt(
            decrease=_real("damping_decrease", damping_decrease),
            increase=_real("damping_increase", damping_increase),
            lower=lower,
            upper=upper,
        )
        if not undamped:
            _check(
                "initial_damping",
                initial_damping,
                lower <= initial_damping <= upper,
                f"within damping_bounds {tuple(damping_bounds)}",
            )
        _check(
            "damping_interval",
            damping_interval,
            isinstance(damping_interval, int)
            and not isinstance(damping_interval, bool)
            and damping_interval >= 1,
            "an int >= 1",
        )
        _check("damping_in_rho", damping_in_rho, isinstance(damping_in_rho, bool), "a bool")
        _check("undamped", undamped, isinstance(undamped, bool), "a bool")
        if lr_clip is not None:
            lr_clip = _real("lr_clip", lr_clip)
            _check("lr_clip", lr_clip, 0 < lr_clip < math.inf, "> 0 and finite, or None")
        amplification = _real("amplification", amplification)
        _check("amplification", amplification, 0 < amplification < math.inf, "> 0 and finite")
        weight_decay = _real("weight_decay", weight_decay)
        _check("weight_decay", weight_decay, 0 <= weight_decay < 1, "in [0, 1)")
        _check(
            "nonpositive_curvature",
            nonpositive_curvature,
            nonpositive_curvature in ("reject", "absolute"),
            "'reject' or 'absolute'",
        )
        _check("on_nonfinite", on_nonfinite, on_nonfinite in ("skip", "raise"), "'skip' or 'raise'")

        names = {id(p): n for n, p in model.named_parameters()}
        source = model.parameters() if params is None else params
        if isinstance(source, Tensor):
            raise ValueError("invalid params: a single Tensor (expected an iterable of tensors)")
        groups = list(source)
        if not groups:
            raise ValueError("invalid params: empty (the optimiser needs at least one parameter)")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        seen: set[int] = set()
        for group in groups:
            if not isinstance(group, dict) or "params" not in group:
                raise ValueError(
                    f"invalid params: group {group!r} (expected a dict with a 'params' entry)"
                )
            plist = group["params"]
            plist = [plist] if isinstance(plist, Tensor) else list(plist)
            if not plist:
                raise ValueError("invalid params: a parameter group with no parameters")
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
            group["params"] = plist
            group["param_names"] = [names[id(p)] for p in plist]

        defaults = dict(weight_decay=weight_decay, **(group_defaults or {}))
        super().__init__(groups, defaults)
        for group in self.param_groups:
            self._validate_group(group)

        self.model = model
        self.loss = loss_obj
        self.curvature = curvature
        self.damping_rule = lm
        self.initial_damping = 0.0 if undamped else initial_damping
        self.damping_interval = damping_interval
        self.damping_in_rho = damping_in_rho
        self.lr_clip = lr_clip
        self.amplification = amplification
        self.undamped = undamped
        self.nonpositive_curvature = nonpositive_curvature
        self.on_nonfinite = on_nonfinite
        self.state[_GLOBAL] = self._fresh_global_state()

    # ----------------------------------------------------------------------------------- hooks
    def _validate_group(self, group: dict[str, Any]) -> None:
        unknown = sorted(set(group) - {"params", "param_names"} - set(self.defaults))
        if unknown:
            raise ValueError(
                f"invalid parameter group option(s) {unknown} (a group accepts "
                f"{sorted(self.defaults)}"
                + (f"; {type(self).__name__} has no learning rate)" if "lr" in unknown else ")")
            )
        wd = _real("weight_decay", group["weight_decay"])
        _check("weight_decay", wd, 0 <= wd < 1, "in [0, 1)")

    def _direction(
        self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Return the direction for each parameter, and 0-d tensors that must all be finite.

        Must not modify ``self.state``: the step may still be rejected. The second list holds
        checks on the state :meth:`_commit` would write (e.g. the norms of Adam's new second
        moments), so that an overflow there rejects the step before anything is written.
        """
        raise NotImplementedError

    def _commit(self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> None:
        """Write the per-parameter state of an accepted step (in place).

        Must produce exactly the state that :meth:`_direction` computed the direction from. The
        base class keeps no state.
        """

    # ------------------------------------------------------------------------------ state
    def _fresh_global_state(self) -> dict[str, Any]:
        return {
            "step": 0,
            "damping": self.initial_damping,
            "rejected_steps": 0,
            "nonfinite_steps": 0,
            "calls": 0,
        }

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer keeps only defaults, state and param groups; here the model, the loss
        # and every setting belong to the optimiser too, or a copy could not step. Hooks are not
        # carried over, as in torch.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_optimizer_")}

    @property
    def damping(self) -> float:
        """The current damping ``lambda`` (used by the next step)."""
        return float(self.state[_GLOBAL]["damping"])

    # ------------------------------------------------------------------------------- step
    def _named_params(self) -> list[tuple[str, Tensor, dict[str, Any]]]:
        return [
            (name, p, group)
            for group in self.param_groups
            for name, p in zip(group["param_names"], group["params"], strict=True)
        ]

    def _rejected(self, reason: str, loss: float, **extra: float) -> StepStats:
        glob = self.state[_GLOBAL]
        nonfinite = reason.startswith("nonfinite")
        if nonfinite and self.on_nonfinite == "raise":
            raise NonFiniteStepError(
                f"{type(self).__name__} step {glob['step'] + 1}: {reason.replace('_', ' ')}"
            )
        damping_used = glob["damping"]
        if not self.undamped:
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
            stacklevel=4,  # _rejected <- step <- torch's step wrapper <- the caller
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
        )

    @staticmethod
    def _hessian_from_graph(grads: list[Tensor], params: list[Tensor], ds: list[Tensor]) -> float:
        """Return ``d^T H d`` by differentiating ``g . d`` once more through the gradient's graph.

        Exact (the same ``H d`` as forward-over-reverse, up to rounding), evaluated on the
        gradient pass's own forward: the same batch-norm statistics and dropout masks, and no
        extra forward pass. Each parameter's piece of ``H d`` is reduced to ``d_i . (H d)_i`` as
        soon as it arrives and then dropped, so ``H d`` never exists whole. The parameters'
        ``.grad`` (the gradient ``g``) is set aside meanwhile and put back.
        """
        saved = [p.grad for p in params]
        terms: dict[int, Tensor] = {}  # summed in parameter order, whatever the arrival order

        def reduce(p: Tensor, d: Tensor, i: int) -> None:
            if p.grad is not None:
                terms[i] = torch.dot(d.reshape(-1), p.grad.reshape(-1)).to(torch.float64)
                p.grad = None

        # a gradient with no graph is constant in the parameters: its part of H d is zero
        live = [(g, d) for g, d in zip(grads, ds, strict=True) if g.requires_grad]
        handles = []
        try:
            for i, (p, d) in enumerate(zip(params, ds, strict=True)):
                p.grad = None
                handles.append(
                    p.register_post_accumulate_grad_hook(lambda p, d=d, i=i: reduce(p, d, i))
                )
            if live:
                torch.autograd.backward(
                    [g for g, _ in live], grad_tensors=[d for _, d in live], inputs=params
                )
        finally:
            for h in handles:
                h.remove()
            for p, g in zip(params, saved, strict=True):
                p.grad = g
        return float(torch.stack([terms[i] for i in sorted(terms)]).sum()) if terms else 0.0

    def _check_batch(self, inputs: object, targets: Tensor) -> None:
        if not isinstance(targets, Tensor):
            raise ValueError(f"invalid targets: {type(targets).__name__} (expected a Tensor)")

    def step(self, inputs: Any, targets: Tensor) -> StepStats:  # type: ignore[override]
        """Take one full step on the mini-batch ``(inputs, targets)``.

        1. Forward and backward pass: loss ``f0`` and gradient ``g`` (this pass, an ordinary call
           of the module, is the only one that updates batch-norm running statistics).
        2. Direction ``d`` (from the subclass) and curvature ``q = d^T C d`` on the same batch
           (the Hessian's through the gradient pass's own graph).
        3. Step size ``alpha = g^T d / (q + lambda ||d||^2)``, optionally clipped and amplified;
           ``theta <- theta - alpha d - w theta``.
        4. On damping-adaptation steps: trial loss ``f1`` on the same batch, reduction ratio
           ``rho = (f1 - f0) / (M(alpha) - M(0))`` and the Levenberg-Marquardt update of lambda.

        A non-finite loss, gradient, curvature or trial loss never reaches the parameters: the
        step is rejected (parameters and direction state unchanged), the damping is increased, a
        ``RuntimeWarning`` is issued, and ``StepStats.accepted`` is false (or
        :class:`NonFiniteStepError` is raised with ``on_nonfinite="raise"``). A non-positive
        damped curvature is handled as ``nonpositive_curvature`` says.

        Random layers (dropout) see the same random numbers in the curvature and trial passes as
        in the gradient pass (the random state is replayed), so all of them evaluate the same
        function; afterwards the global random state is as the gradient pass left it.

        Args:
            inputs: The mini-batch inputs, passed to ``model(inputs)``.
            targets: The mini-batch targets for the loss.

        Returns:
            The :class:`StepStats` of this step.
        """
        self._check_batch(inputs, targets)
        glob = self.state[_GLOBAL]
        glob["calls"] += 1
        named = self._named_params()
        devices = {p.device for _, p, _ in named}
        cpu_rng = torch.get_rng_state()
        cuda_rng = (
            torch.cuda.get_rng_state_all()
            if any(d.type == "cuda" for d in devices) and torch.cuda.is_available()
            else None
        )

        # 1. Loss and gradient.
        for _, p, _ in named:
            p.grad = None
        # With the Hessian, the gradient keeps its graph: H d is then one more backward pass
        # through it (reverse over reverse), with no second forward pass at all.
        graph_grads: dict[Tensor, Tensor] = {}
        # With the Fisher and a network the layer-wise JVP covers, the gradient pass runs layer
        # by layer and keeps what the JVP needs: J d then costs only its tangent half.
        plan = None
        if self.curvature == "fisher" and isinstance(inputs, Tensor):
            plan = layerwise_plan(self.model)
        tape = None
        with torch.enable_grad():
            if plan is not None:
                outputs, tape = layerwise_forward(plan, inputs)
            else:
                outputs = self.model(inputs)
            self.loss.check_shapes(outputs, targets)
            loss_t = self.loss.value(outputs, targets)
            if loss_t.requires_grad and self.curvature == "hessian":
                wrt = [p for _, p, _ in named if p.requires_grad]
                found = torch.autograd.grad(loss_t, wrt, create_graph=True, allow_unused=True)
                for p, g in zip(wrt, found, strict=True):
                    if g is not None:
                        graph_grads[p] = g
                        p.grad = g.detach()
            elif loss_t.requires_grad:
                loss_t.backward()
        final = outputs.detach()
        del outputs
        # 2. Direction, group by group; state is committed only if the step is accepted.
        names: list[str] = []
        ps: list[Tensor] = []
        gs: list[Tensor] = []
        ds: list[Tensor] = []
        decays: list[float] = []
        checks: list[Tensor] = []
        live_groups: list[tuple[list[Tensor], list[Tensor], dict[str, Any]]] = []
        step = glob["step"] + 1
        with torch.no_grad():
            for group in self.param_groups:
                live = [
                    (n, p)
                    for n, p in zip(group["param_names"], group["params"], strict=True)
                    if p.grad is not None
                ]
                if not live:
                    continue
                group_ps = [p for _, p in live]
                group_gs = [p.grad.detach() for p in group_ps]
                group_ds, group_checks = self._direction(group_ps, group_gs, group)
                names += [n for n, _ in live]
                ps += group_ps
                gs += group_gs
                ds += group_ds
                checks += group_checks
                decays += [group["weight_decay"]] * len(live)
                live_groups.append((group_ps, group_gs, group))
        if not ds:
            f0 = float(loss_t.detach())
            return StepStats(
                f0,
                0.0,
                self.damping,
                math.nan,
                False,
                "no_gradient",
                math.nan,
                math.nan,
                math.nan,
                math.nan,
                math.nan,
                self.damping,
                glob["step"],
            )

        # One host sync for the loss, g^T d, ||d||^2 and the finiteness of the new direction
        # state (a finite gradient can still overflow Adam's second moment in float32). A
        # non-finite gradient makes d non-finite, so ||d||^2 catches it.
        with torch.no_grad():
            f64 = {"dtype": torch.float64, "device": ds[0].device}
            parts = [loss_t.detach().to(**f64).reshape(1)]
            parts.append(
                torch.stack(
                    [torch.dot(g.reshape(-1), d.reshape(-1)) for g, d in zip(gs, ds, strict=True)]
                ).to(**f64)
            )
            parts.append(torch.stack(torch._foreach_norm(ds)).to(**f64))
            if checks:
                parts.append(torch.stack(checks).to(**f64))
            values = torch.cat(parts).tolist()
        f0 = values[0]
        if not math.isfinite(f0):
            return self._rejected("nonfinite_loss", f0)
        k = len(ds)
        grad_dot_dir = math.fsum(values[1 : 1 + k])
        sq_norm = math.fsum(v * v for v in values[1 + k : 1 + 2 * k])
        state_finite = all(math.isfinite(v) for v in values[1 + 2 * k :])
        if not (math.isfinite(grad_dot_dir) and math.isfinite(sq_norm) and state_finite):
            return self._rejected("nonfinite_gradient", f0)

        params = {n: p.detach() for n, p in zip(names, ps, strict=True)}
        directions = dict(zip(names, ds, strict=True))
        if self.curvature == "hessian":
            q = self._hessian_from_graph([graph_grads[p] for p in ps], ps, ds)
            graph_grads.clear()
        elif tape is not None:
            u = layerwise_tangent(plan, tape, params, directions)  # type: ignore[arg-type]
            tape = None
            with torch.no_grad():
                u = torch.zeros_like(final) if u is None else u
                q = float(self.loss.output_quadratic(final, u, targets))
            del u
        else:
            with _replayed_rng(cpu_rng, cuda_rng):
                q = float(
                    quadratic_form(
                        self.curvature, self.model, params, directions, inputs, targets, self.loss
                    )
                )
        extra = dict(curvature=q, grad_dot_dir=grad_dot_dir, direction_sq_norm=sq_norm)
        if not math.isfinite(q):
            return self._rejected("nonfinite_curvature", f0, **extra)

        # 3. Step size from the damped quadratic model.
        damping_used = glob["damping"]
        proposal = propose_step(
            grad_dot_dir,
            q,
            damping_used,
            sq_norm,
            alpha_max=self.lr_clip,
            amplification=self.amplification,
            include_damping=self.damping_in_rho,
            nonpositive_curvature=self.nonpositive_curvature,
        )
        if not proposal.accepted:
            return self._rejected(proposal.reason, f0, **extra)
        alpha = proposal.alpha
        if not math.isfinite(alpha):
            return self._rejected("nonfinite_step", f0, **extra)

        # The new parameters (1 - w) theta - alpha d, written over d (no longer needed): no
        # parameter-sized buffer beyond Adam's own plus d. They replace the old parameters only
        # once they (and the trial loss) are known to be finite.
        with torch.no_grad():
            new = ds
            for p, d, w in zip(ps, ds, decays, strict=True):
                if w:
                    d.mul_(-alpha).add_(p, alpha=1.0 - w)
                else:
                    torch.add(p, d, alpha=-alpha, out=d)  # one pass: theta - alpha d, into d
            del ds, directions
            # A finite alpha times a finite d can still overflow (or meet inf * 0).
            new_norm = torch.stack(torch._foreach_norm(new)).to(**f64).sum().reshape(1)

        # 4. Trial loss, reduction ratio and damping.
        rho, f1 = math.nan, math.nan
        adapt = not self.undamped and step % self.damping_interval == 0
        if adapt:
            trial = dict(zip(names, new, strict=True))
            with _replayed_rng(cpu_rng, cuda_rng):
                f1_t = loss_at(self.model, trial, inputs, targets, self.loss)
            f1, norm = torch.cat([f1_t.to(**f64).reshape(1), new_norm]).tolist()
        else:
            norm = float(new_norm)
        if not math.isfinite(norm):
            return self._rejected("nonfinite_step", f0, trial_loss=f1, **extra)
        if adapt and not math.isfinite(f1):
            return self._rejected("nonfinite_trial_loss", f0, trial_loss=f1, **extra)
        with torch.no_grad():
            torch._foreach_copy_(ps, new)
        if adapt:
            rho = reduction_ratio(f1 - f0, proposal.predicted_change)
            glob["damping"] = self.damping_rule.update(damping_used, rho)

        with torch.no_grad():
            for group_ps, group_gs, group in live_groups:
                self._commit(group_ps, group_gs, group)
        glob["step"] = step
        return StepStats(
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
        )

    def __repr__(self) -> str:
        opts = (
            f"loss={self.loss!r}, curvature={self.curvature!r}, damping={self.damping:.3g}, "
            f"undamped={self.undamped}, lr_clip={self.lr_clip}, amplification={self.amplification}"
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

    Example::

        opt = AdamQLR(model, loss="cross_entropy")
        for inputs, targets in loader:
            stats = opt.step(inputs, targets)   # no zero_grad/backward: the step does it
            print(stats.loss, stats.lr, stats.damping, stats.rho)

    Args:
        model: The network. ``model(inputs)`` must return the outputs the loss expects.
        loss: ``"cross_entropy"`` (mean over examples and token positions, like
            ``torch.nn.functional.cross_entropy``; positions whose target is ``ignore_index`` are
            skipped), ``"squared_error"``/``"mse"`` (mean over examples of half the squared error,
            summed over output dimensions), or a :class:`adamqlr.losses.Loss`.
        curvature: ``"fisher"`` (the generalised Gauss-Newton matrix, equal to the Fisher for these
            losses; one forward-mode JVP) or ``"hessian"`` (forward-over-reverse).
        params: The parameters to optimise (default: all of ``model``'s), or parameter groups
            (dicts) with their own ``betas``, ``eps`` and ``weight_decay``.
        initial_damping: ``lambda_0`` (>= 0).
        damping_decrease: ``omega_dec`` in (0, 1): lambda is multiplied by it when rho > 3/4.
        damping_increase: ``omega_inc`` > 1: lambda is multiplied by it when rho < 1/4.
        damping_bounds: ``(lower, upper)`` clip on lambda after each update.
        damping_interval: Adapt the damping (and pay the trial forward pass) every this many steps.
        damping_in_rho: Whether the damping term enters rho's predicted change.
        lr_clip: Optional symmetric clip ``alpha_max`` on the step size.
        amplification: Factor ``k`` applied to the step size after clipping.
        undamped: Use no damping at all (lambda = 0, no trial loss, no rho).
        betas: Adam's ``(beta1, beta2)``, each in [0, 1).
        eps: Adam's epsilon (> 0), added outside the square root.
        weight_decay: Decoupled weight decay ``w`` in [0, 1): ``theta <- theta - alpha d - w theta``
            (absolute, not scaled by the step size, as in the paper's code).
        nonpositive_curvature: ``"reject"`` (default: when ``q + lambda ||d||^2 <= 0``, no step is
            taken and lambda jumps to ``omega_inc * max(lambda, -q/||d||^2)``) or ``"absolute"``
            (divide by its absolute value, the saddle-free choice).
        on_nonfinite: ``"skip"`` (reject the step with a warning) or ``"raise"``.
        ignore_index: Target value skipped by the cross-entropy loss.

    Raises:
        ValueError: At construction, naming the argument and value, for any invalid setting.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: str | Loss = "cross_entropy",
        curvature: str = "fisher",
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model, loss, curvature, group_defaults=dict(betas=betas, eps=eps), **kwargs
        )

    def _validate_group(self, group: dict[str, Any]) -> None:
        super()._validate_group(group)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"invalid betas: {betas!r} (expected a pair (beta1, beta2))")
        for i, b in enumerate(betas):
            b = _real(f"betas[{i}]", b)
            _check(f"betas[{i}]", b, 0.0 <= b < 1.0, "in [0, 1)")
        eps = _real("eps", group["eps"])
        _check("eps", eps, 0.0 < eps < math.inf, "> 0 and finite")

    #: Elements per chunk of the direction's temporaries (new moments), so that they never
    #: take more than a few MB beside the parameters, whatever the model's size.
    _CHUNK = 1 << 20

    def _moments(
        self, params: list[Tensor]
    ) -> tuple[list[int], list[Tensor | None], list[Tensor | None]]:
        states = [self.state.get(p, {}) for p in params]  # no empty entry on a rejected step
        return (
            [st.get("step", 0) + 1 for st in states],  # per parameter: a frozen layer keeps its
            [st.get("exp_avg") for st in states],  # own count
            [st.get("exp_avg_sq") for st in states],
        )

    def _direction(
        self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor]]:
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        steps, ms, vs = self._moments(params)
        directions: list[Tensor] = []
        checks: list[Tensor] = []
        for chunk in _chunks(params, self._CHUNK):
            ps = [params[i] for i in chunk]
            gs = [grads[i] for i in chunk]
            # The moments this step would commit (exactly the operations of _commit, out of
            # place): m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
            m = torch._foreach_lerp(_or_zeros([ms[i] for i in chunk], ps), gs, 1.0 - beta1)
            v = torch._foreach_mul(_or_zeros([vs[i] for i in chunk], ps), beta2)
            torch._foreach_addcmul_(v, gs, gs, value=1.0 - beta2)
            # A non-finite m makes d non-finite, which the step catches; a v that overflows to
            # inf makes d zero instead, so v is the one to check.
            checks += torch._foreach_norm(v)
            # d = m_hat / (sqrt(v_hat) + eps), m_hat = m / c1, v_hat = v / c2, c_i = 1 - beta_i^t,
            # computed as (m / (sqrt(v) + eps sqrt(c2))) * (sqrt(c2) / c1): the same number up
            # to rounding, in fewer passes
            root_c2 = [math.sqrt(1.0 - beta2 ** steps[i]) for i in chunk]
            torch._foreach_sqrt_(v)
            torch._foreach_add_(v, [eps * r for r in root_c2])
            torch._foreach_div_(m, v)
            del v
            torch._foreach_mul_(
                m, [r / (1.0 - beta1 ** steps[i]) for r, i in zip(root_c2, chunk, strict=True)]
            )
            directions += m
        return directions, checks

    def _commit(self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        steps, _, _ = self._moments(params)
        for p, t in zip(params, steps, strict=True):
            st = self.state[p]
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = torch.zeros_like(p)
            st["step"] = t
        ms = [self.state[p]["exp_avg"] for p in params]
        vs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_lerp_(ms, grads, 1.0 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - beta2)


def _or_zeros(tensors: list[Tensor | None], like: list[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if t is None else t for t, p in zip(tensors, like, strict=True)]


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

    def _direction(
        self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor]]:
        # a copy: the step overwrites d with the new parameters, and g is the user's .grad
        return torch._foreach_mul(grads, 1.0), []
