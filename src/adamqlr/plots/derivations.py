"""Figures of the derivation chapters, one function per figure.

Each function takes the data its chapter computed (with :mod:`adamqlr.lens`) and returns a
matplotlib ``Figure``; the notebooks only call them, after :func:`adamqlr.plots.theme.set_theme`.
Colours come from :func:`adamqlr.plots.theme.palette`, so an optimiser label has the same colour in
every figure of the book.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure

from adamqlr.lens.trajectories import Trajectory
from adamqlr.plots.theme import palette
from adamqlr.tasks.rosenbrock import rosenbrock

__all__ = ["plot_rosenbrock"]

#: The paper's Rosenbrock window and contour levels.
ROSENBROCK_WINDOW = ((-1.5, 1.5), (-1.8, 1.2))
ROSENBROCK_LEVELS = np.logspace(-4, 4, 81)


def plot_rosenbrock(
    trajectories: Mapping[str, Trajectory],
    *,
    traced: Sequence[str] | None = None,
    a: float = 1.0,
    b: float = 100.0,
    grid_points: int = 400,
    loss_floor: float = 1e-16,
) -> Figure:
    """Draw the Rosenbrock figure: paths over log contours, and loss, step size and damping traces.

    Left: filled contours of ``f`` (81 log-spaced levels from 1e-4 to 1e4) over the paper's window
    ``x in [-1.5, 1.5]``, ``y in [-1.8, 1.2]``, every optimiser's path as connected markers from
    the start (a circle), and the minimum ``(1, 1)`` as a star. Right, against the step: the loss
    ``f / 4`` (log scale, floored at ``loss_floor`` so that a run that hits the minimum exactly
    stays visible), the step size ``|alpha|`` and the damping ``lambda`` of the traced runs
    (log scale; steps with a negative ``alpha`` are marked, rejected steps are crosses).

    Args:
        trajectories: Label -> trajectory, in legend order.
        traced: Labels whose ``alpha`` and ``lambda`` are drawn (default: those with a damping).
        a: Rosenbrock's ``a``.
        b: Rosenbrock's ``b``.
        grid_points: Resolution of the contour grid along each axis.
        loss_floor: Smallest loss drawn.

    Returns:
        The figure.

    Raises:
        ValueError: If ``trajectories`` is empty or ``traced`` names an unknown label.
    """
    if not trajectories:
        raise ValueError("invalid trajectories: empty")
    labels = list(trajectories)
    if traced is None:
        traced = [k for k, t in trajectories.items() if np.isfinite(t.damping).any()]
    unknown = [k for k in traced if k not in trajectories]
    if unknown:
        raise ValueError(f"invalid traced labels: {unknown} (not among {labels})")
    colours = palette(labels)

    fig = plt.figure(figsize=(12, 6.2), layout="constrained")
    grid = fig.add_gridspec(3, 2, width_ratios=(1.35, 1.0))
    ax_map = fig.add_subplot(grid[:, 0])
    ax_loss = fig.add_subplot(grid[0, 1])
    ax_lr = fig.add_subplot(grid[1, 1], sharex=ax_loss)
    ax_damp = fig.add_subplot(grid[2, 1], sharex=ax_loss)

    (x0, x1), (y0, y1) = ROSENBROCK_WINDOW
    xx, yy = np.meshgrid(np.linspace(x0, x1, grid_points), np.linspace(y0, y1, grid_points))
    zz = np.clip(rosenbrock(xx, yy, a, b), ROSENBROCK_LEVELS[0], ROSENBROCK_LEVELS[-1])
    filled = ax_map.contourf(
        xx, yy, zz, levels=ROSENBROCK_LEVELS, norm=mcolors.LogNorm(), cmap="Greys_r", alpha=0.9
    )
    fig.colorbar(filled, ax=ax_map, label="Rosenbrock $f(x, y)$", ticks=np.logspace(-4, 4, 9))
    for label, t in trajectories.items():
        ax_map.plot(
            t.x, t.y, "-o", color=colours[label], markersize=2.5, linewidth=1.0, label=label
        )
    first = next(iter(trajectories.values()))
    ax_map.plot(first.x[0], first.y[0], "o", color="white", markeredgecolor="black", markersize=8)
    ax_map.plot(a, a * a, "*", color="gold", markeredgecolor="black", markersize=16, zorder=5)
    ax_map.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="$x$", ylabel="$y$", aspect="equal")
    ax_map.legend(loc="lower left", fontsize="small", framealpha=0.9)

    for label, t in trajectories.items():
        steps = np.arange(len(t.loss))
        shown = np.maximum(t.loss, loss_floor)
        ax_loss.plot(steps, shown, color=colours[label], linewidth=1.3, label=label)
    ax_loss.set(yscale="log", ylabel="loss $f/4$", ylim=(loss_floor / 3, None))

    for label in traced:
        t = trajectories[label]
        steps = np.arange(1, len(t.lr) + 1)
        ax_lr.plot(steps, np.abs(t.lr), color=colours[label], linewidth=1.2)
        negative = t.lr < 0
        if negative.any():
            ax_lr.plot(steps[negative], -t.lr[negative], "v", color=colours[label], markersize=4)
        ax_damp.plot(steps, t.damping, color=colours[label], linewidth=1.2)
        rejected = ~t.accepted & np.isfinite(t.damping)
        if rejected.any():
            ax_damp.plot(steps[rejected], t.damping[rejected], "x", color=colours[label])
    ax_lr.set(yscale="log", ylabel=r"step size $|\alpha|$")
    ax_damp.set(yscale="log", ylabel=r"damping $\lambda$", xlabel="step")
    for ax in (ax_loss, ax_lr):
        ax.tick_params(labelbottom=False)
    return fig
