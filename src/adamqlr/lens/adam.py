"""Adam through a second-order lens: what ``v_hat`` estimates, and what the learning rate carries.

For the chapter "Adam as a diagonal second-order method":

* :func:`adam_moments` reads ``m_hat``, ``v_hat`` and the direction
  ``d = m_hat / (sqrt(v_hat) + eps)`` out of a ``torch.optim.Adam`` (the chapter's formulas, as
  :mod:`adamqlr.algorithm` defines them, applied to torch's state);
* :func:`adam_lens_run` trains the Fashion-MNIST MLP with Adam and, at chosen steps, sets ``v_hat``
  beside the exact diagonals of the empirical Fisher and of the GGN and beside the expected squared
  mini-batch gradient (:mod:`adamqlr.lens.diagonals`);
* :func:`unit_groups` labels each parameter coordinate with the unit it belongs to (for a cluster
  bootstrap over coordinates, :mod:`adamqlr.lens.bootstrap`);
* :class:`Rescaled` and :func:`rescaled_updates` reparametrise a network as ``theta = s * phi`` to
  show which optimisers' updates depend on the parametrisation's scale.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call

from adamqlr import algorithm
from adamqlr.lens.diagonals import expected_squared_batch_gradient, ggn_diagonal, gradient_moments
from adamqlr.lens.training import batch_stream, fashion_mnist_setup
from adamqlr.losses import CrossEntropyLoss, Loss
from adamqlr.profiles import Profile, pick
from adamqlr.testing import flat_params

__all__ = [
    "AdamLensConfig",
    "AdamLensResult",
    "Rescaled",
    "adam_lens_run",
    "adam_moments",
    "rescaled_updates",
    "unit_groups",
]


def adam_moments(optimizer: torch.optim.Adam) -> dict[str, Tensor]:
    """Return Adam's bias-corrected moments and direction, flattened over all parameters.

    ``m_hat = m / (1 - beta1^t)``, ``v_hat = v / (1 - beta2^t)``,
    ``d = m_hat / (sqrt(v_hat) + eps)``, in the order of the optimiser's parameters, applied to
    torch's state by :func:`adamqlr.algorithm.bias_corrected` and
    :func:`adamqlr.algorithm.adam_direction` (the definitions AdamQLR is tested against).

    Args:
        optimizer: A ``torch.optim.Adam`` (one parameter group, no AMSGrad) that took a step.

    Returns:
        ``{"m_hat", "v_hat", "direction"}`` (float64).

    Raises:
        ValueError: If the optimiser has not stepped, uses AMSGrad, or has several groups.
    """
    if len(optimizer.param_groups) != 1 or optimizer.param_groups[0].get("amsgrad"):
        raise ValueError("invalid optimizer: expected one parameter group and amsgrad=False")
    group = optimizer.param_groups[0]
    betas = tuple(group["betas"])
    m_hat, v_hat = [], []
    for p in group["params"]:
        state = optimizer.state.get(p, {})
        if "step" not in state:
            raise ValueError("invalid optimizer: it has not taken a step yet")
        m, v = algorithm.bias_corrected(
            state["exp_avg"].double().reshape(-1),
            state["exp_avg_sq"].double().reshape(-1),
            float(state["step"]),
            betas,
        )
        m_hat.append(m)
        v_hat.append(v)
    m, v = torch.cat(m_hat), torch.cat(v_hat)
    return {"m_hat": m, "v_hat": v, "direction": algorithm.adam_direction(m, v, group["eps"])}


#: The configuration's fields that differ from its defaults, by profile.
_ADAM_LENS_SIZES: dict[Profile, dict[str, Any]] = {
    Profile.SMOKE: dict(steps=40, checkpoints=(5, 40), reference_size=200),
    Profile.QUICK: {},
    Profile.PAPER: dict(steps=10_000, checkpoints=(10, 100, 1000, 10_000), reference_size=10_000),
}


@dataclass(frozen=True)
class AdamLensConfig:
    """What the Adam-lens chapter runs under one profile.

    Attributes:
        batch_size: Adam's mini-batch size (50: the paper's Fashion-MNIST default).
        lr: Adam's learning rate (1e-3: the library default, the paper's untuned Adam).
        steps: Training steps.
        checkpoints: Steps at which the diagonals are computed (each <= ``steps``).
        reference_size: Training examples over which the exact diagonals are computed.
        seed: Seed of the model and of the batch order.
    """

    batch_size: int = 50
    lr: float = 1e-3
    steps: int = 2000
    checkpoints: tuple[int, ...] = (10, 100, 1000, 2000)
    reference_size: int = 2000
    seed: int = 0
    betas: tuple[float, float] = field(default=(0.9, 0.999))
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if not self.checkpoints or max(self.checkpoints) > self.steps or min(self.checkpoints) < 1:
            raise ValueError(
                f"invalid checkpoints: {self.checkpoints!r} (expected steps in 1..{self.steps})"
            )

    @classmethod
    def for_profile(cls, profile: Profile | str) -> AdamLensConfig:
        """Return the configuration of ``profile``.

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        return cls(**pick(_ADAM_LENS_SIZES, profile))


