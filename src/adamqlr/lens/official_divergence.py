"""Does the authors' AdamQLR diverge at small batch sizes too? Both implementations, side by side.

For each batch size and seed, untuned AdamQLR trains the Fashion-MNIST MLP from the same
initialisation (:meth:`adamqlr.tasks.base.Task.make_model` with the seed: Haiku's truncated
normal) on the same mini-batches (the experiment runner's order for that seed:
:func:`adamqlr.experiment.loop.derived_seeds` and :meth:`adamqlr.tasks.base.Task.batches`) twice:
with the authors' step and stopping rule (:func:`adamqlr.lens.official.run_official`) and with
:class:`adamqlr.AdamQLR` as the experiments build it (the ``adamqlr-untuned`` registry entry).
The authors' own permutation comes from JAX's random number generator and cannot be reproduced
here, so the batches are a same-distribution stand-in, not theirs.

:func:`divergence_comparison` returns one row per run; :func:`summarise_divergence` one row per
batch size.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from adamqlr.experiment.loop import derived_seeds
from adamqlr.experiment.optimisers import get_optimiser
from adamqlr.lens.official import run_official
from adamqlr.losses import get_loss
from adamqlr.profiles import Profile, parse_profile
from adamqlr.results.aggregate import wilson_interval
from adamqlr.results.atomic import atomic_write_json
from adamqlr.tasks import get_task
from adamqlr.tasks.base import Split, Task, TaskData

__all__ = [
    "COMPARISON_FILE",
    "divergence_comparison",
    "load_divergence_comparison",
    "summarise_divergence",
    "trajectories",
]

#: Where :func:`load_divergence_comparison` keeps the table, relative to the results folder.
COMPARISON_FILE = "lens/official-divergence.json"
_FORMAT = 1
_TEXT_COLUMNS = ("stop_reason", "ours_reason")

#: A loss above this multiple of the first step's loss counts as a blow-up.
BLOWUP_FACTOR = 1e3


def _batches(
    task: Task, split: Split, batch_size: int, seed: int, steps: int, dtype: torch.dtype
) -> list[tuple[Tensor, Tensor]]:
    """Return the first ``steps`` mini-batches the experiment runner draws for ``seed``."""
    generator = torch.Generator()
    generator.manual_seed(derived_seeds(seed)[0])
    out: list[tuple[Tensor, Tensor]] = []
    while len(out) < steps:
        for x, t in task.batches(split, batch_size, generator):
            out.append((x.to(dtype), t))
            if len(out) == steps:
                break
    return out


def _first_above(values: pd.Series, steps: pd.Series, limit: float) -> float:
    hits = steps[(values > limit).to_numpy()]
    return float(hits.iloc[0]) if len(hits) else math.nan


def trajectories(
    batch_size: int,
    seed: int,
    *,
    steps: int = 300,
    profile: Profile | str = Profile.QUICK,
    held_out_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    data: TaskData | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Return both implementations' per-step statistics for one run.

    Args:
        batch_size: Examples per mini-batch.
        seed: The run's seed (initialisation and batch order).
        steps: The step limit.
        profile: The data profile.
        held_out_size: Check the authors' stopping rule on the first this many validation and
            test examples (``None``: all of them).
        dtype: The parameters' and inputs' dtype.
        data: The Fashion-MNIST data (default: loaded under ``profile``).

    Returns:
        ``(official, ours, info)``: the authors' step's rows (:class:`adamqlr.lens.official.
        OfficialRun`'s frame), ours (``iteration`` and the fields of :class:`adamqlr.StepStats`,
        up to our first rejected step or the last official step, whichever comes first), and
        ``info`` with ``stop_reason`` and ``stop_step`` of the official run.

    Raises:
        ValueError: For a non-positive ``batch_size`` or ``steps``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"invalid batch_size: {batch_size!r} (expected an int >= 1)")
    task = get_task("fashion-mnist")
    data = data if data is not None else task.load_data(str(profile))
    loss = get_loss(task.loss)
    batches = _batches(task, data.train, batch_size, seed, steps, dtype)
    n = held_out_size
    held = {
        name: (split.inputs[:n].to(dtype), split.targets[:n])
        for name, split in (("val", data.val), ("test", data.test))
    }
    model = task.make_model(seed, str(profile)).to(dtype)
    run = run_official(model, batches, steps, loss, held_out=held)
    official = run.frame

    optimiser = get_optimiser("adamqlr-untuned").build(model, loss).optimizer  # type: ignore[attr-defined]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, (x, t) in enumerate(batches[: len(official)], start=1):
            stats = optimiser.step(x, t)
            rows.append({"iteration": i, **stats.as_dict()})
            if not stats.accepted:
                break
    info = {"stop_reason": run.stop_reason, "stop_step": run.stop_step}
    return official, pd.DataFrame(rows), info


def divergence_comparison(
    batch_sizes: Sequence[int] = (50, 100, 200, 400),
    seeds: Sequence[int] = tuple(range(10)),
    *,
    steps: int = 300,
    profile: Profile | str = Profile.QUICK,
    held_out_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    blowup: float = BLOWUP_FACTOR,
    agree: float = 1e-3,
) -> pd.DataFrame:
    """Run both implementations per batch size and seed; return one row per run.

    Columns: ``batch_size``, ``seed``, ``initial_loss`` (the first mini-batch loss),
    ``blowup_step`` (the first step whose pre-update mini-batch loss under the authors' step
    exceeds ``blowup`` times ``initial_loss``; NaN if none), ``stop_step`` and ``stop_reason``
    (the authors' stopping rule; ``stop_step`` NaN when the run reached ``steps``),
    ``steps_run``, ``max_damping`` (the largest lambda of the authors' run), ``final_loss`` (its
    last finite pre-update loss), ``ours_first_rejection`` (our first rejected step; NaN if none
    while the authors' run lasted) and ``ours_reason``, ``compared_steps`` (steps before it)
    and ``max_rel_diff`` (the largest relative difference of the pre-update loss over those
    steps), ``agree_steps`` (the leading steps whose losses differ by at most ``agree``,
    relatively), ``first_alpha_rel_diff`` (the relative difference of the first step size: the
    two implementations' rounding), ``ours_blowup_step`` (as ``blowup_step``, for ours over the
    steps it ran).

    Args:
        batch_sizes: The batch sizes.
        seeds: The seeds.
        steps: The step limit.
        profile: The data profile.
        held_out_size: See :func:`trajectories`.
        dtype: The dtype of the runs.
        blowup: The blow-up factor.
        agree: The relative loss difference within which the two count as agreeing.

    Raises:
        ValueError: For an empty ``batch_sizes`` or ``seeds``.
    """
    if not batch_sizes or not seeds:
        raise ValueError(f"invalid batch_sizes/seeds: {batch_sizes!r}, {seeds!r} (expected some)")
    task = get_task("fashion-mnist")
    data = task.load_data(str(profile))
    rows = []
    for batch_size in batch_sizes:
        for seed in seeds:
            official, ours, info = trajectories(
                batch_size,
                seed,
                steps=steps,
                profile=profile,
                held_out_size=held_out_size,
                dtype=dtype,
                data=data,
            )
            start = float(official["loss"].iloc[0])
            rejected = ours.loc[~ours["accepted"].astype(bool), "iteration"]
            first_rejection = float(rejected.iloc[0]) if len(rejected) else math.nan
            before = (
                ours if math.isnan(first_rejection) else ours[ours["iteration"] < first_rejection]
            )
            paired = official.merge(
                before[["iteration", "loss"]], on="iteration", suffixes=("", "_ours")
            )
            rel = (paired["loss"] - paired["loss_ours"]).abs() / paired["loss_ours"].abs()
            close = (rel <= agree).to_numpy()
            agree_steps = int(close.argmin()) if not close.all() else len(close)
            first_alpha = abs(float(official["alpha"].iloc[0]) / float(ours["lr"].iloc[0]) - 1)
            finite = official["loss"][official["loss"].map(math.isfinite)]
            rows.append(
                {
                    "batch_size": int(batch_size),
                    "seed": int(seed),
                    "initial_loss": start,
                    "blowup_step": _first_above(
                        official["loss"], official["iteration"], blowup * start
                    ),
                    "stop_step": math.nan
                    if info["stop_step"] is None
                    else float(info["stop_step"]),
                    "stop_reason": info["stop_reason"],
                    "steps_run": len(official),
                    "max_damping": float(official["damping"].max()),
                    "final_loss": float(finite.iloc[-1]) if len(finite) else math.nan,
                    "ours_first_rejection": first_rejection,
                    "ours_reason": ""
                    if math.isnan(first_rejection)
                    else str(ours.loc[ours["iteration"] == first_rejection, "reason"].iloc[0]),
                    "compared_steps": len(paired),
                    "max_rel_diff": float(rel.max()) if len(rel) else math.nan,
                    "agree_steps": agree_steps,
                    "first_alpha_rel_diff": first_alpha,
                    "ours_blowup_step": _first_above(
                        ours["loss"], ours["iteration"], blowup * start
                    ),
                }
            )
    return pd.DataFrame(rows)


def summarise_divergence(runs: pd.DataFrame, *, level: float = 0.95) -> pd.DataFrame:
    """Return one row per batch size of :func:`divergence_comparison`'s table.

    Columns: ``runs``; ``blew_up`` (runs with a blow-up step) and ``stopped`` (runs the
    authors' rule stopped on a non-finite loss); ``diverged`` (either) with its Wilson interval
    ``low``/``high`` (:func:`adamqlr.studies.analysis.wilson_interval`); ``median_blowup_step``
    and ``median_stop_step`` (over the runs where it happened); ``ours_rejected`` (runs where ours
    rejected a step); ``max_rel_diff`` (the largest over the runs, before our first rejection).
    """
    out = []
    for batch_size, group in runs.groupby("batch_size", sort=True):
        n = len(group)
        blew = group["blowup_step"].notna()
        stopped = group["stop_step"].notna()
        k = int((blew | stopped).sum())
        low, high = wilson_interval(k, n, level)
        out.append(
            {
                "batch_size": int(batch_size),
                "runs": n,
                "blew_up": int(blew.sum()),
                "stopped": int(stopped.sum()),
                "diverged": k,
                "low": low,
                "high": high,
                "median_blowup_step": float(group["blowup_step"].median()),
                "median_stop_step": float(group["stop_step"].median()),
                "ours_rejected": int(group["ours_first_rejection"].notna().sum()),
                "max_rel_diff": float(group["max_rel_diff"].max()),
            }
        )
    return pd.DataFrame(out)


def load_divergence_comparison(
    *,
    batch_sizes: Sequence[int] = (50, 100, 200, 400),
    seeds: Sequence[int] = tuple(range(10)),
    steps: int = 300,
    profile: Profile | str = Profile.QUICK,
    held_out_size: int | None = 1000,
    compute: bool = False,
    root: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Return :func:`divergence_comparison`'s table, from its saved file when it matches.

    The file (:data:`COMPARISON_FILE` under the results folder) records the arguments it was
    made with; a file made with other arguments, or none, is recomputed (and written
    atomically) only when ``compute`` is true. The runs are float32.

    Args:
        batch_sizes: See :func:`divergence_comparison`.
        seeds: See :func:`divergence_comparison`.
        steps: See :func:`divergence_comparison`.
        profile: See :func:`divergence_comparison`.
        held_out_size: See :func:`trajectories`.
        compute: Compute and save the table when the file is missing or made otherwise.
        root: The results folder (default :func:`adamqlr.results.default_root`).

    Raises:
        FileNotFoundError: If no matching file exists and ``compute`` is false (the message
            says how to make it).
    """
    if root is None:
        from adamqlr.results import default_root

        root = default_root()
    path = Path(root) / COMPARISON_FILE
    arguments = {
        "batch_sizes": [int(b) for b in batch_sizes],
        "seeds": [int(s) for s in seeds],
        "steps": int(steps),
        "profile": parse_profile(profile).value,
        "held_out_size": held_out_size,
        "dtype": "float32",
        "blowup": BLOWUP_FACTOR,
    }
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("format") == _FORMAT and saved.get("arguments") == arguments:
            frame = pd.DataFrame(saved["rows"], columns=saved["columns"])
            for column in frame.columns:
                if column not in _TEXT_COLUMNS:
                    frame[column] = pd.to_numeric(frame[column])
            return frame
    if not compute:
        raise FileNotFoundError(
            f"no official-divergence table for {arguments} at {path}; make it with "
            "adamqlr.lens.official_divergence.load_divergence_comparison(compute=True)"
        )
    frame = divergence_comparison(
        batch_sizes,
        seeds,
        steps=steps,
        profile=profile,
        held_out_size=held_out_size,
        dtype=torch.float32,
    )
    rows = [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]
    atomic_write_json(
        path,
        {"format": _FORMAT, "arguments": arguments, "columns": list(frame.columns), "rows": rows},
    )
    return frame
