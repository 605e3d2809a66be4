"""Figures of the experiment chapters (untuned vs tuned, ablations, sensitivity, runtime).

Each function draws from run records (or the tables of :mod:`adamqlr.studies.analysis`) and
returns the figure or axes; the notebooks only choose what to show.

* :func:`plot_comparison`: the paper's main figure type, a grid of tasks by metrics, each panel a
  median-with-band per optimiser against optimisation time (:func:`adamqlr.plots.runs.plot_runs`);
* :func:`plot_sensitivity`: one median curve per setting of a swept hyperparameter, coloured on a
  (log) colour scale, as in the paper's sensitivity figures;
* :func:`plot_final_vs_value`: the final value of a metric against the swept setting (median and
  range over seeds; diverged runs marked);
* :func:`plot_adaptive`: the step size (absolute value) and the damping an optimiser chose,
  median over seeds, against the step;
* :func:`plot_step_costs`: time per step against batch size, and relative to Adam.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from adamqlr.plots.runs import METRIC_LABELS
from adamqlr.plots.theme import palette
from adamqlr.results.aggregate import summarise_runs

__all__ = [
    "draw_runs",
    "line_style",
    "panel_title",
    "plot_adaptive",
    "plot_comparison",
    "plot_divergence_rates",
    "plot_evaluations",
    "plot_final_vs_value",
    "plot_sensitivity",
    "plot_step_costs",
]


def _legend_below(fig: Figure, axes: Sequence[Axes], ncol: int | None = None) -> None:
    """Replace the panels' legends by one legend below the figure (each entry once)."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(text, handle)
        legend = ax.get_legend()
        if legend is not None:
            legend.remove()
    fig.legend(
        list(entries.values()),
        list(entries),
        loc="outside lower center",
        ncol=ncol or min(len(entries), _legend_columns(list(entries))),
    )


def _legend_columns(labels: Sequence[str]) -> int:
    """Three legend columns, or two when a label is long: the legend stays within ~9 in."""
    return 3 if max((len(label) for label in labels), default=0) <= 22 else 2


#: Qualifiers of a label that keep the family's colour ("Untuned" also dashes the line).
_PLAIN_QUALIFIERS = frozenset({"Untuned", "Fisher", "no clipping"})
#: Label bases that share a family colour with a theme label.
_FAMILY = {"SGD Minimal": "SGD", "GD Minimal": "SGD"}


def line_style(label: str) -> tuple[tuple[float, float, float], str]:
    """Return the colour and line style of an optimiser label, consistent across chapters.

    A label is a base name and optional qualifiers in parentheses, as in the paper's figures:
    ``"AdamQLR (Untuned, Hessian)"``. The colour is the theme's colour of the *family*
    (:func:`adamqlr.plots.theme.palette`): the base name, or ``"AdamQLR (Hessian)"`` /
    ``"AdamQLR (Undamped)"`` for those variants, or the label itself when it has another
    qualifier (a clip, the padding dilution). Untuned variants are dashed, so an untuned and a
    tuned optimiser of one family share a colour and differ by the dash.

    Args:
        label: The figure label (a run-count suffix such as ``" (3 runs)"`` is not expected).

    Returns:
        ``(rgb, linestyle)``.
    """
    base, _, rest = label.partition(" (")
    qualifiers = [q.strip() for q in rest.rstrip(")").split(",")] if rest else []
    family = _FAMILY.get(base, base)
    for variant in ("Hessian", "Undamped"):
        if variant in qualifiers:
            family = f"{family} ({variant})"
    others = [q for q in qualifiers if q not in _PLAIN_QUALIFIERS | {"Hessian", "Undamped"}]
    key = label if others else family
    return palette([key])[key], "--" if "Untuned" in qualifiers else "-"


