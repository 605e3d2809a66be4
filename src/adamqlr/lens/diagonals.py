"""Diagonal curvature estimates, exactly: Adam's second moment beside the Fisher and the GGN.

The book's chapter "Adam as a diagonal second-order method" reads Adam's update as a damped Newton
step with the diagonal curvature ``diag(sqrt(v_hat)) + eps I``, and asks what ``v_hat`` estimates.
This module computes, for a network small enough for per-example gradients:

* the mean gradient ``g_bar`` and the diagonal of the empirical Fisher
  ``diag F_emp = (1/N) sum_n g_n^2`` (:func:`gradient_moments`);
* the diagonal of the generalised Gauss-Newton matrix ``diag G = (1/N) sum_n diag(J_n^T H_n J_n)``
  (:func:`ggn_diagonal`), from the factorisation ``H_n = A_n A_n^T`` of each example's output
  Hessian, ``diag G = (1/N) sum_n sum_c (J_n^T a_nc)^2``;
* both through ``torch.func`` for any network without buffers, or, for networks whose parameters
  all belong to ``nn.Linear`` layers (the paper's MLPs), layer by layer in a few batched backward
  passes: the per-example gradient of a weight is the outer product ``delta_n x_n^T`` of the
  back-propagated vector and the layer input, so the sum of its squares over examples is the
  matrix product ``(delta^2)^T (x^2)`` (the trick behind BackPACK's exact diagonals);
* the expectation of the squared mini-batch gradient over batches of ``B`` examples drawn without
  replacement from the ``N`` (:func:`expected_squared_batch_gradient`), which is what Adam's
  ``v`` averages, with the exact enumeration used to check it
  (:func:`enumerate_squared_batch_gradient`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from adamqlr.losses import CrossEntropyLoss, Loss
from adamqlr.testing import _check_loss, _require_no_buffers, flat_params, per_example_grads

__all__ = [
    "METHODS",
    "enumerate_squared_batch_gradient",
    "expected_squared_batch_gradient",
    "ggn_diagonal",
    "gradient_moments",
    "output_hessian_factor",
]


METHODS: tuple[str, ...] = ("auto", "layerwise", "generic")


def _linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]] | None:
    """Return the model's ``nn.Linear`` layers if every parameter belongs to one, else None."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    owned = {id(p) for _, m in layers for p in m.parameters(recurse=False)}
    if not layers or any(id(p) not in owned for p in model.parameters()):
        return None
    return layers


def _choose(model: nn.Module, inputs: Tensor, method: str) -> list[tuple[str, nn.Linear]] | None:
    if method not in METHODS:
        raise ValueError(f"invalid method: {method!r} (expected one of {METHODS})")
    layers = _linear_layers(model) if method != "generic" and inputs.dim() == 2 else None
    if method == "layerwise" and layers is None:
        raise ValueError(
            "invalid method: 'layerwise' needs 2-D inputs and every parameter in an nn.Linear layer"
        )
    return layers


