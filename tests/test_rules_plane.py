"""``step_rule="alpha-momentum"``: K-FAC's 2-D learning-rate-and-momentum rule on any direction.

Checked against dense oracles in float64: the curvature ``C`` built whole (the GGN from
``jacrev`` and the loss's output Hessian, or the Hessian), the 2x2 model formed and solved by hand.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from _models import DTYPE, classification, mlp, oracle_ce
from torch import nn

from adamqlr import SGDQLR, AdamQLR
from adamqlr.heuristics import propose_plane_step, propose_step
from adamqlr.kfac.quadratic import solve_quadratic_model
from adamqlr.rules import PREVIOUS_UPDATE
from adamqlr.testing import dense_ggn, dense_hessian, flatten, named_params

ENGINES = {
    "layerwise-fisher": ("fisher", None),
    "forward-mode-fisher": ("fisher", lambda out: out),  # a selector: no layer-wise plan
    "graph-hessian": ("hessian", None),
}


def _flat_state(opt, model, key):
    return torch.cat([opt.state[p][key].reshape(-1) for p in model.parameters()])


def _adam_direction(opt, model, g, betas=(0.9, 0.999), eps=1e-8):
    """Adam's next direction from the optimiser's moments and the gradient ``g`` (flat)."""
    b1, b2 = betas
    first = next(iter(model.parameters()))
    t = opt.state[first]["step"] + 1
    m = b1 * _flat_state(opt, model, "exp_avg") + (1 - b1) * g
    v = b2 * _flat_state(opt, model, "exp_avg_sq") + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return m_hat / (v_hat.sqrt() + eps)


@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("cls", [SGDQLR, AdamQLR])
def test_second_step_solves_the_damped_model_on_the_plane(cls, engine):
    curvature, output = ENGINES[engine]
    model = mlp((5, 4, 3), nn.Tanh)
    lam = 0.05
    opt = cls(
        model,
        "cross_entropy",
        curvature,
        initial_damping=lam,
        damping_mode="fixed",
        step_rule="alpha-momentum",
        output=output,
    )
    x1, y1 = classification(model, seed=1)
    opt.step(x1, y1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    v2 = _flat_state(opt, model, PREVIOUS_UPDATE).clone()
    x, y = classification(model, seed=2)

    # the oracle: gradient, direction and dense curvature at the parameters before step 2
    model.zero_grad()
    oracle_ce()(model(x), y).backward()
    g = flatten({n: p.grad.detach().clone() for n, p in model.named_parameters()})
    d = g.clone() if cls is SGDQLR else _adam_direction(opt, model, g)
    dense = dense_ggn if curvature == "fisher" else dense_hessian
    c = dense(copy.deepcopy(model), x, y, oracle_ce())
    v = torch.stack([-d, v2], dim=1)  # v1 = -d, v2 = the previous update
    big_g = v.T @ (c + lam * torch.eye(c.shape[0], dtype=DTYPE)) @ v
    rhs = v.T @ g
    a, b = (-torch.linalg.solve(big_g, rhs)).tolist()
    w = torch.tensor([a, b], dtype=DTYPE)
    change = float(rhs @ w + 0.5 * w @ big_g @ w)

    stats = opt.step(x, y)
    assert stats.accepted and engine == opt.curvature_engine.name
    assert stats.lr == pytest.approx(a, rel=1e-10)
    assert stats.momentum == pytest.approx(b, rel=1e-10)
    assert stats.predicted_change == pytest.approx(change, rel=1e-10)
    moved = flatten(named_params(model)) - flatten(before)
    torch.testing.assert_close(moved, a * -d + b * v2, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(_flat_state(opt, model, PREVIOUS_UPDATE), moved, rtol=1e-10, atol=0)
    # K-FAC's own solve of the same model (A = V^T C V, D = V^T V, b = V^T g) agrees
    kfac = solve_quadratic_model(v.T @ c @ v, v.T @ v, rhs, lam)
    assert kfac.coefficients == pytest.approx((a, b), rel=1e-10)
    assert kfac.quad_change_damped == pytest.approx(change, rel=1e-10)
    assert math.isnan(stats.rho)  # fixed damping: no trial loss


def test_adaptive_rho_uses_the_damped_model_change_of_the_step_taken():
    model = mlp((5, 4, 3), nn.Tanh)
    opt = AdamQLR(model, "cross_entropy", initial_damping=0.1, step_rule="alpha-momentum")
    # the layer-wise engine evaluates the trial's first layer by linearity from both tangents
    for seed in (1, 2, 3):
        x, y = classification(model, seed=seed)
        stats = opt.step(x, y)
        with torch.no_grad():
            after = float(oracle_ce()(model(x), y))
        assert stats.trial_loss == pytest.approx(after, rel=1e-12)
        assert stats.rho == pytest.approx(
            (stats.trial_loss - stats.loss) / stats.predicted_change, rel=1e-12
        )
    assert stats.momentum != 0.0 and math.isfinite(stats.momentum)
    assert opt.curvature_engine.name == "layerwise-fisher"


@pytest.mark.parametrize("cls", [SGDQLR, AdamQLR])
@pytest.mark.parametrize("damping_mode", ["adaptive", "fixed", "none"])
def test_first_step_is_the_alpha_rule_exactly(cls, damping_mode):
    runs = []
    for rule in ("alpha", "alpha-momentum"):
        model = mlp((5, 4, 3), nn.Tanh)
        opt = cls(model, "cross_entropy", damping_mode=damping_mode, step_rule=rule)
        x, y = classification(model)
        runs.append((opt.step(x, y), flatten(named_params(model))))
    (one, p_one), (two, p_two) = runs
    assert torch.equal(p_one, p_two)
    assert one.lr == two.lr and one.predicted_change == two.predicted_change
    assert math.isnan(one.momentum) and two.momentum == 0.0
    assert one.rho == two.rho or (math.isnan(one.rho) and math.isnan(two.rho))


class _Quadratic(nn.Module):
    """``theta`` itself as the output; the loss is ``1/2 theta^T A theta - b^T theta``."""

    def __init__(self, theta0: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.unsqueeze(0) + 0.0 * x


def _quadratic_loss(a: torch.Tensor, b: torch.Tensor):
    def loss(out: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        t = out[0]
        return 0.5 * t @ a @ t - b @ t

    return loss


def test_on_a_quadratic_the_undamped_plane_step_is_the_exact_minimiser_on_the_plane():
    torch.manual_seed(0)
    n = 6
    m = torch.randn(n, n, dtype=DTYPE)
    a = m @ m.T + 0.5 * torch.eye(n, dtype=DTYPE)
    b = torch.randn(n, dtype=DTYPE)
    model = _Quadratic(torch.randn(n, dtype=DTYPE))
    x, y = torch.zeros(1, n, dtype=DTYPE), torch.zeros(1, n, dtype=DTYPE)
    opt = SGDQLR(
        model,
        _quadratic_loss(a, b),
        "hessian",
        damping_mode="none",
        step_rule="alpha-momentum",
    )
    first = opt.step(x, y)
    assert first.accepted and first.momentum == 0.0
    for _ in range(3):
        theta = model.theta.detach().clone()
        v2 = opt.state[model.theta][PREVIOUS_UPDATE].clone()
        g = a @ theta - b
        v = torch.stack([-g, v2], dim=1)
        w = -torch.linalg.solve(v.T @ a @ v, v.T @ g)  # min over w of f(theta + V w)
        best = theta + v @ w
        stats = opt.step(x, y)
        assert stats.accepted
        torch.testing.assert_close(model.theta.detach(), best, rtol=1e-10, atol=1e-12)
        f = float(0.5 * theta @ a @ theta - b @ theta)
        f_new = float(0.5 * best @ a @ best - b @ best)
        assert stats.predicted_change == pytest.approx(f_new - f, rel=1e-10)


def test_an_indefinite_plane_is_rejected_and_raises_the_adaptive_damping():
    a = torch.diag(torch.tensor([3.0, -1.0], dtype=DTYPE))
    b = torch.tensor([-1.0, -0.1], dtype=DTYPE)
    model = _Quadratic(torch.zeros(2, dtype=DTYPE))
    x, y = torch.zeros(1, 2, dtype=DTYPE), torch.zeros(1, 2, dtype=DTYPE)
    opt = SGDQLR(
        model,
        _quadratic_loss(a, b),
        "hessian",
        initial_damping=1e-8,
        step_rule="alpha-momentum",
        resolve_loss=False,
    )
    assert opt.step(x, y).accepted  # g = (1, 0.1): g^T A g > 0 along the gradient
    theta = model.theta.detach().clone()
    kept = opt.state[model.theta][PREVIOUS_UPDATE].clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stats = opt.step(x, y)  # two independent vectors in R^2: G is congruent to A
    assert not stats.accepted and stats.reason == "nonpositive_curvature"
    assert math.isnan(stats.momentum) and stats.lr == 0.0
    assert stats.damping > stats.damping_used
    assert torch.equal(model.theta.detach(), theta)
    assert torch.equal(opt.state[model.theta][PREVIOUS_UPDATE], kept)


def test_state_dict_round_trip_keeps_the_previous_update():
    def build(model):
        return AdamQLR(model, "cross_entropy", initial_damping=0.1, step_rule="alpha-momentum")

    model_a = mlp((5, 4, 3), nn.Tanh)
    opt_a = build(model_a)
    for seed in (1, 2):
        opt_a.step(*classification(model_a, seed=seed))
    saved = opt_a.state_dict()
    assert all(PREVIOUS_UPDATE in s for s in saved["state"].values() if "exp_avg" in s)
    model_b = mlp((5, 4, 3), nn.Tanh)
    with torch.no_grad():
        for p, q in zip(model_b.parameters(), model_a.parameters(), strict=True):
            p.copy_(q)
    opt_b = build(model_b)
    opt_b.load_state_dict(copy.deepcopy(saved))
    x, y = classification(model_a, seed=3)
    sa, sb = opt_a.step(x, y), opt_b.step(x, y)
    assert sa == sb and sa.momentum != 0.0
    assert torch.equal(flatten(named_params(model_a)), flatten(named_params(model_b)))


# ------------------------------------------------------------------------- the pure function
def test_plane_with_no_second_vector_is_propose_step():
    one = propose_step(0.7, 2.0, 0.1, 3.0, alpha_max=0.05, amplification=1.5)
    two = propose_plane_step(
        (-0.7, 0.0), (2.0, 0.0, 0.0), (3.0, 0.0, 0.0), 0.1, alpha_max=0.05, amplification=1.5
    )
    assert (two.lr, two.momentum, two.predicted_change) == (one.alpha, 0.0, one.predicted_change)


def test_parallel_vectors_make_a_line():
    # v2 = -2 v1: the plane is a line; the step is the minimiser along v1
    c11, n11, g1 = 2.0, 3.0, -0.7
    p = propose_plane_step((g1, -2 * g1), (c11, -2 * c11, 4 * c11), (n11, -2 * n11, 4 * n11), 0.1)
    assert p.accepted and p.momentum == 0.0
    assert p.lr == pytest.approx(-g1 / (c11 + 0.1 * n11), rel=1e-15)


def test_lr_clip_holds_a_and_reminimises_b():
    g, c, n, lam = (-1.0, 0.3), (0.5, 0.1, 0.8), (1.0, 0.2, 1.5), 0.01
    free = propose_plane_step(g, c, n, lam)
    clipped = propose_plane_step(g, c, n, lam, alpha_max=0.5 * abs(free.lr))
    assert clipped.lr == pytest.approx(0.5 * free.lr)
    g12, g22 = c[1] + lam * n[1], c[2] + lam * n[2]
    assert clipped.momentum == pytest.approx(-(g[1] + g12 * clipped.lr) / g22, rel=1e-14)


def test_indefinite_plane_is_rejected_or_made_absolute():
    g, c, n = (-1.0, 0.3), (1.0, 0.0, -2.0), (1.0, 0.0, 1.0)
    rejected = propose_plane_step(g, c, n, 0.0)
    assert not rejected.accepted and rejected.reason == "nonpositive_curvature"
    absolute = propose_plane_step(g, c, n, 0.0, nonpositive_curvature="absolute")
    assert absolute.accepted
    # |G| = diag(1, 2)
    assert (absolute.lr, absolute.momentum) == pytest.approx((1.0, -0.15), rel=1e-14)
    # off the axes: |G| = Q |Lambda| Q^T from an eigendecomposition
    c = (0.5, 1.2, -0.7)
    gm = torch.tensor([[c[0], c[1]], [c[1], c[2]]], dtype=DTYPE)
    vals, vecs = torch.linalg.eigh(gm)
    expected = -torch.linalg.solve(
        vecs @ torch.diag(vals.abs()) @ vecs.T, torch.tensor(g, dtype=DTYPE)
    )
    absolute = propose_plane_step(g, c, n, 0.0, nonpositive_curvature="absolute")
    assert (absolute.lr, absolute.momentum) == pytest.approx(expected.tolist(), rel=1e-12)
