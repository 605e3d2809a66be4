"""Checks at step time and at ``load_state_dict``: the error names the argument and the bad value,
and nothing changes (parameters, direction state, damping, counters)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _models import classification, mlp, regression

from adamqlr import SGDQLR, AdamQLR


def _snapshot(opt):
    return copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in opt.model.parameters()]


def _unchanged(opt, snapshot) -> bool:
    state, params = snapshot
    same_params = all(
        torch.equal(a, b) for a, b in zip(params, opt.model.parameters(), strict=True)
    )
    now = opt.state_dict()
    same_state = now["state"]["qlr"] == state["state"]["qlr"] and all(
        torch.equal(now["state"][k][key], v)
        for k, st in state["state"].items()
        if k != "qlr"
        for key, v in st.items()
        if isinstance(v, torch.Tensor)
    )
    return same_params and same_state and now["param_groups"] == state["param_groups"]


def _stepped(cls=AdamQLR, loss="cross_entropy", **kwargs):
    model = mlp()
    if loss == "cross_entropy":
        x, y = classification(model)
    else:
        x, y = regression()
    opt = cls(model, loss, **kwargs)
    opt.step(x, y)
    return opt, x, y


# ------------------------------------------------------------------------------ targets
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda y: torch.where(y == 0, 3, y),
            r"invalid targets: class index 3 is out of range for 3",
        ),
        (lambda y: torch.where(y == 0, -2, y), r"invalid targets: class index -2 is out of range"),
        (lambda y: y.to(torch.int32), r"invalid targets: dtype torch\.int32.*targets\.long\(\)"),
        (lambda y: y.bool(), r"invalid targets: dtype torch\.bool"),
        (lambda y: y.double(), r"invalid targets: .*dtype torch\.float64"),
        (lambda y: y.to("meta"), r"invalid targets: on device meta, but the parameters are on cpu"),
        (lambda y: y[:3], r"targets \(3,\)"),
    ],
    ids=["too-large", "negative", "int32", "bool", "float", "device", "shape"],
)
@pytest.mark.parametrize("cls", [AdamQLR, SGDQLR])
def test_bad_cross_entropy_targets_are_named_and_change_nothing(cls, make, match):
    opt, x, y = _stepped(cls)
    y[0] = 0  # so that the replacements above have something to replace
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.step(x, make(y))
    assert _unchanged(opt, before)


def test_ignored_positions_may_hold_any_value_but_counted_ones_may_not():
    opt, x, y = _stepped(ignore_index=7)
    stats = opt.step(x, torch.where(torch.arange(len(y)) < 2, 7, y))  # 7 >= C, but ignored
    assert stats.accepted
    with pytest.raises(ValueError, match="class index 5"):
        opt.step(x, torch.where(torch.arange(len(y)) < 2, 5, y))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda y: y.round().long(), r"invalid targets: dtype torch\.int64.*squared_error"),
        (lambda y: y > 0, r"invalid targets: dtype torch\.bool"),
        (lambda y: y.to(torch.complex128), r"invalid targets: dtype torch\.complex128"),
        (lambda y: y.to("meta"), r"invalid targets: on device meta"),
        (lambda y: y[:, :1], r"targets \(7, 1\)"),
    ],
    ids=["long", "bool", "complex", "device", "width"],
)
def test_bad_squared_error_targets_are_named_and_change_nothing(make, match):
    model = mlp((5, 4, 3))
    x, y = regression()
    opt = AdamQLR(model, "squared_error")
    opt.step(x, y)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.step(x, make(y))
    assert _unchanged(opt, before)


def test_squared_error_still_takes_float_targets_of_one_output():
    model = mlp((5, 4, 1))
    x, y = regression(out_dim=1)
    assert AdamQLR(model, "squared_error").step(x, y.reshape(-1)).accepted
    assert AdamQLR(model, "squared_error").step(x, y.float()).accepted  # promoted, as in torch


def test_inputs_on_another_device_are_named():
    opt, x, y = _stepped()
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=r"invalid inputs: on device meta"):
        opt.step(x.to("meta"), y)
    assert _unchanged(opt, before)


# ------------------------------------------------------------------------- load_state_dict
def test_state_from_another_model_is_refused_by_name():
    opt, x, y = _stepped()
    other = AdamQLR(mlp((5, 6, 3)))  # the same number of parameters, other shapes
    other.step(x, y)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0\.weight has shape \(6, 5\)"):
        opt.load_state_dict(other.state_dict())
    assert _unchanged(opt, before)
    fewer = AdamQLR(opt.model, params=list(opt.model.parameters())[:2])
    with pytest.raises(ValueError, match="parameter group 0 has 2 parameters"):
        opt.load_state_dict(fewer.state_dict())
    two_groups = AdamQLR(
        opt.model,
        params=[{"params": opt.model[0].parameters()}, {"params": opt.model[2].parameters()}],
    )
    with pytest.raises(ValueError, match="2 parameter groups, the optimiser has 1"):
        opt.load_state_dict(two_groups.state_dict())
    assert _unchanged(opt, before)


def _edited(opt, edit):
    state = copy.deepcopy(opt.state_dict())
    edit(state)
    return state


def _set_group(key, value):
    def edit(state):
        state["param_groups"][0][key] = value

    return edit


def _set_global(key, value):
    def edit(state):
        state["state"]["qlr"][key] = value

    return edit


def _poison_moment(state):
    first = next(k for k in state["state"] if k != "qlr")
    state["state"][first]["exp_avg_sq"][0] = math.nan


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set_group("betas", (1.5, 0.999)), r"parameter group 0: invalid betas\[0\]: 1\.5"),
        (_set_group("betas", (0.9,)), r"invalid betas: \(0\.9,\)"),
        (_set_group("eps", 0.0), r"invalid eps: 0\.0"),
        (_set_group("lr", -1.0), r"invalid lr: -1\.0"),
        (_set_group("weight_decay", math.nan), r"invalid weight_decay: nan"),
        (_set_global("damping", math.nan), r"invalid state_dict: damping nan"),
        (_set_global("damping", -1.0), r"invalid state_dict: damping -1\.0"),
        (_set_global("damping", math.inf), r"invalid state_dict: damping inf"),
        (_set_global("damping", "1e-3"), r"invalid state_dict: damping '1e-3'"),
        (_set_global("step", -1), r"invalid state_dict: step -1"),
        (_set_global("rejected_steps", 1.5), r"invalid state_dict: rejected_steps 1\.5"),
        (_poison_moment, r"exp_avg_sq of parameter 0\.weight is not finite"),
    ],
    ids=[
        "betas-1.5", "betas-short", "eps-0", "lr-negative", "weight-decay-nan", "damping-nan",
        "damping-negative", "damping-inf", "damping-str", "step-negative", "counter-float",
        "moment-nan",
    ],
)  # fmt: skip
def test_invalid_loaded_values_are_named_and_nothing_is_loaded(edit, match):
    opt, x, y = _stepped()
    source, _, _ = _stepped()
    source.step(x, y)
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(_edited(source, edit))
    assert _unchanged(opt, before)


def test_a_damping_that_reached_infinity_resumes_when_the_damping_has_no_upper_bound():
    """Under the paper's rule (no upper bound) repeated increases can reach inf: the optimiser
    must resume from its own state (a campaign's interrupted run did not); with a finite upper
    bound inf is unreachable and refused."""
    bounds = (1e-8, math.inf)
    source, x, y = _stepped(damping_bounds=bounds)
    saved = _edited(source, _set_global("damping", math.inf))
    opt, _, _ = _stepped(damping_bounds=bounds)
    opt.load_state_dict(saved)
    assert opt.damping == math.inf
    with pytest.raises(ValueError, match=r"damping inf \(expected a finite real number >= 0\)"):
        _stepped()[0].load_state_dict(saved)


def test_loading_a_wrapped_models_state_keeps_the_models_own_names():
    opt, x, y = _stepped()
    saved = opt.state_dict()
    saved["param_groups"][0]["param_names"] = [
        "module." + n for n in saved["param_groups"][0]["param_names"]
    ]
    twin = AdamQLR(copy.deepcopy(opt.model))
    twin.load_state_dict(saved)
    assert twin.param_groups[0]["param_names"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert twin.step(x, y).as_dict() == opt.step(x, y).as_dict()


def test_not_a_state_dict_is_named():
    opt, _, _ = _stepped()
    with pytest.raises(ValueError, match="invalid state_dict: a list"):
        opt.load_state_dict([])  # type: ignore[arg-type]


def test_value_checks_of_valid_targets_cost_no_sync_on_cpu(monkeypatch):
    # The class-range check is left to a failing (or NaN) loss on the CPU: a valid step does not
    # read the targets' values, and a bad one is still refused by name (tests above).
    opt, x, y = _stepped()
    calls = []
    monkeypatch.setattr(opt.loss, "check_values", lambda *a: calls.append(a))
    for _ in range(3):
        opt.step(x, y)
    assert calls == []


def test_a_refused_all_ignored_batch_counts_no_call_and_leaves_no_gradient():
    opt, x, y = _stepped(ignore_index=-1)
    outputs, calls = opt.last_outputs(), opt.state["qlr"]["calls"]
    with pytest.raises(ValueError, match=r"every one of the 7 targets equals ignore_index -1"):
        opt.step(x, torch.full_like(y, -1))
    assert opt.state["qlr"]["calls"] == calls
    assert all(p.grad is None for p in opt.model.parameters())
    assert opt.last_outputs() is outputs
