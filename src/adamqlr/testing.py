"""Dense float64 oracles: the curvature matrices that the library's products avoid, formed whole.

The library never forms a curvature matrix: :mod:`adamqlr.curvature` gets ``d^T C d`` from one
Jacobian-vector product, :mod:`adamqlr.kfac` keeps Kronecker factors. On a network of a few
hundred parameters the matrices fit in memory, so each identity can be checked against them. This
module is the one place they are built, for the test suite and for the derivation chapters
(:mod:`adamqlr.lens`) alike.

Why these are independent of the fast path: every matrix here comes from ``torch.func``
(``jacrev``, ``hessian``, ``grad`` under ``vmap``) or ``torch.autograd`` applied to the loss's
*value* and the network's forward pass over one flat parameter vector. No closed-form output
Hessian of :mod:`adamqlr.losses`, no layer-wise JVP, no hook and nothing of :mod:`adamqlr.curvature`
or :mod:`adamqlr.kfac` enters; a loss is used only through ``loss(outputs, targets)`` (or its
``value``), so a test can pass a loss written again from torch primitives.

Conventions: every matrix is the curvature of the *mean* mini-batch loss
``f = (1/N) sum_n l_n`` with respect to the flattened parameters, in the order of
``model.named_parameters()`` (:func:`flat_params`). A model with batch norm is evaluated through a
copy without running statistics (:func:`without_running_stats`: the same train-mode function,
without the in-place buffer update that ``torch.func`` rejects).

* :func:`dense_jacobian`: ``J``, all outputs by all parameters;
* :func:`dense_output_hessian`: ``H_L``, the Hessian of the loss with respect to the outputs;
* :func:`dense_ggn`: the generalised Gauss-Newton matrix ``G = J^T H_L J``;
* :func:`dense_hessian`: ``H = d^2 f / d theta^2``;
* :func:`dense_residual_term`: ``R = H - G``, the network's own curvature weighted by residuals;
* :func:`dense_fisher` and :func:`dense_empirical_fisher`: the true Fisher (the expectation over
  the model's predictive distribution computed exactly) and the empirical Fisher;
* :func:`per_example_grads` and :func:`dense_gradient`: the gradients they are built from;
* :func:`ggn_gram`: ``V^T G V`` for a few vectors, from per-example Jacobians, without ``G``;
* :func:`quadratic`: ``v^T M v`` for a dense matrix and a direction.

All of them are quadratic (or worse) in the number of parameters: test and teaching tools only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, vmap

from adamqlr.losses import CrossEntropyLoss, Loss, SquaredErrorLoss

__all__ = [
    "FlatParams",
    "LossValue",
    "dense_empirical_fisher",
    "dense_fisher",
    "dense_ggn",
    "dense_gradient",
    "dense_hessian",
    "dense_jacobian",
    "dense_output_hessian",
    "dense_residual_term",
    "flat_params",
    "flatten",
    "ggn_gram",
    "named_params",
    "outputs_function",
    "per_example_grads",
    "quadratic",
    "without_running_stats",
]

#: A loss as a function of the outputs and targets, returning the mean loss (a scalar tensor).
LossValue = Callable[[Tensor, Tensor], Tensor]


# ------------------------------------------------------------------------- flat parameters
@dataclass(frozen=True)
class FlatParams:
    """A model's parameters as one flat vector, and the way back.

    Attributes:
        names: Parameter names, in ``model.named_parameters()`` order.
        shapes: Their shapes.
        vector: The concatenated, detached values.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    vector: Tensor

    @property
    def sizes(self) -> list[int]:
        """Number of entries of each parameter."""
        return [math.prod(s) for s in self.shapes]

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat vector (or the last dimension of a batch of them) into named tensors.

        Raises:
            ValueError: If the last dimension does not match the number of parameters.
        """
        if flat.shape[-1] != self.vector.numel():
            raise ValueError(
                f"invalid flat vector: last dimension {flat.shape[-1]} (expected "
                f"{self.vector.numel()} parameters)"
            )
        lead = flat.shape[:-1]
        parts = torch.split(flat, self.sizes, dim=-1)
        return {
            n: part.reshape(tuple(lead) + tuple(shape))
            for n, shape, part in zip(self.names, self.shapes, parts, strict=True)
        }

    def flatten(self, named: Mapping[str, Tensor], batch_dims: int = 0) -> Tensor:
        """Concatenate named tensors (with ``batch_dims`` leading dimensions) into flat vectors.

        The order is this object's, whatever the order of ``named``.

        Raises:
            KeyError: If a parameter is missing from ``named``.
        """
        return torch.cat(
            [named[n].reshape(*named[n].shape[:batch_dims], -1) for n in self.names], dim=-1
        )


def flat_params(model: nn.Module) -> FlatParams:
    """Return the model's parameters as a :class:`FlatParams` (values detached)."""
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    return FlatParams(
        names=tuple(n for n, _ in named),
        shapes=tuple(p.shape for _, p in named),
        vector=torch.cat([p.reshape(-1) for _, p in named]),
    )


