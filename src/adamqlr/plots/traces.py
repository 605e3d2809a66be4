"""Traces of an AdamQLR run: loss, step size alpha, damping lambda and reduction ratio rho.

The input is what :meth:`adamqlr.AdamQLR.step` returns, one :class:`~adamqlr.StepStats` per step
(or their ``as_dict()``), or a :class:`pandas.DataFrame` with the same columns; several runs go in
one frame with a column that tells them apart (``hue``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from adamqlr.plots.theme import palette

__all__ = ["QUANTITIES", "plot_traces", "traces_frame"]

#: Column -> axis label of the quantities :func:`plot_traces` can draw.
QUANTITIES: dict[str, str] = {
    "loss": "mini-batch loss",
    "lr": r"step size $|\alpha|$",
    "damping": r"damping $\lambda$",
    "rho": r"reduction ratio $\rho$",
}


def traces_frame(
    stats: pd.DataFrame | Iterable[Any], *, label: str | None = None, x: str = "iteration"
) -> pd.DataFrame:
    """Turn step statistics into a tidy frame, one row per step.

    Args:
        stats: A frame, or an iterable of :class:`~adamqlr.StepStats` or mappings.
        label: If given, a ``label`` column with this value is added (to combine runs).
        x: Name of the step-index column; added (0, 1, 2, ...) when missing.

    Returns:
        A new frame.

    Raises:
        ValueError: If ``stats`` is empty or an item is neither a mapping nor has ``as_dict``.
    """
    if isinstance(stats, pd.DataFrame):
        frame = stats.copy()
    else:
        rows = []
        for i, item in enumerate(stats):
            if hasattr(item, "as_dict"):
                rows.append(item.as_dict())
            elif isinstance(item, Mapping):
                rows.append(dict(item))
            else:
                raise ValueError(
                    f"invalid stats[{i}]: {item!r} (expected a StepStats or a mapping)"
                )
        frame = pd.DataFrame(rows)
    if frame.empty:
        raise ValueError("invalid stats: no steps to plot")
    if x not in frame.columns:
        frame.insert(0, x, np.arange(len(frame)))
    if label is not None:
        frame["label"] = label
    return frame


def _finite(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return array[np.isfinite(array)]


def _scale(ax: Axes, values: np.ndarray) -> None:
    """Log scale for positive data; symmetric log when zeros or negative values occur."""
    if values.size == 0:
        return
    if (values > 0).all():
        ax.set_yscale("log")
        return
    nonzero = np.abs(values[values != 0])
    if nonzero.size == 0:
        return
    ax.set_yscale("symlog", linthresh=float(max(np.quantile(nonzero, 0.05), 1e-12)))
    ax.axhline(0.0, color="0.4", linewidth=0.8, zorder=0)


def plot_traces(
    stats: pd.DataFrame | Iterable[Any],
    *,
    quantities: Sequence[str] = ("loss", "lr", "damping", "rho"),
    x: str = "iteration",
    hue: str | None = None,
    ncols: int = 2,
    height: float = 2.6,
    title: str | None = None,
) -> Figure:
    """Plot loss, step size, damping and reduction ratio against the step, one panel each.

    Scales: loss, step size and damping are drawn on a log axis (a symmetric-log axis when a loss
    is not positive or the damping is zero somewhere). The step size panel shows ``|alpha|`` and
    marks the steps with a negative ``alpha`` (taken backwards along the direction, when
    ``g^T d < 0``) with small black triangles. The reduction ratio is drawn on a linear axis with
    the band ``1/4 <= rho <= 3/4`` (damping left unchanged) shaded, limited to the central 96 % of
    its values widened to ``[0, 1]``, because a few steps with a tiny predicted change give huge
    ratios. Steps the optimiser rejected (``accepted`` false) are marked with crosses on the loss
    panel. With ``hue``, one legend above the panels names the runs.

    Args:
        stats: Step statistics (see :func:`traces_frame`).
        quantities: Columns to draw, from :data:`QUANTITIES`.
        x: Column for the horizontal axis (added as 0, 1, 2, ... when missing).
        hue: Column that separates runs (e.g. ``"label"``); colours come from
            :func:`adamqlr.plots.theme.palette`.
        ncols: Panels per row.
        height: Height of one panel in inches.
        title: Figure title.

    Returns:
        The figure.

    Raises:
        ValueError: If a quantity is unknown or missing from the data, ``hue`` is not a column, or
            ``ncols`` is not a positive int.
    """
    frame = traces_frame(stats, x=x)
    quantities = list(quantities)
    if not quantities:
        raise ValueError("invalid quantities: [] (expected at least one)")
    for q in quantities:
        if q not in QUANTITIES:
            raise ValueError(f"invalid quantity {q!r}; expected some of {list(QUANTITIES)}")
        if q not in frame.columns:
            raise ValueError(f"invalid quantity {q!r}: the data has no column {q!r}")
    if hue is not None and hue not in frame.columns:
        raise ValueError(f"invalid hue {hue!r}: the data has no such column")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"invalid ncols: {ncols!r} (expected an int >= 1)")

    ncols = min(ncols, len(quantities))
    nrows = -(-len(quantities) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(4.2 * ncols, height * nrows),
        sharex=True,
        squeeze=False,
        layout="constrained",
    )
    colours = palette(frame[hue].astype(str).unique()) if hue is not None else None
    if hue is not None:
        frame[hue] = frame[hue].astype(str)
    for k, (ax, q) in enumerate(zip(axes.flat, quantities, strict=False)):
        data = frame[[x, q] + ([hue] if hue else [])].copy()
        data[q] = pd.to_numeric(data[q], errors="coerce")
        signed = data[q].copy()
        if q == "lr":
            data[q] = data[q].abs()
        sns.lineplot(
            data=data,
            x=x,
            y=q,
            hue=hue,
            palette=colours,
            estimator=None,
            sort=False,
            ax=ax,
            legend=False,
        )
        values = _finite(data[q])
        if q == "lr":
            negative = data[signed < 0]
            if len(negative):
                ax.scatter(
                    negative[x], negative[q], marker="v", s=12, color="black", linewidth=0, zorder=3
                )
                ax.text(
                    0.99,
                    0.02,
                    r"$\blacktriangledown$: $\alpha < 0$",
                    transform=ax.transAxes,
                    ha="right",
                    va="bottom",
                    fontsize="small",
                )
            _scale(ax, values[values > 0] if (values > 0).any() else values)
        elif q == "rho":
            ax.axhspan(0.25, 0.75, color="0.85", zorder=0, label=None)
            if values.size:
                lo, hi = np.quantile(values, [0.02, 0.98])
                lo, hi = min(float(lo), 0.0), max(float(hi), 1.0)
                pad = 0.05 * (hi - lo)
                ax.set_ylim(lo - pad, hi + pad)
        else:
            _scale(ax, values)
        if q == "loss" and "accepted" in frame.columns:
            rejected = frame[~frame["accepted"].astype(bool)]
            if len(rejected):
                ax.scatter(
                    rejected[x],
                    rejected[q],
                    marker="x",
                    color="black",
                    s=18,
                    zorder=3,
                    label="rejected step",
                )
                ax.legend()
        ax.set_ylabel(QUANTITIES[q])
        ax.set_xlabel(x if k >= len(quantities) - ncols else "")
    for ax in list(axes.flat)[len(quantities) :]:
        ax.set_visible(False)
    if colours:
        handles = [plt.Line2D([], [], color=c, label=label) for label, c in colours.items()]
        fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 4))
    if title:
        fig.suptitle(title)
    return fig
