"""The campaign runner, the studies' search, cost estimates and bounded evaluation."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adamqlr.experiment.loop import eval_schedule
from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.results.store import ResultStore
from adamqlr.studies import Arm, Campaign, DirtyTreeError, Search, Study, get_study, study_names
from adamqlr.studies import cli as study_cli
from adamqlr.studies.campaign import campaign_order
from adamqlr.studies.core import missing, plan, search_state
from adamqlr.studies.costs import CostTable, estimate, left, made
from adamqlr.tune.spaces import Choice, LogUniform, OneMinus, draw, search_space

SRC = Path(__file__).resolve().parents[1] / "src"


# ------------------------------------------------------------------------------ search spaces
@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_tuned_arms_draw_from_the_tuners_search_spaces(profile):
    """One table of spaces: every search arm uses tune.spaces.search_space for its pair."""
    searched = 0
    for name in study_names():
        for arm in get_study(name, profile).arms:
            if arm.search is None:
                continue
            searched += 1
            assert arm.search.space == search_space(arm.base.optimiser, arm.base.task)
            for k in range(3):
                config = arm.search.configuration(k)
                for key, dim in arm.search.space.items():
                    assert dim.contains(config[key]), (arm.id, key, config[key])
                spec = arm.trial_spec(k, arm.search.rungs[0][1])
                assert spec.seed == arm.tune_seed + k and spec.seed not in arm.seeds
                spec.settings()  # a valid experiment
    assert searched


def test_draw_is_reproducible_and_covers_the_space():
    space = {"lr": LogUniform(1e-6, 1.0), "m": OneMinus(1e-4, 0.3), "b": Choice((50, 3200))}
    draws = [draw(space, 0, k, "t/o") for k in range(400)]
    assert draws[7] == draw(space, 0, 7, "t/o") and draws[7] != draw(space, 0, 7, "other")
    logs = np.log10([d["lr"] for d in draws])
    assert logs.min() < -5.5 and logs.max() > -0.5 and abs(logs.mean() + 3) < 0.3
    assert {d["b"] for d in draws} == {50, 3200}
    assert all(0.7 <= d["m"] <= 1 - 1e-4 for d in draws)


def test_paper_search_is_200_samples_with_reduction_factor_4():
    arm = get_study("untuned-vs-tuned", "paper").arm("fashion-mnist/adamqlr")
    assert arm.search.n_trials == 200 and arm.search.reduction_factor == 4
    assert arm.search.rungs == ((200, 1 / 64), (50, 1 / 16), (12, 1 / 4), (3, 1.0))
    assert len(arm.seeds) == 50
    assert len(get_study("sensitivity", "paper").arms[0].seeds) == 10


# ---------------------------------------------------------------- successive halving on records
def _fake(store: ResultStore, spec: ExperimentSpec, value: float) -> None:
    frame = pd.DataFrame({"step": [0, 1], "time": [0.0, 1.0], "val_loss": [1.0, value]})
    store.save(spec, frame, {"stop_reason": "epochs", "steps": 1})


def test_successive_halving_promotes_the_best_quarter_and_chooses(tmp_path):
    space = search_space("adam", "uci-energy")
    arm = Arm(
        "a", "Adam", ExperimentSpec("uci-energy", "adam", profile="smoke"), seeds=(0, 1),
        search=Search(space, 16, stream="test"),
    )  # fmt: skip
    study = Study("s", "smoke", "t", (arm,), chapter="x")
    store = ResultStore(tmp_path)
    state = search_state(study, arm, store)
    assert [r for _, r, _ in state.trials] == [0] * 16 and state.choice is None
    assert {s.settings().epochs for _, _, s in state.trials} == {5 / 16}
    for n, _, spec in state.trials:  # the objective at rung 0: configuration n scores n (8: inf)
        _fake(store, spec, math.inf if n == 8 else float(n))
    state = search_state(study, arm, store)
    rung1 = [(n, s) for n, r, s in state.trials if r == 1]
    assert [n for n, _ in rung1] == [0, 1, 2, 3] and state.pending == 4
    assert {s.settings().epochs for _, s in rung1} == {5 / 4}
    for n, spec in rung1:  # at rung 1, configuration 2 is best
        _fake(store, spec, {0: 0.5, 1: 0.4, 2: 0.1, 3: 0.3}[n])
    state = search_state(study, arm, store)
    (last,) = [(n, s) for n, r, s in state.trials if r == 2]
    assert last[0] == 2 and last[1].settings().epochs == 5
    _fake(store, last[1], 0.2)
    (p,) = plan(study, store)
    assert p.choice == arm.search.configuration(2) and not p.blocked
    assert [s.seed for s in p.repeats] == [0, 1]
    assert p.repeats[0].hparams["lr"] == arm.search.configuration(2)["lr"]


def test_a_configuration_stopped_early_can_win_and_the_summary_says_so(tmp_path):
    """Ray's rule (lowest last value among all trials) lets a lower rung's value win when the
    full-budget values are worse (e.g. overfitting): the summary reports the rung it won at."""
    from adamqlr.studies import analysis, obtain

    space = search_space("adam", "uci-energy")
    arm = Arm(
        "a", "Adam", ExperimentSpec("uci-energy", "adam", profile="smoke"), seeds=(0, 1),
        search=Search(space, 16, stream="test"),
    )  # fmt: skip
    study = Study("s", "smoke", "t", (arm,), chapter="x")
    store = ResultStore(tmp_path)
    for rung, values in enumerate(
        (lambda n: float(n), lambda n: {0: 0.5, 1: 0.4, 2: 0.1, 3: 0.3}[n], lambda n: 0.45)
    ):
        state = search_state(study, arm, store)
        for n, r, spec in state.trials:
            if r == rung:
                _fake(store, spec, values(n))
    (p,) = plan(study, store)
    assert p.choice == arm.search.configuration(3)  # 0.3 at rung 1 beats 0.45 at full budget
    for spec in p.repeats:
        _fake(store, spec, 0.5)
    row = analysis.tuning_summary(obtain(study, store)).loc["Adam"]
    assert row["rungs"] == 3 and row["chosen rung"] == 1
    assert row["chosen objective"] == 0.3 and row["best at full budget"] == 0.45
    assert row["configurations"] == 16 and row["trial runs"] == 16 + 4 + 1


# -------------------------------------------------------------------------------- evaluation
def test_eval_schedule_is_bounded_and_log_spaced():
    marks = [s for s in range(1, 10001) if eval_schedule(100, 10000)(s)]
    assert 50 <= len(marks) <= 100 and marks[0] == 1 and marks[-1] == 10000
    ratios = np.diff(np.log(marks[40:]))
    assert ratios.max() < 0.2  # geometric, not bunched
    open_ended = eval_schedule(101, None)
    assert sum(open_ended(s) for s in range(1, 100001)) <= 101
    with pytest.raises(ValueError, match="eval_points"):
        eval_schedule(1, 10)


def test_eval_points_keeps_old_keys_and_a_paper_record_small(tmp_path):
    spec = ExperimentSpec("uci-energy", "adamqlr-untuned", profile="paper", epochs=400)
    assert spec.key == spec.replace(eval_points=None).key != spec.replace(eval_points=100).key
    from adamqlr.experiment import run

    record = run(spec.replace(eval_points=100), root=tmp_path, progress=False)
    assert len(record.metrics) <= 102 and record.metrics["step"].iloc[-1] == 400
    assert np.isfinite(record.metrics["test_loss"].iloc[-1])
    size = sum(f.stat().st_size for f in record.path.iterdir())
    assert size <= 20_000, size


# --------------------------------------------------------------------------------- plan, costs
def test_plan_prints_runs_steps_and_core_hours(tmp_path, capsys):
    table = CostTable(
        {
            f"{t}|{o}|{b}": 1e-3
            for t in ("uci-energy", "fashion-mnist", "uci-protein", "rosenbrock")
            for o in ("adam", "sgd")
            for b in (1, 50, 3200)
        }  # fmt: skip
    )
    table.save(tmp_path)
    assert study_cli.main(["plan", "all", "--profile", "paper", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in study_names():
        assert name in out
    assert "total" in out and "core-hours" in out and "not calibrated" in out
    fixed = get_study("runtime", "paper")
    e = estimate(fixed, table, overhead_s=0.0)
    assert e.runs == sum(len(a.seeds) for a in fixed.arms)
    adam = [a for a in fixed.arms if a.base.optimiser in ("adam", "sgd")]
    expected = sum(len(a.seeds) * a.base.steps * 1e-3 for a in adam) / 3600
    assert e.core_hours == pytest.approx(expected)


def test_plan_left_counts_only_what_is_not_stored(tmp_path, capsys):
    table = CostTable({f"uci-energy|{o}|{b}": 1e-3 for o in ("adam", "sgd") for b in (50, 3200)})
    table.save(tmp_path)
    study = get_study("runtime", "paper")
    store = ResultStore(tmp_path)
    total = estimate(study, table, overhead_s=1.0)
    nothing = made(study, table, store, overhead_s=1.0)
    assert nothing.runs == 0 and not nothing.complete
    assert left(total, nothing).core_hours == pytest.approx(total.core_hours)

    def store_all(specs):
        frame = pd.DataFrame({"step": [0, 1], "time": [0.0, 1.0], "train_loss": [1.0, 0.5]})
        for spec in specs:
            store.save(spec, frame, {"stop_reason": "steps", "steps": 1, "git": {"commit": "a"}})

    first = plan(study, store)[0]
    store_all(first.repeats)
    rest = left(total, made(study, table, store, overhead_s=1.0))
    assert rest.runs == total.runs - len(first.repeats)
    assert rest.parts[0].runs == 0 and rest.parts[0].core_hours == pytest.approx(0.0)
    assert rest.core_hours == pytest.approx(total.core_hours - total.parts[0].core_hours)
    store_all([s for p in plan(study, store) for s in p.repeats])
    done = made(study, table, store, overhead_s=1.0)
    assert done.complete and left(total, done).runs == 0 and left(total, done).core_hours == 0.0
    args = ["plan", "runtime", "--profile", "paper", "--results", str(tmp_path), "--left"]
    assert study_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "left to make" in out and "runtime                  0" in out


def test_a_batch_larger_than_the_training_set_is_costed_as_the_whole_set():
    """Untuned batch 3200 on UCI Energy's 588 training rows takes full-batch steps."""
    table = CostTable({"uci-energy|adam|50": 1e-3, "uci-energy|adam|588": 2e-3})
    big = ExperimentSpec("uci-energy", "adam", profile="paper", batch_size=3200, steps=10)
    full = big.replace(batch_size=588)
    e_big, e_full = (
        estimate(Study("c", "paper", "c", (Arm("a", "A", s, seeds=(0,)),)), table, overhead_s=0)
        for s in (big, full)
    )
    assert e_big.core_hours == pytest.approx(e_full.core_hours) == pytest.approx(10 * 2e-3 / 3600)


