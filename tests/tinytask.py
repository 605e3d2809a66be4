"""Tiny synthetic tasks for the experiment and results tests (registered by the tests only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.studies import Arm, BestOf, Study, grid
from adamqlr.tasks import Split, Task, TaskData, TaskProfile

_PROFILES = {
    "smoke": TaskProfile(batch_size=16, epochs=3, eval_every=2),
    "quick": TaskProfile(batch_size=16, epochs=5, eval_every=4),
    "paper": TaskProfile(batch_size=32, epochs=10, eval_every=1),
}


def _data(n: int, classification: bool, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    if classification:
        y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    else:
        y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(n, generator=g))[:, None]
    return Split(x, y)


class TinyRegression(Task):
    """4 -> 8 -> 1 MLP on a noisy linear target, 70 training rows (last batch incomplete)."""

    name = "tiny-regression"
    title = "Tiny regression"
    loss = "squared_error"
    classification = False
    sizes = (70, 20, 20)

    def profile(self, name: str) -> TaskProfile:
        if name not in _PROFILES:
            raise ValueError(f"unknown profile {name!r}")
        return _PROFILES[name]

    def load_data(self, profile: str) -> TaskData:
        n_train, n_val, n_test = self.sizes
        return TaskData(
            _data(n_train, self.classification, 1),
            _data(n_val, self.classification, 2),
            _data(n_test, self.classification, 3),
            meta={"dataset": f"synthetic {self.name}", "source": "generated"},
        )

    def make_model(self, seed: int, profile: str) -> nn.Module:
        torch.manual_seed(seed)
        out = 3 if self.classification else 1
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, out)).double().float()


class TinyClassification(TinyRegression):
    """Three-class version (cross-entropy, accuracy logged)."""

    name = "tiny-classification"
    title = "Tiny classification"
    loss = "cross_entropy"
    classification = True


class TinyDropout(TinyClassification):
    """With dropout, so resuming must restore the global random state too."""

    name = "tiny-dropout"
    title = "Tiny dropout"

    def make_model(self, seed: int, profile: str) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


class TinyMissingData(TinyRegression):
    """Its data cannot be found (as a loader says when a file is missing)."""

    name = "tiny-missing-data"

    def load_data(self, profile: str) -> TaskData:
        raise FileNotFoundError("tiny.csv not found (expected sha256 0123...)")


TINY_TASKS = {
    "tiny-missing-data": "tinytask:TinyMissingData",
    "tiny-regression": "tinytask:TinyRegression",
    "tiny-classification": "tinytask:TinyClassification",
    "tiny-dropout": "tinytask:TinyDropout",
}


def register() -> None:
    """Add the tiny tasks to the task registry (for subprocesses; tests use monkeypatch)."""
    from adamqlr.tasks import TASKS

    TASKS.update(TINY_TASKS)


def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register :data:`TINY_TASKS` and use one torch thread while a test runs (fixture body)."""
    from adamqlr.tasks import TASKS

    for name, where in TINY_TASKS.items():
        monkeypatch.setitem(TASKS, name, where)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(optimiser="adam", **kw) -> ExperimentSpec:
    return ExperimentSpec("tiny-regression", optimiser, profile="smoke", **kw)


def tiny_study(name="tiny-study") -> Study:
    """A fixed arm, a tuned arm (2 learning rates) and an arm around the tuned arm's choice."""
    return Study(
        name,
        "smoke",
        "tiny",
        (
            Arm("fixed", "Adam (Untuned)", tiny("adam-untuned"), seeds=(0,)),
            Arm("tuned", "Adam", tiny(), seeds=(0, 1), grid=grid({"lr": (1e-4, 3e-2)})),
            Arm(
                "around", "Adam, batch 8", BestOf(name, "tuned"), (0,), overrides={"batch_size": 8}
            ),
        ),
    )
