"""What a campaign will cost: measured per-step costs, and the plan of a study under a profile.

* :func:`calibrate` times a few optimisation steps of each (task, optimiser, batch size) a set of
  studies uses (one torch thread, the data loaded once per task) and writes the seconds per step
  to ``costs.json`` in the results folder.
* :func:`estimate` counts a study's runs and steps and turns them into core-hours with those
  costs. Configurations that are not known before anything runs (the trials of higher
  successive-halving rungs, the repeats of a configuration still to be chosen) are counted at the
  mean cost of the arm's drawn configurations, so the estimate is exact in runs and steps for
  fixed arms and the first rung, and an expectation for the rest. Evaluation and start-up are not
  in the measured per-step cost; a run's fixed overhead (``overhead_s``, default 1 s) stands for
  them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.results.atomic import atomic_write_bytes
from adamqlr.studies.core import Arm, BestOf, Study, apply_variation

__all__ = [
    "BREAKDOWNS",
    "COSTS_FILE",
    "CostTable",
    "PartEstimate",
    "StudyEstimate",
    "breakdown",
    "calibrate",
    "describe",
    "estimate",
    "run_steps",
]

#: Name of the cost table in the results folder.
COSTS_FILE = "costs.json"
#: Batch sizes timed per (task, optimiser); others are interpolated on log(batch size).
CALIBRATION_BATCHES = (50, 400, 3200)


def _train_size(spec: ExperimentSpec) -> int:
    from adamqlr.tasks import get_task

    st = spec.settings()
    if st.train_size is not None:
        return st.train_size
    sizes = {"rosenbrock": 1, "rosenbrock-random-start": 1, "uci-energy": 588,
             "uci-protein": 34983, "fashion-mnist": 50000, "cifar-10": 45000,
             "svhn": 61047}  # fmt: skip
    if spec.task in sizes:
        return sizes[spec.task]
    return len(get_task(spec.task).load_data(spec.profile).train)  # pragma: no cover


def run_steps(spec: ExperimentSpec, seconds_per_step: float | None = None) -> float:
    """Return the steps ``spec`` will take (for a time budget: the cap over the per-step cost)."""
    from adamqlr.experiment.loop import planned_steps

    st = spec.settings()
    steps = planned_steps(st, _train_size(spec))
    if st.seconds is not None and seconds_per_step:
        by_time = st.seconds / seconds_per_step
        return float(by_time if steps is None else min(steps, by_time))
    return float(steps if steps is not None else 0.0)


@dataclass
class CostTable:
    """Seconds per optimisation step by ``task|optimiser|batch``, and how they were measured."""

    entries: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | Path) -> CostTable:
        """Read ``costs.json`` of the results folder ``root`` (empty if there is none)."""
        path = Path(root) / COSTS_FILE
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls(dict(data.get("seconds_per_step", {})), dict(data.get("meta", {})))

    def save(self, root: str | Path) -> Path:
        """Write the table atomically to ``root/costs.json``."""
        path = Path(root) / COSTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"seconds_per_step": dict(sorted(self.entries.items())), "meta": self.meta}
        atomic_write_bytes(path, (json.dumps(payload, indent=1) + "\n").encode())
        return path

    def per_step(self, task: str, optimiser: str, batch: int) -> float | None:
        """Seconds per step, interpolated on log(batch) between measured batch sizes."""
        points = sorted(
            (int(k.split("|")[2]), v)
            for k, v in self.entries.items()
            if k.split("|")[:2] == [task, optimiser]
        )
        if not points:
            return None
        if batch <= points[0][0] or len(points) == 1:
            return points[0][1] * (batch / points[0][0] if batch > points[0][0] else 1.0)
        for (b0, c0), (b1, c1) in zip(points, points[1:], strict=False):
            if b0 <= batch <= b1:
                w = (math.log(batch) - math.log(b0)) / (math.log(b1) - math.log(b0))
                return c0 + w * (c1 - c0)
        b, c = points[-1]
        return c * batch / b  # beyond the largest: linear in the batch size


def _combos(specs: Iterable[ExperimentSpec]) -> dict[tuple[str, str, str], set[int]]:
    out: dict[tuple[str, str, str], set[int]] = {}
    for spec in specs:
        out.setdefault((spec.task, spec.optimiser, spec.profile), set()).add(
            spec.settings().batch_size
        )
    return out


def _arm_specs(study: Study, arm: Arm) -> list[ExperimentSpec]:
    """Return an arm's drawn configurations (or its fixed configuration), as specs."""
    from adamqlr.studies.core import _referenced

    if isinstance(arm.base, BestOf):
        other, ref = _referenced(study, arm.base)
        return [apply_variation(s, arm.overrides) for s in _arm_specs(other, ref)]
    base = apply_variation(arm.base, arm.overrides)
    if arm.search is not None:
        return [
            study.spec(apply_variation(base, arm.search.configuration(n)))
            for n in range(arm.search.n_trials)
        ]
    if arm.grid:
        return [study.spec(apply_variation(base, v)) for v in arm.grid]
    return [study.spec(base)]


