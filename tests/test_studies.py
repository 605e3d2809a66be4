"""Named studies: catalogue, grids, tuning by final validation loss, stages, CLI, tables."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
from tinytask import registered, tiny, tiny_study

from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.results.store import ResultStore, RunRecord
from adamqlr.studies import (
    Arm,
    ArmFilter,
    BestOf,
    Study,
    StudyIncomplete,
    analysis,
    apply_variation,
    final_value,
    get_study,
    grid,
    missing,
    notebook_records,
    notebook_records_by_task,
    obtain,
    plan,
    run_study,
    select_arms,
    study_names,
)
from adamqlr.studies import cli as study_cli

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def tiny_tasks(monkeypatch):
    yield from registered(monkeypatch)


def fake_record(metrics: pd.DataFrame, stop: str = "epochs", **prov) -> RunRecord:
    return RunRecord(
        spec=None,
        metrics=metrics,
        provenance={"stop_reason": stop, **prov},
        manifest={"key": "k" * 64},
        path=None,  # type: ignore[arg-type]
    )


def save(store: ResultStore, spec: ExperimentSpec, val_losses, times=None) -> None:
    """Write a synthetic record for ``spec`` whose validation loss ends at ``val_losses[-1]``."""
    n = len(val_losses)
    times = times if times is not None else np.arange(n, dtype=float)
    frame = pd.DataFrame(
        {"step": np.arange(n), "time": times, "val_loss": val_losses, "test_loss": val_losses}
    )
    store.save(spec, frame, {"stop_reason": "epochs", "steps": n - 1})


# ------------------------------------------------------------------------------------ catalogue
@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_every_study_resolves_to_valid_specs(profile):
    for name in study_names():
        study = get_study(name, profile)
        assert study.profile == profile and study.chapter
        assert len({a.id for a in study.arms}) == len(study.arms)
        for arm in study.arms:
            assert arm.seeds and (not arm.grid or arm.tune_seed not in arm.seeds)
            if isinstance(arm.base, BestOf):
                ref = get_study(arm.base.study, profile).arm(arm.base.arm)
                assert ref.tuned  # the reference is a tuned arm of the same profile
            for spec in arm.trials():
                assert spec.profile == profile and spec.seed == arm.tune_seed
                study.spec(spec).settings()  # validates every hyperparameter and budget


def test_quick_grids_are_the_documented_ones():
    quick = get_study("sensitivity", "quick")
    damping = sorted(a.value for a in quick.select(group="initial_damping"))
    assert damping == pytest.approx([1e-8, 1e-6, 1e-4, 1e-2, 1.0])
    stepping = quick.select(group="stepping_factor")
    for arm in stepping:  # omega_inc = v, omega_dec = 1/v, and v > 1 (the rule needs it)
        assert arm.value > 1
        assert arm.overrides["damping_increase"] == pytest.approx(arm.value)
        assert arm.overrides["damping_decrease"] == pytest.approx(1 / arm.value)
    paper = get_study("sensitivity", "paper")
    assert len(paper.select(group="initial_damping")) == 17  # the paper's half-decade grid
    assert len(paper.select(group="amplification")) == 11
    assert len(paper.select(group="adam_lr")) == 19


def test_cadence_sets_evaluations_per_epoch_from_the_batch_size():
    study = get_study("untuned-vs-tuned", "quick")
    plans = {p.arm.id: p for p in plan(study, ResultStore(sweep=False))}
    untuned = plans["fashion-mnist/adamqlr-untuned"].repeats[0]
    assert untuned.settings().batch_size == 3200 and untuned.eval_every == 4  # 16 steps/epoch
    adam = plans["fashion-mnist/adam-untuned"].repeats[0]
    assert adam.eval_every == 250  # batch 50: 1000 steps per epoch, 4 evaluations
    energy = plans["uci-energy/adam-untuned"].repeats[0]
    assert energy.eval_every is None  # the task profile's cadence


def test_get_study_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown study 'nope'"):
        get_study("nope")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        get_study("damping", "huge")


# ---------------------------------------------------------------------------------- pieces
def test_grid_product_and_tied_axes():
    g = grid({"batch_size": (50, 400)}, {("damping_decrease", "damping_increase"): ((0.5, 2.0),
             (0.25, 4.0))})  # fmt: skip
    assert g == (
        {"batch_size": 50, "damping_decrease": 0.5, "damping_increase": 2.0},
        {"batch_size": 50, "damping_decrease": 0.25, "damping_increase": 4.0},
        {"batch_size": 400, "damping_decrease": 0.5, "damping_increase": 2.0},
        {"batch_size": 400, "damping_decrease": 0.25, "damping_increase": 4.0},
    )
    with pytest.raises(ValueError, match="no values"):
        grid({"lr": ()})
    with pytest.raises(ValueError, match="not a tuple of 2"):
        grid({("a", "b"): (1.0,)})


def test_apply_variation_sets_fields_and_hyperparameters():
    spec = apply_variation(tiny(), {"batch_size": 8, "lr": 0.1, "padding_dilution": True})
    assert spec.batch_size == 8 and spec.hparams == {"lr": 0.1} and spec.padding_dilution
    with pytest.raises(ValueError, match="unknown hyperparameter 'momentum'"):
        apply_variation(tiny(), {"momentum": 0.9})


def test_final_value_skips_unevaluated_rows_and_counts_divergence_as_inf():
    frame = pd.DataFrame({"val_loss": [3.0, np.nan, 2.0, np.nan]})
    assert final_value(fake_record(frame)) == 2.0
    assert final_value(fake_record(frame, stop="nonfinite_train_loss")) == math.inf
    assert final_value(fake_record(pd.DataFrame({"val_loss": [1.0, np.inf]}))) == math.inf
    assert final_value(fake_record(pd.DataFrame({"val_loss": [np.nan]}))) == math.inf
    with pytest.raises(ValueError, match="no column 'test_accuracy'"):
        final_value(fake_record(frame), "test_accuracy")


def test_arm_validation():
    with pytest.raises(ValueError, match="tuning seed 0 is also a repeat seed"):
        Arm("a", "A", tiny(), seeds=(0,), grid=grid({"lr": (1e-3,)}), tune_seed=0)
    with pytest.raises(ValueError, match="distinct and non-empty"):
        Arm("a", "A", tiny(), seeds=(1, 1))
    with pytest.raises(ValueError, match="duplicate arm ids"):
        Study("s", "smoke", "t", (Arm("a", "A", tiny(), (0,)), Arm("a", "B", tiny(), (0,))))
    with pytest.raises(ValueError, match="uses profile 'quick'"):
        Study("s", "smoke", "t", (Arm("a", "A", tiny().replace(profile="quick"), (0,)),))


# ------------------------------------------------------------------------------ tuning stages
def test_plan_chooses_the_lowest_final_validation_loss_then_repeats_with_fresh_seeds(tmp_path):
    store = ResultStore(tmp_path)
    study = tiny_study()
    todo, blocked = missing(study, store)
    trials = study.arm("tuned").trials()
    assert [s.key for s in todo[:2]] == [t.key for t in trials]  # trials come first
    assert len(blocked) == 2 and "1000" not in blocked[0]  # tuned and around wait on the trials
    assert "2 of 2 tuning trials not run" in blocked[0]
    # the second configuration diverged; the first wins although its loss is large
    save(store, trials[0], [5.0, 4.0])
    save(store, trials[1], [5.0, 0.1, np.inf])
    plans = {p.arm.id: p for p in plan(study, store)}
    assert plans["tuned"].choice == {"lr": 1e-4}
    assert plans["tuned"].objectives == (4.0, math.inf)
    assert [s.seed for s in plans["tuned"].repeats] == [0, 1]
    assert all(s.hparams["lr"] == 1e-4 for s in plans["tuned"].repeats)
    around = plans["around"].repeats
    assert len(around) == 1 and around[0].batch_size == 8 and around[0].hparams["lr"] == 1e-4
    todo, blocked = missing(study, store)
    assert not blocked and len(todo) == 1 + 2 + 1  # fixed, tuned repeats, around


def test_run_study_runs_stage_by_stage_and_obtain_loads(tmp_path):
    store = ResultStore(tmp_path)
    study = tiny_study()
    with pytest.raises(StudyIncomplete) as err:
        obtain(study, store)
    message = str(err.value)
    assert f"make them with: {study.command}" in message
    assert study.command.endswith("run tiny-study --profile smoke")
    assert "missing: tiny-regression/adam" in message and "blocked" in message
    assert "lr=0.0001" in message  # the trials are told apart
    made = run_study(study, store)
    assert len(made) == 2 + 1 + 2 + 1  # trials, fixed repeat, tuned repeats, around
    assert missing(study, store) == ([], [])
    assert run_study(study, store) == []  # nothing left to do
    data = obtain(study, store)
    assert set(data.records) == {"fixed", "tuned", "around"}
    assert [r.spec.seed for r in data.records["tuned"]] == [0, 1]
    assert len(data.trials["tuned"]) == 2 and "fixed" not in data.trials
    assert list(data.by_label()) == ["Adam (Untuned)", "Adam", "Adam, batch 8"]
    table = analysis.tuning_table(data)
    assert table["chosen"].sum() == 1
    chosen = table.loc[table["chosen"], "objective"].item()
    assert chosen == table["objective"].min()
    summary = analysis.tuning_summary(data)
    assert list(summary.index) == ["Adam"]
    row = summary.loc["Adam"]
    assert row["configurations"] == 2 and row["trial runs"] == 2 and row["rungs"] == 1
    assert row["chosen rung"] == 0 and row["chosen objective"] == chosen
    assert row["best at full budget"] == chosen and row["diverged trials"] == 0
    hp = analysis.hyperparameter_table(data)
    assert list(hp.index) == [("tiny-regression", "Adam")]
    assert hp.loc[("tiny-regression", "Adam"), "lr"] == data.plans["tuned"].choice["lr"]


def test_obtain_computes_only_when_asked(tmp_path):
    store = ResultStore(tmp_path)
    study = Study("one", "smoke", "t", (Arm("a", "Adam", tiny(), seeds=(3,)),))
    with pytest.raises(StudyIncomplete, match=r"1 run\(s\) missing"):
        obtain(study, store)
    data = obtain(study, store, compute=True)
    assert data.records["a"][0].spec.seed == 3


def test_notebook_records_under_paper_stops_with_the_command(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(StudyIncomplete, match="run runtime --profile paper") as err:
        notebook_records("runtime", "paper", store=store)
    assert "batch_size=3200 steps=100" in str(err.value)  # the runs are told apart
    with pytest.raises(StudyIncomplete):  # smoke reads quick records and never computes
        notebook_records("runtime", "smoke", store=store, compute=True)
    assert not any(tmp_path.glob("*/*/*/manifest.json"))
    with pytest.raises(ValueError, match="unknown profile"):
        notebook_records("runtime", "huge", store=store)


def test_notebook_records_stand_in_another_profile_only_when_asked(tmp_path):
    empty = ResultStore(tmp_path)
    with pytest.raises(StudyIncomplete, match="--profile quick"):  # no quick records either
        notebook_records("kfac-sensitivity", "paper", store=empty, fallback="quick")
    with pytest.raises(StudyIncomplete, match="--profile paper"):
        notebook_records("kfac-sensitivity", "paper", store=empty, fallback="paper")
    # the committed store: the paper campaign of this study is under way, its quick runs made
    if any(missing(get_study("kfac-sensitivity", "paper"), ResultStore())):
        data = notebook_records("kfac-sensitivity", "paper", fallback="quick")
        assert data.study.profile == "quick" and data.records


def _copy_quick_records(task: str, root) -> ResultStore:
    """A store holding the committed quick-profile records (repeats and trials) of one task."""
    import shutil
    from pathlib import Path

    committed = Path(ResultStore().root)
    for folder in (committed / task).glob("*/quick-*"):
        shutil.copytree(folder, root / folder.relative_to(committed))
    shutil.copytree(committed / "tuning" / task, root / "tuning" / task)
    return ResultStore(root)


def test_notebook_records_of_one_task_stand_on_their_own(tmp_path):
    store = _copy_quick_records("uci-energy", tmp_path)
    whole = get_study("untuned-vs-tuned", "quick")
    with pytest.raises(StudyIncomplete):  # the whole study is not in this store
        notebook_records("untuned-vs-tuned", "quick", store=store)
    energy = notebook_records("untuned-vs-tuned", "quick", store=store, task="uci-energy")
    assert energy.tasks() == ["uci-energy"]
    assert [a.id for a in energy.study.arms] == [a.id for a in whole.select(task="uci-energy")]
    assert all(r.manifest["task"] == "uci-energy" for r in energy.all_records()) and energy.records
    with pytest.raises(StudyIncomplete, match="--task uci-protein"):
        notebook_records("untuned-vs-tuned", "quick", store=store, task="uci-protein")
    with pytest.raises(ValueError, match="'cifar-100'"):
        notebook_records("untuned-vs-tuned", "quick", store=store, task="cifar-100")
    # paper with a quick stand-in: this task's quick records stand in, whatever other tasks hold
    stand_in = notebook_records(
        "untuned-vs-tuned", "paper", store=store, task="uci-energy", fallback="quick"
    )
    keys = {arm: [r.key for r in recs] for arm, recs in energy.records.items()}
    assert stand_in.study.profile == "quick"
    assert {arm: [r.key for r in recs] for arm, recs in stand_in.records.items()} == keys


def test_notebook_records_by_task_reads_each_task_under_its_complete_profile():
    parts = notebook_records_by_task("untuned-vs-tuned", "paper", fallback="quick")
    study = get_study("untuned-vs-tuned", "paper")
    assert list(parts) == study.tasks()
    for task, part in parts.items():
        assert part.tasks() == [task]
        complete = not any(missing(select_arms(study, ArmFilter(tasks=(task,))), ResultStore()))
        assert part.study.profile == ("paper" if complete else "quick")
    smoke = notebook_records_by_task("untuned-vs-tuned", "smoke", fallback="quick")
    assert list(smoke) == get_study("untuned-vs-tuned", "quick").tasks()
    assert all(part.study.profile == "quick" for part in smoke.values())


def test_a_task_the_stand_in_does_not_run_is_missing_and_may_be_skipped(tmp_path):
    """The quick factorial runs Fashion-MNIST only: its UCI tasks have no stand-in."""
    store = ResultStore(tmp_path)  # empty: nothing complete under any profile
    assert "uci-energy" not in get_study("factorial", "quick").tasks()
    with pytest.raises(StudyIncomplete):
        notebook_records("factorial", "paper", store=store, task="uci-energy", fallback="quick")
    with pytest.raises(StudyIncomplete):
        notebook_records_by_task("factorial", "paper", store=store, fallback="quick")
    assert (
        notebook_records_by_task(
            "factorial", "paper", store=store, fallback="quick", skip_incomplete=True
        )
        == {}
    )
    # the committed quick records stand in for the task the stand-in does run
    parts = notebook_records_by_task("factorial", "paper", fallback="quick", skip_incomplete=True)
    assert "fashion-mnist" in parts and all(
        p.study.profile in ("paper", "quick") for p in parts.values()
    )


def test_sweep_effect_compares_each_value_with_the_one_nearest_the_tuned(tmp_path):
    store = ResultStore(tmp_path)
    arms = tuple(
        Arm(f"lr={lr:g}", f"lr {lr:g}", tiny(), seeds=(0, 1, 2), overrides={"lr": lr},
            group="lr", value=lr)
        for lr in (1e-4, 3e-3, 1e-1)
    )  # fmt: skip
    data = obtain(Study("sweep", "smoke", "sweep", arms), store, compute=True)
    effect = analysis.sweep_effect(data, "lr", 2e-3)
    assert effect["reference value"] == 3e-3  # nearest on a log scale
    finals = {a.value: np.median([final_value(r, "test_loss") for r in data.records[a.id]])
              for a in arms}  # fmt: skip
    worst = max((v for v in finals if v != 3e-3), key=lambda v: finals[v])
    assert effect["worst value"] == worst
    assert effect["worst / reference"] == pytest.approx(finals[worst] / finals[3e-3])
    assert effect["CI low"] <= effect["worst / reference"] <= effect["CI high"]
    assert effect["values detectably worse"].endswith("of 2")
    with pytest.raises(ValueError, match="invalid reference -1"):
        analysis.sweep_effect(data, "lr", -1)
    with pytest.raises(ValueError, match="no arm"):
        analysis.sweep_effect(data, "batch", 1.0)


@pytest.mark.parametrize(
    ("effect", "other", "said"),
    [
        ((1.3, 1.5), (1.0, 1.2), "larger than"),
        ((1.0, 1.2), (1.3, 1.5), "smaller than"),
        ((1.0, 1.3), (1.2, 1.5), "indistinguishable from"),
        ((math.inf, math.inf), (1.0, 1.2), "larger than"),  # all runs of the worst value diverged
        ((math.nan, math.nan), (1.0, 1.2), "indistinguishable from"),
        ((2e6, 3e6), (4e9, 5e12), "as large as"),  # both sweeps blow up: not ranked
        ((math.inf, math.inf), (4e9, 5e12), "as large as"),
    ],
)
def test_contrast_effects_compares_intervals(effect, other, said):
    row = lambda ci: {"CI low": ci[0], "CI high": ci[1]}  # noqa: E731
    assert analysis.contrast_effects(row(effect), row(other)) == said


# ------------------------------------------------------------------------------------- tables
def test_analysis_tables():
    def rec(seed, times, opt="adam", batch=50, label="Adam"):
        frame = pd.DataFrame({"step": np.arange(len(times)), "time": times})
        settings = {"task": "t", "optimiser": opt, "batch_size": batch, "seed": seed}
        return fake_record(
            frame, optimiser_label=label, settings=settings,
            spec={"seed": seed, "profile": "quick"}, started_at="2026-01-02T00:00:00",
            git={"commit": "abcdef123", "dirty": True}, device="cpu", device_name="CPU",
            torch_version="2.13",
        )  # fmt: skip

    adam = rec(0, [0.0, 5.0, 6.0, 7.0, 8.0])  # first step (5 s) is skipped
    qlr = rec(1, [0.0, 1.0, 4.0, 7.0, 10.0], opt="adamqlr", label="AdamQLR")
    costs = analysis.step_costs([adam, qlr])
    assert costs["median_s"].tolist() == [1.0, 3.0]
    rel = analysis.relative_cost(costs)
    assert rel.set_index("optimiser")["ratio"].to_dict() == {"adam": 1.0, "adamqlr": 3.0}
    two = analysis.relative_cost(analysis.step_costs([adam, qlr, rec(2, [0, 1, 6, 11, 16.0])]))
    adam_row = two.set_index("optimiser").loc["adam"]
    assert (adam_row["median_s"], adam_row["low_s"], adam_row["high_s"]) == (3.0, 1.0, 5.0)
    assert adam_row["ratio_low"] == pytest.approx(1 / 3) and adam_row["runs"] == 2
    text = analysis.provenance_text([adam, qlr, rec(2, [0.0, 1.0, 2.0])])
    assert "3 runs, profile quick" in text and "seeds 0-2" in text and "abcdef1+dirty" in text
    with pytest.raises(ValueError, match="too few steps"):
        analysis.step_costs([rec(0, [0.0, 1.0])])


def test_plots_draw_from_tables():
    import matplotlib.pyplot as plt

    from adamqlr.plots.experiments import plot_final_vs_value, plot_step_costs

    table = pd.DataFrame({"value": [1e-3, 1e-2, 1e-1], "label": list("abc"),
                          "median": [1.0, 0.5, np.inf], "min": [0.9, 0.4, np.inf],
                          "max": [1.1, np.inf, np.inf], "diverged": [0, 1, 3],
                          "runs": [3, 3, 3]})  # fmt: skip
    ax = plot_final_vs_value(table, reference=1e-2)
    assert ax.get_xscale() == "log" and len(ax.lines) >= 2  # the curve and the crosses
    costs = pd.DataFrame({"task": "t", "optimiser": ["adam", "adamqlr"], "label": ["Adam", "Q"],
                          "batch_size": [50, 50], "median_s": [1e-3, 3e-3],
                          "ratio": [1.0, 3.0]})  # fmt: skip
    axes = plot_step_costs(costs)
    assert axes[1].get_lines()[-1].get_ydata()[0] == 1.0  # the reference line
    plt.close("all")


# --------------------------------------------------------------------------------------- CLI
def test_cli_list_status_and_bad_input(tmp_path, capsys):
    assert study_cli.main(["list", "--profile", "smoke"]) == 0
    assert "untuned-vs-tuned" in capsys.readouterr().out
    assert study_cli.main(["status", "runtime", "--profile", "smoke", "--results",
                           str(tmp_path)]) == 1  # fmt: skip
    out = capsys.readouterr().out
    assert "incomplete" in out and "make them with:" in out and "run runtime" in out
    assert study_cli.main(["status", "nope", "--results", str(tmp_path)]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err
    assert study_cli.main(["run", "runtime", "--threads", "0", "--results", str(tmp_path)]) == 2


# ------------------------------------------------------------------------ committed records
@pytest.mark.parametrize("name", study_names())
def test_committed_quick_records_cover_every_study(name):
    """The book's quick pages read these; a changed default or algorithm makes them missing."""
    todo, blocked = missing(get_study(name, "quick"), ResultStore(sweep=False))
    assert not blocked and not todo, (
        f"{len(todo)} quick run(s) of study {name!r} have no current record; "
        f"run: adamqlr study run {name} --profile quick"
    )


def test_study_records_name_their_tasks_in_arm_order(tmp_path):
    """``tasks`` and ``task_titles``: what the experiment pages label their panels with."""
    from adamqlr.studies.core import StudyRecords

    study = tiny_study()
    record = RunRecord(spec=None, metrics=pd.DataFrame(), provenance={"task_title": "Tiny"},
                       manifest={"key": "k" * 64}, path=None)  # type: ignore[arg-type]  # fmt: skip
    data = StudyRecords(study, {}, {arm.id: [record] for arm in study.arms}, {})
    assert data.tasks() == ["tiny-regression"] and data.tasks(group="") == ["tiny-regression"]
    assert data.task_titles() == {"tiny-regression": "Tiny"}
    untitled = RunRecord(spec=None, metrics=pd.DataFrame(), provenance={},
                         manifest={"key": "k" * 64}, path=None)  # type: ignore[arg-type]  # fmt: skip
    bare = StudyRecords(study, {}, {arm.id: [untitled] for arm in study.arms}, {})
    assert bare.task_titles(["tiny-regression"]) == {"tiny-regression": "tiny-regression"}
