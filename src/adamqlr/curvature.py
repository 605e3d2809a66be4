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

import contextlib
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from adamqlr._random import replayed_rng
from adamqlr.losses import Loss
from adamqlr.outputs import OutputSelector, select_output
from adamqlr.precision import wide, wide_dtype

__all__ = [
    "CURVATURES",
    "CurvatureEngine",
    "EngineCache",
    "ForwardModeFisher",
    "GraphHessian",
    "LayerwiseFisher",
    "TensorDict",
    "copied_buffers",
    "curvature_engine",
    "ggn_quadratic",
    "hessian_along_graph",
    "hessian_quadratic",
    "layerwise_backward",
    "layerwise_forward",
    "layerwise_jvp",
    "layerwise_plan",
    "layerwise_tangent",
    "loss_at",
    "may_be_stochastic",
    "model_signature",
    "quadratic_form",
]

TensorDict = dict[str, Tensor]

#: The curvature matrices that :func:`quadratic_form` understands.
CURVATURES: tuple[str, ...] = ("fisher", "hessian")


def copied_buffers(model: nn.Module) -> TensorDict:
    """Return detached copies of every buffer of ``model``, keyed by name."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def _forward(
    model: nn.Module,
    params: Mapping[str, Tensor],
    inputs: object,
    output: OutputSelector = None,
) -> Tensor:
    # The buffer copies are made here, inside whatever ``torch.func`` transform calls this, so
    # that batch norm's in-place update of them (running statistics, ``num_batches_tracked``)
    # mutates a tensor of this call, not a captured one, which the transforms refuse.
    raw = functional_call(model, ({**params}, copied_buffers(model)), (inputs,), strict=False)
    return select_output(raw, output)


def loss_at(
    model: nn.Module,
    params: Mapping[str, Tensor],
    inputs: object,
    targets: Tensor,
    loss: Loss,
    *,
    output: OutputSelector = None,
) -> Tensor:
    """Evaluate the mean loss at ``params`` without touching the model's parameters or buffers.

    Args:
        model: The network; its own parameters are replaced by ``params`` for this call only.
        params: Parameter values by name (others keep the module's values).
        inputs: The mini-batch inputs.
        targets: The mini-batch targets.
        loss: The loss.
        output: Which of the model's outputs the loss compares
            (:func:`adamqlr.outputs.select_output`; ``None``: the model returns a tensor).

    Returns:
        The scalar loss (no graph is recorded).
    """
    with torch.no_grad():
        outputs = _forward(model, params, inputs, output)
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
    ``nn.Dropout``, with no hooks (forward or backward, on any module) and no parametrizations.
    For anything else it returns ``None`` and :func:`ggn_quadratic` uses forward-mode autograd
    through the module.

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
        if (
            module._forward_hooks
            or module._forward_pre_hooks
            or module._backward_hooks
            or module._backward_pre_hooks
            or "forward" in vars(module)
        ):
            return False  # hooks (the layer-wise passes skip a container's), or a new forward
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
            if [*module.parameters(), *module.buffers()]:
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
    """Push the tangent ``t`` through one layer (called with no graph recorded).

    ``record`` is what :func:`layerwise_forward` kept for the layer: a linear layer's input, an
    activation's input or output, a dropout mask.
    """
    kind = type(layer)
    if kind is nn.Linear and record is not None:
        linear = cast(nn.Linear, layer)
        w_name, b_name = f"{prefix}weight", f"{prefix}bias"
        dw, db = direction.get(w_name), direction.get(b_name)
        carried = None
        if t is not None:
            carried = torch.nn.functional.linear(t, params.get(w_name, linear.weight))
        if dw is not None:
            own = torch.nn.functional.linear(record, dw, db)  # h dW^T + db
            return own if carried is None else own.add_(carried)
        if db is not None:
            return (
                db.expand(*record.shape[:-1], linear.out_features)
                if carried is None
                else (carried.add_(db))
            )
        return carried
    if t is None:
        return None
    if kind in _ELEMENTWISE:
        return _ELEMENTWISE[kind](layer, t, cast(Tensor, record))
    if kind is nn.Dropout:
        return t if record is None else t * record
    return layer(t)  # shape-only layers


def layerwise_forward(
    layers: list[tuple[str, nn.Module]],
    inputs: Tensor,
    params: Mapping[str, Tensor] | None = None,
    *,
    keep: bool = True,
) -> tuple[Tensor, list[Tensor | None]]:
    """Run the layers as ``nn.Sequential.forward`` does, keeping what their JVP needs.

    Each layer's own ``forward`` is called, skipping ``Module.__call__`` (~1.5 us a layer): a
    plan's modules have no hooks, forward or backward, and there are no global ones
    (:func:`layerwise_plan`; a hook added later changes the model's signature and so the plan),
    so the same operations run as in the module call and autograd, when enabled, records the same
    graph. Dropout is the exception: its mask is drawn explicitly (``dropout`` of ones: the same
    random draws and the same output as ``layer(h)``) so that it can be kept.

    Args:
        layers: From :func:`layerwise_plan`.
        inputs: The input tensor.
        params: Optional parameter values by name replacing the linear layers' own.
        keep: Whether to keep the tape (``False``: a plain forward pass, e.g. a trial loss; the
            tape returned is empty).

    Returns:
        ``(outputs, tape)``, the tape holding per layer a linear layer's input, an elementwise
        layer's input or output (whichever its derivative uses), a dropout mask, a shape-only
        layer's input, or ``None`` (dropout that draws nothing).
    """
    h = inputs
    tape: list[Tensor | None] = []
    record = tape.append if keep else _discard
    for prefix, layer in layers:
        kind = type(layer)
        if kind is nn.Linear:
            record(h)
            if params is None:
                h = layer.forward(h)
            else:
                linear = cast(nn.Linear, layer)
                h = torch.nn.functional.linear(
                    h,
                    params.get(f"{prefix}weight", linear.weight),
                    params.get(f"{prefix}bias", linear.bias),
                )
        elif kind in _ELEMENTWISE:
            out = layer.forward(h)
            record(out if kind in _USES_OUTPUT else h)
            h = out
        elif kind is nn.Dropout and layer.training and cast(nn.Dropout, layer).p > 0:
            mask = torch.nn.functional.dropout(torch.ones_like(h), cast(nn.Dropout, layer).p, True)
            record(mask)
            h = h * mask
        else:
            record(h if kind in _PASSTHROUGH else None)  # a shape-only layer: for its shape
            h = layer.forward(h)
    return h, tape


def _discard(_: object) -> None:
    pass


def layerwise_tangent(
    layers: list[tuple[str, nn.Module]],
    tape: list[Tensor | None],
    params: Mapping[str, Tensor],
    direction: Mapping[str, Tensor],
    *,
    tangent: Tensor | None = None,
) -> Tensor | None:
    """Return ``J d`` from the tape of a forward pass (``None`` if no layer has a direction).

    Only tangents are computed: the forward pass that made the tape (e.g. the optimiser's own
    gradient pass) supplies every primal value.

    Args:
        layers: From :func:`layerwise_plan`.
        tape: From :func:`layerwise_forward` at ``params``.
        params: The parameter values of that forward pass by name (others: the module's own).
        direction: The direction by parameter name.
        tangent: The tangent of the layers' input (``None``: zero, the network's input).

    Returns:
        The tangent of the outputs, or ``None`` when it is zero.
    """
    t = tangent
    with _no_grad():
        for (prefix, layer), record in zip(layers, tape, strict=True):
            t = _tangent_step(prefix, layer, record, t, params, direction)
    return t


def layerwise_backward(
    layers: list[tuple[str, nn.Module]],
    tape: list[Tensor | None],
    grad_outputs: Tensor,
) -> list[tuple[Tensor, Tensor]]:
    """Return the gradient of a loss with respect to the layers' parameters, without autograd.

    The reverse of :func:`layerwise_tangent`: from the tape of a forward pass at the module's own
    parameters and the gradient with respect to the outputs, each layer maps the gradient ``g``
    of its output back, with the kernels autograd runs for the layer's backward (so the numbers
    of ``loss.backward()`` through the same forward): a linear layer gives ``g^T h`` for its
    weight and ``sum g`` for its bias and passes ``g W`` on; an elementwise layer ``f'(a) g`` (its
    Jacobian is diagonal, so this is its JVP's function); dropout ``g`` times its mask; a
    shape-only layer ``g`` in its input's shape. Only parameters with ``requires_grad`` get a
    gradient, and the gradient is not carried below the first layer that has one.

    Args:
        layers: From :func:`layerwise_plan`.
        tape: From :func:`layerwise_forward` at the module's own parameters.
        grad_outputs: The gradient of the loss with respect to the layers' outputs.

    Returns:
        ``[(parameter, gradient), ...]``, from the last layer to the first; a parameter used by
        several layers appears once per use (the gradient is their sum).
    """
    lowest = len(layers)
    for i, (_, m) in enumerate(layers):
        if type(m) is nn.Linear:
            bias = m.bias
            if m.weight.requires_grad or (bias is not None and bias.requires_grad):
                lowest = i
                break
    grads: list[tuple[Tensor, Tensor]] = []
    g = grad_outputs
    with _no_grad():
        for i in range(len(layers) - 1, lowest - 1, -1):
            layer, record = layers[i][1], tape[i]
            kind = type(layer)
            if kind is nn.Linear:
                linear = cast(nn.Linear, layer)
                h = cast(Tensor, record)
                flat_g = g if g.dim() == 2 else g.reshape(-1, g.shape[-1])
                if linear.weight.requires_grad:
                    flat_h = h if h.dim() == 2 else h.reshape(-1, h.shape[-1])
                    grads.append((linear.weight, flat_g.t().mm(flat_h)))
                if linear.bias is not None and linear.bias.requires_grad:
                    grads.append((linear.bias, flat_g.sum(0)))
                if i > lowest:
                    g = g.mm(linear.weight) if g.dim() == 2 else g.matmul(linear.weight)
            elif kind in _ELEMENTWISE:
                g = _ELEMENTWISE[kind](layer, g, cast(Tensor, record))
            elif kind is nn.Dropout:
                g = g if record is None else g * record
            else:  # shape-only
                g = g.reshape(cast(Tensor, record).shape)
    return grads


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
    output: OutputSelector = None,
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
        output: Which of the model's outputs the loss compares
            (:func:`adamqlr.outputs.select_output`); with a selector the layer-wise JVP is not
            used (``"auto"`` means ``"forward_ad"``).

    Returns:
        A scalar tensor, non-negative up to rounding for convex losses.

    Raises:
        ValueError: If ``method`` is unknown, or ``"layerwise"`` for a model it does not cover.
    """
    methods = ("auto", "layerwise", "forward_ad", "func")
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; expected one of {methods}")
    plan = None
    if method in ("auto", "layerwise") and isinstance(inputs, Tensor) and output is None:
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
                return _forward(model, dict(zip(names, values, strict=True)), inputs, output)

            outputs, u = jvp(  # type: ignore[misc]  # torch types jvp as 2 or 3 values (has_aux)
                outputs_of,
                tuple(params[n].detach() for n in names),
                tuple(direction[n].detach() for n in names),
            )
        else:
            with fwAD.dual_level():
                duals = {
                    n: fwAD.make_dual(params[n].detach(), direction[n].detach()) for n in names
                }
                outputs, u = fwAD.unpack_dual(_forward(model, duals, inputs, output))
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
    *,
    output: OutputSelector = None,
) -> Tensor:
    """Return ``d^T H d`` for the Hessian of the mean loss, by forward-over-reverse.

    Args:
        model: The network.
        params: Parameter values by name, the point where ``H`` is evaluated.
        direction: The direction ``d``.
        inputs: The mini-batch inputs.
        targets: The mini-batch targets.
        loss: The loss.
        output: Which of the model's outputs the loss compares
            (:func:`adamqlr.outputs.select_output`).

    Returns:
        A scalar tensor; it may be negative or zero where the loss is not convex along ``d``.
    """
    names = list(params)

    def loss_of(values: tuple[Tensor, ...]) -> Tensor:
        outputs = _forward(model, dict(zip(names, values, strict=True)), inputs, output)
        return loss.value(outputs, targets)

    primals = tuple(params[n].detach() for n in names)
    tangents = tuple(direction[n].detach() for n in names)
    _, hvp = jvp(grad(loss_of), (primals,), (tangents,))  # type: ignore[misc]  # as above
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


