"""Figures of the derivation chapters, one function per figure.

Each function takes the data its chapter computed (with :mod:`adamqlr.lens`) and returns a
matplotlib ``Figure``; the notebooks only call them, after :func:`adamqlr.plots.theme.set_theme`.
Colours come from :func:`adamqlr.plots.theme.palette`, so an optimiser label has the same colour in
every figure of the book.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from adamqlr.lens.line import LineProbe
from adamqlr.lens.products import ProductCost
from adamqlr.lens.trajectories import Trajectory
from adamqlr.plots.theme import KNOWN_LABELS, palette
from adamqlr.results.aggregate import blown_up
from adamqlr.tasks.rosenbrock import rosenbrock

__all__ = [
    "plot_adam_lens",
    "plot_curvature_matrices",
    "plot_damping_traces",
    "plot_line_models",
    "plot_product_costs",
    "plot_rosenbrock",
    "plot_rosenbrock_records",
]


def _colours(labels: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """Colours for ``labels``: the book's colour for a label it knows, distinct ones otherwise.

    :func:`adamqlr.plots.theme.palette` fixes a colour for each of the paper's optimiser labels;
    labels it does not know (this chapter's variants, such as "AdamQLR (Untuned, GGN)") get
    well-separated colours from seaborn's ``dark`` palette instead of neighbouring hues.
    """
    known = palette([label for label in labels if label in KNOWN_LABELS])
    dark = sns.color_palette("dark", 10)
    spare = [dark[i] for i in (0, 3, 4, 1, 5, 8, 6, 9, 2, 7)]
    out, k = {}, 0
    for label in labels:
        if label in known:
            out[label] = known[label]
        else:
            out[label] = spare[k % len(spare)]
            k += 1
    return out


#: The paper's Rosenbrock window and contour levels.
ROSENBROCK_WINDOW = ((-1.5, 1.5), (-1.8, 1.2))
ROSENBROCK_LEVELS = np.logspace(-4, 4, 81)


def _rosenbrock_map(
    fig: Figure,
    ax: Axes,
    paths: Mapping[str, tuple[np.ndarray, np.ndarray]],
    colours: Mapping[str, Any],
    *,
    a: float,
    b: float,
    grid_points: int,
) -> None:
    """Draw log contours of ``f`` over the paper's window and each path from its start (circle)."""
    (x0, x1), (y0, y1) = ROSENBROCK_WINDOW
    xx, yy = np.meshgrid(np.linspace(x0, x1, grid_points), np.linspace(y0, y1, grid_points))
    # rosenbrock() is written for tensors and floats; numpy broadcasts through it the same way
    z = rosenbrock(cast(Any, xx), cast(Any, yy), a, b)
    zz = np.clip(z, ROSENBROCK_LEVELS[0], ROSENBROCK_LEVELS[-1])
    filled = ax.contourf(
        xx, yy, zz, levels=ROSENBROCK_LEVELS, norm=mcolors.LogNorm(), cmap="Greys_r", alpha=0.9
    )
    fig.colorbar(filled, ax=ax, label="Rosenbrock $f(x, y)$", ticks=np.logspace(-4, 4, 9))
    for label, (x, y) in paths.items():
        ax.plot(x, y, "-o", color=colours[label], markersize=2.5, linewidth=1.0, label=label)
    x, y = next(iter(paths.values()))
    ax.plot(x[0], y[0], "o", color="white", markeredgecolor="black", markersize=8)
    ax.plot(a, a * a, "*", color="gold", markeredgecolor="black", markersize=16, zorder=5)
    ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="$x$", ylabel="$y$", aspect="equal")
    ax.legend(loc="lower left", fontsize="small", framealpha=0.9)


