"""Main effects and interactions of a balanced factorial, with bootstrap intervals.

The factorial chapter asks which factor (direction, step-size rule, damping) moves the final
loss most. Each cell of the design holds the final values of its repeats. The response of a cell
is the logarithm of the median over its repeats, so that effects are ratios ("this level's cells
end at 0.8 times the loss of the average cell") and heavy tails do not dominate. A run that
diverged counts as no better than where it started (:func:`capped_finals`), so a cell whose
median run diverged has the response of an untrained model rather than an infinite one.

For a balanced design (every combination of the chosen levels present), with ``y`` the cell
responses and ``ȳ`` their mean:

* the **main effect** of level ``l`` of factor ``F`` is ``mean(y | F = l) - ȳ``;
* the **range** of ``F`` is the largest minus the smallest of its level means: how far the best
  choice of ``F`` is from the worst, averaged over the other factors;
* the **interaction** of levels ``(l, m)`` of factors ``(F, G)`` is
  ``mean(y | F = l, G = m) - mean(y | F = l) - mean(y | G = m) + ȳ``.

Intervals come from a percentile bootstrap: every cell's repeats are resampled with replacement,
independently, and every quantity is recomputed (2000 times by default).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from adamqlr.results.store import RunRecord
from adamqlr.studies.verdicts import Axis, values_at

__all__ = ["FactorialEffects", "capped_finals", "factorial_effects"]


def capped_finals(
    records: Sequence[RunRecord],
    metric: str = "test_loss",
    at: float = math.inf,
    axis: Axis = "epoch",
) -> np.ndarray:
    """Return each run's ``metric`` at ``at`` on ``axis``, capped at its first logged value.

    A run that diverged (``inf``, or a value above its start) counts as no better than its start.

    Raises:
        ValueError: If a run has no value of ``metric`` at or before ``at``.
    """
    finals = values_at(records, metric, axis, at)
    starts = np.array([values_at([r], metric, axis, 0.0)[0] for r in records])
    if np.isnan(finals).any() or np.isnan(starts).any():
        bad = [r.key for r, f, s in zip(records, finals, starts, strict=True) if np.isnan(f + s)]
        raise ValueError(f"runs without {metric!r} at the start or at {axis}={at:g}: {bad}")
    return np.minimum(finals, starts)


class FactorialEffects:
    """Bootstrap estimates of a balanced factorial's main effects, ranges and interactions.

    Attributes:
        factors: The factor names, in order.
        levels: ``{factor: levels}`` in the order given.
        cells: One row per cell: the factor levels, ``median`` (over its repeats), ``runs``,
            ``response`` (log of the median), and its bootstrap interval ``low``/``high``.
        main: One row per (factor, level): ``effect`` (on the log scale), ``ratio``
            (``exp(effect)``: the level's cells against the average cell), ``low``/``high`` (the
            ratio's interval).
        ranges: One row per factor: ``ratio`` (``exp(range)``: the worst level's cells over the
            best level's), ``low``/``high``, and the ``best`` and ``worst`` levels.
        interactions: One row per (factor pair, level pair): ``effect``, ``ratio``, ``low``,
            ``high``.
        level: The intervals' coverage.
        resamples: Bootstrap resamples.
    """

    def __init__(
        self,
        cells: pd.DataFrame,
        main: pd.DataFrame,
        ranges: pd.DataFrame,
        interactions: pd.DataFrame,
        factors: tuple[str, ...],
        levels: dict[str, tuple[str, ...]],
        level: float,
        resamples: int,
    ) -> None:
        self.cells = cells
        self.main = main
        self.ranges = ranges
        self.interactions = interactions
        self.factors = factors
        self.levels = levels
        self.level = level
        self.resamples = resamples

    def largest(self) -> str:
        """Return the factor with the largest range (the one whose choice matters most)."""
        return str(self.ranges["ratio"].idxmax())

    def ordering(self, first: str, second: str) -> str:
        """Whether factor ``first`` matters more than ``second``, by their ranges' intervals.

        Returns:
            ``"supported"`` when the lower end of ``first``'s range interval lies above the upper
            end of ``second``'s, ``"not supported"`` when its upper end lies below ``second``'s
            lower end, else ``"inconclusive"``.
        """
        a, b = self.ranges.loc[first], self.ranges.loc[second]
        if a["low"] > b["high"]:
            return "supported"
        if a["high"] < b["low"]:
            return "not supported"
        return "inconclusive"


def _summaries(y: np.ndarray, index: pd.MultiIndex, factors: tuple[str, ...]) -> tuple[
    dict[tuple[str, str], float], dict[str, float], dict[tuple[str, str, str, str], float]
]:  # fmt: skip
    frame = pd.Series(y, index=index)
    grand = float(frame.mean())
    main: dict[tuple[str, str], float] = {}
    ranges: dict[str, float] = {}
    for f in factors:
        means = frame.groupby(level=f, sort=False).mean()
        for lvl, m in means.items():
            main[(f, str(lvl))] = float(m) - grand
        ranges[f] = float(means.max() - means.min())
    inter: dict[tuple[str, str, str, str], float] = {}
    for f, g in itertools.combinations(factors, 2):
        joint = frame.groupby(level=[f, g], sort=False).mean()
        for (lf, lg), m in joint.items():
            inter[(f, g, str(lf), str(lg))] = (
                float(m) - (main[(f, str(lf))] + grand) - (main[(g, str(lg))] + grand) + grand
            )
    return main, ranges, inter


def factorial_effects(
    values: Mapping[tuple[str, ...], np.ndarray | Sequence[float]],
    factors: Sequence[str],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> FactorialEffects:
    """Estimate a balanced factorial's effects on the log of each cell's median, with intervals.

    Args:
        values: ``{(level of factor 1, level of factor 2, ...): final values of the cell's
            repeats}``; positive and finite (see :func:`capped_finals`).
        factors: The factor names, one per position of the keys.
        level: Interval coverage, in (0, 1).
        resamples: Bootstrap resamples (>= 100).
        seed: Seed of the resampling.

    Raises:
        ValueError: For keys of the wrong length, an unbalanced design (a combination of the
            levels missing), a cell without runs, a value that is not positive and finite, or an
            invalid level or resamples.
    """
    factors = tuple(factors)
    if not 0 < level < 1:
        raise ValueError(f"invalid level {level!r}; expected a value in (0, 1)")
    if not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"invalid resamples {resamples!r}; expected an integer >= 100")
    if not values:
        raise ValueError("no cells")
    keys = list(values)
    for key in keys:
        if len(key) != len(factors):
            raise ValueError(f"cell {key!r} has {len(key)} levels; expected {len(factors)}")
    levels = {f: tuple(dict.fromkeys(k[i] for k in keys)) for i, f in enumerate(factors)}
    missing = set(itertools.product(*levels.values())) - set(keys)
    if missing:
        raise ValueError(f"unbalanced design: no cell for {sorted(missing)}")
    arrays = []
    for key in keys:
        v = np.asarray(values[key], dtype=float)
        if v.size == 0:
            raise ValueError(f"cell {key!r} has no runs")
        if not (np.isfinite(v).all() and (v > 0).all()):
            raise ValueError(f"cell {key!r} has values that are not positive and finite: {v}")
        arrays.append(v)
    index = pd.MultiIndex.from_tuples(keys, names=list(factors))
    y0 = np.log([float(np.median(v)) for v in arrays])
    main0, ranges0, inter0 = _summaries(y0, index, factors)
    rng = np.random.default_rng(seed)
    ys = np.empty((resamples, len(keys)))
    boot_main = {k: np.empty(resamples) for k in main0}
    boot_ranges = {k: np.empty(resamples) for k in ranges0}
    boot_inter = {k: np.empty(resamples) for k in inter0}
    for b in range(resamples):
        y = np.log([float(np.median(rng.choice(v, size=v.size))) for v in arrays])
        ys[b] = y
        m, r, i = _summaries(y, index, factors)
        for mk, mv in m.items():
            boot_main[mk][b] = mv
        for rk, rv in r.items():
            boot_ranges[rk][b] = rv
        for ik, iv in i.items():
            boot_inter[ik][b] = iv
    tail = (1 - level) / 2

    def interval(samples: np.ndarray) -> tuple[float, float]:
        return float(np.quantile(samples, tail)), float(np.quantile(samples, 1 - tail))

    cells = index.to_frame(index=False)
    cells["median"] = np.exp(y0)
    cells["runs"] = [v.size for v in arrays]
    cells["response"] = y0
    cells["low"], cells["high"] = zip(
        *(np.exp(interval(ys[:, j])) for j in range(len(keys))), strict=True
    )
    main = pd.DataFrame(
        [
            {"factor": f, "level": lvl, "effect": e, "ratio": math.exp(e),
             **dict(zip(("low", "high"), np.exp(interval(boot_main[(f, lvl)])), strict=True))}
            for (f, lvl), e in main0.items()
        ]
    )  # fmt: skip
    rows = []
    for f, spread in ranges0.items():
        means = main.loc[main["factor"] == f].set_index("level")["effect"]
        lo, hi = np.exp(interval(boot_ranges[f]))
        rows.append({"factor": f, "ratio": math.exp(spread), "low": lo, "high": hi,
                     "best": str(means.idxmin()), "worst": str(means.idxmax())})  # fmt: skip
    ranges = pd.DataFrame(rows).set_index("factor")
    inter = pd.DataFrame(
        [
            {"factors": f"{f} × {g}", "levels": f"{lf} × {lg}", "effect": e, "ratio": math.exp(e),
             **dict(zip(("low", "high"), np.exp(interval(boot_inter[(f, g, lf, lg)])),
                        strict=True))}
            for (f, g, lf, lg), e in inter0.items()
        ]
    )  # fmt: skip
    return FactorialEffects(cells, main, ranges, inter, factors, levels, level, resamples)
