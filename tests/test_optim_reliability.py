"""The optimiser rows of the reliability checklist (``reliability.md`` section 6: O1-O11) and the
behaviour the issue pins for batch norm, dropout and non-positive curvature."""

from __future__ import annotations

import copy
import io
import itertools
import math
import random
import warnings

import pytest
import torch
from _models import DTYPE, ConvBN, Faulty, classification, mlp, regression
from torch import nn

from adamqlr import SGDQLR, AdamQLR
from adamqlr.optim import NonFiniteStepError


# ------------------------------------------------------------------------------------ helpers
def _state_tensors(opt) -> list[torch.Tensor]:
    return [
        v
        for k, st in opt.state.items()
        if k != "qlr"
        for v in st.values()
        if isinstance(v, torch.Tensor)
    ]


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b) -> bool:
    """Recursive bitwise equality of nested dicts/lists/tensors/numbers (NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _param_state(opt, model) -> list[dict]:
    """A copy of the per-parameter state, in parameter order (keys that do not change identity)."""
    return [copy.deepcopy(dict(opt.state.get(p, {}))) for p in model.parameters()]


def _stats_equal(a, b) -> bool:
    return _same(a.as_dict(), b.as_dict())


# ------------------------------------------------------------------------------- O1: bad input
_NAN, _INF = math.nan, math.inf
BAD_KWARGS = [
    ({"initial_damping": -1.0}, "-1.0"),
    ({"initial_damping": _NAN}, "nan"),
    ({"initial_damping": _INF}, "inf"),
    ({"initial_damping": "1e-3"}, "'1e-3'"),
    ({"initial_damping": 1e-9}, "1e-09"),  # below the lower damping bound
    ({"damping_decrease": 1.0}, "1.0"),
    ({"damping_decrease": 1.5}, "1.5"),
    ({"damping_decrease": 0.0}, "0.0"),
    ({"damping_decrease": _NAN}, "nan"),
    ({"damping_decrease": "0.5"}, "'0.5'"),
    ({"damping_increase": 1.0}, "1.0"),
    ({"damping_increase": 0.5}, "0.5"),
    ({"damping_increase": _INF}, "inf"),
    ({"damping_bounds": (1.0, 0.5)}, "0.5"),
    ({"damping_bounds": (-1.0, _INF)}, "-1.0"),
    ({"damping_bounds": (1e-8,)}, r"\(1e-08,\)"),
    ({"damping_bounds": (_NAN, _INF)}, "nan"),
    ({"damping_bounds": 1e-8}, "1e-08"),
    ({"damping_interval": 0}, "0"),
    ({"damping_interval": 1.5}, "1.5"),
    ({"damping_interval": True}, "True"),
    ({"damping_in_rho": "yes"}, "'yes'"),
    ({"undamped": 1}, "1"),
    ({"lr_clip": 0.0}, "0.0"),
    ({"lr_clip": -0.1}, "-0.1"),
    ({"lr_clip": _NAN}, "nan"),
    ({"lr_clip": _INF}, "inf"),
    ({"lr_clip": "0.1"}, "'0.1'"),
    ({"amplification": 0.0}, "0.0"),
    ({"amplification": _INF}, "inf"),
    ({"amplification": -1.0}, "-1.0"),
    ({"betas": (1.0, 0.999)}, "1.0"),
    ({"betas": (0.9, -0.1)}, "-0.1"),
    ({"betas": (_NAN, 0.999)}, "nan"),
    ({"betas": (0.9,)}, r"\(0.9,\)"),
    ({"betas": (0.9, 0.99, 0.9)}, r"\(0.9, 0.99, 0.9\)"),
    ({"betas": 0.9}, "0.9"),
    ({"betas": ("0.9", 0.999)}, "'0.9'"),
    ({"eps": 0.0}, "0.0"),
    ({"eps": -1e-8}, "-1e-08"),
    ({"eps": _INF}, "inf"),
    ({"weight_decay": -0.1}, "-0.1"),
    ({"weight_decay": 1.0}, "1.0"),
    ({"weight_decay": _NAN}, "nan"),
    ({"curvature": "kfac"}, "'kfac'"),
    ({"curvature": "Fisher"}, "'Fisher'"),
    ({"loss": "hinge"}, "'hinge'"),
    ({"loss": None}, "None"),
    ({"nonpositive_curvature": "clip"}, "'clip'"),
    ({"on_nonfinite": "ignore"}, "'ignore'"),
    ({"ignore_index": 1.5}, "1.5"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD_KWARGS, ids=[str(k) for k, _ in BAD_KWARGS])
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, match):
    model = mlp()
    with pytest.raises(ValueError, match=match) as info:
        AdamQLR(model, **kwargs)
    name = next(iter(kwargs)).split("_")[0]
    assert name in str(info.value) or name == "loss"  # the argument is named too


def _bad_params():
    model = mlp()
    other = nn.Linear(2, 2)
    w = model[0].weight
    int_model = nn.Module()
    int_model.p = nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)
    return [
        (model, [], "empty"),
        (model, w, "single Tensor"),
        (model, [other.weight], r"\(2, 2\) is not a parameter"),
        (model, [w * 2], r"\(4, 5\) is not a parameter"),  # a non-leaf tensor
        (model, [w, w], r"0\.weight is given more than once"),
        (model, [{"params": [w]}, {"params": [w]}], r"0\.weight is given more than once"),
        (model, [{"params": [w], "lr": -0.1}], r"invalid lr: -0.1"),
        (model, [{"params": [w], "momentum": 0.9}], r"'momentum'"),
        (model, [{"params": [w], "betas": (1.5, 0.9)}], "1.5"),
        (model, [{"params": [w], "eps": 0}], "eps"),
        (model, [{"params": []}], "no parameters"),
        (model, [{"weights": [w]}], "'params'"),
        (int_model, None, "torch.int64"),
    ]


@pytest.mark.parametrize(("model", "params", "match"), _bad_params())
def test_bad_params_raise_value_error(model, params, match):
    with pytest.raises(ValueError, match=match):
        AdamQLR(model, params=params)


def test_bad_model_and_unknown_keyword():
    with pytest.raises(ValueError, match="invalid model: <generator"):
        AdamQLR(nn.Linear(2, 2).parameters())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lr"):
        AdamQLR(mlp(), lr=0.1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="betas"):
        SGDQLR(mlp(), betas=(0.9, 0.99))  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        ([0, 1, 2], "list"),
        (torch.zeros(7, dtype=torch.long)[:3], r"\(3,\)"),
        (torch.zeros(7), "float"),
    ],
)
def test_bad_batch_raises_at_the_step_and_changes_nothing(targets, match):
    model = mlp()
    x, _ = classification(model)
    opt = AdamQLR(model)
    before = _params(model)
    with pytest.raises(ValueError, match=match):
        opt.step(x, targets)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.state["qlr"]["step"] == 0 and not _state_tensors(opt)


def test_the_error_table_is_long_enough():
    assert len(BAD_KWARGS) + len(_bad_params()) >= 30


# ----------------------------------------------------------------------------- configurations
CONFIGS = {
    f"{c}-{'undamped' if u else 'damped'}-clip{clip}-amp{amp}": dict(
        curvature=c, undamped=u, lr_clip=clip, amplification=amp
    )
    for c, u, clip, amp in itertools.product(
        ["fisher", "hessian"], [False, True], [None, 0.5], [1.0, 0.7]
    )
}


# ------------------------------------------------------------------ O2: state dict round trip
def _batches(n, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 5, generator=g, dtype=DTYPE), torch.randint(0, classes, (8,), generator=g))
        for _ in range(n)
    ]


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_state_dict_round_trip_is_bitwise(config):
    kwargs = CONFIGS[config]
    model = mlp()
    opt = AdamQLR(model, weight_decay=1e-3, **kwargs)
    data = _batches(20)
    for x, y in data[:10]:
        opt.step(x, y)
    saved = opt.state_dict()
    pristine = copy.deepcopy(saved)
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    via_disk = torch.load(buffer, weights_only=True)

    twins = []
    for source in (copy.deepcopy(saved), via_disk):
        twin_model = copy.deepcopy(model)
        twin = AdamQLR(twin_model, weight_decay=1e-3, **kwargs)
        twin.load_state_dict(source)
        twins.append((twin_model, twin))
    assert _same(saved, pristine)  # neither state_dict() consumers nor loading mutated it
    assert _same(via_disk, pristine)

    for x, y in data[10:]:
        ref = opt.step(x, y)
        for twin_model, twin in twins:
            assert _stats_equal(twin.step(x, y), ref)
            for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
                assert torch.equal(a, b)
    for _, twin in twins:
        assert _same(twin.state_dict(), opt.state_dict())


def test_load_state_dict_refuses_foreign_dicts():
    model = mlp()
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="'qlr'"):
        AdamQLR(model).load_state_dict(adam.state_dict())


def test_loaded_state_dict_is_not_mutated_by_later_steps():
    model = mlp()
    opt = AdamQLR(model)
    x, y = _batches(1)[0]
    opt.step(x, y)
    sd = opt.state_dict()
    frozen = copy.deepcopy(sd)
    twin = AdamQLR(copy.deepcopy(model))
    twin.load_state_dict(sd)
    for _ in range(3):
        twin.step(x, y)
    assert _same(sd, frozen)


# --------------------------------------------------------- O5: deepcopy, repr, hooks, groups
def test_deepcopy_is_independent_and_identical():
    model = mlp()
    opt = AdamQLR(model)
    data = _batches(6)
    for x, y in data[:3]:
        opt.step(x, y)
    clone = copy.deepcopy(opt)
    assert clone.model is not model
    assert {
        k: v for k, v in vars(clone).items() if not isinstance(v, (nn.Module, dict, list))
    }.keys() == {
        k: v for k, v in vars(opt).items() if not isinstance(v, (nn.Module, dict, list))
    }.keys()
    for x, y in data[3:]:
        assert _stats_equal(clone.step(x, y), opt.step(x, y))
    for a, b in zip(model.parameters(), clone.model.parameters(), strict=True):
        assert torch.equal(a, b) and a is not b
    assert [p.data_ptr() for p in clone.param_groups[0]["params"]] == [
        p.data_ptr() for p in clone.model.parameters()
    ]


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_repr(config):
    text = repr(AdamQLR(mlp(), **CONFIGS[config]))
    assert text.startswith("AdamQLR(") and CONFIGS[config]["curvature"] in text


def test_step_hooks_fire_in_order():
    model = mlp()
    opt = AdamQLR(model)
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    h2 = opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    x, y = _batches(1)[0]
    opt.step(x, y)
    assert calls == ["pre", "post"]
    h1.remove()
    h2.remove()
    opt.step(x, y)
    assert calls == ["pre", "post"]


@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
def test_a_group_without_gradients_stays_bitwise_unchanged(curvature):
    # (the Hessian's engine then finds the kept gradients of the parameters with one by identity)
    def network(extra: nn.Module | None) -> nn.Module:
        net = nn.Module()
        torch.manual_seed(0)
        net.used = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(DTYPE)
        if extra is not None:
            net.unused = extra
        net.forward = lambda x: net.used(x)  # type: ignore[method-assign]
        return net

    plain = network(None)
    opt = AdamQLR(plain, curvature=curvature)
    unused = nn.Linear(3, 3).to(DTYPE)
    net = network(unused)
    opt2 = AdamQLR(
        net,
        curvature=curvature,
        params=[
            {"params": net.used.parameters()},
            {"params": unused.parameters(), "betas": (0.5, 0.6), "weight_decay": 0.5},
        ],
    )
    frozen = _params(unused)
    for x, y in _batches(5):
        assert _stats_equal(opt.step(x, y), opt2.step(x, y))
    assert all(torch.equal(a, b) for a, b in zip(frozen, unused.parameters(), strict=True))
    assert all(not opt2.state[p] for p in unused.parameters())


def test_a_frozen_layer_keeps_its_state_while_frozen():
    model = mlp()
    opt = AdamQLR(model)
    x, y = _batches(1)[0]
    opt.step(x, y)
    first = model[0].weight
    state = copy.deepcopy(dict(opt.state[first]))
    value = first.detach().clone()
    first.requires_grad_(False)
    opt.step(x, y)
    assert torch.equal(first, value) and _same(dict(opt.state[first]), state)
    first.requires_grad_(True)
    opt.step(x, y)
    assert opt.state[first]["step"] == 2  # its own count: the frozen step did not count
    assert not torch.equal(first, value)


# ----------------------------------------------------------------------------- O7: complex
def test_complex_parameters_are_refused():
    model = nn.Linear(3, 2)
    model.weight = nn.Parameter(torch.randn(2, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex parameters are not supported"):
        AdamQLR(model)


# ------------------------------------------------------------------------ O8: no-op steps
def test_no_gradient_is_a_noop():
    model = nn.Sequential(nn.Linear(5, 3), nn.Linear(2, 2)).to(DTYPE)
    model.forward = lambda x: model[0](x)  # type: ignore[method-assign]
    opt = AdamQLR(model, params=model[1].parameters())
    before = _params(model)
    x, y = _batches(1)[0]
    stats = opt.step(x, y)
    assert not stats.accepted and stats.reason == "no_gradient" and stats.lr == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not _state_tensors(opt)
    assert opt.state["qlr"]["step"] == 0 and opt.damping == 1e-3


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_zero_gradient_moves_nothing_and_makes_no_nan(config):
    model = mlp((5, 4, 3))
    x, _ = regression()
    y = model(x).detach()  # the residual is exactly zero, so is every gradient
    opt = AdamQLR(model, "squared_error", **CONFIGS[config])
    before = _params(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(3):
            stats = opt.step(x, y)
            assert stats.accepted and stats.lr == 0.0 and stats.direction_sq_norm == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.isfinite(t).all() for t in _state_tensors(opt))
    assert math.isfinite(opt.damping)


# ------------------------------------------------------------------------------ O9: descends
class _Affine(nn.Module):
    """``W x + b`` with a non-contiguous weight."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.weight = nn.Parameter(torch.randn(5, 3, dtype=DTYPE).t())  # (3, 5), strided
        self.bias = nn.Parameter(torch.randn(3, dtype=DTYPE))

    def forward(self, x):
        return x @ self.weight.t() + self.bias


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_descends_in_every_configuration(config):
    kwargs = CONFIGS[config]
    affine = _Affine()
    assert not affine.weight.is_contiguous()
    x, _ = regression(n=16)
    zeros = torch.zeros(16, 3, dtype=DTYPE)
    groups = [{"params": [affine.weight]}, {"params": [affine.bias], "betas": (0.8, 0.99)}]
    opt = AdamQLR(affine, "squared_error", **kwargs, params=groups)
    first = opt.step(x, zeros).loss
    for _ in range(19):
        last = opt.step(x, zeros).loss
    assert last < first

    model = mlp((5, 6, 3), nn.Tanh, seed=7)
    opt = AdamQLR(model, "cross_entropy", **kwargs)
    data = _batches(1, seed=8)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an undamped Hessian step may be refused
        first = opt.step(*data).loss
        for _ in range(19):
            last = opt.step(*data).loss
    assert last < first