def plot_rosenbrock_records(
    runs: Mapping[str, Any],
    *,
    a: float = 1.0,
    b: float = 100.0,
    grid_points: int = 400,
    loss_floor: float = 1e-16,
) -> Figure:
    """Draw Rosenbrock runs from their records: paths over log contours, and the loss by step.

    Each record logs the position (``param.x``, ``param.y``) and the loss ``f / 4`` there
    (``test_loss``: the task's evaluation is the function itself) at its evaluation steps, so the
    paths are drawn through the logged positions only.

    Args:
        runs: Label -> run record (or metric DataFrame), in legend order.
        a: Rosenbrock's ``a``.
        b: Rosenbrock's ``b``.
        grid_points: Resolution of the contour grid along each axis.
        loss_floor: Smallest loss drawn (a run that reaches the minimum exactly stays visible).

    Returns:
        The figure.

    Raises:
        ValueError: If ``runs`` is empty or a record lacks the position or loss columns.
    """
    if not runs:
        raise ValueError("invalid runs: empty")
    frames = {label: getattr(r, "metrics", r) for label, r in runs.items()}
    for label, frame in frames.items():
        missing = [c for c in ("step", "param.x", "param.y", "test_loss") if c not in frame]
        if missing:
            raise ValueError(f"run {label!r} has no {missing}")
    colours = _colours(list(frames))
    fig = plt.figure(figsize=(9.0, 4.4), layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=(1.35, 1.0))
    ax_map, ax_loss = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    paths = {}
    for label, frame in frames.items():
        rows = frame.dropna(subset=["param.x", "param.y"])
        paths[label] = (rows["param.x"].to_numpy(), rows["param.y"].to_numpy())
        loss = frame.dropna(subset=["test_loss"])
        ax_loss.plot(loss["step"], np.maximum(loss["test_loss"].to_numpy(), loss_floor),
                     color=colours[label], linewidth=1.3, label=label)  # fmt: skip
    _rosenbrock_map(fig, ax_map, paths, colours, a=a, b=b, grid_points=grid_points)
    ax_loss.set(yscale="log", ylabel="loss $f/4$", xlabel="step", ylim=(loss_floor / 3, None))
    return fig


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
    colours = _colours(labels)

    fig = plt.figure(figsize=(9.0, 6.4), layout="constrained")
    grid = fig.add_gridspec(3, 2, width_ratios=(1.35, 1.0))
    ax_map = fig.add_subplot(grid[:, 0])
    ax_loss = fig.add_subplot(grid[0, 1])
    ax_lr = fig.add_subplot(grid[1, 1], sharex=ax_loss)
    ax_damp = fig.add_subplot(grid[2, 1], sharex=ax_loss)

    _rosenbrock_map(
        fig,
        ax_map,
        {label: (t.x, t.y) for label, t in trajectories.items()},
        colours,
        a=a,
        b=b,
        grid_points=grid_points,
    )

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


