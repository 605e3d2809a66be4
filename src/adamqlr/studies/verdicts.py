"""Verdicts with intervals: two arms compared at a matched point, and tuned choices at an edge.

A chapter's verdict on a claim such as "AdamQLR (Untuned) is as good as tuned Adam" compares two
sets of repeats. This module makes that comparison the same way on every page:

* :func:`values_at`: each run's metric at a matched point of one axis (optimisation time in
  seconds, steps, or epochs), the last value logged at or before it (a run that diverged before it
  counts as ``inf``);
* :func:`matched_point`: the point both arms reached, by default the smaller of the two arms'
  median final positions on that axis;
* :func:`compare`: the ratio of the two arms' medians there, with a percentile bootstrap interval
  (runs resampled within each arm), as a :class:`Comparison`;
* :func:`judge`: what the interval says about a claim (``"lower"``: the first arm ends lower;
  ``"not higher"``: it is not worse), as a :class:`Verdict` that reads ``supported``,
  ``not supported`` or ``inconclusive``. There is no tolerance band: "not higher" is supported
  only when the interval excludes a worse first arm, and an interval that straddles parity is
  inconclusive, with its width telling the reader how close the two are;
* :func:`verdict_table`: several verdicts as one table for a page;
* :func:`edge_choices`: where a tuned arm's choice lies at the edge of its search space (an
  under-tuned baseline is a weak baseline), for the pages to say so.

Medians and their ratio are used because final losses of diverging optimisers are heavy-tailed
(a mean over repeats that include a blown-up run says nothing); the paper's figures show
bootstrap medians too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from adamqlr.results.aggregate import BLOWN_UP, ratio_beyond_text
from adamqlr.results.store import RunRecord

__all__ = [
    "AXES",
    "CLAIMS",
    "Comparison",
    "EdgeChoice",
    "Verdict",
    "compare",
    "edge_choices",
    "interval_text",
    "judge",
    "matched_point",
    "span",
    "times",
    "values_at",
    "verdict_table",
]

Axis = Literal["time", "step", "epoch"]
Claim = Literal["lower", "not higher"]

AXES: dict[str, str] = {"time": "s of optimisation", "step": "steps", "epoch": "epochs"}
"""The axes a comparison can match on, with the unit each is quoted in."""

CLAIMS: tuple[str, ...] = ("lower", "not higher")
"""The claims :func:`judge` decides about the first arm's median against the second's."""


def _check_axis(axis: str) -> None:
    if axis not in AXES:
        raise ValueError(f"invalid axis {axis!r}; expected one of {sorted(AXES)}")


def _curve(record: RunRecord, metric: str, axis: str) -> tuple[np.ndarray, np.ndarray]:
    frame = record.metrics
    for column in (axis, metric):
        if column not in frame:
            raise ValueError(f"run {record.key!r} has no column {column!r}")
    x = frame[axis].to_numpy(dtype=np.float64)
    y = frame[metric].to_numpy(dtype=np.float64)
    keep = ~np.isnan(x) & ~np.isnan(y)  # NaN: a row without this metric (no evaluation)
    return x[keep], y[keep]


def values_at(
    records: Sequence[RunRecord], metric: str, axis: Axis = "time", at: float = math.inf
) -> np.ndarray:
    """Return each run's ``metric`` at ``at`` on ``axis``.

    Args:
        records: The runs.
        metric: A metric column (e.g. ``"test_loss"``).
        axis: ``"time"`` (optimisation seconds), ``"step"`` or ``"epoch"``.
        at: The point; ``inf`` (default): each run's last value.

    Returns:
        For each run, the last finite value logged at or before ``at``; ``inf`` when the run
        logged a non-finite value (diverged) at or before ``at``; NaN when it logged nothing
        that early.

    Raises:
        ValueError: For an unknown axis, a NaN ``at``, or a run without the columns.
    """
    _check_axis(axis)
    if isinstance(at, float) and math.isnan(at):
        raise ValueError("invalid point at=nan")
    out = np.full(len(records), np.nan)
    for i, record in enumerate(records):
        x, y = _curve(record, metric, axis)
        upto = x <= at
        if not upto.any():
            continue
        seen = y[upto]
        out[i] = math.inf if not np.isfinite(seen).all() else seen[-1]
    return out


def _end(record: RunRecord, axis: str) -> float:
    frame = record.metrics
    if axis not in frame:
        raise ValueError(f"run {record.key!r} has no column {axis!r}")
    x = frame[axis].to_numpy(dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.max()) if len(x) else math.nan


def matched_point(a: Sequence[RunRecord], b: Sequence[RunRecord], axis: Axis = "time") -> float:
    """Return the point on ``axis`` that both arms reached: the smaller median final position.

    On the time axis this is where the slower arm's typical run has caught up with nothing left to
    catch: the faster arm's typical run is over, and later values would compare a finished run
    with a running one.

    Raises:
        ValueError: For an unknown axis or an arm without runs.
    """
    _check_axis(axis)
    if not a or not b:
        raise ValueError("each arm needs at least one run")
    ends = [float(np.nanmedian([_end(r, axis) for r in arm])) for arm in (a, b)]
    return min(ends)


def _median(values: np.ndarray) -> float:
    # inf sorts last, so the median of runs some of which diverged is still defined
    return float(np.quantile(values, 0.5, method="inverted_cdf")) if len(values) else math.nan


def _ratio(x: float, y: float) -> float:
    if math.isinf(x) and math.isinf(y):
        return math.nan
    if y == 0:
        return math.inf if x > 0 else (1.0 if x == 0 else -math.inf)
    return x / y


@dataclass(frozen=True)
class Comparison:
    """Two arms' medians of one metric at a matched point, and their ratio's interval.

    Attributes:
        metric: The metric compared.
        axis: The axis the point lies on.
        at: The point (``inf``: each run's end).
        labels: The two arms' labels, first and second.
        medians: The two medians over runs.
        runs: The number of runs of each arm with a value at ``at``.
        ratio: First median over second.
        low: Lower end of the ratio's bootstrap interval.
        high: Upper end.
        level: The interval's coverage (e.g. 0.95).
        resamples: Bootstrap resamples.
    """

    metric: str
    axis: str
    at: float
    labels: tuple[str, str]
    medians: tuple[float, float]
    runs: tuple[int, int]
    ratio: float
    low: float
    high: float
    level: float
    resamples: int

    @property
    def where(self) -> str:
        """The matched point in words (``"at 12.3 s of optimisation"``, ``"after 10 epochs"``)."""
        if math.isinf(self.at):
            return "at the end of each run"
        if self.axis == "time":
            return f"at {self.at:.3g} s of optimisation"
        return f"after {self.at:g} {AXES[self.axis]}"

    def interval_text(self) -> str:
        """Return the ratio and its interval, e.g. ``"0.93× (95 % CI 0.88–0.99×)"``."""
        return interval_text(self.ratio, self.low, self.high, self.level)

    def text(self) -> str:
        """One sentence: which arm, what ratio, where, from how many runs."""
        a, b = self.labels
        metric = self.metric.replace("_", " ")
        return (
            f"median {metric} of {a} is {self.interval_text()} that of {b} {self.where} "
            f"({self.runs[0]} and {self.runs[1]} runs)"
        )


def times(ratio: float, *, unit: bool = True) -> str:
    """Write a ratio for a reader, e.g. ``"0.93×"``, to three significant digits.

    A ratio other than 1 that would round to ``"1"`` gets as many more digits as it takes not to
    (``"1.002×"``, ``"0.9996×"``), so a bound never reads as parity when it is not.

    Beyond :data:`~adamqlr.results.aggregate.BLOWN_UP` or below its reciprocal (a ratio against
    runs that blew up) it reads ``"< 1e-6×"`` or ``"> 1e6×"`` instead of ``"5.01e-23×"``.

    Args:
        ratio: The ratio (``inf`` and 0 allowed).
        unit: Whether to append ``×``.
    """
    mark = "×" if unit else ""
    if ratio != 0.0 and (beyond := ratio_beyond_text(ratio)):
        return f"{beyond}{mark}"
    text = f"{ratio:.3g}"
    # A ratio that is not parity never reads as parity (an interval's bound of 1.002 would read
    # "1" beside a verdict that the interval excludes parity): more digits until it does not.
    digits = 3
    while text == "1" and ratio != 1.0 and digits < 17:
        digits += 1
        text = f"{ratio:.{digits}g}"
    return f"{text}{mark}"


def span(low: float, high: float) -> str:
    """Write an interval of ratios, e.g. ``"0.88–0.99×"``.

    Bounds beyond those of :func:`times` read as words: ``"below 1e-6×"`` or ``"above 1e6×"``
    when both are, ``"1.78× to above 1e6×"`` or ``"below 1e-6× to 0.5×"`` when one is.

    Args:
        low: The lower bound.
        high: The upper bound.
    """
    lo, hi = times(low), times(high)
    tiny, huge = times(0.5 / BLOWN_UP), times(2 * BLOWN_UP)  # "< 1e-6×", "> 1e6×"
    below, above = tiny.replace("<", "below"), huge.replace(">", "above")
    if hi == tiny:
        return below
    if lo == huge:
        return above
    if lo == tiny or hi == huge:
        return f"{below if lo == tiny else lo} to {above if hi == huge else hi}"
    return f"{times(low, unit=False)}–{hi}"


def interval_text(ratio: float, low: float, high: float, level: float = 0.95) -> str:
    """Write a ratio with its interval, e.g. ``"0.93× (95 % CI 0.88–0.99×)"``.

    Args:
        ratio: The ratio (see :func:`times`).
        low: Lower end of its interval.
        high: Upper end (see :func:`span`).
        level: The interval's coverage, in (0, 1).
    """
    return f"{times(ratio)} ({100 * level:.0f} % CI {span(low, high)})"


def compare(
    a: Sequence[RunRecord],
    b: Sequence[RunRecord],
    metric: str = "test_loss",
    *,
    axis: Axis = "time",
    at: float | None = None,
    labels: tuple[str, str] = ("A", "B"),
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare the median ``metric`` of two arms at a matched point, with a bootstrap interval.

    Each resample draws each arm's runs with replacement, independently, and takes the ratio of
    the two medians; the interval is the central ``level`` share of those ratios (percentile
    bootstrap, no interpolation between resampled values, so diverged runs' ``inf`` stay exact).

    Args:
        a: The first arm's runs.
        b: The second arm's runs.
        metric: The metric; lower is better for a loss, higher for an accuracy (the ratio is
            reported either way; :func:`judge` is told which claim to decide).
        axis: Match on optimisation ``"time"``, ``"step"`` or ``"epoch"``.
        at: The point; ``None``: :func:`matched_point`; ``inf``: each run's end.
        labels: Names of the two arms for the text.
        level: Interval coverage, in (0, 1).
        resamples: Bootstrap resamples (>= 100).
        seed: Seed of the resampling (pages are deterministic).

    Raises:
        ValueError: For an invalid level, resamples or axis, or an arm with no run that reached
            the point.
    """
    if not 0 < level < 1:
        raise ValueError(f"invalid level {level!r}; expected a value in (0, 1)")
    if not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"invalid resamples {resamples!r}; expected an integer >= 100")
    point = matched_point(a, b, axis) if at is None else float(at)
    values = [values_at(arm, metric, axis, point) for arm in (a, b)]
    values = [v[~np.isnan(v)] for v in values]
    for label, v in zip(labels, values, strict=True):
        if not len(v):
            raise ValueError(f"arm {label!r} has no run with {metric!r} at {axis}={point:g}")
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(resamples):
            ma = _median(rng.choice(values[0], size=len(values[0])))
            mb = _median(rng.choice(values[1], size=len(values[1])))
            ratios[i] = _ratio(ma, mb)
    ratios = ratios[~np.isnan(ratios)]
    tail = (1 - level) / 2
    if len(ratios):
        low = float(np.quantile(ratios, tail, method="inverted_cdf"))
        high = float(np.quantile(ratios, 1 - tail, method="inverted_cdf"))
    else:
        low = high = math.nan
    medians = (_median(values[0]), _median(values[1]))
    return Comparison(
        metric=metric,
        axis=axis,
        at=point,
        labels=(str(labels[0]), str(labels[1])),
        medians=medians,
        runs=(len(values[0]), len(values[1])),
        ratio=_ratio(*medians),
        low=low,
        high=high,
        level=level,
        resamples=resamples,
    )


