"""K-FAC's step-size rule and damping update as orthogonal options, against dense oracles.

Every combination of ``step_rule`` (constant, alpha, alpha-momentum) and ``damping_update``
(fixed, adaptive) is recomputed from scratch on a network of a few dozen parameters in float64,
with the dense oracles of ``test_lens_kfac.py`` (GGN as ``J^T H J`` by ``jacrev``/``hessian``,
Kronecker factors from an explicit forward pass, K-FAC's block as a permuted ``torch.kron``
solved densely): the 1-D rule's ``alpha* = -g^T Delta / (Delta^T G Delta + lambda ||Delta||^2)``,
the 2-D rule's numpy solve, the constant rule's ``(lr, momentum)``, ``rho`` from the (undamped by
default) model change at the update taken, and the Levenberg-Marquardt rule written out. The
``mode`` shorthands are checked bit for bit against trajectories recorded before the options
existed (``fixtures/kfac_rules``).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import math
from pathlib import Path

import pytest
import torch
from test_lens_kfac import (
    DT,
    batch,
    dense_factors,
    dense_ggn,
    dense_gradient,
    flat_of,
    kfac_direction_oracle,
    lm_oracle,
    mean_loss,
    tiny_net,
    two_by_two_oracle,
)
from torch import nn

from adamqlr.kfac import DAMPING_UPDATES, KFAC, NO_DAMPING, STEP_RULES
from adamqlr.losses import CrossEntropyLoss, SquaredErrorLoss

TOL = 1e-10
LOSSES = [CrossEntropyLoss(), SquaredErrorLoss()]
LOSS_IDS = ["cross_entropy", "squared_error"]
COMBOS = [(s, d) for s in STEP_RULES for d in DAMPING_UPDATES]
COMBO_IDS = [f"{s}+{d}" for s, d in COMBOS]
LR, MOMENTUM = 0.3, 0.5


def rule_kwargs(step_rule: str, damping_update: str, **extra) -> dict:
    kwargs = dict(step_rule=step_rule, damping_update=damping_update, **extra)
    if step_rule == "constant":
        kwargs.update(lr=LR, momentum=MOMENTUM)
    return kwargs


# --------------------------------------------------------------------------------- the oracle
def rules_oracle(model, loss, batches, step_rule, damping_update, *, lam0=1.0, decay=0.95,
                 damping_in_rho=False):  # fmt: skip
    """K-FAC with the given rules recomputed densely; one dict per step."""
    vec = flat_of(model)
    velocity = torch.zeros_like(vec)
    lam = lam0
    sums: dict[str, list[torch.Tensor]] = {}
    weight = 0.0
    rows = []
    for step, (x, y) in enumerate(batches):
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
        if step_rule == "alpha":
            curvature = float(direction @ ggn @ direction) + lam * float(direction @ direction)
            w = (-float(gvec @ direction) / curvature, 0.0)
        elif step_rule == "alpha-momentum":
            v = torch.stack([direction, velocity], 1)
            a2, d2, b2 = (v.T @ ggn @ v).numpy(), (v.T @ v).numpy(), (v.T @ gvec).numpy()
            w = tuple(float(c) for c in two_by_two_oracle(a2, d2, b2, lam))
        else:
            w = (-LR, MOMENTUM if step > 0 else 0.0)
        update = w[0] * direction + w[1] * velocity
        new_vec = vec + update
        q0 = float(0.5 * update @ ggn @ update + gvec @ update)
        q = q0 + 0.5 * lam * float(update @ update) if damping_in_rho else q0
        row = dict(lr=-w[0], momentum=w[1], damping_used=lam, params=new_vec, loss=f0,
                   quad_change=q, rho=math.nan, trial_loss=math.nan)  # fmt: skip
        if damping_update == "adaptive":
            f1 = float(mean_loss(model, loss, new_vec, x, y))
            rho = (f1 - f0) / q
            row.update(trial_loss=f1, rho=rho)
            lam = lm_oracle(lam, rho)
        row["damping"] = lam
        rows.append(row)
        velocity = update
        vec = new_vec
    return rows


def batches_for(loss, steps, n=8):
    return [batch(loss, n=n, seed=10 + s) for s in range(steps)]


def close(got: float, want: float, tol: float = TOL) -> bool:
    if math.isnan(want):
        return math.isnan(got)
    return abs(got - want) <= tol * max(abs(want), 1e-3)


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize(("step_rule", "damping_update"), COMBOS, ids=COMBO_IDS)
def test_every_combination_matches_the_dense_oracle_step_by_step(step_rule, damping_update, loss):
    steps = 4
    model = tiny_net(seed=2)
    data = batches_for(loss, steps)
    lam0 = 0.5
    oracle = rules_oracle(model, loss, data, step_rule, damping_update, lam0=lam0)
    lib_model = copy.deepcopy(model)
    opt = KFAC(lib_model, loss, estimation="exact", initial_damping=lam0,
               **rule_kwargs(step_rule, damping_update))  # fmt: skip
    assert (opt.step_rule, opt.damping_update) == (step_rule, damping_update)
    lams = set()
    for it, ((x, y), row) in enumerate(zip(data, oracle, strict=True)):
        stats = opt.step(x, y)
        assert stats.accepted
        keys = ["lr", "momentum", "rho", "damping_used", "damping", "loss", "trial_loss"]
        if step_rule != "constant" or damping_update == "adaptive":
            keys.append("quad_change")  # the constant rule with fixed damping builds no model
        else:
            assert math.isnan(stats.quad_change)
        for key in keys:
            got, want = getattr(stats, key), row[key]
            assert close(got, want), (it, key, got, want)
        assert (flat_of(lib_model) - row["params"]).norm() <= TOL * row["params"].norm()
        lams.add(stats.damping)
        if step_rule == "alpha":
            assert stats.momentum == 0.0
    if damping_update == "fixed":
        assert lams == {lam0}
    else:
        assert len(lams) > 1  # the adaptive rule moved lambda, so its branches were exercised


def test_alpha_is_the_exact_minimiser_of_the_damped_model_along_the_kfac_direction():
    """``M(a) = a g^T Delta + a^2/2 (Delta^T G Delta + lambda ||Delta||^2)`` is least at ``-lr``."""
    loss = CrossEntropyLoss()
    model = tiny_net(seed=3)
    x, y = batch(loss, n=8, seed=4)
    lam = 0.2
    vec = flat_of(model)
    gvec = dense_gradient(model, loss, vec, x, y)
    ggn = dense_ggn(model, loss, vec, x, y)
    direction = kfac_direction_oracle(model, dense_factors(model, loss, vec, x, y), gvec, lam)

    def model_change(a: float) -> float:
        return a * float(gvec @ direction) + 0.5 * a * a * (
            float(direction @ ggn @ direction) + lam * float(direction @ direction)
        )

    opt = KFAC(copy.deepcopy(model), loss, step_rule="alpha", damping_update="fixed",
               initial_damping=lam, estimation="exact")  # fmt: skip
    stats = opt.step(x, y)
    a_star = -stats.lr
    assert a_star < 0.0  # a descent step along -Delta
    # the derivative of M vanishes at the library's coefficient ...
    slope = float(gvec @ direction) + a_star * (
        float(direction @ ggn @ direction) + lam * float(direction @ direction)
    )
    assert abs(slope) <= TOL * abs(float(gvec @ direction))
    # ... and M is larger on either side, and at the 2-D rule's first-step neighbours
    for factor in (0.999, 1.001, 0.5, 2.0):
        assert model_change(a_star * factor) > model_change(a_star)
    assert stats.quad_change == pytest.approx(
        model_change(a_star) - 0.5 * a_star**2 * lam * float(direction @ direction), rel=TOL
    )


def _run(model, loss, data, **kwargs):
    opt = KFAC(model, loss, seed=7, **kwargs)
    return opt, [opt.step(x, y) for x, y in data]


@pytest.mark.parametrize("damping_update", DAMPING_UPDATES)
def test_alpha_is_alpha_momentum_with_the_momentum_forced_to_zero(damping_update):
    """On the first step (no previous update) the two rules take the same step."""
    loss = CrossEntropyLoss()
    model = tiny_net(seed=5)
    data = batches_for(loss, 2)
    one = copy.deepcopy(model)
    two = copy.deepcopy(model)
    _, a = _run(one, loss, data, step_rule="alpha", damping_update=damping_update)
    opt2, b = _run(two, loss, data, step_rule="alpha-momentum", damping_update=damping_update)
    first_a, first_b = a[0].as_dict(), b[0].as_dict()
    for key, value in first_b.items():
        if isinstance(value, float) and not math.isnan(value):
            assert first_a[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
        else:
            assert first_a[key] == value or (math.isnan(first_a[key]) and math.isnan(value))
    assert b[1].momentum != 0.0 and a[1].momentum == 0.0  # then they part
    assert all("velocity" in opt2.state[p] for p in two.parameters())


def test_alpha_keeps_no_velocity():
    loss = SquaredErrorLoss()
    model = tiny_net(seed=1)
    opt, _ = _run(model, loss, batches_for(loss, 2), step_rule="alpha", damping_update="adaptive")
    assert not any("velocity" in opt.state[p] for p in model.parameters())


@pytest.mark.parametrize("damping_in_rho", [False, True])
def test_constant_rule_adapts_the_damping_from_the_model_change_at_the_step_taken(damping_in_rho):
    """A hand computation of rho and the LM rule from the parameters' actual change."""
    loss = CrossEntropyLoss()
    model = tiny_net(seed=4)
    data = batches_for(loss, 6)
    lam0 = 0.7
    # a learning rate far too large for some steps, so that rho falls in all three ranges
    opt = KFAC(model, loss, step_rule="constant", damping_update="adaptive", lr=20.0,
               momentum=0.9, initial_damping=lam0, damping_in_rho=damping_in_rho,
               estimation="exact")  # fmt: skip
    lam, branches = lam0, set()
    for x, y in data:
        vec0 = flat_of(model)
        f0 = float(mean_loss(model, loss, vec0, x, y))
        gvec = dense_gradient(model, loss, vec0, x, y)
        ggn = dense_ggn(model, loss, vec0, x, y)
        stats = opt.step(x, y)
        delta = flat_of(model) - vec0
        f1 = float(mean_loss(model, loss, flat_of(model), x, y))
        q = 0.5 * float(delta @ ggn @ delta) + float(gvec @ delta)
        if damping_in_rho:
            q += 0.5 * lam * float(delta @ delta)
        rho = (f1 - f0) / q
        assert stats.quad_change == pytest.approx(q, rel=1e-9)
        assert stats.trial_loss == pytest.approx(f1, rel=1e-12)
        assert stats.rho == pytest.approx(rho, rel=1e-8)
        expected = lam * 0.9 if rho > 0.75 else (lam / 0.9 if rho < 0.25 else lam)
        branches.add("down" if rho > 0.75 else ("up" if rho < 0.25 else "keep"))
        assert stats.damping_used == lam
        assert stats.damping == pytest.approx(max(expected, 1e-8), rel=1e-15)
        lam = stats.damping
    if not damping_in_rho:  # (the damped model's larger change puts every rho below 1/4 here)
        assert branches == {"down", "keep", "up"}


