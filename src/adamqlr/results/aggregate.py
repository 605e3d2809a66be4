"""The paper's aggregation over repeated runs: bootstrap medians on a common time grid.

Following the authors' plotting code (``paper_plots.py`` at commit ``ab3dea5``), for one metric:

1. each run's curve is taken against its optimisation time, keeping finite values only (a diverged
   run's last finite value stands);
2. the runs are put on a common time grid: inside a run's time span its curve is interpolated
   linearly (``method="linear"``, the official choice) or held at the last logged value
   (``method="previous"``); after a run ends its last value is carried forward to the end of the
   grid; before its first point it has no value;
3. ``resamples`` bootstrap resamples of the runs (with replacement) give a median over runs at
   every grid time; the curve is the mean of those medians and the band is plus or minus their
   standard deviation.

The random generator is seeded, so the same records always give the same figure (the official
code's was not). Everything here is pandas and numpy; :mod:`adamqlr.plots.runs` draws the result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, overload

import numpy as np
import pandas as pd

__all__ = [
    "BLOWN_UP",
    "align_runs",
    "blown_up",
    "bootstrap_median",
    "ratio_beyond_text",
    "final_summary",
    "round_sig",
    "summarise_runs",
    "wilson_interval",
]

#: A loss above this, or a ratio of losses beyond it (or below its reciprocal), is a run that
#: blew up: the book reports it as diverged, never as a number to read or rank. One threshold for
#: the whole library (run summaries, divergence rates, tables, verdict text, plots).
BLOWN_UP: float = 1e6


@overload
def blown_up(values: float, threshold: float = BLOWN_UP) -> bool: ...
@overload
def blown_up(values: np.ndarray | pd.Series, threshold: float = BLOWN_UP) -> np.ndarray: ...
def blown_up(
    values: float | np.ndarray | pd.Series, threshold: float = BLOWN_UP
) -> bool | np.ndarray:
    """Return whether a loss (or a ratio of losses) blew up: not finite, or beyond ``threshold``.

    The library's one test of divergence, for a single value or elementwise for an array: a
    value is blown up when it is NaN or infinite, or its magnitude exceeds ``threshold``.

    Args:
        values: A number, or an array or series of numbers.
        threshold: The magnitude above which a finite value counts as blown up
            (:data:`BLOWN_UP`, 1e6, by default; ``math.inf``: only non-finite values).

    Returns:
        A ``bool`` for a number; a boolean array of the same shape for an array or series.

    Raises:
        ValueError: If ``threshold`` is not a positive number.

    Example:
        >>> blown_up(0.3), blown_up(float("nan")), blown_up(2e6)
        (False, True, True)
        >>> blown_up(np.array([1.0, np.inf, -3e7])).tolist()
        [False, True, True]
    """
    if isinstance(threshold, bool) or not (isinstance(threshold, int | float) and threshold > 0):
        raise ValueError(f"threshold must be a positive number, got {threshold!r}")
    if isinstance(values, np.ndarray | pd.Series):
        array = np.asarray(values, dtype=float)
        return ~np.isfinite(array) | (np.abs(array) > threshold)
    x = float(values)
    return not math.isfinite(x) or abs(x) > threshold


def ratio_beyond_text(ratio: float, threshold: float = BLOWN_UP) -> str:
    """Write a ratio past the blown-up bound as its bound, e.g. ``"> 1e6"``; else return ``""``.

    A ratio of losses above ``threshold`` or below its reciprocal compares against runs that blew
    up: its digits (``5.01e-23``) mean nothing, so tables and prose write the bound it passed.
    Zero and infinity count as past it (a bootstrap resample whose median diverged gives them);
    NaN and negative values are not ratios of losses and give ``""``. A power of ten is written
    ``1e6`` / ``1e-6``, any other threshold as Python's ``g`` format.

    Args:
        ratio: The ratio.
        threshold: The bound (:data:`BLOWN_UP` by default).

    Returns:
        ``"> 1e6"`` above the bound, ``"< 1e-6"`` below its reciprocal, ``""`` otherwise.

    Raises:
        ValueError: If ``threshold`` is not a positive number.

    Example:
        >>> ratio_beyond_text(3e7), ratio_beyond_text(0.0), ratio_beyond_text(0.5)
        ('> 1e6', '< 1e-6', '')
    """
    if isinstance(threshold, bool) or not (isinstance(threshold, int | float) and threshold > 0):
        raise ValueError(f"threshold must be a positive number, got {threshold!r}")
    x = float(ratio)
    if math.isnan(x) or x < 0:
        return ""
    if x > threshold:
        return f"> {_bound_text(threshold)}"
    if x < 1 / threshold:
        return f"< {_bound_text(1 / threshold)}"
    return ""


def _bound_text(bound: float) -> str:
    exponent = math.log10(bound) if 0 < bound < math.inf else math.nan
    if math.isfinite(exponent) and abs(exponent - round(exponent)) < 1e-9:
        return f"1e{round(exponent)}"
    return f"{bound:g}"


def _frame(run: Any) -> pd.DataFrame:
    frame = getattr(run, "metrics", run)
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"expected a RunRecord or a DataFrame, got {type(run).__name__}")
    return frame


def round_sig(values: np.ndarray, digits: int = 3) -> np.ndarray:
    """Round to ``digits`` significant figures (zeros stay zero)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mags = np.where(values == 0, 0, np.floor(np.log10(np.abs(values))))
    factor = 10.0 ** (digits - 1 - mags)
    return np.where(values == 0, 0.0, np.round(values * factor) / factor)