# ------------------------------------------------------------------------- engines for a step
def hessian_along_graph(
    grads: list[Tensor], params: list[Tensor], directions: list[Tensor]
) -> Tensor:
    """Return ``d^T H d`` by differentiating ``g . d`` once more through the gradient's graph.

    ``grads`` are gradients of the loss made with ``create_graph=True``. Exact (the same ``H d`` as
    forward-over-reverse, up to rounding), evaluated on the gradient pass's own forward: the same
    batch-norm statistics and dropout masks, and no extra forward pass. On a large model each
    parameter's piece of ``H d`` is reduced to ``d_i . (H d)_i`` as soon as it arrives and then
    dropped, so ``H d`` never exists whole (the parameters' ``.grad`` is set aside meanwhile and
    put back); up to :data:`WHOLE_HD_LIMIT` elements, ``H d`` is returned whole by one
    ``torch.autograd.grad`` (at most a few MB, and no hook per parameter: the same numbers).

    Args:
        grads: The gradient, with its graph, per parameter.
        params: The parameters.
        directions: The direction per parameter.

    Returns:
        A 0-d float64 tensor (the terms summed in parameter order).
    """
    if sum(p.numel() for p in params) <= WHOLE_HD_LIMIT:
        return _hessian_along_whole(grads, params, directions)
    saved = [p.grad for p in params]
    terms: dict[int, Tensor] = {}  # summed in parameter order, whatever the arrival order

    def reduce(p: Tensor, d: Tensor, i: int) -> None:
        if p.grad is not None:
            terms[i] = torch.dot(_flat(wide(d)), _flat(wide(p.grad))).to(torch.float64)
            p.grad = None

    # a gradient with no graph is constant in the parameters: its part of H d is zero
    live = [(g, d) for g, d in zip(grads, directions, strict=True) if g.requires_grad]
    handles = []
    try:
        for i, (p, d) in enumerate(zip(params, directions, strict=True)):
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
    if not terms:
        device = directions[0].device if directions else None
        return torch.zeros((), dtype=torch.float64, device=device)
    return torch.stack([terms[i] for i in sorted(terms)]).sum()


