"""Hyperparameter tuning as in the paper: random search, successive halving, repeats of the best.

::

    from adamqlr.tune import TuneConfig, SpecObjective, run_worker

    config = TuneConfig("uci-energy", "adam", regime="fixed-epochs", profile="quick")
    summary = run_worker(config, SpecObjective(config), storage="journal:results/tuning/energy.log")

or from the command line, ``adamqlr tune --task uci-energy --optimiser adam --profile quick``.
Start the same command on other processes or machines (same ``--storage``) to add workers.
:mod:`~adamqlr.tune.spaces` has the search spaces, :mod:`~adamqlr.tune.study` the protocol and its
reliability guarantees, :mod:`~adamqlr.tune.objective` the regimes' objectives and budgets,
:mod:`~adamqlr.tune.storage` the storages.

Needs the ``tune`` extra (``optuna``).
"""

import warnings

with warnings.catch_warnings():
    # optuna imports tqdm.auto, which warns in a notebook kernel without ipywidgets; we draw no
    # optuna progress bars, so the warning would only put stderr on the book's pages.
    warnings.filterwarnings("ignore", message="IProgress not found")
    import optuna  # noqa: F401

from adamqlr.tune.objective import SpecObjective, objective_metric
from adamqlr.tune.spaces import SPACES, UNTUNED, Choice, LogUniform, OneMinus, search_space
from adamqlr.tune.storage import default_storage_url, open_storage
from adamqlr.tune.study import (
    PROFILES,
    REGIMES,
    Outcome,
    TrialRequest,
    TrialSeededRandomSampler,
    TuneConfig,
    WorkerSummary,
    best_trial,
    describe_study,
    open_study,
    reap_expired_trials,
    repeat_trials,
    run_worker,
    suggest,
)

__all__ = [
    "PROFILES",
    "REGIMES",
    "SPACES",
    "UNTUNED",
    "Choice",
    "LogUniform",
    "OneMinus",
    "Outcome",
    "SpecObjective",
    "TrialRequest",
    "TrialSeededRandomSampler",
    "TuneConfig",
    "WorkerSummary",
    "best_trial",
    "default_storage_url",
    "describe_study",
    "objective_metric",
    "open_storage",
    "open_study",
    "reap_expired_trials",
    "repeat_trials",
    "run_worker",
    "search_space",
    "suggest",
]
