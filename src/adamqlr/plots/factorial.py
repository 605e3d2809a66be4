"""Interaction plots of a factorial study (:mod:`adamqlr.studies.effects`)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.ticker import Formatter

from adamqlr.studies.effects import FactorialEffects

__all__ = ["plot_interactions"]


def plot_interactions(
    effects: FactorialEffects,
    x: str,
    lines: str,
    panels: str | None = None,
    *,
    ylabel: str = "median final test loss",
    panel_size: tuple[float, float] = (2.9, 2.8),
    titles: Sequence[str] | None = None,
    axes: Sequence[Axes] | None = None,
    legend: bool = True,
) -> Figure | SubFigure:
    """Draw each cell's median and interval against one factor: lines and panels for two others.

    One line per level of ``lines``, one panel per level of ``panels``.

    Parallel lines mean no interaction between ``x`` and ``lines``; the vertical spread of the
    lines is the effect of ``lines``, the slope of each line the effect of ``x``. The y axis is
    logarithmic, like the effects' scale.

    Args:
        effects: The estimated effects (their ``cells`` table is drawn).
        x: The factor along the x axis.
        lines: The factor whose levels are the lines.
        panels: The factor whose levels are the panels (``None``: one panel; then the design must
            have exactly the two factors ``x`` and ``lines``).
        ylabel: The y axis label.
        panel_size: Width and height of one panel in inches.
        titles: Panel titles (default: the panel factor's levels).
        axes: Draw into these axes, one per panel, instead of a new figure (e.g. one row of a
            grid with a row per task).
        legend: Whether to draw the legend, the figure's, below its panels (give it for one
            row of a grid only).

    Returns:
        The figure (the one ``axes`` belong to, when given).

    Raises:
        ValueError: For a factor the design does not have, a panel-less plot of a design with
            more than two factors, or ``axes`` of another length than the panels.
    """
    for name in (x, lines, *(() if panels is None else (panels,))):
        if name not in effects.factors:
            raise ValueError(f"unknown factor {name!r}; the design has {list(effects.factors)}")
    if panels is None and len(effects.factors) != 2:
        raise ValueError(f"give panels= for a design with factors {list(effects.factors)}")
    panel_levels: tuple[str | None, ...] = (None,) if panels is None else effects.levels[panels]
    if axes is None:
        fig, grid = plt.subplots(
            1,
            len(panel_levels),
            figsize=(panel_size[0] * len(panel_levels), panel_size[1] + 0.7),
            sharey=True,
            squeeze=False,
            layout="constrained",
        )
        drawn = list(grid[0])
    else:
        drawn = list(axes)
        if len(drawn) != len(panel_levels):
            raise ValueError(f"axes: {len(drawn)} given for {len(panel_levels)} panels")
        fig = drawn[0].figure
    cells = effects.cells
    xs = effects.levels[x]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (ax, level) in enumerate(zip(drawn, panel_levels, strict=True)):
        part = cells if level is None else cells[cells[panels] == level]
        for j, line in enumerate(effects.levels[lines]):
            rows = part[part[lines] == line].set_index(x).reindex(xs)
            pos = np.arange(len(xs)) + (j - (len(effects.levels[lines]) - 1) / 2) * 0.06
            median = rows["median"].to_numpy(dtype=float)
            err = np.vstack([median - rows["low"].to_numpy(), rows["high"].to_numpy() - median])
            ax.errorbar(pos, median, yerr=err, marker="o", ms=4, capsize=2, lw=1.4,
                        color=palette[j % len(palette)], label=str(line))  # fmt: skip
        ax.set_xticks(np.arange(len(xs)), [str(v) for v in xs])
        ax.set_xlabel(x)
        ax.set_yscale("log")
        if level is not None:
            ax.set_title(titles[k] if titles else str(level), fontsize="medium")
        if k == 0:
            ax.set_ylabel(ylabel)
    for ax in drawn:
        _plain_labels_within_a_decade(ax)
    if not legend:
        return fig
    # one legend for the figure, below the panels (a legend inside a panel can cover a point);
    # "outside" asks the constrained layout to make room for it
    handles, labels = drawn[0].get_legend_handles_labels()
    constrained = isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    fig.legend(
        handles,
        labels,
        title=lines,
        loc="outside lower center" if constrained else "lower center",
        ncol=len(labels),
    )
    return fig


class _PlainLog(Formatter):
    """Label the ticks that ``inner`` (a log formatter) labels, as plain numbers (``0.245``)."""

    def __init__(self, inner: Formatter) -> None:
        self.inner = inner

    def set_locs(self, locs: list[float]) -> None:  # noqa: D102
        super().set_locs(locs)
        self.inner.set_axis(self.axis)
        self.inner.set_locs(locs)

    def __call__(self, x: float, pos: int | None = None) -> str:  # noqa: D102
        return f"{x:.3g}" if self.inner(x, pos) else ""


def _plain_labels_within_a_decade(ax: Axes) -> None:
    """Label a log axis that spans less than a factor of 10 with plain numbers.

    Within one decade matplotlib labels some minor ticks in scientific notation
    (``2.45 × 10^-1``, ``2.5 × 10^-1``, ...), which crowds a narrow panel; ``0.245``, ``0.25``
    say the same. The ticks labelled stay matplotlib's choice; wider axes keep its powers of ten.
    """
    low, high = ax.get_ylim()
    if low > 0 and high / low < 10:
        ax.yaxis.set_major_formatter(_PlainLog(ax.yaxis.get_major_formatter()))
        ax.yaxis.set_minor_formatter(_PlainLog(ax.yaxis.get_minor_formatter()))
