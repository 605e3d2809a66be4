"""The training loop reads the mini-batch accuracy from the stepper, not from a hook.

A forward hook on the model would keep AdamQLR (and K-FAC) off their layer-wise fast paths, so
every stepper hands back its gradient pass's outputs through ``last_outputs()``.
"""

from __future__ import annotations

import pytest
import torch
from tinytask import TINY_TASKS
from torch import nn

import adamqlr.baselines  # noqa: F401  (registers K-FAC)
from adamqlr.curvature import LayerwiseFisher, layerwise_plan
from adamqlr.experiment.loop import train
from adamqlr.experiment.optimisers import OPTIMISERS, QLRStepper, get_optimiser
from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.losses import get_loss
from adamqlr.tasks import TASKS, get_task


@pytest.fixture(autouse=True)
def tiny_tasks(monkeypatch):
    for name, cls in TINY_TASKS.items():
        monkeypatch.setitem(TASKS, name, cls)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_last_outputs_are_the_pre_step_outputs_of_every_stepper(name: str) -> None:
    model = _net()
    stepper = get_optimiser(name).build(model, "cross_entropy")
    assert stepper.last_outputs() is None  # nothing before the first step
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(11, 5, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (11,), generator=gen)
        with torch.no_grad():
            expected = model(x)
        stepper.step(x, y)
        got = stepper.last_outputs()
        assert got is not None and not got.requires_grad
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["uci-energy", "uci-protein", "fashion-mnist"])
@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_the_cpu_tasks_models_allow_the_layerwise_path(name: str, profile: str) -> None:
    task = get_task(name)
    assert layerwise_plan(task.make_model(0, profile)) is not None
    assert get_loss(
        task.loss
    ).has_closed_form_gradient()  # so no autograd graph in the gradient pass


@pytest.mark.parametrize("task", ["tiny-classification", "tiny-regression"])
def test_a_loop_run_keeps_adamqlr_on_the_fast_path(task: str, monkeypatch) -> None:
    engines: list[tuple[type, str]] = []
    original = QLRStepper.step

    def step(self, inputs, targets):
        stats = original(self, inputs, targets)
        engine = self.optimizer.curvature_engine
        engines.append((type(engine), engine.gradient_by))
        return stats

    monkeypatch.setattr(QLRStepper, "step", step)
    spec = ExperimentSpec(task=task, optimiser="adamqlr", profile="smoke", steps=4, seed=0)
    result = train(spec.settings(), progress=False)
    assert engines == [(LayerwiseFisher, "closed-form")] * 4
    frame = result.metrics.frame()
    if get_task(task).classification:
        assert frame["train_accuracy"].iloc[1:].between(0, 1).all()
    else:
        assert "train_accuracy" not in frame
