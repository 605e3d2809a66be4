"""``d^T G d`` and ``d^T H d`` against dense matrices and curvlinops 3.0.1, in float64."""

from __future__ import annotations

import pytest
import torch
from _models import (
    ACTIVATIONS,
    DTYPE,
    ConvBN,
    classification,
    curvlinops_quadratic,
    mlp,
    oracle_ce,
    oracle_se,
    random_direction,
    regression,
    sequence,
)
from torch import nn

from adamqlr.curvature import (
    CURVATURES,
    ggn_quadratic,
    hessian_quadratic,
    loss_at,
    quadratic_form,
)
from adamqlr.losses import CrossEntropyLoss, SquaredErrorLoss
from adamqlr.testing import dense_ggn, dense_hessian, named_params, quadratic

TOL = 1e-10


def _problem(name: str):
    """Return ``(model, x, y, our_loss, oracle_value, curvlinops_loss_name, kwargs)``."""
    if name == "mlp-ce":
        model = mlp((5, 4, 3), nn.Tanh)
        x, y = classification(model)
        return model, x, y, CrossEntropyLoss(), oracle_ce(), "cross_entropy", {}
    if name == "mlp-se":
        model = mlp((5, 4, 3), nn.Tanh, seed=3)
        x, y = regression(out_dim=3)
        return model, x, y, SquaredErrorLoss(), oracle_se, "squared_error", {}
    if name == "mlp-se-relu-4out":
        model = mlp((5, 6, 4), nn.ReLU, seed=4)
        x, y = regression(out_dim=4, seed=5)
        return model, x, y, SquaredErrorLoss(), oracle_se, "squared_error", {}
    if name == "convbn-ce":
        model = ConvBN()
        x, y = classification(model, n=5, in_shape=(2, 5, 5))
        return model, x, y, CrossEntropyLoss(), oracle_ce(), "cross_entropy", {}
    if name == "tokens-ce-ignore":
        model = mlp((5, 4, 3), nn.GELU, seed=6)
        x, y = sequence(ignore_index=2)
        kw = {"ignore_index": 2}
        return model, x, y, CrossEntropyLoss(ignore_index=2), oracle_ce(2), "cross_entropy", kw
    raise KeyError(name)


PROBLEMS = ["mlp-ce", "mlp-se", "mlp-se-relu-4out", "convbn-ce", "tokens-ce-ignore"]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOL * max(1.0, abs(b))


@pytest.mark.parametrize("name", PROBLEMS)
def test_fisher_equals_dense_ggn_and_curvlinops(name):
    model, x, y, loss, value, cl_loss, kw = _problem(name)
    model.train()
    d = random_direction(model)
    ours = float(ggn_quadratic(model, named_params(model), d, x, y, loss))
    dense = quadratic(dense_ggn(model, x, y, value), d)
    oracle = curvlinops_quadratic("fisher", model, x, y, cl_loss, d, **kw)
    assert ours > 0
    assert _close(ours, dense), (ours, dense)
    assert _close(ours, oracle), (ours, oracle)


@pytest.mark.parametrize("name", PROBLEMS)
def test_hessian_equals_dense_hessian(name):
    model, x, y, loss, value, *_ = _problem(name)
    model.train()
    d = random_direction(model)
    ours = float(hessian_quadratic(model, named_params(model), d, x, y, loss))
    dense = quadratic(dense_hessian(model, x, y, value), d)
    assert _close(ours, dense), (ours, dense)


# torch 2.13's vmap gets the second derivative through a train-mode batch norm wrong (the affine
# weight's cross terms with earlier layers; double backward without vmap and finite differences
# agree with each other and with us). curvlinops' Hessian and torch.func.hessian both vmap, so on
# the batch-norm net they are checked to be wrong, strictly: if torch fixes it, this fails and the
# marker should go.
_VMAP_BN = pytest.mark.xfail(
    strict=True, reason="torch 2.13 vmap: wrong second derivative through train-mode batch norm"
)
_WITH_TRANSFORM_ORACLES = [
    pytest.param(n, marks=_VMAP_BN) if n.startswith("convbn") else n for n in PROBLEMS
]