def _flat(t: Tensor) -> Tensor:
    """``t`` as a vector: itself, a view (one dispatch fewer than reshape), or a copy.

    The one flattening of the dot products over parameters (:func:`_dots`, the piecewise
    Hessian reductions).
    """
    if t.dim() == 1:
        return t
    return t.view(-1) if t.is_contiguous() else t.reshape(-1)


def _all_wide(tensors: Iterable[Tensor]) -> bool:
    """Whether every tensor is float32 or wider already (one check per distinct dtype)."""
    return all(wide_dtype(dtype) == dtype for dtype in {t.dtype for t in tensors})


def _dots(a: list[Tensor], b: list[Tensor], wide_enough: bool | None = None) -> list[Tensor]:
    """Return ``a_i . b_i`` per pair, in float32 or wider.

    ``wide_enough``: whether both lists are float32 or wider already, if the caller knows
    (``None``: checked here, once per list).
    """
    if wide_enough is None:
        wide_enough = _all_wide(a) and _all_wide(b)
    if wide_enough:
        return [_dot(x, y) for x, y in zip(a, b, strict=True)]
    # [loops] 16-bit parameters: accumulate in float32 (precision.py)
    return [_dot(wide(x), wide(y)) for x, y in zip(a, b, strict=True)]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Return ``a . b`` over all elements (no reshape for vectors), in their dtype."""
    return torch.dot(_flat(a), _flat(b))


#: Up to this many parameter elements, :func:`hessian_along_graph` forms ``H d`` whole (4 MB in
#: float32) rather than reduce it piece by piece from per-parameter hooks.
WHOLE_HD_LIMIT = 1 << 20


def _hessian_along_whole(
    grads: list[Tensor], params: list[Tensor], directions: list[Tensor]
) -> Tensor:
    """:func:`hessian_along_graph` with ``H d`` formed whole: one ``autograd.grad``, no hooks."""
    live = [(g, d) for g, d in zip(grads, directions, strict=True) if g.requires_grad]
    found = (
        torch.autograd.grad(
            [g for g, _ in live], params, grad_outputs=[d for _, d in live], allow_unused=True
        )
        if live
        else [None] * len(params)
    )
    pairs = [(d, hd) for d, hd in zip(directions, found, strict=True) if hd is not None]
    if not pairs:
        device = directions[0].device if directions else None
        return torch.zeros((), dtype=torch.float64, device=device)
    terms = _dots([d for d, _ in pairs], [hd for _, hd in pairs])
    if all(t.dtype is terms[0].dtype for t in terms):
        # sum(dtype=float64) widens each term exactly before the same sum (one operation fewer
        # than .to(float64).sum(); the same numbers, tested)
        return torch.stack(terms).sum(dtype=torch.float64)
    return torch.stack([t.to(torch.float64) for t in terms]).sum()


def _hessian_dots(
    grads: list[Tensor],
    params: list[Tensor],
    vector: list[Tensor],
    against: list[list[Tensor]],
    *,
    retain_graph: bool,
) -> list[Tensor]:
    """Return ``w^T H vector`` for each ``w`` in ``against``, as :func:`hessian_along_graph`.

    One backward pass through the gradient's graph; each parameter's piece of ``H vector`` is
    reduced as it arrives. ``retain_graph=True`` keeps the graph for another pass.
    """
    saved = [p.grad for p in params]
    terms: list[dict[int, Tensor]] = [{} for _ in against]

    def reduce(p: Tensor, i: int) -> None:
        if p.grad is not None:
            piece = _flat(wide(p.grad))
            for k, w in enumerate(against):
                terms[k][i] = torch.dot(_flat(wide(w[i])), piece).to(torch.float64)
            p.grad = None

    live = [(g, d) for g, d in zip(grads, vector, strict=True) if g.requires_grad]
    handles = []
    try:
        for i, p in enumerate(params):
            p.grad = None
            handles.append(p.register_post_accumulate_grad_hook(lambda p, i=i: reduce(p, i)))
        if live:
            torch.autograd.backward(
                [g for g, _ in live],
                grad_tensors=[d for _, d in live],
                inputs=params,
                retain_graph=retain_graph,
            )
    finally:
        for h in handles:
            h.remove()
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    device = vector[0].device if vector else None
    zero = torch.zeros((), dtype=torch.float64, device=device)
    return [torch.stack([t[i] for i in sorted(t)]).sum() if t else zero for t in terms]


#: Layers torch ships that draw random numbers in training mode (with their rate attribute).
_RANDOM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.dropout._DropoutNd,
    nn.RReLU,
)


def may_be_stochastic(model: nn.Module) -> bool:
    """Return whether a forward pass of ``model`` may draw random numbers.

    ``True`` for any module in training mode of torch's random layers (dropout of every kind with
    ``p > 0``, ``RReLU``), for recurrent layers and attention with a positive dropout rate, and,
    conservatively, for any module whose ``forward`` is not torch's own (custom code may call
    ``torch.nn.functional.dropout``); ``False`` only when every module is a torch layer known to
    be deterministic there. An optimiser replays the random state of its gradient pass in its
    later passes only when this is ``True``.

    Args:
        model: The network.
    """
    for module in model.modules():
        kind = type(module)
        if isinstance(module, _RANDOM_LAYERS):
            if module.training and getattr(module, "p", 1.0) != 0:
                return True
        elif isinstance(module, (nn.RNNBase, nn.MultiheadAttention)):
            if module.training and float(getattr(module, "dropout", 0.0)) > 0:
                return True
        elif "forward" in vars(module):
            return True  # a forward replaced on the instance
        elif not kind.forward.__module__.startswith("torch.nn."):
            return True  # custom code
    return False


def checked_value(loss: Loss, outputs: Tensor, targets: Tensor) -> Tensor:
    """Return ``loss.value(outputs, targets)`` after the loss's checks, with no host sync on CPU.

    :meth:`~adamqlr.losses.Loss.check_layout` always comes first. The checks of the targets'
    values (:meth:`~adamqlr.losses.Loss.check_values`, e.g. class indices in range, one
    device-to-host transfer) come first too, except on the CPU, where a bad class index makes
    the loss itself raise: there they are made only then, so that the clear ``ValueError``
    replaces torch's error, and a valid batch costs no extra sync. (Targets the value does not
    refuse but the checks do, e.g. all ``ignore_index``, give a non-finite loss: the optimiser
    makes the checks when it reads one, :meth:`adamqlr.optim.QuadraticModelOptimizer.step`.)

    Raises:
        ValueError: From the loss's checks, naming the bad value.
    """
    return _checked(loss.value, loss, outputs, targets)


def checked_value_and_gradient(
    loss: Loss, outputs: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Return the loss's value and output gradient after the checks of :func:`checked_value`.

    :meth:`~adamqlr.losses.Loss.value_and_output_gradient`, with the checks made as there.

    Raises:
        ValueError: From the loss's checks, naming the bad value.
    """
    return _checked(loss.value_and_output_gradient, loss, outputs, targets)


