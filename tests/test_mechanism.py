"""The batch-mechanism analysis: divergence rates with Wilson intervals, per-step quantities."""

from __future__ import annotations

import math

import matplotlib
import pandas as pd
import pytest

from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.results.store import ResultStore
from adamqlr.studies import Arm, Study
from adamqlr.studies.analysis import divergence_rates, step_quantities, wilson_interval
from adamqlr.studies.core import obtain, plan

matplotlib.use("Agg")


def test_wilson_interval_matches_known_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    for n in range(1, 60):  # the interval always holds the estimate, despite rounding
        for k in (0, n):
            low, high = wilson_interval(k, n)
            assert low <= k / n <= high


def _save(store, spec, last, stop="epochs", step_stats=True):
    frame = pd.DataFrame({"step": [0, 1, 2], "train_loss": [1.0, 0.8, last]})
    if step_stats:
        frame = frame.assign(
            lr=[math.nan, 0.5, 0.25], damping=[math.nan, 1e-3, 5e-4], rho=[math.nan, 0.9, 0.8],
            grad_dot_dir=[math.nan, 2.0, 1.0], curvature=[math.nan, 4.0, 3.0],
            direction_sq_norm=[math.nan, 2.0, 0.0],
        )  # fmt: skip
    store.save(spec, frame, {"stop_reason": stop})


def test_divergence_rates_count_nonfinite_stops_and_blowups(tmp_path):
    base = ExperimentSpec("uci-energy", "adamqlr-untuned", profile="smoke")
    arms = tuple(
        Arm(f"a{b}", f"batch {b}, untuned", base.replace(batch_size=b), seeds=(0, 1, 2, 3),
            group="default", value=float(b))
        for b in (50, 400)
    )  # fmt: skip
    study = Study("m", "smoke", "t", arms, chapter="x")
    store = ResultStore(tmp_path)
    for p in plan(study, store):
        for i, spec in enumerate(p.repeats):
            if p.arm.value == 50 and i == 0:
                _save(store, spec, math.inf, stop="nonfinite_loss")
            elif p.arm.value == 50 and i == 1:
                _save(store, spec, 3e7)  # blew up without a non-finite loss
            else:
                _save(store, spec, 0.5)
    table = divergence_rates(obtain(study, store), ["default"])
    assert table["diverged"].tolist() == [2, 0] and table["runs"].tolist() == [4, 4]
    assert table["rate"].tolist() == [0.5, 0.0]
    assert (table["low"] <= table["rate"]).all() and (table["rate"] <= table["high"]).all()
    with pytest.raises(ValueError, match="'nope'"):
        divergence_rates(obtain(study, store), ["nope"])
    from adamqlr.plots.experiments import plot_divergence_rates

    ax = plot_divergence_rates(table)
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "diverged runs"


def test_divergence_rates_dodge_groups_that_overlap():
    from adamqlr.plots.experiments import plot_divergence_rates

    table = pd.DataFrame(
        {"group": ["a", "a", "b", "b"], "label": ["50, one", "3200, one", "50, two", "3200, two"],
         "value": [50.0, 3200.0, 50.0, 3200.0], "rate": [0.0, 0.0, 0.0, 0.0],
         "low": [0.0] * 4, "high": [0.3] * 4}
    )  # fmt: skip
    still = plot_divergence_rates(table)
    xs = [c.lines[0].get_xdata().tolist() for c in still.containers]  # the data line of each
    assert xs[0] == xs[1] == [50.0, 3200.0]  # no dodge: both groups at the true values
    ax = plot_divergence_rates(table, dodge=0.1)
    first, second = (c.lines[0].get_xdata() for c in ax.containers)
    assert first[0] == pytest.approx(50 * 10**-0.05) and second[0] == pytest.approx(50 * 10**0.05)
    assert first[1] == pytest.approx(3200 * 10**-0.05)
    markers = {c.lines[0].get_marker() for c in ax.containers}
    assert len(markers) == 2
    with pytest.raises(ValueError, match="dodge -1"):
        plot_divergence_rates(table, dodge=-1)


def test_step_quantities_put_the_model_on_one_scale(tmp_path):
    store = ResultStore(tmp_path)
    spec = ExperimentSpec("uci-energy", "adamqlr-untuned", profile="smoke")
    _save(store, spec, 0.5)
    q = step_quantities(store.load(spec))
    assert q["step"].tolist() == [1, 2]  # the evaluation row before training has no step
    assert q["curvature_per_norm"].iloc[0] == 2.0 and q["slope_per_norm"].iloc[0] == 1.0
    assert math.isnan(q["curvature_per_norm"].iloc[1])  # ||d||^2 = 0: no ratio
    other = ExperimentSpec("uci-energy", "adam", profile="smoke")
    _save(store, other, 0.5, step_stats=False)
    with pytest.raises(ValueError, match="not an AdamQLR run"):
        step_quantities(store.load(other))