def named_params(model: nn.Module) -> dict[str, Tensor]:
    """Return ``{name: detached parameter}`` in ``model.named_parameters()`` order."""
    return {n: p.detach() for n, p in model.named_parameters()}


def flatten(tensors: Mapping[str, Tensor]) -> Tensor:
    """Concatenate the tensors of a mapping, flattened, in the mapping's order."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def quadratic(matrix: Tensor, direction: Tensor | Mapping[str, Tensor]) -> float:
    """Return ``v^T M v`` for a dense matrix ``M`` and a direction ``v``.

    ``direction`` is a flat vector, or named tensors flattened in the mapping's order (which must
    be the matrix's parameter order).
    """
    v = direction if isinstance(direction, Tensor) else flatten(direction)
    return float(v @ matrix @ v)


# ------------------------------------------------------------------------ the flat function
def without_running_stats(model: nn.Module) -> nn.Module:
    """Return a deep copy whose batch norms keep no running statistics (same train-mode function).

    In training mode batch norm normalises with the batch statistics whether or not it tracks
    running ones, so the copy computes the same function; it just has no in-place buffer update,
    which ``torch.func.hessian`` (``vmap`` over forward mode) and vmapped products reject. A model
    without batch norm is copied unchanged.
    """
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
    return model


def outputs_function(
    model: nn.Module,
    inputs: object,
    *,
    select: Callable[[object], Tensor] | None = None,
) -> tuple[Callable[[Tensor], Tensor], FlatParams]:
    """Return the network's outputs as a function of its flat parameters, and those parameters.

    Args:
        model: The network (batch norm allowed: see :func:`without_running_stats`).
        inputs: What ``model`` is called with (a tensor, or anything the model accepts).
        select: If given, applied to the model's raw output to get the output tensor (for models
            that return a tuple or a structured output).

    Returns:
        ``(outputs, fp)``: ``outputs(flat)`` runs the network at the flat parameters ``flat``;
        ``fp.vector`` is the model's current point.
    """
    fixed = without_running_stats(model)
    fp = flat_params(fixed)

    def outputs(flat: Tensor) -> Tensor:
        out = functional_call(fixed, fp.unflatten(flat), (inputs,))
        return out if select is None else select(out)

    return outputs, fp


def _value(loss: Loss | LossValue) -> LossValue:
    return loss.value if isinstance(loss, Loss) else loss


def _point(fp: FlatParams, at: Tensor | None) -> Tensor:
    if at is None:
        return fp.vector
    if at.shape != fp.vector.shape:
        raise ValueError(
            f"invalid at: shape {tuple(at.shape)} (expected {tuple(fp.vector.shape)}, the flat "
            "parameters)"
        )
    return at


# ------------------------------------------------------------------------- dense matrices
def dense_jacobian(
    model: nn.Module,
    inputs: object,
    *,
    at: Tensor | None = None,
    select: Callable[[object], Tensor] | None = None,
) -> Tensor:
    """Return ``J = d z / d theta``, all outputs (flattened) by all flat parameters.

    Built by ``torch.func.jacrev`` over the whole batch's forward pass (no per-example ``vmap``).

    Args:
        model: The network.
        inputs: The batch's inputs.
        at: Flat parameters to evaluate at (default: the model's own).
        select: As for :func:`outputs_function`.

    Returns:
        The ``(outputs.numel(), P)`` matrix.
    """
    outputs, fp = outputs_function(model, inputs, select=select)
    theta = _point(fp, at)
    z = outputs(theta)
    return jacrev(outputs)(theta).reshape(z.numel(), theta.numel())


def dense_output_hessian(loss: Loss | LossValue, outputs: Tensor, targets: Tensor) -> Tensor:
    """Return ``H_L``, the Hessian of the loss with respect to the flattened outputs.

    By ``torch.func.hessian`` of the loss's value; no closed form.

    Returns:
        The ``(outputs.numel(), outputs.numel())`` matrix.
    """
    value = _value(loss)
    z = outputs.detach()
    return hessian(lambda flat: value(flat.reshape(z.shape), targets))(z.reshape(-1))


def dense_ggn(
    model: nn.Module,
    inputs: object,
    targets: Tensor,
    loss: Loss | LossValue,
    *,
    at: Tensor | None = None,
    select: Callable[[object], Tensor] | None = None,
) -> Tensor:
    """Return the generalised Gauss-Newton matrix ``G = J^T H_L J`` (P x P) of the mean loss.

    ``J`` is :func:`dense_jacobian` and ``H_L`` :func:`dense_output_hessian`, both from automatic
    differentiation, so this oracle shares no closed form with
    :func:`adamqlr.curvature.ggn_quadratic`.

    Args:
        model: The network.
        inputs: The batch's inputs.
        targets: Its targets.
        loss: A :class:`~adamqlr.losses.Loss` or any ``(outputs, targets) -> mean loss``.
        at: Flat parameters to evaluate at (default: the model's own).
        select: As for :func:`outputs_function`.
    """
    outputs, fp = outputs_function(model, inputs, select=select)
    theta = _point(fp, at)
    z = outputs(theta)
    jac = jacrev(outputs)(theta).reshape(z.numel(), theta.numel())
    h_out = dense_output_hessian(loss, z, targets)
    return jac.T @ h_out @ jac


def dense_hessian(
    model: nn.Module,
    inputs: object,
    targets: Tensor,
    loss: Loss | LossValue,
    *,
    method: Literal["autograd", "func"] = "autograd",
    at: Tensor | None = None,
) -> Tensor:
    """Return the Hessian ``H`` (P x P) of the mean loss with respect to the flat parameters.

    Args:
        model: The network.
        inputs: The batch's inputs.
        targets: Its targets.
        loss: A :class:`~adamqlr.losses.Loss` or any ``(outputs, targets) -> mean loss``.
        method: ``"autograd"`` (default): row by row with ``torch.autograd`` double backward
            (reverse over reverse, no ``vmap``). ``"func"``: ``torch.func.hessian`` (forward over
            reverse under ``vmap``), which torch 2.13 gets wrong through a train-mode batch norm
            whose input depends on the parameters; use it only where that does not arise.
        at: Flat parameters to evaluate at (default: the model's own).

    Raises:
        ValueError: For another ``method``.
    """
    value = _value(loss)
    outputs, fp = outputs_function(model, inputs)
    theta = _point(fp, at)
    if method == "func":
        return hessian(lambda flat: value(outputs(flat), targets))(theta)
    if method != "autograd":
        raise ValueError(f"invalid method: {method!r} (expected 'autograd' or 'func')")
    t = theta.detach().clone().requires_grad_(True)
    g = torch.autograd.grad(value(outputs(t), targets), t, create_graph=True)[0]
    rows = [torch.autograd.grad(g[i], t, retain_graph=True)[0] for i in range(t.numel())]
    return torch.stack(rows)


def dense_gradient(
    model: nn.Module,
    inputs: object,
    targets: Tensor,
    loss: Loss | LossValue,
    *,
    at: Tensor | None = None,
) -> Tensor:
    """Return the gradient of the mean loss with respect to the flat parameters (``torch.func``)."""
    value = _value(loss)
    outputs, fp = outputs_function(model, inputs)
    return grad(lambda flat: value(outputs(flat), targets))(_point(fp, at))


def dense_residual_term(
    model: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss | LossValue
) -> Tensor:
    """Return ``R = (1/N) sum_n sum_k (dl_n/dz_nk) d^2 z_nk / d theta^2`` (P x P), so ``H = G + R``.

    Computed as the Hessian (``torch.func.hessian``) of ``theta -> sum_n w_n . z_n(theta)`` with
    the output gradients ``w_n = d f / d z_n`` of the *mean* loss held fixed: the network's own
    curvature weighted by the residuals, the part of the Hessian that the GGN drops.
    """
    value = _value(loss)
    outputs, fp = outputs_function(model, inputs)
    z = outputs(fp.vector).detach().requires_grad_(True)
    (weights,) = torch.autograd.grad(value(z, targets), z)
    return hessian(lambda flat: (outputs(flat) * weights).sum())(fp.vector)


# ------------------------------------------------------------ per-example gradients, Fishers
def _require_no_buffers(model: nn.Module) -> dict[str, Tensor]:
    buffers = dict(model.named_buffers())
    if buffers:
        raise ValueError(
            f"invalid model: it has buffers {sorted(buffers)[:3]}...; per-example gradients "
            "are defined for networks without buffers (no batch norm)"
        )
    return buffers


def _check_loss(loss: Loss) -> None:
    if not isinstance(loss, (CrossEntropyLoss, SquaredErrorLoss)):
        raise ValueError(f"invalid loss: {loss!r} (expected CrossEntropyLoss or SquaredErrorLoss)")
    if isinstance(loss, SquaredErrorLoss) and loss.curvature_count is not None:
        raise ValueError(f"invalid loss: {loss!r} (curvature_count must be None here)")


def per_example_grads(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss: Loss,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Return the gradient of each example's loss ``l_n``, flattened: shape ``(N, P)``.

    ``l_n`` is ``loss`` evaluated on the batch made of example ``n`` alone (``torch.func.grad``
    under ``vmap``), so the mean of the rows is the gradient of the mean loss (for cross-entropy
    without ignored positions).

    Args:
        model: A network without buffers; ``model(inputs[n:n+1])`` is one example's output.
        inputs: Inputs, examples first.
        targets: Targets, examples first.
        loss: :class:`~adamqlr.losses.CrossEntropyLoss` or
            :class:`~adamqlr.losses.SquaredErrorLoss`.
        chunk_size: Examples per vectorised chunk (``None``: all at once); bounds the memory.

    Returns:
        The per-example gradients, in the parameter order of :func:`flat_params`.

    Raises:
        ValueError: If the model has buffers or the loss is not one of the two supported.
    """
    buffers = _require_no_buffers(model)
    _check_loss(loss)
    fp = flat_params(model)
    params = fp.unflatten(fp.vector)

    def loss_one(p: dict[str, Tensor], x: Tensor, t: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss.value(out, t.unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size)(
        params, inputs, targets
    )
    return fp.flatten(grads, batch_dims=1)


def _fisher_samples(loss: Loss, outputs: Tensor) -> tuple[Tensor, Tensor]:
    """Return targets ``(N, S, ...)`` and weights ``(N, S)`` with exact weighted second moments.

    For cross-entropy the S = C samples are all classes with weights ``softmax(z)``. For the squared
    error (a unit-variance Gaussian around the output) they are the 2K sigma points
    ``z +/- sqrt(K) e_k`` with weights ``1/(2K)``, which reproduce the mean and covariance exactly,
    and the per-example gradient is linear in the target, so its second moment is exact too.
    """
    n = outputs.shape[0]
    if isinstance(loss, CrossEntropyLoss):
        classes = outputs.shape[-1]
        targets = torch.arange(classes).expand(n, classes)
        return targets, torch.softmax(outputs, dim=-1)
    k = outputs.reshape(n, -1).shape[1]
    eye = torch.eye(k, dtype=outputs.dtype) * math.sqrt(k)
    shifts = torch.cat([eye, -eye]).reshape(2 * k, *outputs.shape[1:])
    targets = outputs.unsqueeze(1) + shifts.unsqueeze(0)
    return targets, torch.full((n, 2 * k), 1.0 / (2 * k), dtype=outputs.dtype)


def dense_fisher(model: nn.Module, inputs: Tensor, loss: Loss) -> Tensor:
    """Return the true Fisher ``F`` (P x P) of the model's predictive distribution, exactly.

    ``F = (1/N) sum_n sum_s w_ns grad l_n(y_ns) grad l_n(y_ns)^T``, where the targets ``y_ns`` and
    weights ``w_ns`` reproduce the expectation over ``y ~ p(y | x_n)`` exactly (all classes weighted
    by the softmax for cross-entropy; sigma points for the unit-variance Gaussian of the squared
    error). Built from per-example gradients only: no output Hessian enters, which makes it an
    oracle for :func:`dense_ggn` too (the two agree for these losses).

    Raises:
        ValueError: If the model has buffers or the loss is not supported.
    """
    _check_loss(loss)
    with torch.no_grad():
        outputs = model(inputs)
    sample_targets, weights = _fisher_samples(loss, outputs)
    n, s = weights.shape
    feature_shape = inputs.shape[1:]
    rep_inputs = inputs.unsqueeze(1).expand(n, s, *feature_shape).reshape(n * s, *feature_shape)
    grads = per_example_grads(
        model, rep_inputs, sample_targets.reshape(n * s, *sample_targets.shape[2:]), loss
    )
    weighted = grads * weights.reshape(-1, 1).sqrt()
    return weighted.T @ weighted / n


def dense_empirical_fisher(model: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss) -> Tensor:
    """Return the empirical Fisher ``(1/N) sum_n g_n g_n^T`` (P x P) with the data's targets.

    Raises:
        ValueError: If the model has buffers or the loss is not supported.
    """
    grads = per_example_grads(model, inputs, targets, loss)
    return grads.T @ grads / grads.shape[0]


def ggn_gram(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss: Loss | LossValue,
    vectors: Sequence[Tensor],
) -> Tensor:
    """Return ``V^T G V`` for flat parameter vectors ``V`` and the GGN ``G`` of the mean loss.

    ``G = (1/N) sum_n J_n^T H_n J_n`` with per-example Jacobians ``J_n`` of the outputs with
    respect to the flat parameters and per-example output Hessians ``H_n`` of the loss of the
    batch made of example ``n`` alone, both from ``torch.func`` under ``vmap``: the same matrix as
    :func:`dense_ggn` (for a mean over examples), without forming it:
    ``U_n = J_n V``, then ``(1/N) sum_n U_n^T H_n U_n``.

    Args:
        model: A network without buffers, with one output row per example.
        inputs: The batch's inputs.
        targets: Its targets.
        loss: A :class:`~adamqlr.losses.Loss` or any ``(outputs, targets) -> mean loss``.
        vectors: Flat vectors in the order of ``model.named_parameters()``.

    Returns:
        The ``k x k`` matrix (float64).
    """
    value = _value(loss)
    fp = flat_params(model)

    def output_one(flat: Tensor, x: Tensor) -> Tensor:
        return functional_call(model, fp.unflatten(flat), (x.unsqueeze(0),)).squeeze(0)

    def term(z: Tensor, t: Tensor) -> Tensor:
        return value(z.unsqueeze(0), t.unsqueeze(0))

    jac = vmap(jacrev(output_one), in_dims=(None, 0))(fp.vector, inputs)  # (N, K, P)
    with torch.no_grad():
        outputs = model(inputs)
    h_out = vmap(hessian(term))(outputs.reshape(jac.shape[:2]), targets)  # (N, K, K)
    u = jac.reshape(jac.shape[0], jac.shape[1], -1) @ torch.stack(list(vectors)).double().T
    return torch.einsum("nki,nkl,nlj->ij", u, h_out, u) / inputs.shape[0]