def test_plan_left_costs_a_chosen_configuration_exactly(tmp_path):
    from adamqlr.studies import grid
    from adamqlr.studies.costs import run_steps

    # two batch sizes whose steps cost 100x apart: the mean of the two is far from either
    per = {8: 1.0, 32: 0.01}
    table = CostTable({f"uci-energy|adam|{b}": c for b, c in per.items()})
    base = ExperimentSpec("uci-energy", "adam", profile="smoke")
    arm = Arm("tuned", "Adam", base, seeds=(0, 1, 2), grid=grid({"batch_size": (8, 32)}))
    study = Study("sized", "smoke", "sized", (arm,))
    store = ResultStore(tmp_path)
    total = estimate(study, table)
    for spec in plan(study, store)[0].trials:  # batch 8 wins
        _fake(store, spec, 0.5 if spec.settings().batch_size == 8 else 1.0)
    chosen = plan(study, store)[0]
    assert chosen.choice["batch_size"] == 8 and len(chosen.repeats) == 3
    _fake(store, chosen.repeats[0], 0.5)
    rest = left(total, made(study, table, store))
    todo = chosen.repeats[1:]
    assert rest.runs == 2 and rest.steps == pytest.approx(sum(run_steps(s) for s in todo))
    assert rest.core_hours == pytest.approx(sum(run_steps(s) * 1.0 + 1.0 for s in todo) / 3600)
    # what the estimate assumed before the choice: the mean of the two configurations
    assert total.core_hours < 2 * rest.core_hours