@dataclass(frozen=True)
class AdamLensResult:
    """What :func:`adam_lens_run` measured.

    Attributes:
        config: The configuration.
        diagonals: One row per (checkpoint, parameter coordinate): ``step``, ``tensor`` (parameter
            name), ``v_hat``, ``expected_sq`` (the expected squared mini-batch gradient at that
            step's parameters), ``f_emp`` (diagonal of the empirical Fisher), ``ggn`` (diagonal of
            the GGN), ``mean_sq`` (the squared mean gradient).
        losses: One row per step: ``step``, ``loss`` (the mini-batch loss before the step).
        meta: Sizes and settings, for the page.
    """

    config: AdamLensConfig
    diagonals: pd.DataFrame
    losses: pd.DataFrame
    meta: dict[str, Any]

    def summary(self) -> pd.DataFrame:
        """Return, per checkpoint, how closely ``v_hat`` follows each diagonal.

        Columns: ``coordinates`` (with every quantity positive; the rest are parameters that see
        no gradient, e.g. weights of constant pixels), ``corr(log v_hat, log X)`` for
        ``X`` = ``expected_sq``, ``f_emp``, ``ggn``, and ``median v_hat / expected_sq``,
        ``median B v_hat / f_emp``.
        """
        rows = []
        b = self.config.batch_size
        for step, part in self.diagonals.groupby("step", sort=True):
            cols = ["v_hat", "expected_sq", "f_emp", "ggn"]
            positive = part[(part[cols] > 0).all(axis=1)]
            logs = np.log10(positive[cols].to_numpy())
            corr = np.corrcoef(logs.T)
            rows.append(
                {
                    "step": int(step),
                    "coordinates": len(positive),
                    "without gradient": len(part) - len(positive),
                    "corr(log v_hat, log E[g_B^2])": corr[0, 1],
                    "corr(log v_hat, log diag F_emp)": corr[0, 2],
                    "corr(log v_hat, log diag G)": corr[0, 3],
                    "median v_hat / E[g_B^2]": float(
                        np.median(positive["v_hat"] / positive["expected_sq"])
                    ),
                    "median B v_hat / diag F_emp": float(
                        np.median(b * positive["v_hat"] / positive["f_emp"])
                    ),
                }
            )
        return pd.DataFrame(rows).set_index("step")


def adam_lens_run(config: AdamLensConfig, profile: Profile | str) -> AdamLensResult:
    """Train the Fashion-MNIST MLP with Adam and compare ``v_hat`` with exact diagonals.

    At each checkpoint, with the parameters ``theta_t`` after step ``t``: Adam's ``v_hat``
    (:func:`adam_moments`), and over the first ``reference_size`` training examples the mean
    gradient, the diagonal of the empirical Fisher, the diagonal of the GGN, and the expected
    squared mini-batch gradient for batches of ``batch_size`` from the whole training split
    (:func:`adamqlr.lens.diagonals.expected_squared_batch_gradient`).

    Args:
        config: What to run.
        profile: The Fashion-MNIST data profile (``smoke`` uses 1000 training images).

    Returns:
        The :class:`AdamLensResult`.
    """
    _, data, model = fashion_mnist_setup(profile, config.seed)
    loss = CrossEntropyLoss()
    train = data.train
    reference = min(config.reference_size, len(train))
    ref_x, ref_y = train.inputs[:reference], train.targets[:reference]
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps)
    fp = flat_params(model)
    tensor_names = np.repeat(np.array(fp.names), fp.sizes)
    batches = batch_stream(train, config.batch_size, config.seed)
    frames, losses = [], []
    for step in range(1, config.steps + 1):
        x, t = next(batches)
        opt.zero_grad(set_to_none=True)
        value = loss.value(model(x), t)
        value.backward()
        opt.step()
        losses.append({"step": step, "loss": float(value.detach())})
        if step in config.checkpoints:
            v_hat = adam_moments(opt)["v_hat"]
            mean, second = gradient_moments(model, ref_x, ref_y, loss)
            ggn = ggn_diagonal(model, ref_x, loss, chunk_size=64)
            expected = expected_squared_batch_gradient(mean, second, len(train), config.batch_size)
            frames.append(
                pd.DataFrame(
                    {
                        "step": step,
                        "tensor": tensor_names,
                        "v_hat": v_hat.numpy(),
                        "expected_sq": expected.numpy(),
                        "f_emp": second.numpy(),
                        "ggn": ggn.numpy(),
                        "mean_sq": mean.pow(2).numpy(),
                    }
                )
            )
    meta = {
        "train examples": len(train),
        "reference examples": reference,
        "parameters": fp.vector.numel(),
        "batch size": config.batch_size,
        "learning rate": config.lr,
        "dataset": data.meta.get("dataset", "Fashion-MNIST"),
    }
    return AdamLensResult(config, pd.concat(frames, ignore_index=True), pd.DataFrame(losses), meta)


