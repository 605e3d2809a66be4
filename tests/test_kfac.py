"""K-FAC: factors against curvlinops, the 2-D quadratic model against a dense GGN, heuristics."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from curvlinops import GGNLinearOperator, KFACLinearOperator
from torch import nn

import adamqlr.kfac.linalg as kfac_linalg
import adamqlr.kfac.tangents as kfac_tangents
from adamqlr.kfac import (
    KFAC,
    KroneckerBlock,
    NaiveDiagonalBlock,
    ScaleShiftBlock,
    build_blocks,
    curvature_gram,
    pi_damped_factors,
    psd_inverse,
    solve_quadratic_model,
)
from adamqlr.kfac.linalg import (
    cholesky_or_none,
    homogeneous_gram,
    kronecker_solve,
    symmetric_gram,
)
from adamqlr.losses import CrossEntropyLoss

DT = torch.float64


def mlp(seed: int = 0, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, out)).to(DT)


def cnn(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(2, 3, 3, stride=2, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(3))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)]
    return nn.Sequential(*layers).to(DT)


def data(n: int = 12, classes: int = 3, seed: int = 1, shape=(5,)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=DT)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def one_step_factors(model, loss, x, y, estimation, seed=7):
    """Factors recorded by one K-FAC step (EMA of one batch = that batch's statistics)."""
    opt = KFAC(model, loss, "unadaptive", ema_decay=0.0, estimation=estimation, seed=seed)
    opt.step(x, y)
    return {b.name: opt.factors(b) for b in opt.blocks}


def curvlinops_factors(model, loss_func, x, y, fisher_type, seed=7):
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    params = [p for m in layers for p in m.parameters()]
    op = KFACLinearOperator(
        model,
        loss_func,
        params,
        [(x, y)],
        fisher_type=fisher_type,
        seed=seed,
        separate_weight_and_bias=False,
        check_deterministic=False,
        num_data=x.shape[0],
    )
    op.compute_kronecker_factors()
    return op._input_covariances, op._gradient_covariances


# ------------------------------------------------------------------- factors against curvlinops
@pytest.mark.parametrize(
    ("estimation", "fisher_type"),
    [("exact", "type-2"), ("sampled", "mc"), ("empirical", "empirical")],
)
@pytest.mark.parametrize("make", [mlp, cnn], ids=["mlp", "conv"])
def test_factors_match_curvlinops_cross_entropy(estimation, fisher_type, make):
    model = make()
    x, y = data(shape=(5,) if make is mlp else (2, 6, 6), classes=3 if make is mlp else 4)
    a_ref, g_ref = curvlinops_factors(
        copy.deepcopy(model), nn.CrossEntropyLoss(), x, y, fisher_type
    )
    ours = one_step_factors(model, "cross_entropy", x, y, estimation)
    assert set(ours) == set(a_ref)
    for name, f in ours.items():
        torch.testing.assert_close(f["A"], a_ref[name], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(f["G"], g_ref[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("estimation", "fisher_type", "ratio"),
    [("exact", "type-2", 2.0), ("sampled", "mc", 2.0), ("empirical", "empirical", 4.0)],
)
def test_factors_match_curvlinops_squared_error(estimation, fisher_type, ratio):
    # curvlinops' MSELoss is (y - t)^2, twice our 1/2 (y - t)^2: its output Hessian is twice ours
    # (G doubles for the exact and sampled Fisher) and its gradients twice ours (G quadruples for
    # the empirical Fisher); with the same generator its Gaussian samples are sqrt(1/2) ours.
    model = mlp(out=1)
    x, _ = data()
    t = torch.randn(x.shape[0], 1, dtype=DT, generator=torch.Generator().manual_seed(3))
    a_ref, g_ref = curvlinops_factors(copy.deepcopy(model), nn.MSELoss(), x, t, fisher_type)
    ours = one_step_factors(model, "squared_error", x, t, estimation)
    for name, f in ours.items():
        torch.testing.assert_close(f["A"], a_ref[name], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ratio * f["G"], g_ref[name], rtol=1e-10, atol=1e-12)


def test_factor_shapes_and_block_kinds():
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, bias=False),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.LayerNorm(5),
    ).to(DT)
    model.register_parameter("temperature", nn.Parameter(torch.ones((), dtype=DT)))
    blocks = build_blocks(model, list(model.named_parameters()))
    kinds = {b.name: type(b) for b in blocks}
    assert kinds == {
        "0": KroneckerBlock,
        "1": ScaleShiftBlock,
        "4": KroneckerBlock,
        "5": ScaleShiftBlock,
        "temperature": NaiveDiagonalBlock,
    }
    covered = [id(p) for b in blocks for _, p in b.params]
    assert sorted(covered) == sorted(id(p) for p in model.parameters())

    class WithTemperature(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * self.inner.temperature

    opt = KFAC(WithTemperature(model), "cross_entropy", estimation="exact")
    x = torch.randn(6, 2, 6, 6, dtype=DT)
    opt.step(x, torch.randint(0, 5, (6,)))
    shapes = {b.name: {k: tuple(v.shape) for k, v in opt.factors(b).items()} for b in opt.blocks}
    assert shapes == {
        "inner.0": {"A": (18, 18), "G": (3, 3)},  # no bias: no homogeneous coordinate
        "inner.1": {"weight": (3,), "bias": (3,)},
        "inner.4": {"A": (49, 49), "G": (5, 5)},
        "inner.5": {"weight": (5,), "bias": (5,)},
        "inner.temperature": {"inner.temperature": ()},
    }


def test_scale_shift_and_naive_diagonals_match_per_example_gradients():
    # Batch norm in eval mode normalises each example alone, so per-example gradients are exact.
    torch.manual_seed(0)
    model = cnn(bn=True)
    model.register_parameter("scale", nn.Parameter(torch.tensor(1.3, dtype=DT)))
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    model.eval()

    class Scaled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * self.inner.scale

    net = Scaled(model)
    x, y = data(n=7, classes=4, shape=(2, 6, 6))
    params = {n: p.detach() for n, p in net.named_parameters()}

    def example_loss(p, xi, yi):
        out = torch.func.functional_call(net, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0), reduction="sum")

    per_example = torch.func.vmap(torch.func.grad(example_loss), in_dims=(None, 0, 0))(params, x, y)
    opt = KFAC(net, "cross_entropy", "unadaptive", ema_decay=0.0, estimation="empirical")
    opt.step(x, y)
    factors = {b.name: opt.factors(b) for b in opt.blocks}
    n = x.shape[0]
    for local in ("weight", "bias"):
        expected = per_example[f"inner.1.{local}"].pow(2).sum(0) / n
        torch.testing.assert_close(factors["inner.1"][local], expected, rtol=1e-10, atol=1e-14)
    expected = per_example["inner.scale"].sum(0).pow(2) / n
    torch.testing.assert_close(factors["inner.scale"]["inner.scale"], expected)


def test_moving_average_is_normalised():
    model = mlp()
    batches = [data(seed=s) for s in (1, 2, 3)]
    single = []
    for x, y in batches:
        single.append(one_step_factors(copy.deepcopy(model), "cross_entropy", x, y, "exact"))
    opt = KFAC(model, "cross_entropy", "unadaptive", ema_decay=0.95, estimation="exact")
    opt.param_groups[0]["lr"] = 0.0  # keep the parameters fixed so each batch's factors are known
    for x, y in batches:
        opt.step(x, y)
    weights = [0.95**2, 0.95, 1.0]
    for block in opt.blocks:
        for key in ("A", "G"):
            expected = sum(
                w * s[block.name][key] for w, s in zip(weights, single, strict=True)
            ) / sum(weights)
            torch.testing.assert_close(opt.factors(block)[key], expected)


def test_pi_damped_factors():
    g = torch.Generator().manual_seed(0)
    ma, mg = torch.randn(4, 4, generator=g, dtype=DT), torch.randn(3, 3, generator=g, dtype=DT)
    a, gg = ma @ ma.T, 5.0 * mg @ mg.T
    lam = 0.3
    a_d, g_d = pi_damped_factors(a, gg, lam)
    pi = math.sqrt((a.trace() / 4) / (gg.trace() / 3))
    eye_a, eye_g = torch.eye(4, dtype=DT), torch.eye(3, dtype=DT)
    expected = (
        torch.kron(a, gg)
        + math.sqrt(lam) * (pi * torch.kron(eye_a, gg) + torch.kron(a, eye_g) / pi)
        + lam * torch.eye(12, dtype=DT)
    )
    torch.testing.assert_close(torch.kron(a_d, g_d), expected)
    z_a, z_g = pi_damped_factors(torch.zeros(4, 4, dtype=DT), gg, lam)  # zero factor
    torch.testing.assert_close(torch.kron(z_a, z_g), lam * torch.eye(12, dtype=DT))


# ------------------------------------------------------------- the quadratic model (dense oracle)
def dense_ggn(model, x, y):
    params = [p for p in model.parameters()]
    op = GGNLinearOperator(
        model, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False
    )
    d = sum(p.numel() for p in params)
    return op @ torch.eye(d, dtype=DT)


def flat(d: dict[str, torch.Tensor], model) -> torch.Tensor:
    return torch.cat([d[n].reshape(-1) for n, _ in model.named_parameters()])


def test_curvature_gram_matches_dense_ggn():
    model = mlp()
    x, y = data()
    ggn = dense_ggn(model, x, y)
    g = torch.Generator().manual_seed(4)
    vs = [
        {n: torch.randn(p.shape, generator=g, dtype=DT) for n, p in model.named_parameters()}
        for _ in range(2)
    ]
    params = {n: p.detach() for n, p in model.named_parameters()}
    gram = curvature_gram(model, params, vs, x, y, CrossEntropyLoss())
    flat_v = torch.stack([flat(v, model) for v in vs], 1)
    torch.testing.assert_close(gram, flat_v.T @ ggn @ flat_v)


def test_solve_quadratic_model_is_the_exact_minimiser():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=DT)
    c = m @ m.T
    v = torch.randn(6, 2, generator=g, dtype=DT)
    grad = torch.randn(6, generator=g, dtype=DT)
    lam = 0.1
    sol = solve_quadratic_model(v.T @ c @ v, v.T @ v, v.T @ grad, lam)
    w = torch.tensor(sol.coefficients, dtype=DT)

    def q(w, lam_q):
        step = v @ w
        return 0.5 * step @ (c + lam_q * torch.eye(6, dtype=DT)) @ step + grad @ step

    # stationary (gradient of the damped model vanishes) and a minimum (any perturbation is worse)
    torch.testing.assert_close(
        v.T @ (c + lam * torch.eye(6, dtype=DT)) @ v @ w + v.T @ grad,
        torch.zeros(2, dtype=DT),
        atol=1e-12,
        rtol=0,
    )
    for delta in torch.randn(20, 2, generator=g, dtype=DT) * 1e-2:
        assert q(w + delta, lam) > q(w, lam)
    assert sol.quad_change == pytest.approx(float(q(w, 0.0)), rel=1e-12)
    assert sol.quad_change_damped == pytest.approx(float(q(w, lam)), rel=1e-12)
    # the first step: a zero velocity leaves the learning rate alone, the momentum at 0
    v0 = v.clone()
    v0[:, 1] = 0
    sol0 = solve_quadratic_model(v0.T @ c @ v0, v0.T @ v0, v0.T @ grad, lam)
    d = v[:, 0]
    assert sol0.coefficients == pytest.approx((float(-(grad @ d) / (d @ c @ d + lam * d @ d)), 0.0))
    # fixed coefficients are kept, the free one minimises with them held
    sol1 = solve_quadratic_model(v.T @ c @ v, v.T @ v, v.T @ grad, lam, fixed=[None, 0.5])
    a_d = v.T @ (c + lam * torch.eye(6, dtype=DT)) @ v
    assert sol1.coefficients[1] == 0.5
    assert sol1.coefficients[0] == pytest.approx(
        float(-(v[:, 0] @ grad + a_d[0, 1] * 0.5) / a_d[0, 0])
    )
    with pytest.raises(ValueError, match="k in"):
        solve_quadratic_model(torch.eye(3), torch.eye(3), torch.ones(3), 0.0)