# ------------------------------------------------------------------ O10: NaN/inf injection
FAULTS = {  # kind -> (forward call, where, reason), for the Fisher
    "loss": (1, "output", "nonfinite_loss"),
    "gradient": (1, "grad", "nonfinite_gradient"),
    "curvature": (2, "output", "nonfinite_curvature"),
    "trial": (3, "output", "nonfinite_trial_loss"),
}
# The Hessian is taken through the gradient pass's graph: no forward pass of its own.
HESSIAN_FAULTS = {
    **FAULTS,
    "curvature": (1, "second", "nonfinite_curvature"),
    "trial": (2, "output", "nonfinite_trial_loss"),
}


def _faults(curvature: str) -> dict:
    return HESSIAN_FAULTS if curvature == "hessian" else FAULTS


@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
@pytest.mark.parametrize("undamped", [False, True])
@pytest.mark.parametrize("loss", ["cross_entropy", "squared_error"])
def test_nonfinite_numbers_never_reach_parameters_or_state(curvature, undamped, loss):
    rng = random.Random(f"{curvature}{undamped}{loss}")
    model = Faulty(mlp((5, 4, 3), nn.Tanh))
    # "absolute": only the injected faults may reject a step (this Hessian is indefinite)
    # undamped steps on these tiny batches diverge without a clip (softmax saturates, q = 0)
    opt = AdamQLR(
        model,
        loss,
        curvature,
        undamped=undamped,
        nonpositive_curvature="absolute",
        lr_clip=1.0 if undamped else None,
    )
    if loss == "cross_entropy":
        data = _batches(4)
    else:
        data = [regression(n=8, seed=s) for s in range(4)]
    kinds = [k for k in FAULTS if not (undamped and k == "trial")]
    injected = 0
    for step in range(50):
        x, y = data[step % len(data)]
        model.new_step()
        params = _params(model)
        state = _param_state(opt, model)
        glob = dict(opt.state["qlr"])
        kind = rng.choice(kinds) if rng.random() < 0.6 else None
        if kind is None:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                stats = opt.step(x, y)
            assert stats.accepted, stats
        else:
            call, where, reason = _faults(curvature)[kind]
            model.arm(call, rng.choice([math.nan, math.inf, -math.inf]), where)
            with pytest.warns(RuntimeWarning, match=reason):
                stats = opt.step(x, y)
            injected += 1
            assert not stats.accepted and stats.reason == reason and stats.lr == 0.0
            assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
            assert _same(_param_state(opt, model), state)
            g = opt.state["qlr"]
            assert g["step"] == glob["step"]
            assert g["rejected_steps"] == glob["rejected_steps"] + 1
            assert g["nonfinite_steps"] == glob["nonfinite_steps"] + 1
            if undamped:
                assert g["damping"] == 0.0
            else:
                assert g["damping"] == 2.0 * glob["damping"]
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert all(torch.isfinite(t).all() for t in _state_tensors(opt))
        assert math.isfinite(opt.damping)
    assert injected >= 20
    assert opt.state["qlr"]["nonfinite_steps"] == injected