def unit_groups(model: nn.Module) -> np.ndarray:
    """Label every parameter coordinate, in flat order, with the unit it belongs to.

    A coordinate's unit is its module and its index along the tensor's first dimension: for a
    dense layer's weight ``(out, in)`` and bias ``(out,)``, the output unit the coordinate feeds.
    The weights into one unit share that unit's back-propagated error, so their squared gradients
    move together; the labels let a bootstrap resample units instead of coordinates.

    Args:
        model: The network (its ``named_parameters()`` order is the flat order).

    Returns:
        An array of ``"<module>:<index>"`` strings, one per coordinate.

    Raises:
        ValueError: If the model has no parameters or a parameter is a scalar.
    """
    labels = []
    for name, p in model.named_parameters():
        if p.dim() == 0:
            raise ValueError(f"invalid parameter {name}: a scalar has no unit")
        module = name.rpartition(".")[0]
        rows = np.arange(p.shape[0]).repeat(p.numel() // p.shape[0])
        labels.append(np.char.add(f"{module}:", rows.astype(str)))
    if not labels:
        raise ValueError("invalid model: it has no parameters")
    return np.concatenate(labels)


# ------------------------------------------------------------------------------ rescaling
class Rescaled(nn.Module):
    """The network ``base`` reparametrised as ``theta = scale * phi``, with ``phi`` trainable.

    The function is unchanged; only the coordinates the optimiser sees are stretched. Parameter
    names are those of ``base`` with ``.`` replaced by ``__``.

    Args:
        base: A network without buffers.
        scale: The factor ``s`` (> 0).

    Raises:
        ValueError: If ``scale`` is not positive or ``base`` has buffers.
    """

    def __init__(self, base: nn.Module, scale: float) -> None:
        super().__init__()
        if not scale > 0 or not math.isfinite(scale):
            raise ValueError(f"invalid scale: {scale!r} (expected a positive finite number)")
        if any(True for _ in base.buffers()):
            raise ValueError("invalid base: it has buffers")
        self.base = [base]  # not a submodule: its own parameters are not ours
        self.scale = float(scale)
        self.phi = nn.ParameterDict(
            {
                n.replace(".", "__"): nn.Parameter(p.detach().clone() / scale)
                for n, p in base.named_parameters()
            }
        )

    def theta(self) -> dict[str, Tensor]:
        """Return the base network's parameters ``scale * phi`` by their original names."""
        return {n.replace("__", "."): self.scale * p for n, p in self.phi.items()}

    def forward(self, inputs: Tensor) -> Tensor:
        """Run ``base`` at ``theta = scale * phi``."""
        return functional_call(self.base[0], self.theta(), (inputs,))


def rescaled_updates(
    make_model: Callable[[], nn.Module],
    make_optimizer: Callable[[nn.Module, float], Any],
    batches: list[tuple[Tensor, Tensor]],
    scale: float,
    loss: Loss,
) -> tuple[Tensor, Tensor]:
    """Train a network directly and reparametrised by ``scale``; return both ``theta`` changes.

    Args:
        make_model: Returns a fresh, identically initialised network.
        make_optimizer: ``(model, scale) -> optimiser``; for the rescaled run ``scale`` is ``s``,
            for the direct run 1 (so an optimiser can scale its own constants, e.g. ``eps``).
        batches: The mini-batches, one step each.
        scale: The factor ``s``.
        loss: The loss (for optimisers that are not quadratic-model ones).

    Returns:
        ``(delta_theta_direct, delta_theta_rescaled)``, flattened, both in ``theta``'s coordinates.
    """
    results = []
    for s in (1.0, scale):
        base = make_model()
        start = flat_params(base).vector.clone()
        model: nn.Module = base if s == 1.0 else Rescaled(base, s)
        opt = make_optimizer(model, s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for x, t in batches:
                if getattr(opt, "step_requires_batch", False):
                    opt.step(x, t)
                else:
                    opt.zero_grad(set_to_none=True)
                    loss.value(model(x), t).backward()
                    opt.step()
        if s == 1.0:
            end = flat_params(base).vector
        else:
            theta = {n: v.detach() for n, v in cast(Any, model).theta().items()}
            end = torch.cat([theta[n].reshape(-1) for n, _ in base.named_parameters()])
        results.append(end - start)
    return results[0], results[1]
