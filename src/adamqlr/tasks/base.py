"""What every task provides: data splits, a model, a loss, batches, and per-profile budgets.

A task is a small object with a name; :func:`adamqlr.tasks.get_task` returns it by name. The
training loop (:mod:`adamqlr.experiment`) only talks to this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from adamqlr.profiles import PROFILES, Profile

__all__ = ["PROFILES", "Split", "Task", "TaskData", "TaskProfile"]


@dataclass(frozen=True)
class Split:
    """One data split held in memory (already preprocessed, e.g. standardised).

    Attributes:
        inputs: Model inputs, first dimension = examples (for language modelling: token ids of
            shape ``(N, T)``).
        targets: Targets, first dimension = examples.
    """

    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass(frozen=True)
class TaskData:
    """The train, validation and test splits of a task, with a description of their origin.

    Attributes:
        train: Training split.
        val: Validation split.
        test: Test split.
        meta: Provenance that every record and figure must carry, e.g.
            ``{"dataset": "CIFAR-10 (JPEG re-encoding)", "source": "mirror", "sha256": {...}}``.
    """

    train: Split
    val: Split
    test: Split
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskProfile:
    """Budget and scale of a task under one profile.

    Attributes:
        batch_size: Default (untuned) mini-batch size.
        epochs: Epoch budget (``None`` when the budget is in steps or seconds only).
        steps: Step budget (``None`` when given in epochs).
        time_limit_s: Wall-clock cap on optimisation time in seconds (``None``: no cap).
        eval_every: Evaluate validation/test every this many steps.
        train_size: Use only the first this many training examples (``None``: all).
        model: Name of the model configuration (e.g. ``"gpt2-small-cpu"``), task-specific.
        val_size: Use only the first this many validation examples (``None``: all).
        test_size: Use only the first this many test examples (``None``: all).
    """

    batch_size: int
    epochs: float | None = None
    steps: int | None = None
    time_limit_s: float | None = None
    eval_every: int = 1
    train_size: int | None = None
    model: str = "default"
    val_size: int | None = None
    test_size: int | None = None


class Task(ABC):
    """A benchmark problem of the paper.

    Attributes:
        name: Registry name, e.g. ``"fashion-mnist"``.
        title: Human-readable name for figures, e.g. ``"Fashion-MNIST"``.
        loss: ``"cross_entropy"`` or ``"squared_error"`` (:mod:`adamqlr.losses`).
        classification: Whether accuracy is meaningful.
    """

    name: str
    title: str
    loss: str
    classification: bool

    @abstractmethod
    def profile(self, name: Profile | str) -> TaskProfile:
        """Return the budget of this task under profile ``name`` (see :mod:`adamqlr.profiles`)."""

    @abstractmethod
    def load_data(self, profile: Profile | str) -> TaskData:
        """Load (download or read from the mirror, verify, preprocess) the splits."""

    @abstractmethod
    def make_model(self, seed: int, profile: Profile | str) -> nn.Module:
        """Return a freshly initialised model, deterministic given ``seed``."""

    def batches(
        self, split: Split, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield one epoch of shuffled mini-batches (the last one may be smaller; no padding).

        Tasks with augmentation (CIFAR-10) override this and draw from ``generator`` only, so a
        run is repeatable from its seed and resumable from the generator's state.
        """
        n = len(split)
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield split.inputs[idx], split.targets[idx]
