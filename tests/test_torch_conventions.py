"""AdamQLR in torch's own training-loop conventions: learning-rate schedulers through the groups'
``lr``, ``max_grad_norm``, ``add_param_group``, a visible signature, the top-level exports, and a
step called the ``torch.optim`` way (without a batch)."""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from _models import DTYPE, classification, mlp
from torch import nn

import adamqlr
from adamqlr import SGDQLR, AdamQLR
from adamqlr.testing import flat_params


def _flat(model: nn.Module) -> torch.Tensor:
    return flat_params(model).vector


def _first_step(lr: float | None = None, **kwargs):
    """One step of a fresh optimiser on the fixed problem; return (change of theta, stats)."""
    model = mlp()
    x, y = classification(model)
    opt = AdamQLR(model, **kwargs)
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    before = _flat(model)
    stats = opt.step(x, y)
    return _flat(model) - before, stats


# ---------------------------------------------------------------------------- lr and schedulers
def test_every_group_has_lr_one_by_default():
    model = mlp()
    opt = AdamQLR(
        model, params=[{"params": model[0].parameters()}, {"params": model[2].parameters()}]
    )
    assert [g["lr"] for g in opt.param_groups] == [1.0, 1.0]
    assert opt.defaults["lr"] == 1.0


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4),
        lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5),
    ],
    ids=["StepLR", "LambdaLR", "CosineAnnealingLR", "ExponentialLR"],
)
def test_schedulers_construct_and_drive_the_groups_lr(make):
    model = mlp()
    x, y = classification(model)
    opt = AdamQLR(model)
    scheduler = make(opt)  # KeyError: 'lr' before groups had one
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        stats = opt.step(x, y)
        assert stats.accepted
        scheduler.step()
    assert seen[0] == 1.0 and seen[1] < 1.0  # the schedule reached the optimiser
    assert all(a >= b for a, b in zip(seen, seen[1:], strict=False))


def test_lr_scales_the_applied_step_and_its_predicted_change():
    full_move, full = _first_step()
    half_move, half = _first_step(lr=0.5)
    # the same model, damping and direction: the step size and the step are halved
    assert half.damping_used == full.damping_used
    assert half.lr == pytest.approx(0.5 * full.lr, rel=1e-14)
    torch.testing.assert_close(half_move, 0.5 * full_move, rtol=1e-12, atol=1e-15)
    # rho compares the actual change with the model's prediction for the step actually taken
    expected = -half.lr * half.grad_dot_dir + 0.5 * half.lr**2 * (
        half.curvature + half.damping_used * half.direction_sq_norm
    )
    assert half.predicted_change == pytest.approx(expected, rel=1e-12)
    assert half.rho == pytest.approx((half.trial_loss - half.loss) / expected, rel=1e-10)


def test_a_scheduler_scales_the_steps_it_schedules():
    """LambdaLR at 0.25 moves the parameters a quarter as far as the same optimiser without it."""
    model = mlp()
    x, y = classification(model)
    plain, scheduled = AdamQLR(copy.deepcopy(model)), AdamQLR(copy.deepcopy(model))
    torch.optim.lr_scheduler.LambdaLR(scheduled, lambda epoch: 0.25)
    moves = []
    for opt in (plain, scheduled):
        before = _flat(opt.model)
        stats = opt.step(x, y)
        moves.append((_flat(opt.model) - before, stats))
    (move, stats), (quarter_move, quarter) = moves
    assert quarter.lr == pytest.approx(0.25 * stats.lr, rel=1e-14)
    torch.testing.assert_close(quarter_move, 0.25 * move, rtol=1e-12, atol=1e-15)