@pytest.mark.parametrize("name", _WITH_TRANSFORM_ORACLES)
def test_hessian_equals_curvlinops_and_torch_func_hessian(name):
    model, x, y, loss, value, cl_loss, kw = _problem(name)
    model.train()
    d = random_direction(model)
    ours = float(hessian_quadratic(model, named_params(model), d, x, y, loss))
    oracle = curvlinops_quadratic("hessian", model, x, y, cl_loss, d, **kw)
    transform = quadratic(dense_hessian(model, x, y, value, method="func"), d)
    assert _close(ours, oracle), (ours, oracle)
    assert _close(ours, transform), (ours, transform)


def test_batch_norm_hessian_agrees_with_finite_differences():
    """The third, transform-free witness for the batch-norm case above."""
    model, x, y, loss, value, *_ = _problem("convbn-ce")
    d = random_direction(model)
    p = named_params(model)
    ours = float(hessian_quadratic(model, p, d, x, y, loss))

    def f(t: float) -> float:
        return float(loss_at(model, {n: p[n] + t * d[n] for n in p}, x, y, loss))

    h = 1e-4
    fd = (f(h) - 2 * f(0.0) + f(-h)) / h**2
    assert abs(ours - fd) <= 1e-5 * abs(ours)


def test_hessian_differs_from_ggn_on_a_nonlinear_net():
    """Guards the test above against comparing the GGN with itself."""
    model, x, y, loss, *_ = _problem("mlp-ce")
    d = random_direction(model)
    p = named_params(model)
    g = float(ggn_quadratic(model, p, d, x, y, loss))
    h = float(hessian_quadratic(model, p, d, x, y, loss))
    assert abs(g - h) > 1e-3 * abs(g)


@pytest.mark.parametrize("loss_name", ["cross_entropy", "squared_error"])
def test_fisher_equals_hessian_for_linear_models(loss_name):
    torch.manual_seed(0)
    model = nn.Linear(5, 3).to(DTYPE)
    if loss_name == "cross_entropy":
        x, y = classification(model)
        loss = CrossEntropyLoss()
    else:
        x, y = regression(out_dim=3)
        loss = SquaredErrorLoss()
    p = named_params(model)
    for seed in range(3):
        d = random_direction(model, seed)
        g = float(quadratic_form("fisher", model, p, d, x, y, loss))
        h = float(quadratic_form("hessian", model, p, d, x, y, loss))
        assert abs(g - h) <= 1e-12 * abs(g)


def test_quadratic_form_is_evaluated_at_the_given_parameters():
    model, x, y, loss, value, *_ = _problem("mlp-ce")
    d = random_direction(model)
    moved = {n: p + 0.3 for n, p in named_params(model).items()}
    ours = float(ggn_quadratic(model, moved, d, x, y, loss))
    shifted = mlp((5, 4, 3), nn.Tanh)
    with torch.no_grad():
        for n, p in shifted.named_parameters():
            p.copy_(moved[n])
    assert _close(ours, quadratic(dense_ggn(shifted, x, y, value), d))
    assert not _close(ours, float(ggn_quadratic(model, named_params(model), d, x, y, loss)))


def test_partial_parameters_use_the_module_values_for_the_rest():
    model, x, y, loss, value, *_ = _problem("mlp-ce")
    full = random_direction(model)
    only_last = {n: (t if n.startswith("2.") else torch.zeros_like(t)) for n, t in full.items()}
    subset = {n: t for n, t in full.items() if n.startswith("2.")}
    params = {n: p for n, p in named_params(model).items() if n.startswith("2.")}
    for kind in CURVATURES:
        a = float(quadratic_form(kind, model, params, subset, x, y, loss))
        b = float(quadratic_form(kind, model, named_params(model), only_last, x, y, loss))
        assert _close(a, b)