def draw_runs(
    ax: Axes,
    runs: Mapping[str, Sequence[Any]],
    metric: str,
    *,
    time: str = "time",
    points: int = 300,
    band: bool = True,
) -> None:
    """Draw each label's bootstrap-median curve and band on ``ax``, in :func:`line_style`.

    The aggregation is :func:`adamqlr.results.aggregate.summarise_runs`, exactly as in
    :func:`adamqlr.plots.runs.plot_runs` (the mean of 50 bootstrap medians, a band of one
    bootstrap standard deviation, the band's lower edge floored on a log axis); the labels get
    the colours and dashes of :func:`line_style`, and the legend entries carry the run counts.
    Losses are drawn on a log axis; accuracies on a linear axis fitted to the curves.
    """
    accuracy = "accuracy" in metric
    lows, highs = [], []
    for label, records in runs.items():
        summary = summarise_runs(list(records), metric, time=time, points=points).dropna(
            subset=["mean"]
        )
        if summary.empty:
            continue
        colour, dash = line_style(label)
        t = summary.index.to_numpy()
        mean, lower, upper = (summary[c].to_numpy() for c in ("mean", "lower", "upper"))
        if not accuracy and np.any(mean > 0):
            lower = np.maximum(lower, np.nanmin(mean[mean > 0]) * 1e-3)
        n = len(records)
        ax.plot(t, mean, color=colour, linestyle=dash, label=f"{label} ({n} run{'s' * (n != 1)})")
        if band:
            ax.fill_between(t, lower, upper, color=colour, alpha=0.2, linewidth=0)
        later = mean[len(mean) // 10 :]
        lows.append(np.nanmin(later))
        highs.append(np.nanmax(later))
    if accuracy:
        if lows:
            low, high = min(lows), max(highs)
            pad = 0.1 * (high - low) + 0.005
            ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    else:
        ax.set_yscale("log")
    ax.set_xlabel("optimisation time (s)" if time == "time" else time)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))


def plot_evaluations(
    ax: Axes,
    runs: Mapping[str, Sequence[Any]],
    metric: str = "test_loss",
    *,
    x: str = "step",
    log_x: bool = True,
) -> Axes:
    """Draw the median over runs of ``metric`` at each evaluation, with a marker per evaluation.

    Unlike :func:`draw_runs`, nothing is interpolated between evaluations: a line joins the
    logged points only, which keeps a run evaluated every few hundred steps from looking smooth
    on a log step axis. The point at ``x == 0`` is left out on a log axis.

    Args:
        ax: The axes.
        runs: ``{label: records}``; the records of one label share their evaluation steps.
        metric: An evaluated metric (``"test_loss"``, ``"val_loss"``, ``"test_accuracy"``).
        x: ``"step"`` or ``"epoch"``.
        log_x: Log x axis.

    Returns:
        The axes.
    """
    for label, records in runs.items():
        columns = []
        for record in records:
            frame = getattr(record, "metrics", record)[[x, metric]].dropna()
            columns.append(frame.set_index(x)[metric])
        table = pd.concat(columns, axis=1).dropna()
        if log_x:
            table = table[table.index > 0]
        if table.empty:
            continue
        colour, dash = line_style(label)
        n = len(records)
        ax.plot(table.index, table.median(axis=1), marker="o", markersize=3, color=colour,
                linestyle=dash, label=f"{label} ({n} run{'s' * (n != 1)})")  # fmt: skip
    if log_x:
        ax.set_xscale("log")
    if "accuracy" not in metric:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    return ax


