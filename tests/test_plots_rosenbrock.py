"""The Rosenbrock figure drawn from run records: one path and one loss curve per run."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from adamqlr.plots.derivations import plot_rosenbrock_records  # noqa: E402


def _frame(xs, ys):
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    loss = ((1 - xs) ** 2 + 100 * (ys - xs**2) ** 2) / 4
    return pd.DataFrame({"step": np.arange(len(xs)), "param.x": xs, "param.y": ys,
                         "test_loss": loss})  # fmt: skip


def test_one_path_and_one_loss_curve_per_run():
    runs = {"A": _frame([1, 0.5, 0.9, 1.0], [-1, 0, 0.8, 1.0]), "B": _frame([1, 0.8], [-1, 0.2])}
    fig = plot_rosenbrock_records(runs, grid_points=40)
    ax_map, ax_loss = fig.axes[0], fig.axes[1]
    labels = [line.get_label() for line in ax_map.get_lines()]
    assert labels[:2] == ["A", "B"]
    assert len(ax_loss.get_lines()) == 2 and ax_loss.get_yscale() == "log"
    assert ax_loss.get_lines()[0].get_ydata()[-1] == 1e-16  # the minimum, floored


def test_missing_columns_and_empty_runs_are_named():
    with pytest.raises(ValueError, match=r"run 'A' has no \['param.y'\]"):
        plot_rosenbrock_records({"A": _frame([1], [-1]).drop(columns="param.y")})
    with pytest.raises(ValueError, match="empty"):
        plot_rosenbrock_records({})
