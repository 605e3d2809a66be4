"""Part of a study: --task/--arm/--exclude-arm selection, its dependencies, plans and runs."""

from __future__ import annotations

import re

import pytest
from tinytask import registered, tiny_study

from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.results.store import ResultStore
from adamqlr.studies import cli as study_cli
from adamqlr.studies import get_study, missing, plan, run_study
from adamqlr.studies.campaign import campaign_order
from adamqlr.studies.core import arm_task
from adamqlr.studies.costs import CostTable, breakdown, estimate
from adamqlr.studies.selection import ArmFilter, select_arms, select_studies


@pytest.fixture(autouse=True)
def tiny_tasks(monkeypatch):
    yield from registered(monkeypatch)


def flat_costs(*pairs: tuple[str, str], per_step: float = 1e-3) -> CostTable:
    return CostTable({f"{t}|{o}|{b}": per_step for t, o in pairs for b in (1, 50, 3200)})


# ------------------------------------------------------------------------------- selection
def test_no_filter_is_the_study_itself():
    study = tiny_study()
    assert not ArmFilter()
    assert select_arms(study, ArmFilter()) is study
    assert select_studies([study], ArmFilter()) == [study]


def test_patterns_tasks_and_exclusions_select_arms_in_order():
    study = tiny_study()
    part = select_arms(study, ArmFilter(arms=("f*", "around")))
    assert [a.id for a in part.arms] == ["fixed", "around"]
    assert part.name == study.name and part.profile == study.profile and part.parent is study
    assert part.command == "adamqlr study run tiny-study --profile smoke --arm 'f*' --arm around"
    rest = select_arms(study, ArmFilter(exclude=("f*",)))
    assert [a.id for a in rest.arms] == ["tuned", "around"]
    by_task = select_arms(study, ArmFilter(tasks=("tiny-regression",), exclude=("around",)))
    assert [a.id for a in by_task.arms] == ["fixed", "tuned"]
    again = select_arms(by_task, ArmFilter(arms=("tuned",)))  # a selection of a selection
    assert [a.id for a in again.arms] == ["tuned"] and again.parent is study
    assert "--exclude-arm around --arm tuned" in again.command


def test_paper_factorial_parts_by_task_and_by_pattern():
    study = get_study("factorial", "paper")
    fashion = select_arms(study, ArmFilter(tasks=("fashion-mnist",)))
    assert fashion.arms and all(arm_task(study, a) == "fashion-mnist" for a in fashion.arms)
    kfac = select_arms(study, ArmFilter(arms=("*/k-fac/*",)))
    others = select_arms(study, ArmFilter(exclude=("*/k-fac/*",)))
    assert all("/k-fac/" in a.id for a in kfac.arms)
    assert {a.id for a in kfac.arms} | {a.id for a in others.arms} == {a.id for a in study.arms}
    assert not {a.id for a in kfac.arms} & {a.id for a in others.arms}


@pytest.mark.parametrize(
    ("arm_filter", "message"),
    [
        (
            ArmFilter(arms=("nope/*",)),
            r"--arm 'nope/\*' matches no arm id of tiny-study; ids are "
            r"e.g. fixed, tuned, around",
        ),  # fmt: skip
        (ArmFilter(exclude=("typo",)), r"--exclude-arm 'typo' matches no arm id"),
        (
            ArmFilter(tasks=("mnist",)),
            r"--task 'mnist' matches no arm of tiny-study; its tasks "
            r"are \['tiny-regression'\]",
        ),  # fmt: skip
        (
            ArmFilter(arms=("fixed",), exclude=("f*",)),
            r"the filter --arm fixed --exclude-arm "
            r"'f\*' keeps no arm of tiny-study",
        ),  # fmt: skip
    ],
)
def test_a_filter_that_selects_nothing_is_an_error(arm_filter, message):
    with pytest.raises(ValueError, match=message):
        select_arms(tiny_study(), arm_filter)


def test_error_lists_ids_from_across_the_study():
    study = get_study("factorial", "paper")
    with pytest.raises(ValueError, match="matches no arm id") as err:
        select_arms(study, ArmFilter(arms=("*/kfac/*",)))
    text = str(err.value)
    assert "(69 in all)" in text or f"({len(study.arms)} in all)" in text
    for task in ("uci-energy", "uci-protein", "fashion-mnist"):  # spread over the list
        assert f"{task}/factorial/" in text


