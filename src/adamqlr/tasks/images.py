"""SVHN and CIFAR-10 with the ResNet-18 of the official code (Haiku's v1 ``ResNet18``).

The network is Haiku's ImageNet ResNet-18, used unchanged on 32x32 images
(as in the authors' code): a 7x7 stride-2 convolution (64 channels, no bias), batch norm,
ReLU and a 3x3 stride-2 max-pool; four groups of two basic blocks (64/128/256/512 channels,
strides 1/2/2/2, projection shortcuts in groups 2-4); global average pooling and a linear logits
layer whose weights start at zero. Convolutions use TensorFlow's "SAME" padding, as Haiku does
(asymmetric where the arithmetic requires it), and are initialised from a truncated normal with
``sigma = 1/sqrt(fan_in)``. Batch norm has decay 0.9 (torch ``momentum=0.1``) and ``eps=1e-5``;
unlike Haiku's zero-debiased moving averages, torch's running statistics start at mean 0 and
variance 1, which only affects evaluation in the first few dozen steps. About 11.2M parameters.

Splits (contiguous, as the official code): SVHN's 73,257 training images give 61,047 / 12,210,
its 26,032 test images the test split ("extra" unused); CIFAR-10's five training batches give
45,000 / 5,000 (the last 5,000 images of ``data_batch_5``), ``test_batch`` the test split. Images
are standardised per channel with training-split statistics. CIFAR-10 training batches are
augmented (4-pixel zero padding of the standardised image, a random 32x32 crop and a random
horizontal flip), redrawn every epoch from the generator passed to :meth:`CIFAR10.batches`.

``cifar-10-jpeg`` (:class:`CIFAR10JPEG`) is a labelled stand-in: the 60,000 CIFAR-10 images
re-encoded as JPEG, which exists only in the project's offline mirror. Its file order is not the
official one, so its validation split is the last 500 images of every class (by file number) and
its training split the first 4,500 of every class, interleaved by class. Results on it are not
comparable with the paper's CIFAR-10 numbers, and say so in their dataset name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adamqlr.data.readers import (
    FormatError,
    read_cifar10_jpeg,
    read_cifar10_python,
    read_svhn_mat,
)
from adamqlr.profiles import Profile
from adamqlr.tasks._common import DataTask, first, haiku_linear_init_, standardise, to_split
from adamqlr.tasks.base import Split, TaskData, TaskProfile

__all__ = [
    "CIFAR10",
    "CIFAR10JPEG",
    "SVHN",
    "ResNet18",
    "pad_crop_flip",
]


# ------------------------------------------------------------------------------------ model
def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow/Haiku "SAME" padding (before, after) along one spatial axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with "SAME" padding, initialised like Haiku's ``Conv2D``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, generator: torch.Generator
    ) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, bias=False)
        haiku_linear_init_(self.weight, generator)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = _same_padding(x.shape[-2], k, s)
        left, right = _same_padding(x.shape[-1], k, s)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, None, self.stride, (top, left))
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, None, self.stride)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class BlockV1(nn.Module):
    """Haiku's non-bottleneck ``BlockV1``: conv-bn-relu, conv-bn, add the shortcut, relu."""

    def __init__(
        self, in_ch: int, ch: int, stride: int, projection: bool, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.conv_0 = SameConv2d(in_ch, ch, 3, stride, generator)
        self.bn_0 = _batch_norm(ch)
        self.conv_1 = SameConv2d(ch, ch, 3, 1, generator)
        self.bn_1 = _batch_norm(ch)
        self.shortcut: nn.Module = nn.Identity()
        if projection:
            self.shortcut = nn.Sequential(
                SameConv2d(in_ch, ch, 1, stride, generator), _batch_norm(ch)
            )

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        out = F.relu(self.bn_0(self.conv_0(x)))
        out = self.bn_1(self.conv_1(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """Haiku's v1 ResNet-18 with its ImageNet stem, for NCHW images (see the module docstring).

    Args:
        num_classes: Number of logits.
        generator: Source of the initial weights (deterministic given its seed).
        in_channels: Image channels.

    Raises:
        ValueError: If ``num_classes`` or ``in_channels`` is not a positive int.
    """

    def __init__(self, num_classes: int, generator: torch.Generator, in_channels: int = 3) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.stem = SameConv2d(in_channels, 64, 7, 2, generator)
        self.stem_bn = _batch_norm(64)
        blocks: list[nn.Module] = []
        in_ch = 64
        for ch, stride, projection in (
            (64, 1, False),
            (128, 2, True),
            (256, 2, True),
            (512, 2, True),
        ):
            blocks.append(BlockV1(in_ch, ch, stride, projection, generator))
            blocks.append(BlockV1(ch, ch, 1, False, generator))
            in_ch = ch
        self.blocks = nn.Sequential(*blocks)
        self.logits = nn.Linear(512, num_classes)
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = F.relu(self.stem_bn(self.stem(x)))
        top, bottom = _same_padding(x.shape[-2], 3, 2)
        left, right = _same_padding(x.shape[-1], 3, 2)
        x = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-math.inf), 3, 2)
        x = self.blocks(x)
        return self.logits(x.mean(dim=(2, 3)))


# ------------------------------------------------------------------------------ augmentation
def pad_crop_flip(images: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int = 4) -> Tensor:
    """Zero-pad ``pad`` pixels, crop at offsets ``(dy, dx)``, then flip horizontally where asked.

    Args:
        images: ``(B, C, H, W)``.
        dy: Row offsets in ``[0, 2 pad]``, shape ``(B,)``.
        dx: Column offsets in ``[0, 2 pad]``, shape ``(B,)``.
        flip: Booleans, shape ``(B,)``.
        pad: Padding on every side.

    Returns:
        The augmented ``(B, C, H, W)`` images (offset ``pad`` and no flip is the identity).

    Raises:
        ValueError: If an offset lies outside ``[0, 2 pad]``.
    """
    if dy.numel() and (int(dy.min()) < 0 or int(dy.max()) > 2 * pad):
        raise ValueError(f"row offsets must lie in [0, {2 * pad}], got {dy.tolist()}")
    if dx.numel() and (int(dx.min()) < 0 or int(dx.max()) > 2 * pad):
        raise ValueError(f"column offsets must lie in [0, {2 * pad}], got {dx.tolist()}")
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h)
    base = torch.arange(w)
    cols = torch.where(flip[:, None], dx[:, None] + (w - 1 - base), dx[:, None] + base)
    out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------ tasks
