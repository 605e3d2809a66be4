"""Diagonal curvature estimates, exactly: Adam's second moment beside the Fisher and the GGN.

The book's chapter "Adam as a diagonal second-order method" reads Adam's update as a damped Newton
step with the diagonal curvature ``diag(sqrt(v_hat)) + eps I``, and asks what ``v_hat`` estimates.
This module computes, for a network small enough for per-example gradients:

* the mean gradient ``g_bar`` and the diagonal of the empirical Fisher
  ``diag F_emp = (1/N) sum_n g_n^2`` (:func:`gradient_moments`);
* the diagonal of the generalised Gauss-Newton matrix ``diag G = (1/N) sum_n diag(J_n^T H_n J_n)``
  (:func:`ggn_diagonal`), from the factorisation ``H_n = A_n A_n^T`` of each example's output
  Hessian, ``diag G = (1/N) sum_n sum_c (J_n^T a_nc)^2``;
* the expectation of the squared mini-batch gradient over batches of ``B`` examples drawn without
  replacement from the ``N`` (:func:`expected_squared_batch_gradient`), which is what Adam's
  ``v`` averages, with the exact enumeration used to check it
  (:func:`enumerate_squared_batch_gradient`).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from adamqlr.lens.products import _check_loss, _require_no_buffers, flat_params, per_example_grads
from adamqlr.losses import CrossEntropyLoss, Loss

__all__ = [
    "enumerate_squared_batch_gradient",
    "expected_squared_batch_gradient",
    "ggn_diagonal",
    "gradient_moments",
    "output_hessian_factor",
]


def gradient_moments(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss: Loss,
    *,
    chunk_size: int | None = 256,
) -> tuple[Tensor, Tensor]:
    """Return ``g_bar = (1/N) sum_n g_n`` and ``diag F_emp = (1/N) sum_n g_n^2`` (flat, length P).

    Args:
        model: A network without buffers.
        inputs: The ``N`` examples' inputs.
        targets: Their targets.
        loss: Cross-entropy or squared error.
        chunk_size: Examples per vectorised chunk (bounds the memory: ``chunk_size * P`` floats).

    Returns:
        ``(g_bar, diag_f_emp)``, both in the parameter order of
        :func:`adamqlr.lens.products.flat_params`, accumulated in float64.

    Raises:
        ValueError: If the model has buffers, the loss is not supported, or there are no examples.
    """
    n = int(inputs.shape[0])
    if n == 0:
        raise ValueError("invalid inputs: no examples")
    step = n if chunk_size is None else chunk_size
    total = torch.zeros(flat_params(model).vector.numel(), dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, n, step):
        stop = start + step
        g = per_example_grads(model, inputs[start:stop], targets[start:stop], loss).double()
        total += g.sum(0)
        total_sq += g.pow(2).sum(0)
    return total / n, total_sq / n


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
) -> Tensor:
    """Return the diagonal of the GGN of the mean loss, exactly (flat, length P).

    ``diag G = (1/N) sum_n sum_c (J_n^T a_nc)^2``, with ``J_n`` the per-example Jacobian of the
    outputs and ``a_nc`` the columns of :func:`output_hessian_factor`. The GGN does not depend on
    the targets for these two losses.

    Args:
        model: A network without buffers, with outputs of shape ``(N, K)``.
        inputs: The ``N`` examples' inputs.
        loss: Cross-entropy or squared error.
        chunk_size: Examples per vectorised chunk (memory: ``chunk_size * K * P`` floats).

    Returns:
        ``diag G`` in float64.

    Raises:
        ValueError: If the model has buffers, the loss is not supported, or there are no examples.
    """
    buffers = _require_no_buffers(model)
    _check_loss(loss)
    n = int(inputs.shape[0])
    if n == 0:
        raise ValueError("invalid inputs: no examples")
    fp = flat_params(model)
    params = fp.unflatten(fp.vector)

    def outputs_one(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, (p, buffers), (x.unsqueeze(0),)).squeeze(0)

    jac_fn = vmap(jacrev(outputs_one), in_dims=(None, 0))
    step = n if chunk_size is None else chunk_size
    total = torch.zeros(fp.vector.numel(), dtype=torch.float64)
    for start in range(0, n, step):
        x = inputs[start : start + step]
        with torch.no_grad():
            z = model(x)
        factor = output_hessian_factor(loss, z)  # (b, K, K)
        jac = fp.flatten(jac_fn(params, x), batch_dims=2)  # (b, K, P)
        projected = torch.einsum("bkc,bkp->bcp", factor, jac)  # rows J_n^T a_nc
        total += projected.double().pow(2).sum(dim=(0, 1))
    return total / n


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
