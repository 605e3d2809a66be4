"""Bootstrap intervals for correlations that share one variable.

The chapter "Adam as a diagonal second-order method" correlates ``log v_hat`` with the logs of
several exact diagonals, coordinate by coordinate, and compares the correlations.
:func:`bootstrap_correlations` resamples the coordinates (rows) with replacement, *jointly* for all
the variables, and returns each Pearson correlation with its percentile interval; because every
resample is shared, it also gives percentile intervals for the paired differences between the
correlations.

The rows are treated as independent draws. Parameters of one network are not (weights of one unit
share its inputs and outputs), so the intervals are a lower bound on the uncertainty, not an
exact account of it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

__all__ = ["bootstrap_correlations"]

#: Resamples evaluated together (bounds the memory to about ``chunk x rows x variables`` floats).
_CHUNK = 64


def _weighted_pearson(ref: np.ndarray, others: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Pearson correlation of ``ref`` (``(n,)``) with each row of ``others`` (``(K, n)``).

    ``weights`` is ``(R, n)`` (one row per resample); the result is ``(K, R)``.
    """
    total = weights.sum(-1, keepdims=True)  # (R, 1)
    ref_c = ref[None, :] - (weights @ ref)[:, None] / total  # (R, n)
    wr = weights * ref_c
    var_r = (wr * ref_c).sum(-1)  # (R,)
    out = np.empty((others.shape[0], weights.shape[0]))
    for k, col in enumerate(others):
        col_c = col[None, :] - (weights @ col)[:, None] / total
        cov = (wr * col_c).sum(-1)
        var_c = (weights * col_c * col_c).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[k] = cov / np.sqrt(var_r * var_c)
    return out


def bootstrap_correlations(
    reference: ArrayLike,
    others: Mapping[str, ArrayLike],
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the correlations of ``reference`` with each of ``others`` and bootstrap intervals.

    Each resample draws ``n`` row indices with replacement (``numpy.random.default_rng(seed)``),
    or with ``groups`` as many cluster labels as there are distinct labels, and recomputes every
    correlation on the same draw (rows weighted by how often they, or their cluster, were drawn).
    Intervals are percentile intervals:
    the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of the resampled values.

    Args:
        reference: The shared variable, shape ``(n,)``.
        others: The other variables by name, each of shape ``(n,)``.
        resamples: Number of bootstrap resamples (>= 1).
        level: Coverage of the intervals, in (0, 1).
        seed: Seed of the resampling.
        groups: Optional cluster label of each row, shape ``(n,)`` (at least 2 distinct labels):
            resample clusters instead of rows.

    Returns:
        ``(correlations, differences)``. ``correlations`` is indexed by name with columns
        ``corr`` (on all rows), ``low``, ``high``; ``differences`` has one row per pair
        ``(first, second)`` of names (in the order given) with ``difference`` (``corr(first) -
        corr(second)`` on all rows), ``low``, ``high``.

    Raises:
        ValueError: For mismatched or too short (``n < 3``) inputs, non-finite values, a constant
            variable, no ``others``, ``resamples < 1``, ``level`` outside (0, 1), or ``groups`` of
            the wrong shape or with fewer than 2 clusters.
    """
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 1 or ref.shape[0] < 3:
        raise ValueError(f"invalid reference: shape {ref.shape} (expected (n,) with n >= 3)")
    if not others:
        raise ValueError("invalid others: no variable to correlate with")
    names = list(others)
    cols = []
    for name in names:
        col = np.asarray(others[name], dtype=np.float64)
        if col.shape != ref.shape:
            raise ValueError(
                f"invalid variable {name!r}: shape {col.shape} (expected {ref.shape}, as reference)"
            )
        cols.append(col)
    stacked = np.stack(cols)  # (K, n)
    for name, col in zip(["reference", *names], [ref, *cols], strict=True):
        if not np.all(np.isfinite(col)):
            raise ValueError(f"invalid variable {name!r}: it has non-finite values")
        if np.ptp(col) == 0.0:
            raise ValueError(f"invalid variable {name!r}: it is constant")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"invalid resamples: {resamples!r} (expected an int >= 1)")
    if not 0.0 < level < 1.0:
        raise ValueError(f"invalid level: {level!r} (expected in (0, 1))")

    n = ref.shape[0]
    if groups is None:
        labels, n_groups = np.arange(n), n
    else:
        raw = np.asarray(groups)
        if raw.shape != ref.shape:
            raise ValueError(f"invalid groups: shape {raw.shape} (expected {ref.shape})")
        _, labels = np.unique(raw, return_inverse=True)
        n_groups = int(labels.max()) + 1
        if n_groups < 2:
            raise ValueError(f"invalid groups: {n_groups} cluster (expected at least 2)")
    point = _weighted_pearson(ref, stacked, np.ones((1, n)))[:, 0]
    rng = np.random.default_rng(seed)
    boot = np.empty((len(names), resamples))
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        drawn = rng.integers(0, n_groups, size=(size, n_groups))
        counts = np.stack([np.bincount(d, minlength=n_groups) for d in drawn]).astype(np.float64)
        boot[:, start : start + size] = _weighted_pearson(ref, stacked, counts[:, labels])
    quantiles = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    low, high = np.nanquantile(boot, quantiles, axis=1)
    correlations = pd.DataFrame(
        {"corr": point, "low": low, "high": high}, index=pd.Index(names, name="variable")
    )
    rows = []
    for i, j in itertools.combinations(range(len(names)), 2):
        d_low, d_high = np.nanquantile(boot[i] - boot[j], quantiles)
        rows.append(
            {
                "first": names[i],
                "second": names[j],
                "difference": point[i] - point[j],
                "low": d_low,
                "high": d_high,
            }
        )
    differences = pd.DataFrame(rows, columns=["first", "second", "difference", "low", "high"])
    return correlations, differences