def test_adaptive_step_minimises_the_damped_model_over_direction_and_velocity():
    model = mlp()
    x, y = data(n=16)
    opt = KFAC(model, "cross_entropy", "adaptive", initial_damping=0.5)
    first = opt.step(x, y)
    assert first.momentum == 0.0 and first.lr > 0  # momentum forced to 0 at step 0
    velocity = torch.cat([opt.state[p]["velocity"].reshape(-1) for p in model.parameters()])
    before = copy.deepcopy(model)
    second = opt.step(x, y)
    assert second.accepted
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    delta = torch.cat([opt.state[p]["velocity"].reshape(-1) for p in model.parameters()])
    w1, w2 = -second.lr, second.momentum
    direction = (delta - w2 * velocity) / w1
    v = torch.stack([direction, velocity], 1)
    ggn = dense_ggn(before, x, y)
    lam = second.damping_used
    residual = (
        v.T @ (ggn + lam * torch.eye(ggn.shape[0], dtype=DT)) @ v @ torch.tensor([w1, w2], dtype=DT)
        + v.T @ grad
    )
    scale = float((v.T @ grad).abs().max())
    assert float(residual.abs().max()) < 1e-9 * scale
    undamped = 0.5 * delta @ ggn @ delta + grad @ delta
    assert second.quad_change == pytest.approx(float(undamped), rel=1e-9)
    assert second.rho == pytest.approx((second.trial_loss - second.loss) / second.quad_change)


