"""K-FAC's heuristics (chapter 13's lens and the library's K-FAC) against dense oracles.

Every oracle here is built from scratch on a network of a few dozen parameters in float64:

* the GGN (= Fisher for the package's losses) of the *mean* batch loss as ``J^T H J`` with ``J``
  the Jacobian of all the batch's outputs with respect to the flat parameters
  (``torch.func.jacrev``) and ``H`` the Hessian of the mean loss with respect to those outputs
  (``torch.func.hessian``): no per-example ``vmap``, no hooks;
* each layer's ``A`` from an explicit forward pass, and its ``G`` read off the GGN's bias-bias
  block (the bias sees the input coordinate 1, so that block is exactly ``G``);
* K-FAC's block as an explicit ``torch.kron`` permuted to the parameters' order, solved densely;
* the learning rate and momentum by ``numpy.linalg.solve`` on the 2 x 2 system, ``rho`` with the
  undamped model, the damping rule written out with its thresholds, the normalised moving average
  written as a weighted sum.

The lens functions (:mod:`adamqlr.lens.kfac_heuristics`) and :class:`adamqlr.kfac.KFAC` must match
them to about 1e-10; each comparison is paired with a perturbed one that must *not* match, so that
a test cannot pass by comparing a quantity with itself.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from adamqlr import testing
from adamqlr.heuristics import LevenbergMarquardt
from adamqlr.kfac import KFAC, pi_damped_factors, solve_quadratic_model
from adamqlr.lens.kfac_heuristics import (
    RHO_HIGH,
    RHO_LOW,
    audit_kfac_run,
    cross_term_trace,
    damping_eigenvalues,
    dense_kfac_direction,
    kronecker_factors_exact,
    lm_damping,
    pi_adjustment,
    solve_two_coefficients,
)
from adamqlr.losses import CrossEntropyLoss, SquaredErrorLoss
from adamqlr.testing import flat_params, ggn_gram

DT = torch.float64
TOL = 1e-10


# ------------------------------------------------------------------------------- the problem
def tiny_net(seed: int = 0, out: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, out)).to(DT)


def batch(loss, n: int = 6, seed: int = 1, out: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=DT)
    if isinstance(loss, CrossEntropyLoss):
        y = torch.randint(0, out, (n,), generator=g)
    else:
        y = torch.randn(n, out, generator=g, dtype=DT)
    return x, y


LOSSES = [CrossEntropyLoss(), SquaredErrorLoss()]
LOSS_IDS = ["cross_entropy", "squared_error"]


# --------------------------------------------------------------------------------- the oracles
def flat_of(model) -> torch.Tensor:
    return flat_params(model).vector


def unflatten(model, vec: torch.Tensor) -> dict[str, torch.Tensor]:
    return flat_params(model).unflatten(vec)


def flat_dict(model, named) -> torch.Tensor:
    return flat_params(model).flatten({n: t.detach() for n, t in named.items()})


def mean_loss(model, loss, vec, x, y) -> torch.Tensor:
    return loss.value(functional_call(model, unflatten(model, vec), (x,)), y)


def dense_gradient(model, loss, vec, x, y) -> torch.Tensor:
    """The gradient of the mean loss at the flat parameters ``vec`` (:mod:`adamqlr.testing`)."""
    return testing.dense_gradient(model, x, y, loss, at=vec)


def dense_ggn(model, loss, vec, x, y) -> torch.Tensor:
    """``J^T H J`` for the mean loss at ``vec``, the batch's outputs stacked into one vector."""
    return testing.dense_ggn(model, x, y, loss, at=vec)


def layer_slices(model) -> dict[str, slice]:
    """Each dense layer's slice of the flat parameters (weight then bias, contiguous)."""
    out, i = {}, 0
    for index, module in enumerate(model):
        if isinstance(module, nn.Linear):
            k = module.weight.numel() + module.bias.numel()
            out[str(index)] = slice(i, i + k)
            i += k
    return out


