"""Bootstrap intervals of correlations (chapter 02's table): estimates, widths, coverage, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from adamqlr.lens.adam import unit_groups
from adamqlr.lens.bootstrap import bootstrap_correlations


def correlated(n: int, rhos: list[float], seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A reference and variables with correlation ``rhos[k]`` to it (jointly Gaussian)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    others = {
        f"y{k}": r * x + math.sqrt(1 - r * r) * rng.standard_normal(n) for k, r in enumerate(rhos)
    }
    return x, others


def test_point_estimates_are_pearson_correlations():
    x, others = correlated(500, [0.8, 0.3], seed=0)
    corr, diff = bootstrap_correlations(x, others, resamples=50)
    for name, y in others.items():
        assert corr.loc[name, "corr"] == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
        assert corr.loc[name, "low"] <= corr.loc[name, "corr"] <= corr.loc[name, "high"]
    assert list(diff["first"]) == ["y0"] and list(diff["second"]) == ["y1"]
    assert diff.loc[0, "difference"] == pytest.approx(
        corr.loc["y0", "corr"] - corr.loc["y1", "corr"], rel=1e-12
    )


def test_interval_width_follows_the_normal_theory():
    """For Gaussian data the sd of r is about (1 - rho^2)/sqrt(n): the 95% width ~ 3.92 of it."""
    n, rho = 4000, 0.6
    x, others = correlated(n, [rho], seed=1)
    corr, _ = bootstrap_correlations(x, others, resamples=2000, seed=3)
    width = corr.loc["y0", "high"] - corr.loc["y0", "low"]
    assert width == pytest.approx(2 * 1.96 * (1 - rho**2) / math.sqrt(n), rel=0.15)
    # a narrower level gives a narrower interval inside the wider one
    narrow, _ = bootstrap_correlations(x, others, resamples=2000, seed=3, level=0.5)
    assert corr.loc["y0", "low"] < narrow.loc["y0", "low"] < narrow.loc["y0", "high"]
    assert narrow.loc["y0", "high"] < corr.loc["y0", "high"]


def test_coverage_of_the_true_correlation():
    rho, hits, trials = 0.5, 0, 100
    for seed in range(trials):
        x, others = correlated(200, [rho], seed=100 + seed)
        corr, _ = bootstrap_correlations(x, others, resamples=300, seed=seed)
        hits += corr.loc["y0", "low"] <= rho <= corr.loc["y0", "high"]
    assert 0.85 <= hits / trials <= 1.0  # nominal 0.95; binomial sd ~0.02


def test_paired_differences_separate_close_correlations_that_share_the_reference():
    # y1 is y0 plus a little independent noise: their correlations with x are close but the paired
    # difference is resolved; very different correlations give a difference interval away from 0
    rng = np.random.default_rng(5)
    x = rng.standard_normal(3000)
    y0 = 0.8 * x + 0.6 * rng.standard_normal(3000)
    y1 = y0 + 0.3 * rng.standard_normal(3000)
    far = 0.2 * x + rng.standard_normal(3000)
    corr, diff = bootstrap_correlations(x, {"y0": y0, "y1": y1, "far": far}, resamples=500)
    by_pair = diff.set_index(["first", "second"])
    assert by_pair.loc[("y0", "y1"), "low"] > 0  # paired: resolved
    assert by_pair.loc[("y0", "far"), "low"] > 0.4
    assert len(diff) == 3


def test_same_seed_same_intervals_other_seed_other_intervals():
    x, others = correlated(300, [0.4], seed=2)
    a, _ = bootstrap_correlations(x, others, resamples=200, seed=0)
    b, _ = bootstrap_correlations(x, others, resamples=200, seed=0)
    c, _ = bootstrap_correlations(x, others, resamples=200, seed=1)
    assert a.equals(b)
    assert not a[["low", "high"]].equals(c[["low", "high"]])
    assert a["corr"].equals(c["corr"])


def test_exact_relations_have_degenerate_intervals():
    x = np.arange(10.0)
    corr, _ = bootstrap_correlations(x, {"same": 2 * x + 1, "neg": -x}, resamples=100)
    assert corr.loc["same", ["corr", "low", "high"]].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert corr.loc["neg", ["corr", "low", "high"]].tolist() == pytest.approx([-1.0, -1.0, -1.0])


@pytest.mark.parametrize(
    ("reference", "others", "kwargs", "match"),
    [
        (np.arange(2.0), {"y": np.arange(2.0)}, {}, "n >= 3"),
        (np.arange(5.0), {"y": np.arange(4.0)}, {}, "invalid variable 'y': shape"),
        (np.arange(5.0), {}, {}, "no variable"),
        (np.array([0, 1, np.nan, 3, 4.0]), {"y": np.arange(5.0)}, {}, "'reference'.*non-finite"),
        (np.arange(5.0), {"y": np.ones(5)}, {}, "'y': it is constant"),
        (np.arange(5.0), {"y": np.arange(5.0)}, {"resamples": 0}, "invalid resamples: 0"),
        (np.arange(5.0), {"y": np.arange(5.0)}, {"level": 1.0}, "invalid level: 1.0"),
    ],
)
def test_bad_input_is_refused(reference, others, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_correlations(reference, others, **kwargs)


def test_cluster_bootstrap_widens_intervals_for_clustered_data():
    """Rows that share a cluster effect carry less information than their count suggests."""
    rng = np.random.default_rng(7)
    clusters, per = 30, 100
    labels = np.repeat(np.arange(clusters), per)
    shared = rng.standard_normal(clusters)[labels]
    x = shared + 0.3 * rng.standard_normal(labels.size)
    y = 0.5 * shared + rng.standard_normal(labels.size)
    rows, _ = bootstrap_correlations(x, {"y": y}, resamples=500)
    clustered, _ = bootstrap_correlations(x, {"y": y}, resamples=500, groups=labels)
    assert clustered.loc["y", "corr"] == rows.loc["y", "corr"]
    width_rows = rows.loc["y", "high"] - rows.loc["y", "low"]
    width_clustered = clustered.loc["y", "high"] - clustered.loc["y", "low"]
    assert width_clustered > 2 * width_rows
    # one row per cluster: the cluster bootstrap is the row bootstrap (same draws, same weights)
    a, _ = bootstrap_correlations(x, {"y": y}, resamples=100, seed=4)
    b, _ = bootstrap_correlations(x, {"y": y}, resamples=100, seed=4, groups=np.arange(x.size))
    assert np.allclose(a.to_numpy(), b.to_numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="invalid groups: shape"):
        bootstrap_correlations(x, {"y": y}, groups=labels[:-1])
    with pytest.raises(ValueError, match="1 cluster"):
        bootstrap_correlations(x, {"y": y}, groups=np.zeros(x.size))


def test_unit_groups_label_each_coordinate_with_its_output_unit():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 4))
    labels = unit_groups(model)
    assert labels.shape == (sum(p.numel() for p in model.parameters()),)
    # the weight (2, 3) row by row, then the bias, then the second layer's (4, 2) and bias (4,)
    expected = ["0:0"] * 3 + ["0:1"] * 3 + ["0:0", "0:1"]
    expected += [f"2:{k}" for k in range(4) for _ in range(2)] + [f"2:{k}" for k in range(4)]
    assert labels.tolist() == expected
    # the label follows the weight's rows: changing row 1 of the first weight changes only
    # coordinates labelled "0:1" of that tensor
    flat_before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    with torch.no_grad():
        model[0].weight[1] += 1.0
    flat_after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    changed = (flat_after != flat_before).numpy()
    assert set(labels[changed]) == {"0:1"} and changed.sum() == 3
    with pytest.raises(ValueError, match="no parameters"):
        unit_groups(nn.ReLU())
