"""Registry entries for the baselines this package implements: K-FAC and Baydin SGD.

The optimiser registry (:mod:`adamqlr.experiment.optimisers`) lists :data:`ENTRIES`:

* ``"kfac"`` ("K-FAC"): :class:`adamqlr.kfac.KFAC` in adaptive mode, kfac-jax's settings in the
  paper (the authors' code, ``ab3dea5``): curvature EMA 0.95, inverses refreshed and damping adapted
  every step, damping factor 0.9, minimum damping 1e-8, ``lambda_0`` placeholder 1.0 (tuned);
* ``"kfac-unadaptive"`` ("K-FAC (Unadaptive)"): fixed learning rate, momentum and damping
  (placeholders 1e-3, 0.9, 1.0; all tuned);
* ``"kfac-untuned"`` ("K-FAC (Untuned)"): adaptive K-FAC at ``lambda_0 = 1`` and batch size 3200
  (the task's default batch on Penn Treebank and Rosenbrock);
* ``"baydin-sgd"`` ("Baydin SGD"): :class:`adamqlr.baydin.BaydinSGD`, placeholders 1e-3 / 1e-3.

K-FAC draws its sampled targets from torch's global generator, which the training loop seeds from
the run's seed and checkpoints, so a run stays reproducible and resumable.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from adamqlr.baydin import BaydinSGD
from adamqlr.kfac import KFAC
from adamqlr.losses import Loss
from adamqlr.steppers import OptimiserEntry, QLRStepper, Stepper, TorchStepper

__all__ = ["BAYDIN_SGD", "ENTRIES", "KFAC_ADAPTIVE", "KFAC_UNADAPTIVE", "KFAC_UNTUNED"]

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

#: The baselines' entries, in the order the optimiser registry lists them.
ENTRIES: tuple[OptimiserEntry, ...] = (KFAC_ADAPTIVE, KFAC_UNADAPTIVE, KFAC_UNTUNED, BAYDIN_SGD)