# ------------------------------------------------------------------- the mode shorthands
RECORD_PATH = Path(__file__).parent / "fixtures" / "kfac_rules" / "modes.json"


def _maker():
    path = Path(__file__).parent / "fixtures" / "kfac_rules" / "record_modes.py"
    spec = importlib.util.spec_from_file_location("kfac_rules_record", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mode_shorthands_compute_bit_for_bit_what_they_did_before_the_rules():
    record = json.loads(RECORD_PATH.read_text())
    if record["torch"] != torch.__version__:
        pytest.skip(f"recorded with torch {record['torch']}, running {torch.__version__}")
    recorder = _maker()
    make = recorder.maker()
    assert set(record["cases"]) == set(make.CASES)
    for name in sorted(make.CASES):
        got = recorder.exact(recorder._steps(make.run(name)))
        assert got == record["cases"][name], name


@pytest.mark.parametrize("mode", ["adaptive", "unadaptive"])
def test_mode_is_the_same_optimiser_as_its_rules(mode):
    rules = {"adaptive": ("alpha-momentum", "adaptive"), "unadaptive": ("constant", "fixed")}[mode]
    loss = CrossEntropyLoss()
    model = tiny_net(seed=6)
    data = batches_for(loss, 4)
    one, two = copy.deepcopy(model), copy.deepcopy(model)
    extra = {"lr": 0.1, "momentum": 0.8} if mode == "unadaptive" else {}
    opt_a, a = _run(one, loss, data, mode=mode, **extra)
    opt_b, b = _run(two, loss, data, step_rule=rules[0], damping_update=rules[1], **extra)
    assert opt_a.mode == opt_b.mode == mode
    assert (opt_a.step_rule, opt_a.damping_update) == rules
    assert all(_same(s.as_dict(), t.as_dict()) for s, t in zip(a, b, strict=True))
    for p, q in zip(one.parameters(), two.parameters(), strict=True):
        assert torch.equal(p, q)
    # both modes with rho: NaN without adaptation, finite with it
    assert all(math.isnan(s.rho) for s in a) == (mode == "unadaptive")


def _same(x: dict, y: dict) -> bool:
    return all(
        x[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(x[k]))
        for k, v in y.items()
    )


def test_default_is_adaptive_and_other_combinations_have_no_mode():
    model = tiny_net()
    opt = KFAC(model, "cross_entropy")
    assert (opt.mode, opt.step_rule, opt.damping_update) == ("adaptive", "alpha-momentum",
                                                             "adaptive")  # fmt: skip
    assert KFAC(model, "cross_entropy", step_rule="alpha").mode is None
    assert KFAC(model, "cross_entropy", damping_update="fixed").step_rule == "alpha-momentum"
    assert KFAC(model, "cross_entropy", "unadaptive", step_rule="constant").mode == "unadaptive"
    assert "step_rule='alpha'" in repr(KFAC(model, "cross_entropy", step_rule="alpha"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "adaptive", "step_rule": "constant"}, "step_rule: 'constant' contradicts mode"),
        ({"mode": "adaptive", "damping_update": "fixed"}, "damping_update: 'fixed' contradicts"),
        ({"mode": "unadaptive", "step_rule": "alpha"}, "step_rule: 'alpha' contradicts mode"),
        ({"mode": "unadaptive", "damping_update": "adaptive"}, "'adaptive' contradicts mode"),
        ({"step_rule": "line-search"}, "invalid step_rule: 'line-search'"),
        ({"step_rule": "alpha-mom"}, "invalid step_rule: 'alpha-mom'"),
        ({"damping_update": "none"}, "invalid damping_update: 'none'"),
        ({"mode": "fast"}, "invalid mode: 'fast'"),
        ({"step_rule": "alpha", "lr": 0.1}, "invalid lr: 0.1 .step_rule='alpha' chooses it"),
        ({"step_rule": "alpha", "momentum": 0.9}, "invalid momentum: 0.9 .step_rule='alpha' fixes"),
        ({"step_rule": "alpha-momentum", "momentum": 0.9}, "invalid momentum: 0.9"),
        ({"mode": "adaptive", "lr": 0.1}, "invalid lr: 0.1 .mode='adaptive' chooses it"),
        ({"step_rule": "constant", "lr": -1.0}, "invalid lr: -1.0"),
    ],
)
def test_bad_combinations_are_rejected_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KFAC(tiny_net(), "cross_entropy", **kwargs)


