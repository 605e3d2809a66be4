"""Fashion-MNIST with a 784-50-10 ReLU MLP (39,760 parameters) and softmax cross-entropy.

Data: the four official IDX files. As in the official code, the first 50,000 images of the
60,000-image training file are the training split and its last 10,000 the validation split (a
contiguous slice, no shuffle); the official 10,000-image test file is the test split. Images are
flattened to 784 values and standardised per pixel with training-split statistics (pixels that
never vary keep std 1). Default batch 50, 10 epochs (10,000 steps).
"""

from __future__ import annotations

import torch
from torch import nn

from adamqlr.data.readers import FormatError, read_idx
from adamqlr.profiles import Profile
from adamqlr.tasks._common import MLP, DataTask, first, standardise, to_split
from adamqlr.tasks.base import TaskData, TaskProfile

__all__ = ["FashionMNIST"]

_FILES = {
    "train_images": "fashion-mnist/train-images-idx3-ubyte.gz",
    "train_labels": "fashion-mnist/train-labels-idx1-ubyte.gz",
    "test_images": "fashion-mnist/t10k-images-idx3-ubyte.gz",
    "test_labels": "fashion-mnist/t10k-labels-idx1-ubyte.gz",
}


class FashionMNIST(DataTask):
    """Fashion-MNIST: 50,000 / 10,000 / 10,000 images of 28x28, MLP 784-50-10."""

    name = "fashion-mnist"
    title = "Fashion-MNIST"
    loss = "cross_entropy"
    classification = True
    n_train, n_val = 50_000, 10_000
    PROFILES = {
        Profile.SMOKE: TaskProfile(
            batch_size=50,
            epochs=1,
            eval_every=5,
            train_size=1000,
            val_size=500,
            test_size=500,
            model="mlp-784-50-10",
        ),
        Profile.QUICK: TaskProfile(batch_size=50, epochs=2, eval_every=100, model="mlp-784-50-10"),
        Profile.PAPER: TaskProfile(batch_size=50, epochs=10, eval_every=100, model="mlp-784-50-10"),
    }

    def load_data(self, profile: str) -> TaskData:
        """Read the IDX files, split 50k/10k/10k and standardise per pixel.

        Raises:
            ValueError: If ``profile`` is unknown or a file has the wrong shape.
            adamqlr.data.DataError: If a file is missing or fails its checksum.
        """
        n_train, n_val, n_test = self._sizes(profile)
        paths, prov = self._files(list(_FILES.values()))
        arrays = {k: read_idx(paths[key]) for k, key in _FILES.items()}
        for split, n in (("train", self.n_train + self.n_val), ("test", None)):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
                raise FormatError(
                    f"Fashion-MNIST {split}: images {images.shape}, labels {labels.shape}"
                )
            if images.shape[0] != labels.shape[0] or (n is not None and images.shape[0] != n):
                raise FormatError(
                    f"Fashion-MNIST {split}: {images.shape[0]} images and {labels.shape[0]} labels"
                )
        x = arrays["train_images"].reshape(-1, 784)
        y = arrays["train_labels"].astype("int64")
        x_tr, y_tr = first(x[: self.n_train], n_train), first(y[: self.n_train], n_train)
        x_va, y_va = first(x[self.n_train :], n_val), first(y[self.n_train :], n_val)
        x_te = first(arrays["test_images"].reshape(-1, 784), n_test)
        y_te = first(arrays["test_labels"].astype("int64"), n_test)
        (x_tr, x_va, x_te), _, _ = standardise(x_tr, x_va, x_te)
        return self._task_data(
            to_split(x_tr, y_tr),
            to_split(x_va, y_va),
            to_split(x_te, y_te),
            profile,
            self.title,
            prov,
            classes=10,
            preprocessing="flattened; standardised per pixel with training-split statistics",
        )

    def make_model(self, seed: int, profile: str) -> nn.Module:
        """Return the 784-50-10 ReLU MLP, initialised from ``seed``.

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        self.profile(profile)
        return MLP((784, 50, 10), torch.Generator().manual_seed(seed))
