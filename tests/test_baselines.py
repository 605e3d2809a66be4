"""The K-FAC and Baydin-SGD registry entries: names, defaults, and a Stepper that trains."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from adamqlr.experiment.optimisers import Stepper, get_optimiser, optimiser_names

NAMES = ("kfac", "kfac-unadaptive", "kfac-untuned", "baydin-sgd")


def test_entries_are_registered_with_the_paper_defaults():
    assert set(NAMES) <= set(optimiser_names())
    kfac = get_optimiser("kfac")
    assert kfac.label == "K-FAC"
    assert kfac.defaults["initial_damping"] == 1.0 and kfac.defaults["ema_decay"] == 0.95
    assert kfac.defaults["damping_decay"] == 0.9 and kfac.defaults["damping_min"] == 1e-8
    assert kfac.defaults["inverse_update_period"] == 1 and kfac.defaults["damping_interval"] == 1
    untuned = get_optimiser("kfac-untuned")
    assert untuned.default_batch_size("fashion-mnist") == 3200
    assert untuned.default_batch_size("penn-treebank") is None
    unadaptive = get_optimiser("kfac-unadaptive").defaults
    assert (unadaptive["lr"], unadaptive["momentum"], unadaptive["initial_damping"]) == (
        1e-3,
        0.9,
        1.0,
    )
    assert dict(get_optimiser("baydin-sgd").defaults) == {"lr": 1e-3, "hypergrad_lr": 1e-3}


@pytest.mark.parametrize("name", NAMES)
def test_stepper_trains_and_round_trips(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    hparams = {"lr": 0.05} if name in ("baydin-sgd", "kfac-unadaptive") else {}
    stepper = get_optimiser(name).build(model, "cross_entropy", hparams)
    assert isinstance(stepper, Stepper)
    first = stepper.step(x, y)
    assert set(first) >= {"loss", "lr"} and all(isinstance(v, float) for v in first.values())
    for _ in range(8):
        last = stepper.step(x, y)
    assert last["loss"] < first["loss"]
    buffer = io.BytesIO()
    torch.save(stepper.state_dict(), buffer)
    buffer.seek(0)
    twin = copy.deepcopy(model)
    twin_stepper = get_optimiser(name).build(twin, "cross_entropy", hparams)
    twin_stepper.load_state_dict(torch.load(buffer, weights_only=True))
    rng = torch.get_rng_state()
    a = stepper.step(x, y)
    torch.set_rng_state(rng)
    b = twin_stepper.step(x, y)
    assert a == b
