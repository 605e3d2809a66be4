"""Factorial effects: known additive effects are recovered, intervals cover them, bad input is
named."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adamqlr.results.store import RunRecord
from adamqlr.studies.effects import capped_finals, factorial_effects

A = {"sgd": 0.0, "adam": -0.5, "kfac": -0.7}
B = {"alpha": 0.0, "mom": -0.1}
C = {"none": 0.3, "fixed": 0.0, "adaptive": -0.05}


def _design(noise=0.02, runs=30, interaction=0.0, seed=0):
    rng = np.random.default_rng(seed)
    values = {}
    for a, b, c in itertools.product(A, B, C):
        mu = A[a] + B[b] + C[c] + (interaction if (a, c) == ("sgd", "none") else 0.0)
        values[(a, b, c)] = np.exp(mu + rng.normal(0, noise, runs))
    return values


def test_additive_effects_are_recovered_and_covered():
    fx = factorial_effects(_design(), ("direction", "rule", "damping"), resamples=500)
    main = fx.main.set_index(["factor", "level"])
    for factor, truth in (("direction", A), ("rule", B), ("damping", C)):
        centre = np.mean(list(truth.values()))
        for lvl, t in truth.items():
            row = main.loc[(factor, lvl)]
            assert row["effect"] == pytest.approx(t - centre, abs=0.02)
            assert (
                row["low"] <= math.exp(t - centre) * 1.03
                and row["high"] >= math.exp(t - centre) / 1.03
            )
    assert fx.ranges.loc["direction", "ratio"] == pytest.approx(math.exp(0.7), rel=0.03)
    assert fx.ranges.loc["direction", "best"] == "kfac"
    assert fx.ranges.loc["direction", "worst"] == "sgd"
    assert fx.largest() == "direction"
    assert fx.ordering("direction", "rule") == "supported"
    assert fx.ordering("rule", "damping") == "not supported"
    assert (fx.interactions["effect"].abs() < 0.02).all()  # additive: no interaction
    assert len(fx.cells) == 18 and (fx.cells["runs"] == 30).all()


def test_an_interaction_is_found_where_it_was_put():
    fx = factorial_effects(_design(interaction=0.6), ("direction", "rule", "damping"),
                           resamples=300)  # fmt: skip
    rows = fx.interactions.set_index(["factors", "levels"])
    hit = rows.loc[("direction × damping", "sgd × none")]
    # a bump of 0.6 in one cell of a 3 x 3 table: 0.6 (1 - 1/3 - 1/3 + 1/9) = 0.6 * 4/9
    assert hit["effect"] == pytest.approx(0.6 * 4 / 9, abs=0.02) and hit["low"] > 1
    assert rows.loc[("direction × rule", "sgd × alpha"), "low"] < 1.02


def test_deterministic_for_a_seed():
    a = factorial_effects(_design(), ("d", "r", "p"), resamples=200, seed=4)
    b = factorial_effects(_design(), ("d", "r", "p"), resamples=200, seed=4)
    pd.testing.assert_frame_equal(a.ranges, b.ranges)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda v: v.pop(("sgd", "alpha", "none")), "unbalanced design"),
        (lambda v: v.__setitem__(("sgd", "alpha", "none"), np.array([])), "has no runs"),
        (
            lambda v: v.__setitem__(("sgd", "alpha", "none"), np.array([1.0, np.inf])),
            "not positive and finite",
        ),
        (lambda v: v.__setitem__(("sgd", "alpha"), np.array([1.0])), "has 2 levels"),
    ],
)
def test_bad_designs_are_refused(mutate, message):
    values = _design(runs=3)
    mutate(values)
    with pytest.raises(ValueError, match=message):
        factorial_effects(values, ("d", "r", "p"), resamples=100)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="invalid resamples 10"):
        factorial_effects(_design(runs=3), ("d", "r", "p"), resamples=10)
    with pytest.raises(ValueError, match="invalid level 0"):
        factorial_effects(_design(runs=3), ("d", "r", "p"), level=0)


def _record(values):
    steps = np.arange(len(values), dtype=float)
    frame = pd.DataFrame({"step": steps, "epoch": steps, "time": steps, "test_loss": values})
    return RunRecord(spec=None, metrics=frame, provenance={}, manifest={"key": "k"}, path=Path("k"))


def test_capped_finals_count_a_diverged_run_as_its_start():
    runs = [_record([2.0, 1.0, 0.5]), _record([2.0, 5.0, np.inf]), _record([2.0, 3.0, 4.0])]
    assert list(capped_finals(runs)) == [0.5, 2.0, 2.0]
    assert list(capped_finals(runs, at=1)) == [1.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="runs without 'test_loss'"):
        capped_finals([_record([2.0, 1.0])], at=-1)


def test_plot_interactions_draws_one_line_per_level_per_panel():
    import matplotlib

    matplotlib.use("Agg")
    from adamqlr.plots.factorial import plot_interactions

    fx = factorial_effects(_design(runs=5), ("direction", "rule", "damping"), resamples=100)
    fig = plot_interactions(fx, x="damping", lines="rule", panels="direction")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3 and [ax.get_title() for ax in axes] == list(A)
    assert all(len(ax.lines) >= 2 for ax in axes) and axes[0].get_yscale() == "log"
    with pytest.raises(ValueError, match="unknown factor 'batch'"):
        plot_interactions(fx, x="batch", lines="rule", panels="direction")
    with pytest.raises(ValueError, match="give panels="):
        plot_interactions(fx, x="damping", lines="rule")
    # into given axes: a grid with one row per design, one figure, one legend per row
    import matplotlib.pyplot as plt

    grid_fig, grid = plt.subplots(2, 3, squeeze=False, layout="constrained")
    for i, row in enumerate(grid):
        drawn = plot_interactions(
            fx, x="damping", lines="rule", panels="direction", axes=row, legend=i == 0
        )
        assert drawn is grid_fig
    assert all(len(ax.lines) >= 2 for ax in grid.flat) and grid[1, 2].get_title() == list(A)[2]
    # one legend (the figure's, asked for by the first row), below every panel: it covers no point
    assert all(ax.get_legend() is None for ax in grid.flat) and len(grid_fig.legends) == 1
    grid_fig.canvas.draw()
    box = grid_fig.legends[0].get_window_extent()
    assert all(box.y1 <= ax.get_window_extent().y0 for ax in grid.flat)
    with pytest.raises(ValueError, match="axes: 2 given for 3 panels"):
        plot_interactions(fx, x="damping", lines="rule", panels="direction", axes=grid[0, :2])
    plt.close("all")


def test_interaction_panels_within_a_decade_read_plain_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adamqlr.plots.factorial import plot_interactions

    # the design's cells span about a factor of 2: plain labels (0.8, 1, 1.5), no powers of ten
    fx = factorial_effects(_design(runs=5), ("direction", "rule", "damping"), resamples=100)
    fig = plot_interactions(fx, x="damping", lines="rule", panels="direction")
    fig.canvas.draw()
    ax = next(ax for ax in fig.axes if ax.get_visible())
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()]
    assert any(labels) and not any("10^" in s or "times" in s for s in labels)
    assert all(s == "" or float(s) > 0 for s in labels)
    # a panel spanning several decades keeps matplotlib's powers of ten
    wide_fig, wide = plt.subplots()
    wide.plot([0, 1], [1e-4, 1e-1])
    wide.set_yscale("log")
    from adamqlr.plots.factorial import _plain_labels_within_a_decade

    _plain_labels_within_a_decade(wide)
    wide_fig.canvas.draw()
    assert any("10^" in t.get_text() for t in wide.get_yticklabels())
    plt.close("all")
