"""Figures of the chapter "K-FAC's heuristics", one function per figure.

Each function takes what :mod:`adamqlr.lens.kfac_heuristics` computed and returns a matplotlib
``Figure``; the notebook only calls them, after :func:`adamqlr.plots.theme.set_theme`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from torch import Tensor

from adamqlr.lens.kfac_heuristics import (
    Snapshot,
    cross_term_trace,
    damping_eigenvalues,
    pi_adjustment,
)

__all__ = ["plot_kfac_traces", "plot_pi_damping", "plot_quadratic_plane"]


def _layer_colours(names: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    base = sns.color_palette("colorblind", n_colors=10)
    return {name: base[i % 10] for i, name in enumerate(names)}


def plot_pi_damping(
    factors: Mapping[str, tuple[Tensor, Tensor]],
    damping: float,
    *,
    dampings: np.ndarray | None = None,
    pi_scale: np.ndarray | None = None,
) -> Figure:
    """Draw what factored damping adds to ``lambda I``, and how ``pi`` keeps it small.

    Left: ``tr E(pi) / (lambda P_l)`` (the extra damping over the exact ``lambda I``, per
    parameter and in units of ``lambda``) against ``pi / pi*`` for each layer at ``damping``, with
    the minimiser ``pi*`` of :func:`adamqlr.lens.kfac_heuristics.pi_adjustment` marked. Right,
    against ``lambda``: the largest and the median ratio of a factored-damping eigenvalue to the
    matching ``a_i g_j + lambda``, with ``pi*`` (solid) and with ``pi = 1`` (dashed); the dotted
    line marks ``damping``.

    Args:
        factors: ``{layer: (A, G)}``.
        damping: The damping of the left panel (e.g. the run's final one).
        dampings: The grid of the right panel (default ``10^-8 .. 10^2``).
        pi_scale: The grid of ``pi / pi*`` of the left panel (default ``10^-2 .. 10^2``).

    Returns:
        The figure.

    Raises:
        ValueError: If ``factors`` is empty or ``damping`` is not positive.
    """
    if not factors:
        raise ValueError("invalid factors: empty (expected at least one layer)")
    if not damping > 0:
        raise ValueError(f"invalid damping: {damping!r} (expected > 0)")
    dampings = np.logspace(-8, 2, 61) if dampings is None else np.asarray(dampings)
    pi_scale = np.logspace(-2, 2, 81) if pi_scale is None else np.asarray(pi_scale)
    colours = _layer_colours(list(factors))
    fig, (ax_pi, ax_eig) = plt.subplots(1, 2, figsize=(8.8, 3.4), layout="constrained")
    for name, (a, g) in factors.items():
        colour = colours[name]
        size = a.shape[0] * g.shape[0]
        best = pi_adjustment(a, g)
        extra = [cross_term_trace(a, g, damping, best * s) / (damping * size) for s in pi_scale]
        label = f"layer {name} ({a.shape[0]} x {g.shape[0]} factors)"
        ax_pi.plot(pi_scale, extra, color=colour, label=label)
        at_best = cross_term_trace(a, g, damping, best) / (damping * size)
        ax_pi.plot([1.0], [at_best], "o", color=colour)
        for pi_of, style in ((lambda _b: _b, "-"), (lambda _b: 1.0, "--")):
            largest, median = [], []
            for lam in dampings:
                exact, factored = damping_eigenvalues(a, g, float(lam), pi_of(best))
                ratio = factored / exact
                largest.append(ratio.max())
                median.append(np.median(ratio))
            ax_eig.plot(dampings, largest, style, color=colour, linewidth=1.4)
            ax_eig.plot(dampings, median, style, color=colour, linewidth=0.8, alpha=0.6)
    ax_pi.set(
        xscale="log",
        yscale="log",
        xlabel=r"$\pi / \pi^*$",
        ylabel=r"$\mathrm{tr}\,E(\pi) / (\lambda P_l)$",
        title=rf"extra damping at $\lambda = {damping:.3g}$",
    )
    ax_pi.legend(fontsize="small")
    ax_eig.axvline(damping, color="0.5", linestyle=":", linewidth=1.0)
    ax_eig.set(
        xscale="log",
        yscale="log",
        xlabel=r"damping $\lambda$",
        ylabel="factored / exact eigenvalue",
        title=r"largest (thick) and median (thin); $\pi^*$ solid, $\pi = 1$ dashed",
    )
    ax_eig.title.set_fontsize("small")
    return fig


def plot_quadratic_plane(
    planes: Sequence[tuple[Snapshot, pd.DataFrame]],
    *,
    levels: int = 14,
) -> Figure:
    """Draw the batch loss change and the damped model over the learning-rate/momentum plane.

    One panel per step: filled contours of the actual change ``f(theta + delta) - f(theta)`` on
    the step's batch, black contour lines of the damped model ``Q_lambda`` at the same levels, a
    star at the model's minimiser (the step K-FAC took), a circle at the minimiser along ``Delta``
    alone (momentum 0), a diamond at the undamped model's minimiser (when it is inside the grid)
    and a cross at the grid point with the lowest actual change.

    Args:
        planes: ``(snapshot, grid)`` pairs, the grid from
            :func:`adamqlr.lens.kfac_heuristics.landscape`.
        levels: Number of contour levels.

    Returns:
        The figure.

    Raises:
        ValueError: If ``planes`` is empty.
    """
    if not planes:
        raise ValueError("invalid planes: empty (expected at least one step)")
    fig, axes = plt.subplots(
        1,
        len(planes),
        figsize=(min(4.4 * len(planes), 8.8), 3.8),
        layout="constrained",
        squeeze=False,
    )
    for ax, (snap, grid) in zip(axes[0], planes, strict=True):
        lrs = np.sort(grid["lr"].unique())
        moms = np.sort(grid["momentum"].unique())
        table = grid.pivot(index="momentum", columns="lr", values="change").loc[moms, lrs]
        model = grid.pivot(index="momentum", columns="lr", values="model_damped").loc[moms, lrs]
        low = min(float(table.to_numpy().min()), float(model.to_numpy().min()))
        high = max(0.0, -low)
        bounds = np.linspace(low, high, levels)
        filled = ax.contourf(lrs, moms, table.to_numpy(), levels=bounds, cmap="viridis",
                             extend="both")  # fmt: skip
        ax.contour(lrs, moms, model.to_numpy(), levels=bounds, colors="k", linewidths=0.7,
                   linestyles="solid")  # fmt: skip
        sol = snap.solution
        ax.plot(-sol.w1, sol.w2, "*", color="white", markeredgecolor="k", markersize=15,
                label="model minimiser (K-FAC's step)")  # fmt: skip
        ax.plot(-sol.w1_line, 0.0, "o", color="tab:orange", markeredgecolor="k", markersize=8,
                label=r"minimiser along $\Delta$ alone")  # fmt: skip
        curv = np.asarray(snap.curvature)
        if snap.gram[1, 1] > 0 and np.all(np.linalg.eigvalsh(curv) > 0):
            w_free = -np.linalg.solve(curv, snap.grad_dots)
            if lrs[0] <= -w_free[0] <= lrs[-1] and moms[0] <= w_free[1] <= moms[-1]:
                ax.plot(-w_free[0], w_free[1], "D", color="tab:pink", markeredgecolor="k",
                        markersize=7, label="undamped model minimiser")  # fmt: skip
        best = grid.loc[grid["change"].idxmin()]
        ax.plot(best["lr"], best["momentum"], "X", color="tab:red", markeredgecolor="k",
                markersize=9, label="lowest batch loss on the grid")  # fmt: skip
        ax.set(
            xlabel=r"learning rate $-w_1$",
            ylabel=r"momentum $w_2$",
            title=rf"step {snap.iteration}: $\lambda = {snap.damping:.3g}$",
        )
        fig.colorbar(filled, ax=ax, label="batch loss change")
    axes[0][0].legend(fontsize="small", loc="lower left")
    return fig


def plot_kfac_traces(
    trace: pd.DataFrame, *, rho_limits: tuple[float, float] = (-0.5, 2.5)
) -> Figure:
    """Draw the adaptive quantities of K-FAC's audited runs against the step.

    Six panels, one line per seed (the first seed darker): the mini-batch loss (log), the learning
    rate ``-w_1``, the momentum ``w_2``, the damping (log), the reduction ratio in kfac-jax's
    convention (undamped model change) and in AdamQLR's (damped) for the first seed, with the
    band ``[1/4, 3/4]``
    shaded and values outside ``rho_limits`` clipped to the edge, and ``pi`` of each layer.

    Args:
        trace: Rows of :func:`adamqlr.lens.kfac_heuristics.audit_kfac_run` with a ``seed`` column.
        rho_limits: The vertical range of the ``rho`` panel.

    Returns:
        The figure.

    Raises:
        ValueError: If ``trace`` is empty.
    """
    if trace.empty:
        raise ValueError("invalid trace: empty")
    seeds = sorted(trace["seed"].unique())
    pis = [c for c in trace.columns if c.startswith("pi_")]
    fig, axes = plt.subplots(2, 3, figsize=(8.8, 5.2), sharex=True, layout="constrained")
    ax_loss, ax_lr, ax_mom, ax_damp, ax_rho, ax_pi = axes.flat
    base = sns.color_palette("colorblind", n_colors=10)
    layer_colours = _layer_colours([c[3:] for c in pis])
    lo, hi = rho_limits
    for k, seed in enumerate(seeds):
        run = trace[trace["seed"] == seed]
        it = run["iteration"].to_numpy()
        alpha = 1.0 if k == 0 else 0.35
        width = 1.2 if k == 0 else 0.8
        ax_loss.plot(it, run["loss"], color=base[0], alpha=alpha, linewidth=width)
        ax_lr.plot(it, run["lr"], color=base[0], alpha=alpha, linewidth=width)
        ax_mom.plot(it, run["momentum"], color=base[0], alpha=alpha, linewidth=width)
        ax_damp.plot(it, run["damping_used"], color=base[0], alpha=alpha, linewidth=width)
        for column, colour, label in (
            ("rho_damped", base[3], r"$\rho$ (damped model: AdamQLR)"),
            ("rho_undamped", base[0], r"$\rho$ (undamped model: kfac-jax)"),
        ):
            if k == 0:  # one seed: the two conventions would hide each other
                ax_rho.plot(it, np.clip(run[column], lo, hi), color=colour, linewidth=0.9,
                            label=label)  # fmt: skip
        for column in pis:
            pi_label = f"layer {column[3:]}" if k == 0 else None
            ax_pi.plot(it, run[column], color=layer_colours[column[3:]], alpha=alpha,
                       linewidth=width, label=pi_label)  # fmt: skip
    ax_rho.axhspan(0.25, 0.75, color="0.85", zorder=0)
    ax_rho.set(ylim=(lo - 0.05, hi + 0.05), ylabel=r"reduction ratio $\rho$", xlabel="step")
    ax_rho.legend(fontsize="small", loc="lower right")
    ax_loss.set(yscale="log", ylabel="mini-batch loss")
    ax_lr.set(ylabel=r"learning rate $-w_1$")
    ax_mom.axhline(0.0, color="0.5", linewidth=0.8)
    ax_mom.set(ylabel=r"momentum $w_2$")
    ax_damp.set(yscale="log", ylabel=r"damping $\lambda$", xlabel="step")
    ax_pi.set(yscale="log", ylabel=r"$\pi$ of each layer", xlabel="step")
    ax_pi.legend(fontsize="small")
    return fig