# ------------------------------------------------------------------ state and failure paths
@pytest.mark.parametrize(("step_rule", "damping_update"), COMBOS, ids=COMBO_IDS)
def test_state_dict_round_trips_for_every_combination(step_rule, damping_update):
    loss = CrossEntropyLoss()
    model = tiny_net(seed=8)
    data = batches_for(loss, 4)
    kwargs = rule_kwargs(step_rule, damping_update, initial_damping=0.3, seed=3)
    opt = KFAC(model, loss, **kwargs)
    for x, y in data[:2]:
        opt.step(x, y)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin = copy.deepcopy(model)
    twin_opt = KFAC(twin, loss, **kwargs)
    twin_opt.load_state_dict(torch.load(buffer, weights_only=True))
    assert twin_opt.damping == opt.damping
    for x, y in data[2:]:
        a, b = opt.step(x, y), twin_opt.step(x, y)
        assert _same(a.as_dict(), b.as_dict())
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(("step_rule", "damping_update"), COMBOS, ids=COMBO_IDS)
def test_a_skipped_step_raises_only_an_adaptive_damping(step_rule, damping_update):
    loss = CrossEntropyLoss()
    model = tiny_net()
    x, y = batch(loss)
    x[0, 0] = math.nan
    opt = KFAC(model, loss, **rule_kwargs(step_rule, damping_update, initial_damping=0.5))
    with pytest.warns(RuntimeWarning, match="nonfinite_loss"):
        stats = opt.step(x, y)
    assert not stats.accepted and math.isnan(stats.rho)
    assert stats.damping == pytest.approx(0.5 / 0.9 if damping_update == "adaptive" else 0.5)