def test_lr_zero_freezes_its_group_and_the_default_is_bitwise_the_paper():
    move, stats = _first_step(lr=1.0)
    ref_move, ref = _first_step()
    assert torch.equal(move, ref_move) and stats.as_dict() == ref.as_dict()

    model = mlp()
    x, y = classification(model)
    opt = AdamQLR(
        model,
        weight_decay=0.1,
        params=[{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters()}],
    )
    frozen = [p.detach().clone() for p in model[0].parameters()]
    moving = [p.detach().clone() for p in model[2].parameters()]
    stats = opt.step(x, y)
    assert stats.accepted and stats.lr != 0.0
    assert all(torch.equal(a, b) for a, b in zip(frozen, model[0].parameters(), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(moving, model[2].parameters(), strict=True))


def test_groups_at_different_lr_take_the_step_their_ratio_says():
    model = mlp()
    x, y = classification(model)
    opt = AdamQLR(
        model,
        params=[{"params": model[0].parameters(), "lr": 0.5}, {"params": model[2].parameters()}],
    )
    p0 = [p.detach().clone() for p in model.parameters()]
    stats = opt.step(x, y)
    d = {n: opt.state[p]["exp_avg"] for n, p in model.named_parameters()}  # m after one step
    v = {n: opt.state[p]["exp_avg_sq"] for n, p in model.named_parameters()}
    for (name, p), before in zip(model.named_parameters(), p0, strict=True):
        # one step: m_hat = g, v_hat = g^2, d = m_hat / (sqrt(v_hat) + eps)
        direction = (d[name] / 0.1) / ((v[name] / 0.001).sqrt() + 1e-8)
        ratio = 0.5 if name.startswith("0.") else 1.0
        torch.testing.assert_close(
            before - p.detach(), stats.lr * ratio * direction, rtol=1e-9, atol=1e-14
        )


@pytest.mark.parametrize("lr", [-1.0, math.nan, math.inf, "1"])
def test_bad_group_lr_is_named(lr):
    model = mlp()
    with pytest.raises(ValueError, match="lr"):
        AdamQLR(model, params=[{"params": model.parameters(), "lr": lr}])


def test_no_lr_argument_to_the_constructor():
    """lr is a factor on the step size for schedulers, not Adam's learning rate to copy over."""
    with pytest.raises(TypeError, match="lr"):
        AdamQLR(mlp(), lr=1e-3)  # type: ignore[call-arg]


def test_old_state_dicts_without_lr_load_with_the_default():
    model = mlp()
    x, y = classification(model)
    opt = AdamQLR(model)
    opt.step(x, y)
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["lr"]
    twin = AdamQLR(copy.deepcopy(model))
    twin.load_state_dict(saved)
    assert twin.param_groups[0]["lr"] == 1.0
    assert twin.step(x, y).as_dict() == opt.step(x, y).as_dict()


def test_scheduler_state_survives_a_state_dict_round_trip():
    model = mlp()
    x, y = classification(model)
    opt = AdamQLR(model)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(x, y)
    scheduler.step()
    twin = AdamQLR(copy.deepcopy(model))
    twin_scheduler = torch.optim.lr_scheduler.StepLR(twin, step_size=1, gamma=0.5)
    twin.load_state_dict(opt.state_dict())
    twin_scheduler.load_state_dict(scheduler.state_dict())
    assert twin.param_groups[0]["lr"] == 0.5 == opt.param_groups[0]["lr"]
    assert twin.step(x, y).as_dict() == opt.step(x, y).as_dict()


# --------------------------------------------------------------------------------- clipping
def test_max_grad_norm_clips_inside_the_step():
    model = mlp()
    x, y = classification(model)
    reference = copy.deepcopy(model)
    opt = AdamQLR(model, max_grad_norm=1e-3)
    stats = opt.step(x, y)
    # the gradient the step saw: the loss's gradient, scaled to norm 1e-3
    loss = nn.functional.cross_entropy(reference(x), y)
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    norm = float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])))
    assert norm > 1e-2  # so the clipping bites
    assert stats.grad_norm == pytest.approx(norm, rel=1e-12)
    factor = 1e-3 / (norm + 1e-6)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, factor * g, rtol=1e-12, atol=1e-18)
        # Adam's first moment after one step is (1 - beta1) times the clipped gradient
        torch.testing.assert_close(
            opt.state[p]["exp_avg"], 0.1 * factor * g, rtol=1e-12, atol=1e-18
        )


def test_max_grad_norm_leaves_small_gradients_alone_and_is_off_by_default():
    model = mlp()
    x, y = classification(model)
    big = AdamQLR(copy.deepcopy(model), max_grad_norm=1e6)
    plain = AdamQLR(copy.deepcopy(model))
    a, b = big.step(x, y), plain.step(x, y)
    assert math.isnan(b.grad_norm) and a.grad_norm > 0
    assert a.lr == b.lr and a.loss == b.loss and a.damping == b.damping
    for p, q in zip(big.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_clip_grad_norm_before_the_step_has_no_effect_as_documented():
    model = mlp()
    x, y = classification(model)
    twin = copy.deepcopy(model)
    opt, ref = AdamQLR(model), AdamQLR(twin)
    nn.functional.cross_entropy(model(x), y).backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1e-6)
    assert opt.step(x, y).as_dict() == ref.step(x, y).as_dict()
    assert "clip_grad_norm_" in AdamQLR.step.__doc__ and "max_grad_norm" in AdamQLR.__doc__


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_bad_max_grad_norm_is_named(value):
    with pytest.raises(ValueError, match="max_grad_norm"):
        AdamQLR(mlp(), max_grad_norm=value)