# ------------------------------------------------------------------ damping and descent
def test_damping_decreases_by_0_9_on_an_exact_quadratic():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).to(DT)  # linear model + squared error: the quadratic model is exact
    x = torch.randn(20, 3, dtype=DT)
    t = torch.randn(20, 2, dtype=DT)
    opt = KFAC(model, "squared_error", "adaptive", initial_damping=1.0)
    for k in range(1, 6):
        s = opt.step(x, t)
        assert s.rho == pytest.approx(1.0, abs=1e-9)
        assert s.damping == pytest.approx(0.9**k)


def test_damping_increases_by_1_over_0_9_when_the_model_overpromises(monkeypatch):
    model = mlp()
    x, y = data()
    opt = KFAC(model, "cross_entropy", "adaptive", initial_damping=0.2)
    monkeypatch.setattr(KFAC, "_trial_loss", lambda *a, **k: torch.tensor(10.0))
    s = opt.step(x, y)
    assert s.accepted and s.rho < 0  # the loss rose: rho < 1/4
    assert s.damping == pytest.approx(0.2 / 0.9)
    monkeypatch.setattr(KFAC, "_trial_loss", lambda *a, **k: torch.tensor(math.nan))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match="nonfinite_trial_loss"):
        s = opt.step(x, y)
    assert not s.accepted and s.damping == pytest.approx(0.2 / 0.9**2)
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