def test_curvature_and_loss_at_leave_batch_norm_buffers_untouched():
    model, x, y, loss, *_ = _problem("convbn-ce")
    model.train()
    before = {n: b.clone() for n, b in model.named_buffers()}
    d = random_direction(model)
    p = named_params(model)
    for kind in CURVATURES:
        quadratic_form(kind, model, p, d, x, y, loss)
    loss_at(model, p, x, y, loss)
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    assert int(model.bn1.num_batches_tracked) == 0


def test_loss_at_matches_a_forward_pass_and_records_no_graph():
    model, x, y, loss, value, *_ = _problem("convbn-ce")
    model.train()
    moved = {n: p * 0.9 for n, p in named_params(model).items()}
    out = loss_at(model, moved, x, y, loss)
    assert not out.requires_grad
    ref = ConvBN()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(moved[n])
    assert torch.equal(out, value(ref(x), y))


def test_unknown_curvature_is_refused():
    model, x, y, loss, *_ = _problem("mlp-ce")
    with pytest.raises(ValueError, match="'kfac'"):
        quadratic_form("kfac", model, named_params(model), random_direction(model), x, y, loss)


# ------------------------------------------------------------------- the layer-wise JVP path
from adamqlr.curvature import layerwise_jvp, layerwise_plan  # noqa: E402


def _func_jvp(model, params, direction, x):
    names = list(params)

    def f(*values):
        return torch.func.functional_call(model, dict(zip(names, values, strict=True)), (x,))

    with torch.no_grad():
        return torch.func.jvp(
            f, tuple(params[n] for n in names), tuple(direction[n] for n in names)
        )


def _assert_jvp_matches(model, x, params=None, direction=None, seed=0):
    params = named_params(model) if params is None else params
    direction = random_direction(model, seed) if direction is None else direction
    plan = layerwise_plan(model)
    assert plan is not None
    rng = torch.get_rng_state()
    z, u = layerwise_jvp(plan, params, direction, x)
    torch.set_rng_state(rng)
    z_ref, u_ref = _func_jvp(model, params, direction, x)
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u, u_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: repr(a))
def test_layerwise_jvp_equals_torch_func_for_each_activation(act):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), act, nn.Linear(7, 6), act, nn.Linear(6, 3)).to(DTYPE)
    x = torch.randn(9, 5, dtype=DTYPE)
    x[0, :] = 0.0  # pre-activations equal to the bias: no special case hides here
    _assert_jvp_matches(model, x)


def test_layerwise_jvp_with_a_layer_used_twice():
    torch.manual_seed(4)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), shared, nn.Tanh(), shared, nn.Linear(4, 2))
    model = model.to(DTYPE)
    _assert_jvp_matches(model, torch.randn(5, 3, dtype=DTYPE))


