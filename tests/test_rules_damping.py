"""``damping_mode``: "fixed" is a first-class rule (lambda constant, no trial loss, no rho)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _models import CountingCE, classification, mlp, oracle_ce
from torch import nn

from adamqlr import SGDQLR, AdamQLR
from adamqlr.testing import flatten, named_params


def _run(cls, steps: int, **kwargs):
    model = mlp((5, 4, 3), nn.Tanh)
    loss = CountingCE()
    opt = cls(model, loss, **kwargs)
    stats = []
    for k in range(steps):
        x, y = classification(model, seed=10 + k)
        stats.append(opt.step(x, y))
    return model, opt, stats, loss.calls


@pytest.mark.parametrize("cls", [AdamQLR, SGDQLR])
def test_fixed_damping_matches_a_never_adapted_damping_bitwise(cls):
    fixed_model, fixed, fixed_stats, fixed_calls = _run(
        cls, 4, initial_damping=0.3, damping_mode="fixed"
    )
    never_model, _, never_stats, never_calls = _run(
        cls, 4, initial_damping=0.3, damping_interval=10**9
    )
    adaptive_calls = _run(cls, 4, initial_damping=0.3)[3]
    assert all(s.accepted for s in fixed_stats)
    assert torch.equal(flatten(named_params(fixed_model)), flatten(named_params(never_model)))
    for a, b in zip(fixed_stats, never_stats, strict=True):
        assert a.lr == b.lr and a.damping_used == b.damping_used == 0.3
        assert math.isnan(a.rho) and math.isnan(a.trial_loss)
    assert fixed.damping == 0.3
    # one forward per step (the gradient pass); the adaptive rule adds the trial forward
    assert fixed_calls == never_calls == 4
    assert adaptive_calls == 8


def test_fixed_damping_keeps_lambda_after_a_rejected_step():
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model)
    opt = AdamQLR(model, "cross_entropy", "hessian", initial_damping=1e-8, damping_mode="fixed")
    bad = x.clone()
    bad[0, 0] = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stats = opt.step(bad, y)
    assert not stats.accepted and stats.damping == 1e-8 and opt.damping == 1e-8
    adaptive = AdamQLR(model, "cross_entropy", initial_damping=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert adaptive.step(bad, y).damping == 2e-8


def test_fixed_damping_survives_a_state_dict_round_trip():
    model_a = mlp((5, 4, 3), nn.Tanh)
    opt_a = AdamQLR(model_a, "cross_entropy", initial_damping=0.05, damping_mode="fixed")
    x, y = classification(model_a)
    opt_a.step(x, y)
    model_b = mlp((5, 4, 3), nn.Tanh)
    with torch.no_grad():
        for p, q in zip(model_b.parameters(), model_a.parameters(), strict=True):
            p.copy_(q)
    opt_b = AdamQLR(model_b, "cross_entropy", initial_damping=0.05, damping_mode="fixed")
    opt_b.load_state_dict(opt_a.state_dict())
    x2, y2 = classification(model_a, seed=3)
    a, b = opt_a.step(x2, y2), opt_b.step(x2, y2)
    assert a.lr == b.lr and a.damping == b.damping == 0.05
    assert torch.equal(flatten(named_params(model_a)), flatten(named_params(model_b)))


def test_undamped_is_damping_mode_none():
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model)
    legacy = AdamQLR(model, "cross_entropy", undamped=True)
    assert legacy.damping_mode == "none" and legacy.damping == 0.0
    model2 = mlp((5, 4, 3), nn.Tanh)
    new = AdamQLR(model2, "cross_entropy", damping_mode="none")
    assert new.undamped and new.damping == 0.0
    a, b = legacy.step(x, y), new.step(x, y)
    assert a.lr == b.lr and math.isnan(a.rho) and math.isnan(b.rho)
    assert AdamQLR(model, "cross_entropy").damping_mode == "adaptive"
    with torch.no_grad():
        assert float(oracle_ce()(model(x), y)) == float(oracle_ce()(model2(x), y))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"damping_mode": "constant"}, "damping_mode: 'constant'"),
        ({"damping_mode": "fixed", "undamped": True}, "damping_mode: 'fixed' with undamped"),
        ({"step_rule": "alpha-mom"}, "step_rule: 'alpha-mom'"),
    ],
)
def test_bad_rules_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamQLR(mlp((5, 4, 3), nn.Tanh), "cross_entropy", **kwargs)
