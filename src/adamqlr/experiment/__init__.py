"""Experiments: a spec names one, ``run`` trains it and stores its record, ``load`` reads it.

::

    from adamqlr.experiment import ExperimentSpec, run, load

    spec = ExperimentSpec("fashion-mnist", "adamqlr-untuned", profile="quick", seed=0)
    record = run(spec)              # trains, or returns the stored record if there is one
    record.metrics[["time", "train_loss", "test_loss"]]

Names are imported lazily (PEP 562), so ``import adamqlr.experiment`` is cheap. The results store
(:mod:`adamqlr.results`) sits below this package: it knows a spec only through a protocol.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "OPTIMISERS",
    "ExperimentSpec",
    "OptimiserEntry",
    "RunSettings",
    "Stepper",
    "TrainResult",
    "get_optimiser",
    "load",
    "obtain",
    "optimiser_names",
    "register_optimiser",
    "run",
    "run_many",
    "train",
]

_WHERE = {
    "OPTIMISERS": "adamqlr.experiment.optimisers",
    "OptimiserEntry": "adamqlr.experiment.optimisers",
    "Stepper": "adamqlr.experiment.optimisers",
    "get_optimiser": "adamqlr.experiment.optimisers",
    "optimiser_names": "adamqlr.experiment.optimisers",
    "register_optimiser": "adamqlr.experiment.optimisers",
    "ExperimentSpec": "adamqlr.experiment.spec",
    "RunSettings": "adamqlr.experiment.spec",
    "TrainResult": "adamqlr.experiment.loop",
    "train": "adamqlr.experiment.loop",
    "run": "adamqlr.experiment.runner",
    "obtain": "adamqlr.experiment.runner",
    "run_many": "adamqlr.experiment.runner",
    "load": "adamqlr.results.store",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