def calibrate(
    studies: Sequence[Study],
    root: str | Path,
    *,
    steps: int = 20,
    warmup: int = 3,
    batches: Sequence[int] = CALIBRATION_BATCHES,
    log: Any = print,
) -> CostTable:
    """Time ``steps`` optimisation steps per (task, optimiser, batch size) and store the table.

    Each (task, optimiser) the studies use is timed at ``batches`` (capped at the training set;
    Rosenbrock at its one batch) after ``warmup`` untimed steps, with one torch thread.

    Returns:
        The updated :class:`CostTable` (also written to ``root/costs.json``).
    """
    import platform

    import torch

    from adamqlr.experiment.loop import train
    from adamqlr.tasks import get_task

    torch.set_num_threads(1)
    table = CostTable.load(root)
    specs = [s for study in studies for arm in study.arms for s in _arm_specs(study, arm)]
    data_cache: dict[tuple[str, str], Any] = {}
    for (task, optimiser, profile), _ in sorted(_combos(specs).items()):
        base = next(
            s for s in specs if (s.task, s.optimiser, s.profile) == (task, optimiser, profile)
        )
        size = _train_size(base)
        rosenbrock = task.startswith("rosenbrock")
        wanted = [1] if rosenbrock else sorted({min(b, size) for b in batches})
        for batch in wanted:
            key = f"{task}|{optimiser}|{batch}"
            spec = base.replace(
                batch_size=batch, steps=warmup + steps, epochs=None, seconds=None,
                eval_every=warmup + steps + 1, eval_points=None, seed=0,
            )  # fmt: skip
            if (task, profile) not in data_cache:
                data_cache[(task, profile)] = get_task(task).load_data(profile)
            t0 = time.perf_counter()
            result = train(spec.settings(), data=data_cache[(task, profile)], progress=False)
            frame = result.metrics.frame()
            times = frame["time"].to_numpy()
            step_col = frame["step"].to_numpy()
            i = int((step_col >= warmup).argmax())
            timed = float(times[-1] - times[i]) / max(1, int(step_col[-1] - step_col[i]))
            table.entries[key] = timed
            log(f"  {key:<40} {timed * 1e3:9.3f} ms/step  ({time.perf_counter() - t0:.1f} s)")
    table.meta = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": 1,
        "steps": steps,
        "warmup": warmup,
    }
    table.save(root)
    return table


@dataclass
class PartEstimate:
    """The share of one arm in a :class:`StudyEstimate` (what :func:`describe` breaks down).

    Attributes:
        arm: The arm's id.
        task: Its task (for an arm around another arm's choice: that arm's task).
        optimiser: Its optimiser (likewise).
        runs: Runs counted for it (a run two arms share is counted for the first).
        steps: Optimisation steps counted for it.
        core_hours: Core-hours counted for it.
    """

    arm: str
    task: str
    optimiser: str
    runs: int = 0
    steps: float = 0.0
    core_hours: float = 0.0


