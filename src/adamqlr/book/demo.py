"""A small, honest toy problem for the quickstart: interleaved spirals in the plane.

It is synthetic (generated here, no download) and labelled as such wherever it is used. It is
hard enough that a linear model fails and a small multilayer perceptron needs a few hundred steps,
which makes the step size and damping traces of AdamQLR worth looking at, and it runs in seconds
on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["accuracy", "mlp", "spirals"]


def spirals(
    n: int,
    classes: int = 3,
    *,
    noise: float = 0.2,
    turns: float = 0.75,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Sample ``n`` points from ``classes`` interleaved spiral arms.

    Arm ``k`` is the curve ``r (cos a, sin a)`` with radius ``r = t`` and angle
    ``a = 2 pi (k / classes + turns t)`` for ``t`` uniform in ``[0, 1]``; Gaussian noise of scale
    ``noise`` (in radians) is added to the angle. Points are split as evenly as possible between
    the arms and returned in random order.

    Args:
        n: Number of points (>= ``classes``).
        classes: Number of arms (>= 2).
        noise: Standard deviation of the angular noise (>= 0).
        turns: Number of turns each arm makes from the centre to radius 1 (> 0).
        seed: Seed of the private random generator (the global one is not touched).
        dtype: Floating dtype of the inputs.

    Returns:
        ``(inputs, labels)``: inputs of shape ``(n, 2)``, integer labels of shape ``(n,)``.

    Raises:
        ValueError: If an argument is out of range.
    """
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"invalid classes: {classes!r} (expected an int >= 2)")
    if isinstance(n, bool) or not isinstance(n, int) or n < classes:
        raise ValueError(f"invalid n: {n!r} (expected an int >= classes = {classes})")
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"invalid noise: {noise!r} (expected a finite number >= 0)")
    if not (isinstance(turns, (int, float)) and math.isfinite(turns) and turns > 0):
        raise ValueError(f"invalid turns: {turns!r} (expected a finite number > 0)")
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    t = torch.rand(n, generator=gen, dtype=torch.float64)
    angle = 2 * math.pi * (labels / classes + turns * t)
    angle = angle + noise * torch.randn(n, generator=gen, dtype=torch.float64)
    inputs = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=1)
    order = torch.randperm(n, generator=gen)
    return inputs[order].to(dtype), labels[order]


def mlp(
    sizes: Sequence[int], *, activation: type[nn.Module] = nn.Tanh, seed: int = 0
) -> nn.Sequential:
    """Build a multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` (PyTorch default init).

    Args:
        sizes: Layer widths, input first, at least two entries.
        activation: Activation between layers (none after the last).
        seed: Seed for the initial weights (the global random state is restored afterwards).

    Returns:
        The network.

    Raises:
        ValueError: If ``sizes`` has fewer than two entries or a non-positive width.
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"invalid sizes: {sizes!r} (expected >= 2 positive ints)")
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation())
    return nn.Sequential(*layers)


@torch.no_grad()
def accuracy(model: nn.Module, inputs: Tensor, labels: Tensor) -> float:
    """Fraction of ``inputs`` whose arg-max output equals the label."""
    return float((model(inputs).argmax(dim=-1) == labels).float().mean())