@pytest.mark.parametrize("kind", list(FAULTS))
@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
def test_on_nonfinite_raise(kind, curvature):
    model = Faulty(mlp((5, 4, 3), nn.Tanh))
    opt = AdamQLR(model, curvature=curvature, on_nonfinite="raise")
    x, y = _batches(1)[0]
    model.new_step()
    opt.step(x, y)
    before, state = _params(model), _param_state(opt, model)
    call, where, reason = _faults(curvature)[kind]
    model.new_step()
    model.arm(call, math.nan, where)
    with pytest.raises(NonFiniteStepError, match=reason.replace("_", " ")):
        opt.step(x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert _same(_param_state(opt, model), state)


def test_an_overflowing_step_is_refused_even_without_a_trial_loss():
    """float32: alpha and d finite, alpha * d is not; undamped mode has no trial loss to see it."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(4, 3)
    y = torch.zeros(4, 1)
    opt = AdamQLR(model, "squared_error", undamped=True)
    # huge targets drive alpha far beyond float32's range relative to d
    y = torch.full((4, 1), 3e38)
    with pytest.warns(RuntimeWarning, match="nonfinite"):
        stats = opt.step(x, y)
    assert not stats.accepted
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _zero_linear(inputs: int) -> nn.Linear:
    """A float32 ``Linear(inputs, 1)`` with zero weights and bias: its gradient is set by y."""
    model = nn.Linear(inputs, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.fill_(0.0)
    return model


def test_an_overflowing_second_moment_is_refused():
    """float32: a finite gradient of 1e22 overflows (1 - beta2) g^2; d is then 0, not NaN."""
    model = _zero_linear(1)
    x, y = torch.full((2, 1), 1e11), torch.full((2, 1), 1e11)
    opt = AdamQLR(model, "squared_error")
    with pytest.warns(RuntimeWarning, match="nonfinite_gradient"):
        stats = opt.step(x, y)
    assert not stats.accepted and math.isfinite(stats.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert not _state_tensors(opt)


def test_a_large_finite_second_moment_is_no_false_alarm():
    """float32: v ~ 1e31 is finite though its norm (sqrt of 1e62) is not: the step goes ahead."""
    model = _zero_linear(4)
    x, y = torch.full((2, 4), 1.0), torch.full((2, 1), 1e17)
    opt = AdamQLR(model, "squared_error")
    stats = opt.step(x, y)
    v = opt.state[model.weight]["exp_avg_sq"]
    assert stats.accepted and stats.reason == ""
    assert torch.isfinite(v).all() and not torch.isfinite(torch.linalg.vector_norm(v))


def test_zero_predicted_change_leaves_damping_alone():
    """rho = 0/0 when the model predicts no change: NaN, and the damping stays."""
    model = mlp((5, 4, 3))
    x, _ = regression()
    opt = AdamQLR(model, "squared_error")
    stats = opt.step(x, model(x).detach())
    assert stats.accepted and math.isnan(stats.rho) and stats.damping == stats.damping_used


# ---------------------------------------------------------------------------- O11: determinism
def test_two_runs_are_bitwise_equal():
    def run():
        torch.manual_seed(11)
        model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3)).to(
            DTYPE
        )
        opt = AdamQLR(model, curvature="fisher")
        trace = [opt.step(x, y) for x, y in _batches(100, seed=12)]
        return trace, _params(model), opt.state_dict()

    a, b = run(), run()
    assert all(_stats_equal(s, t) for s, t in zip(a[0], b[0], strict=True))
    assert all(torch.equal(p, q) for p, q in zip(a[1], b[1], strict=True))
    assert _same(a[2], b[2])


# ------------------------------------------------------------- non-positive damped curvature
class _Concave(nn.Module):
    """Output ``sum(w^2)`` per example: with targets far above it, the squared error is concave
    along the gradient's sign (the Hessian's second term ``(z - t) * 2`` dominates)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.1, -0.2, 0.15], dtype=DTYPE))

    def forward(self, x):
        return (self.w**2).sum() * x