@dataclass
class StudyEstimate:
    """The size of a study under a profile.

    Attributes:
        study: Its name.
        runs: Runs in all (trials and repeats).
        steps: Optimisation steps in all.
        core_hours: Estimated core-hours (optimisation plus ``overhead_s`` per run).
        uncalibrated: (task, optimiser) pairs without a measured cost (counted as zero).
        parts: The share of each arm, in the study's order; they add up to the totals (within
            rounding).
        complete: For :func:`made`: whether every run of the study is stored.
        pending: For :func:`made`: by arm id, what is left of each arm whose runs are all known
            now (a fixed arm, or a tuned arm whose choice is made), costed run by run, so that
            :func:`left` need not subtract from an expectation.
    """

    study: str
    runs: int
    steps: float
    core_hours: float
    uncalibrated: set[tuple[str, str]] = field(default_factory=set)
    parts: list[PartEstimate] = field(default_factory=list)
    complete: bool = False
    pending: dict[str, PartEstimate] = field(default_factory=dict)


def _base_optimiser(study: Study, arm: Arm) -> str:
    from adamqlr.studies.core import _referenced

    if isinstance(arm.base, BestOf):
        other, ref = _referenced(study, arm.base)
        return _base_optimiser(other, ref)
    return arm.base.optimiser


def _run_cost(
    spec: ExperimentSpec, costs: CostTable, overhead_s: float
) -> tuple[float, float, bool]:
    """Return one run's steps, its seconds (``overhead_s`` included) and whether it was costed.

    A run whose (task, optimiser, batch size) has no measured cost counts its overhead only. A
    batch size above the training set's size is costed at that size: such a run's mini-batch is
    the whole training set (untuned batch 3200 on UCI Energy's 588 rows).
    """
    batch = min(spec.settings().batch_size, _train_size(spec))
    per = costs.per_step(spec.task, spec.optimiser, batch)
    steps = run_steps(spec, per)
    return steps, steps * (per or 0.0) + overhead_s, per is not None


def estimate(
    study: Study,
    costs: CostTable,
    *,
    overhead_s: float = 1.0,
    seen: set[str] | None = None,
) -> StudyEstimate:
    """Estimate the runs, steps and core-hours of ``study`` from ``costs`` (see the module doc).

    For a selection of a study's arms (:func:`adamqlr.studies.selection.select_arms`), the tuning
    runs of a tuned arm that a selected :class:`BestOf` arm needs but that is not itself selected
    are counted too (for the arm that needs them), as ``study run`` with that selection makes
    them. A whole study counts them where the tuned arm is.

    Args:
        study: The study.
        costs: Per-step costs.
        overhead_s: Seconds counted per run for start-up and evaluation.
        seen: Keys of runs (and tuned arms) already counted, e.g. by an earlier study of the same
            campaign: those are not counted again, so estimates of several studies add up to the
            campaign's (a run two studies share is made once). Updated in place.
    """
    from adamqlr.studies.core import _referenced, arm_task

    out = StudyEstimate(study.name, 0, 0.0, 0.0)
    seen = set() if seen is None else seen
    part = PartEstimate("", "", "")

    def bump(runs: int, steps: float, hours: float) -> None:
        out.runs += runs
        out.steps += steps
        out.core_hours += hours
        part.runs += runs
        part.steps += steps
        part.core_hours += hours

    def cost(spec: ExperimentSpec) -> tuple[float, float]:
        steps, seconds, calibrated = _run_cost(spec, costs, overhead_s)
        if not calibrated:
            out.uncalibrated.add((spec.task, spec.optimiser))
        return steps, seconds

    def add(spec: ExperimentSpec, weight: float = 1.0, dedupe: bool = True) -> None:
        if dedupe:
            key = spec.key
            if key in seen:
                return
            seen.add(key)
        steps, seconds = cost(spec)
        bump(int(round(weight)), steps * weight, seconds * weight / 3600)

    def search_identity(owner: Study, arm: Arm) -> str:
        return "search:" + owner.spec(arm.trial_spec(0, 1.0)).key + repr(arm.seeds)

    def means(configs: list[ExperimentSpec]) -> tuple[float, float]:
        full = [cost(c) for c in configs]
        return sum(f[0] for f in full) / len(full), sum(f[1] for f in full) / len(full)

    def trials(owner: Study, arm: Arm, configs: list[ExperimentSpec]) -> None:
        """Count a tuned arm's tuning runs."""
        if arm.search is not None:
            mean_steps, mean_s = means(configs)
            for r, (count, fraction) in enumerate(arm.search.rungs):
                if r == 0:
                    for n in range(count):
                        add(owner.spec(arm.trial_spec(n, fraction)))
                else:
                    bump(count, count * mean_steps * fraction, 0.0)
                    out.core_hours += count * (mean_s - overhead_s) * fraction / 3600
                    out.core_hours += count * overhead_s / 3600
                    part.core_hours += count * (mean_s - overhead_s) * fraction / 3600
                    part.core_hours += count * overhead_s / 3600
        else:
            for spec in configs:
                add(spec.replace(seed=arm.tune_seed))

    selected = {a.id for a in study.arms}
    for arm in study.arms:
        part = PartEstimate(arm.id, arm_task(study, arm), _base_optimiser(study, arm))
        out.parts.append(part)
        counted_trials = False
        if arm.search is not None:  # the same search in two studies is one search
            identity = search_identity(study, arm)
            if identity in seen:
                continue
            seen.add(identity)
            counted_trials = "trials:" + identity in seen  # by an arm around its choice
        if isinstance(arm.base, BestOf) and study.parent is not None:
            other, ref = _referenced(study, arm.base)
            if not (other.name == study.name and ref.id in selected):
                ident = search_identity(other, ref) if ref.search is not None else ""
                if not (ident in seen or "trials:" + ident in seen):
                    if ident:
                        seen.add("trials:" + ident)
                    trials(other, ref, _arm_specs(other, ref))
        if arm.search is not None or arm.grid or isinstance(arm.base, BestOf):
            configs = _arm_specs(study, arm)
            mean_steps, mean_s = means(configs)
            if (arm.search is not None and not counted_trials) or arm.grid:
                trials(study, arm, configs)
            n = len(arm.seeds)
            bump(n, n * mean_steps, n * mean_s / 3600)
        else:
            base = study.spec(apply_variation(arm.base, arm.overrides))
            for spec in arm.repeats_of(base):
                add(spec)
    return out


