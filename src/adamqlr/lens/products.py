"""Dense curvature matrices of tiny networks, per-example gradients, and the cost of products.

The book's chapter "Curvature products without matrices" derives how AdamQLR gets ``d^T C d``
from one Jacobian-vector product (``C`` the generalised Gauss-Newton matrix, GGN) or one
forward-over-reverse product (``C`` the Hessian) without forming ``C``. This module builds the
matrices that the products avoid, so that every identity can be checked against them on a network
small enough to hold ``C`` (a few hundred parameters), and it times the products on a real one.

Every matrix is the curvature of the *mean* mini-batch loss ``f = (1/N) sum_n l_n`` with respect to
the flattened parameters, in the order of ``model.named_parameters()``:

* :func:`dense_hessian`: ``H = d^2 f / d theta^2`` (``torch.func.hessian``);
* :func:`dense_ggn`: ``G = J^T H_L J`` with ``J`` the Jacobian of all outputs and ``H_L`` the
  Hessian of ``f`` with respect to them, both from automatic differentiation (no closed forms);
* :func:`dense_fisher`: the true Fisher
  ``F = (1/N) sum_n E_{y ~ p(y|x_n)} [grad l_n(y) grad l_n(y)^T]``, the expectation computed
  *exactly* from per-example gradients (a sum over classes for softmax cross-entropy; symmetric
  sigma points, exact for second moments, for the unit-variance Gaussian of the squared error);
* :func:`dense_empirical_fisher`: ``F_emp = (1/N) sum_n grad l_n grad l_n^T`` with the data's
  targets.

These are test oracles and teaching tools for networks without buffers (no batch norm): they are
quadratic in the number of parameters.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, hessian, jacrev, vmap

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
    "FlatParams",
    "ProductCost",
    "TinyProblem",
    "cost_study",
    "dense_empirical_fisher",
    "dense_fisher",
    "dense_ggn",
    "dense_hessian",
    "dense_residual_term",
    "flat_params",
    "per_example_grads",
    "pooled_images",
    "time_products",
    "tiny_problems",
]


@dataclass(frozen=True)
class FlatParams:
    """A model's parameters as one flat vector, and the way back.

    Attributes:
        names: Parameter names, in ``model.named_parameters()`` order.
        shapes: Their shapes.
        vector: The concatenated, detached values.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    vector: Tensor

    @property
    def sizes(self) -> list[int]:
        """Number of entries of each parameter."""
        return [math.prod(s) for s in self.shapes]

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split a flat vector (or the last dimension of a batch of them) into named tensors.

        Raises:
            ValueError: If the last dimension does not match the number of parameters.
        """
        if flat.shape[-1] != self.vector.numel():
            raise ValueError(
                f"invalid flat vector: last dimension {flat.shape[-1]} (expected "
                f"{self.vector.numel()} parameters)"
            )
        lead = flat.shape[:-1]
        parts = torch.split(flat, self.sizes, dim=-1)
        return {
            n: part.reshape(tuple(lead) + tuple(shape))
            for n, shape, part in zip(self.names, self.shapes, parts, strict=True)
        }

    def flatten(self, named: dict[str, Tensor], batch_dims: int = 0) -> Tensor:
        """Concatenate named tensors (with ``batch_dims`` leading dimensions) into flat vectors."""
        return torch.cat(
            [named[n].reshape(*named[n].shape[:batch_dims], -1) for n in self.names], dim=-1
        )


def flat_params(model: nn.Module) -> FlatParams:
    """Return the model's parameters as a :class:`FlatParams` (values detached)."""
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    return FlatParams(
        names=tuple(n for n, _ in named),
        shapes=tuple(p.shape for _, p in named),
        vector=torch.cat([p.reshape(-1) for _, p in named]),
    )


def _require_no_buffers(model: nn.Module) -> dict[str, Tensor]:
    buffers = dict(model.named_buffers())
    if buffers:
        raise ValueError(
            f"invalid model: it has buffers {sorted(buffers)[:3]}...; the dense oracles and "
            "per-example gradients are defined for networks without buffers (no batch norm)"
        )
    return buffers


def _check_loss(loss: Loss) -> None:
    if not isinstance(loss, (CrossEntropyLoss, SquaredErrorLoss)):
        raise ValueError(f"invalid loss: {loss!r} (expected CrossEntropyLoss or SquaredErrorLoss)")
    if isinstance(loss, SquaredErrorLoss) and loss.curvature_count is not None:
        raise ValueError(f"invalid loss: {loss!r} (curvature_count must be None here)")


