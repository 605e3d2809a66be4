"""AdamQLR and SGDQLR against independent computations of each part of a step (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from _models import DTYPE, classification, mlp, oracle_ce, regression
from torch import nn

from adamqlr import SGDQLR, AdamQLR, StepStats
from adamqlr.testing import dense_ggn, dense_hessian, flatten


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
def test_first_step_uses_the_exact_minimiser_along_adams_direction(curvature):
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model)
    opt = AdamQLR(model, "cross_entropy", curvature, initial_damping=0.3)
    before = _snapshot(model)
    loss0 = float(oracle_ce()(model(x), y))
    stats = opt.step(x, y)
    g = flatten(_grads(model))
    d = g / (g.abs() + 1e-8)  # Adam's first direction: m_hat = g, v_hat = g^2
    matrix = (dense_ggn if curvature == "fisher" else dense_hessian)(
        _model_at(before), x, y, oracle_ce()
    )
    q = float(d @ matrix @ d)
    gd, s = float(g @ d), float(d @ d)
    alpha = gd / (q + 0.3 * s)
    assert stats.accepted and stats.reason == ""
    assert stats.loss == pytest.approx(loss0, rel=1e-14)
    assert stats.curvature == pytest.approx(q, rel=1e-10)
    assert stats.grad_dot_dir == pytest.approx(gd, rel=1e-12)
    assert stats.direction_sq_norm == pytest.approx(s, rel=1e-12)
    assert stats.damping_used == 0.3
    assert stats.lr == pytest.approx(alpha, rel=1e-10)
    # the model change at alpha is the minimum of the damped model along d
    model_change = -alpha * gd + 0.5 * alpha**2 * (q + 0.3 * s)
    assert stats.predicted_change == pytest.approx(model_change, rel=1e-10)
    assert stats.predicted_change == pytest.approx(-0.5 * gd**2 / (q + 0.3 * s), rel=1e-10)
    # the parameters moved by exactly -alpha d
    moved = flatten(_snapshot(model)) - flatten(before)
    torch.testing.assert_close(moved, -stats.lr * d, rtol=1e-12, atol=1e-15)
    # and the trial loss is the loss at the new parameters on the same batch
    assert stats.trial_loss == pytest.approx(float(oracle_ce()(model(x), y)), rel=1e-14)
    assert stats.rho == pytest.approx((stats.trial_loss - stats.loss) / model_change, rel=1e-10)


def _model_at(params: dict[str, torch.Tensor]) -> nn.Module:
    model = mlp((5, 4, 3), nn.Tanh)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(params[n])
    return model


def _linear_regression(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(4, 3).to(DTYPE)


def _batches(steps: int, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 3, generator=g, dtype=DTYPE)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=g, dtype=DTYPE)
        yield x, x @ w + 0.1 * torch.randn(16, 3, generator=g, dtype=DTYPE)


@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
def test_exact_quadratic_gives_rho_one_and_damping_falls_every_step(curvature):
    """Linear model + squared error: the quadratic model is the loss itself along d.

    Without the damping term in the predicted change, rho = 1 exactly; with it (the default), the
    algebra gives rho = 1 + lambda s / (q + lambda s) > 1. Either way rho > 3/4, so lambda is
    multiplied by the decrease factor every step until it reaches its lower bound.
    """
    for damping_in_rho in (False, True):
        model = _linear_regression()
        opt = AdamQLR(
            model,
            "squared_error",
            curvature,
            initial_damping=1e-3,
            damping_decrease=0.5,
            damping_bounds=(1e-6, math.inf),
            damping_in_rho=damping_in_rho,
        )
        expected_damping = 1e-3
        for x, y in _batches(14):
            stats = opt.step(x, y)
            lam, q, s = stats.damping_used, stats.curvature, stats.direction_sq_norm
            expected_rho = 1.0 + (lam * s / (q + lam * s) if damping_in_rho else 0.0)
            assert stats.rho == pytest.approx(expected_rho, rel=1e-8), stats
            assert stats.damping_used == expected_damping
            expected_damping = max(1e-6, expected_damping * 0.5)
            assert stats.damping == expected_damping
        assert expected_damping == 1e-6  # the bound was reached and held


@pytest.mark.parametrize("loss", ["cross_entropy", "squared_error"])
def test_fisher_and_hessian_agree_on_linear_models(loss):
    runs = {}
    for curvature in ("fisher", "hessian"):
        torch.manual_seed(0)
        model = nn.Linear(5, 3).to(DTYPE)
        opt = AdamQLR(model, loss, curvature)
        g = torch.Generator().manual_seed(1)
        trace = []
        for _ in range(8):
            x = torch.randn(10, 5, generator=g, dtype=DTYPE)
            if loss == "cross_entropy":
                y = torch.randint(0, 3, (10,), generator=g)
            else:
                y = torch.randn(10, 3, generator=g, dtype=DTYPE)
            trace.append(opt.step(x, y))
        runs[curvature] = trace
    for a, b in zip(runs["fisher"], runs["hessian"], strict=True):
        assert a.curvature == pytest.approx(b.curvature, rel=1e-9)
        assert a.lr == pytest.approx(b.lr, rel=1e-9)
        assert a.damping == b.damping


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)])
@pytest.mark.parametrize("eps", [1e-8, 1e-3])
def test_direction_is_torch_adams_update_at_learning_rate_one(betas, eps):
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model, n=12)
    opt = AdamQLR(model, "cross_entropy", betas=betas, eps=eps)
    ref = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    adam = torch.optim.Adam(ref, lr=1.0, betas=betas, eps=eps)
    for k in range(6):
        before = [p.detach().clone() for p in model.parameters()]
        stats = opt.step(x[k : k + 6], y[k : k + 6])
        assert stats.accepted
        with torch.no_grad():
            for r, b, p in zip(ref, before, model.parameters(), strict=True):
                r.copy_(b)
                r.grad = p.grad.detach().clone()
        adam.step()
        for r, b, p in zip(ref, before, model.parameters(), strict=True):
            adam_update = r.detach() - b  # = -d
            torch.testing.assert_close(
                p.detach() - b, stats.lr * adam_update, rtol=1e-11, atol=1e-14
            )


def test_param_groups_get_their_own_betas():
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model, n=12)
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = AdamQLR(model, params=[{"params": first}, {"params": second, "betas": (0.5, 0.9)}])
    ref_a = [p.detach().clone().requires_grad_(True) for p in first]
    ref_b = [p.detach().clone().requires_grad_(True) for p in second]
    adam = torch.optim.Adam([{"params": ref_a}, {"params": ref_b, "betas": (0.5, 0.9)}], lr=1.0)
    params, refs = first + second, ref_a + ref_b
    for k in range(4):
        before = [p.detach().clone() for p in params]
        stats = opt.step(x[k : k + 6], y[k : k + 6])
        with torch.no_grad():
            for r, b, p in zip(refs, before, params, strict=True):
                r.copy_(b)
                r.grad = p.grad.detach().clone()
        adam.step()
        for r, b, p in zip(refs, before, params, strict=True):
            torch.testing.assert_close(
                p.detach() - b, stats.lr * (r.detach() - b), rtol=1e-11, atol=1e-14
            )


@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
def test_sgdqlr_step_size_on_the_gradient(curvature):
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model)
    before = _snapshot(model)
    opt = SGDQLR(model, "cross_entropy", curvature, initial_damping=0.05)
    stats = opt.step(x, y)
    g = flatten(_grads(model))
    matrix = (dense_ggn if curvature == "fisher" else dense_hessian)(
        _model_at(before), x, y, oracle_ce()
    )
    expected = float(g @ g) / float(g @ matrix @ g + 0.05 * (g @ g))
    assert stats.lr == pytest.approx(expected, rel=1e-10)
    torch.testing.assert_close(
        flatten(_snapshot(model)) - flatten(before), -expected * g, rtol=1e-9, atol=1e-14
    )
    assert not opt.state[next(iter(model.parameters()))]  # no per-parameter state at all


def test_sgdqlr_descends_on_squared_error():
    model = mlp((4, 5, 3), nn.Tanh, seed=2)
    opt = SGDQLR(model, "squared_error")
    x, y = regression(n=20, in_dim=4)
    losses = [opt.step(x, y).loss for _ in range(15)]
    assert losses[-1] < 0.8 * losses[0]


def test_weight_decay_is_decoupled_and_absolute():
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model)
    before = _snapshot(model)
    stats = AdamQLR(model, weight_decay=0.1).step(x, y)
    g = flatten(_grads(model))
    d = g / (g.abs() + 1e-8)
    expected = 0.9 * flatten(before) - stats.lr * d
    torch.testing.assert_close(flatten(_snapshot(model)), expected, rtol=1e-12, atol=1e-15)


def test_clipping_and_amplification():
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model)
    free = AdamQLR(mlp((5, 4, 3), nn.Tanh), initial_damping=1e-3).step(x, y)
    clipped = AdamQLR(model, initial_damping=1e-3, lr_clip=free.lr / 4, amplification=1.5)
    stats = clipped.step(x, y)
    assert stats.lr == pytest.approx(free.lr / 4 * 1.5, rel=1e-14)
    assert stats.predicted_change == pytest.approx(
        -stats.lr * stats.grad_dot_dir
        + 0.5 * stats.lr**2 * (stats.curvature + 1e-3 * stats.direction_sq_norm),
        rel=1e-12,
    )


def test_damping_interval_skips_the_trial_pass():
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model)
    opt = AdamQLR(model, damping_interval=3)
    for k in range(1, 8):
        stats = opt.step(x, y)
        if k % 3:
            assert math.isnan(stats.rho) and math.isnan(stats.trial_loss)
            assert stats.damping == stats.damping_used
        else:
            assert math.isfinite(stats.rho) and math.isfinite(stats.trial_loss)


def test_undamped_mode():
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model)
    opt = AdamQLR(model, undamped=True, initial_damping=0.5)
    assert opt.damping == 0.0
    for _ in range(3):
        stats = opt.step(x, y)
        assert stats.damping == stats.damping_used == 0.0
        assert math.isnan(stats.rho) and math.isnan(stats.trial_loss)
        assert stats.lr == pytest.approx(stats.grad_dot_dir / stats.curvature, rel=1e-14)


def test_step_stats_is_frozen_and_serialisable():
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model)
    stats = AdamQLR(model).step(x, y)
    assert isinstance(stats, StepStats)
    with pytest.raises(AttributeError):
        stats.lr = 1.0  # type: ignore[misc]
    d = stats.as_dict()
    assert d["lr"] == stats.lr and d["step"] == 1 and set(d) >= {"loss", "damping", "rho"}


def test_squared_error_with_several_outputs_trains():
    model = mlp((4, 8, 3), nn.Tanh, seed=1)
    x, y = regression(n=32, in_dim=4, out_dim=3)
    opt = AdamQLR(model, "squared_error")
    first = opt.step(x, y).loss
    for _ in range(30):
        last = opt.step(x, y).loss
    assert last < 0.5 * first


def test_committed_moments_follow_adams_recurrence_exactly():
    model = mlp((5, 4, 3), nn.Tanh)
    x, y = classification(model, n=12)
    opt = AdamQLR(model, betas=(0.8, 0.95))
    m = {p: torch.zeros_like(p) for p in model.parameters()}
    v = {p: torch.zeros_like(p) for p in model.parameters()}
    for k in range(4):
        opt.step(x[k : k + 6], y[k : k + 6])
        for p in model.parameters():
            g = p.grad
            m[p] = m[p].lerp(g, 1.0 - 0.8)  # (1 - 0.8 is not 0.2 in floating point)
            v[p] = v[p].mul(0.95).addcmul(g, g, value=1.0 - 0.95)
            st = opt.state[p]
            assert st["step"] == k + 1
            assert torch.equal(st["exp_avg"], m[p]) and torch.equal(st["exp_avg_sq"], v[p])


def test_chunking_the_direction_changes_no_bit():
    runs = []
    for chunk in (1 << 20, 7):
        model = mlp((5, 4, 3), nn.Tanh)
        x, y = classification(model, n=12)
        opt = AdamQLR(model, weight_decay=0.01)
        opt._CHUNK = chunk
        runs.append(([opt.step(x, y).as_dict() for _ in range(5)], _snapshot(model)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][n], runs[1][1][n]) for n in runs[0][1])


def test_gradients_are_left_for_the_user():
    for opt_class in (AdamQLR, SGDQLR):
        model = mlp((5, 4, 3), nn.Tanh)
        x, y = classification(model)
        opt = opt_class(model)
        opt.step(x, y)
        grads = _grads(model)
        ref = mlp((5, 4, 3), nn.Tanh)  # the same initial weights
        nn.functional.cross_entropy(ref(x), y).backward()
        for n, p in ref.named_parameters():
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-13, atol=1e-15)


class _Wrapped(nn.Module):
    """The same network behind a custom forward: the generic torch.func path."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_layerwise_and_generic_fisher_paths_agree_over_steps():
    traces = []
    for wrap in (False, True):
        torch.manual_seed(3)
        net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.25), nn.Linear(8, 3))
        net = net.to(DTYPE)
        model = _Wrapped(net) if wrap else net
        x, y = classification(net, n=12)
        opt = AdamQLR(model)
        torch.manual_seed(4)  # the same dropout masks in both runs
        traces.append([opt.step(x, y) for _ in range(6)])
    for a, b in zip(*traces, strict=True):
        assert a.loss == pytest.approx(b.loss, rel=1e-12)
        assert a.curvature == pytest.approx(b.curvature, rel=1e-10)
        assert a.lr == pytest.approx(b.lr, rel=1e-10)
        assert a.trial_loss == pytest.approx(b.trial_loss, rel=1e-10)
