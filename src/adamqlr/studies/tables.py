"""The tuning state of a study's searches, as one small table per search, for committing.

For every search arm (:class:`adamqlr.studies.core.Search`) of a study, :func:`write_tuning_tables`
writes, under ``<results>/tuning/<task>/<optimiser>/<regime>-<profile>-<id>/``:

* ``protocol.json``: what was searched and how (space, number of samples, reduction factor, rungs
  and their budget fractions, seeds, objective, base budget) and, once known, the choice;
* ``trials.csv``: one row per trial run: configuration number, rung, budget fraction, seed, the
  drawn hyperparameters (and batch size), the objective (empty while the run is missing; ``inf``
  for a diverged run) and the run's record key.

``<id>`` is the first 8 hex digits of the SHA-256 of the protocol (without the choice), so a
changed protocol never overwrites another's table. The regime is ``fixed-epochs`` unless the
base spec is limited by time only (then ``runtime-train`` or ``runtime-val`` by the objective).
The same search used by two studies is written once. Files are written atomically.

:func:`fold_trials` turns the full records of finished tuning trials into rows of the store's
trial ledgers (:mod:`adamqlr.results.ledger`): the search reads the same final values from
them, and a paper-scale campaign's thousands of trials fit in the repository. Repeats always keep
their full records.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adamqlr.experiment.spec import canonical_json
from adamqlr.results.atomic import atomic_write_bytes
from adamqlr.results.store import ResultStore
from adamqlr.studies.core import Arm, Study, apply_variation, plan, search_state

__all__ = ["fold_trials", "regime_of", "tuning_protocol", "write_tuning_tables"]


def regime_of(arm: Arm) -> str:
    """Return the paper's tuning regime of a search arm (see the module doc)."""
    spec = apply_variation(arm.base, arm.overrides)  # type: ignore[arg-type]
    if spec.seconds is not None and spec.epochs is None and spec.steps is None:
        return "runtime-train" if arm.objective == "train_loss" else "runtime-val"
    return "fixed-epochs"


def _dim(dim: Any) -> dict[str, Any]:
    return {"type": type(dim).__name__, **{k: v for k, v in vars(dim).items()}}


def tuning_protocol(study: Study, arm: Arm) -> dict[str, Any]:
    """Return the protocol of a search arm (JSON-able, without the choice)."""
    assert arm.search is not None
    st = study.spec(arm.trial_spec(0, 1.0)).settings()
    return {
        "task": st.task,
        "optimiser": st.optimiser,
        "profile": st.profile,
        "regime": regime_of(arm),
        "objective": arm.objective,
        "space": {k: _dim(v) for k, v in arm.search.space.items()},
        "n_trials": arm.search.n_trials,
        "reduction_factor": arm.search.reduction_factor,
        "rungs": [list(r) for r in arm.search.rungs],
        "seed": arm.search.seed,
        "stream": arm.search.stream,
        "tune_seed": arm.tune_seed,
        **({} if arm.search.eval_points is None else {"trial_eval_points": arm.search.eval_points}),
        "budget": {"epochs": st.epochs, "steps": st.steps, "seconds": st.seconds},
        "repeat_seeds": list(arm.seeds),
    }


def write_tuning_tables(
    studies: Sequence[Study], store: ResultStore, root: str | Path | None = None
) -> list[Path]:
    """Write the tuning table of every search arm of ``studies`` (see the module doc).

    Args:
        studies: The studies.
        store: The results store the trials' records are in.
        root: Folder under which ``tuning/`` goes (default: the store's root).

    Returns:
        The folders written.
    """
    base = Path(root if root is not None else store.root) / "tuning"
    written: dict[str, Path] = {}
    for study in studies:
        for arm in study.arms:
            if arm.search is None:
                continue
            protocol = tuning_protocol(study, arm)
            ident = hashlib.sha256(canonical_json(protocol).encode()).hexdigest()[:8]
            if ident in written:
                continue
            folder = (
                base / protocol["task"] / protocol["optimiser"]
                / f"{protocol['regime']}-{protocol['profile']}-{ident}"
            )  # fmt: skip
            state = search_state(study, arm, store)
            names = list(arm.search.space)
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["trial", "rung", "fraction", "seed", *names, "objective", "key"])
            for number, rung, spec in state.trials:
                config = arm.search.configuration(number)
                value = state.objectives.get((number, rung))
                text = "" if value is None else ("inf" if math.isinf(value) else repr(value))
                writer.writerow(
                    [number, rung, arm.search.rungs[rung][1], spec.seed,
                     *(config[n] for n in names), text, spec.key]
                )  # fmt: skip
            choice = None if state.choice is None else dict(state.choice)
            payload = {**protocol, "id": ident, "choice": choice, "complete": choice is not None}
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(
                folder / "protocol.json", (json.dumps(payload, indent=1) + "\n").encode()
            )
            atomic_write_bytes(folder / "trials.csv", buf.getvalue().encode())
            written[ident] = folder
    return list(written.values())


def fold_trials(
    studies: Sequence[Study], store: ResultStore, *, protect: Sequence[Study] = ()
) -> list[Path]:
    """Fold the full records of the studies' tuning trials into the store's trial ledgers.

    A spec that is also a repeat of any arm of ``studies`` or ``protect`` is never folded. Safe
    to call while a campaign runs and to repeat (see :meth:`ResultStore.summarise`).

    Args:
        studies: The studies whose trials to fold.
        store: The results store.
        protect: Further studies whose repeats must keep full records (e.g. every study of the
            profile, in case one repeats a configuration another tunes).

    Returns:
        The record folders removed.
    """
    trials: dict[str, Any] = {}
    repeats: set[str] = set()
    for study in (*studies, *protect):
        for p in plan(study, store):
            if study in studies:
                trials.update((s.key, s) for s in p.trials)
            repeats.update(s.key for s in p.repeats)
    return store.summarise([s for k, s in trials.items() if k not in repeats])
