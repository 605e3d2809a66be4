"""Experiment specs: validation, normalisation, stable keys; the optimiser registry."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tinytask import TINY_TASKS

from adamqlr.experiment import optimisers as opt_mod
from adamqlr.experiment.optimisers import (
    OptimiserEntry,
    Stepper,
    get_optimiser,
    optimiser_names,
    register_optimiser,
)
from adamqlr.experiment.spec import ExperimentSpec, canonical_json, parse_seeds
from adamqlr.tasks import TASKS

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def tiny_tasks(monkeypatch):
    for name, where in TINY_TASKS.items():
        monkeypatch.setitem(TASKS, name, where)


def spec(**kw):
    base = dict(task="tiny-regression", optimiser="adam", profile="smoke", seed=0)
    return ExperimentSpec(**(base | kw))


def test_spec_is_frozen_hashable_and_normalised():
    a = spec(hyperparameters={"lr": 1, "betas": [0.9, 0.99]})
    b = spec(hyperparameters=(("betas", (0.9, 0.99)), ("lr", 1)))
    assert a == b and hash(a) == hash(b)
    assert a.hyperparameters == (("betas", (0.9, 0.99)), ("lr", 1))
    with pytest.raises(AttributeError):
        a.seed = 3  # type: ignore[misc]
    assert {a, b} == {a}


def test_key_ignores_order_spelling_and_device_but_not_content():
    base = spec(hyperparameters={"lr": 1e-3, "eps": 1e-8})
    same = [
        spec(hyperparameters={"eps": 1e-8, "lr": 0.001}),
        spec(),  # these are the defaults
        spec(batch_size=16),  # the profile's batch size
        spec(device="cpu"),
        spec(epochs=None),
        spec(epochs=3),  # the smoke profile's budget, given explicitly
    ]
    for other in same:
        assert other.key == base.key, other
    assert spec(hyperparameters={"lr": 1}).key == spec(hyperparameters={"lr": 1.0}).key
    different = [
        spec(seed=1),
        spec(hyperparameters={"lr": 2e-3}),
        spec(batch_size=8),
        spec(epochs=4),
        spec(steps=3),
        spec(profile="quick"),
        spec(optimiser="adam-untuned"),
        spec(task="tiny-classification"),
        spec(padding_dilution=True),
        spec(eval_every=5),
    ]
    keys = {d.key for d in different}
    assert base.key not in keys
    assert len(keys) == len(different)
    assert len(base.key) == 64 and int(base.key, 16) >= 0


def test_key_is_stable_across_processes():
    """The key does not depend on dict order or hash randomisation (PYTHONHASHSEED)."""
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import tinytask; tinytask.register();"
        "from adamqlr.experiment.spec import ExperimentSpec;"
        "print(ExperimentSpec('tiny-regression', 'adamqlr', profile='smoke', seed=3,"
        " hyperparameters={'initial_damping': 0.1, 'damping_decrease': 0.7}).key)"
    )
    keys = set()
    for seed in (str(1 + int(os.environ.get("PYTHONHASHSEED", "0") or 0)),):  # not ours
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        )
        keys.add(out.stdout.strip())
    here = spec(
        optimiser="adamqlr",
        seed=3,
        hyperparameters={"damping_decrease": 0.7, "initial_damping": 0.1},
    ).key
    assert keys == {here}


def test_settings_resolve_defaults():
    s = spec(optimiser="adamqlr-untuned").settings()
    assert s.batch_size == 3200  # untuned AdamQLR's own batch size
    assert s.epochs == 3.0 and s.steps is None and s.seconds is None  # the smoke profile
    assert s.eval_every == 2
    assert s.hparams["initial_damping"] == 1e-3 and s.hparams["curvature"] == "fisher"
    s = spec(optimiser="adamqlr-untuned", batch_size=7, steps=4).settings()
    assert (s.batch_size, s.epochs, s.steps) == (7, None, 4)
    assert get_optimiser("adamqlr-untuned").default_batch_size("penn-treebank") is None
    # the settings are JSON-able and canonical JSON refuses NaN
    json.loads(canonical_json(s.as_dict()))
    with pytest.raises(ValueError):
        canonical_json({"x": math.nan})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="nope"), "unknown task 'nope'"),
        (dict(optimiser="adamw"), "unknown optimiser 'adamw'"),
        (dict(profile="huge"), "unknown profile 'huge'"),
        (dict(seed=-1), "invalid seed: -1"),
        (dict(seed=1.5), "invalid seed: 1.5"),
        (dict(seed=True), "invalid seed: True"),
        (dict(steps=0), "invalid steps: 0"),
        (dict(steps=-3), "invalid steps: -3"),
        (dict(epochs=-1.0), "invalid epochs: -1.0"),
        (dict(epochs=math.inf), "invalid epochs: inf"),
        (dict(seconds=0), "invalid seconds: 0"),
        (dict(seconds=math.nan), "invalid seconds: nan"),
        (dict(batch_size=0), "invalid batch_size: 0"),
        (dict(eval_every=0), "invalid eval_every: 0"),
        (dict(hyperparameters={"momentum": 0.9}), "unknown hyperparameter 'momentum'"),
        (dict(hyperparameters={"lr": math.nan}), r"invalid hyperparameter lr=nan"),
        (dict(hyperparameters={"lr": {"a": 1}}), "invalid hyperparameter"),
        (dict(hyperparameters=5), "invalid hyperparameters 5"),
        (dict(padding_dilution="yes"), "invalid padding_dilution: 'yes'"),
        (dict(device="tpu"), "invalid device 'tpu'"),
    ],
)
def test_spec_validation_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        spec(**kwargs)


def test_padding_dilution_only_for_squared_error():
    spec(padding_dilution=True).settings()
    with pytest.raises(ValueError, match="padding_dilution=True for task 'tiny-classification'"):
        spec(task="tiny-classification", padding_dilution=True).settings()


def test_from_dict_round_trip_and_errors():
    s = spec(hyperparameters={"lr": 0.01}, steps=9, device="cpu")
    assert ExperimentSpec.from_dict(json.loads(json.dumps(s.as_dict()))) == s
    with pytest.raises(ValueError, match=r"unknown spec field\(s\) \['colour'\]"):
        ExperimentSpec.from_dict({"task": "tiny-regression", "optimiser": "adam", "colour": 1})
    with pytest.raises(ValueError, match="lacks required field"):
        ExperimentSpec.from_dict({"task": "tiny-regression"})
    assert "--set lr=0.01" in s.command() and "--steps 9" in s.command()


@pytest.mark.parametrize(
    "text, seeds",
    [("3", (3,)), ("0-4", (0, 1, 2, 3, 4)), ("0,2,7", (0, 2, 7)), ("0-1, 9", (0, 1, 9)), (5, (5,))],
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "3-1", "-1", "1,1", "0-2,2", "1.5"])
def test_parse_seeds_rejects(text):
    with pytest.raises(ValueError, match="invalid seeds"):
        parse_seeds(text)


# ----------------------------------------------------------------------------- optimisers
def _tiny_model(classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, classes))


@pytest.mark.parametrize("name", optimiser_names())
def test_every_registered_optimiser_steps_and_round_trips(name):
    entry = get_optimiser(name)
    torch.manual_seed(1)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    model = _tiny_model()
    stepper = entry.build(model, "cross_entropy")
    assert isinstance(stepper, Stepper)
    losses = [stepper.step(x, y)["loss"] for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)
    state = stepper.state_dict()
    # the state survives a weights-only torch.save/torch.load round trip and loads back
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    twin_model = _tiny_model()
    twin_model.load_state_dict(model.state_dict())
    twin = entry.build(twin_model, "cross_entropy")
    twin.load_state_dict(loaded)
    torch.manual_seed(7)  # steppers that sample (K-FAC) draw from the global generator
    a = stepper.step(x, y)
    torch.manual_seed(7)
    b = twin.step(x, y)
    assert a["loss"] == b["loss"]
    for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_sgd_full_is_optax_heavy_ball_with_coupled_decay():
    """v <- (g + w theta) + mu v (v_0 = g + w theta); theta <- theta - lr v, in float64."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    lr, mu, w = 0.05, 0.8, 0.01
    stepper = get_optimiser("sgd-full").build(
        model, "squared_error", {"lr": lr, "momentum": mu, "weight_decay": w}
    )
    theta = [p.detach().clone() for p in model.parameters()]
    v = [torch.zeros_like(t) for t in theta]
    for _ in range(4):
        ref = torch.nn.Linear(3, 1).double()
        with torch.no_grad():
            for p, t in zip(ref.parameters(), theta, strict=True):
                p.copy_(t)
        loss = 0.5 * (ref(x) - y).pow(2).sum(-1).mean()
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        stepper.step(x, y)
        for i, g in enumerate(grads):
            v[i] = (g + w * theta[i]) + mu * v[i]
            theta[i] = theta[i] - lr * v[i]
        for p, t in zip(model.parameters(), theta, strict=True):
            torch.testing.assert_close(p.detach(), t, rtol=1e-13, atol=1e-15)


