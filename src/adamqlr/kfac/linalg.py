"""The dense linear algebra of a K-FAC step: factor statistics, damped Cholesky factors, solves.

* :func:`symmetric_gram` -- ``X^T X``, computing only the blocks on and below the diagonal when
  ``X`` is tall and wide (about half the multiply-adds of a full product), then mirroring them.
* :func:`homogeneous_gram` -- the Gram matrix of ``[X, 1]`` (an input factor with a bias) without
  forming ``[X, 1]``: ``X^T X``, the column sums and the row count.
* :func:`cholesky_or_none` -- the lower Cholesky factor of a damped factor, or ``None`` when it is
  not numerically positive definite.
* :func:`kronecker_solve` -- ``G^{-1} M A^{-1}`` for ``G = L_G L_G^T`` and ``A = L_A L_A^T`` by four
  triangular solves; no inverse is ever formed.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cholesky_or_none", "homogeneous_gram", "kronecker_solve", "symmetric_gram"]

#: Width of the column blocks of :func:`symmetric_gram`, and the smallest row count and width for
#: which it works block by block (below them one full product is as fast).
GRAM_BLOCK = 128
GRAM_MIN_ROWS = 512


def symmetric_gram(x: Tensor, out: Tensor | None = None, block: int = GRAM_BLOCK) -> Tensor:
    """Return ``x^T x`` for ``x`` of shape ``(R, n)``, written into ``out`` if given.

    For ``R >= GRAM_MIN_ROWS`` and ``n >= 2 * block`` only the blocks ``(i, j)`` with ``j <= i`` of
    width ``block`` are multiplied; each strictly-lower block is then copied to its mirror.

    Args:
        x: The rows.
        out: Optional ``(n, n)`` tensor (possibly a view) to write the result into.
        block: Column block width (for tests; default :data:`GRAM_BLOCK`).

    Returns:
        The symmetric ``(n, n)`` Gram matrix (``out`` when given).
    """
    rows, n = x.shape
    if rows < GRAM_MIN_ROWS or n < 2 * block:
        if out is None:
            return x.T @ x
        return torch.mm(x.T, x, out=out) if out.is_contiguous() else out.copy_(x.T @ x)
    if out is None:
        out = x.new_empty(n, n)
    for i in range(0, n, block):
        j = min(i + block, n)
        out[i:j, :j] = x[:, i:j].T @ x[:, :j]
        if i:
            out[:i, i:j] = out[i:j, :i].T
    return out


def homogeneous_gram(x: Tensor) -> Tensor:
    """Return the Gram matrix of ``[x, 1]`` (a column of ones appended) without forming it.

    Args:
        x: Rows of shape ``(R, n)``.

    Returns:
        ``[[x^T x, x^T 1], [1^T x, R]]`` of shape ``(n + 1, n + 1)``.
    """
    rows, n = x.shape
    out = x.new_empty(n + 1, n + 1)
    symmetric_gram(x, out=out[:n, :n])
    sums = x.sum(0)
    out[:n, n] = sums
    out[n, :n] = sums
    out[n, n] = rows
    return out


def cholesky_or_none(m: Tensor) -> Tensor | None:
    """Return the lower Cholesky factor of the symmetric matrix ``m``, or ``None`` if it fails.

    Only the lower triangle of ``m`` is read.
    """
    chol, info = torch.linalg.cholesky_ex(m)
    return chol if int(info) == 0 else None


def kronecker_solve(g_chol: Tensor, a_chol: Tensor, m: Tensor) -> Tensor:
    """Return ``G^{-1} m A^{-1}`` for ``G = g_chol g_chol^T`` and ``A = a_chol a_chol^T``.

    Four triangular solves: two from the left with ``g_chol``, two from the right with
    ``a_chol`` (both factors symmetric, so ``(A^{-1} m^T)^T = m A^{-1}``).
    """
    m = torch.linalg.solve_triangular(g_chol, m, upper=False)
    m = torch.linalg.solve_triangular(g_chol.mT, m, upper=True)
    m = torch.linalg.solve_triangular(a_chol.mT, m, upper=True, left=False)
    return torch.linalg.solve_triangular(a_chol, m, upper=False, left=False)