_RESNET = "resnet18-haiku-v1"


def _image_profiles(batch: int, epochs: int) -> dict[Profile, TaskProfile]:
    return {
        Profile.SMOKE: TaskProfile(
            batch_size=32,
            epochs=1,
            eval_every=1,
            train_size=64,
            val_size=32,
            test_size=32,
            model=_RESNET,
        ),
        Profile.QUICK: TaskProfile(
            batch_size=128,
            epochs=2,
            eval_every=4,
            train_size=1024,
            val_size=256,
            test_size=256,
            model=_RESNET,
        ),
        Profile.PAPER: TaskProfile(batch_size=batch, epochs=epochs, eval_every=50, model=_RESNET),
    }


class _ImageTask(DataTask):
    loss = "cross_entropy"
    classification = True
    num_classes = 10

    def make_model(self, seed: int, profile: str) -> nn.Module:
        """Return the Haiku-v1 ResNet-18 with 10 logits, initialised from ``seed``.

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        self.profile(profile)
        return ResNet18(self.num_classes, torch.Generator().manual_seed(seed))

    def _finish(
        self,
        profile: str,
        dataset: str,
        prov: dict,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        **extra: object,
    ) -> TaskData:
        (x_tr, x_va, x_te), mean, std = standardise(train[0], val[0], test[0], axis=(0, 2, 3))
        return self._task_data(
            to_split(x_tr, train[1]),
            to_split(x_va, val[1]),
            to_split(x_te, test[1]),
            profile,
            dataset,
            prov,
            classes=self.num_classes,
            channel_mean=mean.reshape(-1).tolist(),
            channel_std=std.reshape(-1).tolist(),
            **extra,
        )


class SVHN(_ImageTask):
    """SVHN cropped digits: 61,047 / 12,210 / 26,032 images, Haiku-v1 ResNet-18, batch 256."""

    name = "svhn"
    title = "SVHN"
    n_train, n_val, n_test = 61_047, 12_210, 26_032
    PROFILES = _image_profiles(256, 10)

    def load_data(self, profile: str) -> TaskData:
        """Read the two ``.mat`` files, split and standardise per channel.

        Raises:
            ValueError: If ``profile`` is unknown or a file has the wrong size.
            adamqlr.data.DataError: If a file is missing or fails its checksum.
        """
        n_train, n_val, n_test = self._sizes(profile)
        keys = ["svhn/train_32x32.mat", "svhn/test_32x32.mat"]
        paths, prov = self._files(keys)
        x, y = read_svhn_mat(paths[keys[0]])
        x_test, y_test = read_svhn_mat(paths[keys[1]])
        if len(x) != self.n_train + self.n_val or len(x_test) != self.n_test:
            raise FormatError(
                f"SVHN: {len(x)} training and {len(x_test)} test images, expected "
                f"{self.n_train + self.n_val} and {self.n_test}"
            )
        return self._finish(
            profile,
            self.title,
            prov,
            (first(x[: self.n_train], n_train), first(y[: self.n_train], n_train)),
            (first(x[self.n_train :], n_val), first(y[self.n_train :], n_val)),
            (first(x_test, n_test), first(y_test, n_test)),
            preprocessing="labels 10 -> 0; standardised per channel with training-split statistics",
        )


class CIFAR10(_ImageTask):
    """CIFAR-10 from the official python batches: 45,000 / 5,000 / 10,000, ResNet-18, batch 128.

    Training batches are augmented by :func:`pad_crop_flip` with offsets and flips drawn from the
    generator of :meth:`batches`.
    """

    name = "cifar-10"
    title = "CIFAR-10"
    n_train, n_val, n_test = 45_000, 5_000, 10_000
    pad = 4
    PROFILES = _image_profiles(128, 72)

    def load_data(self, profile: str) -> TaskData:
        """Read ``cifar-10-python.tar.gz`` (safely unpickled), split and standardise.

        Raises:
            ValueError: If ``profile`` is unknown or the batches have the wrong size.
            adamqlr.data.DataError: If the file is missing or fails its checksum.
        """
        n_train, n_val, n_test = self._sizes(profile)
        key = "cifar-10/cifar-10-python.tar.gz"
        paths, prov = self._files([key])
        batches = read_cifar10_python(paths[key])
        x = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
        y = np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)])
        x_test, y_test = batches["test_batch"]
        if len(x) != self.n_train + self.n_val or len(x_test) != self.n_test:
            raise FormatError(
                f"CIFAR-10: {len(x)} training and {len(x_test)} test images, expected "
                f"{self.n_train + self.n_val} and {self.n_test}"
            )
        return self._finish(
            profile,
            self.title,
            prov,
            (first(x[: self.n_train], n_train), first(y[: self.n_train], n_train)),
            (first(x[self.n_train :], n_val), first(y[self.n_train :], n_val)),
            (first(x_test, n_test), first(y_test, n_test)),
            preprocessing="standardised per channel with training-split statistics; training "
            "batches padded 4 px, randomly cropped and flipped every epoch",
        )

    def batches(
        self, split: Split, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield one epoch of shuffled, augmented mini-batches (last one may be smaller).

        The order, crop offsets and flips are all drawn from ``generator`` at the start of the
        epoch, so an epoch is reproducible from the generator's state.
        """
        n = len(split)
        order = torch.randperm(n, generator=generator)
        dy = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * self.pad + 1, (n,), generator=generator)
        flip = torch.randint(0, 2, (n,), generator=generator).bool()
        for start in range(0, n, batch_size):
            pos = slice(start, start + batch_size)
            idx = order[pos]
            images = pad_crop_flip(split.inputs[idx], dy[pos], dx[pos], flip[pos], self.pad)
            yield images, split.targets[idx]


