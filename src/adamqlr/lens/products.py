"""The tiny problems and the measured cost of curvature products (chapter "Curvature products").

The book's chapter "Curvature products without matrices" derives how AdamQLR gets ``d^T C d``
from one Jacobian-vector product (``C`` the generalised Gauss-Newton matrix, GGN) or one
forward-over-reverse product (``C`` the Hessian) without forming ``C``. The matrices the products
avoid are built by the dense oracles of :mod:`adamqlr.testing`; this module holds what the chapter
adds: :func:`tiny_problems`, two networks small enough to hold ``C`` (a few hundred parameters) on
real data, and :func:`time_products` / :func:`cost_study`, the products timed on a real network.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from adamqlr.curvature import ggn_quadratic, hessian_quadratic, layerwise_plan
from adamqlr.losses import CrossEntropyLoss, Loss, SquaredErrorLoss
from adamqlr.profiles import Profile, pick
from adamqlr.tasks import get_task
from adamqlr.tasks._common import MLP

__all__ = [
    "FORWARD",
    "FORWARD_BACKWARD",
    "GGN_FUNC",
    "GGN_LAYERWISE",
    "GRAD_AND_HESSIAN",
    "HESSIAN_FOR",
    "CostConfig",
    "ProductCost",
    "TinyProblem",
    "cost_study",
    "pooled_images",
    "time_products",
    "tiny_problems",
]


# ------------------------------------------------------------------------------ problems
@dataclass(frozen=True)
class TinyProblem:
    """A network small enough for dense curvature matrices, on a batch of real data.

    Attributes:
        name: Short name, e.g. ``"Fashion-MNIST 4x4, MLP 16-8-10"``.
        model: The float64 network (no buffers).
        inputs: The batch's inputs (float64).
        targets: Its targets.
        loss: Its loss.
    """

    name: str
    model: nn.Module
    inputs: Tensor
    targets: Tensor
    loss: Loss

    @property
    def num_params(self) -> int:
        """Number of parameters ``P``."""
        return sum(p.numel() for p in self.model.parameters())


def pooled_images(inputs: Tensor, side: int = 28, pooled: int = 4) -> Tensor:
    """Average-pool flattened square images ``(N, side*side)`` to ``(N, pooled*pooled)``.

    Raises:
        ValueError: If the shapes do not fit (``side`` must be a multiple of ``pooled``).
    """
    if inputs.dim() != 2 or inputs.shape[1] != side * side or side % pooled:
        raise ValueError(
            f"invalid inputs: shape {tuple(inputs.shape)} for {side}x{side} images pooled to "
            f"{pooled}x{pooled}"
        )
    k = side // pooled
    return inputs.reshape(-1, pooled, k, pooled, k).mean(dim=(2, 4)).reshape(-1, pooled * pooled)


def tiny_problems(
    profile: Profile | str, *, batch_size: int = 32, seed: int = 0
) -> list[TinyProblem]:
    """Return the chapter's two tiny problems on real data, in float64.

    * Fashion-MNIST images average-pooled to 4x4 pixels, a 16-8-10 ReLU MLP, softmax cross-entropy;
    * UCI Energy (8 features, heating load), an 8-6-1 ReLU MLP, half the squared error.

    Both take the first ``batch_size`` training examples of the task's ``profile`` data (already
    standardised by the task) and the task's MLP initialisation.

    Args:
        profile: Which profile's data to load (``smoke`` loads less).
        batch_size: Examples in the batch.
        seed: Seed of the initial weights.

    Returns:
        The two :class:`TinyProblem` s.

    Raises:
        ValueError: If ``profile`` is unknown.
        adamqlr.data.DataError: If a data file is missing or corrupt.
    """
    problems = []
    fmnist = get_task("fashion-mnist").load_data(profile).train
    model = MLP((16, 8, 10), torch.Generator().manual_seed(seed)).double()
    x = pooled_images(fmnist.inputs[:batch_size].double())
    problems.append(
        TinyProblem(
            "Fashion-MNIST 4x4, MLP 16-8-10",
            model,
            x,
            fmnist.targets[:batch_size],
            CrossEntropyLoss(),
        )
    )
    energy = get_task("uci-energy").load_data(profile).train
    model = MLP((8, 6, 1), torch.Generator().manual_seed(seed)).double()
    problems.append(
        TinyProblem(
            "UCI Energy, MLP 8-6-1",
            model,
            energy.inputs[:batch_size].double(),
            energy.targets[:batch_size].double(),
            SquaredErrorLoss(),
        )
    )
    return problems


# ------------------------------------------------------------------------------------- costs
#: Names of the operations :func:`time_products` times.
FORWARD = "forward"
FORWARD_BACKWARD = "forward+backward"
GGN_LAYERWISE = "d^T G d (layer-wise JVP)"
GGN_FUNC = "d^T G d (torch.func.jvp)"
HESSIAN_FOR = "d^T H d (forward-over-reverse)"
GRAD_AND_HESSIAN = "gradient + d^T H d (reverse-over-reverse)"


@dataclass(frozen=True)
class ProductCost:
    """Measured wall-clock cost of one operation.

    Attributes:
        operation: What was timed.
        seconds: Median over the repeats.
        spread: Half the interquartile range over the repeats, in seconds.
        relative: ``seconds`` divided by the median forward pass.
        repeats: Number of timed repeats.
    """

    operation: str
    seconds: float
    spread: float
    relative: float
    repeats: int


def _timed(fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def time_products(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss: Loss,
    *,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> list[ProductCost]:
    """Time a forward pass, a forward+backward pass and the curvature products along ``d``.

    The operations, each the median over ``repeats`` timed calls after ``warmup`` untimed ones,
    along a random direction:

    * :data:`FORWARD`: outputs and loss, no graph;
    * :data:`FORWARD_BACKWARD`: loss and gradient (what an Adam step costs);
    * :data:`GGN_LAYERWISE`: :func:`adamqlr.curvature.ggn_quadratic` with its hand-written
      layer-wise JVP (only for models it covers, such as plain MLPs);
    * :data:`GGN_FUNC`: the same with ``torch.func.jvp``;
    * :data:`HESSIAN_FOR`: :func:`adamqlr.curvature.hessian_quadratic`, forward-over-reverse;
    * :data:`GRAD_AND_HESSIAN`: the gradient *and* ``d^T H d`` from one forward pass, a backward
      pass that keeps its graph and one more backward pass through it (reverse over reverse, how
      :class:`adamqlr.AdamQLR` gets the Hessian term alongside its gradient).

    Args:
        model: The network.
        inputs: One mini-batch of inputs.
        targets: Its targets.
        loss: The loss.
        repeats: Timed repeats per operation (>= 1).
        warmup: Untimed calls first (>= 0).
        seed: Seed of the random direction.

    Returns:
        One :class:`ProductCost` per operation, ``relative`` in units of the forward pass.

    Raises:
        ValueError: If ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"invalid repeats/warmup: {repeats!r}/{warmup!r} (need >= 1 and >= 0)")
    params = {n: p.detach() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    direction = {
        n: torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
        for n, p in params.items()
    }

    def forward() -> None:
        with torch.no_grad():
            loss.value(model(inputs), targets)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        loss.value(model(inputs), targets).backward()

    def grad_and_hessian() -> None:
        wrt = list(model.parameters())
        value = loss.value(model(inputs), targets)
        grads = torch.autograd.grad(value, wrt, create_graph=True)
        dot = cast(
            Tensor, sum((g * d).sum() for g, d in zip(grads, direction.values(), strict=True))
        )
        hvp = torch.autograd.grad(dot, wrt)
        cast(
            Tensor, sum((h * d).sum() for h, d in zip(hvp, direction.values(), strict=True))
        ).item()

    def ggn(method: str) -> Callable[[], object]:
        return lambda: ggn_quadratic(model, params, direction, inputs, targets, loss, method=method)

    ops: list[tuple[str, Callable[[], object]]] = [
        (FORWARD, forward),
        (FORWARD_BACKWARD, forward_backward),
    ]
    if isinstance(inputs, Tensor) and layerwise_plan(model) is not None:
        ops.append((GGN_LAYERWISE, ggn("layerwise")))
    ops += [
        (GGN_FUNC, ggn("func")),
        (HESSIAN_FOR, lambda: hessian_quadratic(model, params, direction, inputs, targets, loss)),
        (GRAD_AND_HESSIAN, grad_and_hessian),
    ]
    measured = {name: _timed(fn, repeats, warmup) for name, fn in ops}
    model.zero_grad(set_to_none=True)
    base = statistics.median(measured[FORWARD])
    out = []
    for name, times in measured.items():
        med = statistics.median(times)
        if len(times) >= 2:
            q = statistics.quantiles(times, n=4)
            spread = (q[2] - q[0]) / 2
        else:
            spread = 0.0
        out.append(ProductCost(name, med, spread, med / base, repeats))
    return out


#: The configuration's fields that differ from its defaults, by profile.
_COST_SIZES: dict[Profile, dict[str, Any]] = {
    Profile.SMOKE: dict(batch_size=256, repeats=5, warmup=1),
    Profile.QUICK: {},
    Profile.PAPER: dict(repeats=100, warmup=10),
}


@dataclass(frozen=True)
class CostConfig:
    """What the cost measurement runs under one profile.

    Attributes:
        batch_size: Mini-batch size (the paper's untuned AdamQLR uses 3200).
        repeats: Timed repeats per operation.
        warmup: Untimed calls first.
        threads: CPU threads used while timing. One thread measures the cost per core and is
            robust to other processes on the machine; with more threads than free cores, OpenMP's
            waiting makes every operation many times slower and the ratios meaningless.
    """

    batch_size: int = 3200
    repeats: int = 20
    warmup: int = 3
    threads: int = 1

    @classmethod
    def for_profile(cls, profile: Profile | str) -> CostConfig:
        """Return the configuration of ``profile``.

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        return cls(**pick(_COST_SIZES, profile))


def cost_study(
    profile: Profile | str, *, seed: int = 0
) -> tuple[list[ProductCost], dict[str, Any]]:
    """Time the operations of :func:`time_products` on the Fashion-MNIST MLP (784-50-10).

    Args:
        profile: Profile of the data and of the :class:`CostConfig`.
        seed: Seed of the initial weights and of the direction.

    Returns:
        The costs and a description of the setting (batch size, parameters, threads, device,
        torch version), for the page.

    Raises:
        ValueError: If ``profile`` is unknown.
    """
    config = CostConfig.for_profile(profile)
    task = get_task("fashion-mnist")
    data = task.load_data(profile).train
    model = task.make_model(seed, profile)
    n = min(config.batch_size, len(data))
    inputs, targets = data.inputs[:n], data.targets[:n]
    previous = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        costs = time_products(
            model,
            inputs,
            targets,
            CrossEntropyLoss(),
            repeats=config.repeats,
            warmup=config.warmup,
            seed=seed,
        )
    finally:
        torch.set_num_threads(previous)
    setting = {
        "model": "MLP 784-50-10 (Fashion-MNIST)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch size": n,
        "repeats": config.repeats,
        "threads": config.threads,
        "device": "cpu",
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "torch": torch.__version__,
    }
    return costs, setting