_T = TypeVar("_T")


def _checked(
    compute: Callable[[Tensor, Tensor], _T], loss: Loss, outputs: Tensor, targets: Tensor
) -> _T:
    loss.check_layout(outputs, targets)
    if outputs.device.type != "cpu":  # a bad class index is a device-side assert there
        loss.check_values(outputs, targets)
        return compute(outputs, targets)
    try:
        return compute(outputs, targets)
    except (IndexError, RuntimeError):
        loss.check_values(outputs, targets)  # raises the clear error, if that was the cause
        raise


def _no_grad() -> contextlib.AbstractContextManager[Any]:
    """``torch.no_grad()``, or nothing when no graph is recorded already (inside a step).

    [loops] Entering and leaving ``no_grad`` costs about 2 us even when it changes nothing.
    """
    return torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext()


def model_signature(model: nn.Module) -> tuple[Any, ...]:
    """Return a cheap fingerprint of what a step's plan depends on in ``model``.

    It changes when a module is added, removed, replaced or renamed, a parameter is replaced, a
    hook of a module's forward or backward is registered or removed (or a global one), a ``forward``
    is replaced on an instance, or a module switches between training and evaluation mode. Walks
    the module tree once (no generators), so that checking it every step costs microseconds for
    a small network.
    """
    parts: list[Any] = [torch.nn.modules.module._has_any_global_hook()]
    add = parts.append
    stack: list[nn.Module | None] = [model]
    pop, push = stack.pop, stack.extend
    while stack:
        m = pop()
        if m is None:  # an empty slot of _modules
            continue
        state = m.__dict__
        try:  # the fields, read from the instance's dict (no Module.__getattr__)
            children, params = state["_modules"], state["_parameters"]
            training, hooks, pre_hooks, back, back_pre = (
                state["training"],
                state["_forward_hooks"],
                state["_forward_pre_hooks"],
                state["_backward_hooks"],
                state["_backward_pre_hooks"],
            )
        except KeyError:  # e.g. a scripted module keeps some of them elsewhere
            children, params = m._modules, m._parameters
            training, hooks, pre_hooks = m.training, m._forward_hooks, m._forward_pre_hooks
            back, back_pre = m._backward_hooks, m._backward_pre_hooks
        add(
            (
                id(m),
                type(m),
                training,
                tuple(hooks),
                tuple(pre_hooks),
                tuple(back),
                tuple(back_pre),
                "forward" in state,
                tuple(children),
                tuple(map(id, params.values())),
            )
        )
        push(children.values())
    return tuple(parts)


