"""The optimisers an experiment can name, each behind one small interface, :class:`Stepper`.

An experiment spec names an optimiser (``"adamqlr-untuned"``, ``"adam"``, ...) and gives
hyperparameters; :data:`OPTIMISERS` turns the name into an :class:`OptimiserEntry` whose
:meth:`~OptimiserEntry.build` returns a :class:`Stepper` for a model. The training loop only calls
``stepper.step(inputs, targets)``, which does everything one optimisation step needs (forward,
backward, update) and returns the pre-update mini-batch loss and whatever adaptive statistics the
optimiser has (step size, damping, rho, ...).

Baselines that torch has are torch's own (:class:`torch.optim.SGD`, :class:`torch.optim.Adam`),
adapted by :class:`TorchStepper`; AdamQLR and SGDQLR are the package's optimisers, adapted by
:class:`QLRStepper`.

Each entry lists *all* its hyperparameters with their defaults (the paper's placeholders or
untuned values, from the authors' configuration files), so the resolved hyperparameters of a run
are always complete and explicit in its record. Other modules add entries with
:func:`register_optimiser` (the K-FAC and Baydin-SGD baselines do this): a module listed in
:data:`OPTIMISER_PROVIDERS` is imported the first time the registry is consulted, so its
entries appear in ``adamqlr run --help``.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from adamqlr.losses import Loss, get_loss
from adamqlr.optim import SGDQLR, AdamQLR, QuadraticModelOptimizer

__all__ = [
    "OPTIMISERS",
    "OPTIMISER_PROVIDERS",
    "OptimiserEntry",
    "QLRStepper",
    "Stepper",
    "TorchStepper",
    "get_optimiser",
    "optimiser_names",
    "register_optimiser",
]


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

    def __init__(self, optimizer: QuadraticModelOptimizer) -> None:
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


# ---------------------------------------------------------------------------------- builders
def _sgd(model: nn.Module, loss: Loss, h: dict[str, Any]) -> Stepper:
    opt = torch.optim.SGD(model.parameters(), lr=h["lr"])
    return TorchStepper(model, loss, opt)


def _sgd_full(model: nn.Module, loss: Loss, h: dict[str, Any]) -> Stepper:
    # torch's SGD with dampening 0 is optax's chain(add_decayed_weights(w), sgd(lr, momentum)):
    # g <- g + w theta; v <- g + mu v (v_0 = g); theta <- theta - lr v.
    opt = torch.optim.SGD(
        model.parameters(),
        lr=h["lr"],
        momentum=h["momentum"],
        weight_decay=h["weight_decay"],
        dampening=0.0,
        nesterov=False,
    )
    return TorchStepper(model, loss, opt)


def _adam(model: nn.Module, loss: Loss, h: dict[str, Any]) -> Stepper:
    opt = torch.optim.Adam(model.parameters(), lr=h["lr"], betas=tuple(h["betas"]), eps=h["eps"])
    return TorchStepper(model, loss, opt)


_QLR_KEYS = (
    "curvature",
    "initial_damping",
    "damping_decrease",
    "damping_increase",
    "damping_min",
    "damping_interval",
    "lr_clip",
    "amplification",
    "undamped",
    "weight_decay",
    "nonpositive_curvature",
)


def _qlr_kwargs(h: dict[str, Any]) -> dict[str, Any]:
    kwargs = {k: h[k] for k in _QLR_KEYS if k not in ("curvature", "damping_min")}
    kwargs["damping_bounds"] = (h["damping_min"], math.inf)
    kwargs["resolve_loss"] = False  # the paper's rule: rho from any loss difference
    return kwargs


def _adamqlr(model: nn.Module, loss: Loss, h: dict[str, Any]) -> Stepper:
    opt = AdamQLR(
        model, loss, h["curvature"], betas=tuple(h["betas"]), eps=h["eps"], **_qlr_kwargs(h)
    )
    return QLRStepper(opt)


def _sgdqlr(model: nn.Module, loss: Loss, h: dict[str, Any]) -> Stepper:
    return QLRStepper(SGDQLR(model, loss, h["curvature"], **_qlr_kwargs(h)))


#: The paper's untuned AdamQLR (the authors' `AdamQLR_NoHPO_NoLRClipping.yaml`; the defaults
#: of :class:`adamqlr.AdamQLR`).
_ADAMQLR_UNTUNED: dict[str, Any] = {
    "curvature": "fisher",
    "initial_damping": 1e-3,
    "damping_decrease": 0.5,
    "damping_increase": 2.0,
    "damping_min": 1e-8,
    "damping_interval": 1,
    "lr_clip": None,
    "amplification": 1.0,
    "undamped": False,
    "weight_decay": 0.0,
    "nonpositive_curvature": "reject",
    "betas": (0.9, 0.999),
    "eps": 1e-8,
}
#: The tuned configuration's placeholders (the authors' configuration files); tuning overwrites
#: them.
_ADAMQLR_TUNED = {
    **_ADAMQLR_UNTUNED,
    "initial_damping": 1.0,
    "damping_decrease": 0.95,
    "damping_increase": 1.0526,
}
#: SGDQLR's damped configuration (the authors' code): lambda_0 = 1, omega 0.9 / 2.0.
_SGDQLR = {k: v for k, v in _ADAMQLR_UNTUNED.items() if k not in ("betas", "eps")} | {
    "initial_damping": 1.0,
    "damping_decrease": 0.9,
    "damping_increase": 2.0,
}

#: Untuned runs use batch size 3200 except on Penn Treebank (the dataset's default, 30 x 70).
_UNTUNED_BATCH = 3200
_UNTUNED_EXCEPTIONS: dict[str, int | None] = {"penn-treebank": None, "rosenbrock": None}

_BUILTIN: tuple[OptimiserEntry, ...] = (
    OptimiserEntry(
        "sgd",
        "SGD Minimal",
        _sgd,
        {"lr": 1e-3},
        description="torch.optim.SGD without momentum (optax.sgd); lr placeholder 1e-3",
    ),
    OptimiserEntry(
        "sgd-full",
        "SGD Full",
        _sgd_full,
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        description="SGD with heavy-ball momentum and coupled L2 weight decay (torch.optim.SGD)",
    ),
    OptimiserEntry(
        "adam",
        "Adam",
        _adam,
        {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
        description="torch.optim.Adam; lr placeholder 1e-3 (tuned)",
    ),
    OptimiserEntry(
        "adam-tuned-eps",
        "Adam (Tuned ε)",
        _adam,
        {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
        description="torch.optim.Adam with epsilon tuned as well as lr",
    ),
    OptimiserEntry(
        "adam-untuned",
        "Adam (Untuned)",
        _adam,
        {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8},
        description="torch.optim.Adam at lr 1e-3 and the task's default batch size",
    ),
    OptimiserEntry(
        "adamqlr",
        "AdamQLR",
        _adamqlr,
        _ADAMQLR_TUNED,
        description="AdamQLR, Fisher curvature, damped; placeholders 1.0/0.95/1.0526 (tuned)",
    ),
    OptimiserEntry(
        "adamqlr-untuned",
        "AdamQLR (Untuned)",
        _adamqlr,
        _ADAMQLR_UNTUNED,
        batch_size=_UNTUNED_BATCH,
        task_batch_size=_UNTUNED_EXCEPTIONS,
        description="AdamQLR with the paper's defaults (lambda_0 1e-3, 0.5/2.0) at batch size 3200",
    ),
    OptimiserEntry(
        "adamqlr-hessian",
        "AdamQLR (Hessian)",
        _adamqlr,
        {**_ADAMQLR_TUNED, "curvature": "hessian"},
        description="AdamQLR with the Hessian instead of the Fisher (tuned placeholders)",
    ),
    OptimiserEntry(
        "adamqlr-untuned-hessian",
        "AdamQLR (Untuned, Hessian)",
        _adamqlr,
        {**_ADAMQLR_UNTUNED, "curvature": "hessian"},
        batch_size=_UNTUNED_BATCH,
        task_batch_size=_UNTUNED_EXCEPTIONS,
        description="untuned AdamQLR with Hessian curvature (the Rosenbrock figure)",
    ),
    OptimiserEntry(
        "adamqlr-undamped",
        "AdamQLR (Undamped)",
        _adamqlr,
        {**_ADAMQLR_UNTUNED, "undamped": True, "initial_damping": 0.0},
        description="AdamQLR without damping (lambda = 0, no rho); only the batch size is tuned",
    ),
    OptimiserEntry(
        "sgdqlr",
        "SGDQLR",
        _sgdqlr,
        _SGDQLR,
        description="the same heuristics on the gradient direction (lambda_0 1, 0.9/2.0)",
    ),
)

_REGISTRY: dict[str, OptimiserEntry] = {e.name: e for e in _BUILTIN}

#: Read-only view of the registry, name -> entry. Use :func:`get_optimiser` for a name, which
#: also imports the provider modules first.
OPTIMISERS: Mapping[str, OptimiserEntry] = MappingProxyType(_REGISTRY)

#: Modules that call :func:`register_optimiser` when imported (e.g. the K-FAC and Baydin-SGD
#: baselines). Each is imported the first time the registry is listed or queried. A module
#: that does not exist (yet) is skipped; any other import error propagates.
OPTIMISER_PROVIDERS: list[str] = ["adamqlr.baselines"]
_loaded_providers: set[str] = set()


def _load_providers() -> None:
    for module in list(OPTIMISER_PROVIDERS):
        if module in _loaded_providers:
            continue
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
        _loaded_providers.add(module)


def register_optimiser(entry: OptimiserEntry, *, replace: bool = False) -> OptimiserEntry:
    """Add ``entry`` to the registry (how K-FAC, Baydin SGD, or your own optimiser join in).

    Example::

        register_optimiser(OptimiserEntry("kfac", "K-FAC", build_kfac, {"initial_damping": 1.0}))

    Args:
        entry: The entry to add.
        replace: Allow replacing an existing entry of the same name.

    Returns:
        The entry (so the call can be used as an expression).

    Raises:
        ValueError: If the name is taken and ``replace`` is false.
    """
    if not isinstance(entry, OptimiserEntry):
        raise ValueError(f"expected an OptimiserEntry, got {type(entry).__name__}")
    if entry.name in _REGISTRY and not replace and _REGISTRY[entry.name] is not entry:
        raise ValueError(f"optimiser {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def optimiser_names() -> list[str]:
    """Return the registered optimiser names, in registration order."""
    _load_providers()
    return list(_REGISTRY)


def get_optimiser(name: str) -> OptimiserEntry:
    """Return the registry entry called ``name``.

    Raises:
        ValueError: If no optimiser has that name (the message lists the known ones).
    """
    _load_providers()
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown optimiser {name!r}; expected one of {list(_REGISTRY)}")
    return _REGISTRY[name]