def test_damping_floor_and_fixed_damping():
    opt = KFAC(mlp(), "cross_entropy", "adaptive", initial_damping=1e-8)
    assert opt.damping_rule.update(1e-8, 1.0) == 1e-8
    fixed = KFAC(mlp(), "cross_entropy", "unadaptive", initial_damping=0.3, lr=0.1, momentum=0.5)
    x, y = data()
    for _ in range(3):
        s = fixed.step(x, y)
    assert s.damping == 0.3 and math.isnan(s.rho) and s.lr == 0.1 and s.momentum == 0.5


@pytest.mark.parametrize("mode", ["adaptive", "unadaptive"])
@pytest.mark.parametrize("make", [mlp, lambda: cnn(bn=True)], ids=["mlp", "conv-bn"])
def test_a_few_steps_descend(mode, make):
    model = make()
    conv = isinstance(model[0], nn.Conv2d)
    x, y = data(n=32, classes=4 if conv else 3, shape=(2, 6, 6) if conv else (5,))
    kwargs = {} if mode == "adaptive" else {"lr": 0.1, "momentum": 0.5, "initial_damping": 0.1}
    opt = KFAC(model, "cross_entropy", mode, **kwargs)
    losses = [opt.step(x, y).loss for _ in range(15)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]


def test_inverse_update_period():
    opt = KFAC(mlp(), "cross_entropy", "adaptive", initial_damping=1.0, inverse_update_period=3)
    x, y = data()
    seen = []
    for _ in range(6):
        before = opt.damping
        opt.step(x, y)
        seen.append((before, opt.state["kfac"]["inverse_damping"]))
    for i, (damping_at_step, inverse_damping) in enumerate(seen):
        refreshed_at = (i // 3) * 3
        assert inverse_damping == seen[refreshed_at][0]
        if i % 3 == 0:
            assert inverse_damping == damping_at_step


# ------------------------------------------------------------------ contract
@pytest.mark.parametrize("net", ["cnn-bn", "sequential-dropout"])
@pytest.mark.parametrize("mode", ["adaptive", "unadaptive"])
def test_state_dict_round_trip_is_bitwise(mode, net):
    if net == "cnn-bn":  # the generic pass
        model = cnn(bn=True)
        x, y = data(n=16, classes=4, shape=(2, 6, 6))
    else:  # the layer-wise pass, dropout masks replayed
        model = sequential_net()
        x, y = data(n=16, classes=3, shape=(2, 3))
    opt = KFAC(model, "cross_entropy", mode, inverse_update_period=2, seed=3)
    for _ in range(3):
        opt.step(x, y)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin = copy.deepcopy(model)
    twin_opt = KFAC(twin, "cross_entropy", mode, inverse_update_period=2, seed=3)
    twin_opt.load_state_dict(saved)
    for _ in range(3):
        rng = torch.get_rng_state()  # the dropout masks come from the global generator
        a = opt.step(x, y)
        torch.set_rng_state(rng)
        b = twin_opt.step(x, y)
        assert a == b
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "fast"}, "mode"),
        ({"mode": "adaptive", "lr": 0.1}, "lr"),
        ({"mode": "adaptive", "momentum": 0.9}, "momentum"),
        ({"mode": "unadaptive", "lr": 0.0}, "lr"),
        ({"mode": "unadaptive", "lr": math.inf}, "lr"),
        ({"mode": "unadaptive", "momentum": 1.0}, "momentum"),
        ({"initial_damping": -1.0}, "initial_damping"),
        ({"initial_damping": math.nan}, "initial_damping"),
        ({"damping_decay": 1.0}, "damping_decay"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"inverse_update_period": 0}, "inverse_update_period"),
        ({"damping_interval": 1.5}, "damping_interval"),
        ({"estimation": "mc"}, "estimation"),
        ({"seed": "1"}, "seed"),
        ({"loss": "hinge"}, "hinge"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    kwargs = {"loss": "cross_entropy", **kwargs}
    with pytest.raises(ValueError, match=match):
        KFAC(mlp(), **kwargs)


def test_nonfinite_loss_is_skipped():
    model = mlp()
    x, y = data()
    x[0, 0] = math.nan
    opt = KFAC(model, "cross_entropy")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match="nonfinite_loss"):
        s = opt.step(x, y)
    assert not s.accepted and s.damping == pytest.approx(1 / 0.9)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_an_eigendecomposition_that_fails_skips_the_step_instead_of_stopping_the_run(monkeypatch):
    real_eigh = torch.linalg.eigh
    m = torch.diag(torch.tensor([4.0, 0.0, 2.0], dtype=torch.float32))  # singular: Cholesky fails

    def failing_in_float32(a):
        if a.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real_eigh(a)

    monkeypatch.setattr(torch.linalg, "eigh", failing_in_float32)
    inverse = psd_inverse(m)  # computed again in float64, returned in float32
    assert inverse.dtype == torch.float32
    torch.testing.assert_close(inverse.diagonal()[[0, 2]], torch.tensor([0.25, 0.5]))

    def failing(a):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    assert torch.isnan(psd_inverse(m)).all()
    # inside a step: every factor's Cholesky fails and so does its eigendecomposition
    monkeypatch.setattr(
        torch.linalg, "cholesky_ex", lambda a: (torch.zeros_like(a), torch.tensor(1))
    )
    model = mlp()
    x, y = data()
    opt = KFAC(model, "cross_entropy")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.warns(RuntimeWarning, match="step skipped"):
        s = opt.step(x, y)
    assert not s.accepted and math.isfinite(s.damping)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_default_sampling_follows_the_global_generator():
    x, y = data(n=16)
    results = []
    for _ in range(2):
        model = mlp()
        opt = KFAC(model, "cross_entropy")
        torch.manual_seed(123)
        results.append([opt.step(x, y) for _ in range(3)])
    assert results[0] == results[1]
    model = mlp()
    opt = KFAC(model, "cross_entropy")
    torch.manual_seed(124)
    assert [opt.step(x, y) for _ in range(3)] != results[0]