def made(
    study: Study,
    costs: CostTable,
    store: Any,
    *,
    overhead_s: float = 1.0,
    seen: set[str] | None = None,
) -> StudyEstimate:
    """Estimate the share of ``study`` already in ``store``, counted as :func:`estimate` counts.

    The runs known now (every arm's trials, and the repeats of arms whose choice is made,
    :func:`adamqlr.studies.core.plan`) that have a complete record are costed from ``costs``
    like the runs of :func:`estimate` (not from their own clocks, which measured another load),
    so that ``estimate - made`` is what is left to make (:func:`left`). For an arm whose runs
    are all known (nothing waits for a choice), the runs not stored yet are costed too
    (``pending``): its repeats then cost what the chosen configuration costs, not the mean of
    the search's configurations that :func:`estimate` had to assume.

    Args:
        study: The study.
        costs: Per-step costs.
        store: The results store.
        overhead_s: Seconds counted per run for start-up and evaluation.
        seen: Keys of runs already counted by an earlier study of the same campaign (updated in
            place), as for :func:`estimate`.
    """
    from adamqlr.studies.core import arm_task, plan

    out = StudyEstimate(study.name, 0, 0.0, 0.0, complete=True)
    seen = set() if seen is None else seen
    for arm_plan in plan(study, store):
        arm = arm_plan.arm
        part = PartEstimate(arm.id, arm_task(study, arm), _base_optimiser(study, arm))
        todo = PartEstimate(part.arm, part.task, part.optimiser)
        out.parts.append(part)
        out.complete = out.complete and arm_plan.blocked is None
        for spec in (*arm_plan.trials, *arm_plan.repeats):
            stored = store.status(spec) == "complete"
            out.complete = out.complete and stored
            key = spec.key if stored else "pending:" + spec.key
            if key in seen:
                continue
            seen.add(key)
            steps, seconds, _ = _run_cost(spec, costs, overhead_s)
            for target in (out, part) if stored else (todo,):
                target.runs += 1
                target.steps += steps
                target.core_hours += seconds / 3600
        if arm_plan.blocked is None and (arm_plan.repeats or not arm.tuned):
            out.pending[arm.id] = todo
    return out


