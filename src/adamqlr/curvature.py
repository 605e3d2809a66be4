"""Curvature along one direction, ``d^T C d``, without ever forming a matrix.

Two curvature matrices are offered, both of the *mean* mini-batch loss:

* ``"fisher"``: the generalised Gauss-Newton matrix ``G = J^T H_L J``, which equals the (true)
  Fisher for softmax cross-entropy and squared error. One forward-mode JVP through the network
  gives ``u = J d`` (and the outputs), then ``u^T H_L u`` in closed form (:mod:`adamqlr.losses`).
  No vector-Jacobian product is needed.
* ``"hessian"``: the exact Hessian ``H``. A forward-over-reverse product (``jvp`` of ``grad``)
  gives ``H d``, then ``d^T (H d)``. Nothing keeps it positive.

Buffers (batch-norm running statistics) are *copied* before every pass made here, so a curvature
or trial-loss evaluation never changes the model's state: only the optimiser's gradient pass, an
ordinary call of the module, updates running statistics. In training mode batch norm normalises
with the batch statistics, so the copies do not change any value computed here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from adamqlr.losses import Loss

__all__ = [
    "CURVATURES",
    "TensorDict",
    "copied_buffers",
    "ggn_quadratic",
    "hessian_quadratic",
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


def ggn_quadratic(
    model: nn.Module,
    params: Mapping[str, Tensor],
    direction: Mapping[str, Tensor],
    inputs: object,
    targets: Tensor,
    loss: Loss,
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

    Returns:
        A scalar tensor, non-negative up to rounding for convex losses.
    """
    names = list(params)

    def outputs_of(*values: Tensor) -> Tensor:
        return _forward(model, dict(zip(names, values, strict=True)), inputs)

    with torch.no_grad():
        outputs, u = jvp(
            outputs_of,
            tuple(params[n].detach() for n in names),
            tuple(direction[n].detach() for n in names),
        )
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