def test_no_damping_is_the_floor_and_fixed_damping_stays_there():
    """The K-FAC "none" cell: fixed damping at kfac-jax's floor, 1e-8, in the preconditioner too."""
    assert NO_DAMPING == 1e-8
    loss = SquaredErrorLoss()
    model = tiny_net(seed=9)
    opt = KFAC(model, loss, step_rule="alpha", damping_update="fixed", initial_damping=NO_DAMPING)
    for x, y in batches_for(loss, 3, n=16):
        stats = opt.step(x, y)
        assert stats.accepted and stats.damping_used == stats.damping == NO_DAMPING
        assert math.isfinite(stats.lr) and stats.lr > 0.0


def test_the_rules_apply_to_models_off_the_layerwise_path():
    """A model with a batch-norm layer takes the generic JVP path for every rule."""
    torch.manual_seed(0)
    for step_rule, damping_update in COMBOS:
        model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2))
        model = model.to(DT)
        x, y = torch.randn(12, 3, dtype=DT), torch.randint(0, 2, (12,))
        opt = KFAC(model, "cross_entropy", **rule_kwargs(step_rule, damping_update))
        for _ in range(3):
            stats = opt.step(x, y)
            assert stats.accepted and math.isfinite(stats.loss)
            assert math.isfinite(stats.rho) == (damping_update == "adaptive")