def left(total: StudyEstimate, done: StudyEstimate) -> StudyEstimate:
    """Return ``total - done`` (from :func:`estimate` and :func:`made`), arm by arm, at least 0.

    An arm whose runs are all known counts exactly what ``done.pending`` says of it. Later rungs
    and repeats of a search whose choice is not made yet are estimated from the mean cost of its
    configurations, so what is left of such an arm is an estimate too; a study whose every run
    is stored has nothing left.
    """
    out = StudyEstimate(total.study, 0, 0.0, 0.0, uncalibrated=set(total.uncalibrated))
    by_arm = {p.arm: p for p in done.parts}
    for p in total.parts:
        if p.arm in done.pending and not done.complete:
            part = dataclasses.replace(done.pending[p.arm])
        else:
            d = p if done.complete else by_arm.get(p.arm, PartEstimate(p.arm, p.task, p.optimiser))
            part = PartEstimate(
                p.arm,
                p.task,
                p.optimiser,
                max(0, p.runs - d.runs),
                max(0.0, p.steps - d.steps),
                max(0.0, p.core_hours - d.core_hours),
            )
        out.parts.append(part)
        out.runs += part.runs
        out.steps += part.steps
        out.core_hours += part.core_hours
    return out


#: What :func:`describe` can break an estimate down by.
BREAKDOWNS = ("task", "optimiser", "arm")


def breakdown(estimates: Sequence[StudyEstimate], by: str) -> dict[str, PartEstimate]:
    """Sum the arms' shares of ``estimates`` by ``task``, ``optimiser`` or ``arm``.

    Arms are named ``study:arm id``. The rows add up to the estimates' totals (within rounding).

    Raises:
        ValueError: For another ``by``.
    """
    if by not in BREAKDOWNS:
        raise ValueError(f"invalid breakdown {by!r}; expected one of {list(BREAKDOWNS)}")
    rows: dict[str, PartEstimate] = {}
    for e in estimates:
        for p in e.parts:
            name = f"{e.study}:{p.arm}" if by == "arm" else getattr(p, by)
            row = rows.setdefault(name, PartEstimate(name, p.task, p.optimiser))
            row.runs += p.runs
            row.steps += p.steps
            row.core_hours += p.core_hours
    return rows


def describe(estimates: Sequence[StudyEstimate], costs: CostTable, *, by: str | None = None) -> str:
    """Format estimates as a table, with the total, and a breakdown ``by`` task, optimiser or arm.

    Raises:
        ValueError: For a ``by`` not in :data:`BREAKDOWNS`.
    """
    lines = [f"{'study':<18} {'runs':>7} {'steps':>12} {'core-hours':>11}"]
    for e in estimates:
        lines.append(f"{e.study:<18} {e.runs:>7d} {e.steps:>12.3g} {e.core_hours:>11.2f}")
    lines.append(
        f"{'total':<18} {sum(e.runs for e in estimates):>7d} "
        f"{sum(e.steps for e in estimates):>12.3g} {sum(e.core_hours for e in estimates):>11.2f}"
    )
    if by is not None:
        rows = breakdown(estimates, by)
        width = max([18, len(by) + 3, *(len(n) for n in rows)])
        lines.append("")
        lines.append(f"{'by ' + by:<{width}} {'runs':>7} {'steps':>12} {'core-hours':>11}")
        for name, r in rows.items():
            lines.append(f"{name:<{width}} {r.runs:>7d} {r.steps:>12.3g} {r.core_hours:>11.2f}")
    missing = sorted({p for e in estimates for p in e.uncalibrated})
    if missing:
        lines.append(
            "not calibrated (counted as start-up only; run `adamqlr study calibrate`): "
            + ", ".join(f"{t}/{o}" for t, o in missing)
        )
    if costs.meta:
        lines.append(
            f"per-step costs measured {costs.meta.get('measured_at')} on "
            f"{costs.meta.get('machine')} ({costs.meta.get('torch_threads')} torch thread)"
        )
    return "\n".join(lines)