class SameConv(nn.Conv2d):
    """Pads its input itself, TensorFlow "SAME" style, like the tasks' ResNet-18."""

    def forward(self, x):
        extra_h = max(0, (math.ceil(x.shape[-2] / self.stride[0]) - 1) * self.stride[0]
                      + self.kernel_size[0] - x.shape[-2])  # fmt: skip
        extra_w = max(0, (math.ceil(x.shape[-1] / self.stride[1]) - 1) * self.stride[1]
                      + self.kernel_size[1] - x.shape[-1])  # fmt: skip
        pad = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
        return nn.functional.conv2d(nn.functional.pad(x, pad), self.weight, self.bias, self.stride)


def test_convolution_padding_its_own_input_matches_an_explicitly_padded_one():
    torch.manual_seed(0)
    same = nn.Sequential(SameConv(2, 3, 3, stride=2), nn.Flatten(), nn.Linear(27, 4)).to(DT)
    x, y = data(n=8, classes=4, shape=(2, 6, 6))
    # the same network with the (asymmetric: 0 before, 1 after) padding done by a ZeroPad2d
    explicit = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(2, 3, 3, stride=2),
                             nn.Flatten(), nn.Linear(27, 4)).to(DT)  # fmt: skip
    explicit[1].load_state_dict(same[0].state_dict())
    explicit[3].load_state_dict(same[2].state_dict())
    torch.testing.assert_close(same(x), explicit(x))
    ours = one_step_factors(same, "cross_entropy", x, y, "exact")
    ref = one_step_factors(explicit, "cross_entropy", x, y, "exact")
    for a, b in (("0", "1"), ("2", "3")):
        for key in ("A", "G"):
            torch.testing.assert_close(ours[a][key], ref[b][key])