@dataclass(frozen=True)
class Verdict:
    """What a comparison's interval says about a claim on the first arm.

    Attributes:
        claim: ``"lower"`` or ``"not higher"`` (the first arm's median against the second's).
        outcome: ``"supported"``, ``"not supported"`` or ``"inconclusive"``.
        comparison: The comparison it rests on.
    """

    claim: str
    outcome: str
    comparison: Comparison

    def text(self) -> str:
        """Return the outcome with its evidence, for a page."""
        c = self.comparison
        a, b = c.labels
        phrase = {
            ("lower", "supported"): "lower, the interval lies wholly below parity",
            ("lower", "not supported"): "not lower, the interval lies at or above parity",
            ("lower", "inconclusive"): "not resolved, the interval contains parity",
            ("not higher", "supported"): "lower, the interval lies wholly below parity",
            ("not higher", "not supported"): "higher, the interval lies wholly above parity",
            ("not higher", "inconclusive"): "no detectable difference, the interval contains "
            "parity",
        }[(self.claim, self.outcome)]
        metric = c.metric.replace("_", " ")
        level = f"{100 * c.level:.0f} %"
        return (
            f"{a}'s median {metric} {c.where} is {times(c.ratio)} that of {b} ({level} CI "
            f"{span(c.low, c.high)}, {c.runs[0]} and {c.runs[1]} runs): "
            f"{phrase} "
            f"({self.outcome})"
        )


