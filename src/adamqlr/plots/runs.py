"""The paper's figure type: a metric against optimisation time, median over repeats with a band.

Each optimiser's repeats are aligned on a common time grid and bootstrapped
(:func:`adamqlr.results.aggregate.summarise_runs`): the line is the mean of 50 bootstrap medians,
the band plus or minus their standard deviation; losses on a log axis, accuracies on a linear
one from 0 to 1. The time is the *optimisation* time of the runs (evaluation excluded), so
optimisers are compared by what they cost, whatever the evaluation cadence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from adamqlr.results.aggregate import summarise_runs

__all__ = ["METRIC_LABELS", "group_records", "plot_runs"]

#: Metric column -> axis label.
METRIC_LABELS: dict[str, str] = {
    "train_loss": "training loss (mini-batch)",
    "val_loss": "validation loss",
    "test_loss": "test loss",
    "train_accuracy": "training accuracy (mini-batch)",
    "val_accuracy": "validation accuracy",
    "test_accuracy": "test accuracy",
    "lr": r"step size $\alpha$",
    "damping": r"damping $\lambda$",
}


def group_records(records: Sequence[Any]) -> dict[str, list[Any]]:
    """Group run records by their optimiser's figure label (in order of first appearance)."""
    groups: dict[str, list[Any]] = {}
    for record in records:
        prov = getattr(record, "provenance", {})
        label = prov.get("optimiser_label") or prov.get("spec", {}).get("optimiser", "?")
        groups.setdefault(label, []).append(record)
    return groups


def plot_runs(
    runs: Mapping[str, Sequence[Any]] | Sequence[Any],
    metric: str = "test_loss",
    *,
    ax: Axes | None = None,
    time: str = "time",
    points: int | None = 400,
    method: str = "linear",
    resamples: int = 50,
    seed: int = 0,
    log_y: bool | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    legend: bool = True,
) -> Axes:
    """Draw each optimiser's bootstrap-median curve and band of ``metric`` against time.

    Args:
        runs: ``{label: [records or metric DataFrames]}``, or a flat list of run records
            (grouped by optimiser label with :func:`group_records`).
        metric: Column to draw (``"train_loss"``, ``"test_loss"``, ``"test_accuracy"``, ...).
        ax: Axes to draw on (default: a new figure).
        time: Time column: ``"time"`` (optimisation seconds) or ``"step"``.
        points: Grid points per curve (``None``: the union of logged times, 3 significant figures).
        method: ``"linear"`` or ``"previous"`` (see :func:`~adamqlr.results.aggregate.align_runs`).
        resamples: Bootstrap resamples (the paper: 50).
        seed: Bootstrap seed (the same records always give the same figure).
        log_y: Log y axis (default: yes, except for accuracies).
        xlabel: x-axis label (default: optimisation time).
        ylabel: y-axis label (default: from :data:`METRIC_LABELS`).
        title: Axes title (default: none).
        legend: Draw a legend with the number of runs per label.

    Returns:
        The axes.

    Raises:
        ValueError: If there is nothing to plot or a run lacks the metric.
    """
    import matplotlib.pyplot as plt

    from adamqlr.plots.theme import palette

    groups = dict(runs) if isinstance(runs, Mapping) else group_records(list(runs))
    groups = {label: list(rs) for label, rs in groups.items() if len(rs)}
    if not groups:
        raise ValueError("no runs to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.0))
    colours = palette(groups)
    accuracy = "accuracy" in metric
    for label, records in groups.items():
        summary = summarise_runs(
            records, metric, time=time, points=points, method=method,
            resamples=resamples, seed=seed,
        ).dropna(subset=["mean"])  # fmt: skip
        if summary.empty:
            continue
        t = summary.index.to_numpy()
        mean, lower, upper = (summary[c].to_numpy() for c in ("mean", "lower", "upper"))
        if not accuracy and (log_y is None or log_y):
            floor = np.nanmin(mean[mean > 0]) * 1e-3 if np.any(mean > 0) else 1e-12
            lower = np.maximum(lower, floor)
        name = f"{label} ({len(records)} run{'s' if len(records) != 1 else ''})"
        ax.plot(t, mean, color=colours[label], label=name)
        ax.fill_between(t, lower, upper, color=colours[label], alpha=0.25, linewidth=0)
    if log_y if log_y is not None else not accuracy:
        ax.set_yscale("log")
    elif accuracy:
        ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel or ("optimisation time (s)" if time == "time" else time))
    ax.set_ylabel(ylabel or METRIC_LABELS.get(metric, metric))
    if title:
        ax.set_title(title)
    if legend:
        ax.legend()
    return ax
