"""Pieces shared by the data-backed tasks: the data store, standardisation, subsets, the MLP.

Conventions of every data task here (the official code's, with the choice noted where we differ):

* Splits are contiguous slices of the stored order: validation is the end of the official
  training block, never a random draw.
* Inputs (and, for regression, targets) are standardised with the statistics of the training
  examples actually trained on, per feature (per pixel for Fashion-MNIST, per channel for images);
  a zero standard deviation is replaced by 1. The official code takes the statistics over its
  train+validation block; we keep validation out of them.
* A profile may train and evaluate on the first ``train_size`` / ``val_size`` / ``test_size``
  examples only (:class:`~adamqlr.tasks.base.TaskProfile`); the subsets are taken before
  standardisation, so the training subset is itself exactly standardised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from adamqlr.data.store import DataStore
from adamqlr.profiles import Profile, pick
from adamqlr.tasks.base import Split, Task, TaskData, TaskProfile

__all__ = [
    "DataTask",
    "MLP",
    "first",
    "haiku_linear_init_",
    "standardise",
    "to_split",
]


def first(array: np.ndarray, n: int | None) -> np.ndarray:
    """Return the first ``n`` rows of ``array`` (all of them when ``n`` is ``None``).

    Raises:
        ValueError: If ``n`` is not a positive int or exceeds the number of rows.
    """
    if n is None:
        return array
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"subset size must be a positive int or None, got {n!r}")
    if n > len(array):
        raise ValueError(f"subset size {n} exceeds the {len(array)} examples available")
    return array[:n]


def standardise(
    train: np.ndarray, *others: np.ndarray, axis: int | tuple[int, ...] = 0
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Standardise ``train`` and ``others`` with the mean and std of ``train`` over ``axis``.

    The statistics are accumulated in float64; the standardised arrays are float32 (what the
    models use), computed in place on one copy of each input.

    Args:
        train: The training array; its statistics are used for every array.
        *others: Further arrays of the same trailing layout (validation, test).
        axis: The axes reduced over (``0``: per feature; ``(0, 2, 3)``: per channel of NCHW images).

    Returns:
        ``([train, *others] standardised as float32, mean, std)`` with float64 ``mean`` and
        ``std`` (keeping the reduced axes), zero stds replaced by 1.
    """
    arrays = [np.array(a, dtype=np.float32) for a in (train, *others)]
    mean = arrays[0].mean(axis=axis, keepdims=True, dtype=np.float64)
    centred = arrays[0] - mean.astype(np.float32)
    var = np.square(centred).mean(axis=axis, keepdims=True, dtype=np.float64)
    del centred
    std = np.sqrt(var)
    std = np.where(std > 0, std, 1.0)
    for a in arrays:
        a -= mean.astype(np.float32)
        a /= std.astype(np.float32)
    return arrays, mean, std


def to_split(inputs: np.ndarray, targets: np.ndarray) -> Split:
    """Wrap arrays as a :class:`Split`: float inputs become float32, integer targets int64."""
    x = torch.from_numpy(np.ascontiguousarray(inputs))
    x = x.to(torch.float32) if x.is_floating_point() else x.to(torch.int64)
    t = torch.from_numpy(np.ascontiguousarray(targets))
    t = t.to(torch.float32) if t.is_floating_point() else t.to(torch.int64)
    return Split(x, t)


def haiku_linear_init_(weight: Tensor, generator: torch.Generator) -> Tensor:
    """Initialise a weight as Haiku does: truncated normal, sigma = 1/sqrt(fan_in), cut at 2 sigma.

    ``fan_in`` is the product of all dimensions but the first (torch's ``(out, in, ...)`` layout).
    """
    fan_in = math.prod(weight.shape[1:])
    std = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std, generator=generator)


class MLP(nn.Sequential):
    """A fully connected ReLU network, initialised as Haiku's ``hk.nets.MLP``.

    Weights are truncated normal with ``sigma = 1/sqrt(fan_in)`` (cut at +-2 sigma), biases zero,
    ReLU between layers and none after the last.

    Args:
        sizes: Layer widths including input and output, e.g. ``(784, 50, 10)``.
        generator: Source of the initial weights (deterministic given its seed).

    Raises:
        ValueError: If fewer than two sizes are given or a size is not a positive int.
    """

    def __init__(self, sizes: Sequence[int], generator: torch.Generator) -> None:
        if len(sizes) < 2 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes
        ):
            raise ValueError(f"sizes must be at least two positive ints, got {sizes!r}")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            linear = nn.Linear(n_in, n_out)
            haiku_linear_init_(linear.weight, generator)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        self.sizes = tuple(sizes)


class DataTask(Task):
    """A task whose data come from files in the registry (:mod:`adamqlr.data`).

    Args:
        store: Where files are found and verified; default a :class:`DataStore` built from the
            environment when data are first needed (so ``ADAMQLR_DATA`` may be set after import).
    """

    #: Profile name -> budget; filled in by each task.
    PROFILES: dict[Profile, TaskProfile] = {}

    def __init__(self, store: DataStore | None = None) -> None:
        self._store = store

    @property
    def store(self) -> DataStore:
        """The data store (created from the environment on first use)."""
        if self._store is None:
            return DataStore()
        return self._store

    def profile(self, name: Profile | str) -> TaskProfile:
        """Return the budget of this task under profile ``name``.

        Raises:
            ValueError: If ``name`` names no profile (:func:`adamqlr.profiles.parse_profile`).
        """
        return pick(self.PROFILES, name)

    def _files(self, keys: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Locate and verify ``keys``; return ``(paths by key, provenance for TaskData.meta)``."""
        store = self.store
        paths: dict[str, Any] = {}
        sha: dict[str, str] = {}
        sources: dict[str, str] = {}
        for key in keys:
            path, source, digest = store.locate(key)
            paths[key] = path
            sha[key] = digest
            sources[key] = source
        return paths, {"files": sha, "file_sources": sources}

    def _task_data(
        self,
        train: Split,
        val: Split,
        test: Split,
        profile: str,
        dataset: str,
        provenance: dict[str, Any],
        **extra: Any,
    ) -> TaskData:
        meta = {
            "task": self.name,
            "dataset": dataset,
            "profile": profile,
            "sizes": {"train": len(train), "val": len(val), "test": len(test)},
            **provenance,
            **extra,
        }
        return TaskData(train=train, val=val, test=test, meta=meta)

    def _sizes(self, profile: str) -> tuple[int | None, int | None, int | None]:
        prof = self.profile(profile)
        return prof.train_size, prof.val_size, prof.test_size
