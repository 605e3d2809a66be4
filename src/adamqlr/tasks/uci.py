"""UCI Energy and UCI Protein: small regressions with a one-hidden-layer ReLU MLP.

Data (as the official code reads them): Gal & Ghahramani's ``data.txt`` copies of the UCI files
(inputs, then the target in the last column; for Energy the heating load), reordered by the
authors' fixed ``permutation_indices.txt``. The first rows of the permuted table are the
train+validation block and the rest the test set; validation is the end of that block:

=========== ======= ============= ========= ====== ============
task        rows    train / val / test        MLP    batch, epochs
=========== ======= ============= ========= ====== ============
UCI Energy  768     588 / 104 / 76            8-50-1  588 (full), 4000
UCI Protein 45,730  34,983 / 6,174 / 4,573    9-100-1 1000, 200
=========== ======= ============= ========= ====== ============

Inputs and targets are standardised with training-split statistics (``TaskData.meta`` records the
target's mean and std, to convert losses back to the original units). The loss is half the
squared error, averaged over examples (:class:`adamqlr.losses.SquaredErrorLoss`).

The official code pads the last batch with NaN rows, which its squared-error curvature term counts
(the authors' code, ``ab3dea5``). :func:`official_padding_loss` reproduces that on
purpose; everything else uses the loss as intended.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from adamqlr.data.readers import (
    read_csv_table,
    read_permutation,
    read_whitespace_table,
    read_xlsx_table,
)
from adamqlr.data.store import DataStore
from adamqlr.losses import Loss, SquaredErrorLoss
from adamqlr.profiles import Profile
from adamqlr.tasks._common import MLP, DataTask, first, standardise, to_split
from adamqlr.tasks.base import TaskData, TaskProfile

__all__ = ["UCIEnergy", "UCIProtein", "UCITask", "official_padding_loss"]


def official_padding_loss(batch_size: int) -> SquaredErrorLoss:
    """Return the squared-error loss whose curvature reproduces the official padding dilution.

    The official code pads the training set with NaN rows up to a multiple of the batch size and
    every batch has exactly ``batch_size`` rows. The loss and gradient average over the real rows
    only, but the squared-error Fisher/GGN term ``||J d||^2`` is divided by all ``batch_size``
    rows, so it is under-counted by ``real rows / batch_size`` (588/3200 = 0.18 for untuned
    AdamQLR on UCI Energy, whose step is then up to 5.4 times too long). Passing this loss to the
    optimiser divides the curvature by ``batch_size`` whatever the batch holds, which is exact
    when one batch holds the whole training set (``batch_size >= n_train``) and equal on average
    over an epoch otherwise (the official code spreads the padding over random batches; our last
    batch is simply short).

    Args:
        batch_size: The configured mini-batch size.

    Returns:
        ``SquaredErrorLoss(curvature_count=batch_size)``.

    Raises:
        ValueError: If ``batch_size`` is not a positive int.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return SquaredErrorLoss(curvature_count=batch_size)