def _layerwise_square_sums(
    model: nn.Module,
    layers: list[tuple[str, nn.Linear]],
    inputs: Tensor,
    scalars: Sequence[Callable[..., Tensor]],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Sum over examples (and over ``scalars``) of the squared per-example gradients, by layer.

    Each scalar ``s(z)`` must be a sum over examples of a function of that example's outputs, so
    that its gradient with respect to a layer's output row ``n`` is example ``n``'s alone. Returns
    ``(sums, squares)`` keyed by parameter name: the gradient of the sum over scalars of ``s`` and
    the sum over scalars and examples of the squared per-example gradients.
    """
    captured: dict[str, tuple[Tensor, Tensor]] = {}
    handles = []
    for name, layer in layers:

        def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor, name: str = name):
            captured[name] = (args[0].detach(), out)

        handles.append(layer.register_forward_hook(hook))
    try:
        outputs = model(inputs)
    finally:
        for h in handles:
            h.remove()
    names = [n for n, _ in layers]
    layer_outputs = [captured[n][1] for n in names]
    sums: dict[str, Tensor] = {}
    squares: dict[str, Tensor] = {}
    for k, scalar in enumerate(scalars):
        deltas = torch.autograd.grad(
            scalar(outputs), layer_outputs, retain_graph=k < len(scalars) - 1
        )
        for (name, layer), delta in zip(layers, deltas, strict=True):
            x = captured[name][0].double()
            if x.dim() != 2:
                raise ValueError(
                    f"invalid method: layer {name!r} sees inputs of shape {tuple(x.shape)}; the "
                    "layer-wise diagonals need one row per example (use method='generic')"
                )
            delta = delta.double()
            x2 = x.reshape(-1, x.shape[-1])
            d2 = delta.reshape(-1, delta.shape[-1])
            prefix = f"{name}." if name else ""
            parts = {
                f"{prefix}weight": (d2.T @ x2, d2.pow(2).T @ x2.pow(2)),
            }
            if layer.bias is not None:
                parts[f"{prefix}bias"] = (d2.sum(0), d2.pow(2).sum(0))
            for pname, (grad_sum, square_sum) in parts.items():
                sums[pname] = sums.get(pname, 0) + grad_sum
                squares[pname] = squares.get(pname, 0) + square_sum
    return sums, squares


def gradient_moments(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss: Loss,
    *,
    chunk_size: int | None = 256,
    method: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Return ``g_bar = (1/N) sum_n g_n`` and ``diag F_emp = (1/N) sum_n g_n^2`` (flat, length P).

    Args:
        model: A network without buffers.
        inputs: The ``N`` examples' inputs (for the layer-wise method, rows of a 2-D batch).
        targets: Their targets.
        loss: Cross-entropy or squared error.
        chunk_size: Examples per chunk (bounds the memory: ``chunk_size * P`` floats for the
            generic method).
        method: ``"layerwise"`` (networks of ``nn.Linear`` layers and parameter-free layers),
            ``"generic"`` (``torch.func`` per-example gradients, any network without buffers) or
            ``"auto"`` (layer-wise when possible).

    Returns:
        ``(g_bar, diag_f_emp)``, both in the parameter order of
        :func:`adamqlr.testing.flat_params`, accumulated in float64.

    Raises:
        ValueError: If the model has buffers, the loss is not supported, there are no examples,
            or ``method`` is unknown or does not apply.
    """
    n = int(inputs.shape[0])
    if n == 0:
        raise ValueError("invalid inputs: no examples")
    _require_no_buffers(model)
    _check_loss(loss)
    layers = _choose(model, inputs, method)
    if layers is not None:
        step = n if chunk_size is None else max(chunk_size, 1024)
        total: dict[str, Tensor] = {}
        total_sq: dict[str, Tensor] = {}
        for start in range(0, n, step):
            x, t = inputs[start : start + step], targets[start : start + step]

            def summed(z: Tensor, t: Tensor = t) -> Tensor:
                # (number of examples) x (mean loss) = sum of the per-example losses
                return loss.value(z, t) * z.shape[0]

            sums, squares = _layerwise_square_sums(model, layers, x, [summed])
            for k in sums:
                total[k] = total.get(k, 0) + sums[k]
                total_sq[k] = total_sq.get(k, 0) + squares[k]
        return flat_params(model).flatten(total) / n, flat_params(model).flatten(total_sq) / n
    step = n if chunk_size is None else chunk_size
    acc = torch.zeros(flat_params(model).vector.numel(), dtype=torch.float64)
    acc_sq = torch.zeros_like(acc)
    for start in range(0, n, step):
        stop = start + step
        g = per_example_grads(model, inputs[start:stop], targets[start:stop], loss).double()
        acc += g.sum(0)
        acc_sq += g.pow(2).sum(0)
    return acc / n, acc_sq / n


def output_hessian_factor(loss: Loss, outputs: Tensor) -> Tensor:
    """Return ``A_n`` with ``A_n A_n^T = H_n``, the Hessian of example n's loss in its outputs.

    For softmax cross-entropy ``H_n = diag(p) - p p^T`` with ``p = softmax(z_n)``, and
    ``A_n = diag(sqrt(p)) - p sqrt(p)^T``. For half the squared error ``H_n = I`` and ``A_n = I``.

    Args:
        loss: Cross-entropy or squared error.
        outputs: Outputs of shape ``(N, K)``.

    Returns:
        The factors, shape ``(N, K, K)``.

    Raises:
        ValueError: If the loss is not supported or the outputs are not two-dimensional.
    """
    _check_loss(loss)
    if outputs.dim() != 2:
        raise ValueError(f"invalid outputs: shape {tuple(outputs.shape)} (expected (N, K))")
    n, k = outputs.shape
    if isinstance(loss, CrossEntropyLoss):
        p = torch.softmax(outputs, dim=-1)
        sqrt_p = p.sqrt()
        return torch.diag_embed(sqrt_p) - p.unsqueeze(-1) * sqrt_p.unsqueeze(-2)
    return torch.eye(k, dtype=outputs.dtype).expand(n, k, k)


def ggn_diagonal(
    model: nn.Module,
    inputs: Tensor,
    loss: Loss,
    *,
    chunk_size: int | None = 128,
    method: str = "auto",
) -> Tensor:
    """Return the diagonal of the GGN of the mean loss, exactly (flat, length P).

    ``diag G = (1/N) sum_n sum_c (J_n^T a_nc)^2``, with ``J_n`` the per-example Jacobian of the
    outputs and ``a_nc`` the columns of :func:`output_hessian_factor`. The GGN does not depend on
    the targets for these two losses.

    Args:
        model: A network without buffers, with outputs of shape ``(N, K)``.
        inputs: The ``N`` examples' inputs.
        loss: Cross-entropy or squared error.
        chunk_size: Examples per chunk (memory: ``chunk_size * K * P`` floats for the generic
            method).
        method: ``"layerwise"``, ``"generic"`` or ``"auto"``, as for :func:`gradient_moments`.
            The layer-wise method takes one batched backward pass per output dimension.

    Returns:
        ``diag G`` in float64.

    Raises:
        ValueError: If the model has buffers, the loss is not supported, there are no examples,
            or ``method`` is unknown or does not apply.
    """
    buffers = _require_no_buffers(model)
    _check_loss(loss)
    n = int(inputs.shape[0])
    if n == 0:
        raise ValueError("invalid inputs: no examples")
    layers = _choose(model, inputs, method)
    if layers is not None:
        step = n if chunk_size is None else max(chunk_size, 1024)
        total: dict[str, Tensor] = {}
        for start in range(0, n, step):
            x = inputs[start : start + step]
            with torch.no_grad():
                factor = output_hessian_factor(loss, model(x))  # (b, K, K)
            columns = [
                lambda z, c=c, a=factor: (z * a[:, :, c].to(z.dtype)).sum()
                for c in range(factor.shape[-1])
            ]
            _, squares = _layerwise_square_sums(model, layers, x, columns)
            for k, v in squares.items():
                total[k] = total.get(k, 0) + v
        return flat_params(model).flatten(total) / n
    fp = flat_params(model)
    params = fp.unflatten(fp.vector)

    def outputs_one(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, (p, buffers), (x.unsqueeze(0),)).squeeze(0)

    jac_fn = vmap(jacrev(outputs_one), in_dims=(None, 0))
    step = n if chunk_size is None else chunk_size
    acc = torch.zeros(fp.vector.numel(), dtype=torch.float64)
    for start in range(0, n, step):
        x = inputs[start : start + step]
        with torch.no_grad():
            z = model(x)
        factor = output_hessian_factor(loss, z)  # (b, K, K)
        jac = fp.flatten(jac_fn(params, x), batch_dims=2)  # (b, K, P)
        projected = torch.einsum("bkc,bkp->bcp", factor, jac)  # rows J_n^T a_nc
        acc += projected.double().pow(2).sum(dim=(0, 1))
    return acc / n


def expected_squared_batch_gradient(
    mean_grad: Tensor, second_moment: Tensor, n: int, batch_size: int
) -> Tensor:
    """Return ``E[g_B^2]`` over batches of ``B`` of ``N`` examples drawn without replacement.

    With ``g_bar`` the mean and ``m2 = (1/N) sum_n g_n^2`` the second moment of the per-example
    gradients (elementwise),

        E[g_B^2] = g_bar^2 + (N - B) / (B (N - 1)) * (m2 - g_bar^2),

    the square of the mean plus the variance of a sample mean from a finite population.

    Args:
        mean_grad: ``g_bar``.
        second_moment: ``m2``, the diagonal of the empirical Fisher.
        n: Population size ``N`` (>= 2).
        batch_size: ``B`` in ``[1, N]``.

    Returns:
        The expectation, elementwise.

    Raises:
        ValueError: If ``n < 2`` or ``batch_size`` is outside ``[1, n]``.
    """
    if n < 2 or not 1 <= batch_size <= n:
        raise ValueError(f"invalid n/batch_size: {n!r}/{batch_size!r} (need n >= 2, 1 <= B <= n)")
    factor = (n - batch_size) / (batch_size * (n - 1))
    return mean_grad.pow(2) + factor * (second_moment - mean_grad.pow(2))


def enumerate_squared_batch_gradient(per_example: Tensor, batch_size: int) -> Tensor:
    """Return the mean of ``g_B^2`` over *every* batch of ``B`` distinct examples (exact, slow).

    Args:
        per_example: Per-example gradients, shape ``(N, P)``.
        batch_size: ``B``.

    Returns:
        The average over all ``C(N, B)`` batches of the squared batch-mean gradient.

    Raises:
        ValueError: If there are more than 100,000 batches (use a smaller ``N``).
    """
    n = per_example.shape[0]
    count = math.comb(n, batch_size)
    if count > 100_000 or batch_size < 1:
        raise ValueError(
            f"invalid batch_size {batch_size!r} for N={n}: {count} batches to enumerate "
            "(at most 100,000)"
        )
    total = torch.zeros(per_example.shape[1], dtype=torch.float64)
    g = per_example.double()
    for idx in itertools.combinations(range(n), batch_size):
        total += g[list(idx)].mean(0).pow(2)
    return total / count
