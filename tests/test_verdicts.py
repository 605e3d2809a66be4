"""Verdicts: values at a matched point, the bootstrap interval of a ratio of medians, the claim
outcomes, and tuned choices at the edge of their search space."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from adamqlr.results.store import RunRecord
from adamqlr.studies.core import Arm, Search
from adamqlr.studies.verdicts import (
    compare,
    edge_choices,
    judge,
    matched_point,
    values_at,
)
from adamqlr.tune.spaces import Choice, LogUniform, OneMinus


def _record(values, *, times=None, name="r", epochs=None) -> RunRecord:
    values = np.asarray(values, dtype=float)
    n = len(values)
    steps = np.arange(n, dtype=float)
    frame = pd.DataFrame(
        {
            "step": steps,
            "epoch": steps / 2 if epochs is None else epochs,
            "time": steps if times is None else times,
            "test_loss": values,
        }
    )
    return RunRecord(
        spec=None, metrics=frame, provenance={}, manifest={"key": name}, path=Path(name)
    )


def test_values_at_takes_last_value_at_or_before_the_point():
    r = _record([5.0, 4.0, 3.0, 2.0], times=[0.0, 1.0, 2.5, 4.0])
    assert values_at([r], "test_loss", "time", 2.4)[0] == 4.0
    assert values_at([r], "test_loss", "time", 2.5)[0] == 3.0
    assert values_at([r], "test_loss", "time")[0] == 2.0
    assert values_at([r], "test_loss", "step", 1)[0] == 4.0
    assert values_at([r], "test_loss", "epoch", 1.0)[0] == 3.0
    assert math.isnan(values_at([r], "test_loss", "time", -1.0)[0])


def test_values_at_skips_rows_without_an_evaluation_and_counts_divergence_as_inf():
    r = _record([5.0, np.nan, 3.0, np.nan])
    assert values_at([r], "test_loss", "step", 3)[0] == 3.0
    blown = _record([5.0, 4.0, np.inf, 1.0])  # a non-finite value stays a divergence
    assert values_at([blown], "test_loss", "step", 3)[0] == math.inf
    assert values_at([blown], "test_loss", "step", 1)[0] == 4.0


@pytest.mark.parametrize(
    "kwargs, message",
    [({"axis": "wall"}, "invalid axis 'wall'"), ({"at": math.nan}, "invalid point")],
)
def test_values_at_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        values_at([_record([1.0])], "test_loss", **kwargs)


def test_values_at_names_a_missing_column():
    with pytest.raises(ValueError, match="no column 'val_loss'"):
        values_at([_record([1.0])], "val_loss")


def test_matched_point_is_the_smaller_median_end():
    slow = [_record([1.0] * 3, times=[0, 5, t]) for t in (10.0, 12.0, 30.0)]
    fast = [_record([1.0] * 3, times=[0, 1, t]) for t in (2.0, 3.0, 4.0)]
    assert matched_point(slow, fast, "time") == 3.0
    assert matched_point(fast, slow, "time") == 3.0
    with pytest.raises(ValueError, match="at least one run"):
        matched_point([], fast)


def test_compare_recovers_a_known_ratio_and_its_interval_covers_it():
    rng = np.random.default_rng(1)
    a = [_record([2.0, v]) for v in 0.8 * np.exp(rng.normal(0, 0.05, 50))]
    b = [_record([2.0, v]) for v in 1.0 * np.exp(rng.normal(0, 0.05, 50))]
    c = compare(a, b, axis="step", labels=("A", "B"))
    assert c.at == 1.0 and c.runs == (50, 50)
    assert c.low < 0.8 < c.high
    assert c.low < c.ratio < c.high
    assert c.ratio == pytest.approx(c.medians[0] / c.medians[1])
    assert c.high - c.low < 0.1
    assert judge(c, "lower").outcome == "supported"
    assert judge(c, "not higher").outcome == "supported"
    swapped = compare(b, a, axis="step")
    assert judge(swapped, "lower").outcome == "not supported"
    assert judge(swapped, "not higher").outcome == "not supported"
    assert judge(swapped, "lower").text().endswith("at or above parity (not supported)")
    assert "no detectable difference" in judge(compare(a, a, axis="step"), "not higher").text()
    assert "95 % CI" in c.text() and "after 1 steps" in c.text()


def test_compare_is_inconclusive_for_equal_arms_and_narrows_with_more_runs():
    rng = np.random.default_rng(2)

    def arm(n):
        return [_record([2.0, v]) for v in np.exp(rng.normal(0, 0.2, n))]

    small = compare(arm(5), arm(5), axis="step")
    large = compare(arm(200), arm(200), axis="step")
    assert judge(large, "lower").outcome == "inconclusive"
    assert judge(large, "not higher").outcome == "inconclusive"
    assert large.low < 1 < large.high
    assert large.high - large.low < small.high - small.low


def test_compare_is_deterministic_and_counts_diverged_runs_at_their_rank():
    a = [_record([2.0, v]) for v in (0.5, *[np.inf] * 9)]
    b = [_record([2.0, v]) for v in np.linspace(1.0, 1.4, 10)]
    c1 = compare(a, b, axis="step", seed=3)
    c2 = compare(a, b, axis="step", seed=3)
    assert c1 == c2
    assert c1.medians[0] == math.inf  # nine of ten diverged: the median run diverged
    assert judge(c1, "not higher").outcome == "not supported"
    mixed = compare(a[:1] * 2 + a[2:5], b[:5], axis="step", seed=3)  # 2 of 5 finite: either way
    assert mixed.low < 1 and mixed.high == math.inf
    assert judge(mixed, "not higher").outcome == "inconclusive"


def test_compare_matches_on_time_by_default():
    a = [_record([3.0, 2.0, 1.0], times=[0, 1, 2]) for _ in range(4)]
    b = [_record([3.0, 2.5, 2.0, 0.5], times=[0, 2, 4, 8]) for _ in range(4)]
    c = compare(a, b)
    assert c.axis == "time" and c.at == 2.0
    assert c.medians == (1.0, 2.5)
    assert c.where == "at 2 s of optimisation"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"level": 1.0}, "invalid level 1.0"),
        ({"resamples": 10}, "invalid resamples 10"),
        ({"axis": "x"}, "invalid axis 'x'"),
        ({"at": -5.0, "axis": "step"}, "no run with 'test_loss' at step=-5"),
    ],
)
def test_compare_rejects_bad_input(kwargs, message):
    runs = [_record([1.0, 0.5])]
    with pytest.raises(ValueError, match=message):
        compare(runs, runs, **kwargs)


def test_judge_rejects_an_unknown_claim():
    runs = [_record([1.0, 0.5])] * 3
    with pytest.raises(ValueError, match="invalid claim 'better'"):
        judge(compare(runs, runs, axis="step"), "better")  # type: ignore[arg-type]


def _plan(arm: Arm, choice):
    return SimpleNamespace(arm=arm, choice=choice)


def _search_arm(space):
    from adamqlr.experiment.spec import ExperimentSpec

    return Arm(
        id="t/adam",
        label="Adam",
        base=ExperimentSpec(task="uci-energy", optimiser="adam"),
        seeds=(0,),
        search=Search(space=space, n_trials=4),
    )


def test_edge_choices_reports_values_at_either_end_of_a_search_space():
    space = {
        "lr": LogUniform(1e-6, 1.0),
        "momentum": OneMinus(1e-4, 0.3),
        "batch_size": Choice((50, 100, 3200)),
    }
    arm = _search_arm(space)
    plans = {arm.id: _plan(arm, {"lr": 0.8, "momentum": 0.9999, "batch_size": 100})}
    edges = edge_choices(plans)
    assert [(e.name, e.side) for e in edges] == [("lr", "high"), ("momentum", "high")]
    assert edges[0].position == pytest.approx(1 + math.log(0.8) / math.log(1e6))
    assert "at the high end of [1e-06, 1]" in edges[0].text()
    inner = {arm.id: _plan(arm, {"lr": 1e-3, "momentum": 0.9, "batch_size": 3200})}
    assert [(e.name, e.side) for e in edge_choices(inner)] == [("batch_size", "high")]
    assert edge_choices(inner, include_choices=False) == []
    assert edge_choices({arm.id: _plan(arm, None)}) == []


def test_edge_choices_on_a_grid_and_bad_margin():
    from adamqlr.experiment.spec import ExperimentSpec

    arm = Arm(
        id="t/sgd",
        label="SGD",
        base=ExperimentSpec(task="uci-energy", optimiser="sgd"),
        seeds=(0,),
        grid=({"lr": 0.1}, {"lr": 0.01}, {"lr": 0.001}),
    )
    assert [e.side for e in edge_choices({arm.id: _plan(arm, {"lr": 0.001})})] == ["low"]
    assert edge_choices({arm.id: _plan(arm, {"lr": 0.01})}) == []
    with pytest.raises(ValueError, match="invalid margin 0.5"):
        edge_choices({}, margin=0.5)


def test_verdict_table_has_one_row_per_verdict():
    from adamqlr.studies.verdicts import verdict_table

    a = [_record([2.0, v]) for v in (0.5, 0.52, 0.55, 0.6)]
    b = [_record([2.0, v]) for v in (1.0, 1.1, 1.2, 1.3)]
    c = compare(a, b, axis="step", labels=("A", "B"))
    table = verdict_table([judge(c, "lower"), judge(c, "not higher")])
    assert list(table.index) == [("A lower than B", "after 1 steps"),
                                 ("A no higher than B", "after 1 steps")]  # fmt: skip
    assert list(table["verdict"]) == ["supported", "supported"]
    assert table["runs"].iloc[0] == "4 / 4" and table["metric"].iloc[0] == "test loss"


def test_ratios_against_diverged_runs_read_as_bounds():
    from adamqlr.studies.verdicts import times

    assert times(0.934) == "0.934×"
    assert times(5.01e-23) == "< 1e-6×" and times(4e7) == "> 1e6×" and times(math.inf) == "> 1e6×"
    assert times(0.0) == "0×" and times(2e-23, unit=False) == "< 1e-6"


def test_intervals_beyond_the_bounds_read_in_words():
    from adamqlr.studies.verdicts import span

    assert span(0.88, 0.99) == "0.88–0.99×"
    assert span(1e-26, 3e-21) == "below 1e-6×" and span(2e7, math.inf) == "above 1e6×"
    assert span(1e-9, 0.5) == "below 1e-6× to 0.5×"
    assert span(1.78, 1.1e22) == "1.78× to above 1e6×"


def test_a_bound_near_parity_never_reads_as_parity():
    from adamqlr.studies.verdicts import interval_text, times

    assert times(1.0) == "1×" and times(1.0021) == "1.002×" and times(0.99962) == "0.9996×"
    # the interval of a verdict that excludes parity shows on which side its lower bound lies
    assert interval_text(1.03, 1.0021, 1.04) == "1.03× (95 % CI 1.002–1.04×)"
    assert times(1 + 1e-12) != "1×"