def kron_to_flat(layer: nn.Linear) -> list[int]:
    """Row of ``kron(A, G)`` (columns of ``[W, b]`` stacked) of each flat parameter of the layer.

    The flat order is ``W`` row by row, then ``b``; ``W[o, i]`` is entry ``i * out + o`` of the
    column-stacked ``[W, b]`` and ``b[o]`` entry ``in * out + o``.
    """
    n_out, n_in = layer.weight.shape
    return [i * n_out + o for o in range(n_out) for i in range(n_in)] + [
        n_in * n_out + o for o in range(n_out)
    ]


def kron_block(layer: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    perm = kron_to_flat(layer)
    return torch.kron(a, g)[perm][:, perm]


def dense_factors(model, loss, vec, x, y) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``A`` from an explicit forward pass; ``G`` from the bias-bias block of the dense GGN."""
    ggn = dense_ggn(model, loss, vec, x, y)
    params = unflatten(model, vec)
    out, h, start = {}, x, 0
    for index, module in enumerate(model):
        if isinstance(module, nn.Linear):
            rows = torch.cat([h, torch.ones(h.shape[0], 1, dtype=DT)], dim=1)
            w, b = params[f"{index}.weight"], params[f"{index}.bias"]
            start_b = start + w.numel()
            bias = slice(start_b, start_b + b.numel())
            out[str(index)] = (rows.T @ rows / h.shape[0], ggn[bias, bias])
            start = start_b + b.numel()
            h = h @ w.T + b
        else:
            h = module(h)
    return out


def pi_oracle(a: torch.Tensor, g: torch.Tensor) -> float:
    return math.sqrt((float(torch.trace(a)) / a.shape[0]) / (float(torch.trace(g)) / g.shape[0]))


def damped_oracle(a, g, lam):
    pi = pi_oracle(a, g)
    return (
        a + pi * math.sqrt(lam) * torch.eye(a.shape[0], dtype=DT),
        g + math.sqrt(lam) / pi * torch.eye(g.shape[0], dtype=DT),
    )


def kfac_direction_oracle(model, factors, gvec, lam, *, pi_adjusted=True) -> torch.Tensor:
    """``Delta`` by a dense solve with each layer's permuted, damped Kronecker product."""
    out = torch.zeros_like(gvec)
    for name, sl in layer_slices(model).items():
        a, g = factors[name]
        if pi_adjusted:
            a_d, g_d = damped_oracle(a, g, lam)
        else:
            root = math.sqrt(lam)
            a_d = a + root * torch.eye(a.shape[0], dtype=DT)
            g_d = g + root * torch.eye(g.shape[0], dtype=DT)
        out[sl] = torch.linalg.solve(kron_block(model[int(name)], a_d, g_d), gvec[sl])
    return out


def two_by_two_oracle(a2, d2, b2, lam):
    """``w = -(A + lambda D)^{-1} b`` by numpy (``w_2 = 0`` when the second vector is zero)."""
    m = np.asarray(a2) + lam * np.asarray(d2)
    b2 = np.asarray(b2)
    if np.asarray(d2)[1, 1] == 0.0:
        return np.array([-b2[0] / m[0, 0], 0.0])
    return np.linalg.solve(m, -b2)


def lm_oracle(lam, rho, decay=0.9, floor=1e-8):
    if math.isnan(rho):
        rho = -100.0
    if rho > 0.75:
        lam = decay * lam
    elif rho < 0.25:
        lam = lam / decay
    return max(floor, lam)


def rel(x, y) -> float:
    x, y = (torch.as_tensor(t, dtype=DT).detach() for t in (x, y))
    return float((x - y).norm() / y.norm().clamp_min(1e-300))


# ------------------------------------------------------------------------ the Kronecker factors
@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_one_example_kronecker_block_is_the_exact_ggn_block(loss):
    """One example: ``kron(A, G)`` is exactly the GGN's layer block (checks the oracle)."""
    model = tiny_net()
    x, y = batch(loss, n=1)
    vec = flat_of(model)
    ggn = dense_ggn(model, loss, vec, x, y)
    factors = dense_factors(model, loss, vec, x, y)
    for name, sl in layer_slices(model).items():
        a, g = factors[name]
        layer = model[int(name)]
        assert rel(kron_block(layer, a, g), ggn[sl, sl]) < TOL
        # the order of the Kronecker product matters: kron(G, A) is not the block
        perm = kron_to_flat(layer)
        wrong = torch.kron(g, a)
        assert wrong.shape == ggn[sl, sl].shape
        assert rel(wrong[perm][:, perm], ggn[sl, sl]) > 1e-2


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_exact_factors_match_the_dense_oracle(loss):
    model = tiny_net()
    x, y = batch(loss)
    vec = flat_of(model)
    oracle = dense_factors(model, loss, vec, x, y)
    lens = kronecker_factors_exact(model, x, y, loss)
    opt = KFAC(copy.deepcopy(model), loss, "unadaptive", ema_decay=0.0, estimation="exact")
    opt.step(x, y)
    library = {b.name: opt.factors(b) for b in opt.blocks}
    assert list(lens) == list(oracle) == list(library)
    for name, (a, g) in oracle.items():
        assert rel(lens[name][0], a) < TOL and rel(lens[name][1], g) < TOL
        assert rel(library[name]["A"], a) < TOL and rel(library[name]["G"], g) < TOL
    # another batch gives other factors, so the comparison above can fail
    other = dense_factors(model, loss, vec, *batch(loss, seed=9))
    assert all(rel(lens[n][0], other[n][0]) > 1e-3 for n in oracle)
    assert rel(lens["0"][1], other["0"][1]) > 1e-3


# ---------------------------------------------------------------------------------- the damping
def random_factors(seed=0, da=4, dg=3, scale_g=7.0):
    g = torch.Generator().manual_seed(seed)
    ma = torch.randn(da, da, generator=g, dtype=DT)
    mg = torch.randn(dg, dg, generator=g, dtype=DT)
    return ma @ ma.T, scale_g * mg @ mg.T


@pytest.mark.parametrize("lam", [1e-3, 0.3, 4.0])
def test_pi_adjusted_damping_matches_explicit_kronecker_algebra(lam):
    a, g = random_factors()
    pi = pi_oracle(a, g)
    assert abs(pi_adjustment(a, g) - pi) < TOL * pi
    a_d, g_d = damped_oracle(a, g, lam)
    lib_a, lib_g = pi_damped_factors(a, g, lam)
    assert rel(lib_a, a_d) < TOL and rel(lib_g, g_d) < TOL
    # what factored damping adds beyond lambda I, by explicit Kronecker products
    eye = torch.eye(a.shape[0] * g.shape[0], dtype=DT)
    extra = torch.kron(a_d, g_d) - torch.kron(a, g) - lam * eye
    assert abs(cross_term_trace(a, g, lam, pi) - float(torch.trace(extra))) < TOL * float(
        torch.trace(extra)
    )
    # pi minimises that trace (d tr E / d pi = 0 at pi): a different split adds more
    assert cross_term_trace(a, g, lam, 1.3 * pi) > cross_term_trace(a, g, lam, pi)
    assert cross_term_trace(a, g, lam, pi / 1.3) > cross_term_trace(a, g, lam, pi)
    # the eigenvalues, from dense eigendecompositions of the two Kronecker products
    exact, factored = damping_eigenvalues(a, g, lam, pi)
    dense_exact = torch.linalg.eigvalsh(torch.kron(a, g) + lam * eye).numpy()
    dense_factored = torch.linalg.eigvalsh(torch.kron(a_d, g_d)).numpy()
    np.testing.assert_allclose(np.sort(exact), dense_exact, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(np.sort(factored), dense_factored, rtol=TOL, atol=TOL)
    assert np.all(factored >= exact - TOL)  # pairwise, in the documented common order
    # pi follows the factors' scales: rescaling G changes it
    assert abs(pi_adjustment(a, 4.0 * g) - pi / 2.0) < TOL * pi
    with pytest.raises(ValueError, match="positive traces"):
        pi_adjustment(torch.zeros_like(a), g)


@pytest.mark.parametrize("lam", [0.05, 2.0])
def test_kfac_direction_is_the_dense_kronecker_solve(lam):
    loss = CrossEntropyLoss()
    model = tiny_net()
    x, y = batch(loss)
    vec = flat_of(model)
    factors = dense_factors(model, loss, vec, x, y)
    gvec = dense_gradient(model, loss, vec, x, y)
    oracle = kfac_direction_oracle(model, factors, gvec, lam)
    lens = dense_kfac_direction(model, factors, unflatten(model, gvec), lam)
    assert rel(flat_dict(model, lens), oracle) < TOL
    # the library: one unadaptive step with lr 1 and no momentum moves the parameters by -Delta
    lib_model = copy.deepcopy(model)
    opt = KFAC(lib_model, loss, "unadaptive", lr=1.0, momentum=0.0, initial_damping=lam,
               ema_decay=0.0, estimation="exact")  # fmt: skip
    opt.step(x, y)
    assert rel(vec - flat_of(lib_model), oracle) < TOL
    # without the pi-adjustment (an even split of the damping) the direction differs
    even = kfac_direction_oracle(model, factors, gvec, lam, pi_adjusted=False)
    assert rel(even, oracle) > 1e-4


# ------------------------------------------------------------------------- the 2-D quadratic model
def test_two_coefficients_match_a_numpy_solve_and_the_full_damped_model():
    rng = np.random.default_rng(0)
    c = rng.standard_normal((7, 7))
    c = c @ c.T
    v = rng.standard_normal((7, 2))
    g = rng.standard_normal(7)
    lam = 0.2
    a2, d2, b2 = v.T @ c @ v, v.T @ v, v.T @ g
    w = two_by_two_oracle(a2, d2, b2, lam)
    lens = solve_two_coefficients(a2, d2, b2, lam)
    library = solve_quadratic_model(torch.tensor(a2), torch.tensor(d2), torch.tensor(b2), lam)
    np.testing.assert_allclose([lens.w1, lens.w2], w, rtol=TOL)
    np.testing.assert_allclose(library.coefficients, w, rtol=TOL)

    def q(w_, lam_):  # the quadratic model in the full space, restricted to the plane
        step = v @ w_
        return 0.5 * step @ (c + lam_ * np.eye(7)) @ step + g @ step

    assert lens.quad_damped == pytest.approx(q(w, lam), rel=TOL)
    assert lens.quad_undamped == pytest.approx(q(w, 0.0), rel=TOL)
    assert library.quad_change == pytest.approx(q(w, 0.0), rel=TOL)
    assert library.quad_change_damped == pytest.approx(q(w, lam), rel=TOL)
    # the undamped change differs from the damped one by lambda ||delta||^2 / 2
    step = v @ w
    assert lens.quad_damped - lens.quad_undamped == pytest.approx(0.5 * lam * step @ step, rel=1e-9)
    # the line minimum along the first vector alone
    d = v[:, 0]
    assert lens.w1_line == pytest.approx(-(g @ d) / (d @ c @ d + lam * d @ d), rel=TOL)
    assert lens.quad_line == pytest.approx(q(np.array([lens.w1_line, 0.0]), lam), rel=TOL)
    # any other point of the plane is worse for the damped model
    for delta in rng.standard_normal((20, 2)) * 1e-3:
        assert q(w + delta, lam) > q(w, lam)
    # another damping gives another solution
    assert abs(solve_two_coefficients(a2, d2, b2, 2 * lam).w1 - lens.w1) > 1e-4 * abs(lens.w1)
    # the first step: a zero second vector leaves a one-dimensional problem
    v0 = v.copy()
    v0[:, 1] = 0.0
    first = solve_two_coefficients(v0.T @ c @ v0, v0.T @ v0, v0.T @ g, lam)
    assert (first.w1, first.w2) == pytest.approx(tuple(two_by_two_oracle(
        v0.T @ c @ v0, v0.T @ v0, v0.T @ g, lam)), rel=TOL)  # fmt: skip
    assert first.w2 == 0.0


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_ggn_gram_matches_the_dense_ggn(loss):
    model = tiny_net()
    x, y = batch(loss)
    vec = flat_of(model)
    ggn = dense_ggn(model, loss, vec, x, y)
    g = torch.Generator().manual_seed(3)
    vs = [torch.randn(vec.shape, generator=g, dtype=DT) for _ in range(2)]
    v = torch.stack(vs, 1)
    assert rel(ggn_gram(model, x, y, loss, vs), v.T @ ggn @ v) < TOL


# ------------------------------------------------------------------------ the damping rule
@pytest.mark.parametrize(
    "rho", [-100.0, -0.5, 0.0, 0.2499, 0.25, 0.5, 0.75, 0.7501, 1.0, 3.0, math.nan]
)
def test_damping_rule_matches_the_written_out_rule(rho):
    lam = 0.7
    expected = lm_oracle(lam, rho)
    assert lm_damping(lam, rho) == pytest.approx(expected, rel=1e-15)
    library = LevenbergMarquardt(decrease=0.9, increase=1 / 0.9, lower=1e-8)
    assert library.update(lam, -100.0 if math.isnan(rho) else rho) == pytest.approx(
        expected, rel=1e-15
    )
    assert (RHO_LOW, RHO_HIGH) == (library.low, library.high) == (0.25, 0.75)


def test_damping_rule_bounds():
    assert lm_damping(1e-8, 1.0) == 1e-8  # the floor
    assert lm_damping(1.0, 0.0, bounds=(1e-8, 1.05)) == 1.05  # an upper bound clips the increase
    assert lm_damping(2.0, 1.0, decay=0.5) == 1.0


# --------------------------------------------------------------- whole adaptive runs, step by step
def adaptive_oracle(model, loss, batches, *, lam0=1.0, decay=0.95):
    """Adaptive K-FAC recomputed densely; one dict per step."""
    vec = flat_of(model)
    velocity = torch.zeros_like(vec)
    lam = lam0
    sums: dict[str, list[torch.Tensor]] = {}
    weight = 0.0
    rows = []
    for x, y in batches:
        f0 = float(mean_loss(model, loss, vec, x, y))
        gvec = dense_gradient(model, loss, vec, x, y)
        ggn = dense_ggn(model, loss, vec, x, y)
        new = dense_factors(model, loss, vec, x, y)
        weight = decay * weight + 1.0
        sums = {
            n: [decay * s + f for s, f in zip(sums[n], new[n], strict=True)] if n in sums
            else [f.clone() for f in new[n]]
            for n in new
        }  # fmt: skip
        ema = {n: (s[0] / weight, s[1] / weight) for n, s in sums.items()}
        direction = kfac_direction_oracle(model, ema, gvec, lam)
        v = torch.stack([direction, velocity], 1)
        a2, d2, b2 = (v.T @ ggn @ v).numpy(), (v.T @ v).numpy(), (v.T @ gvec).numpy()
        w = two_by_two_oracle(a2, d2, b2, lam)
        update = v @ torch.tensor(w, dtype=DT)
        new_vec = vec + update
        f1 = float(mean_loss(model, loss, new_vec, x, y))
        q0 = float(0.5 * update @ ggn @ update + gvec @ update)
        q_damped = q0 + 0.5 * lam * float(update @ update)
        rho = (f1 - f0) / q0
        rows.append(dict(lr=-w[0], momentum=w[1], rho=rho, rho_damped=(f1 - f0) / q_damped,
                         quad_change=q0, damping_used=lam, damping=lm_oracle(lam, rho),
                         params=new_vec, factors=ema, loss=f0, trial_loss=f1))  # fmt: skip
        lam = lm_oracle(lam, rho)
        velocity = update
        vec = new_vec
    return rows


def batches_for(loss, steps, n=8):
    return [batch(loss, n=n, seed=10 + s) for s in range(steps)]


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_adaptive_kfac_matches_the_dense_oracle_step_by_step(loss):
    steps = 5
    model = tiny_net(seed=2)
    data = batches_for(loss, steps)
    oracle = adaptive_oracle(model, loss, data, lam0=1.0)
    lib_model = copy.deepcopy(model)
    opt = KFAC(lib_model, loss, "adaptive", initial_damping=1.0, estimation="exact")
    rhos_differ = 0
    for it, ((x, y), row) in enumerate(zip(data, oracle, strict=True)):
        stats = opt.step(x, y)
        assert stats.accepted
        for key in ("lr", "momentum", "rho", "quad_change", "damping_used", "damping", "loss",
                    "trial_loss"):  # fmt: skip
            got, want = getattr(stats, key), row[key]
            assert abs(got - want) <= TOL * max(abs(want), 1e-3), (it, key, got, want)
        assert rel(flat_of(lib_model), row["params"]) < TOL
        # the curvature moving average: the library's factors are the normalised EMA
        for b in opt.blocks:
            a, g = row["factors"][b.name]
            assert rel(opt.factors(b)["A"], a) < TOL and rel(opt.factors(b)["G"], g) < TOL
        if it == 0:
            assert stats.momentum == 0.0
        else:
            assert stats.momentum != 0.0
        rhos_differ += abs(row["rho_damped"] - stats.rho) > 1e-6 * abs(stats.rho)
    # rho uses the undamped model: the damped convention gives other numbers (so it is tested)
    assert rhos_differ == steps
    # the moving average is not the last batch's factors
    last = dense_factors(lib_model, loss, flat_of(model), *data[-1])
    assert any(rel(opt.factors(b)["G"], last[b.name][1]) > 1e-3 for b in opt.blocks)


def test_damping_in_rho_switches_to_the_damped_model_change():
    loss = CrossEntropyLoss()
    model = tiny_net(seed=2)
    data = batches_for(loss, 2)
    oracle = adaptive_oracle(model, loss, data[:1])
    opt = KFAC(copy.deepcopy(model), loss, "adaptive", estimation="exact", damping_in_rho=True)
    stats = opt.step(*data[0])
    assert stats.rho == pytest.approx(oracle[0]["rho_damped"], rel=TOL)
    assert stats.rho != pytest.approx(oracle[0]["rho"], rel=1e-6)


def test_audit_trace_matches_the_dense_oracle():
    loss = CrossEntropyLoss()
    steps = 4
    model = tiny_net(seed=3)
    data = batches_for(loss, steps)
    oracle = adaptive_oracle(model, loss, data, lam0=1.0)
    trace, snaps, _ = audit_kfac_run(
        copy.deepcopy(model), loss, iter(data), steps, estimation="exact", snapshot_at=(2,),
        initial_damping=1.0,
    )  # fmt: skip
    assert len(trace) == steps
    for it, row in enumerate(oracle):
        t = trace.iloc[it]
        assert t["w1"] == pytest.approx(-row["lr"], rel=TOL)
        assert t["w2"] == pytest.approx(row["momentum"], rel=TOL, abs=TOL)
        assert t["rho_undamped"] == pytest.approx(row["rho"], rel=1e-9)
        assert t["rho_damped"] == pytest.approx(row["rho_damped"], rel=1e-9)
        assert t["rho"] == pytest.approx(row["rho"], rel=1e-9)  # the library's, in the same row
        assert t["damping_rule"] == pytest.approx(row["damping"], rel=1e-15)
        assert t["damping"] == pytest.approx(row["damping"], rel=1e-15)
        assert t["update_error"] < TOL and t["ema_error"] < TOL
    snap = snaps[2]
    assert snap.solution.w1 == pytest.approx(-oracle[1]["lr"], rel=TOL)
    assert snap.damping == oracle[1]["damping_used"]