def plot_curvature_matrices(
    matrices: Mapping[str, np.ndarray], *, boundaries: Sequence[int] = (), quantile: float = 0.99
) -> Figure:
    """Draw dense curvature matrices, two a row, as heatmaps on one symmetric colour scale each.

    Args:
        matrices: Title -> square matrix (e.g. ``G``, ``H``, ``H - G``, ``F_emp - G``).
        boundaries: Parameter indices where a new parameter tensor starts (drawn as thin lines).
        quantile: Each panel's colour limit is this quantile of its absolute entries, so a few
            large entries do not wash out the rest.

    Returns:
        The figure.

    Raises:
        ValueError: If ``matrices`` is empty or a matrix is not square.
    """
    if not matrices:
        raise ValueError("invalid matrices: empty")
    # At most two panels a row: the figure stays narrow enough to be read in the book's column.
    cols = min(2, len(matrices))
    rows = -(-len(matrices) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.6 * rows), layout="constrained", squeeze=False
    )
    for ax in axes.flat[len(matrices) :]:
        ax.set_visible(False)
    for ax, (title, mat) in zip(axes.flat, matrices.items(), strict=False):
        mat = np.asarray(mat, dtype=float)
        if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
            raise ValueError(f"invalid matrix {title!r}: shape {mat.shape} (expected square)")
        limit = float(np.quantile(np.abs(mat), quantile)) or 1.0
        image = ax.imshow(mat, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        for b in boundaries:
            ax.axhline(b - 0.5, color="0.6", linewidth=0.4)
            ax.axvline(b - 0.5, color="0.6", linewidth=0.4)
        ax.set_title(title)
        ax.set(xticks=[], yticks=[])
        ax.grid(False)
        fig.colorbar(image, ax=ax, shrink=0.75, format="%.0e")
    return fig


def plot_product_costs(costs: Sequence[ProductCost], *, reference: str = "forward") -> Figure:
    """Draw the measured cost of each operation in units of ``reference`` (a horizontal bar chart).

    Args:
        costs: :class:`adamqlr.lens.products.ProductCost` records (``operation``, ``seconds``,
            ``spread``).
        reference: The operation whose median is the unit.

    Returns:
        The figure.

    Raises:
        ValueError: If ``costs`` is empty or lacks ``reference``.
    """
    by_name = {c.operation: c for c in costs}
    if reference not in by_name:
        raise ValueError(f"invalid costs: no {reference!r} among {list(by_name)}")
    unit = by_name[reference].seconds
    names = list(by_name)
    values = np.array([by_name[n].seconds / unit for n in names])
    errors = np.nan_to_num(np.array([by_name[n].spread / unit for n in names]))
    colours = sns.color_palette("colorblind", n_colors=len(names))
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(names) + 1.2), layout="constrained")
    ax.barh(names, values, xerr=errors, color=colours, capsize=3)
    # The axis reaches past every bar's error, and each label sits inside it: a label placed
    # beyond the axis (a wide spread on a busy machine) made constrained layout collapse the
    # axes to make room for it.
    right = float(np.max(values + errors))
    for i, v in enumerate(values):
        ax.text(v + errors[i] + 0.02 * right, i, f"{v:.2f}", va="center", clip_on=True)
    ax.invert_yaxis()
    ax.set(xlabel=f"time per call / time of one {reference} pass", xlim=(0, 1.2 * right))
    return fig


def plot_adam_lens(
    diagonals: pd.DataFrame,
    *,
    batch_size: int,
    steps: Sequence[int] | None = None,
    gridsize: int = 60,
) -> Figure:
    """Draw Adam's ``v_hat`` against three diagonals, coordinate by coordinate (log-log hexbins).

    Columns: ``v_hat`` against the expected squared mini-batch gradient (with the line
    ``v_hat = E[g_B^2]``), against the diagonal of the empirical Fisher (with the line
    ``v_hat = diag F_emp / B``) and against the diagonal of the GGN. One row per step.

    Args:
        diagonals: :attr:`adamqlr.lens.adam.AdamLensResult.diagonals`.
        batch_size: Adam's batch size ``B`` (for the reference line).
        steps: Checkpoints to draw (default: the first and the last).
        gridsize: Hexagons across each panel.

    Returns:
        The figure.

    Raises:
        ValueError: If a requested step is not in the data.
    """
    available = sorted(diagonals["step"].unique())
    steps = [available[0], available[-1]] if steps is None else list(steps)
    missing = [s for s in steps if s not in available]
    if missing:
        raise ValueError(f"invalid steps: {missing} (available: {available})")
    columns = [
        (
            "expected_sq",
            r"$\mathbb{E}[g_\mathcal{B}^2]$ at $\theta_t$",
            1.0,
            r"$\hat v = \mathbb{E}$",
        ),
        (
            "f_emp",
            r"$\mathrm{diag}\, F_\mathrm{emp}$",
            1.0 / batch_size,
            r"$\hat v = F_\mathrm{emp}/B$",
        ),
        ("ggn", r"$\mathrm{diag}\, G$", None, None),
    ]
    fig, axes = plt.subplots(
        len(steps), 3, figsize=(9.0, 2.9 * len(steps)), layout="constrained", squeeze=False
    )
    for row, step in enumerate(steps):
        part = diagonals[diagonals["step"] == step]
        for col, (key, xlabel, slope, line_label) in enumerate(columns):
            ax = axes[row, col]
            keep = (part["v_hat"] > 0) & (part[key] > 0)
            x = np.log10(part.loc[keep, key].to_numpy())
            y = np.log10(part.loc[keep, "v_hat"].to_numpy())
            ax.hexbin(x, y, gridsize=gridsize, bins="log", cmap="viridis", mincnt=1)
            if slope is not None:
                lo, hi = np.quantile(x, [0.001, 0.999])
                xs = np.array([lo, hi])
                ax.plot(xs, xs + np.log10(slope), "--", color="crimson", label=line_label)
                ax.legend(loc="upper left", fontsize="small")
            ax.set(xlabel=f"log10 {xlabel}", ylabel=r"log10 $\hat v$" if col == 0 else None)
            corr = np.corrcoef(x, y)[0, 1]
            ax.text(
                0.98,
                0.04,
                f"step {step}\ncorr {corr:.2f}",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize="small",
                bbox=dict(facecolor="white", alpha=0.8, linewidth=0),
            )
    return fig


