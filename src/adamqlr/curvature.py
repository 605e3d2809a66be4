"""Curvature along one direction, ``d^T C d``, without ever forming a matrix.

Two curvature matrices are offered, both of the *mean* mini-batch loss:

* ``"fisher"``: the generalised Gauss-Newton matrix ``G = J^T H_L J``, which equals the (true)
  Fisher for softmax cross-entropy and squared error. One forward-mode JVP through the network
  gives ``u = J d`` (and the outputs), then ``u^T H_L u`` in closed form (:mod:`adamqlr.losses`).
  No vector-Jacobian product is needed.
* ``"hessian"``: the exact Hessian ``H``. A forward-over-reverse product (``jvp`` of ``grad``)
  gives ``H d``, then ``d^T (H d)``. Nothing keeps it positive. (:class:`adamqlr.AdamQLR` itself
  gets the same number more cheaply, by differentiating its gradient pass's graph once more.)

Buffers (batch-norm running statistics) are *copied* before every pass made here, so a curvature
or trial-loss evaluation never changes the model's state: only the optimiser's gradient pass, an
ordinary call of the module, updates running statistics. In training mode batch norm normalises
with the batch statistics, so the copies do not change any value computed here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from adamqlr.losses import Loss

__all__ = [
    "CURVATURES",
    "TensorDict",
    "copied_buffers",
    "ggn_quadratic",
    "hessian_quadratic",
    "layerwise_forward",
    "layerwise_jvp",
    "layerwise_plan",
    "layerwise_tangent",
    "loss_at",
    "quadratic_form",
]

TensorDict = dict[str, Tensor]

#: The curvature matrices that :func:`quadratic_form` understands.
CURVATURES: tuple[str, ...] = ("fisher", "hessian")


def copied_buffers(model: nn.Module) -> TensorDict:
    """Return detached copies of every buffer of ``model``, keyed by name."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def _forward(model: nn.Module, params: Mapping[str, Tensor], inputs: object):
    # The buffer copies are made here, inside whatever ``torch.func`` transform calls this, so
    # that batch norm's in-place update of them (running statistics, ``num_batches_tracked``)
    # mutates a tensor of this call, not a captured one, which the transforms refuse.
    return functional_call(model, ({**params}, copied_buffers(model)), (inputs,), strict=False)


def loss_at(
    model: nn.Module,
    params: Mapping[str, Tensor],
    inputs: object,
    targets: Tensor,
    loss: Loss,
) -> Tensor:
    """Evaluate the mean loss at ``params`` without touching the model's parameters or buffers.

    Args:
        model: The network; its own parameters are replaced by ``params`` for this call only.
        params: Parameter values by name (others keep the module's values).
        inputs: The mini-batch inputs.
        targets: The mini-batch targets.
        loss: The loss.

    Returns:
        The scalar loss (no graph is recorded).
    """
    with torch.no_grad():
        outputs = _forward(model, params, inputs)
        return loss.value(outputs, targets)


# --------------------------------------------------------------------------- forward-mode JVP
#: Elementwise layers the layer-wise JVP knows, with their derivative applied to a tangent. Each
#: one is the layer's own autograd backward kernel (for an elementwise map, ``grad * f'(a)`` *is*
#: the JVP), given the pre-activation ``a`` or the output ``out`` (see ``_USES_OUTPUT``), so
#: conventions such as ReLU's derivative at 0 are exactly autograd's.
_ELEMENTWISE: dict[type[nn.Module], Callable[[Any, Tensor, Tensor], Tensor]] = {
    nn.ReLU: lambda m, t, out: torch.ops.aten.threshold_backward(t, out, 0),
    nn.Tanh: lambda m, t, out: torch.ops.aten.tanh_backward(t, out),
    nn.Sigmoid: lambda m, t, out: torch.ops.aten.sigmoid_backward(t, out),
    nn.GELU: lambda m, t, a: torch.ops.aten.gelu_backward(t, a, approximate=m.approximate),
    nn.SiLU: lambda m, t, a: torch.ops.aten.silu_backward(t, a),
    nn.LeakyReLU: lambda m, t, a: torch.ops.aten.leaky_relu_backward(t, a, m.negative_slope, False),
    nn.ELU: lambda m, t, a: torch.ops.aten.elu_backward(t, m.alpha, 1, 1, False, a),
    nn.Softplus: lambda m, t, a: torch.ops.aten.softplus_backward(t, a, m.beta, m.threshold),
}
#: The elementwise layers whose derivative is written with their output (the rest: their input).
_USES_OUTPUT = (nn.ReLU, nn.Tanh, nn.Sigmoid)
_PASSTHROUGH = (nn.Identity, nn.Flatten, nn.Unflatten)