def align_runs(
    runs: Sequence[Any] | Mapping[Any, Any],
    metric: str,
    *,
    time: str = "time",
    grid: Sequence[float] | np.ndarray | None = None,
    points: int | None = None,
    method: str = "linear",
) -> pd.DataFrame:
    """Put several runs' ``metric`` on a common time grid.

    Args:
        runs: Run records or metric DataFrames (a mapping's keys become column names).
        metric: The column to align, e.g. ``"test_loss"``.
        time: The time column (``"time"``: optimisation seconds; ``"step"`` also works).
        grid: The grid. Default: every run's logged time, rounded to 3 significant figures (the
            official choice), or ``points`` evenly spaced times from 0 to the longest run's end.
        points: Number of grid points when ``grid`` is not given (``None``: the union of times).
        method: ``"linear"`` interpolation inside a run's span, or ``"previous"`` (hold the last
            logged value until the next one).

    Returns:
        A DataFrame indexed by grid time (name ``time``), one column per run; NaN before a run's
        first finite point; after its last point, its last value.

    Raises:
        ValueError: For an unknown method, a missing column, or no runs.
    """
    if method not in ("linear", "previous"):
        raise ValueError(f"invalid method {method!r}; expected 'linear' or 'previous'")
    items = list(runs.items()) if isinstance(runs, Mapping) else list(enumerate(runs))
    if not items:
        raise ValueError("no runs to align")
    curves = {}
    for name, run in items:
        frame = _frame(run)
        for col in (time, metric):
            if col not in frame:
                raise ValueError(f"run {name!r} has no column {col!r}")
        t = frame[time].to_numpy(dtype=np.float64)
        y = frame[metric].to_numpy(dtype=np.float64)
        keep = np.isfinite(t) & np.isfinite(y)
        t, y = t[keep], y[keep]
        order = np.argsort(t, kind="stable")
        t, y = t[order], y[order]
        if len(t):  # several values at one time: keep the latest
            last = np.r_[t[1:] != t[:-1], True]
            t, y = t[last], y[last]
        curves[name] = (t, y)
    if grid is None:
        ends = [t[-1] for t, _ in curves.values() if len(t)]
        if points is not None:
            grid = np.linspace(0.0, max(ends) if ends else 0.0, int(points))
        else:
            alltimes = np.concatenate([t for t, _ in curves.values()]) if curves else np.array([])
            grid = np.unique(round_sig(alltimes, 3))
    grid = np.asarray(grid, dtype=np.float64)
    columns = {}
    for name, (t, y) in curves.items():
        out = np.full(grid.shape, np.nan)
        if len(t):
            inside = (grid >= t[0]) & (grid <= t[-1])
            if method == "linear":
                out[inside] = np.interp(grid[inside], t, y)
            else:
                idx = np.searchsorted(t, grid[inside], side="right") - 1
                out[inside] = y[idx]
            out[grid > t[-1]] = y[-1]
        columns[name] = out
    return pd.DataFrame(columns, index=pd.Index(grid, name="time"))


