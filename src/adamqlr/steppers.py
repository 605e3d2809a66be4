"""What the training loop needs from an optimiser (:class:`Stepper`), and a named configuration.

A :class:`Stepper` does one whole optimisation step on a mini-batch (forward, backward, update)
and returns its statistics as floats. :class:`TorchStepper` adapts a ``torch.optim.Optimizer``,
:class:`QLRStepper` one of the package's quadratic-model optimisers (AdamQLR, SGDQLR, K-FAC).
An :class:`OptimiserEntry` names one configuration: a builder, every hyperparameter with its
default, and its default batch size.

The registry of entries lives above, in :mod:`adamqlr.experiment.optimisers`; the baselines
(:mod:`adamqlr.baselines`) build their entries from this module without importing it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from adamqlr.losses import Loss, get_loss

__all__ = [
    "Builder",
    "OptimiserEntry",
    "QLRStepper",
    "QuadraticOptimizer",
    "Stepper",
    "TorchStepper",
]


class _Stats(Protocol):
    def as_dict(self) -> dict[str, Any]: ...


class QuadraticOptimizer(Protocol):
    """An optimiser whose ``step(inputs, targets)`` does the whole step and returns statistics.

    :class:`adamqlr.AdamQLR`, :class:`adamqlr.SGDQLR` and :class:`adamqlr.kfac.KFAC` are.
    """

    def step(self, inputs: Any, targets: Tensor) -> _Stats:
        """Take one step on the mini-batch; return its statistics (with ``as_dict()``)."""
        ...

    def last_outputs(self) -> Tensor | None:
        """Return the network outputs of the last step's forward pass, or ``None``."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Return the optimiser state."""
        ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the optimiser state."""
        ...


@runtime_checkable
class Stepper(Protocol):
    """What the training loop needs from an optimiser.

    ``step`` takes one mini-batch, does the whole optimisation step (forward, backward, update)
    and returns statistics as plain floats: at least ``"loss"``, the mini-batch loss *before* the
    update, plus the adaptive quantities the optimiser has (``"lr"``, ``"damping"``, ``"rho"``,
    ...). ``state_dict``/``load_state_dict`` round-trip the optimiser state so that a run can be
    checkpointed and resumed bitwise; the state must load with ``torch.load(weights_only=True)``.
    """

    def step(self, inputs: Any, targets: Tensor) -> dict[str, float]:
        """Take one step on the mini-batch and return its statistics."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Return the optimiser state."""
        ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the optimiser state."""
        ...

    def last_outputs(self) -> Tensor | None:
        """Return the network outputs of the last step's forward pass (detached), or ``None``.

        They are the outputs at the parameters *before* that step, on its mini-batch, so the
        training loop reads the mini-batch accuracy from them without another forward pass or a
        hook on the model (a hook would keep an optimiser off its layer-wise fast path).
        """
        ...


class TorchStepper:
    """Adapt a ``torch.optim.Optimizer`` (SGD, Adam, ...) to the :class:`Stepper` protocol.

    One step: ``zero_grad``, forward, loss, backward, ``optimizer.step()``. The returned ``"lr"`` is
    the first parameter group's learning rate.

    Args:
        model: The network; ``model(inputs)`` gives the outputs the loss expects.
        loss: The loss (:mod:`adamqlr.losses`).
        optimizer: A torch optimiser over ``model``'s parameters.
    """

    def __init__(self, model: nn.Module, loss: Loss, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self._last_outputs: Tensor | None = None

    def step(self, inputs: Any, targets: Tensor) -> dict[str, float]:  # noqa: D102
        self.optimizer.zero_grad(set_to_none=True)
        outputs = self.model(inputs)
        self._last_outputs = outputs.detach()
        self.loss.check_shapes(outputs, targets)
        loss = self.loss.value(outputs, targets)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach()), "lr": float(self.optimizer.param_groups[0]["lr"])}

    def last_outputs(self) -> Tensor | None:  # noqa: D102
        return self._last_outputs

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.optimizer.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"TorchStepper({type(self.optimizer).__name__})"


class QLRStepper:
    """Adapt :class:`adamqlr.AdamQLR` / :class:`adamqlr.SGDQLR` to the :class:`Stepper` protocol.

    The statistics are :class:`adamqlr.StepStats` as floats (``accepted`` as 0/1; the rejection
    reason, a string, is dropped: ``accepted == 0`` marks those steps).
    """

    def __init__(self, optimizer: QuadraticOptimizer) -> None:
        self.optimizer = optimizer

    def step(self, inputs: Any, targets: Tensor) -> dict[str, float]:  # noqa: D102
        stats = self.optimizer.step(inputs, targets).as_dict()
        return {k: float(v) for k, v in stats.items() if isinstance(v, (bool, int, float))}

    def last_outputs(self) -> Tensor | None:  # noqa: D102
        return self.optimizer.last_outputs()

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.optimizer.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"QLRStepper({self.optimizer!r})"


Builder = Callable[[nn.Module, Loss, dict[str, Any]], Stepper]

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class OptimiserEntry:
    """One named optimiser configuration.

    Attributes:
        name: Registry name (lower case, digits and hyphens), e.g. ``"adamqlr-untuned"``.
        label: The label the paper's figures use, e.g. ``"AdamQLR (Untuned)"``.
        builder: ``builder(model, loss, hparams) -> Stepper``; ``hparams`` is complete (defaults
            merged with the overrides).
        defaults: Every hyperparameter with its default value (JSON scalars, or tuples of them).
        batch_size: Default batch size of this configuration (``None``: the task profile's).
        task_batch_size: Per-task exceptions to ``batch_size`` (``None``: the task profile's),
            e.g. untuned AdamQLR uses 3200 except on Penn Treebank.
        description: One line for ``--help`` and the book.
    """

    name: str
    label: str
    builder: Builder
    defaults: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    task_batch_size: Mapping[str, int | None] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"invalid optimiser name {self.name!r} (expected lower-case letters, digits, '-')"
            )
        if not callable(self.builder):
            raise ValueError(f"optimiser {self.name!r}: builder {self.builder!r} is not callable")
        for size in [self.batch_size, *self.task_batch_size.values()]:
            if size is not None and (
                isinstance(size, bool) or not isinstance(size, int) or size < 1
            ):
                raise ValueError(f"optimiser {self.name!r}: invalid batch size {size!r}")
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        object.__setattr__(self, "task_batch_size", MappingProxyType(dict(self.task_batch_size)))

    def as_cell(self, name: str, label: str) -> OptimiserEntry:
        """Return this configuration as a factorial cell, under the cell's name and label.

        The same builder and defaults: the cell's searches and repeats are records of its own.

        Args:
            name: The cell's registry name, e.g. ``"adam-alpha-adaptive"``.
            label: The cell's label (:func:`adamqlr.rules.cell_label`).
        """
        return OptimiserEntry(
            name,
            label,
            self.builder,
            self.defaults,
            description=f"the factorial cell that is {self.name!r} (the same optimiser, recorded "
            "under the cell's name)",
        )

    def default_batch_size(self, task: str) -> int | None:
        """Return this configuration's batch size on ``task`` (``None``: the task profile's)."""
        return self.task_batch_size.get(task, self.batch_size)

    def hyperparameters(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Return the defaults updated with ``overrides``, with values normalised.

        Integers given for float-valued hyperparameters become floats (so ``lr=1`` and
        ``lr=1.0`` are the same experiment) and lists become tuples.

        Raises:
            ValueError: If an override names an unknown hyperparameter or has an unusable value.
        """
        merged = dict(self.defaults)
        for key, value in (overrides or {}).items():
            if key not in self.defaults:
                raise ValueError(
                    f"unknown hyperparameter {key!r} for optimiser {self.name!r}; expected one of "
                    f"{sorted(self.defaults)}"
                )
            merged[key] = _normalise_value(key, value, self.defaults[key])
        return merged

    def build(
        self, model: nn.Module, loss: str | Loss, hparams: Mapping[str, Any] | None = None
    ) -> Stepper:
        """Return a :class:`Stepper` for ``model``.

        Args:
            model: The network to optimise.
            loss: A loss name (``"cross_entropy"``, ``"squared_error"``) or a
                :class:`adamqlr.losses.Loss`.
            hparams: Overrides of :attr:`defaults`.

        Raises:
            ValueError: For unknown hyperparameters or values the optimiser rejects.
        """
        return self.builder(model, get_loss(loss), self.hyperparameters(hparams))


def _normalise_value(key: str, value: Any, default: Any) -> Any:
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, tuple):
        if isinstance(default, tuple) and len(default) == len(value):
            return tuple(_normalise_value(key, v, d) for v, d in zip(value, default, strict=True))
        return tuple(_normalise_value(key, v, None) for v in value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"invalid hyperparameter {key}={value!r} (expected a finite number)")
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (default is None or (isinstance(default, float)))
    ):
        return float(value)
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError(
            f"invalid hyperparameter {key}={value!r} (expected a number, string, bool, null or "
            "list)"
        )
    return value