def test_nonpositive_hessian_curvature_is_rejected_then_damping_jumps():
    model = _Concave()
    x, y = torch.ones(4, 1, dtype=DTYPE), torch.full((4, 1), 10.0, dtype=DTYPE)
    opt = AdamQLR(model, "squared_error", "hessian", initial_damping=1e-3)
    before = _params(model)
    with pytest.warns(RuntimeWarning, match="nonpositive_curvature"):
        first = opt.step(x, y)
    assert not first.accepted and first.reason == "nonpositive_curvature"
    q, s = first.curvature, first.direction_sq_norm
    assert q + 1e-3 * s < 0
    assert first.damping == pytest.approx(2.0 * (-q) / s, rel=1e-14)  # omega_inc * |q| / ||d||^2
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.state["qlr"]["nonfinite_steps"] == 0 and opt.state["qlr"]["rejected_steps"] == 1
    second = opt.step(x, y)  # the same direction, now with positive damped curvature
    assert second.accepted and second.curvature == pytest.approx(q, rel=1e-14)
    assert second.lr == pytest.approx(second.grad_dot_dir / (q + first.damping * s), rel=1e-12)
    assert second.lr > 0 and second.trial_loss < second.loss


def test_nonpositive_hessian_curvature_absolute_rule():
    model = _Concave()
    x, y = torch.ones(4, 1, dtype=DTYPE), torch.full((4, 1), 10.0, dtype=DTYPE)
    opt = AdamQLR(model, "squared_error", "hessian", nonpositive_curvature="absolute")
    stats = opt.step(x, y)
    assert stats.accepted
    q, s = stats.curvature, stats.direction_sq_norm
    assert q < 0
    assert stats.lr == pytest.approx(stats.grad_dot_dir / abs(q + 1e-3 * s), rel=1e-14)
    assert stats.trial_loss < stats.loss


