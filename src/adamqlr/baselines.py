"""Registry entries for the baselines this package implements: K-FAC and Baydin SGD.

The optimiser registry (:mod:`adamqlr.experiment.optimisers`) lists :data:`ENTRIES`:

* ``"kfac"`` ("K-FAC"): :class:`adamqlr.kfac.KFAC` in adaptive mode, kfac-jax's settings in the
  paper (the authors' code, ``ab3dea5``): curvature EMA 0.95, inverses refreshed and damping adapted
  every step, damping factor 0.9, minimum damping 1e-8, ``lambda_0`` placeholder 1.0 (tuned);
* ``"kfac-unadaptive"`` ("K-FAC (Unadaptive)"): fixed learning rate, momentum and damping
  (placeholders 1e-3, 0.9, 1.0; all tuned);
* ``"kfac-untuned"`` ("K-FAC (Untuned)"): adaptive K-FAC at ``lambda_0 = 1`` and batch size 3200
  (the task's default batch on Penn Treebank and Rosenbrock);
* ``"baydin-sgd"`` ("Baydin SGD"): :class:`adamqlr.baydin.BaydinSGD`, placeholders 1e-3 / 1e-3;
* the factorial study's K-FAC cells (:data:`KFAC_CELLS`, :mod:`adamqlr.studies.factorial`),
  ``"kfac-<rule>-<damping>"``: rule ``const`` (``step_rule="constant"``: a tuned learning rate and
  momentum, placeholders 1e-3 and 0.9), ``alpha`` (the 1-D minimiser of the damped quadratic model
  along the K-FAC direction, no momentum) or ``alpha-mom`` (kfac-jax's joint learning rate and
  momentum); damping ``none`` (``damping_update="fixed"`` at :data:`adamqlr.kfac.NO_DAMPING`,
  1e-8: the damping also enters K-FAC's preconditioner, whose factors need some, so "none" is
  kfac-jax's floor), ``fixed`` (a tuned constant lambda, placeholder 1.0) or ``adaptive``
  (kfac-jax's Levenberg-Marquardt rule, ``lambda_0`` placeholder 1.0 as ``"kfac"``). Two cells are
  the paper's configurations (:data:`KFAC_CELL_ALIASES`): ``kfac-alpha-mom-adaptive`` builds
  exactly what ``"kfac"`` builds and ``kfac-const-fixed`` what ``"kfac-unadaptive"`` builds (the
  same builder and the same defaults). They are registered under the cell's name all the same, as
  the SGD and Adam cells are, so that the study's runs are recorded, tuned and found under the
  cell's name only and never mixed with (or duplicated by) the paper's entries' records; the
  study runs the cell names.

K-FAC draws its sampled targets from torch's global generator, which the training loop seeds from
the run's seed and checkpoints, so a run stays reproducible and resumable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from adamqlr.baydin import BaydinSGD
from adamqlr.kfac import KFAC, NO_DAMPING
from adamqlr.losses import Loss
from adamqlr.rules import cell_label
from adamqlr.steppers import OptimiserEntry, QLRStepper, Stepper, TorchStepper

__all__ = [
    "BAYDIN_SGD",
    "ENTRIES",
    "KFAC_ADAPTIVE",
    "KFAC_CELLS",
    "KFAC_CELL_ALIASES",
    "KFAC_UNADAPTIVE",
    "KFAC_UNTUNED",
]

_KFAC_COMMON: dict[str, Any] = {
    "initial_damping": 1.0,
    "ema_decay": 0.95,
    "inverse_update_period": 1,
    "estimation": "sampled",
}


def _kfac(model: nn.Module, loss: Loss, h: dict[str, Any]) -> Stepper:
    return QLRStepper(
        KFAC(
            model,
            loss,
            "adaptive",
            initial_damping=h["initial_damping"],
            damping_decay=h["damping_decay"],
            damping_bounds=(h["damping_min"], math.inf),
            damping_interval=h["damping_interval"],
            ema_decay=h["ema_decay"],
            inverse_update_period=h["inverse_update_period"],
            estimation=h["estimation"],
        )
    )


def _kfac_unadaptive(model: nn.Module, loss: Loss, h: dict[str, Any]) -> Stepper:
    return QLRStepper(
        KFAC(
            model,
            loss,
            "unadaptive",
            lr=h["lr"],
            momentum=h["momentum"],
            initial_damping=h["initial_damping"],
            ema_decay=h["ema_decay"],
            inverse_update_period=h["inverse_update_period"],
            estimation=h["estimation"],
        )
    )


def _kfac_cell(model: nn.Module, loss: Loss, h: dict[str, Any]) -> Stepper:
    """Build a factorial cell: K-FAC with ``h["step_rule"]`` and ``h["damping_update"]``."""
    rules: dict[str, Any] = {}
    if h["step_rule"] == "constant":
        rules |= {"lr": h["lr"], "momentum": h["momentum"]}
    if h["damping_update"] == "adaptive":
        rules |= {
            "damping_decay": h["damping_decay"],
            "damping_bounds": (h["damping_min"], math.inf),
            "damping_interval": h["damping_interval"],
        }
    return QLRStepper(
        KFAC(
            model,
            loss,
            step_rule=h["step_rule"],
            damping_update=h["damping_update"],
            initial_damping=h["initial_damping"],
            ema_decay=h["ema_decay"],
            inverse_update_period=h["inverse_update_period"],
            estimation=h["estimation"],
            **rules,
        )
    )


def _baydin(model: nn.Module, loss: Loss, h: dict[str, Any]) -> Stepper:
    opt = BaydinSGD(model.parameters(), lr=h["lr"], hypergrad_lr=h["hypergrad_lr"])
    return TorchStepper(model, loss, opt)


_KFAC_ADAPTIVE_DEFAULTS = {
    **_KFAC_COMMON,
    "damping_decay": 0.9,
    "damping_min": 1e-8,
    "damping_interval": 1,
}

KFAC_ADAPTIVE = OptimiserEntry(
    "kfac",
    "K-FAC",
    _kfac,
    _KFAC_ADAPTIVE_DEFAULTS,
    description="K-FAC with kfac-jax's adaptive lr, momentum and damping; lambda_0 1.0 (tuned)",
)
KFAC_UNADAPTIVE = OptimiserEntry(
    "kfac-unadaptive",
    "K-FAC (Unadaptive)",
    _kfac_unadaptive,
    {**_KFAC_COMMON, "lr": 1e-3, "momentum": 0.9},
    description="K-FAC with fixed lr, momentum and damping (placeholders 1e-3, 0.9, 1.0)",
)
KFAC_UNTUNED = OptimiserEntry(
    "kfac-untuned",
    "K-FAC (Untuned)",
    _kfac,
    _KFAC_ADAPTIVE_DEFAULTS,
    batch_size=3200,
    task_batch_size={"penn-treebank": None, "rosenbrock": None},
    description="adaptive K-FAC at lambda_0 = 1 and batch size 3200",
)
BAYDIN_SGD = OptimiserEntry(
    "baydin-sgd",
    "Baydin SGD",
    _baydin,
    {"lr": 1e-3, "hypergrad_lr": 1e-3},
    description="SGD with hypergradient descent on the learning rate; placeholders 1e-3/1e-3",
)

# ------------------------------------------------------------- the factorial's K-FAC cells
_CELL_RULES = {"const": "constant", "alpha": "alpha", "alpha-mom": "alpha-momentum"}

#: Cells that are the paper's configurations: the same builder and defaults as these entries.
KFAC_CELL_ALIASES: Mapping[str, str] = MappingProxyType(
    {"kfac-alpha-mom-adaptive": "kfac", "kfac-const-fixed": "kfac-unadaptive"}
)


def _cell_defaults(rule: str, damping: str) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        **_KFAC_COMMON,
        "step_rule": _CELL_RULES[rule],
        "damping_update": "adaptive" if damping == "adaptive" else "fixed",
    }
    if rule == "const":
        defaults |= {"lr": 1e-3, "momentum": 0.9}
    if damping == "none":
        defaults["initial_damping"] = NO_DAMPING
    elif damping == "adaptive":
        defaults |= {"damping_decay": 0.9, "damping_min": 1e-8, "damping_interval": 1}
    return defaults


def _kfac_cells() -> tuple[OptimiserEntry, ...]:
    paper = {e.name: e for e in (KFAC_ADAPTIVE, KFAC_UNADAPTIVE)}
    entries = []
    for rule in _CELL_RULES:
        for damping in ("none", "fixed", "adaptive"):
            name = f"kfac-{rule}-{damping}"
            label = cell_label("K-FAC", "constant" if rule == "const" else rule, damping)
            target = KFAC_CELL_ALIASES.get(name)
            if target is not None:
                entries.append(paper[target].as_cell(name, label))
                continue
            entries.append(
                OptimiserEntry(
                    name,
                    label,
                    _kfac_cell,
                    _cell_defaults(rule, damping),
                    description=f"factorial cell: K-FAC direction, step rule {rule}, damping "
                    f"{damping}"
                    + (f" (lambda fixed at {NO_DAMPING:g})" if damping == "none" else ""),
                )
            )
    return tuple(entries)


#: The factorial's nine K-FAC cells, ``kfac-<const|alpha|alpha-mom>-<none|fixed|adaptive>``.
KFAC_CELLS: tuple[OptimiserEntry, ...] = _kfac_cells()

#: The baselines' entries, in the order the optimiser registry lists them.
ENTRIES: tuple[OptimiserEntry, ...] = (
    KFAC_ADAPTIVE,
    KFAC_UNADAPTIVE,
    KFAC_UNTUNED,
    BAYDIN_SGD,
    *KFAC_CELLS,
)
