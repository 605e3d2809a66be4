"""No silent stalls: a loss change below the loss's rounding level gives no reduction ratio, the
damping has a finite default bound and comes back down after a run of rejected steps, a run whose
steps stop changing the loss says so once (or raises), and an empty batch is refused."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from _models import classification, mlp, regression
from torch import nn

from adamqlr import SGDQLR, AdamQLR, StallError
from adamqlr.heuristics import (
    DEFAULT_MAX_DAMPING,
    LevenbergMarquardt,
    loss_difference_trustworthy,
    loss_resolution,
)


# ---------------------------------------------------------------------- the pure functions
@pytest.mark.parametrize(
    ("loss", "dtype", "ulp"),
    [
        (1.0, torch.float32, 2.0**-23),
        (1.5, torch.float32, 2.0**-23),
        (0.75, torch.float32, 2.0**-24),
        (-3.0, torch.float32, 2.0**-22),
        (1.0, torch.float64, 2.0**-52),
        (1.0, torch.bfloat16, 2.0**-7),
        (1.0, torch.float16, 2.0**-10),
    ],
)
def test_loss_resolution_is_ulps_at_the_loss(loss, dtype, ulp):
    assert loss_resolution(loss, dtype) == 4 * ulp
    assert loss_resolution(loss, dtype, ulps=1.0) == ulp
    # it is the spacing of the dtype's numbers there
    x = torch.tensor(abs(loss), dtype=dtype)
    assert float(torch.nextafter(x, torch.tensor(math.inf, dtype=dtype)) - x) == ulp


def test_loss_resolution_at_zero_and_infinity_and_bad_arguments():
    assert loss_resolution(0.0, torch.float32) == 4 * torch.finfo(torch.float32).tiny
    assert loss_resolution(math.inf, torch.float32) == math.inf
    with pytest.raises(ValueError, match="dtype"):
        loss_resolution(1.0, torch.int64)
    with pytest.raises(ValueError, match="ulps"):
        loss_resolution(1.0, torch.float32, ulps=-1.0)


def test_loss_difference_trustworthy():
    f32 = torch.float32
    one = 1.0
    assert not loss_difference_trustworthy(one, one, f32)  # the exact zero of a frozen step
    assert not loss_difference_trustworthy(one, one + 2.0**-23, f32)  # one ulp
    assert not loss_difference_trustworthy(one, one - 4 * 2.0**-24, f32)  # 4 ulps below 1
    assert loss_difference_trustworthy(one, one + 8 * 2.0**-23, f32)
    assert loss_difference_trustworthy(one, one + 2.0**-40, torch.float64)
    assert not loss_difference_trustworthy(one, one + 2.0**-40, f32)
    assert not loss_difference_trustworthy(one, math.nan, torch.float64)
    assert not loss_difference_trustworthy(math.inf, math.inf, torch.float64)
    # relative, not absolute: a tiny loss has tiny ulps
    assert loss_difference_trustworthy(1e-30, 2e-30, f32)


def test_after_unresolved_leaves_lambda_or_lowers_it_within_bounds():
    rule = LevenbergMarquardt(decrease=0.5, increase=2.0, lower=1e-3, upper=1e3)
    assert rule.after_unresolved(10.0, model_change_resolved=True) == 10.0
    assert rule.after_unresolved(10.0, model_change_resolved=False) == 5.0
    assert rule.after_unresolved(1.5e-3, model_change_resolved=False) == 1e-3


def test_the_default_damping_bound_is_finite_and_documented():
    opt = AdamQLR(mlp())
    assert opt.damping_rule.upper == DEFAULT_MAX_DAMPING == 1e8
    assert "DEFAULT_MAX_DAMPING" in AdamQLR.__doc__
    unbounded = AdamQLR(mlp(), damping_bounds=(1e-8, math.inf))  # the paper's rule, on request
    assert unbounded.damping_rule.upper == math.inf


def test_a_long_run_of_rejected_steps_stops_at_the_bound():
    model = mlp()
    x, y = classification(model)
    opt = AdamQLR(model)
    bad = torch.full_like(x, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(60):  # 1e-3 * 2^60 would be 1.2e15
            opt.step(bad, y)
    assert opt.damping == DEFAULT_MAX_DAMPING


# ------------------------------------------------------------- the float32 stall of the issue
def _float32_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 5))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 10, generator=g)
    y = torch.randint(0, 5, (256,), generator=g)
    return model, x, y


def test_after_35_nan_batches_float32_training_recovers():
    """35 rejected steps drive lambda to 1e-3 * 2^35 = 3.4e7; the next steps are then too small
    to change the float32 loss at all. They used to report rho = 0, double lambda forever (to
    inf, step size 0) and never move the loss again, all while reporting accepted steps."""
    model, x, y = _float32_problem()
    opt = AdamQLR(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(35):
            assert not opt.step(torch.full_like(x, math.nan), y).accepted
    assert opt.damping == pytest.approx(1e-3 * 2.0**35)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no stall: it recovers before that
        history = [opt.step(x, y) for _ in range(40)]
    first = history[0]
    assert first.accepted and first.loss_unresolved and math.isnan(first.rho)
    assert first.trial_loss == first.loss  # too small to change the rounded loss
    assert first.damping == first.damping_used / 2  # the predicted change is unmeasurable too
    assert not any(s.stalled for s in history)
    assert history[-1].damping < 1.0
    assert history[-1].loss < 0.95 * first.loss
    assert all(math.isfinite(s.damping) for s in history)


def test_resolve_loss_false_keeps_the_papers_rule():
    """The book's experiments run the paper's algorithm: rho from any loss difference, however
    small (here exactly zero: rho = 0, lambda doubles), with no loss_unresolved flag."""
    model, x, y = _float32_problem()
    opt = AdamQLR(model, resolve_loss=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(35):
            opt.step(torch.full_like(x, math.nan), y)
    stats = opt.step(x, y)
    assert stats.trial_loss == stats.loss and stats.rho == 0.0 and not stats.loss_unresolved
    assert stats.damping == 2 * stats.damping_used
    with pytest.raises(ValueError, match="resolve_loss"):
        AdamQLR(model, resolve_loss="no")


def test_the_experiments_run_the_papers_rule():
    from adamqlr.experiment.optimisers import get_optimiser

    model, _, _ = _float32_problem()
    for name in ("adamqlr-untuned", "adamqlr", "sgdqlr"):
        stepper = get_optimiser(name).build(model, "cross_entropy")
        assert stepper.optimizer.resolve_loss is False, name


def test_an_unresolved_step_whose_model_change_is_measurable_leaves_lambda_alone():
    model, x, y = _float32_problem()
    opt = AdamQLR(model, initial_damping=1.0)
    stats = opt.step(x, y)
    assert not stats.loss_unresolved and math.isfinite(stats.rho)
    # the trial pass sees the same parameters when the step size is zero: no change at all
    opt.param_groups[0]["lr"] = 0.0
    frozen = opt.step(x, y)
    assert frozen.loss_unresolved and math.isnan(frozen.rho) and frozen.lr == 0.0
    assert frozen.damping == frozen.damping_used  # a zero step teaches nothing


# --------------------------------------------------------------------------------- stalls
def _stalling(**kwargs):
    """A float64 regression whose residual is exactly zero: no step can change the loss."""
    model = mlp((5, 4, 3))
    x, _ = regression()
    y = model(x).detach()
    return model, x, y, AdamQLR(model, "squared_error", **kwargs)


def test_a_stall_is_flagged_and_warned_about_once():
    model, x, y, opt = _stalling(stall_patience=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = [opt.step(x, y) for _ in range(12)]
    assert all(s.accepted and s.loss_unresolved for s in history)
    assert [s.stalled for s in history] == [False] * 4 + [True] * 8
    stall_warnings = [w for w in caught if "stalled" in str(w.message)]
    assert len(stall_warnings) == 1
    assert "5 steps" in str(stall_warnings[0].message)
    assert stall_warnings[0].filename == __file__  # points at the caller's step
    assert opt.state["qlr"]["stalls"] == 1 and opt.state["qlr"]["unresolved_streak"] == 12


def test_the_default_patience_is_twenty_steps():
    model, x, y, opt = _stalling()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = [opt.step(x, y) for _ in range(21)]
    assert [s.stalled for s in history].index(True) == 19
    assert sum("stalled" in str(w.message) for w in caught) == 1


def test_on_stall_raise_and_ignore():
    model, x, y, opt = _stalling(stall_patience=3, on_stall="raise")
    opt.step(x, y)
    opt.step(x, y)
    with pytest.raises(StallError, match="stalled"):
        opt.step(x, y)
    assert opt.state["qlr"]["step"] == 3  # the step itself was taken
    model, x, y, opt = _stalling(stall_patience=3, on_stall="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = [opt.step(x, y) for _ in range(5)]
    assert history[-1].stalled


def test_a_measurable_step_ends_the_stall():
    model, x, y, opt = _stalling(stall_patience=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert [opt.step(x, y).stalled for _ in range(3)] == [False, True, True]
    moved = opt.step(x, y + 1.0)  # a batch with a residual: the loss changes measurably
    assert not moved.loss_unresolved and not moved.stalled
    assert opt.state["qlr"]["unresolved_streak"] == 0


@pytest.mark.parametrize("bad", ["on_stall", "stall_patience"])
def test_bad_stall_options_are_named(bad):
    value = {"on_stall": "skip", "stall_patience": 0}[bad]
    with pytest.raises(ValueError, match=bad):
        AdamQLR(mlp(), **{bad: value})


def test_stall_state_survives_a_state_dict_round_trip_and_old_dicts_load():
    model, x, y, opt = _stalling(stall_patience=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.step(x, y)
        opt.step(x, y)
        saved = opt.state_dict()
        twin_model, _, _, twin = _stalling(stall_patience=3)
        twin.load_state_dict(saved)
        assert twin.step(x, y).stalled and opt.step(x, y).stalled
    old = opt.state_dict()
    del old["state"]["qlr"]["unresolved_streak"], old["state"]["qlr"]["stalls"]
    twin.load_state_dict(old)
    assert twin.state["qlr"]["unresolved_streak"] == 0


# ---------------------------------------------------------------------------- empty batches
@pytest.mark.parametrize("cls", [AdamQLR, SGDQLR])
def test_an_empty_batch_is_a_value_error_and_changes_nothing(cls):
    model = mlp()
    x, y = classification(model)
    opt = cls(model)
    opt.step(x, y)
    damping, before = opt.damping, [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"invalid targets: an empty batch \(shape \(0,\)\)"):
        opt.step(x[:0], y[:0])
    assert opt.damping == damping and opt.state["qlr"]["rejected_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_batch_of_ignored_targets_is_a_value_error_and_leaves_lambda_alone():
    model = mlp()
    x, y = classification(model)
    opt = AdamQLR(model, ignore_index=-1)
    opt.step(x, y)
    damping = opt.damping
    with pytest.raises(ValueError, match=r"every one of the 7 targets equals ignore_index -1"):
        opt.step(x, torch.full_like(y, -1))
    assert opt.damping == damping and opt.state["qlr"]["rejected_steps"] == 0