def bootstrap_median(aligned: pd.DataFrame, *, resamples: int = 50, seed: int = 0) -> pd.DataFrame:
    """Bootstrap the median over runs at every time of an aligned table.

    Args:
        aligned: The output of :func:`align_runs` (rows: times, columns: runs).
        resamples: Number of bootstrap resamples of the runs (the paper: 50).
        seed: Seed of the resampling (figures are deterministic).

    Returns:
        A DataFrame indexed like ``aligned`` with columns ``mean`` (the mean of the bootstrap
        medians: the plotted line), ``std`` (their standard deviation: the band's half-width),
        ``lower``/``upper`` (mean -/+ std), ``median`` (the plain median over runs) and ``runs``
        (how many runs have a value at that time). Times where no run has a value are NaN.

    Raises:
        ValueError: If ``resamples < 1`` or there are no runs.
    """
    if resamples < 1:
        raise ValueError(f"invalid resamples {resamples!r} (expected >= 1)")
    values = aligned.to_numpy(dtype=np.float64)
    n_times, n_runs = values.shape
    if n_runs == 0:
        raise ValueError("no runs to bootstrap")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_runs, size=(resamples, n_runs))
    medians = np.full((resamples, n_times), np.nan)
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN
            for b in range(resamples):
                medians[b] = np.nanmedian(values[:, picks[b]], axis=1)
            mean = np.nanmean(medians, axis=0)
            std = np.nanstd(medians, axis=0)
            median = np.nanmedian(values, axis=1)
    return pd.DataFrame(
        {
            "mean": mean,
            "std": std,
            "lower": mean - std,
            "upper": mean + std,
            "median": median,
            "runs": np.isfinite(values).sum(axis=1),
        },
        index=aligned.index,
    )


def summarise_runs(
    runs: Sequence[Any] | Mapping[Any, Any],
    metric: str,
    *,
    time: str = "time",
    grid: Sequence[float] | np.ndarray | None = None,
    points: int | None = None,
    method: str = "linear",
    resamples: int = 50,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`align_runs` then :func:`bootstrap_median` (the curve and band of one figure line)."""
    aligned = align_runs(runs, metric, time=time, grid=grid, points=points, method=method)
    return bootstrap_median(aligned, resamples=resamples, seed=seed)


def final_summary(
    runs: Sequence[Any] | Mapping[Any, Any],
    metrics: Sequence[str] = ("train_loss", "test_loss"),
    *,
    resamples: int = 50,
    seed: int = 0,
) -> pd.DataFrame:
    """Return the paper's table entries: each metric's value at the end of the longest run.

    Shorter runs are carried forward (as in the figures). Also the number of steps and the
    optimisation time, as the bootstrap mean and std of the median over runs of each run's last.

    Returns:
        A DataFrame indexed by quantity with columns ``mean`` and ``std``.
    """
    rows = {}
    for metric in metrics:
        summary = summarise_runs(runs, metric, resamples=resamples, seed=seed)
        last = summary.dropna(subset=["mean"]).iloc[-1] if summary["mean"].notna().any() else None
        rows[metric] = (np.nan, np.nan) if last is None else (last["mean"], last["std"])
    items = list(runs.values()) if isinstance(runs, Mapping) else list(runs)
    for quantity in ("step", "time"):
        finals = pd.DataFrame(
            {i: [float(_frame(r)[quantity].iloc[-1])] for i, r in enumerate(items)}, index=[0.0]
        )
        boot = bootstrap_median(finals, resamples=resamples, seed=seed).iloc[0]
        rows["steps" if quantity == "step" else "time_s"] = (boot["mean"], boot["std"])
    return pd.DataFrame.from_dict(rows, orient="index", columns=["mean", "std"])


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Return the Wilson score interval of a proportion ``k / n`` (``(nan, nan)`` for ``n = 0``)."""
    if n == 0:
        return math.nan, math.nan
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))  # rounding at k = 0, n