# ------------------------------------------------------------------ the factorial's registry
def _kfac_cells():
    from adamqlr.studies.factorial import CELLS

    return [c for c in CELLS if c.direction == "K-FAC"]


def test_every_kfac_cell_of_the_factorial_is_registered_with_its_rules():
    from adamqlr.baselines import KFAC_CELL_ALIASES, KFAC_CELLS
    from adamqlr.experiment.optimisers import get_optimiser, optimiser_names

    cells = _kfac_cells()
    assert len(cells) == 9 and {c.optimiser for c in cells} == {e.name for e in KFAC_CELLS}
    assert {c.optimiser for c in cells} <= set(optimiser_names())
    step_rule = {"constant": "constant", "alpha": "alpha", "alpha-mom": "alpha-momentum"}
    for cell in cells:
        entry = get_optimiser(cell.optimiser)
        opt = entry.build(tiny_net(), "cross_entropy", {}).optimizer
        assert opt.step_rule == step_rule[cell.rule], cell
        assert opt.damping_update == ("adaptive" if cell.damping == "adaptive" else "fixed"), cell
        if cell.damping == "none":
            assert opt.damping == NO_DAMPING and "damping_decay" not in entry.defaults
        else:
            assert opt.damping == 1.0  # the placeholder, tuned
    # the two cells that are the paper's configurations: the same builder and defaults
    assert dict(KFAC_CELL_ALIASES) == {
        "kfac-alpha-mom-adaptive": "kfac",
        "kfac-const-fixed": "kfac-unadaptive",
    }
    for cell_name, paper_name in KFAC_CELL_ALIASES.items():
        cell_entry, paper_entry = get_optimiser(cell_name), get_optimiser(paper_name)
        assert cell_entry.builder is paper_entry.builder
        assert dict(cell_entry.defaults) == dict(paper_entry.defaults)
    paper_cells = {c.optimiser: c.paper for c in cells if c.paper}
    assert paper_cells == {
        "kfac-alpha-mom-adaptive": "K-FAC",
        "kfac-const-fixed": "K-FAC (Unadaptive)",
    }