def test_fisher_on_the_same_problem_is_positive():
    model = _Concave()
    x, y = torch.ones(4, 1, dtype=DTYPE), torch.full((4, 1), 10.0, dtype=DTYPE)
    stats = AdamQLR(model, "squared_error", "fisher").step(x, y)
    assert stats.accepted and stats.curvature > 0


# ----------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
@pytest.mark.parametrize("optimiser", [AdamQLR, SGDQLR])
def test_only_the_gradient_pass_updates_batch_norm_statistics(curvature, optimiser):
    model = ConvBN().train()
    reference = copy.deepcopy(model)
    # "absolute": the Hessian of this net is indefinite along some directions; the trial pass
    # must run for the test to mean anything
    opt = optimiser(model, "cross_entropy", curvature, nonpositive_curvature="absolute")
    for seed in range(3):
        x, y = classification(model, n=6, in_shape=(2, 5, 5), seed=seed)
        with torch.no_grad():
            reference(x)  # one plain forward in train mode
        stats = opt.step(x, y)
        assert stats.accepted and math.isfinite(stats.trial_loss)
        for (n, a), b in zip(model.named_buffers(), reference.buffers(), strict=True):
            assert torch.equal(a, b), n
        with torch.no_grad():  # keep the reference's parameters in step for the next batch
            for p, q in zip(reference.parameters(), model.parameters(), strict=True):
                p.copy_(q)
    assert int(model.bn1.num_batches_tracked) == 3


