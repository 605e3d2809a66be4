"""Small, exact training loops for the derivation chapters (not the experiment runner).

The chapters train for a few hundred steps and look *inside* the optimiser at chosen steps, which
the wall-clock-honest loop of :mod:`adamqlr.experiment` is not built for. These helpers keep that
logic in the package: an endless stream of shuffled mini-batches, and a loop that records every
:class:`adamqlr.StepStats` of a quadratic-model optimiser. A whole split's loss is the experiment
runner's :func:`adamqlr.experiment.loop.evaluate`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from adamqlr.optim import QuadraticModelOptimizer
from adamqlr.profiles import Profile
from adamqlr.tasks import get_task
from adamqlr.tasks.base import Split, Task, TaskData

__all__ = ["batch_stream", "fashion_mnist_setup", "record_steps"]


def batch_stream(
    split: Split, batch_size: int, seed: int, *, dtype: torch.dtype | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield shuffled mini-batches for ever, reshuffling each epoch (no partial batches).

    Args:
        split: The data.
        batch_size: Examples per batch, at most ``len(split)``.
        seed: Seed of the shuffling.
        dtype: If given, the inputs are converted to it (and floating targets too).

    Yields:
        ``(inputs, targets)``.

    Raises:
        ValueError: If ``batch_size`` is not in ``[1, len(split)]``.
    """
    n = len(split)
    if not 1 <= batch_size <= n:
        raise ValueError(f"invalid batch_size: {batch_size!r} (expected 1..{n})")
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            x, t = split.inputs[idx], split.targets[idx]
            if dtype is not None:
                x = x.to(dtype)
                t = t.to(dtype) if t.is_floating_point() else t
            yield x, t


def record_steps(
    optimizer: QuadraticModelOptimizer,
    batches: Iterator[tuple[Tensor, Tensor]],
    steps: int,
    *,
    label: str | None = None,
    callback: Callable[[int, QuadraticModelOptimizer], dict[str, Any] | None] | None = None,
) -> pd.DataFrame:
    """Take ``steps`` optimiser steps and return every step's statistics as a table.

    Rejected steps (a warning each from the optimiser) are recorded in the ``accepted`` and
    ``reason`` columns instead of being printed.

    Args:
        optimizer: An :class:`adamqlr.AdamQLR` or :class:`adamqlr.SGDQLR`.
        batches: Source of mini-batches.
        steps: Number of calls to ``optimizer.step``.
        label: If given, a ``label`` column with this value.
        callback: Called after each step with ``(iteration, optimizer)``; a returned dict is
            added to that step's row.

    Returns:
        One row per step: ``iteration`` (1-based) and the fields of :class:`adamqlr.StepStats`.
    """
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(1, steps + 1):
            inputs, targets = next(batches)
            row = {"iteration": i, **optimizer.step(inputs, targets).as_dict()}
            if callback is not None:
                row.update(callback(i, optimizer) or {})
            rows.append(row)
    frame = pd.DataFrame(rows)
    if label is not None:
        frame.insert(0, "label", label)
    return frame


def fashion_mnist_setup(
    profile: Profile | str, seed: int = 0, *, dtype: torch.dtype = torch.float32
) -> tuple[Task, TaskData, nn.Module]:
    """Return the Fashion-MNIST task, its data under ``profile`` and a fresh model in ``dtype``.

    The one place the chapters load Fashion-MNIST (via :func:`adamqlr.tasks.get_task`).

    Raises:
        ValueError: If ``profile`` is unknown.
        adamqlr.data.DataError: If a data file is missing or corrupt.
    """
    task = get_task("fashion-mnist")
    data = task.load_data(profile)
    model = task.make_model(seed, profile).to(dtype)
    return task, data, model
