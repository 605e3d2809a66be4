"""The pure step-size and damping heuristics, formula by formula."""

from __future__ import annotations

import math

import pytest
import torch

from adamqlr.heuristics import (
    LevenbergMarquardt,
    clip_step_size,
    damped_curvature,
    predicted_change,
    propose_step,
    reduction_ratio,
    step_size,
)

CASES = [  # (g^T d, q, lambda, ||d||^2)
    (1.3, 0.7, 1e-3, 2.0),
    (-0.4, 2.5, 0.1, 0.3),
    (2.0, 0.0, 0.5, 1.0),
    (5e-3, 1e-4, 1e-8, 40.0),
]


def _model(alpha, gd, q, lam, s):
    return -alpha * gd + 0.5 * alpha**2 * (q + lam * s)


@pytest.mark.parametrize(("gd", "q", "lam", "s"), CASES)
def test_step_size_is_the_exact_minimiser_of_the_damped_model(gd, q, lam, s):
    alpha = step_size(gd, q, lam, s)
    # stationarity: dM/dalpha = -g^T d + alpha (q + lambda s) = 0
    assert -gd + alpha * damped_curvature(q, lam, s) == pytest.approx(0.0, abs=1e-14)
    best = _model(alpha, gd, q, lam, s)
    for delta in (1e-3, -1e-3, 0.1, -0.1):
        assert best < _model(alpha + delta * max(1.0, abs(alpha)), gd, q, lam, s)
    # closed form of the minimum
    assert best == pytest.approx(-0.5 * gd**2 / (q + lam * s), rel=1e-13)


@pytest.mark.parametrize(("gd", "q", "lam", "s"), CASES)
def test_predicted_change_is_the_model_change(gd, q, lam, s):
    for alpha in (0.0, 0.3, -1.2):
        assert predicted_change(alpha, gd, q, lam, s) == pytest.approx(
            _model(alpha, gd, q, lam, s), rel=1e-14, abs=1e-16
        )
        assert predicted_change(alpha, gd, q, lam, s, include_damping=False) == pytest.approx(
            _model(alpha, gd, q, 0.0, s), rel=1e-14, abs=1e-16
        )


def test_clip_is_symmetric():
    assert clip_step_size(3.0, None) == 3.0
    assert clip_step_size(3.0, 0.5) == 0.5
    assert clip_step_size(-3.0, 0.5) == -0.5
    assert clip_step_size(0.2, 0.5) == 0.2


def test_reduction_ratio():
    assert reduction_ratio(-1.0, -2.0) == 0.5
    assert math.isnan(reduction_ratio(0.0, 0.0))
    assert math.isnan(reduction_ratio(1.0, 0.0))


@pytest.mark.parametrize(("gd", "q", "lam", "s"), CASES)
def test_propose_step_matches_formulas(gd, q, lam, s):
    p = propose_step(gd, q, lam, s)
    assert p.accepted and p.reason == ""
    assert p.alpha == step_size(gd, q, lam, s)
    assert p.damped_curvature == q + lam * s
    assert p.predicted_change == pytest.approx(predicted_change(p.alpha, gd, q, lam, s), rel=1e-14)


def test_propose_step_clips_then_amplifies_and_predicts_for_the_applied_alpha():
    gd, q, lam, s = 2.0, 1.0, 0.0, 1.0  # alpha* = 2
    p = propose_step(gd, q, lam, s, alpha_max=0.5, amplification=3.0)
    assert p.alpha == 1.5
    assert p.predicted_change == pytest.approx(-1.5 * 2.0 + 0.5 * 1.5**2 * 1.0)
    neg = propose_step(-gd, q, lam, s, alpha_max=0.5, amplification=3.0)
    assert neg.alpha == -1.5


def test_propose_step_without_damping_in_the_model_change():
    gd, q, lam, s = 1.0, 1.0, 1.0, 1.0
    p = propose_step(gd, q, lam, s, include_damping=False)
    assert p.alpha == 0.5  # the step still uses the damping
    assert p.predicted_change == pytest.approx(-0.5 + 0.5 * 0.25 * 1.0)


def test_zero_direction_proposes_a_zero_step():
    p = propose_step(0.0, 0.0, 1e-3, 0.0)
    assert p.accepted and p.alpha == 0.0 and p.predicted_change == 0.0