def test_layerwise_jvp_relu_kink_follows_autograd():
    """Pre-activations exactly 0: ReLU's derivative there is autograd's (0)."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(DTYPE)
    with torch.no_grad():
        model[0].bias.zero_()
    _assert_jvp_matches(model, torch.zeros(5, 3, dtype=DTYPE))


def test_layerwise_jvp_nested_flatten_no_bias_tokens_and_the_task_mlp():
    from adamqlr.tasks._common import MLP

    torch.manual_seed(1)
    nested = nn.Sequential(
        nn.Flatten(),
        nn.Sequential(nn.Linear(12, 5, bias=False), nn.Tanh()),
        nn.Identity(),
        nn.Linear(5, 4),
        nn.Unflatten(1, (2, 2)),
        nn.Flatten(),
    ).to(DTYPE)
    _assert_jvp_matches(nested, torch.randn(6, 3, 4, dtype=DTYPE))
    tokens = mlp((5, 4, 3), nn.GELU)
    _assert_jvp_matches(tokens, sequence()[0])  # (N, T, F) inputs
    task_mlp = MLP((6, 8, 3), torch.Generator().manual_seed(0)).to(DTYPE)
    assert layerwise_plan(task_mlp) is not None
    with torch.no_grad():
        for p in task_mlp.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the task's zero biases made non-trivial
    _assert_jvp_matches(task_mlp, torch.randn(5, 6, dtype=DTYPE))


def test_layerwise_jvp_with_dropout_replays_the_masks():
    torch.manual_seed(2)
    model = (
        nn.Sequential(
            nn.Linear(5, 16),
            nn.Tanh(),
            nn.Dropout(0.4),
            nn.Linear(16, 8),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(8, 3),
        )
        .to(DTYPE)
        .train()
    )
    x = torch.randn(7, 5, dtype=DTYPE)
    _assert_jvp_matches(model, x)
    rng = torch.get_rng_state()
    plain = model(x)  # the masks of an ordinary forward from the same random state
    torch.set_rng_state(rng)
    z, _ = layerwise_jvp(layerwise_plan(model), named_params(model), random_direction(model), x)
    assert torch.equal(z, plain.detach())
    model.eval()
    _assert_jvp_matches(model, x)


def test_layerwise_jvp_with_partial_parameters_and_directions():
    model = mlp((5, 4, 4, 3), nn.Tanh)
    x = torch.randn(6, 5, dtype=DTYPE)
    full = random_direction(model, 3)
    # only the last layer: tangents before it are never formed, and must be zero
    last = {n: t for n, t in full.items() if n.startswith("4.")}
    params = {n: p for n, p in named_params(model).items() if n.startswith("4.")}
    plan = layerwise_plan(model)
    z, u = layerwise_jvp(plan, params, last, x)
    assert torch.equal(z, model(x).detach())
    zero_elsewhere = {
        n: (t if n.startswith("4.") else torch.zeros_like(t)) for n, t in full.items()
    }
    _, u_ref = _func_jvp(model, named_params(model), zero_elsewhere, x)
    torch.testing.assert_close(u, u_ref, rtol=1e-12, atol=1e-12)
    # only a bias in the middle
    only_bias = {"2.bias": full["2.bias"]}
    z, u = layerwise_jvp(plan, {"2.bias": model[2].bias.detach()}, only_bias, x)
    zero_but_bias = {n: (t if n == "2.bias" else torch.zeros_like(t)) for n, t in full.items()}
    torch.testing.assert_close(
        u, _func_jvp(model, named_params(model), zero_but_bias, x)[1], rtol=1e-12, atol=1e-12
    )
    # no direction at all: zero tangent
    z, u = layerwise_jvp(plan, {}, {}, x)
    assert torch.equal(u, torch.zeros_like(z))


@pytest.mark.parametrize("name", ["mlp-ce", "mlp-se", "mlp-se-relu-4out", "tokens-ce-ignore"])
def test_ggn_methods_agree(name):
    model, x, y, loss, *_ = _problem(name)
    d = random_direction(model)
    p = named_params(model)
    fast = float(ggn_quadratic(model, p, d, x, y, loss, method="layerwise"))
    slow = float(ggn_quadratic(model, p, d, x, y, loss, method="func"))
    dual = float(ggn_quadratic(model, p, d, x, y, loss, method="forward_ad"))
    assert abs(fast - slow) <= 1e-12 * abs(slow)
    assert abs(dual - slow) <= 1e-12 * abs(slow)
    assert float(ggn_quadratic(model, p, d, x, y, loss)) == fast  # "auto" takes the fast path


class _CustomForward(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


def _rejected_models():
    hooked = mlp()
    hooked[1].register_forward_hook(lambda m, i, o: o)
    pre_hooked = mlp()
    pre_hooked.register_forward_pre_hook(lambda m, i: None)
    param = mlp()
    torch.nn.utils.parametrize.register_parametrization(param[0], "weight", nn.Identity())
    patched = mlp()
    patched.forward = lambda x: x  # type: ignore[method-assign]
    return {
        "instance-forward": patched,
        "conv": nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()),
        "batchnorm": nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)),
        "dropout2d": nn.Sequential(nn.Linear(3, 3), nn.Dropout1d(0.5)),
        "softmax": nn.Sequential(nn.Linear(3, 3), nn.Softmax(-1)),
        "custom-forward": _CustomForward(nn.Linear(3, 3)),
        "forward-hook": hooked,
        "pre-hook": pre_hooked,
        "parametrization": param,
        "convbn": ConvBN(),
        "prelu": nn.Sequential(nn.Linear(3, 3), nn.PReLU()),
    }


@pytest.mark.parametrize("kind", list(_rejected_models()))
def test_layerwise_plan_refuses_what_it_does_not_cover(kind):
    assert layerwise_plan(_rejected_models()[kind]) is None


def test_ggn_method_argument():
    model, x, y, loss, *_ = _problem("convbn-ce")
    p, d = named_params(model), random_direction(model)
    with pytest.raises(ValueError, match="does not cover"):
        ggn_quadratic(model, p, d, x, y, loss, method="layerwise")
    with pytest.raises(ValueError, match="'fast'"):
        ggn_quadratic(model, p, d, x, y, loss, method="fast")
    auto = float(ggn_quadratic(model, p, d, x, y, loss))  # falls back to forward-mode autograd
    assert auto == float(ggn_quadratic(model, p, d, x, y, loss, method="forward_ad"))
    func = float(ggn_quadratic(model, p, d, x, y, loss, method="func"))
    assert abs(auto - func) <= 1e-12 * abs(func)
    before = {n: b.clone() for n, b in model.named_buffers()}
    ggn_quadratic(model, p, d, x, y, loss, method="forward_ad")
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())
    # no parameter with a direction reaches the output: zero, not an error
    none = float(ggn_quadratic(model, {}, {}, x, y, loss, method="forward_ad"))
    assert none == 0.0


def test_layerwise_forward_is_the_module_forward_and_its_tape_gives_the_jvp():
    from adamqlr.curvature import layerwise_forward, layerwise_tangent

    torch.manual_seed(5)
    model = (
        nn.Sequential(
            nn.Flatten(),
            nn.Linear(6, 8),
            nn.GELU(),
            nn.Dropout(0.3),
            nn.Linear(8, 8),
            nn.Tanh(),
            nn.Dropout(0.5),
            nn.Linear(8, 3),
        )
        .to(DTYPE)
        .train()
    )
    x = torch.randn(7, 2, 3, dtype=DTYPE)
    plan = layerwise_plan(model)
    rng = torch.get_rng_state()
    z, tape = layerwise_forward(plan, x)
    after = torch.get_rng_state()
    torch.set_rng_state(rng)
    ref = model(x)
    assert torch.equal(z, ref) and torch.equal(torch.get_rng_state(), after)
    # the same graph: the same gradient
    g = torch.autograd.grad(z.square().sum(), list(model.parameters()))
    g_ref = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(g, g_ref, strict=True))
    d = random_direction(model)
    u = layerwise_tangent(plan, tape, named_params(model), d)
    torch.set_rng_state(rng)
    _, u_ref = _func_jvp(model, named_params(model), d, x)
    torch.testing.assert_close(u, u_ref, rtol=1e-12, atol=1e-12)
    assert layerwise_tangent(plan, tape, named_params(model), {}) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_graph_hessian_calls_a_planned_models_layers_directly_for_the_same_numbers(dtype) -> None:
    """With a layer-wise plan the gradient pass skips Module.__call__: the same graph, bitwise."""
    import copy

    from adamqlr.curvature import curvature_engine

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 9), nn.GELU(), nn.Linear(9, 9), nn.Tanh(), nn.Linear(9, 4)
    ).to(dtype)
    twin = copy.deepcopy(model)
    loss = CrossEntropyLoss()
    direct = curvature_engine(model, "hessian", loss)
    called = curvature_engine(twin, "hessian", loss)
    assert direct._direct
    called._direct = False  # model(inputs), as without a plan
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(16, 3, 4, generator=gen, dtype=dtype)
        y = torch.randint(0, 4, (16,), generator=gen)
        results = []
        for engine, net in ((direct, model), (called, twin)):
            params = list(net.parameters())
            names = [n for n, _ in net.named_parameters()]
            for p in params:
                p.grad = None
            f0, _ = engine.gradient_pass(x, y, params)
            ds = [p.grad * 0.5 + 0.1 for p in params]
            with torch.no_grad():
                q = engine.along(names, params, ds)
            engine.release()
            results.append((f0, q, [p.grad for p in params]))
        (f_a, q_a, g_a), (f_b, q_b, g_b) = results
        assert torch.equal(f_a, f_b) and torch.equal(q_a, q_b)
        assert all(torch.equal(a, b) for a, b in zip(g_a, g_b, strict=True))
    # dropout: the module's own native_dropout (layerwise_forward would draw a mask instead)
    dropout = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    assert not curvature_engine(dropout, "hessian", loss)._direct


def test_hessian_along_graph_sums_the_terms_as_a_float64_sum_of_widened_terms() -> None:
    """``d . (H d)`` per parameter, each widened exactly to float64, then summed in order.

    Directions scaled by 1e-6 .. 1e6 per parameter give terms whose float64 sum is not always
    exact, so a float32 sum (every trial here), another order or an exactly rounded sum
    (some trials) would show in the last bit.
    """
    from adamqlr.curvature import hessian_along_graph

    gen = torch.Generator().manual_seed(3)
    layers: list[nn.Module] = [nn.Linear(6, 5)]
    for _ in range(7):
        layers += [nn.Tanh(), nn.Linear(5, 5)]
    model = nn.Sequential(*layers, nn.Tanh(), nn.Linear(5, 3))
    params = list(model.parameters())
    for trial in range(20):
        x = torch.randn(16, 6, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        scales = 10 ** (torch.rand(len(params), generator=gen) * 12 - 6)
        ds = [torch.randn(p.shape, generator=gen) * s for p, s in zip(params, scales, strict=True)]
        value = CrossEntropyLoss().value(model(x), y)
        gs = torch.autograd.grad(value, params, create_graph=True)
        hds = torch.autograd.grad(gs, params, grad_outputs=ds, retain_graph=True)
        terms = [torch.dot(d.reshape(-1), hd.reshape(-1)) for d, hd in zip(ds, hds, strict=True)]
        expected = torch.stack(terms).to(torch.float64).sum()
        with torch.no_grad():
            q = hessian_along_graph(list(gs), params, ds)
        assert q.dtype == torch.float64
        assert q.item() == expected.item(), trial


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hessian_along_graph_whole_and_piecewise_agree_bitwise(dtype, monkeypatch) -> None:
    """Small models form ``H d`` whole (one autograd.grad); large ones reduce it from hooks."""
    import copy
    import warnings

    import adamqlr.curvature as curvature
    from adamqlr import AdamQLR

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)
    ).to(dtype)
    model[2].bias.requires_grad_(False)  # a parameter with no part in H d
    twin = copy.deepcopy(model)
    whole, piecewise = AdamQLR(model, curvature="hessian"), AdamQLR(twin, curvature="hessian")
    gen = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(10):
            x = torch.randn(32, 20, generator=gen, dtype=dtype)
            y = torch.randint(0, 4, (32,), generator=gen)
            monkeypatch.setattr(curvature, "WHOLE_HD_LIMIT", 1 << 20)
            a = whole.step(x, y)
            monkeypatch.setattr(curvature, "WHOLE_HD_LIMIT", 0)
            b = piecewise.step(x, y)
            assert (a.curvature, a.lr, a.damping) == (b.curvature, b.lr, b.damping)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