# ---------------------------------------------------------------------------- clean trees
def test_paper_campaign_refuses_a_dirty_tree(tmp_path, monkeypatch, capsys):
    from adamqlr.results import provenance

    monkeypatch.setattr(provenance, "git_state", lambda: {"commit": "abc", "dirty": True})
    paper = get_study("runtime", "paper")
    with pytest.raises(DirtyTreeError, match="--allow-dirty"):
        Campaign([paper], ResultStore(tmp_path), jobs=1).check_tree()
    assert Campaign([paper], ResultStore(tmp_path), jobs=1, allow_dirty=True).check_tree()
    assert Campaign([get_study("runtime", "smoke")], ResultStore(tmp_path), jobs=1).check_tree()
    code = study_cli.main(["run", "runtime", "--profile", "paper", "--jobs", "1",
                           "--results", str(tmp_path)])  # fmt: skip
    assert code == 2 and "uncommitted" in capsys.readouterr().err


def test_a_damaged_record_stops_a_campaign_with_a_clear_message(tmp_path, capsys):
    """A record whose manifest names a missing file is never overwritten or removed for the
    user; the campaign says which folder and what to do, not a traceback."""
    study = get_study("untuned-vs-tuned", "smoke")
    store = ResultStore(tmp_path)
    trial = next(t for p in plan(study, store) for t in p.trials)
    _fake(store, trial, 0.5)
    folder = store.record_dir(trial)
    next(folder.glob("metrics-*")).unlink()
    code = study_cli.main(["run", "untuned-vs-tuned", "--profile", "smoke", "--jobs", "1",
                           "--results", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and folder.name in err and "move its folder aside" in err
    assert "Traceback" not in err and (folder / "manifest.json").exists()


def test_campaign_order_interleaves_arms_seed_major(tmp_path):
    study = get_study("runtime", "smoke")
    order = campaign_order([study], ResultStore(tmp_path))
    assert len(order) == len(study.arms)  # one seed each: one run per arm, in arm order
    quick = get_study("runtime", "quick")
    order = campaign_order([quick], ResultStore(tmp_path))
    seeds = [s.seed for s in order]
    n = len(quick.arms)
    assert seeds == [0] * n + [1] * n + [2] * n


# ------------------------------------------------------------------- kill, resume, nothing lost
def _manifests(root: Path) -> dict[str, str]:
    return {
        str(p.parent.relative_to(root)): p.read_text() for p in root.glob("*/*/*/manifest.json")
    }


def _ledger_rows(root: Path) -> list[dict]:
    return [
        json.loads(line)
        for p in sorted(root.glob("tuning/*/*/trials-*.jsonl.gz"))
        for line in gzip.decompress(p.read_bytes()).splitlines()
    ]


def test_campaign_with_two_jobs_survives_sigkill_and_resumes(tmp_path):
    """A smoke campaign on 2 workers, killed mid-way (SIGKILL to its process group), resumed."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "adamqlr.studies", "run", "untuned-vs-tuned", "--profile",
           "smoke", "--jobs", "2", "--results", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 240
    while len(_manifests(tmp_path)) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _manifests(tmp_path)
    study = get_study("untuned-vs-tuned", "smoke")
    assert 4 <= len(before), proc.stdout.read().decode()[-2000:]
    todo, blocked = missing(study, ResultStore(tmp_path))
    assert todo or blocked  # killed mid-way
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    after = _manifests(tmp_path)
    folded = _ledger_rows(tmp_path)
    assert folded, "the finished trials are folded into the ledgers"
    for folder, text in before.items():  # nothing lost (kept, or folded unchanged), nothing rerun
        digest = hashlib.sha256(json.dumps(json.loads(text), sort_keys=True).encode()).hexdigest()
        assert after.get(folder) == text or digest in {r["record_sha256"] for r in folded}
    made = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert len(made) == len(after) + len(folded) - len(before)
    assert missing(study, ResultStore(tmp_path)) == ([], [])
    prov = ResultStore(tmp_path).records()[0].provenance
    assert prov["campaign"]["jobs"] == 2 and 1 <= prov["concurrent_workers"] <= 2
    assert len(prov["load_average"]) == 3
    assert json.dumps(prov["campaign"])  # JSON-able
    tables = sorted((tmp_path / "tuning").glob("*/*/*/protocol.json"))
    searches = [a for a in study.arms if a.search is not None]
    assert len(tables) == len(searches)
    for path in tables:
        protocol = json.loads(path.read_text())
        assert protocol["complete"] and protocol["regime"] == "fixed-epochs"
        rows = (path.parent / "trials.csv").read_text().splitlines()
        assert len(rows) == 1 + protocol["n_trials"] and rows[0].startswith("trial,rung")


def test_the_store_sweep_leaves_tuning_tables_alone(tmp_path):
    table = tmp_path / "tuning" / "uci-energy" / "adam" / "fixed-epochs-quick-0123abcd"
    table.mkdir(parents=True)
    (table / "trials.csv").write_text("trial\n")
    ResultStore(tmp_path)  # opening a store sweeps it
    assert (table / "trials.csv").read_text() == "trial\n"


def test_a_forced_campaign_makes_every_run_again_once(tmp_path):
    """``--force`` with workers remakes the runs that have records (it used to be ignored)."""
    study = get_study("runtime", "smoke")
    store = ResultStore(tmp_path)
    first = Campaign([study], store, jobs=1, stream=None).run()
    n = len(campaign_order([study], store, include_complete=True))
    assert len(first.made) == n and first.complete
    again = Campaign([study], ResultStore(tmp_path), jobs=1, stream=None).run()
    assert again.made == []  # without force nothing is rerun
    before = {r.key: r.provenance["campaign"]["id"] for r in ResultStore(tmp_path).records()}
    code = study_cli.main(["run", "runtime", "--profile", "smoke", "--jobs", "1", "--force",
                           "--no-progress", "--results", str(tmp_path)])  # fmt: skip
    assert code == 0
    after = {r.key: r.provenance["campaign"]["id"] for r in ResultStore(tmp_path).records()}
    assert after.keys() == before.keys() and len(after) == n
    assert len(set(after.values())) == 1 and set(after.values()).isdisjoint(before.values())