def panel_title(title: str, label: str, width: float, fontsize: str | float = "medium") -> str:
    """Return ``"title: label"`` wrapped to fit a panel ``width`` inches wide.

    A title that fits stays on one line; one that does not puts the label on its own line, and
    any line still too long is wrapped at spaces (an average glyph is taken as 0.55 em wide), so
    that the titles of neighbouring panels never run into each other.

    Args:
        title: The panel's subject (a task, a regime).
        label: What the panel shows (a metric's label).
        width: The width available to the title, in inches.
        fontsize: The title's font size (points or a matplotlib size name).

    Returns:
        The title, with line breaks where needed.

    Raises:
        ValueError: If ``width`` is not positive.
    """
    if not width > 0:
        raise ValueError(f"width must be positive, got {width!r}")
    points = mpl.font_manager.FontProperties(size=fontsize).get_size_in_points()
    chars = max(8, int(width * 72 / (0.55 * points)))
    one = f"{title}: {label}"
    if len(one) <= chars:
        return one
    return "\n".join(textwrap.fill(line, chars) for line in (f"{title}:", label))


def plot_comparison(
    runs: Mapping[str, Mapping[str, Sequence[Any]]],
    metrics: Sequence[str] = ("train_loss", "test_loss"),
    *,
    time: str = "time",
    panel_size: tuple[float, float] = (4.2, 3.0),
    ylims: Mapping[tuple[str, str], tuple[float, float]] | None = None,
    points: int = 300,
    cap: float | None = 5.0,
) -> Figure:
    """Draw a grid of panels: one row per task, one column per metric, one line per optimiser.

    Each panel is :func:`draw_runs` (as :func:`~adamqlr.plots.runs.plot_runs`: the mean of 50
    bootstrap medians over the repeats, with a band of one bootstrap standard deviation). A
    metric a task does not have (accuracy on a regression task) leaves its panel hidden.

    Args:
        runs: ``{task title: {label: records}}``.
        metrics: Metric columns, one per column of panels.
        time: ``"time"`` (optimisation seconds) or ``"step"``.
        panel_size: Width and height of one panel in inches.
        ylims: Optional ``{(task title, metric): (low, high)}``.
        points: Grid points per curve.
        cap: On loss panels, cut the y axis at ``cap`` times the largest first logged value of
            any run, so that one diverged run (whose last finite loss is carried forward) does
            not squash the others; the panel then notes it. ``None``: no cut.

    Returns:
        The figure (one shared legend below the panels).

    Raises:
        ValueError: If ``runs`` or ``metrics`` is empty.
    """
    if not runs or not metrics:
        raise ValueError("nothing to plot: give at least one task and one metric")
    n_rows, n_cols = len(runs), len(metrics)
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows + 0.6),
        squeeze=False,
    )
    used = []
    for r, (title, groups) in enumerate(runs.items()):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            present = {
                label: list(recs)
                for label, recs in groups.items()
                if recs and all(metric in getattr(x, "metrics", x) for x in recs)
            }
            if not present:
                ax.set_visible(False)
                continue
            draw_runs(ax, present, metric, time=time, points=points)
            label = METRIC_LABELS.get(metric, metric)
            ax.set_title(panel_title(title, label, panel_size[0] * 0.95), fontsize="medium")
            ax.set_ylabel(METRIC_LABELS.get(metric, metric) if c == 0 else "")
            if ylims and (title, metric) in ylims:
                ax.set_ylim(*ylims[(title, metric)])
            elif cap is not None and "accuracy" not in metric:
                _cap_axis(ax, [r for recs in present.values() for r in recs], metric, cap)
            used.append(ax)
    _legend_below(fig, used)
    return fig


def _cap_axis(ax: Axes, records: Sequence[Any], metric: str, cap: float) -> None:
    firsts = []
    for record in records:
        values = getattr(record, "metrics", record)[metric].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if len(values):
            firsts.append(values[0])
    if not firsts:
        return
    top = cap * max(firsts)
    low, high = ax.get_ylim()
    if high > top > low:
        ax.set_ylim(low, top)
        ax.text(0.99, 0.98, f"cut at {cap:g}x the initial loss", transform=ax.transAxes,
                ha="right", va="top", fontsize="x-small", color="grey")  # fmt: skip


