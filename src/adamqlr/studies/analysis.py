"""Tables the experiment chapters print from a study's records.

* :func:`describe_runs` / :func:`provenance_text`: which runs a figure came from (device, dates,
  commits, seeds, profile), for captions (:func:`adamqlr.results.provenance.computation_text`
  says the same of a figure that its page computes);
* :func:`tuning_table`: every tuning trial of the tuned arms, its final validation loss, and the
  chosen configuration;
* :func:`tuning_summary`: one row per tuned arm: how many configurations and runs its search
  took, what it chose and at which budget it judged the choice;
* :func:`hyperparameter_table`: the configuration each tuned arm chose (the paper's
  hyperparameter tables);
* :func:`final_table`: the paper's final-value table (bootstrap median at the end of the longest
  run) per arm;
* :func:`sensitivity_table`: the final value per setting of a sensitivity sweep, over seeds;
* :func:`step_costs`: the time of one optimisation step, per run, from the per-step clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from adamqlr.results.aggregate import BLOWN_UP, blown_up, final_summary, wilson_interval
from adamqlr.results.provenance import where_text
from adamqlr.results.store import RunRecord
from adamqlr.studies.core import StudyRecords, final_value

__all__ = [
    "contrast_effects",
    "describe_runs",
    "divergence_rates",
    "final_table",
    "hyperparameter_table",
    "step_quantities",
    "provenance_text",
    "relative_cost",
    "run_diverged",
    "sensitivity_table",
    "step_costs",
    "sweep_effect",
    "tuning_summary",
    "tuning_table",
]


def _seed_text(seeds: Iterable[int]) -> str:
    seeds = sorted(set(seeds))
    if not seeds:
        return "none"
    parts, start, prev = [], seeds[0], seeds[0]
    for s in [*seeds[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ",".join(parts)


def describe_runs(records: Sequence[RunRecord]) -> dict[str, Any]:
    """Summarise where a set of runs came from.

    Returns:
        ``runs`` (count), ``profiles``, ``devices`` (device names), ``dates`` (first and last
        start date), ``commits`` (short hashes, ``+dirty`` when the tree had changes), ``seeds``
        (compact text), ``torch`` (versions) and ``threads`` (torch threads).

    Raises:
        ValueError: If ``records`` is empty.
    """
    if not records:
        raise ValueError("no records to describe")
    provs = [r.provenance for r in records]
    dates = sorted(str(p.get("started_at", "?"))[:10] for p in provs)
    commits = sorted(
        {
            f"{str(p.get('git', {}).get('commit') or 'unknown')[:7]}"
            + ("+dirty" if p.get("git", {}).get("dirty") else "")
            for p in provs
        }
    )
    return {
        "runs": len(records),
        "profiles": sorted({str(p.get("spec", {}).get("profile", "?")) for p in provs}),
        "devices": sorted({f"{p.get('device', '?')} ({p.get('device_name', '?')})" for p in provs}),
        "dates": (dates[0], dates[-1]),
        "commits": commits,
        "seeds": _seed_text(int(p.get("spec", {}).get("seed", -1)) for p in provs),
        "torch": sorted({str(p.get("torch_version", "?")) for p in provs}),
        "threads": sorted({int(p.get("torch_threads", 0) or 0) for p in provs}),
    }


def provenance_text(records: Sequence[RunRecord]) -> str:
    """One sentence for a caption: how many runs, profile, device, dates, commits, seeds."""
    d = describe_runs(records)
    return f"{d['runs']} runs, {where_text(d)}, seeds {d['seeds']}"


def _variation_text(variation: Mapping[str, Any] | None) -> str:
    if not variation:
        return ""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in
                     variation.items())  # fmt: skip


def tuning_table(study_records: StudyRecords, arm_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Every tuning trial of the tuned arms with its final validation loss; the choice marked.

    Args:
        study_records: The output of :func:`adamqlr.studies.obtain`.
        arm_ids: Tuned arms to include (default: all tuned arms).

    Returns:
        One row per configuration: ``arm``, ``label``, ``configuration``, ``objective`` (the final
        value of the arm's objective at the highest successive-halving rung the configuration
        reached; ``inf`` for a diverged trial), ``chosen`` and ``rung``.
    """
    rows = []
    ids = arm_ids if arm_ids is not None else list(study_records.trials)
    for arm_id in ids:
        p = study_records.plans[arm_id]
        top: dict[str, int] = {}  # configuration -> highest rung it reached
        for variation, rung in zip(p.variations, p.rungs, strict=True):
            text = _variation_text(variation)
            top[text] = max(top.get(text, 0), rung)
        for variation, objective, rung in zip(p.variations, p.objectives, p.rungs, strict=True):
            text = _variation_text(variation)
            if rung != top[text]:
                continue  # a search trial that went on to a higher rung: keep its last value
            rows.append(
                {
                    "arm": arm_id,
                    "label": p.arm.label,
                    "configuration": text,
                    "objective": objective,
                    "chosen": dict(variation) == dict(p.choice or {}),
                    "rung": rung,
                }
            )
    return pd.DataFrame(
        rows, columns=["arm", "label", "configuration", "objective", "chosen", "rung"]
    )