class CIFAR10JPEG(CIFAR10):
    """The JPEG re-encoding of CIFAR-10 in the offline mirror: a labelled stand-in.

    Same model, splits sizes, preprocessing and augmentation as :class:`CIFAR10`; the split is by
    file number (validation: numbers 4500-4999 of every class), see the module docstring.
    """

    name = "cifar-10-jpeg"
    title = "CIFAR-10 (JPEG re-encoding)"
    PROFILES = _image_profiles(128, 72)

    def load_data(self, profile: str) -> TaskData:
        """Decode the needed JPEGs (Pillow), split by file number and standardise.

        Raises:
            ValueError: If ``profile`` is unknown or the archive lacks images.
            adamqlr.data.DataError: If the file is missing or fails its checksum.
        """
        n_train, n_val, n_test = self._sizes(profile)
        key = "cifar10-jpeg/cifar10_jpg.tar.gz"
        paths, prov = self._files([key])
        c = self.num_classes
        split_at = self.n_train // c  # 4500: first number of the validation images
        # Decode only what the profile uses: the first k numbers of each class cover the first
        # k * 10 images of the interleaved (number, class) order.
        need_train = math.ceil((n_train or self.n_train) / c)
        need_val = math.ceil((n_val or self.n_val) / c)
        need_test = math.ceil((n_test or self.n_test) / c)

        def keep(split: str, label: int, number: int) -> bool:
            if split == "test":
                return number < need_test
            return number < need_train or split_at <= number < split_at + need_val

        arrays = read_cifar10_jpeg(paths[key], keep=keep)
        x, y, num = arrays["train"]
        x_test, y_test, num_test = arrays["test"]
        for name, nums, expected in (
            ("train", num[num < split_at], range(need_train)),
            ("validation", num[num >= split_at], range(split_at, split_at + need_val)),
            ("test", num_test, range(need_test)),
        ):
            want = np.repeat(np.arange(expected.start, expected.stop), c)
            if not np.array_equal(nums, want):
                raise FormatError(
                    f"{paths[key]}: {name} images are not numbers {expected.start}.."
                    f"{expected.stop - 1} of every class ({len(nums)} found, {len(want)} expected)"
                )
        is_val = num >= split_at
        return self._finish(
            profile,
            self.title,
            prov,
            (first(x[~is_val], n_train), first(y[~is_val], n_train)),
            (first(x[is_val], n_val), first(y[is_val], n_val)),
            (first(x_test, n_test), first(y_test, n_test)),
            stand_in=True,
            preprocessing="JPEG re-encoding decoded with Pillow; split by file number "
            "(validation: numbers 4500-4999 of every class); standardised per channel with "
            "training-split statistics; training batches padded 4 px, randomly cropped and "
            "flipped every epoch",
        )
