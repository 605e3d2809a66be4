"""Aggregation over repeats (time grid, carry-forward, bootstrap median) and the runs figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from adamqlr.results.aggregate import (
    BLOWN_UP,
    align_runs,
    blown_up,
    bootstrap_median,
    final_summary,
    ratio_beyond_text,
    round_sig,
    summarise_runs,
)


def run(times, values, metric="test_loss", steps=None):
    steps = steps if steps is not None else list(range(len(times)))
    return pd.DataFrame({"step": steps, "time": times, metric: values})


def test_align_interpolates_inside_and_carries_forward_after():
    a = run([0.0, 1.0, 2.0], [4.0, 2.0, 1.0])
    b = run([0.5, 1.5], [3.0, 1.0])
    aligned = align_runs({"a": a, "b": b}, "test_loss", grid=[0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    assert aligned["a"].tolist() == [4.0, 3.0, 2.0, 1.5, 1.0, 1.0]  # 3.0: carried forward
    b_col = aligned["b"].tolist()
    assert math.isnan(b_col[0])  # before its first point: no value
    assert b_col[1:] == [3.0, 2.0, 1.0, 1.0, 1.0]
    held = align_runs([a], "test_loss", grid=[0.5, 1.5], method="previous")
    assert held[0].tolist() == [4.0, 2.0]
    assert aligned.index.name == "time"


def test_align_drops_nonfinite_and_keeps_latest_value_per_time():
    r = run([0.0, 1.0, 1.0, 2.0, 3.0], [5.0, 4.0, 3.0, math.nan, math.inf])
    aligned = align_runs([r], "test_loss", grid=[0.0, 1.0, 2.0, 3.0])
    assert aligned[0].tolist() == [5.0, 3.0, 3.0, 3.0]  # last finite value stands


def test_default_grid_is_rounded_union_of_times():
    a = run([0.0, 0.123456, 1.0], [1.0, 2.0, 3.0])
    b = run([0.0, 0.5], [1.0, 1.0])
    assert align_runs([a, b], "test_loss").index.tolist() == [0.0, 0.123, 0.5, 1.0]
    assert align_runs([a, b], "test_loss", points=5).index.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_array_equal(round_sig(np.array([0.0, 123456.0, -0.0012345])),
                                  [0.0, 123000.0, -0.00123])  # fmt: skip


def test_bootstrap_median_is_within_the_data_and_deterministic():
    rng = np.random.default_rng(0)
    runs = [run(np.linspace(0, 1, 20), np.exp(-np.linspace(0, 3, 20)) + rng.random(20))
            for _ in range(7)]  # fmt: skip
    aligned = align_runs(runs, "test_loss")
    s = bootstrap_median(aligned, resamples=50, seed=3)
    lo, hi = aligned.min(axis=1), aligned.max(axis=1)
    assert ((s["mean"] >= lo - 1e-12) & (s["mean"] <= hi + 1e-12)).all()
    assert (s["std"] >= 0).all()
    assert np.allclose(s["upper"] - s["lower"], 2 * s["std"])
    assert (s["runs"] == 7).all()
    pd.testing.assert_series_equal(s["median"], aligned.median(axis=1), check_names=False)
    pd.testing.assert_frame_equal(s, bootstrap_median(aligned, resamples=50, seed=3))
    assert not s.equals(bootstrap_median(aligned, resamples=50, seed=4))


def test_bootstrap_of_identical_runs_has_no_spread():
    r = run([0.0, 1.0, 2.0], [3.0, 2.0, 1.0])
    s = summarise_runs([r, r.copy(), r.copy()], "test_loss")
    assert s["mean"].tolist() == [3.0, 2.0, 1.0]
    assert (s["std"] == 0).all()


def test_bootstrap_matches_a_direct_computation():
    values = np.array([[1.0, 2.0, 10.0], [3.0, 1.0, 2.0]])
    aligned = pd.DataFrame(values, index=pd.Index([0.0, 1.0], name="time"))
    s = bootstrap_median(aligned, resamples=20, seed=7)
    picks = np.random.default_rng(7).integers(0, 3, size=(20, 3))
    medians = np.stack([np.median(values[:, p], axis=1) for p in picks])
    np.testing.assert_allclose(s["mean"], medians.mean(axis=0))
    np.testing.assert_allclose(s["std"], medians.std(axis=0))


def test_times_without_any_run_are_nan():
    aligned = align_runs([run([1.0, 2.0], [1.0, 2.0])], "test_loss", grid=[0.0, 1.0])
    s = bootstrap_median(aligned)
    assert math.isnan(s["mean"].iloc[0]) and s["runs"].iloc[0] == 0


def test_final_summary_uses_the_end_of_the_longest_run():
    a = run([0.0, 1.0], [2.0, 1.0], steps=[0, 10])
    b = run([0.0, 3.0], [2.0, 0.5], steps=[0, 30])
    table = final_summary([a, b], metrics=("test_loss",), resamples=200, seed=0)
    assert 0.5 <= table.loc["test_loss", "mean"] <= 1.0
    assert 10 <= table.loc["steps", "mean"] <= 30
    assert table.loc["time_s", "std"] >= 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="cubic"), "invalid method 'cubic'"),
        (dict(metric="nope"), "has no column 'nope'"),
    ],
)
def test_align_errors(kwargs, message):
    args = dict(metric="test_loss") | kwargs
    with pytest.raises(ValueError, match=message):
        align_runs([run([0.0], [1.0])], **args)
    with pytest.raises(ValueError, match="no runs"):
        align_runs([], "test_loss")


def test_plot_runs_draws_line_and_band_per_optimiser():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    from adamqlr.plots.runs import plot_runs

    rng = np.random.default_rng(0)
    t = np.linspace(0, 2, 30)
    groups = {
        "Adam": [run(t, np.exp(-t) * (1 + 0.1 * rng.random(30))) for _ in range(3)],
        "AdamQLR (Untuned)": [run(np.linspace(0, 3, 20), np.exp(-np.linspace(0, 4, 20)))],
    }  # fmt: skip
    ax = plot_runs(groups, "test_loss", points=50)
    assert ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["Adam (3 runs)", "AdamQLR (Untuned) (1 run)"]
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    x, y = ax.lines[1].get_data()
    assert x[-1] == pytest.approx(3.0) and y[-1] == pytest.approx(math.exp(-4))
    plt.close("all")
    acc = {"Adam": [run([0.0, 1.0], [0.1, 0.9], metric="test_accuracy")]}
    ax = plot_runs(acc, "test_accuracy")
    assert ax.get_yscale() == "linear" and ax.get_ylim() == (0, 1)
    plt.close("all")
    with pytest.raises(ValueError, match="no runs"):
        plot_runs({}, "test_loss")


def test_blown_up_is_one_predicate_for_numbers_and_arrays():
    """Not finite, or beyond the threshold in magnitude (either sign); elementwise on arrays."""
    assert not blown_up(0.0) and not blown_up(BLOWN_UP) and not blown_up(-BLOWN_UP)
    assert blown_up(math.nan) and blown_up(math.inf) and blown_up(-math.inf)
    assert blown_up(np.nextafter(BLOWN_UP, math.inf)) and blown_up(-2 * BLOWN_UP)
    assert isinstance(blown_up(np.float32(3.0)), bool)
    values = np.array([0.5, np.nan, 2e6, -2e6, 1e6, np.inf])
    assert blown_up(values).tolist() == [False, True, True, True, False, True]
    assert blown_up(pd.Series(values), threshold=1.0).tolist() == [
        False, True, True, True, True, True
    ]  # fmt: skip
    assert not blown_up(1e300, threshold=math.inf) and blown_up(math.nan, threshold=math.inf)
    for bad in (0.0, -1.0, math.nan, True, "1e6"):
        with pytest.raises(ValueError, match="threshold must be a positive number"):
            blown_up(1.0, threshold=bad)


def test_ratio_beyond_text_writes_the_bound_a_ratio_passed():
    """Above the bound or below its reciprocal (0 and inf included): the bound; else nothing."""
    assert ratio_beyond_text(np.nextafter(BLOWN_UP, math.inf)) == "> 1e6"
    assert ratio_beyond_text(math.inf) == "> 1e6"
    assert ratio_beyond_text(0.0) == ratio_beyond_text(6e-34) == "< 1e-6"
    assert ratio_beyond_text(BLOWN_UP) == ratio_beyond_text(1 / BLOWN_UP) == ""
    assert ratio_beyond_text(1.07) == ratio_beyond_text(math.nan) == ratio_beyond_text(-3e9) == ""
    assert ratio_beyond_text(2e3, threshold=1e3) == "> 1e3"
    assert ratio_beyond_text(1e-4, threshold=1e3) == "< 1e-3"
    assert ratio_beyond_text(600.0, threshold=500.0) == "> 500"
    assert ratio_beyond_text(1e-3, threshold=500.0) == "< 0.002"
    assert ratio_beyond_text(1e300, threshold=math.inf) == ""
    for bad in (0.0, -1.0, math.nan, True, "1e6"):
        with pytest.raises(ValueError, match="threshold must be a positive number"):
            ratio_beyond_text(1.0, threshold=bad)


def test_tables_and_prose_write_a_ratio_past_the_bound_alike():
    """A verdict table's cell and the verdict's sentence name the same bound, in the same words."""
    from adamqlr.plots.tables import _ratio_beyond
    from adamqlr.studies.verdicts import times

    for ratio in (3e7, math.inf, 6e-34):
        assert times(ratio) == f"{_ratio_beyond(ratio, BLOWN_UP)}×"
    assert times(0.93) == "0.93×" and _ratio_beyond(0.93, BLOWN_UP) == ""