def tuning_summary(
    study_records: StudyRecords, arm_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """Summarise each tuned arm's search: its size, its choice and the budget it was judged at.

    A successive-halving search judges configurations stopped at lower rungs by their value at
    that rung's shorter budget, and the paper's rule (Ray's ``get_best_result``: the lowest last
    value among all trials) lets such a configuration win over every full-budget one. Where the
    objective rises late in training (overfitting), the chosen configuration was then never seen
    at the budget its repeats run for; ``chosen rung`` below ``rungs - 1`` says so.

    Args:
        study_records: The output of :func:`adamqlr.studies.obtain`.
        arm_ids: Tuned arms to include (default: all tuned arms).

    Returns:
        One row per arm (index: label): ``configurations``, ``trial runs``, ``rungs``,
        ``choice`` (text), ``chosen rung``, ``chosen objective`` (its value at that rung),
        ``best at full budget`` (the lowest objective among top-rung trials) and
        ``diverged trials`` (share of configurations whose last value is ``inf``).
    """
    rows = {}
    ids = arm_ids if arm_ids is not None else list(study_records.trials)
    for arm_id in ids:
        p = study_records.plans[arm_id]
        if not p.trials:
            continue
        # Each trial's last value (at the highest rung it reached), by trial: a search trial's
        # seed is tune_seed + its number, a grid trial is its position. Several configurations
        # may coincide (e.g. a search over the batch size alone), so trials, not texts, count.
        last: dict[int, tuple[int, float]] = {}
        for i, (spec, rung, value) in enumerate(zip(p.trials, p.rungs, p.objectives, strict=True)):
            number = spec.seed - p.arm.tune_seed if p.arm.search is not None else i
            if number not in last or rung > last[number][0]:
                last[number] = (rung, float(value))
        if any(math.isnan(v) for _, v in last.values()):
            continue  # the search is not finished
        top = max(p.rungs)
        best = min(last, key=lambda n: (last[n][1], n))  # the search's own rule
        full = [v for r, v in last.values() if r == top]
        values = np.array([v for _, v in last.values()])
        rows[p.arm.label] = {
            "configurations": len(last),
            "trial runs": len(p.rungs),
            "rungs": top + 1,
            "choice": _variation_text(p.choice),
            "chosen rung": last[best][0],
            "chosen objective": last[best][1],
            "best at full budget": min(full) if full else math.nan,
            "diverged trials": float(np.isinf(values).mean()),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


#: The paper's hyperparameter-table columns, in its order (our registry names).
HYPERPARAMETER_COLUMNS = (
    "batch_size", "lr", "momentum", "weight_decay", "initial_damping", "damping_decrease",
    "damping_increase", "eps", "hypergrad_lr",
)  # fmt: skip


def hyperparameter_table(
    study_records: StudyRecords, arm_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """Return the configuration each tuned arm chose, one row per arm (the paper's tables).

    Args:
        study_records: The output of :func:`adamqlr.studies.obtain`.
        arm_ids: Tuned arms to include (default: every tuned arm with a choice).

    Returns:
        Index ``(task, label)``; one column per chosen hyperparameter, in the order of
        :data:`HYPERPARAMETER_COLUMNS` (then any other, alphabetically); NaN where an optimiser
        has no such hyperparameter.
    """
    from adamqlr.studies.core import arm_task

    rows = {}
    ids = arm_ids if arm_ids is not None else list(study_records.plans)
    for arm_id in ids:
        p = study_records.plans[arm_id]
        if not p.arm.tuned or p.choice is None:
            continue
        task = arm_task(study_records.study, p.arm)
        rows[(task, p.arm.label)] = dict(p.choice)
    table = pd.DataFrame.from_dict(rows, orient="index")
    if table.empty:
        return table
    table.index = pd.MultiIndex.from_tuples(table.index, names=["task", "optimiser"])
    known = [c for c in HYPERPARAMETER_COLUMNS if c in table.columns]
    return table[known + sorted(c for c in table.columns if c not in known)]


def final_table(
    runs: Mapping[str, Sequence[RunRecord]],
    metrics: Sequence[str] = ("train_loss", "test_loss"),
    *,
    resamples: int = 50,
    seed: int = 0,
) -> pd.DataFrame:
    """Return the paper's final-value table: per label, each metric at the end of the longest run.

    Each entry is the bootstrap mean of the median over runs (shorter runs carried forward), with
    its bootstrap standard deviation, as in the paper's tables; also the generalisation gap (the
    final test loss minus the final training loss, its error the sum of theirs, as the authors'
    tables compute it; ``inf`` when either loss is not finite or above
    :data:`~adamqlr.results.aggregate.BLOWN_UP`, as an arm whose typical run diverged has no
    gap), the steps and the optimisation time.

    Args:
        runs: ``{label: records}``.
        metrics: Metric columns (missing ones, e.g. accuracy on regression, are skipped).
        resamples: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        One row per label; columns ``<metric>`` and ``<metric> ±`` for each metric,
        ``generalisation gap`` and ``generalisation gap ±`` (when both losses are among the
        metrics), ``steps``, ``time_s`` and ``runs``.
    """
    rows = {}
    for label, records in runs.items():
        if not records:
            continue
        present = [m for m in metrics if all(m in r.metrics for r in records)]
        summary = final_summary(list(records), present, resamples=resamples, seed=seed)
        row: dict[str, float] = {}
        for m in present:
            row[m] = summary.loc[m, "mean"]
            row[f"{m} ±"] = summary.loc[m, "std"]
        if "train_loss" in present and "test_loss" in present:
            losses = (row["test_loss"], row["train_loss"])
            if not any(blown_up(x) for x in losses):
                row["generalisation gap"] = losses[0] - losses[1]
                row["generalisation gap ±"] = row["test_loss ±"] + row["train_loss ±"]
            else:  # a difference of blown-up losses is no gap: the arm diverged
                row["generalisation gap"], row["generalisation gap ±"] = math.inf, math.nan
        row["steps"] = summary.loc["steps", "mean"]
        row["time_s"] = summary.loc["time_s", "mean"]
        row["runs"] = len(records)
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def sweep_effect(
    study_records: StudyRecords, group: str, reference: float, metric: str = "test_loss"
) -> dict[str, Any]:
    """Compare every value of one sensitivity sweep with the value nearest ``reference``.

    The reference arm is the grid value nearest ``reference`` on a log scale (the tuned value,
    chosen before looking at the results); every other value's runs are compared with its runs
    by the ratio of the median final ``metric`` at the end of the epoch budget, with a 95 %
    bootstrap interval (:func:`adamqlr.studies.verdicts.compare`, on the epoch axis, which machine
    load cannot distort). The worst value is the one with the largest ratio (a NaN ratio, from
    runs that all diverged, counts as infinite). Picking it after the fact biases its ratio
    upward: the interval serves to compare quantities, not to test that one value.

    Args:
        study_records: The sensitivity study's records.
        group: The swept quantity (an arm group, e.g. ``"initial_damping"``).
        reference: The tuned value of the quantity (positive).
        metric: The metric compared (a loss: higher is worse).

    Returns:
        ``reference value``, ``worst value``, ``worst / reference`` with ``CI low`` and ``CI
        high``, and ``values detectably worse`` (``"k of n"``: intervals wholly above 1).

    Raises:
        ValueError: If no arm has that group, it has a single value, or ``reference`` is not
            positive.
    """
    from adamqlr.studies.verdicts import compare

    if not (isinstance(reference, (int, float)) and reference > 0):
        raise ValueError(f"invalid reference {reference!r} (expected a positive value)")
    valued = sorted(
        ((float(a.value), a) for a in study_records.arms(group=group) if a.value is not None),
        key=lambda pair: pair[0],
    )
    if not valued:
        raise ValueError(f"no arm in study {study_records.study.name!r} has group {group!r}")
    if len(valued) < 2:
        raise ValueError(
            f"group {group!r} of study {study_records.study.name!r} has {len(valued)} value(s); "
            "a sweep needs two or more"
        )
    ref_value, ref = min(valued, key=lambda pair: abs(math.log(pair[0]) - math.log(reference)))
    records = study_records.records
    epochs = float(records[ref.id][0].spec.settings().epochs)
    found = [
        (value, compare(records[arm.id], records[ref.id], metric, axis="epoch", at=epochs,
                        labels=(arm.label, ref.label)))
        for value, arm in valued
        if arm is not ref
    ]  # fmt: skip
    worst_value, worst = max(found, key=lambda f: (np.nan_to_num(f[1].ratio, nan=np.inf), f[1].low))
    return {
        "reference value": ref_value,
        "worst value": worst_value,
        "worst / reference": worst.ratio,
        "CI low": worst.low,
        "CI high": worst.high,
        "values detectably worse": f"{sum(c.low > 1 for _, c in found)} of {len(found)}",
    }


def contrast_effects(
    effect: Mapping[str, Any], other: Mapping[str, Any], diverged: float = BLOWN_UP
) -> str:
    """Say how one sweep's worst-case effect compares with another's, by their intervals.

    Args:
        effect: A row of :func:`sweep_effect` (``CI low`` and ``CI high`` of its worst ratio).
        other: The row it is set against.
        diverged: A ratio above which the worst value's runs count as blown up; two such effects
            are not ranked (both are "the runs fail"), whatever their sizes.

    Returns:
        ``"as large as"`` when both intervals lie wholly above ``diverged``; else
        ``"larger than"`` when ``effect``'s interval lies wholly above ``other``'s,
        ``"smaller than"`` when wholly below, else ``"indistinguishable from"`` (the intervals
        overlap, or one of them is undefined).
    """
    low, high = float(effect["CI low"]), float(effect["CI high"])
    other_low, other_high = float(other["CI low"]), float(other["CI high"])
    if low > diverged and other_low > diverged:
        return "as large as"
    if low > other_high:
        return "larger than"
    if high < other_low:
        return "smaller than"
    return "indistinguishable from"


def sensitivity_table(
    study_records: StudyRecords, group: str, metric: str = "test_loss"
) -> pd.DataFrame:
    """Return the final ``metric`` of each setting of one sensitivity sweep, over its seeds.

    Args:
        study_records: The sensitivity study's records.
        group: The swept quantity (an arm group, e.g. ``"initial_damping"``).
        metric: The metric (validation or test loss or accuracy).

    Returns:
        One row per setting, in order of value: ``value``, ``label``, ``median``, ``min``,
        ``max`` (over seeds; a diverged run counts as ``inf``), ``diverged`` (runs with an
        infinite final value) and ``runs``.

    Raises:
        ValueError: If no arm has that group.
    """
    arms = study_records.arms(group=group)
    if not arms:
        raise ValueError(f"no arm in study {study_records.study.name!r} has group {group!r}")
    rows = []
    for arm in sorted(arms, key=lambda a: (a.value is None, a.value)):
        finals = np.array([final_value(r, metric) for r in study_records.records[arm.id]])
        rows.append(
            {
                "value": arm.value,
                "label": arm.label,
                "median": float(np.median(finals)),
                "min": float(finals.min()),
                "max": float(finals.max()),
                "diverged": int(np.isinf(finals).sum()),
                "runs": len(finals),
            }
        )
    return pd.DataFrame(rows)


def step_costs(records: Sequence[RunRecord], *, skip: int = 1) -> pd.DataFrame:
    """Return the optimisation time of one step, per run, from the per-step clock.

    The ``time`` column is the cumulative optimisation time after each step (evaluation
    excluded); its differences are the steps' times. The first ``skip`` steps are left out (the
    first step pays for one-off work: allocation, kernel selection). The median is robust to the
    occasional slow step on a shared machine.

    Args:
        records: Run records.
        skip: Leading steps to leave out.

    Returns:
        One row per run: ``task``, ``optimiser``, ``label``, ``batch_size``, ``seed``,
        ``steps``, ``median_s``, ``q25_s``, ``q75_s``, ``mean_s`` and ``device``.

    Raises:
        ValueError: If a record has fewer than ``skip + 1`` steps.
    """
    rows = []
    for record in records:
        frame = record.metrics
        steps = frame[frame["step"] >= 1].sort_values("step")
        per_step = np.diff(np.r_[0.0, steps["time"].to_numpy(dtype=float)])[skip:]
        if not len(per_step):
            raise ValueError(f"record {record.path} has too few steps to time")
        prov = record.provenance
        settings = prov.get("settings", {})
        rows.append(
            {
                "task": settings.get("task"),
                "optimiser": settings.get("optimiser"),
                "label": prov.get("optimiser_label"),
                "batch_size": settings.get("batch_size"),
                "seed": settings.get("seed"),
                "steps": len(per_step),
                "median_s": float(np.median(per_step)),
                "q25_s": float(np.quantile(per_step, 0.25)),
                "q75_s": float(np.quantile(per_step, 0.75)),
                "mean_s": float(per_step.mean()),
                "device": prov.get("device_name") or prov.get("device"),
            }
        )
    return pd.DataFrame(rows)


def relative_cost(costs: pd.DataFrame, reference: str = "adam") -> pd.DataFrame:
    """Median step time per (task, optimiser, batch size), and its ratio to ``reference``'s.

    Args:
        costs: The output of :func:`step_costs`.
        reference: The optimiser registry name whose step is the unit.

    Returns:
        One row per (task, optimiser, batch size): ``median_s`` (median over seeds of the
        runs' medians), ``low_s`` and ``high_s`` (their smallest and largest: the spread between
        runs made at different times), ``runs``, and ``ratio``, ``ratio_low``, ``ratio_high``
        (the same over the reference's ``median_s`` at the same task and batch size; NaN where
        the reference was not timed).
    """
    keys = ["task", "optimiser", "label", "batch_size"]
    grouped = (
        costs.groupby(keys, sort=False)["median_s"]
        .agg(median_s="median", low_s="min", high_s="max", runs="count")
        .reset_index()
    )
    ref = grouped[grouped["optimiser"] == reference].set_index(["task", "batch_size"])["median_s"]
    unit = np.array([ref.get((row.task, row.batch_size), math.nan) for row in grouped.itertuples()])
    grouped["ratio"] = grouped["median_s"] / unit
    grouped["ratio_low"] = grouped["low_s"] / unit
    grouped["ratio_high"] = grouped["high_s"] / unit
    return grouped


def run_diverged(record: RunRecord, metric: str = "train_loss", blowup: float = BLOWN_UP) -> bool:
    """Return whether a run diverged: its final ``metric`` is not finite or beyond ``blowup``.

    A run that stopped on a non-finite loss ends on it, so it counts; so does a run that blew up
    to a huge finite loss without ever overflowing.

    Args:
        record: The run.
        metric: The metric whose final value decides (default: the training loss).
        blowup: The value above which a finite loss counts as blown up
            (:data:`~adamqlr.results.aggregate.BLOWN_UP`, 1e6).
    """
    return blown_up(final_value(record, metric), blowup)


def divergence_rates(
    study_records: StudyRecords, groups: Sequence[str], *, level: float = 0.95
) -> pd.DataFrame:
    """Return, per arm of the given groups, how many repeats diverged, with a Wilson interval.

    A run diverged if it stopped on a non-finite loss or its final training loss is not finite or
    above :data:`~adamqlr.results.aggregate.BLOWN_UP` (1e6).

    Args:
        study_records: A study's records.
        groups: Arm groups to include (e.g. the variants of the batch-mechanism study).
        level: Confidence level of the interval.

    Returns:
        One row per arm: ``group``, ``value``, ``label``, ``diverged``, ``runs``, ``rate``,
        ``low``, ``high``.
    """
    rows = []
    for group in groups:
        arms = study_records.arms(group=group)
        if not arms:
            raise ValueError(f"no arm in study {study_records.study.name!r} has group {group!r}")
        for arm in sorted(arms, key=lambda a: (a.value is None, a.value)):
            records = study_records.records[arm.id]
            k = sum(run_diverged(r) for r in records)
            low, high = wilson_interval(k, len(records), level)
            rows.append(
                {"group": group, "value": arm.value, "label": arm.label, "diverged": k,
                 "runs": len(records), "rate": k / len(records) if records else math.nan,
                 "low": low, "high": high}
            )  # fmt: skip
    return pd.DataFrame(rows)


def step_quantities(record: RunRecord) -> pd.DataFrame:
    """Return a run's per-step quantities of the quadratic model, by step.

    Columns: ``step``, ``lr`` (the step size alpha), ``damping``, ``rho``, ``grad_dot_dir``
    (g^T d), ``curvature`` (d^T C d), ``direction_sq_norm`` (||d||^2), and two ratios that put
    them on one scale: ``curvature_per_norm`` = d^T C d / ||d||^2 (the curvature along the
    direction, which the damping must be compared with) and ``slope_per_norm`` = g^T d / ||d||^2.

    Raises:
        ValueError: If the record has no per-step model quantities (not an AdamQLR run).
    """
    frame = record.metrics
    needed = ("lr", "damping", "rho", "grad_dot_dir", "curvature", "direction_sq_norm")
    missing = [c for c in needed if c not in frame]
    if missing:
        raise ValueError(f"record {record.path} has no {missing} (not an AdamQLR run?)")
    out = frame[["step", *needed]].dropna(subset=["lr"]).copy()
    norm = out["direction_sq_norm"].where(out["direction_sq_norm"] > 0)
    out["curvature_per_norm"] = out["curvature"] / norm
    out["slope_per_norm"] = out["grad_dot_dir"] / norm
    return out.reset_index(drop=True)