@pytest.mark.parametrize("damping", [0.3, 0.0])
def test_kronecker_preconditioner_is_the_damped_kronecker_inverse(damping):
    model = mlp()
    x, y = data(n=3)  # 3 rows < 6 inputs: without damping, A is singular (eigenvalue fallback)
    opt = KFAC(model, "cross_entropy", "unadaptive", ema_decay=0.0, estimation="exact")
    opt.step(x, y)
    block = opt.blocks[0]
    factors = opt.factors(block)
    inverses = block.inverse(factors, damping)
    assert ("A_chol" in inverses) == (damping > 0)
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=g, dtype=DT) for _, p in block.params]
    pre = block.precondition(grads, factors, inverses, damping)
    a_d, g_d = pi_damped_factors(factors["A"], factors["G"], damping)
    mat = torch.cat([grads[0], grads[1][:, None]], 1)  # [W, b]
    pre_mat = torch.cat([pre[0], pre[1][:, None]], 1)
    if damping > 0:
        expected = torch.linalg.solve(torch.kron(a_d, g_d), mat.T.reshape(-1))  # column-major vec
        torch.testing.assert_close(pre_mat.T.reshape(-1), expected)
    else:  # singular A: the eigenvalue-clipped inverse (finite) stands in for A^{-1}
        assert torch.isfinite(pre_mat).all()
        expected = torch.linalg.solve(g_d, mat) @ psd_inverse(a_d)
        torch.testing.assert_close(pre_mat, expected, rtol=1e-7, atol=0)


