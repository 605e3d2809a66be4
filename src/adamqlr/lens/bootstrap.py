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


def _pearson_rows(ref: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``ref`` (``(R, n)``) with each ``others[k]`` (``(K, R, n)``)."""
    ref = ref - ref.mean(axis=-1, keepdims=True)
    others = others - others.mean(axis=-1, keepdims=True)
    cov = (others * ref).sum(-1)
    scale = np.sqrt((ref * ref).sum(-1) * (others * others).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / scale  # (K, R)


def bootstrap_correlations(
    reference: ArrayLike,
    others: Mapping[str, ArrayLike],
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the correlations of ``reference`` with each of ``others`` and bootstrap intervals.

    Each resample draws ``n`` row indices with replacement (``numpy.random.default_rng(seed)``)
    and recomputes every correlation on the same rows. Intervals are percentile intervals:
    the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of the resampled values.

    Args:
        reference: The shared variable, shape ``(n,)``.
        others: The other variables by name, each of shape ``(n,)``.
        resamples: Number of bootstrap resamples (>= 1).
        level: Coverage of the intervals, in (0, 1).
        seed: Seed of the resampling.

    Returns:
        ``(correlations, differences)``. ``correlations`` is indexed by name with columns
        ``corr`` (on all rows), ``low``, ``high``; ``differences`` has one row per pair
        ``(first, second)`` of names (in the order given) with ``difference`` (``corr(first) -
        corr(second)`` on all rows), ``low``, ``high``.

    Raises:
        ValueError: For mismatched or too short (``n < 3``) inputs, non-finite values, a constant
            variable, no ``others``, ``resamples < 1`` or ``level`` outside (0, 1).
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
    point = _pearson_rows(ref[None, :], stacked[:, None, :])[:, 0]
    rng = np.random.default_rng(seed)
    boot = np.empty((len(names), resamples))
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        boot[:, start : start + size] = _pearson_rows(ref[idx], stacked[:, idx])
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