class CurvatureEngine:
    """How one optimiser step computes its gradient pass, ``d^T C d`` and its trial loss.

    One engine serves every step of an optimiser while the model keeps its structure (see
    :class:`EngineCache`). A step calls, in order:

    1. :meth:`gradient_pass` -- forward and backward on the mini-batch: ``.grad`` of every
       parameter, the loss and the (detached) outputs; the engine keeps what the curvature needs;
    2. :meth:`along` -- ``d^T C d`` at the same parameters and on the same batch, as a 0-d tensor
       (no host synchronisation), after which what the gradient pass kept is dropped;
    3. :meth:`trial_loss` -- the loss at other parameter values on the same batch (random layers
       see the same random numbers as in the gradient pass);
    4. :meth:`release` -- drop the batch and anything left.

    Only the gradient pass, an ordinary forward of the module, updates batch-norm running
    statistics.

    Args:
        model: The network.
        loss: The loss.
        plan: :func:`layerwise_plan` of the model, or ``None``.
        stochastic: :func:`may_be_stochastic` of the model: whether to capture and replay the
            random state.
    """

    #: Short name, for tests and benchmarks.
    name: str = "engine"
    #: How the last gradient pass was differentiated: ``"autograd"``, or ``"closed-form"`` (no
    #: autograd graph, :func:`layerwise_backward`; :class:`LayerwiseFisher` only).
    gradient_by: str = "autograd"
    #: Which of the model's outputs the loss compares (:func:`adamqlr.outputs.select_output`);
    #: set by :func:`curvature_engine`.
    output: OutputSelector = None

    def __init__(
        self,
        model: nn.Module,
        loss: Loss,
        plan: list[tuple[str, nn.Module]] | None,
        stochastic: bool,
    ) -> None:
        self.model = model
        self.loss = loss
        self.plan = plan
        self.stochastic = stochastic
        self._batch: tuple[Any, Tensor] | None = None
        self._rng: tuple[Tensor, list[Tensor] | None] | None = None

    @property
    def may_use_attention(self) -> bool:
        """Whether the model's passes may reach an attention kernel (:mod:`adamqlr.backends`).

        ``False`` only with a layer-wise plan: the model is then a ``Sequential`` of linear
        layers, elementwise activations, shape-only layers and dropout with no hooks
        (:func:`layerwise_plan`), so no pass calls ``scaled_dot_product_attention`` or
        ``nn.MultiheadAttention``. The engine is rebuilt when the model changes, so this holds
        for every step that uses it.
        """
        return self.plan is None

    # --------------------------------------------------------------------------- helpers
    def _capture(self, inputs: Any, targets: Tensor, params: list[Tensor]) -> None:
        self._batch = (inputs, targets)
        self._rng = None
        if self.stochastic:
            cuda = any(p.is_cuda for p in params) and torch.cuda.is_available()
            self._rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None)

    def _replayed(self) -> Any:
        if self._rng is None:
            return contextlib.nullcontext()
        return replayed_rng(*self._rng)

    def _outputs(self, inputs: Any) -> Tensor:
        return select_output(self.model(inputs), self.output)

    # ------------------------------------------------------------------------- interface
    def gradient_pass(
        self, inputs: Any, targets: Tensor, params: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Forward and backward pass; return ``(loss, outputs)``, both detached.

        Sets ``.grad`` of the parameters that receive a gradient (the caller clears them first).

        Args:
            inputs: The mini-batch inputs.
            targets: Its targets.
            params: Every parameter the optimiser updates.
        """
        self._capture(inputs, targets, params)
        with torch.enable_grad():
            outputs = self._outputs(inputs)
            value = checked_value(self.loss, outputs, targets)
            if value.requires_grad:
                self._backward(value, params)
        return value.detach(), outputs.detach()

    def _backward(self, value: Tensor, params: list[Tensor]) -> None:
        value.backward()

    def along(self, names: list[str], params: list[Tensor], directions: list[Tensor]) -> Tensor:
        """Return ``d^T C d`` (a 0-d tensor) at the gradient pass's parameters and batch.

        Args:
            names: Qualified names of the parameters with a direction.
            params: Those parameters (their values at the gradient pass).
            directions: The direction, one tensor per parameter.
        """
        raise NotImplementedError

    def along_pair(
        self,
        names: list[str],
        params: list[Tensor],
        first: list[Tensor],
        second: list[Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(u^T C u, u^T C v, v^T C v)`` for two directions ``u`` and ``v``.

        Called in place of :meth:`along` (what the gradient pass kept is dropped afterwards, as
        there). The plane step of ``step_rule="alpha-momentum"`` (:mod:`adamqlr.rules`) needs
        the three. ``u^T C u`` is computed exactly as :meth:`along` computes it.

        Args:
            names: Qualified names of the parameters with a direction.
            params: Those parameters (their values at the gradient pass).
            first: ``u``, one tensor per parameter.
            second: ``v``, one tensor per parameter.
        """
        raise NotImplementedError

    def trial_loss(
        self,
        names: list[str],
        values: list[Tensor],
        *,
        alpha: float | None = None,
        decays: list[float] | None = None,
        momentum: float | None = None,
    ) -> Tensor:
        """Return the loss (0-d, no graph) on the gradient pass's batch with ``values`` in place.

        Args:
            names: Qualified names of the parameters that take other values.
            values: Their values (the other parameters keep the module's).
            alpha: When ``values`` are ``(1 - w) theta - alpha d`` for the direction ``d`` of the
                last :meth:`along`, the step size; an engine may then evaluate part of the
                network by linearity (``None``: evaluate directly).
            decays: The weight decay ``w`` per parameter, with ``alpha``.
            momentum: After :meth:`along_pair`, when ``values`` are
                ``(1 - w) theta - alpha u + momentum v`` for its two directions: the coefficient
                of ``v`` (``None``: the values are as ``alpha`` says).
        """
        inputs, targets = self._batch  # type: ignore[misc]
        with _no_grad(), self._replayed():
            if self.plan is not None:
                outputs, _ = layerwise_forward(
                    self.plan, inputs, dict(zip(names, values, strict=True)), keep=False
                )
                return self.loss.value(outputs, targets)
            return loss_at(
                self.model,
                dict(zip(names, values, strict=True)),
                inputs,
                targets,
                self.loss,
                output=self.output,
            )

    def release(self) -> None:
        """Drop everything kept from the step."""
        self._batch = None
        self._rng = None

    def __repr__(self) -> str:
        layerwise = self.plan is not None
        return f"{type(self).__name__}(layerwise={layerwise}, stochastic={self.stochastic})"


class LayerwiseFisher(CurvatureEngine):
    """The GGN of a sequential MLP: tangents only, on the gradient pass's own activations.

    The gradient pass runs layer by layer (:func:`layerwise_forward`) and keeps what the JVP needs;
    ``J d`` then costs only its tangent half (:func:`layerwise_tangent`), and ``d^T G d`` is the
    loss's closed-form ``u^T H_L u``. The trial loss uses the layer-wise forward too, except for
    the first linear layer, whose input does not depend on the parameters: its output at
    ``theta' = (1 - w) theta - alpha d`` is ``(1 - w) z - alpha (x dW^T + db)`` by linearity,
    from its output ``z`` in the gradient pass and its tangent, both already computed (equal to
    a direct evaluation up to rounding). This saves the largest matrix product of the trial pass.
    After :meth:`along_pair` the trial step is ``-alpha u + momentum v`` and the first layer's
    output moves by both tangents, ``-alpha (x du^T + du_b) + momentum (x dv^T + dv_b)``.

    When the loss has a closed-form output gradient
    (:meth:`adamqlr.losses.Loss.has_closed_form_gradient`), the gradient pass records no autograd
    graph: the forward keeps its tape, and :func:`layerwise_backward` runs the layers' backward
    kernels on it, giving the numbers of ``loss.backward()`` without the graph's bookkeeping
    (about a quarter of a forward and backward pass on a small MLP). Autograd is used instead
    when something would notice the difference: hooks on a parameter's gradient, inputs that
    require a gradient, a parameter that requires a gradient but is not the optimiser's
    (autograd would fill its ``.grad``), autocast, or parameters other than float32 and
    float64. :attr:`gradient_by` says which way the last pass went.
    """

    name = "layerwise-fisher"

    def __init__(
        self, model: nn.Module, loss: Loss, plan: list[tuple[str, nn.Module]], stochastic: bool
    ) -> None:
        super().__init__(model, loss, plan, stochastic)
        self._tape: list[Tensor | None] | None = None
        self._final: Tensor | None = None
        # The first linear layer, if only deterministic parameter-free layers precede it.
        first = next((i for i, (_, m) in enumerate(plan) if type(m) is nn.Linear), None)
        if first is not None and any(type(m) is nn.Dropout for _, m in plan[:first]):
            first = None
        self._first = first
        # the layers before and after it (sliced once, not at every pass)
        self._before = plan[:first] if first is not None else plan
        self._after = plan[first + 1 :] if first is not None else []
        self._z: Tensor | None = None  # the first linear layer's output in the gradient pass
        self._own: Tensor | None = None  # its tangent, x dW^T + db
        self._own_second: Tensor | None = None  # the same for along_pair's second direction
        self._first_names: tuple[str, ...] = ()
        # What decides, at each step, whether the gradient pass may skip autograd: the plan's
        # parameters (each once; the plan has no module hooks).
        self._loss_closed_form = loss.has_closed_form_gradient()
        self._plan_params = list(
            {id(p): p for _, m in plan for p in m.parameters(recurse=False)}.values()
        )
        if first is not None:
            prefix, layer = plan[first]
            self._first_names = tuple(
                f"{prefix}{n}" for n in ("weight", "bias") if getattr(layer, n) is not None
            )

    def _outputs(self, inputs: Any) -> Tensor:
        plan = self.plan
        if self._first is None:
            outputs, self._tape = layerwise_forward(plan, inputs)  # type: ignore[arg-type]
            return outputs
        i = self._first
        h, before = layerwise_forward(self._before, inputs) if i else (inputs, [])
        z = plan[i][1].forward(h)  # type: ignore[index]
        outputs, after = layerwise_forward(self._after, z)
        self._tape = [*before, h, *after]
        self._z = z.detach() if z.requires_grad else z  # no graph in the closed-form pass
        return outputs

    def gradient_pass(  # noqa: D102
        self, inputs: Any, targets: Tensor, params: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        if not self._closed_form(inputs, params):
            self.gradient_by = "autograd"
            value, outputs = super().gradient_pass(inputs, targets, params)
            self._final = outputs
            return value, outputs
        self.gradient_by = "closed-form"
        self._capture(inputs, targets, params)
        with _no_grad():
            outputs = self._outputs(inputs)  # no graph: the tape for layerwise_backward
            value, grad_outputs = checked_value_and_gradient(self.loss, outputs, targets)
            for p, g in layerwise_backward(self.plan, self._tape, grad_outputs):  # type: ignore[arg-type]
                if p.grad is None:
                    p.grad = g
                else:  # a parameter of several layers, or a gradient the caller left
                    p.grad.add_(g)
        self._final = outputs
        return value, outputs

    def _closed_form(self, inputs: Any, params: list[Tensor]) -> bool:
        """Whether this gradient pass may skip autograd (see the class's description)."""
        if (
            not self._loss_closed_form
            or not isinstance(inputs, Tensor)
            or inputs.requires_grad
            or not self._plan_params
        ):
            return False
        if torch.is_autocast_enabled(self._plan_params[0].device.type):
            return False
        owned: set[int] | None = None
        for p in self._plan_params:
            if p.dtype is not torch.float32 and p.dtype is not torch.float64:
                return False
            if p.requires_grad:
                if p._backward_hooks or p._post_accumulate_grad_hooks:
                    return False
                if owned is None:
                    owned = {id(q) for q in params}
                if id(p) not in owned:
                    return False
        return True

    def along(self, names: list[str], params: list[Tensor], directions: list[Tensor]) -> Tensor:  # noqa: D102
        tape, final = self._tape, self._final
        self._tape = None
        params_by_name = dict(zip(names, params, strict=True))
        self._own_second = None
        with _no_grad():
            u = self._tangent(tape, params_by_name, dict(zip(names, directions, strict=True)))
            del tape
            _, targets = self._batch  # type: ignore[misc]
            outputs = cast(Tensor, final)  # gradient_pass set it
            u = torch.zeros_like(outputs) if u is None else u
            return self.loss.output_quadratic(outputs, u, targets)

    def _tangent(
        self,
        tape: list[Tensor | None] | None,
        params_by_name: dict[str, Tensor],
        direction: dict[str, Tensor],
    ) -> Tensor | None:
        """``J d`` from the tape; keeps the first linear layer's own tangent for the trial."""
        plan = self.plan
        if self._first is None:
            return layerwise_tangent(plan, tape, params_by_name, direction)  # type: ignore[arg-type]
        i = self._first
        prefix, layer = plan[i]  # type: ignore[index]
        t = _tangent_step(prefix, layer, tape[i], None, params_by_name, direction)  # type: ignore[index]
        self._own = t
        return layerwise_tangent(
            self._after,
            tape[i + 1 :],  # type: ignore[index]
            params_by_name,
            direction,
            tangent=t,
        )

    def along_pair(  # noqa: D102
        self,
        names: list[str],
        params: list[Tensor],
        first: list[Tensor],
        second: list[Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        # Two tangent passes over the one tape (no forward pass), then the output-space forms.
        tape, final = self._tape, self._final
        self._tape = None
        params_by_name = dict(zip(names, params, strict=True))
        with torch.no_grad():
            v = self._tangent(tape, params_by_name, dict(zip(names, second, strict=True)))
            self._own_second = self._own
            u = self._tangent(tape, params_by_name, dict(zip(names, first, strict=True)))
            del tape
            _, targets = self._batch  # type: ignore[misc]
            outputs = cast(Tensor, final)
            u = torch.zeros_like(outputs) if u is None else u
            v = torch.zeros_like(outputs) if v is None else v
            return (
                self.loss.output_quadratic(outputs, u, targets),
                self.loss.output_bilinear(outputs, u, v, targets),
                self.loss.output_quadratic(outputs, v, targets),
            )

    def trial_loss(  # noqa: D102
        self,
        names: list[str],
        values: list[Tensor],
        *,
        alpha: float | None = None,
        decays: list[float] | None = None,
        momentum: float | None = None,
    ) -> Tensor:
        z, own, second = self._z, self._own, self._own_second
        if self._first is None or z is None or alpha is None or decays is None:
            return super().trial_loss(names, values)
        if momentum is not None and momentum != 0.0 and second is None:
            return super().trial_loss(names, values)
        # The first layer by linearity, when its parameters all moved alike (or none moved).
        moved = [w for n, w in zip(names, decays, strict=True) if n in self._first_names]
        if moved and (len(moved) != len(self._first_names) or own is None or len(set(moved)) > 1):
            return super().trial_loss(names, values)
        inputs, targets = self._batch  # type: ignore[misc]
        with _no_grad(), self._replayed():
            if moved:
                w = moved[0]
                z = torch.add(z.mul(1.0 - w) if w else z, own, alpha=-alpha)  # type: ignore[arg-type]
                if momentum is not None and momentum != 0.0:
                    z = z.add_(second, alpha=momentum)  # type: ignore[arg-type]
            outputs, _ = layerwise_forward(
                self._after,
                z,
                dict(zip(names, values, strict=True)),
                keep=False,
            )
            return self.loss.value(outputs, targets)

    def release(self) -> None:  # noqa: D102
        super().release()
        self._tape = self._final = self._z = self._own = self._own_second = None


class ForwardModeFisher(CurvatureEngine):
    """The GGN of any model, by forward-mode autograd (:func:`ggn_quadratic`) on the same batch."""

    name = "forward-mode-fisher"

    def along(self, names: list[str], params: list[Tensor], directions: list[Tensor]) -> Tensor:  # noqa: D102
        inputs, targets = self._batch  # type: ignore[misc]
        with self._replayed():
            return ggn_quadratic(
                self.model,
                {n: p.detach() for n, p in zip(names, params, strict=True)},
                dict(zip(names, directions, strict=True)),
                inputs,
                targets,
                self.loss,
                method="forward_ad",
                output=self.output,
            )

    def along_pair(  # noqa: D102
        self,
        names: list[str],
        params: list[Tensor],
        first: list[Tensor],
        second: list[Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        # One forward-mode JVP per direction, each with the gradient pass's random numbers.
        inputs, targets = self._batch  # type: ignore[misc]
        at = {n: p.detach() for n, p in zip(names, params, strict=True)}
        tangents = []
        for vectors in (first, second):
            with self._replayed():
                outputs, u = _output_tangent(
                    self.model, at, dict(zip(names, vectors, strict=True)), inputs, self.output
                )
            tangents.append(u)
        u, v = tangents
        with torch.no_grad():
            return (
                self.loss.output_quadratic(outputs, u, targets),
                self.loss.output_bilinear(outputs, u, v, targets),
                self.loss.output_quadratic(outputs, v, targets),
            )


def _output_tangent(
    model: nn.Module,
    params: Mapping[str, Tensor],
    direction: Mapping[str, Tensor],
    inputs: object,
    output: OutputSelector,
) -> tuple[Tensor, Tensor]:
    """Return the outputs and ``J d`` by forward-mode autograd (as :func:`ggn_quadratic`)."""
    with torch.no_grad(), fwAD.dual_level():
        duals = {n: fwAD.make_dual(params[n].detach(), direction[n].detach()) for n in params}
        outputs, u = fwAD.unpack_dual(_forward(model, duals, inputs, output))
        if u is None:  # no output depends on a parameter with a direction
            u = torch.zeros_like(outputs)
        return outputs, u


class GraphHessian(CurvatureEngine):
    """The Hessian through the gradient pass's graph (:func:`hessian_along_graph`).

    The gradient pass keeps its graph (``create_graph=True``) and ``H d`` is one more backward pass
    through it (reverse over reverse): no second forward pass, the same batch-norm statistics and
    dropout masks by construction, at the price of holding the gradient's graph until then. Models
    whose operations have no double backward (e.g. cuDNN RNNs) cannot use it.
    """

    name = "graph-hessian"

    def __init__(
        self,
        model: nn.Module,
        loss: Loss,
        plan: list[tuple[str, nn.Module]] | None,
        stochastic: bool,
    ) -> None:
        super().__init__(model, loss, plan, stochastic)
        # the parameters differentiated and their gradients with the graph, until along
        self._kept: tuple[list[Tensor], tuple[Tensor | None, ...]] = ([], ())
        # With a plan, the gradient pass runs layerwise_forward (the layers' own forward: the
        # same graph as the module call, without Module.__call__). Not with dropout, which
        # layerwise_forward evaluates as h * mask rather than the module's native_dropout.
        self._direct = plan is not None and not any(type(m) is nn.Dropout for _, m in plan)

    def _outputs(self, inputs: Any) -> Tensor:
        if self._direct:
            return layerwise_forward(self.plan, inputs, keep=False)[0]  # type: ignore[arg-type]
        return super()._outputs(inputs)

    def _backward(self, value: Tensor, params: list[Tensor]) -> None:
        wrt = [p for p in params if p.requires_grad]
        found = torch.autograd.grad(value, wrt, create_graph=True, allow_unused=True)
        for p, g in zip(wrt, found, strict=True):
            if g is not None:
                p.grad = g.detach()
        self._kept = (wrt, found)

    def _gradients(self, params: list[Tensor]) -> list[Tensor]:
        """Return the kept gradients (with their graph) of ``params``, and forget them all."""
        wrt, found = self._kept
        self._kept = ([], ())
        if len(wrt) == len(params) and all(map(operator.is_, wrt, params)):
            return found  # type: ignore[return-value]  # each parameter a step updates has one
        by_id = {id(p): g for p, g in zip(wrt, found, strict=True) if g is not None}
        return [by_id[id(p)] for p in params]

    def along(self, names: list[str], params: list[Tensor], directions: list[Tensor]) -> Tensor:  # noqa: D102
        return hessian_along_graph(self._gradients(params), params, directions)

    def along_pair(  # noqa: D102
        self,
        names: list[str],
        params: list[Tensor],
        first: list[Tensor],
        second: list[Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        # Two backward passes through the gradient's graph: H u (dotted with u and v), then H v.
        grads = self._gradients(params)
        uu, uv = _hessian_dots(grads, params, first, [first, second], retain_graph=True)
        (vv,) = _hessian_dots(grads, params, second, [second], retain_graph=False)
        return uu, uv, vv

    def release(self) -> None:  # noqa: D102
        super().release()
        self._kept = ([], ())


def curvature_engine(
    model: nn.Module,
    curvature: str,
    loss: Loss,
    *,
    tensor_inputs: bool = True,
    output: OutputSelector = None,
) -> CurvatureEngine:
    """Return the cheapest engine that computes ``curvature`` for ``model``.

    ``"fisher"``: :class:`LayerwiseFisher` when :func:`layerwise_plan` covers the model, the
    inputs are one tensor and no ``output`` selector is given, else :class:`ForwardModeFisher`;
    ``"hessian"``: :class:`GraphHessian` (with the layer-wise trial forward when the plan
    applies). ``output`` picks the tensor the loss compares from what the model returns
    (:func:`adamqlr.outputs.select_output`).

    Raises:
        ValueError: If ``curvature`` is not one of :data:`CURVATURES`.
    """
    if curvature not in CURVATURES:
        raise ValueError(f"unknown curvature {curvature!r}; expected one of {CURVATURES}")
    plan = layerwise_plan(model) if tensor_inputs and output is None else None
    stochastic = may_be_stochastic(model)
    engine: CurvatureEngine
    if curvature == "hessian":
        engine = GraphHessian(model, loss, plan, stochastic)
    elif plan is not None:
        engine = LayerwiseFisher(model, loss, plan, stochastic)
    else:
        engine = ForwardModeFisher(model, loss, None, stochastic)
    engine.output = output
    return engine


class EngineCache:
    """The engine of one optimiser, rebuilt only when :func:`model_signature` changes.

    Args:
        model: The network.
        curvature: ``"fisher"`` or ``"hessian"``.
        loss: The loss.
        output: Which of the model's outputs the loss compares
            (:func:`adamqlr.outputs.select_output`).
    """

    def __init__(
        self, model: nn.Module, curvature: str, loss: Loss, output: OutputSelector = None
    ) -> None:
        self.model = model
        self.curvature = curvature
        self.loss = loss
        self.output = output
        self._key: tuple[Any, ...] | None = None
        self._engine: CurvatureEngine | None = None
        #: How many times an engine was built (for tests).
        self.builds = 0

    def engine(self, inputs: Any) -> CurvatureEngine:
        """Return the engine for a step on ``inputs`` (a new one if the model changed)."""
        key = (isinstance(inputs, Tensor), model_signature(self.model))
        if self._engine is None or key != self._key:
            self._engine = curvature_engine(
                self.model, self.curvature, self.loss, tensor_inputs=key[0], output=self.output
            )
            self._key = key
            self.builds += 1
        return self._engine