def plot_line_models(rows: Mapping[str, tuple[LineProbe, Mapping[str, float]]]) -> Figure:
    """Draw the true loss along ``-d`` beside damped quadratic models, for the GGN and the Hessian.

    One row per probe, two panels per row: the models with ``C = G`` (left) and ``C = H`` (right),
    one curve per damping, each with its minimiser ``alpha*`` marked by a dot and a dotted line;
    the true loss ``f(theta - alpha d)`` is the thick black curve.

    Args:
        rows: Row title -> (a :class:`adamqlr.lens.line.LineProbe`, legend label -> damping).

    Returns:
        The figure.

    Raises:
        ValueError: If ``rows`` or a row's dampings are empty.
    """
    if not rows:
        raise ValueError("invalid rows: empty")
    fig, axes = plt.subplots(
        len(rows), 2, figsize=(9.0, 3.5 * len(rows)), layout="constrained", squeeze=False
    )
    panels = (("ggn", "$C = G$ (GGN)"), ("hessian", "$C = H$ (Hessian)"))
    for row, (row_title, (probe, dampings)) in enumerate(rows.items()):
        if not dampings:
            raise ValueError(f"invalid dampings for {row_title!r}: empty")
        colours = sns.color_palette("flare", n_colors=len(dampings))
        alphas = probe.alphas
        lo, hi = float(np.min(probe.losses)), float(np.max(probe.losses))
        pad = 0.15 * (hi - lo)
        for ax, (kind, title) in zip(axes[row], panels, strict=True):
            ax.plot(
                alphas, probe.losses, color="black", linewidth=2.4, label=r"$f(\theta - \alpha d)$"
            )
            for colour, (label, lam) in zip(colours, dampings.items(), strict=True):
                ax.plot(
                    alphas, probe.model(alphas, kind, lam), color=colour, linewidth=1.4, label=label
                )
                star = probe.alpha_star(kind, lam)
                if np.isfinite(star):
                    ax.plot(star, probe.model(np.array([star]), kind, lam)[0], "o", color=colour)
                    ax.axvline(star, color=colour, linewidth=0.8, linestyle=":")
            ax.axvline(0.0, color="0.5", linewidth=0.8)
            ax.set(title=f"{row_title}: {title}", ylim=(lo - pad, hi + pad))
        axes[row, 0].set_ylabel("mini-batch loss")
        axes[row, 1].legend(loc="upper right", fontsize="small")
    for ax in axes[-1]:
        ax.set_xlabel(r"step size $\alpha$")
    return fig