def test_filter_values_are_checked():
    with pytest.raises(ValueError, match="invalid arms 'a'"):
        ArmFilter(arms="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"invalid tasks \[''\]"):
        ArmFilter(tasks=("",))


def test_several_studies_keep_those_with_selected_arms():
    studies = [get_study(n, "smoke") for n in ("runtime", "rosenbrock", "damping")]
    kept = select_studies(studies, ArmFilter(tasks=("uci-energy",)))
    assert [s.name for s in kept] == ["runtime", "damping"]
    with pytest.raises(ValueError, match="--task 'cifar-10' matches no arm of runtime, rosenbrock"):
        select_studies(studies, ArmFilter(tasks=("cifar-10",)))


# ------------------------------------------------------------------- BestOf dependencies
def test_an_arm_around_a_choice_brings_the_tuning_along(tmp_path):
    """Selecting only the BestOf arm runs the tuned arm's trials, then its own repeats only."""
    store = ResultStore(tmp_path)
    study = tiny_study()
    part = select_arms(study, ArmFilter(arms=("around",)))
    (p,) = plan(part, store)
    tuned_trials = {s.key for s in plan(study, store)[1].trials}
    assert {s.key for s in p.trials} == tuned_trials and len(tuned_trials) == 2
    todo, blocked = missing(part, store)
    assert {s.key for s in todo} == tuned_trials
    assert blocked == ["around: waits for tiny-study:tuned (2 of 2 tuning trials not run)"]
    made = run_study(part, store)
    assert len(made) == 2 + 1  # the tuned arm's trials, then this arm's one repeat
    assert missing(part, store) == ([], [])
    left, _ = missing(study, store)  # the fixed arm and the tuned arm's repeats are not made
    assert sorted((s.optimiser, s.seed) for s in left) == [("adam", 0), ("adam", 1),
                                                            ("adam-untuned", 0)]  # fmt: skip


def test_the_plan_counts_a_referenced_arms_tuning_once():
    sens = get_study("sensitivity", "paper")
    uvt = get_study("untuned-vs-tuned", "paper")
    costs = flat_costs(("fashion-mnist", "adamqlr"))
    one = select_arms(sens, ArmFilter(arms=("fashion-mnist/adamqlr/batch_size=100",)))
    two = select_arms(sens, ArmFilter(arms=("fashion-mnist/adamqlr/batch_size=100",
                                            "fashion-mnist/adamqlr/batch_size=200")))  # fmt: skip
    ref = select_arms(uvt, ArmFilter(arms=("fashion-mnist/adamqlr",)))
    (arm,) = one.arms
    e_ref = estimate(ref, costs, overhead_s=1.0)
    trials_only = e_ref.runs - len(ref.arms[0].seeds)
    assert trials_only > 0
    e_one = estimate(one, costs, overhead_s=1.0)
    assert e_one.runs == trials_only + len(arm.seeds)  # the search comes along, its repeats not
    e_two = estimate(two, costs, overhead_s=1.0)
    assert e_two.runs == trials_only + 2 * len(arm.seeds)  # one search for both arms
    assert e_two.parts[0].runs == trials_only + len(arm.seeds)  # for the first arm needing it
    seen: set[str] = set()  # the tuned arm counted first (as in `plan all`): not again
    e_ref_first = estimate(ref, costs, seen=seen)
    assert e_ref_first.runs == e_ref.runs
    assert estimate(one, costs, seen=seen).runs == len(arm.seeds)
    seen = set()  # the other way round: the tuned arm's trials are not counted twice
    estimate(one, costs, seen=seen)
    assert estimate(ref, costs, seen=seen).runs == len(ref.arms[0].seeds)
    whole = estimate(sens, costs)  # a whole study counts the search where the tuned arm is
    assert whole.runs == sum(len(a.seeds) for a in sens.arms)


# ------------------------------------------------------------------------------ estimates
def _close(a: float, b: float) -> bool:
    return a == pytest.approx(b, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name", ["untuned-vs-tuned", "factorial"])
def test_parts_of_a_partition_add_up_to_the_whole(name):
    study = get_study(name, "paper")
    pairs = {(arm_task(study, a), s.optimiser) for a in study.arms for s in [a.base]
             if isinstance(s, ExperimentSpec)}  # fmt: skip
    costs = flat_costs(*pairs, per_step=2e-3)
    whole = estimate(study, costs)
    assert sum(p.runs for p in whole.parts) == whole.runs
    assert _close(sum(p.core_hours for p in whole.parts), whole.core_hours)
    for by in ("task", "optimiser", "arm"):
        rows = breakdown([whole], by)
        assert sum(r.runs for r in rows.values()) == whole.runs
        assert _close(sum(r.steps for r in rows.values()), whole.steps)
        assert _close(sum(r.core_hours for r in rows.values()), whole.core_hours)
    tasks = sorted({arm_task(study, a) for a in study.arms})
    assert len(tasks) == 3
    parts = [estimate(select_arms(study, ArmFilter(tasks=(t,))), costs) for t in tasks]
    assert sum(e.runs for e in parts) == whole.runs
    assert _close(sum(e.core_hours for e in parts), whole.core_hours)
    by_task = breakdown([whole], "task")
    for t, e in zip(tasks, parts, strict=True):
        assert e.runs == by_task[t].runs and _close(e.core_hours, by_task[t].core_hours)
    kfac = "*/k-fac/*" if name == "factorial" else "*/kfac*"
    halves = [estimate(select_arms(study, f), costs)
              for f in (ArmFilter(arms=(kfac,)), ArmFilter(exclude=(kfac,)))]  # fmt: skip
    assert sum(e.runs for e in halves) == whole.runs
    assert _close(sum(e.core_hours for e in halves), whole.core_hours)
    assert 0 < halves[0].core_hours < whole.core_hours


def _total(out: str) -> tuple[int, float]:
    (line,) = [x for x in out.splitlines() if x.startswith("total ")]
    _, runs, _, hours = line.split()
    return int(runs), float(hours)


def _rows(out: str, by: str) -> list[tuple[int, float]]:
    lines = out.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith(f"by {by} "))
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith("per-step"):
            break
        parts = line.split()
        rows.append((int(parts[-3]), float(parts[-1])))
    return rows


def test_cli_plan_sizes_a_part_and_breaks_it_down(tmp_path, capsys):
    study = get_study("factorial", "paper")
    pairs = {(a.base.task, a.base.optimiser) for a in study.arms}
    flat_costs(*pairs, per_step=2e-3).save(tmp_path)
    common = ["plan", "factorial", "--profile", "paper", "--results", str(tmp_path)]
    assert study_cli.main([*common, "--by", "task"]) == 0
    out = capsys.readouterr().out
    whole = _total(out)
    rows = _rows(out, "task")
    assert len(rows) == 3 and sum(r for r, _ in rows) == whole[0]
    assert sum(h for _, h in rows) == pytest.approx(whole[1], abs=0.005 * len(rows) + 0.005)
    parts = []
    arms = len(get_study("factorial", "paper").arms)  # every task has a third of them
    for task in ("uci-energy", "uci-protein", "fashion-mnist"):
        assert study_cli.main([*common, "--task", task, "--by", "optimiser"]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"factorial: {arms // 3} of {arms} arms \(--task {task}\)", out)
        parts.append(_total(out))
        rows = _rows(out, "optimiser")
        assert len(rows) == arms // 3 and sum(r for r, _ in rows) == parts[-1][0]
        assert sum(h for _, h in rows) == pytest.approx(parts[-1][1], abs=0.005 * 24)
    assert sum(r for r, _ in parts) == whole[0]
    assert sum(h for _, h in parts) == pytest.approx(whole[1], abs=0.02)
    assert study_cli.main([*common, "--arm", "*/kfac/*"]) == 2
    err = capsys.readouterr().err
    assert "--arm '*/kfac/*' matches no arm id of factorial" in err
    assert "fashion-mnist/factorial/k-fac/" in err


# ------------------------------------------------------------------------------ campaigns
def test_campaign_order_of_a_part_interleaves_its_arms(tmp_path):
    study = get_study("runtime", "smoke")
    ids = [a.id for a in study.arms]
    part = select_arms(study, ArmFilter(arms=(ids[0], ids[2])))
    order = campaign_order([part], ResultStore(tmp_path))
    whole = campaign_order([study], ResultStore(tmp_path))
    keep = {s.key for p in plan(part, ResultStore(tmp_path)) for s in p.specs}
    assert [s.key for s in order] == [s.key for s in whole if s.key in keep]


def test_smoke_run_of_one_task_writes_only_that_tasks_records(tmp_path, capsys):
    """`study run --task` on a campaign worker: the selected arms' records, nothing else."""
    args = ["damping", "--profile", "smoke", "--results", str(tmp_path), "--task", "uci-energy"]
    assert study_cli.main(["run", *args, "--jobs", "1", "--no-progress"]) == 0
    store = ResultStore(tmp_path)
    records = store.records()
    study = get_study("damping", "smoke")
    selected = [a for a in study.arms if arm_task(study, a) == "uci-energy"]
    assert len(records) == sum(len(a.seeds) for a in selected) > 0
    assert {r.provenance["spec"]["task"] for r in records} == {"uci-energy"}
    assert not (tmp_path / "fashion-mnist").exists()
    assert records[0].provenance["campaign"]["selection"] == {"damping": "--task uci-energy"}
    todo, _ = missing(study, store)  # the rest of the study is still to run
    assert todo and {s.task for s in todo} == {"fashion-mnist"}
    capsys.readouterr()
    assert study_cli.main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert f"damping (smoke) [{len(selected)} of {len(study.arms)} arms: --task uci-energy]: " \
        "complete" in out  # fmt: skip
    assert study_cli.main(["status", "damping", "--profile", "smoke", "--results",
                           str(tmp_path)]) == 1  # fmt: skip
    assert "make them with: adamqlr study run damping --profile smoke\n" in capsys.readouterr().out
