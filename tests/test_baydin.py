"""Baydin SGD against a hand computation of the hypergradient update."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from adamqlr.baydin import BaydinSGD

DT = torch.float64


def test_matches_hand_computation_on_a_quadratic():
    # f(theta) = 1/2 theta^T diag(a) theta, so g = a * theta.
    a = torch.tensor([1.0, 4.0], dtype=DT)
    theta = torch.tensor([1.0, -0.5], dtype=DT, requires_grad=True)
    alpha0, beta = 0.1, 0.05
    opt = BaydinSGD([theta], lr=alpha0, hypergrad_lr=beta)

    # by hand: step 1 uses alpha0; each later step first moves alpha by beta * g_t . g_{t-1}
    t = [1.0, -0.5]
    g1 = [1.0 * t[0], 4.0 * t[1]]  # (1, -2)
    t = [t[0] - alpha0 * g1[0], t[1] - alpha0 * g1[1]]  # (0.9, -0.3)
    g2 = [1.0 * t[0], 4.0 * t[1]]  # (0.9, -1.2)
    alpha2 = alpha0 + beta * (g2[0] * g1[0] + g2[1] * g1[1])  # 0.1 + 0.05 * 3.3 = 0.265
    t = [t[0] - alpha2 * g2[0], t[1] - alpha2 * g2[1]]
    g3 = [1.0 * t[0], 4.0 * t[1]]
    alpha3 = alpha2 + beta * (g3[0] * g2[0] + g3[1] * g2[1])
    t = [t[0] - alpha3 * g3[0], t[1] - alpha3 * g3[1]]
    assert alpha2 == pytest.approx(0.265)

    lrs = []
    for _ in range(3):
        opt.zero_grad()
        (0.5 * (a * theta * theta).sum()).backward()
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([alpha0, alpha2, alpha3], rel=1e-14)
    assert theta.detach().tolist() == pytest.approx(t, rel=1e-14)


def test_no_clipping_and_negative_learning_rates_are_kept():
    theta = torch.tensor([2.0], dtype=DT, requires_grad=True)
    opt = BaydinSGD([theta], lr=3.0, hypergrad_lr=1.0)  # overshoots: g flips sign each step
    for _ in range(2):
        opt.zero_grad()
        (theta**2).sum().backward()
        opt.step()
    # g1 = 4, theta = 2 - 12 = -10, g2 = -20: alpha = 3 + 1 * (-80) = -77
    assert opt.param_groups[0]["lr"] == -77.0
    assert theta.item() == -10.0 - (-77.0) * (-20.0)


def test_first_step_is_plain_sgd_and_matches_torch_sgd():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).to(DT)
    twin = copy.deepcopy(model)
    x = torch.randn(8, 3, dtype=DT)
    ours = BaydinSGD(model.parameters(), lr=0.05, hypergrad_lr=0.5)
    ref = torch.optim.SGD(twin.parameters(), lr=0.05)
    for m, opt in ((model, ours), (twin, ref)):
        m(x).pow(2).mean().backward()
        opt.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_hypergrad_zero_is_sgd_and_state_round_trip():
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 1).to(DT)
    x = torch.randn(16, 3, dtype=DT)
    opt = BaydinSGD(model.parameters(), lr=0.01, hypergrad_lr=0.2)

    def step(m, o):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()

    for _ in range(3):
        step(model, opt)
    twin = copy.deepcopy(model)
    twin_opt = BaydinSGD(twin.parameters(), lr=0.01, hypergrad_lr=0.2)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for _ in range(3):
        step(model, opt)
        step(twin, twin_opt)
    assert opt.param_groups[0]["lr"] == twin_opt.param_groups[0]["lr"]
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": math.nan}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"hypergrad_lr": -1e-3}, "hypergrad_lr"),
        ({"hypergrad_lr": math.nan}, "hypergrad_lr"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BaydinSGD([torch.zeros(1, requires_grad=True)], **kwargs)


def test_a_learning_rate_beyond_float32_blows_the_parameters_up_instead_of_raising():
    # unclipped, alpha can outgrow a float32 scalar, where add_(g, alpha=-lr) refuses to convert it
    theta = torch.tensor([1.0, 0.0, -1.0], requires_grad=True)
    opt = BaydinSGD([theta], lr=0.1, hypergrad_lr=1e40)
    grads = (torch.tensor([1.0, 0.0, -1.0]), torch.tensor([2.0, 0.0, -2.0]))
    for g in grads:
        theta.grad = g.clone()
        opt.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 + 1e40 * 4.0)
    # the exact product rounded to float32: inf where the gradient is non-zero, untouched where zero
    assert theta.tolist() == [-math.inf, 0.0, math.inf]
