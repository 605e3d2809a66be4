"""``rho_data="next"``: the reduction ratio measured on the next mini-batch (adamqlr.heldout)."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from _models import CountingCE, classification, mlp, oracle_ce
from torch import nn
from torch.func import functional_call

from adamqlr import SGDQLR, AdamQLR
from adamqlr.heldout import PENDING_CHANGE, PREVIOUS_PARAMS
from adamqlr.testing import flatten, named_params


def _batches(model, n):
    return [classification(model, n=9, seed=20 + k) for k in range(n)]


def _oracle_loss(model, params, x, y) -> float:
    with torch.no_grad():
        return float(oracle_ce()(functional_call(model, params, (x,)), y))


def _lm(damping: float, rho: float, lower: float = 1e-8) -> float:
    """The Levenberg-Marquardt rule written out (0.5 / 2.0 at 3/4 and 1/4)."""
    if rho > 0.75:
        damping *= 0.5
    elif rho < 0.25:
        damping *= 2.0
    return max(lower, damping)


@pytest.mark.parametrize(
    ("cls", "curvature"), [(AdamQLR, "fisher"), (SGDQLR, "fisher"), (AdamQLR, "hessian")]
)
def test_heldout_rho_is_the_next_batch_change_over_the_previous_prediction(cls, curvature):
    model = mlp((5, 4, 3), nn.Tanh)
    opt = cls(model, "cross_entropy", curvature, initial_damping=0.1, rho_data="next")
    batches = _batches(model, 6)
    thetas, stats = [], []
    for x, y in batches:
        thetas.append({n: p.clone() for n, p in named_params(model).items()})
        stats.append(opt.step(x, y))
    thetas.append({n: p.clone() for n, p in named_params(model).items()})
    assert all(s.accepted for s in stats)
    assert math.isnan(stats[0].rho) and math.isnan(stats[0].trial_loss)
    verdicts = set()
    for t in range(len(batches) - 1):
        x, y = batches[t + 1]
        new = _oracle_loss(model, thetas[t + 1], x, y)
        old = _oracle_loss(model, thetas[t], x, y)
        expected = (new - old) / stats[t].predicted_change
        got = stats[t + 1]
        assert got.loss == pytest.approx(new, rel=1e-12)
        assert got.trial_loss == pytest.approx(old, rel=1e-12)
        assert got.rho == pytest.approx(expected, rel=1e-9, abs=1e-12)
        # the held-out ratio of step t sets the damping step t+1 uses
        assert got.damping_used == pytest.approx(_lm(stats[t].damping, expected), rel=1e-12)
        verdicts.add((expected > 0.75) - (expected < 0.25))
    # the same-batch ratio of the same first step differs (it is measured on batch 1)
    same_model = mlp((5, 4, 3), nn.Tanh)
    same = cls(same_model, "cross_entropy", curvature, initial_damping=0.1).step(*batches[0])
    assert same.predicted_change == stats[0].predicted_change
    assert same.rho != stats[1].rho
    assert verdicts  # at least one verdict checked


def test_heldout_costs_the_same_forward_passes_and_skips_the_first():
    counts = {}
    for rho_data in ("same", "next"):
        model = mlp((5, 4, 3), nn.Tanh)
        loss = CountingCE()
        opt = AdamQLR(model, loss, initial_damping=0.1, rho_data=rho_data)
        for x, y in _batches(model, 5):
            opt.step(x, y)
        counts[rho_data] = loss.calls
    # 5 gradient passes; "same" adds 5 trial passes, "next" 4 (step 1 judges nothing)
    assert counts == {"same": 10, "next": 9}


def test_with_a_damping_interval_only_adapting_steps_are_judged_by_the_next():
    model = mlp((5, 4, 3), nn.Tanh)
    loss = CountingCE()
    opt = AdamQLR(model, loss, initial_damping=0.1, damping_interval=2, rho_data="next")
    stats = [opt.step(x, y) for x, y in _batches(model, 5)]
    # steps 2 and 4 adapt: steps 3 and 5 judge them; 5 gradient passes and 2 judging passes
    assert [math.isnan(s.rho) for s in stats] == [True, True, False, True, False]
    assert loss.calls == 7
    assert stats[3].damping_used == stats[2].damping  # step 4 judges nothing


def test_default_is_rho_data_same_bitwise():
    runs = []
    for kwargs in ({}, {"rho_data": "same"}):
        model = mlp((5, 4, 3), nn.Tanh)
        opt = AdamQLR(model, "cross_entropy", initial_damping=0.1, **kwargs)
        stats = [opt.step(x, y) for x, y in _batches(model, 4)]
        runs.append((flatten(named_params(model)), stats, opt.state_dict()))
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        for key, value in a.as_dict().items():
            other = b.as_dict()[key]
            assert value == other or (math.isnan(value) and math.isnan(other)), key
    assert PENDING_CHANGE not in runs[0][2]["state"]["qlr"]
    assert all(PREVIOUS_PARAMS not in st for k, st in runs[0][2]["state"].items() if k != "qlr")


@pytest.mark.parametrize("k", [1, 3])
def test_state_dict_round_trip_continues_bitwise(k):
    n = 6
    model = mlp((5, 4, 3), nn.Tanh)
    batches = _batches(model, n)
    reference = AdamQLR(model, "cross_entropy", initial_damping=0.1, rho_data="next")
    ref_stats = [reference.step(x, y) for x, y in batches]

    first = mlp((5, 4, 3), nn.Tanh)
    opt = AdamQLR(first, "cross_entropy", initial_damping=0.1, rho_data="next")
    stats = [opt.step(x, y) for x, y in batches[:k]]
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buffer)
    saved = opt.state_dict()
    assert not math.isnan(saved["state"]["qlr"][PENDING_CHANGE])
    assert all(PREVIOUS_PARAMS in saved["state"][i] for i in range(len(list(first.parameters()))))
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = mlp((5, 4, 3), nn.Tanh, seed=7)  # other weights: all comes from the checkpoint
    fresh.load_state_dict(loaded["model"])
    resumed = AdamQLR(fresh, "cross_entropy", initial_damping=0.1, rho_data="next")
    resumed.load_state_dict(loaded["opt"])
    stats += [resumed.step(x, y) for x, y in batches[k:]]
    assert torch.equal(flatten(named_params(fresh)), flatten(named_params(model)))
    for a, b in zip(stats, ref_stats, strict=True):
        assert (a.lr, a.damping, a.damping_used) == (b.lr, b.damping, b.damping_used)
        assert a.rho == b.rho or (math.isnan(a.rho) and math.isnan(b.rho))
    assert not math.isnan(stats[k].rho)  # the resumed step judged the step before the save


def test_a_rejected_step_leaves_the_judgement_for_the_next_batch():
    model = mlp((5, 4, 3), nn.Tanh)
    opt = AdamQLR(model, "cross_entropy", initial_damping=0.1, rho_data="next")
    (x0, y0), (x1, y1) = _batches(model, 2)
    first = opt.step(x0, y0)
    theta1 = {n: p.clone() for n, p in named_params(model).items()}
    previous = copy.deepcopy(opt.state[next(model.parameters())][PREVIOUS_PARAMS])
    bad = x1.clone()
    bad[0, 0] = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rejected = opt.step(bad, y1)
    assert not rejected.accepted and rejected.reason == "nonfinite_loss"
    assert torch.equal(opt.state[next(model.parameters())][PREVIOUS_PARAMS], previous)
    judged = opt.step(x1, y1)
    new = _oracle_loss(model, theta1, x1, y1)
    assert judged.loss == pytest.approx(new, rel=1e-12)
    assert judged.rho == pytest.approx(
        (new - judged.trial_loss) / first.predicted_change, rel=1e-12
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho_data": "held-out"}, "rho_data: 'held-out'"),
        ({"rho_data": None}, "rho_data: None"),
        ({"rho_data": "next", "damping_mode": "fixed"}, "'next' with damping_mode 'fixed'"),
        ({"rho_data": "next", "undamped": True}, "rho_data: 'next' with damping_mode 'none'"),
    ],
)
def test_bad_rho_data_is_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamQLR(mlp((5, 4, 3), nn.Tanh), "cross_entropy", **kwargs)