# --------------------------------------------------------------------------- add_param_group
def test_add_param_group_as_in_torch():
    model = mlp()
    x, y = classification(model)
    opt = AdamQLR(model, params=model[2].parameters())
    first = [p.detach().clone() for p in model[0].parameters()]
    opt.step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(first, model[0].parameters(), strict=True))
    opt.add_param_group({"params": model[0].parameters(), "lr": 0.5})  # no param_names needed
    group = opt.param_groups[-1]
    assert group["param_names"] == ["0.weight", "0.bias"]
    assert group["lr"] == 0.5 and group["betas"] == (0.9, 0.999)
    stats = opt.step(x, y)
    assert stats.accepted
    assert not any(torch.equal(a, b) for a, b in zip(first, model[0].parameters(), strict=True))
    assert opt.state[model[0].weight]["step"] == 1 and opt.state[model[2].weight]["step"] == 2


def test_add_param_group_accepts_a_later_layer_and_refuses_bad_groups():
    model = mlp()
    opt = AdamQLR(model, params=model[0].parameters())
    model.add_module("3", nn.Linear(3, 3).to(DTYPE))  # grown after construction
    opt.add_param_group({"params": model[3].weight})
    assert opt.param_groups[-1]["param_names"] == ["3.weight"]
    n = len(opt.param_groups)
    for bad, match in [
        ({"params": model[0].weight}, "given more than once"),
        ({"params": [nn.Linear(2, 2).weight]}, "not a parameter of the model"),
        ({"params": model[2].parameters(), "momentum": 0.9}, "momentum"),
        ({"params": model[2].parameters(), "betas": (1.5, 0.9)}, "1.5"),
        ({"params": set(model[2].parameters())}, "set"),
        ({"params": model[3].bias, "param_names": ["x"]}, "param_names"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.add_param_group(bad)
        assert len(opt.param_groups) == n  # unchanged on error


# ------------------------------------------------------------------------------- signature
@pytest.mark.parametrize("cls", [AdamQLR, SGDQLR])
def test_the_signature_lists_every_argument(cls):
    from adamqlr.rules import DEFAULT_DAMPING, FlatOptions

    signature = inspect.signature(cls)
    kinds = {p.name: p.kind for p in signature.parameters.values()}
    assert inspect.Parameter.VAR_POSITIONAL not in kinds.values()
    # the one ``**`` is the typed flat keywords of the grouped settings (rules.FlatOptions)
    assert [n for n, k in kinds.items() if k is inspect.Parameter.VAR_KEYWORD] == ["flat"]
    assert signature.parameters["flat"].annotation == "Unpack[FlatOptions]"
    names = set(signature.parameters) - {"flat"}
    expected = {
        "model", "loss", "curvature", "damping", "step_size", "weight_decay", "params",
        "max_grad_norm", "nonpositive_curvature", "on_nonfinite", "on_stall", "stall_patience",
        "resolve_loss", "ignore_index", "output", "distributed", "rho_data",
    }  # fmt: skip
    if cls is AdamQLR:
        expected |= {"betas", "eps"}
    assert names == expected
    for p in signature.parameters.values():
        assert p.annotation is not inspect.Parameter.empty, p.name
        if p.name not in ("model", "flat"):
            assert p.default is not inspect.Parameter.empty, p.name
        assert p.name in AdamQLR.__doc__, p.name  # every argument is documented
    for name in FlatOptions.__annotations__:  # and every flat keyword
        assert f"``{name}``" in AdamQLR.__doc__, name
    assert signature.parameters["damping"].default is DEFAULT_DAMPING
    assert DEFAULT_DAMPING.initial == 1e-3


# --------------------------------------------------------------------------------- exports
def test_the_baselines_are_exported_at_the_top_level():
    from adamqlr.baydin import BaydinSGD
    from adamqlr.kfac import KFAC
    from adamqlr.optim import SGDQLR as SGDQLR_

    assert adamqlr.KFAC is KFAC and adamqlr.BaydinSGD is BaydinSGD and adamqlr.SGDQLR is SGDQLR_
    assert {"KFAC", "BaydinSGD", "SGDQLR", "StallError", "NonFiniteStepError"} <= set(
        adamqlr.__all__
    )


# ----------------------------------------------------------------------- step without a batch
@pytest.mark.parametrize(
    "call",
    [
        lambda opt, x: opt.step(),
        lambda opt, x: opt.step(lambda: 0.0),
        lambda opt, x: opt.step(x),
        lambda opt, x: opt.step(closure=None),
    ],
    ids=["no-arguments", "closure", "inputs-only", "closure-keyword"],
)
def test_a_step_without_a_batch_says_which_call_to_use(call):
    model = mlp()
    x, _ = classification(model)
    opt = AdamQLR(model)
    with pytest.raises(TypeError) as info:
        call(opt, x)
    message = str(info.value)
    assert "opt.step(inputs, targets)" in message
    assert "same batch" in message  # why: the curvature and trial loss need the batch
    assert opt.state["qlr"]["calls"] == 0