# -------------------------------------------------------------------------------- dropout
class _Wrapped(nn.Module):
    """The same network behind a custom forward (takes the generic torch.func path)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def _dropout_net(seed=0):
    torch.manual_seed(seed)
    return (
        nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3))
        .to(DTYPE)
        .train()
    )


class _FixedMask(nn.Module):
    def __init__(self, scaled_mask):
        super().__init__()
        self.scaled_mask = scaled_mask

    def forward(self, h):
        return h * self.scaled_mask


@pytest.mark.parametrize("wrap", [False, True], ids=["sequential", "custom-forward"])
@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
def test_curvature_and_trial_passes_reuse_the_gradient_pass_masks(wrap, curvature):
    from _models import oracle_ce

    from adamqlr.testing import dense_ggn, dense_hessian, flatten

    net = _dropout_net()
    model = _Wrapped(net) if wrap else net
    x, y = classification(net, n=9)
    opt = AdamQLR(model, "cross_entropy", curvature)
    opt.step(x, y)  # a first step, so the second has momentum in it

    # the mask the gradient pass will draw: replay the random state on a twin
    rng = torch.get_rng_state()
    twin = copy.deepcopy(net)
    captured = {}
    twin[2].register_forward_hook(lambda m, i, o: captured.setdefault("mask", o / i[0]))
    twin(x)
    torch.set_rng_state(rng)
    fixed = copy.deepcopy(net)
    fixed[2] = _FixedMask(captured["mask"].detach())

    before = [p.detach().clone() for p in net.parameters()]
    stats = opt.step(x, y)
    after_rng = torch.get_rng_state()
    torch.set_rng_state(rng)
    twin(x)  # the global RNG advanced by exactly one forward pass (the gradient pass)
    assert torch.equal(torch.get_rng_state(), after_rng)

    with torch.no_grad():
        for p, b in zip(fixed.parameters(), before, strict=True):
            p.copy_(b)
    assert stats.loss == pytest.approx(float(oracle_ce()(fixed(x), y)), rel=1e-14)
    d = (
        flatten(dict(zip(range(4), before, strict=True)))
        - flatten(dict(enumerate(net.parameters())))
    ) / stats.lr
    matrix = (dense_ggn if curvature == "fisher" else dense_hessian)(fixed, x, y, oracle_ce())
    assert stats.curvature == pytest.approx(float(d @ matrix @ d), rel=1e-10)
    with torch.no_grad():
        for p, q in zip(fixed.parameters(), net.parameters(), strict=True):
            p.copy_(q)
    assert stats.trial_loss == pytest.approx(float(oracle_ce()(fixed(x), y)), rel=1e-14)