def per_example_grads(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss: Loss,
    *,
    chunk_size: int | None = None,
) -> Tensor:
    """Return the gradient of each example's loss ``l_n``, flattened: shape ``(N, P)``.

    ``l_n`` is ``loss`` evaluated on the batch made of example ``n`` alone, so the mean of the rows
    is the gradient of the mean loss (for cross-entropy without ignored positions).

    Args:
        model: A network without buffers; ``model(inputs[n:n+1])`` is one example's output.
        inputs: Inputs, examples first.
        targets: Targets, examples first.
        loss: :class:`~adamqlr.losses.CrossEntropyLoss` or
            :class:`~adamqlr.losses.SquaredErrorLoss`.
        chunk_size: Examples per vectorised chunk (``None``: all at once); bounds the memory.

    Returns:
        The per-example gradients, in the parameter order of :func:`flat_params`.

    Raises:
        ValueError: If the model has buffers or the loss is not one of the two supported.
    """
    buffers = _require_no_buffers(model)
    _check_loss(loss)
    fp = flat_params(model)
    params = fp.unflatten(fp.vector)

    def loss_one(p: dict[str, Tensor], x: Tensor, t: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss.value(out, t.unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size)(
        params, inputs, targets
    )
    return fp.flatten(grads, batch_dims=1)


def _outputs_fn(model: nn.Module, fp: FlatParams, inputs: Tensor) -> Callable[[Tensor], Tensor]:
    buffers = _require_no_buffers(model)

    def outputs(flat: Tensor) -> Tensor:
        return functional_call(model, (fp.unflatten(flat), buffers), (inputs,))

    return outputs


def dense_hessian(model: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss) -> Tensor:
    """Return the Hessian ``H`` (P x P) of the mean loss with respect to the flat parameters.

    Raises:
        ValueError: If the model has buffers or the loss is not supported.
    """
    _check_loss(loss)
    fp = flat_params(model)
    outputs = _outputs_fn(model, fp, inputs)
    return hessian(lambda flat: loss.value(outputs(flat), targets))(fp.vector)


def dense_ggn(model: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss) -> Tensor:
    """Return the generalised Gauss-Newton matrix ``G = J^T H_L J`` (P x P) of the mean loss.

    ``J`` (all outputs by all parameters) and ``H_L`` (the Hessian of the mean loss with respect to
    all outputs) both come from automatic differentiation, so this oracle shares no closed form
    with :func:`adamqlr.curvature.ggn_quadratic`.

    Raises:
        ValueError: If the model has buffers or the loss is not supported.
    """
    _check_loss(loss)
    fp = flat_params(model)
    outputs = _outputs_fn(model, fp, inputs)
    z = outputs(fp.vector)
    jac = jacrev(outputs)(fp.vector).reshape(z.numel(), -1)
    h_out = hessian(lambda out: loss.value(out.reshape(z.shape), targets))(z.reshape(-1))
    return jac.T @ h_out @ jac


def _fisher_samples(loss: Loss, outputs: Tensor) -> tuple[Tensor, Tensor]:
    """Return targets ``(N, S, ...)`` and weights ``(N, S)`` with exact weighted second moments.

    For cross-entropy the S = C samples are all classes with weights ``softmax(z)``. For the squared
    error (a unit-variance Gaussian around the output) they are the 2K sigma points
    ``z +/- sqrt(K) e_k`` with weights ``1/(2K)``, which reproduce the mean and covariance exactly,
    and the per-example gradient is linear in the target, so its second moment is exact too.
    """
    n = outputs.shape[0]
    if isinstance(loss, CrossEntropyLoss):
        classes = outputs.shape[-1]
        targets = torch.arange(classes).expand(n, classes)
        return targets, torch.softmax(outputs, dim=-1)
    k = outputs.reshape(n, -1).shape[1]
    eye = torch.eye(k, dtype=outputs.dtype) * math.sqrt(k)
    shifts = torch.cat([eye, -eye]).reshape(2 * k, *outputs.shape[1:])
    targets = outputs.unsqueeze(1) + shifts.unsqueeze(0)
    return targets, torch.full((n, 2 * k), 1.0 / (2 * k), dtype=outputs.dtype)


def dense_fisher(model: nn.Module, inputs: Tensor, loss: Loss) -> Tensor:
    """Return the true Fisher ``F`` (P x P) of the model's predictive distribution, exactly.

    ``F = (1/N) sum_n sum_s w_ns grad l_n(y_ns) grad l_n(y_ns)^T``, where the targets ``y_ns`` and
    weights ``w_ns`` reproduce the expectation over ``y ~ p(y | x_n)`` exactly (all classes weighted
    by the softmax for cross-entropy; sigma points for the unit-variance Gaussian of the squared
    error). Built from per-example gradients only: no output Hessian enters.

    Raises:
        ValueError: If the model has buffers or the loss is not supported.
    """
    _check_loss(loss)
    with torch.no_grad():
        outputs = model(inputs)
    sample_targets, weights = _fisher_samples(loss, outputs)
    n, s = weights.shape
    feature_shape = inputs.shape[1:]
    rep_inputs = inputs.unsqueeze(1).expand(n, s, *feature_shape).reshape(n * s, *feature_shape)
    grads = per_example_grads(
        model, rep_inputs, sample_targets.reshape(n * s, *sample_targets.shape[2:]), loss
    )
    weighted = grads * weights.reshape(-1, 1).sqrt()
    return weighted.T @ weighted / n


def dense_residual_term(model: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss) -> Tensor:
    """Return ``R = (1/N) sum_n sum_k (dl_n/dz_nk) d^2 z_nk / d theta^2`` (P x P), so ``H = G + R``.

    Computed as the Hessian of ``theta -> sum_n w_n . z_n(theta)`` with the output gradients
    ``w_n = d f / d z_n`` of the *mean* loss held fixed: the network's own curvature weighted by
    the residuals, the part of the Hessian that the GGN drops.

    Raises:
        ValueError: If the model has buffers or the loss is not supported.
    """
    _check_loss(loss)
    fp = flat_params(model)
    outputs = _outputs_fn(model, fp, inputs)
    z = outputs(fp.vector).detach().requires_grad_(True)
    (weights,) = torch.autograd.grad(loss.value(z, targets), z)
    return hessian(lambda flat: (outputs(flat) * weights).sum())(fp.vector)


def dense_empirical_fisher(model: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss) -> Tensor:
    """Return the empirical Fisher ``(1/N) sum_n g_n g_n^T`` (P x P) with the data's targets.

    Raises:
        ValueError: If the model has buffers or the loss is not supported.
    """
    grads = per_example_grads(model, inputs, targets, loss)
    return grads.T @ grads / grads.shape[0]


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