def test_registry_extension_and_errors(monkeypatch):
    opt_mod.optimiser_names()  # load the providers into the real registry first
    monkeypatch.setattr(opt_mod, "_REGISTRY", dict(opt_mod._REGISTRY))
    entry = OptimiserEntry("my-sgd", "My SGD", opt_mod._sgd, {"lr": 0.5}, batch_size=8)
    assert register_optimiser(entry) is entry
    assert "my-sgd" in optimiser_names()
    assert spec(optimiser="my-sgd").settings().batch_size == 8
    with pytest.raises(ValueError, match="already registered"):
        register_optimiser(OptimiserEntry("my-sgd", "Other", opt_mod._sgd))
    with pytest.raises(ValueError, match="invalid optimiser name 'Bad Name'"):
        OptimiserEntry("Bad Name", "x", opt_mod._sgd)
    with pytest.raises(ValueError, match="invalid batch size 0"):
        OptimiserEntry("x", "x", opt_mod._sgd, batch_size=0)
    with pytest.raises(ValueError, match="unknown hyperparameter 'momentum' for optimiser 'sgd'"):
        get_optimiser("sgd").build(_tiny_model(), "cross_entropy", {"momentum": 0.9})
    with pytest.raises(ValueError, match="unknown optimiser"):
        get_optimiser("nope")


def test_providers_are_imported_lazily(monkeypatch):
    monkeypatch.setattr(opt_mod, "OPTIMISER_PROVIDERS", ["adamqlr._no_such_provider"])
    monkeypatch.setattr(opt_mod, "_loaded_providers", set())
    assert "adam" in optimiser_names()  # a provider that does not exist (yet) is skipped