# ------------------------------------------------------------------ the fast paths
def test_symmetric_and_homogeneous_gram_match_the_plain_products(monkeypatch):
    monkeypatch.setattr(kfac_linalg, "GRAM_MIN_ROWS", 8)
    g = torch.Generator().manual_seed(0)
    for rows, n, block in [(40, 9, 2), (40, 9, 4), (40, 8, 4), (5, 9, 2), (40, 3, 2)]:
        x = torch.randn(rows, n, dtype=DT, generator=g)
        torch.testing.assert_close(symmetric_gram(x, block=block), x.T @ x, rtol=1e-13, atol=1e-13)
        ones = torch.cat([x, torch.ones(rows, 1, dtype=DT)], 1)
        torch.testing.assert_close(homogeneous_gram(x), ones.T @ ones, rtol=1e-13, atol=1e-13)
    big = torch.randn(kfac_linalg.GRAM_MIN_ROWS, 2 * kfac_linalg.GRAM_BLOCK + 1, generator=g)
    torch.testing.assert_close(symmetric_gram(big), big.T @ big)


def test_kronecker_solve_and_cholesky_or_none():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, dtype=DT, generator=g)
    a = a @ a.T + 0.1 * torch.eye(6, dtype=DT)
    gg = torch.randn(4, 4, dtype=DT, generator=g)
    gg = gg @ gg.T + 0.1 * torch.eye(4, dtype=DT)
    m = torch.randn(4, 6, dtype=DT, generator=g)
    got = kronecker_solve(cholesky_or_none(gg), cholesky_or_none(a), m)
    torch.testing.assert_close(got, torch.linalg.solve(gg, m) @ torch.linalg.inv(a))
    assert cholesky_or_none(-torch.eye(3, dtype=DT)) is None


def sequential_net(seed: int = 0, inplace: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(6, 8),
        nn.ReLU(inplace=inplace),
        nn.Dropout(0.25),
        nn.Linear(8, 7),
        nn.Sequential(nn.Tanh(), nn.Identity(), nn.Linear(7, 5), nn.Sigmoid()),
        nn.Linear(5, 3),
    ).to(DT)