def layerwise_plan(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """Return the layers of ``model`` if the hand-written JVP of :func:`layerwise_jvp` applies.

    It applies to an ``nn.Sequential`` (or a subclass that keeps ``Sequential.forward``),
    possibly nested, of ``nn.Linear``, the elementwise activations ReLU, Tanh, Sigmoid, GELU,
    SiLU, LeakyReLU, ELU and Softplus, ``nn.Identity``, ``nn.Flatten``, ``nn.Unflatten`` and
    ``nn.Dropout``, with no forward hooks and no parametrizations. For anything else it returns
    ``None`` and :func:`ggn_quadratic` uses forward-mode autograd through the module.

    Args:
        model: The network.

    Returns:
        ``[(prefix, layer), ...]`` in call order, where ``prefix + "weight"`` is the qualified
        name of a layer's weight (``""`` for the top module, else ending in a dot), or ``None``.
    """
    if torch.nn.modules.module._has_any_global_hook():
        return None
    layers: list[tuple[str, nn.Module]] = []
    # A module used twice has its parameters under the name of its first use only.
    canonical = {id(m): (f"{n}." if n else "") for n, m in model.named_modules()}

    def visit(prefix: str, module: nn.Module) -> bool:
        if module._forward_hooks or module._forward_pre_hooks or "forward" in vars(module):
            return False  # hooks, or a forward replaced on the instance
        if isinstance(module, nn.Sequential):
            if type(module).forward is not nn.Sequential.forward:
                return False
            # ``_modules``, as ``Sequential.forward`` iterates it: ``named_children`` would skip
            # a module that appears twice
            return all(
                child is not None and visit(f"{prefix}{name}.", child)
                for name, child in module._modules.items()
            )
        kind = type(module)
        if kind is nn.Linear:
            own = {n for n, _ in module.named_parameters(recurse=False)}
            if not own <= {"weight", "bias"} or "weight" not in own or list(module.children()):
                return False  # e.g. a parametrization moved the weight
        elif kind in _ELEMENTWISE or kind in _PASSTHROUGH or kind is nn.Dropout:
            if list(module.parameters()) or list(module.buffers()):
                return False
        else:
            return False
        layers.append((canonical[id(module)], module))
        return True

    return layers if visit("", model) else None


def _tangent_step(
    prefix: str,
    layer: nn.Module,
    record: Tensor | None,
    t: Tensor | None,
    params: Mapping[str, Tensor],
    direction: Mapping[str, Tensor],
) -> Tensor | None:
    """Push the tangent ``t`` through one layer.

    ``record`` is what :func:`layerwise_forward` kept for the layer: a linear layer's input, an
    activation's input or output, a dropout mask.
    """
    kind = type(layer)
    if kind is nn.Linear and record is not None:
        w_name, b_name = f"{prefix}weight", f"{prefix}bias"
        dw, db = direction.get(w_name), direction.get(b_name)
        carried = None
        if t is not None:
            carried = torch.nn.functional.linear(t, params.get(w_name, layer.weight).detach())
        if dw is not None:
            own = torch.nn.functional.linear(record, dw, db)  # h dW^T + db
            return own if carried is None else own.add_(carried)
        if db is not None:
            return (
                db.expand(*record.shape[:-1], layer.out_features)
                if carried is None
                else (carried.add_(db))
            )
        return carried
    if t is None:
        return None
    if kind in _ELEMENTWISE:
        return _ELEMENTWISE[kind](layer, t, record)
    if kind is nn.Dropout:
        return t if record is None else t * record
    return layer(t)  # shape-only layers


def layerwise_forward(
    layers: list[tuple[str, nn.Module]],
    inputs: Tensor,
    params: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, list[Tensor | None]]:
    """Run the layers as ``nn.Sequential.forward`` does, keeping what their JVP needs.

    Each layer is called as the module would be (so autograd, when enabled, records the same
    graph), except dropout, whose mask is drawn explicitly (``dropout`` of ones: the same random
    draws and the same output as ``layer(h)``) so that it can be kept.

    Args:
        layers: From :func:`layerwise_plan`.
        inputs: The input tensor.
        params: Optional parameter values by name replacing the linear layers' own.

    Returns:
        ``(outputs, tape)``, the tape holding per layer a linear layer's input, an elementwise
        layer's input or output (whichever its derivative uses), a dropout mask, or ``None``.
    """
    h = inputs
    tape: list[Tensor | None] = []
    for prefix, layer in layers:
        kind = type(layer)
        if kind is nn.Linear:
            tape.append(h.detach())
            if params is None:
                h = layer(h)
            else:
                h = torch.nn.functional.linear(
                    h,
                    params.get(f"{prefix}weight", layer.weight),
                    params.get(f"{prefix}bias", layer.bias),
                )
        elif kind in _ELEMENTWISE:
            out = layer(h)
            tape.append((out if kind in _USES_OUTPUT else h).detach())
            h = out
        elif kind is nn.Dropout and layer.training and layer.p > 0:
            mask = torch.nn.functional.dropout(torch.ones_like(h), layer.p, True)
            tape.append(mask)
            h = h * mask
        else:
            tape.append(None)
            h = layer(h)
    return h, tape


def layerwise_tangent(
    layers: list[tuple[str, nn.Module]],
    tape: list[Tensor | None],
    params: Mapping[str, Tensor],
    direction: Mapping[str, Tensor],
) -> Tensor | None:
    """Return ``J d`` from the tape of a forward pass (``None`` if no layer has a direction).

    Only tangents are computed: the forward pass that made the tape (e.g. the optimiser's own
    gradient pass) supplies every primal value.

    Args:
        layers: From :func:`layerwise_plan`.
        tape: From :func:`layerwise_forward` at ``params``.
        params: The parameter values of that forward pass by name (others: the module's own).
        direction: The direction by parameter name.

    Returns:
        The tangent of the outputs, or ``None`` when it is zero.
    """
    t: Tensor | None = None
    with torch.no_grad():
        for (prefix, layer), record in zip(layers, tape, strict=True):
            t = _tangent_step(prefix, layer, record, t, params, direction)
    return t


def layerwise_jvp(
    layers: list[tuple[str, nn.Module]],
    params: Mapping[str, Tensor],
    direction: Mapping[str, Tensor],
    inputs: Tensor,
) -> tuple[Tensor, Tensor]:
    """Return the outputs and ``J d`` of a network from :func:`layerwise_plan`, layer by layer.

    A linear layer maps ``(h, t)`` to ``(h W^T + b, t W^T + h dW^T + db)``; an elementwise layer
    to ``(f(a), f'(a) t)``; dropout multiplies both by the mask it draws, so with the random state
    replayed (as :class:`adamqlr.AdamQLR` does) the masks are those of the gradient pass. Tangents
    known to be zero (before the first layer with a direction) are never formed. Each layer's
    primal values are dropped as soon as its tangent is computed.

    Args:
        layers: From :func:`layerwise_plan`.
        params: Parameter values by name; a parameter missing here keeps the module's value and
            has no direction.
        direction: The direction, for every key of ``params``.
        inputs: The input tensor.

    Returns:
        ``(outputs, tangent)``.
    """
    h: Tensor = inputs
    t: Tensor | None = None
    with torch.no_grad():
        for prefix, layer in layers:
            h_next, (record,) = layerwise_forward([(prefix, layer)], h, params)
            t = _tangent_step(prefix, layer, record, t, params, direction)
            h = h_next
    return h, (torch.zeros_like(h) if t is None else t)


def ggn_quadratic(
    model: nn.Module,
    params: Mapping[str, Tensor],
    direction: Mapping[str, Tensor],
    inputs: object,
    targets: Tensor,
    loss: Loss,
    *,
    method: str = "auto",
) -> Tensor:
    """Return ``d^T G d`` for the generalised Gauss-Newton matrix of the mean loss.

    One forward-mode JVP of the network at ``params`` along ``direction`` gives the outputs ``z``
    and ``u = J d``; the result is ``loss.output_quadratic(z, u, targets)``.

    Args:
        model: The network.
        params: Parameter values by name, the point where ``G`` is evaluated.
        direction: The direction ``d``, a tensor for every key of ``params``.
        inputs: The mini-batch inputs.
        targets: The mini-batch targets.
        loss: The loss, which supplies ``u^T H_L u``.
        method: ``"auto"`` (the hand-written :func:`layerwise_jvp` when :func:`layerwise_plan`
            accepts the model and the inputs are one tensor, else ``"forward_ad"``),
            ``"layerwise"`` (insist on the former), ``"forward_ad"``
            (``torch.autograd.forward_ad`` dual tensors through ``functional_call``) or
            ``"func"`` (``torch.func.jvp``). The last two give the same numbers; on CPU the
            former was as fast or faster in ``benchmarks/step_cost.py``.

    Returns:
        A scalar tensor, non-negative up to rounding for convex losses.

    Raises:
        ValueError: If ``method`` is unknown, or ``"layerwise"`` for a model it does not cover.
    """
    methods = ("auto", "layerwise", "forward_ad", "func")
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; expected one of {methods}")
    plan = None
    if method in ("auto", "layerwise") and isinstance(inputs, Tensor):
        plan = layerwise_plan(model)
    if plan is None and method == "layerwise":
        raise ValueError(f"the layer-wise JVP does not cover this model or input: {model!r}")
    if plan is not None:
        outputs, u = layerwise_jvp(plan, params, direction, inputs)  # type: ignore[arg-type]
        with torch.no_grad():
            return loss.output_quadratic(outputs, u, targets)

    names = list(params)
    with torch.no_grad():
        if method == "func":

            def outputs_of(*values: Tensor) -> Tensor:
                return _forward(model, dict(zip(names, values, strict=True)), inputs)

            outputs, u = jvp(
                outputs_of,
                tuple(params[n].detach() for n in names),
                tuple(direction[n].detach() for n in names),
            )
        else:
            with fwAD.dual_level():
                duals = {
                    n: fwAD.make_dual(params[n].detach(), direction[n].detach()) for n in names
                }
                outputs, u = fwAD.unpack_dual(_forward(model, duals, inputs))
                if u is None:  # no output depends on a parameter with a direction
                    u = torch.zeros_like(outputs)
        return loss.output_quadratic(outputs, u, targets)


def hessian_quadratic(
    model: nn.Module,
    params: Mapping[str, Tensor],
    direction: Mapping[str, Tensor],
    inputs: object,
    targets: Tensor,
    loss: Loss,
) -> Tensor:
    """Return ``d^T H d`` for the Hessian of the mean loss, by forward-over-reverse.

    Args:
        model: The network.
        params: Parameter values by name, the point where ``H`` is evaluated.
        direction: The direction ``d``.
        inputs: The mini-batch inputs.
        targets: The mini-batch targets.
        loss: The loss.

    Returns:
        A scalar tensor; it may be negative or zero where the loss is not convex along ``d``.
    """
    names = list(params)

    def loss_of(values: tuple[Tensor, ...]) -> Tensor:
        outputs = _forward(model, dict(zip(names, values, strict=True)), inputs)
        return loss.value(outputs, targets)

    primals = tuple(params[n].detach() for n in names)
    tangents = tuple(direction[n].detach() for n in names)
    _, hvp = jvp(grad(loss_of), (primals,), (tangents,))
    return sum((t * h).sum() for t, h in zip(tangents, hvp, strict=True))


_QUADRATICS: dict[str, Callable[..., Tensor]] = {
    "fisher": ggn_quadratic,
    "hessian": hessian_quadratic,
}


def quadratic_form(
    curvature: str,
    model: nn.Module,
    params: Mapping[str, Tensor],
    direction: Mapping[str, Tensor],
    inputs: object,
    targets: Tensor,
    loss: Loss,
) -> Tensor:
    """Dispatch to :func:`ggn_quadratic` (``"fisher"``) or :func:`hessian_quadratic`.

    Raises:
        ValueError: If ``curvature`` is not one of :data:`CURVATURES`.
    """
    try:
        fn = _QUADRATICS[curvature]
    except KeyError:
        raise ValueError(f"unknown curvature {curvature!r}; expected one of {CURVATURES}") from None
    return fn(model, params, direction, inputs, targets, loss)