def test_kfac_cells_search_spaces():
    from adamqlr.experiment.optimisers import get_optimiser
    from adamqlr.tune.spaces import LogUniform, OneMinus, search_space

    for cell in _kfac_cells():
        space = search_space(cell.optimiser, "fashion-mnist")
        assert set(space) <= set(get_optimiser(cell.optimiser).defaults) | {"batch_size"}
        expected = {"batch_size"}
        if cell.rule == "constant":
            expected |= {"lr", "momentum"}
            assert space["lr"] == LogUniform(1e-6, 1.0)
            assert space["momentum"] == OneMinus(1e-4, 0.3)
        if cell.damping != "none":
            expected.add("initial_damping")
            assert space["initial_damping"] == LogUniform(1e-8, 1.0)
        assert set(space) == expected, cell.optimiser
    assert search_space("kfac-alpha-mom-adaptive", "svhn") == search_space("kfac", "svhn")
    assert search_space("kfac-const-fixed", "svhn") == search_space("kfac-unadaptive", "svhn")
    assert search_space("kfac-const-none", "penn-treebank")["lr"] == LogUniform(1e-4, 1e2)


def _tiny_task(kind: str):
    torch.manual_seed(0)
    if kind == "regression":
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        return model, "squared_error", torch.randn(32, 4), torch.randn(32, 2)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return model, "cross_entropy", torch.randn(32, 4), torch.randint(0, 3, (32,))


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_every_kfac_cell_builds_and_takes_three_finite_steps(kind):
    from adamqlr.experiment.optimisers import get_optimiser

    for cell in _kfac_cells():
        model, loss, x, y = _tiny_task(kind)
        before = [p.detach().clone() for p in model.parameters()]
        stepper = get_optimiser(cell.optimiser).build(model, loss, {})
        for _ in range(3):
            stats = stepper.step(x, y)
            assert stats["accepted"] == 1.0, cell.optimiser
            for key in ("loss", "lr", "momentum", "damping"):
                assert math.isfinite(stats[key]), (cell.optimiser, key, stats[key])
            assert math.isfinite(stats["rho"]) == (cell.damping == "adaptive"), cell.optimiser
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_a_state_dict_of_other_rules_is_refused_naming_them():
    loss = CrossEntropyLoss()
    model = tiny_net()
    opt = KFAC(model, loss, step_rule="alpha", damping_update="fixed")
    opt.step(*batch(loss))
    state = opt.state_dict()
    with pytest.raises(ValueError, match="saved with step_rule='alpha'.*'alpha-momentum'"):
        KFAC(model, loss, damping_update="fixed").load_state_dict(state)
    with pytest.raises(ValueError, match="saved with damping_update='fixed'.*'adaptive'"):
        KFAC(model, loss, step_rule="alpha").load_state_dict(state)
    # a state dict saved before the options existed has neither key: it loads as it is
    del state["state"]["kfac"]["step_rule"], state["state"]["kfac"]["damping_update"]
    twin = KFAC(model, loss, step_rule="alpha", damping_update="fixed")
    twin.load_state_dict(state)
    assert twin.state["kfac"]["step_rule"] == "alpha"