class UCITask(DataTask):
    """A UCI regression task: permuted ``data.txt``, contiguous splits, standardised, MLP.

    Args:
        store: Data store (default: from the environment).
        source: ``"txt"`` (default: Gal & Ghahramani's ``data.txt``, what the official code reads)
            or one of the UCI originals this task knows (:attr:`ORIGINALS`), which hold the same
            rows in the same order with a few more digits.

    Raises:
        ValueError: If ``source`` is unknown.
    """

    loss = "squared_error"
    classification = False

    dataset: str  #: folder in the mirror
    n_rows: int
    n_train: int
    n_val: int
    n_test: int
    n_inputs: int  #: input features
    hidden: int  #: hidden width
    #: Original file name -> (input column names, target column name).
    ORIGINALS: dict[str, tuple[tuple[str, ...], str]] = {}

    def __init__(self, store: DataStore | None = None, source: str = "txt") -> None:
        super().__init__(store)
        if source != "txt" and source not in self.ORIGINALS:
            raise ValueError(
                f"unknown source {source!r} for {self.name}; expected 'txt' or one of "
                f"{sorted(self.ORIGINALS)}"
            )
        self.source = source

    def make_loss(self, batch_size: int | None = None, official_padding: bool = False) -> Loss:
        """Return the loss, optionally with the official code's padding dilution.

        Args:
            batch_size: The run's batch size (needed only with ``official_padding``).
            official_padding: Reproduce the official curvature under-count
                (:func:`official_padding_loss`).

        Raises:
            ValueError: If ``official_padding`` is set without a valid ``batch_size``.
        """
        if official_padding:
            if batch_size is None:
                raise ValueError("official_padding=True needs the run's batch_size")
            return official_padding_loss(batch_size)
        return SquaredErrorLoss()

    def _read_table(self) -> tuple[np.ndarray, dict]:
        perm_key = f"{self.dataset}/permutation_indices.txt"
        if self.source == "txt":
            key = f"{self.dataset}/data.txt"
            paths, prov = self._files([key, perm_key])
            table = read_whitespace_table(paths[key], columns=self.n_inputs + 1)
        else:
            key = f"{self.dataset}/{self.source}"
            paths, prov = self._files([key, perm_key])
            reader = read_xlsx_table if self.source.endswith(".xlsx") else read_csv_table
            header, raw = reader(paths[key])
            inputs, target = self.ORIGINALS[self.source]
            missing = [c for c in (*inputs, target) if c not in header]
            if missing:
                raise ValueError(f"{paths[key]}: columns {missing} missing from {header}")
            table = raw[:, [header.index(c) for c in (*inputs, target)]]
        if table.shape[0] != self.n_rows:
            raise ValueError(f"{paths[key]}: {table.shape[0]} rows, expected {self.n_rows}")
        perm = read_permutation(paths[perm_key], self.n_rows)
        return table[perm], prov

    def load_data(self, profile: str) -> TaskData:
        """Read, permute, split and standardise (inputs and targets) the data.

        Raises:
            ValueError: If ``profile`` is unknown or a file has the wrong shape.
            adamqlr.data.DataError: If a file is missing or fails its checksum.
        """
        n_train, n_val, n_test = self._sizes(profile)
        table, prov = self._read_table()
        block = self.n_train + self.n_val
        x, y = table[:, :-1], table[:, -1:]
        x_tr, x_va, x_te = (
            first(x[: self.n_train], n_train),
            first(x[self.n_train : block], n_val),
            first(x[block:], n_test),
        )
        y_tr, y_va, y_te = (
            first(y[: self.n_train], n_train),
            first(y[self.n_train : block], n_val),
            first(y[block:], n_test),
        )
        (x_tr, x_va, x_te), _, _ = standardise(x_tr, x_va, x_te)
        (y_tr, y_va, y_te), y_mean, y_std = standardise(y_tr, y_va, y_te)
        return self._task_data(
            to_split(x_tr, y_tr),
            to_split(x_va, y_va),
            to_split(x_te, y_te),
            profile,
            self.title,
            prov,
            source=self.source,
            target_mean=float(y_mean.item()),
            target_std=float(y_std.item()),
            preprocessing="rows permuted by the official file; inputs and targets standardised "
            "with training-split statistics",
        )

    def make_model(self, seed: int, profile: str) -> nn.Module:
        """Return the ``n_inputs``-``hidden``-1 ReLU MLP, initialised from ``seed``.

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        self.profile(profile)
        return MLP((self.n_inputs, self.hidden, 1), torch.Generator().manual_seed(seed))


class UCIEnergy(UCITask):
    """UCI Energy Efficiency (heating load): 768 rows, 588/104/76, MLP 8-50-1 (501 parameters)."""

    name = "uci-energy"
    title = "UCI Energy"
    dataset = "uci-energy"
    n_rows, n_train, n_val, n_test = 768, 588, 104, 76
    n_inputs, hidden = 8, 50
    ORIGINALS = {
        "ENB2012_data.xlsx": (tuple(f"X{i}" for i in range(1, 9)), "Y1"),
        "energy_efficiency.csv": (tuple(f"X{i}" for i in range(1, 9)), "Y1"),
    }
    PROFILES = {
        Profile.SMOKE: TaskProfile(batch_size=588, epochs=5, eval_every=1, model="mlp-8-50-1"),
        Profile.QUICK: TaskProfile(batch_size=588, epochs=1000, eval_every=10, model="mlp-8-50-1"),
        Profile.PAPER: TaskProfile(batch_size=588, epochs=4000, eval_every=10, model="mlp-8-50-1"),
    }


class UCIProtein(UCITask):
    """UCI Protein Tertiary Structure (RMSD): 45,730 rows, 34,983/6,174/4,573, MLP 9-100-1."""

    name = "uci-protein"
    title = "UCI Protein"
    dataset = "uci-protein"
    n_rows, n_train, n_val, n_test = 45730, 34983, 6174, 4573
    n_inputs, hidden = 9, 100
    ORIGINALS = {"CASP.csv": (tuple(f"F{i}" for i in range(1, 10)), "RMSD")}
    PROFILES = {
        Profile.SMOKE: TaskProfile(
            batch_size=1000,
            epochs=2,
            eval_every=1,
            train_size=2000,
            val_size=500,
            test_size=500,
            model="mlp-9-100-1",
        ),
        Profile.QUICK: TaskProfile(batch_size=1000, epochs=10, eval_every=35, model="mlp-9-100-1"),
        Profile.PAPER: TaskProfile(batch_size=1000, epochs=200, eval_every=35, model="mlp-9-100-1"),
    }
