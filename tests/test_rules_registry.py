"""The factorial's SGD and Adam cells in the optimiser registry and the search spaces."""

from __future__ import annotations

import math

import pytest
import torch
from _models import classification, mlp, regression
from torch import nn

from adamqlr.experiment.optimisers import CELL_ALIASES, get_optimiser, optimiser_names
from adamqlr.studies.factorial import CELLS
from adamqlr.tune.spaces import BATCH_SIZES, Choice, LogUniform, search_space

CELL_NAMES = [
    f"{direction}-{rule}-{damping}"
    for direction in ("sgd", "adam")
    for rule in ("alpha", "alpha-mom")
    for damping in ("none", "fixed", "adaptive")
]


def test_every_sgd_and_adam_cell_of_the_study_is_registered():
    study = {c.optimiser for c in CELLS if c.direction in ("SGD", "Adam")}
    assert study == set(CELL_NAMES) | {"sgd", "adam"}
    assert set(CELL_NAMES) <= set(optimiser_names())
    for name in ("sgd-const-fixed", "adam-const-adaptive", "adam-constant-fixed"):
        assert name not in optimiser_names()


@pytest.mark.parametrize("name", CELL_NAMES)
def test_each_cell_builds_the_rule_it_names_and_takes_finite_steps(name):
    direction, rest = name.split("-", 1)
    rule, damping = rest.rsplit("-", 1)
    entry = get_optimiser(name)
    for kind in ("regression", "classification"):
        model = mlp((5, 4, 3), nn.Tanh)
        if kind == "regression":
            x, y = regression()
            stepper = entry.build(model, "squared_error")
        else:
            x, y = classification(model)
            stepper = entry.build(model, "cross_entropy")
        opt = stepper.optimizer
        assert type(opt).__name__ == ("AdamQLR" if direction == "adam" else "SGDQLR")
        assert opt.step_rule == ("alpha-momentum" if rule == "alpha-mom" else "alpha")
        assert opt.damping_mode == damping
        rows = [stepper.step(x, y) for _ in range(3)]
        assert all(math.isfinite(r["loss"]) and r["accepted"] == 1.0 for r in rows)
        assert all(math.isfinite(v) for v in (p.sum().item() for p in model.parameters()))
        if rule == "alpha-mom":
            assert math.isfinite(rows[-1]["momentum"])
        else:
            assert math.isnan(rows[-1]["momentum"])
        if damping != "adaptive":
            assert all(math.isnan(r["rho"]) for r in rows)
        if damping == "fixed":
            assert all(r["damping"] == entry.defaults["initial_damping"] for r in rows)


@pytest.mark.parametrize(("cell", "target"), sorted(CELL_ALIASES.items()))
def test_an_alias_cell_builds_exactly_its_target_under_its_own_name(cell, target):
    alias, original = get_optimiser(cell), get_optimiser(target)
    assert alias.name == cell != original.name
    assert alias.builder is original.builder
    assert dict(alias.defaults) == dict(original.defaults)
    results = []
    for entry in (alias, original):
        model = mlp((5, 4, 3), nn.Tanh)
        x, y = classification(model)
        stepper = entry.build(model, "cross_entropy")
        rows = [stepper.step(x, y) for _ in range(3)]
        results.append((rows, torch.cat([p.detach().reshape(-1) for p in model.parameters()])))
    (rows_a, params_a), (rows_b, params_b) = results
    assert rows_a == rows_b or all(
        all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)
        for a, b in zip(rows_a, rows_b, strict=True)
    )
    assert torch.equal(params_a, params_b)


def test_the_paper_entries_resolve_to_the_same_hyperparameters_as_before():
    # the cells' options are absent from the paper's entries, whose records keep their keys
    for name in ("adamqlr", "adamqlr-undamped", "sgdqlr", "adamqlr-untuned"):
        assert not {"damping_mode", "step_rule", "rho_data"} & set(get_optimiser(name).defaults)


@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("task", ["uci-energy", "rosenbrock"])
def test_search_spaces_follow_the_damping(name, task):
    damping = name.rsplit("-", 1)[1]
    space = search_space(name, task)
    expected: dict = {
        "none": {},
        "fixed": {"initial_damping": LogUniform(1e-8, 1.0)},
        "adaptive": {
            "initial_damping": LogUniform(1e-8, 1.0),
            "damping_decrease": LogUniform(0.5, 1.0),
            "damping_increase": LogUniform(1.0, 4.0),
        },
    }[damping]
    if task != "rosenbrock":
        expected = expected | {"batch_size": Choice(BATCH_SIZES)}
    assert space == expected
    assert set(space) - {"batch_size"} <= set(get_optimiser(name).defaults)
    if name in CELL_ALIASES:
        assert space == search_space(CELL_ALIASES[name], task)


@pytest.mark.parametrize(
    ("name", "paper"),
    [("adamqlr-heldout", "adamqlr"), ("adamqlr-untuned-heldout", "adamqlr-untuned")],
)
def test_the_heldout_entries_are_the_paper_entries_with_rho_on_the_next_batch(name, paper):
    entry, original = get_optimiser(name), get_optimiser(paper)
    assert dict(entry.defaults) == {**original.defaults, "rho_data": "next"}
    assert entry.batch_size == original.batch_size
    assert search_space(name, "uci-energy") == search_space(paper, "uci-energy")
    model = mlp((5, 4, 3), nn.Tanh)
    stepper = entry.build(model, "cross_entropy")
    assert stepper.optimizer.rho_data == "next"
    rows = [stepper.step(*classification(model, seed=s)) for s in range(3)]
    assert math.isnan(rows[0]["rho"]) and all(math.isfinite(r["rho"]) for r in rows[1:])
    assert (
        get_optimiser(paper).build(mlp((5, 4, 3), nn.Tanh), "cross_entropy").optimizer.rho_data
        == "same"
    )