def judge(comparison: Comparison, claim: Claim = "lower") -> Verdict:
    """Decide a claim about the first arm from a comparison's interval.

    * ``"lower"`` (the first arm's median is lower): supported when the whole interval of the
      ratio lies below 1, not supported when it lies at or above 1, inconclusive otherwise.
    * ``"not higher"`` (the first arm is not worse, for a loss): supported when the interval
      lies below 1, not supported when it lies above 1, inconclusive when it contains 1.

    The two differ only in how an interval that touches parity from above reads. For a metric
    where higher is better (accuracy), judge the comparison with the arms swapped.

    Raises:
        ValueError: For an unknown claim or an undefined interval.
    """
    if claim not in CLAIMS:
        raise ValueError(f"invalid claim {claim!r}; expected one of {list(CLAIMS)}")
    low, high = comparison.low, comparison.high
    if math.isnan(low) or math.isnan(high):
        raise ValueError(f"comparison of {comparison.labels} has no interval (both diverged?)")
    if high < 1:
        outcome = "supported"
    elif low > 1 or (claim == "lower" and low >= 1):
        outcome = "not supported"
    else:
        outcome = "inconclusive"
    return Verdict(claim=claim, outcome=outcome, comparison=comparison)


def verdict_table(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    """Return several verdicts as one table, one row each.

    Index: ``claim`` (e.g. ``"AdamQLR (Hessian) lower than AdamQLR (Fisher)"``) and ``where``
    (the matched point in words); columns ``metric``, ``ratio``, ``CI low``, ``CI high``,
    ``runs`` (e.g. ``"50 / 50"``) and ``verdict``.
    """
    words = {"lower": "lower than", "not higher": "no higher than"}
    rows = []
    for v in verdicts:
        c = v.comparison
        rows.append(
            {
                "claim": f"{c.labels[0]} {words[v.claim]} {c.labels[1]}",
                "where": c.where,
                "metric": c.metric.replace("_", " "),
                "ratio": c.ratio,
                "CI low": c.low,
                "CI high": c.high,
                "runs": f"{c.runs[0]} / {c.runs[1]}",
                "verdict": v.outcome,
            }
        )
    columns = ["claim", "where", "metric", "ratio", "CI low", "CI high", "runs", "verdict"]
    return pd.DataFrame(rows, columns=columns).set_index(["claim", "where"])


@dataclass(frozen=True)
class EdgeChoice:
    """A tuned arm's chosen value that lies at the edge of its search space.

    Attributes:
        arm: The arm's id.
        label: Its label.
        name: The hyperparameter.
        value: The chosen value.
        bounds: The search space's lowest and highest value of it.
        side: ``"low"`` or ``"high"``.
        position: Where the value lies in the range, 0 (low end) to 1 (high end), on a log scale
            for log-uniform dimensions and by rank for choices.
    """

    arm: str
    label: str
    name: str
    value: Any
    bounds: tuple[Any, Any]
    side: str
    position: float

    def text(self) -> str:
        """E.g. ``"Adam chose lr = 0.98, at the high end of [1e-06, 1]"``."""
        value = f"{self.value:.3g}" if isinstance(self.value, float) else str(self.value)
        lo, hi = (f"{b:.3g}" if isinstance(b, float) else str(b) for b in self.bounds)
        return f"{self.label} chose {self.name} = {value}, at the {self.side} end of [{lo}, {hi}]"


def _position(dim: Any, value: Any) -> tuple[float, tuple[Any, Any]] | None:
    from adamqlr.tune.spaces import Choice, LogUniform, OneMinus

    if isinstance(dim, LogUniform):
        pos = (math.log(value) - math.log(dim.low)) / (math.log(dim.high) - math.log(dim.low))
        return pos, (dim.low, dim.high)
    if isinstance(dim, OneMinus):
        x = 1 - value
        pos = (math.log(x) - math.log(dim.low)) / (math.log(dim.high) - math.log(dim.low))
        return 1 - pos, (1 - dim.high, 1 - dim.low)
    if isinstance(dim, Choice):
        options = list(dim.values)
        try:
            ranked = sorted(options)
        except TypeError:
            return None  # unordered choices have no edge
        if len(ranked) < 2 or value not in ranked:
            return None
        return ranked.index(value) / (len(ranked) - 1), (ranked[0], ranked[-1])
    return None


def _grid_position(values: Sequence[Any], value: Any) -> tuple[float, tuple[Any, Any]] | None:
    try:
        ranked = sorted(set(values))
    except TypeError:
        return None
    if len(ranked) < 2:
        return None
    return ranked.index(value) / (len(ranked) - 1), (ranked[0], ranked[-1])


def edge_choices(
    plans: Mapping[str, Any], *, margin: float = 0.05, include_choices: bool = True
) -> list[EdgeChoice]:
    """Return the tuned arms' chosen values that lie at an edge of their search space.

    Args:
        plans: ``{arm id: ArmPlan}`` (a study's records' ``plans``).
        margin: A continuous value within this share of its (log) range from an end is at the
            edge; a grid or choice value is at the edge when it is the smallest or largest.
        include_choices: Also report discrete choices (e.g. the batch size) at an end.

    Returns:
        One :class:`EdgeChoice` per (arm, hyperparameter) at an edge, in plan order.

    Raises:
        ValueError: If ``margin`` is not in [0, 0.5).
    """
    from adamqlr.tune.spaces import Choice

    if not 0 <= margin < 0.5:
        raise ValueError(f"invalid margin {margin!r}; expected a value in [0, 0.5)")
    out: list[EdgeChoice] = []
    for arm_id, p in plans.items():
        arm = p.arm
        if p.choice is None or not arm.tuned:
            continue
        for name, value in p.choice.items():
            if arm.search is not None:
                dim = arm.search.space.get(name)
                if dim is None or (isinstance(dim, Choice) and not include_choices):
                    continue
                found = _position(dim, value)
                discrete = isinstance(dim, Choice)
            else:
                found = _grid_position([v[name] for v in arm.grid if name in v], value)
                discrete = True
            if found is None:
                continue
            pos, bounds = found
            edge = margin if not discrete else 0.0
            if pos <= edge:
                side = "low"
            elif pos >= 1 - edge:
                side = "high"
            else:
                continue
            out.append(EdgeChoice(arm_id, arm.label, name, value, bounds, side, float(pos)))
    return out