def plot_damping_traces(
    trace: pd.DataFrame,
    regime: str,
    *,
    seed: int | None = None,
    rho_limits: tuple[float, float] = (-1.0, 2.0),
    damping_max: float = 1e4,
) -> Figure:
    """Draw loss, step size, damping and reduction ratio of every damping policy in one regime.

    Four panels against the step, one colour per policy (in the order they appear): the
    mini-batch loss (log scale, cut at ``1e6``; a diverged run ends with a cross), ``|alpha|``
    (log), ``lambda`` (log, cut at ``damping_max`` with triangles above; a policy with
    ``lambda = 0`` is named in the panel instead), and
    ``rho`` (linear, the band ``[1/4, 3/4]`` where the damping is left alone shaded; values outside
    ``rho_limits`` are drawn on the edge as triangles).

    Args:
        trace: :attr:`adamqlr.lens.damping.DampingStudy.trace`.
        regime: The regime label to draw.
        seed: The seed to draw (default: the smallest).
        rho_limits: The vertical range of the ``rho`` panel.
        damping_max: The top of the damping panel.

    Returns:
        The figure.

    Raises:
        ValueError: If the regime or seed is not in the data.
    """
    part = trace[trace["regime"] == regime]
    if part.empty:
        available = sorted(trace["regime"].unique())
        raise ValueError(f"invalid regime: {regime!r} (available: {available})")
    seed = int(part["seed"].min()) if seed is None else seed
    part = part[part["seed"] == seed]
    if part.empty:
        raise ValueError(f"invalid seed: {seed!r} for regime {regime!r}")
    labels = list(dict.fromkeys(part["label"]))
    base = sns.color_palette("colorblind", n_colors=10)
    colours = dict(
        zip(labels, [base[i % 10] for i in (0, 2, 3, 4, 1, 5, 6, 7, 8, 9)], strict=False)
    )
    fig, axes = plt.subplots(2, 2, figsize=(9.0, 6.0), sharex=True, layout="constrained")
    ax_loss, ax_lr, ax_damp, ax_rho = axes.flat
    lo_rho, hi_rho = rho_limits
    zero_damping = []
    for label in labels:
        run = part[part["label"] == label]
        it = run["iteration"].to_numpy()
        colour = colours[label]
        loss = run["loss"].to_numpy(dtype=float)
        ok = ~blown_up(loss)
        shown = np.where(ok, loss, np.nan)
        ax_loss.plot(it, shown, color=colour, linewidth=1.2, label=label)
        if not ok.all():
            first_bad = int(np.flatnonzero(~ok)[0])
            if first_bad > 0:
                ax_loss.plot(
                    it[first_bad - 1], loss[first_bad - 1], "X", color=colour, markersize=9
                )
        lr = np.abs(run["lr"].to_numpy(dtype=float))
        ax_lr.plot(it, np.where(lr > 0, lr, np.nan), color=colour, linewidth=1.0)
        damping = run["damping"].to_numpy(dtype=float)
        if (damping > 0).any():
            inside = (damping > 0) & (damping <= damping_max)
            ax_damp.plot(it, np.where(inside, damping, np.nan), color=colour, linewidth=1.2)
            above = damping > damping_max
            if above.any():
                ax_damp.plot(
                    it[above], np.full(above.sum(), damping_max), "^", color=colour, markersize=4
                )
        else:
            zero_damping.append(label)
        rho = run["rho"].to_numpy(dtype=float)
        ax_rho.plot(it, np.clip(rho, lo_rho, hi_rho), color=colour, linewidth=0.9)
        for edge, marker, mask in ((lo_rho, "v", rho < lo_rho), (hi_rho, "^", rho > hi_rho)):
            if mask.any():
                ax_rho.plot(it[mask], np.full(mask.sum(), edge), marker, color=colour, markersize=4)
    ax_loss.set(yscale="log", ylabel="mini-batch loss")
    ax_lr.set(yscale="log", ylabel=r"step size $|\alpha|$")
    ax_damp.set(yscale="log", ylabel=r"damping $\lambda$", xlabel="step")
    if zero_damping:
        ax_damp.text(
            0.98,
            0.04,
            ", ".join(zero_damping) + r": $\lambda = 0$",
            transform=ax_damp.transAxes,
            ha="right",
            va="bottom",
            fontsize="small",
        )
    ax_rho.axhspan(0.25, 0.75, color="0.88", zorder=0)
    ax_rho.set(ylim=(lo_rho - 0.1, hi_rho + 0.1), ylabel=r"reduction ratio $\rho$", xlabel="step")
    fig.legend(
        *ax_loss.get_legend_handles_labels(),
        loc="outside upper center",
        ncols=len(labels),
        title=f"{regime} (seed {seed})",
        frameon=False,
    )
    return fig