@pytest.mark.parametrize(("q", "lam", "s"), [(-1.0, 0.1, 1.0), (0.0, 0.0, 1.0), (-2.0, 1.0, 2.0)])
def test_nonpositive_damped_curvature_is_rejected(q, lam, s):
    p = propose_step(1.0, q, lam, s)
    assert not p.accepted and p.reason == "nonpositive_curvature" and math.isnan(p.alpha)


def test_absolute_rule_divides_by_the_magnitude():
    p = propose_step(1.0, -3.0, 1.0, 1.0, nonpositive_curvature="absolute")
    assert p.accepted and p.alpha == pytest.approx(0.5) and p.damped_curvature == 2.0
    zero = propose_step(1.0, -1.0, 1.0, 1.0, nonpositive_curvature="absolute")
    assert not zero.accepted  # exact zero is still rejected


def test_levenberg_marquardt_thresholds_are_strict():
    lm = LevenbergMarquardt()
    assert lm.update(1.0, 0.9) == 0.5
    assert lm.update(1.0, 0.1) == 2.0
    assert lm.update(1.0, 0.75) == 1.0
    assert lm.update(1.0, 0.25) == 1.0
    assert lm.update(1.0, 0.5) == 1.0
    assert lm.update(1.0, math.nan) == 1.0
    assert lm.update(1.0, -math.inf) == 2.0


def test_levenberg_marquardt_bounds():
    lm = LevenbergMarquardt(lower=1e-8, upper=10.0)
    assert lm.update(1.5e-8, 1.0) == 1e-8
    assert lm.update(8.0, 0.0) == 10.0


def test_after_rejection_jumps_past_negative_curvature():
    lm = LevenbergMarquardt()
    assert lm.after_rejection(1e-3, math.nan, math.nan) == 2e-3
    lam = lm.after_rejection(1e-3, -4.0, 2.0)
    assert lam == 4.0  # increase * |q| / ||d||^2
    assert -4.0 + lam * 2.0 > 0  # the same direction now has positive damped curvature
    assert lm.after_rejection(1e-3, 1.0, 2.0) == 2e-3
    assert LevenbergMarquardt(upper=1.0).after_rejection(1e-3, -4.0, 2.0) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(decrease=1.0), "1.0"),
        (dict(decrease=0.0), "0.0"),
        (dict(decrease=math.nan), "nan"),
        (dict(increase=1.0), "1.0"),
        (dict(increase=math.inf), "inf"),
        (dict(lower=-1.0), "-1.0"),
        (dict(lower=1.0, upper=0.5), "0.5"),
        (dict(low=0.8, high=0.2), r"\(0.8, 0.2\)"),
        (dict(low=0.5, high=0.5), r"\(0.5, 0.5\)"),
    ],
)
def test_levenberg_marquardt_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LevenbergMarquardt(**kwargs)


def test_after_trial_is_the_rule_applied_to_a_measured_loss_change():
    """One function serves the same-batch step and the held-out judgement."""
    from adamqlr.heuristics import LevenbergMarquardt, reduction_ratio

    rule = LevenbergMarquardt()
    damping, rho, unresolved = rule.after_trial(1e-3, 1.0, 0.5, -0.6, torch.float32)
    assert not unresolved and rho == reduction_ratio(-0.5, -0.6)
    assert damping == rule.update(1e-3, rho)
    # a change within float32's rounding: no ratio; a resolvable prediction leaves lambda alone
    same, rho, unresolved = rule.after_trial(1e-3, 1.0, 1.0, -0.5, torch.float32)
    assert unresolved and math.isnan(rho) and same == 1e-3
    # ... and an unmeasurably small prediction lowers it; a zero step teaches nothing
    lower, _, _ = rule.after_trial(1e-3, 1.0, 1.0, -1e-12, torch.float32)
    assert lower == rule.after_unresolved(1e-3, False) < 1e-3
    assert rule.after_trial(1e-3, 1.0, 1.0, 0.0, torch.float32)[0] == 1e-3
    # the paper's rule takes any difference
    _, rho, unresolved = rule.after_trial(1e-3, 1.0, 1.0, -0.5, torch.float32, resolve=False)
    assert not unresolved and rho == 0.0