def run_steps(opt: KFAC, steps: int = 6, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(9)  # sampled targets and dropout masks
    out = []
    for _ in range(steps):
        x = torch.randn(20, 2, 3, dtype=DT, generator=g)
        y = torch.randint(0, 3, (20,), generator=g)
        out.append(opt.step(x, y))
    return out


@pytest.mark.parametrize("mode", ["adaptive", "unadaptive"])
def test_layerwise_pass_computes_the_generic_steps(mode):
    runs = []
    for layerwise in (True, False):
        model = sequential_net()
        kwargs = {} if mode == "adaptive" else {"lr": 0.05, "momentum": 0.9}
        opt = KFAC(model, "cross_entropy", mode, **kwargs)
        opt._layerwise = layerwise
        assert (kfac_tangents.sequential_plan(model) is not None) is True
        runs.append((run_steps(opt), model, opt))
    (fast, m_fast, o_fast), (slow, m_slow, o_slow) = runs
    for a, b in zip(fast, slow, strict=True):
        for key in ("loss", "lr", "momentum", "damping", "rho", "trial_loss"):
            va, vb = getattr(a, key), getattr(b, key)
            assert (math.isnan(va) and math.isnan(vb)) or va == pytest.approx(vb, rel=1e-10)
    for p, q in zip(m_fast.parameters(), m_slow.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    for bf, bs in zip(o_fast.blocks, o_slow.blocks, strict=True):
        for k, v in o_fast.factors(bf).items():
            torch.testing.assert_close(v, o_slow.factors(bs)[k], rtol=1e-10, atol=1e-12)


def test_hooks_added_later_and_in_place_relu():
    # A forward hook on the model itself (the training loop's) keeps the layer-wise pass and
    # runs; one on a layer, or one that replaces the outputs, sends K-FAC down the generic path;
    # an in-place ReLU after a recorded layer changes nothing. All compute the same steps.
    seen = []
    nets = {}
    for kind in ("top-hook", "layer-hook", "replacing-hook", "in-place"):
        model = sequential_net(inplace=kind == "in-place")
        opt = KFAC(model, "cross_entropy")
        run_steps(opt, steps=1)
        if kind == "top-hook":
            model.register_forward_hook(lambda m, a, out: seen.append(out.shape))
            assert kfac_tangents.sequential_plan(model) is not None
        elif kind == "layer-hook":
            model[1].register_forward_hook(lambda m, a, out: None)
            assert kfac_tangents.sequential_plan(model) is None
        elif kind == "replacing-hook":
            model.register_forward_hook(lambda m, a, out: out * 1.0)
        else:
            opt._layerwise = False  # through the module hooks
        nets[kind] = (model, run_steps(opt, steps=3, seed=4))
    assert len(seen) >= 3  # the gradient passes (and the trial passes) ran the hook
    reference, ref_stats = nets.pop("top-hook")
    for model, stats in nets.values():
        for a, b in zip(ref_stats, stats, strict=True):
            assert a.lr == pytest.approx(b.lr, rel=1e-10)
        for p, q in zip(reference.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_each_jvp_of_the_generic_path_sees_the_gradient_pass_dropout_masks():
    model = sequential_net()
    x = torch.randn(20, 2, 3, dtype=DT)
    y = torch.randint(0, 3, (20,))
    params = {n: p.detach() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(2)
    vectors = [{n: torch.randn(p.shape, dtype=DT, generator=g) for n, p in params.items()}] * 2
    state = (torch.get_rng_state(), None)
    gram = curvature_gram(model, params, vectors, x, y, CrossEntropyLoss(), state)
    # Both vectors are equal, so every entry is the same number iff both saw the same masks.
    torch.testing.assert_close(gram, gram[0, 0].expand(2, 2), rtol=1e-12, atol=0.0)
    torch.set_rng_state(state[0])
    plan = kfac_tangents.sequential_plan(model)
    with torch.no_grad():
        outputs, tape = kfac_tangents.forward_with_tape(plan, x)
    names = {id(p): n for n, p in model.named_parameters()}
    (u, _) = kfac_tangents.output_tangents(plan, tape, names, vectors)
    expected = CrossEntropyLoss().output_quadratic(outputs, u, y)
    assert float(gram[0, 0]) == pytest.approx(float(expected), rel=1e-10)


def test_relu_tangent_is_masked_fill_bit_for_bit():
    """The ReLU derivative (autograd's kernel, broadcast over stacked tangents) keeps a tangent
    where the output is positive and writes +0 elsewhere, NaN included, as masked_fill does."""
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(7, 5, generator=gen).relu()
    t = torch.randn(2, 7, 5, generator=gen)
    t[0, out == 0] = -1.0  # negative tangents where the output is 0: +0, not -0
    t[1, 0, :] = math.nan
    t[1, 1, :] = math.inf
    got = kfac_tangents._DERIVATIVES[nn.ReLU](t, out)
    want = t.masked_fill(out <= 0, 0.0)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))
    assert torch.equal(torch.signbit(got), torch.signbit(want))


@pytest.mark.parametrize(
    ("a", "b", "fixed", "want"),
    [
        ([[0.0]], [1.0], None, (-math.inf,)),  # a zero curvature: IEEE division, as tensors
        ([[-0.0]], [1.0], None, (-math.inf,)),  # -0 + lambda * 0 is +0
        ([[0.0]], [0.0], None, (0.0,)),  # nothing to gain: no step
        ([[math.nan]], [1.0], None, (math.nan,)),
        ([[1.0, 1.0], [1.0, 1.0]], [1.0, 2.0], None, (math.nan, math.nan)),  # singular
        ([[math.inf, 0.0], [0.0, 1.0]], [1.0, 1.0], None, (math.nan, math.nan)),
        ([[0.0, 2.0], [3.0, 4.0]], [1.0, 1.0], [None, 1.0], (-math.inf, 1.0)),
    ],
)
def test_solve_quadratic_model_degenerate_problems(a, b, fixed, want):
    t = torch.tensor
    sol = solve_quadratic_model(t(a), torch.zeros(len(a), len(a)), t(b), 0.0, fixed=fixed)
    assert len(sol.coefficients) == len(want)
    for got, expected in zip(sol.coefficients, want, strict=True):
        assert got == expected or (math.isnan(got) and math.isnan(expected))
    assert sol.ok == all(math.isfinite(w) for w in want)
