"""The tuning objective of the paper's regimes, as experiments in the results store.

Every trial is an :class:`~adamqlr.experiment.ExperimentSpec` trained by
:func:`adamqlr.experiment.run`, so every tuned trial and every repeat is a run record that figures
read back; a trial that was interrupted resumes from its checkpoint when it is retried.

Budgets, per regime (``cap`` = the study's time cap, in seconds of optimisation time):

=================  ===================================  ====================================
regime             tuning trial                         repeat
=================  ===================================  ====================================
``fixed-epochs``   the profile's epochs (or steps), and  the profile's epochs (or steps); no
                   at most ``cap``; last validation loss  cap (as the paper's repeats)
``runtime-train``  ``cap`` only; last mini-batch         ``cap``
                   training loss
``runtime-val``    ``cap`` only; last validation loss    ``cap``
=================  ===================================  ====================================

The paper's caps count wall-clock time including a full evaluation after every step; ours count
optimisation time only (evaluation runs every ``eval_every`` steps and is timed apart).
"""

from __future__ import annotations

import math
import os
from typing import Any

from adamqlr.tune.study import Outcome, Reporter, TrialRequest, TuneConfig

__all__ = ["SpecObjective", "objective_metric"]


def objective_metric(regime: str) -> str:
    """Return the metric column a regime minimises (``"val_loss"`` or ``"train_loss"``)."""
    return "train_loss" if regime == "runtime-train" else "val_loss"


class SpecObjective:
    """Run a trial as an experiment and return its final objective.

    Args:
        config: The tuning configuration.
        root: Results folder (default :func:`adamqlr.results.default_root`).
        device: Device of the runs (``"auto"``, ``"cpu"``, ``"cuda"``).
        progress: Progress bars for the runs.
    """

    def __init__(
        self,
        config: TuneConfig,
        *,
        root: str | os.PathLike[str] | None = None,
        device: str = "auto",
        progress: bool = False,
    ) -> None:
        self.config = config
        self.root = root
        self.device = device
        self.progress = progress
        self.metric = objective_metric(config.regime)

    def spec(self, request: TrialRequest) -> Any:
        """Return the :class:`~adamqlr.experiment.ExperimentSpec` of ``request``."""
        from adamqlr.experiment import ExperimentSpec
        from adamqlr.tasks import get_task

        cfg = self.config
        budget: dict[str, Any] = {}
        if cfg.regime == "fixed-epochs":
            prof = get_task(cfg.task).profile(cfg.profile)
            budget = {"epochs": prof.epochs, "steps": prof.steps}
            if request.role == "tune":
                budget["seconds"] = cfg.cap_s
        else:
            budget = {"seconds": cfg.cap_s}
        return ExperimentSpec(
            task=cfg.task,
            optimiser=cfg.optimiser,
            profile=cfg.profile,
            seed=request.seed,
            hyperparameters=request.hyperparameters,
            batch_size=request.batch_size,
            device=self.device,
            **budget,
        )

    def __call__(self, request: TrialRequest, report: Reporter) -> Outcome:
        """Train the trial's experiment (or load it, if stored) and return its outcome."""
        from adamqlr.experiment import run

        spec = self.spec(request)

        def callback(row: dict[str, float]) -> str | None:
            value = row.get(self.metric)
            if value is None or not math.isfinite(value):
                return None
            return "pruned" if report(float(value), float(row["time"])) else None

        record = run(spec, root=self.root, progress=self.progress, callback=callback)
        metrics = record.metrics
        column = metrics[self.metric].dropna() if self.metric in metrics else None
        value = float(column.iloc[-1]) if column is not None and len(column) else math.nan
        stop = str(record.provenance.get("stop_reason", ""))
        attrs = {
            "record_key": record.key,
            "stop_reason": stop,
            "steps": int(record.provenance.get("steps", 0)),
            "optimisation_time_s": float(record.provenance.get("optimisation_time_s", math.nan)),
            "spec": str(spec),
        }
        return Outcome(value, pruned=stop == "callback:pruned", attrs=attrs)

    def load_repeats(self, study: Any) -> list[Any]:
        """Load the run records of the study's finished repeats, by repeat index.

        Raises:
            adamqlr.results.MissingRecordError: If a repeat's record is not in the store.
        """
        from adamqlr.results import load
        from adamqlr.tune.study import _request, repeat_trials

        records = []
        for frozen in repeat_trials(study):
            request = _request(frozen, self.config)  # type: ignore[arg-type]
            records.append(load(self.spec(request), root=self.root))
        return records