def _norm(values: Sequence[float], log: bool) -> mpl.colors.Normalize:
    lo, hi = float(min(values)), float(max(values))
    if lo == hi:
        lo, hi = (lo / 2, hi * 2) if log else (lo - 1, hi + 1)
    return mpl.colors.LogNorm(lo, hi) if log else mpl.colors.Normalize(lo, hi)


def plot_sensitivity(
    runs: Mapping[str, Sequence[Any]],
    values: Mapping[str, float],
    metric: str = "test_loss",
    *,
    ax: Axes | None = None,
    time: str = "time",
    log_values: bool = True,
    cmap: str = "viridis",
    colorbar_label: str | None = None,
    band: bool = True,
    points: int = 300,
) -> Axes:
    """Draw one median curve per setting of a swept hyperparameter, coloured by the setting.

    Args:
        runs: ``{setting label: records}``.
        values: ``{setting label: numeric value}`` (the colour scale).
        metric: The metric column.
        ax: Axes (default: a new figure).
        time: ``"time"`` or ``"step"``.
        log_values: Log colour scale.
        cmap: Matplotlib colour map.
        colorbar_label: Label of the colour bar (default: none).
        band: Shade one bootstrap standard deviation around each curve.
        points: Grid points per curve.

    Returns:
        The axes.

    Raises:
        ValueError: If a label has no value or ``runs`` is empty.
    """
    if not runs:
        raise ValueError("no runs to plot")
    missing = [label for label in runs if label not in values]
    if missing:
        raise ValueError(f"no value for setting(s) {missing}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 4.0))
    norm = _norm([values[k] for k in runs], log_values)
    colours = mpl.colormaps[cmap]
    accuracy = "accuracy" in metric
    for label, records in sorted(runs.items(), key=lambda kv: values[kv[0]]):
        summary = summarise_runs(list(records), metric, time=time, points=points).dropna(
            subset=["mean"]
        )
        if summary.empty:
            continue
        colour = colours(norm(values[label]))
        t = summary.index.to_numpy()
        ax.plot(t, summary["mean"], color=colour, label=label, linewidth=1.2)
        if band:
            lower = summary["lower"].to_numpy()
            if not accuracy:
                lower = np.maximum(lower, np.nanmin(summary["mean"].to_numpy()) * 1e-3)
            ax.fill_between(t, lower, summary["upper"], color=colour, alpha=0.15, linewidth=0)
    if not accuracy:
        ax.set_yscale("log")
    ax.set_xlabel("optimisation time (s)" if time == "time" else time)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    mappable = mpl.cm.ScalarMappable(norm=norm, cmap=colours)
    bar = ax.figure.colorbar(mappable, ax=ax, pad=0.01)
    if colorbar_label:
        bar.set_label(colorbar_label)
    return ax


def plot_final_vs_value(
    table: pd.DataFrame,
    *,
    ax: Axes | None = None,
    log_x: bool = True,
    log_y: bool = True,
    label: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    color: Any = None,
    reference: float | None = None,
) -> Axes:
    """Draw the final value of a metric against the swept setting: median, and range over seeds.

    Args:
        table: The output of :func:`adamqlr.studies.analysis.sensitivity_table`.
        ax: Axes (default: a new figure).
        log_x: Log x axis.
        log_y: Log y axis.
        label: Legend label of the line.
        xlabel: x-axis label.
        ylabel: y-axis label.
        color: Line colour.
        reference: Draw a vertical dotted line at this setting (e.g. the tuned value).

    Returns:
        The axes. Settings where every run diverged are drawn as crosses at the top of the axes;
        settings where some diverged get the count as a label.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    finite = table[np.isfinite(table["median"])]
    line = ax.plot(finite["value"], finite["median"], marker="o", label=label, color=color)[0]
    colour = line.get_color()
    lo = finite["min"].to_numpy()
    hi = np.where(np.isfinite(finite["max"]), finite["max"], np.nan)
    ax.vlines(finite["value"], lo, hi, color=colour, alpha=0.5)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    top = ax.get_ylim()[1]
    gone = table[~np.isfinite(table["median"])]
    if len(gone):
        ax.plot(gone["value"], [top] * len(gone), "x", color=colour, clip_on=False, markersize=8)
    for row in table[(table["diverged"] > 0)].itertuples():
        y = row.median if np.isfinite(row.median) else top
        ax.annotate(f"{row.diverged}/{row.runs} diverged", (row.value, y), fontsize="x-small",
                    textcoords="offset points", xytext=(3, 4), color=colour)  # fmt: skip
    if reference is not None:
        ax.axvline(reference, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(xlabel or "setting")
    if ylabel:
        ax.set_ylabel(ylabel)
    return ax


def plot_adaptive(
    runs: Mapping[str, Sequence[Any]],
    columns: Sequence[str] = ("lr", "damping"),
    *,
    axes: Sequence[Axes] | None = None,
    x: str = "step",
    points: int = 300,
) -> Sequence[Axes]:
    """Draw what an adaptive optimiser chose, median over seeds: step size and damping.

    The step size is drawn as its absolute value (AdamQLR's step size may be negative when
    momentum opposes the gradient); a label whose runs lack a column is skipped in that panel.

    Args:
        runs: ``{label: records}``.
        columns: Columns to draw, one panel each (``"lr"``, ``"damping"``, ``"rho"``).
        axes: Axes, one per column (default: a new row of panels).
        x: ``"step"`` or ``"time"``.
        points: Grid points per curve.

    Returns:
        The axes.
    """
    if axes is None:
        width = min(4.3 * len(columns), 9.0)  # narrow enough for the book's column
        _, grid = plt.subplots(1, len(columns), figsize=(width, 3.2), squeeze=False)
        axes = list(grid[0])
    names = {"lr": r"step size $|\alpha|$", "damping": r"damping $\lambda$", "rho": r"$\rho$"}
    for ax, column in zip(axes, columns, strict=True):
        drawn: list[np.ndarray] = []
        for label, records in runs.items():
            frames = []
            for record in records:
                frame = getattr(record, "metrics", record)
                if column not in frame or not frame[column].notna().any():
                    break
                values = frame[column].abs() if column == "lr" else frame[column]
                frames.append(pd.DataFrame({x: frame[x], column: values}))
            else:
                if not frames:
                    continue
                summary = summarise_runs(
                    frames, column, time=x, points=points, method="previous"
                ).dropna(subset=["median"])
                colour, dash = line_style(label)
                y = summary["median"].to_numpy(dtype=float)
                drawn.append(y)
                if column != "rho":  # keep matplotlib's log autoscaling inside the float range
                    y = np.minimum(y, _LOG_CAP)
                ax.plot(summary.index, y, color=colour, linestyle=dash, label=label)
        if column != "rho":
            ax.set_yscale("log")
            values = np.concatenate(drawn) if drawn else np.array([])
            values = values[np.isfinite(values) & (values > 0)]
            if len(values):  # explicit limits: a diverged run's damping (up to ~1e300) would
                # push the log axis and its ticks past the float range
                top = values.max() * 2
                ax.set_ylim(max(values.min() / 2, 1e-100), min(top, _LOG_CAP))
                if top > _LOG_CAP:
                    ax.text(0.99, 0.98, f"cut at {_LOG_CAP:.0e}", transform=ax.transAxes,
                            ha="right", va="top", fontsize="x-small", color="grey")  # fmt: skip
        ax.set_xlabel(x)
        ax.set_ylabel(names.get(column, column))
    return axes


#: Largest value a log axis of :func:`plot_adaptive` shows (matplotlib's log ticks overflow near
#: the float range).
_LOG_CAP = 1e100


def plot_step_costs(
    costs: pd.DataFrame,
    *,
    axes: Sequence[Axes] | None = None,
    reference_label: str = "Adam",
) -> Sequence[Axes]:
    """Draw the median time per step against batch size, and the same relative to Adam.

    Bars (when the table has ``low_s``/``high_s``) span the runs' medians: on a shared machine
    the runs of one setting, made at different times, differ by the load while each ran.

    Args:
        costs: The output of :func:`adamqlr.studies.analysis.relative_cost` (one task).
        axes: Two axes (default: a new row of two panels).
        reference_label: Label of the reference optimiser (drawn as the dotted line at 1).

    Returns:
        The two axes.
    """
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for label, rows in costs.groupby("label", sort=False):
        rows = rows.sort_values("batch_size")
        colour, _ = line_style(str(label))
        axes[0].plot(rows["batch_size"], rows["median_s"] * 1e3, marker="o", color=colour,
                     label=label)  # fmt: skip
        axes[1].plot(rows["batch_size"], rows["ratio"], marker="o", color=colour, label=label)
        if {"low_s", "high_s"} <= set(rows):  # spread between the runs (made at other times)
            axes[0].vlines(rows["batch_size"], rows["low_s"] * 1e3, rows["high_s"] * 1e3,
                           color=colour, alpha=0.5)  # fmt: skip
            axes[1].vlines(rows["batch_size"], rows["ratio_low"], rows["ratio_high"],
                           color=colour, alpha=0.5)  # fmt: skip
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
    axes[0].set_ylabel("time per step (ms)")
    axes[1].set_ylabel(f"time per step / {reference_label}'s")
    axes[1].axhline(1.0, color="grey", linestyle=":", linewidth=1)
    handles, labels = axes[1].get_legend_handles_labels()
    axes[1].figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5))
    return axes


def plot_divergence_rates(
    table: pd.DataFrame,
    *,
    ax: Axes | None = None,
    xlabel: str = "batch size",
    dodge: float = 0.0,
) -> Axes:
    """Draw the fraction of diverged runs against a swept value, one line per group.

    Args:
        table: The output of :func:`adamqlr.studies.analysis.divergence_rates` (``group``,
            ``label``, ``value``, ``rate``, ``low``, ``high``).
        ax: Axes to draw on (default: a new figure).
        xlabel: Label of the (log-scale) x axis.
        dodge: Shift the groups apart along x by this fraction of a decade between neighbours
            (centred on the true value), so that groups with the same rate (e.g. all at 0 %)
            stay visible side by side; ``0`` draws every group at the true values. Each group
            also gets its own marker.

    Returns:
        The axes (bars: the Wilson interval of each rate).

    Raises:
        ValueError: If ``dodge`` is negative or not finite.
    """
    if not math.isfinite(dodge) or dodge < 0:
        raise ValueError(f"invalid dodge {dodge!r}; expected a finite value >= 0")
    if ax is None:
        _, ax = plt.subplots(figsize=(5.0, 3.4))
    groups = list(dict.fromkeys(table["group"]))
    markers = ("o", "s", "^", "D", "v", "P", "X")
    for i, (_, rows) in enumerate(table.groupby("group", sort=False)):
        rows = rows.sort_values("value")
        label = str(rows["label"].iloc[0]).split(", ", 1)[-1]
        colour, dash = line_style(label)
        shift = 10.0 ** (dodge * (i - (len(groups) - 1) / 2))
        x = rows["value"].to_numpy(dtype=float) * shift
        y = rows["rate"].to_numpy(dtype=float)
        low, high = rows["low"].to_numpy(dtype=float), rows["high"].to_numpy(dtype=float)
        err = np.maximum(np.vstack([y - low, high - y]), 0.0)
        ax.errorbar(x, y, yerr=err, color=colour, linestyle=dash, marker=markers[i % len(markers)],
                    capsize=3, label=label)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("diverged runs")
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(mpl.ticker.PercentFormatter(1.0))
    ax.legend(fontsize="small")
    return ax
