"""The optimisers an experiment can name, each behind one small interface, :class:`Stepper`.

An experiment spec names an optimiser (``"adamqlr-untuned"``, ``"adam"``, ...) and gives
hyperparameters; :data:`OPTIMISERS` turns the name into an :class:`OptimiserEntry` whose
:meth:`~OptimiserEntry.build` returns a :class:`Stepper` for a model. The training loop only calls
``stepper.step(inputs, targets)``, which does everything one optimisation step needs (forward,
backward, update) and returns the pre-update mini-batch loss and whatever adaptive statistics the
optimiser has (step size, damping, rho, ...).

Baselines that torch has are torch's own (:class:`torch.optim.SGD`, :class:`torch.optim.Adam`),
adapted by :class:`TorchStepper`; AdamQLR and SGDQLR are the package's optimisers, adapted by
:class:`QLRStepper` (both in :mod:`adamqlr.steppers`, re-exported here). The K-FAC and
Baydin-SGD baselines' entries come from :mod:`adamqlr.baselines`.

Each entry lists *all* its hyperparameters with their defaults (the paper's placeholders or
untuned values, from the authors' configuration files), so the resolved hyperparameters of a run
are always complete and explicit in its record. Your own code adds entries with
:func:`register_optimiser`; a module listed in :data:`OPTIMISER_PROVIDERS` is imported the first
time the registry is consulted, so its entries appear in ``adamqlr run --help``.

The factorial study's cells (:mod:`adamqlr.studies.factorial`) on the SGD and Adam directions are
entries named ``<direction>-<rule>-<damping>``: direction ``sgd`` or ``adam``; rule ``alpha`` (the
minimiser of the damped quadratic model along the direction, ``step_rule="alpha"``) or
``alpha-mom`` (K-FAC's joint learning rate and momentum on the plane of the direction and the
previous update, ``step_rule="alpha-momentum"``); damping ``none``, ``fixed`` (a tuned constant
lambda) or ``adaptive`` (Levenberg-Marquardt), the ``damping_mode`` of :mod:`adamqlr.rules`.
Three cells are configurations the paper already has: ``adam-alpha-adaptive`` builds exactly
what ``adamqlr`` builds, ``adam-alpha-none`` what ``adamqlr-undamped`` builds and
``sgd-alpha-adaptive`` what ``sgdqlr`` builds (the same builder and the same defaults). They are
registered under the cell's own name all the same, so that a cell's runs are recorded, tuned and
found under the cell's name and never mixed with the paper's configuration of the same
algorithm (whose records may come from another search or profile); the study runs the cell
names only. The constant-step cells are ``sgd`` and ``adam`` themselves. Four combinations are
not registered, because the damping would enter nothing:

* ``sgd-const-fixed``: SGD at a constant learning rate builds no quadratic model, so a fixed
  lambda has no term to enter and the cell would be ``sgd`` under another name.
* ``sgd-const-adaptive``: with no model there is no predicted change and so no reduction ratio
  to adapt lambda from; lambda would be adapted for nothing and enter nothing.
* ``adam-const-fixed``: Adam's constant-step update has no quadratic model either, so a fixed
  lambda would leave every step as ``adam`` takes it.
* ``adam-const-adaptive``: likewise no model change to compare the loss change with, so an
  adaptive lambda would have no ratio to follow and no step to act on.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from adamqlr import baselines
from adamqlr.losses import Loss
from adamqlr.optim import SGDQLR, AdamQLR
from adamqlr.rules import (
    DAMPING_KEYWORDS,
    STEP_SIZE_KEYWORDS,
    damping_from_flat,
    step_size_from_flat,
)
from adamqlr.steppers import OptimiserEntry, QLRStepper, Stepper, TorchStepper

__all__ = [
    "CELL_ALIASES",
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


#: Options only the factorial cells give (absent: the optimiser's defaults, "alpha" and the
#: damping ``undamped`` implies), so the paper's entries resolve to the same hyperparameters.
_RULE_KEYS = ("damping_mode", "step_rule", "rho_data")


def _qlr_kwargs(h: dict[str, Any]) -> dict[str, Any]:
    """Return the optimiser's arguments from the flat configuration (its keys key the records).

    The damping and step-size keys become the grouped settings by the optimiser's own mapping
    (:func:`adamqlr.rules.damping_from_flat`), so a run builds what the flat keywords built.
    """
    flat = {k: h[k] for k in _QLR_KEYS if k not in ("curvature", "damping_min")}
    flat |= {k: h[k] for k in _RULE_KEYS if k in h}
    flat["damping_bounds"] = (h["damping_min"], math.inf)
    damping = {k: v for k, v in flat.items() if k in DAMPING_KEYWORDS}
    step = {k: v for k, v in flat.items() if k in STEP_SIZE_KEYWORDS}
    kwargs = {k: v for k, v in flat.items() if k not in damping and k not in step}
    kwargs["damping"] = damping_from_flat(damping)
    kwargs["step_size"] = step_size_from_flat(step)
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
#: them. ``1.0526`` is the authors' rounded ``1/0.95``, kept as written because the run records
#: are keyed by these values; in code, ``LevenbergMarquardt.tied(0.95)`` is the exact tied rule.
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
    # rho measured on the next mini-batch (adamqlr.heldout): the factorial's extra row and the
    # batch-mechanism study's held-out arms
    OptimiserEntry(
        "adamqlr-heldout",
        "AdamQLR (held-out ρ)",
        _adamqlr,
        {**_ADAMQLR_TUNED, "rho_data": "next"},
        description="AdamQLR with rho on the next mini-batch (rho_data='next'; tuned placeholders)",
    ),
    OptimiserEntry(
        "adamqlr-untuned-heldout",
        "AdamQLR (Untuned, held-out ρ)",
        _adamqlr,
        {**_ADAMQLR_UNTUNED, "rho_data": "next"},
        batch_size=_UNTUNED_BATCH,
        task_batch_size=_UNTUNED_EXCEPTIONS,
        description="untuned AdamQLR with rho on the next mini-batch (rho_data='next')",
    ),
)


# ---------------------------------------------------- the factorial's SGD and Adam cells
_DIRECTION_WORDS = {"sgd": "SGD", "adam": "Adam"}
_RULE_WORDS = {"alpha": "α*", "alpha-mom": "α*, μ*"}
_DAMPING_WORDS = {"none": "no damping", "fixed": "fixed λ", "adaptive": "adaptive λ"}
#: Cells that are the paper's configurations: the same builder and defaults as these entries.
CELL_ALIASES: Mapping[str, str] = MappingProxyType(
    {"adam-alpha-adaptive": "adamqlr", "adam-alpha-none": "adamqlr-undamped",
     "sgd-alpha-adaptive": "sgdqlr"}
)  # fmt: skip


def _cell_defaults(direction: str, rule: str, damping: str) -> dict[str, Any]:
    base = dict(_ADAMQLR_TUNED if direction == "adam" else _SGDQLR)
    base["step_rule"] = "alpha-momentum" if rule == "alpha-mom" else "alpha"
    base["damping_mode"] = damping
    if damping == "none":
        base |= {"undamped": True, "initial_damping": 0.0}
    return base


def _cells() -> tuple[OptimiserEntry, ...]:
    builtin = {e.name: e for e in _BUILTIN}
    entries = []
    for direction in ("sgd", "adam"):
        for rule in ("alpha", "alpha-mom"):
            for damping in ("none", "fixed", "adaptive"):
                name = f"{direction}-{rule}-{damping}"
                label = (
                    f"{_DIRECTION_WORDS[direction]} · {_RULE_WORDS[rule]} · "
                    f"{_DAMPING_WORDS[damping]}"
                )
                target = CELL_ALIASES.get(name)
                if target is not None:
                    same = builtin[target]
                    entries.append(
                        OptimiserEntry(
                            name,
                            label,
                            same.builder,
                            same.defaults,
                            description=f"the factorial cell that is {target!r} (the same "
                            "optimiser, recorded under the cell's name)",
                        )
                    )
                    continue
                entries.append(
                    OptimiserEntry(
                        name,
                        label,
                        _adamqlr if direction == "adam" else _sgdqlr,
                        _cell_defaults(direction, rule, damping),
                        description=f"factorial cell: {_DIRECTION_WORDS[direction]} direction, "
                        f"step rule {rule}, damping {damping}",
                    )
                )
    return tuple(entries)


_CELLS = _cells()

_REGISTRY: dict[str, OptimiserEntry] = {e.name: e for e in (*_BUILTIN, *_CELLS, *baselines.ENTRIES)}

#: Read-only view of the registry, name -> entry. Use :func:`get_optimiser` for a name, which
#: also imports the provider modules first.
OPTIMISERS: Mapping[str, OptimiserEntry] = MappingProxyType(_REGISTRY)

#: Modules outside the package that call :func:`register_optimiser` when imported (a plug-in's
#: own optimisers; the package's baselines are in the registry from the start). Each is imported
#: the first time the registry is listed or queried. A module that does not exist is skipped;
#: any other import error propagates.
OPTIMISER_PROVIDERS: list[str] = []
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
