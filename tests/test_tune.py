"""Tuning: search spaces, the seeded random search, pruning, and the reliability goals T1-T4."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tinytask import TINY_TASKS

from adamqlr.tune import (
    Choice,
    LogUniform,
    OneMinus,
    Outcome,
    SpecObjective,
    TuneConfig,
    best_trial,
    describe_study,
    open_study,
    repeat_trials,
    run_worker,
    search_space,
)

TESTS = Path(__file__).parent
WORKER = TESTS / "_tune_worker.py"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def config(**kw) -> TuneConfig:
    base = dict(task="uci-energy", optimiser="sgd", profile="smoke", n_trials=6, n_repeats=3,
                lease_timeout_s=30.0, lease_interval_s=1.0)  # fmt: skip
    return TuneConfig(**{**base, **kw})


def lr_objective(request, report):
    return (math.log10(request.hyperparameters["lr"]) + 3.0) ** 2


def trials_by_role(study, role):
    return [t for t in study.get_trials() if t.user_attrs.get("role", "tune") == role]


# ----------------------------------------------------------------------------- spaces
def test_search_spaces_follow_the_paper():
    space = search_space("sgd-full", "fashion-mnist")
    assert space["lr"] == LogUniform(1e-6, 1e-1)
    assert space["momentum"] == OneMinus(1e-4, 0.3)
    assert space["weight_decay"] == LogUniform(1e-10, 1.0)
    assert space["batch_size"] == Choice((50, 100, 200, 400, 800, 1600, 3200))
    assert set(search_space("adamqlr", "uci-energy")) == {
        "initial_damping", "damping_decrease", "damping_increase", "batch_size"}  # fmt: skip
    assert "batch_size" not in search_space("adam", "rosenbrock")
    ptb = search_space("adam", "penn-treebank")
    assert ptb["lr"] == LogUniform(1e-4, 1e2) and ptb["batch_size"].values[0] == 5
    assert search_space("baydin-sgd", "penn-treebank")["lr"] == LogUniform(1e-6, 1.0)
    assert search_space("kfac-untuned", "svhn") == {}
    assert set(search_space("kfac-unadaptive", "svhn")) == {
        "lr", "momentum", "initial_damping", "batch_size"}  # fmt: skip
    with pytest.raises(ValueError, match="no search space"):
        search_space("nonesuch", "svhn")


def test_bad_configs_are_rejected():
    for kw, match in [({"regime": "fast"}, "regime"), ({"profile": "huge"}, "profile"),
                      ({"n_trials": -1}, "n_trials"), ({"time_cap_s": 0}, "time_cap_s"),
                      ({"optimiser": "nonesuch"}, "search space"),
                      ({"lease_interval_s": 60.0}, "lease_interval_s")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            config(**kw)


def test_profiles_and_rung_units():
    paper = TuneConfig("penn-treebank", "adam", profile="paper")
    assert (paper.trials, paper.repeats, paper.cap_s, paper.unit_s) == (200, 10, 3600.0, 1.0)
    cifar = TuneConfig("cifar-10", "adam", regime="runtime-train", profile="paper")
    assert cifar.cap_s == 3600.0 and TuneConfig("cifar-10", "adam", profile="paper").cap_s == 900
    quick = TuneConfig("fashion-mnist", "kfac", profile="quick")
    assert (quick.trials, quick.repeats, quick.cap_s) == (8, 3, 60.0)
    assert quick.unit_s == pytest.approx(60.0 / 900.0)
    assert TuneConfig("svhn", "kfac-untuned", profile="paper").trials == 0


# ------------------------------------------------------------------- protocol, in process
def test_sampler_draws_depend_only_on_seed_and_trial_number(tmp_path):
    params = []
    for name, order in (("a", None), ("b", "interleaved")):
        cfg = config(study_name=name, n_trials=5, n_repeats=0, optimiser="sgd-full")
        storage = f"journal:{tmp_path / 'j.log'}"
        if order:  # another study taking trials in between must not change the draws
            other = config(study_name="other", n_trials=3, n_repeats=0)
            run_worker(other, lr_objective, storage, max_trials=2)
        run_worker(cfg, lr_objective, storage)
        study, _ = open_study(cfg, storage)
        params.append([t.params for t in study.get_trials()])
    assert params[0] == params[1]
    assert len({json.dumps(p, sort_keys=True) for p in params[0]}) == 5
    assert all(0.7 <= 1 - p["1-momentum"] <= 1 - 1e-4 for p in params[0])


def test_repeats_use_the_best_configuration_and_fresh_seeds(tmp_path):
    cfg = config(n_trials=8, n_repeats=4)
    storage = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    summary = run_worker(cfg, lr_objective, storage)
    assert summary.status == "done"
    study, _ = open_study(cfg, storage)
    tune = trials_by_role(study, "tune")
    assert len(tune) == 8 and all(t.state == TrialState.COMPLETE for t in tune)
    assert {t.user_attrs["seed"] for t in tune} == {1_000_000 + t.number for t in tune}
    best = min(tune, key=lambda t: t.value)
    assert best_trial(study).number == best.number
    repeats = repeat_trials(study)
    assert [t.user_attrs["seed"] for t in repeats] == [0, 1, 2, 3]
    assert all(t.params == best.params for t in repeats)
    assert all(t.user_attrs["best_trial"] == best.number for t in repeats)
    again = run_worker(cfg, lr_objective, storage)  # a finished study runs nothing more
    assert again.status == "done" and again.trials == []
    with pytest.raises(ValueError, match="another protocol"):
        open_study(config(n_trials=9, n_repeats=4), storage)


def test_objective_failure_is_recorded_not_fatal(tmp_path):
    def objective(request, report):
        if request.number == 1:
            raise RuntimeError("diverged on purpose")
        if request.number == 2:
            return math.nan
        return lr_objective(request, report)

    cfg = config(n_trials=5, n_repeats=2)
    storage = f"journal:{tmp_path / 'j.log'}"
    summary = run_worker(cfg, objective, storage)
    assert summary.status == "done"
    study, _ = open_study(cfg, storage)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[1] == states[2] == TrialState.FAIL
    assert "diverged on purpose" in study.trials[1].user_attrs["error"]
    assert "nan" in study.trials[2].user_attrs["error"]
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 3 + 2  # 3 tuning, 2 repeats
    assert best_trial(study).number not in (1, 2)


def test_untuned_configuration_runs_only_repeats(tmp_path):
    cfg = config(optimiser="kfac-untuned", n_trials=7, n_repeats=3)
    seen = []

    def objective(request, report):
        seen.append((request.role, request.seed, request.hyperparameters))
        return 1.0

    summary = run_worker(cfg, objective, f"journal:{tmp_path / 'j.log'}")
    assert summary.status == "done"
    assert seen == [("repeat", 0, {}), ("repeat", 1, {}), ("repeat", 2, {})]


def test_pruner_reports_at_rungs_and_stops_the_worst(tmp_path):
    cfg = config(n_trials=12, n_repeats=3, rung_unit_s=1.0)
    ran = {}

    def objective(request, report):
        lr = request.hyperparameters["lr"]
        value = (math.log10(lr) + 3.0) ** 2
        for second in range(1, 40):
            ran[request.number] = second
            if report(value + 1.0 / second, float(second)):
                return Outcome(value + 1.0 / second, pruned=True)
        return value

    storage = f"journal:{tmp_path / 'j.log'}"
    run_worker(cfg, objective, storage)
    study, _ = open_study(cfg, storage)
    tune = trials_by_role(study, "tune")
    pruned = [t for t in tune if t.state == TrialState.PRUNED]
    complete = [t for t in tune if t.state == TrialState.COMPLETE]
    repeats = trials_by_role(study, "repeat")  # repeats are never pruned: they run to the end
    assert len(repeats) == 3 and all(t.state == TrialState.COMPLETE for t in repeats)
    assert all(ran[t.number] == 39 and not t.intermediate_values for t in repeats)
    assert pruned and complete
    for t in study.get_trials():
        assert set(t.intermediate_values) <= {1, 4, 16}  # rungs unit * 4**k
    for t in pruned:
        assert ran[t.number] in (1, 4, 16) and math.isfinite(t.user_attrs["objective"])
    # the best configuration is chosen among completed and pruned trials by their last value
    candidates = pruned + complete
    assert (
        best_trial(study).number == min(candidates, key=lambda t: t.user_attrs["objective"]).number
    )


# ------------------------------------------------------------------- processes: T1-T3
def start_worker(tmp_path, cfg, storage, name, *extra):
    log, summary = tmp_path / f"{name}.calls", tmp_path / f"{name}.json"
    cmd = [sys.executable, str(WORKER), json.dumps(asdict(cfg)), storage, str(log), str(summary),
           *extra]  # fmt: skip
    return subprocess.Popen(cmd, cwd=tmp_path), log, summary


def calls(*logs):
    return [
        json.loads(line) for log in logs if log.exists() for line in log.read_text().splitlines()
    ]


@pytest.mark.slow
def test_two_workers_finish_a_study_without_losing_or_duplicating_a_trial(tmp_path):
    cfg = config(n_trials=16, n_repeats=6)
    storage = f"journal:{tmp_path / 'study.log'}"
    workers = [start_worker(tmp_path, cfg, storage, f"w{i}", "--sleep", "0.05") for i in range(2)]
    for proc, _, _ in workers:
        assert proc.wait(timeout=90) == 0
    summaries = [json.loads(s.read_text()) for _, _, s in workers]
    assert [s["status"] for s in summaries] == ["done", "done"]
    ran = [n for s in summaries for n in s["trials"]]
    study, _ = open_study(cfg, storage)
    trials = study.get_trials()
    assert len(trials) == 16 + 6 and sorted(ran) == [t.number for t in trials]  # each ran once
    assert all(t.state == TrialState.COMPLETE for t in trials)
    logged = calls(*(log for _, log, _ in workers))
    assert sorted(c["number"] for c in logged) == list(range(22))  # no objective called twice
    assert [t.user_attrs["seed"] for t in repeat_trials(study)] == list(range(6))
    assert describe_study(study)["counts"] == {"tune": {"COMPLETE": 16}, "repeat": {"COMPLETE": 6}}


@pytest.mark.slow
def test_a_killed_worker_leaves_a_resumable_study(tmp_path):
    cfg = config(n_trials=4, n_repeats=2, lease_timeout_s=1.5, lease_interval_s=0.3)
    storage = f"journal:{tmp_path / 'study.log'}"
    marker = tmp_path / "hanging"
    proc, log_a, _ = start_worker(tmp_path, cfg, storage, "a", "--hang-on", "0", "--marker",
                                  str(marker), "--max-trials", "1")  # fmt: skip
    deadline = time.time() + 60
    while not marker.exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    study, _ = open_study(cfg, storage)
    assert study.trials[0].state == TrialState.RUNNING  # the journal has no heartbeat
    proc_b, log_b, summary_b = start_worker(tmp_path, cfg, storage, "b")
    assert proc_b.wait(timeout=90) == 0
    summary = json.loads(summary_b.read_text())
    assert summary["status"] == "done" and summary["reaped"] == [0]
    study, _ = open_study(cfg, storage)
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[0].state == TrialState.FAIL
    retries = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retries) == 1
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[0].params
    assert retry.user_attrs["seed"] == trials[0].user_attrs["seed"]
    assert retry.user_attrs["retry_reason"] == "lease_expired"
    tune_done = [t for t in trials if t.user_attrs.get("role") == "tune" and t.state.is_finished()]
    assert len([t for t in tune_done if t.state == TrialState.COMPLETE]) == 4
    assert [t.user_attrs["seed"] for t in repeat_trials(study)] == [0, 1]
    logged = calls(log_a, log_b)
    assert [c["number"] for c in logged].count(0) == 1  # trial 0 ran once, then its retry


# ------------------------------------------------------------------- end to end (real runs)
def test_quick_profile_study_runs_end_to_end_and_repeats_load(tmp_path, monkeypatch):
    from adamqlr.cli import main
    from adamqlr.tasks import TASKS

    monkeypatch.setitem(TASKS, "tiny-classification", TINY_TASKS["tiny-classification"])
    root = tmp_path / "results"
    storage = f"journal:{tmp_path / 'tune.log'}"
    args = ["tune", "--task", "tiny-classification", "--optimiser", "kfac", "--profile", "quick",
            "--trials", "3", "--repeats", "2", "--time-cap", "20", "--storage", storage,
            "--results", str(root), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    cfg = TuneConfig("tiny-classification", "kfac", profile="quick", n_trials=3, n_repeats=2,
                     time_cap_s=20.0)  # fmt: skip
    study, _ = open_study(cfg, storage)
    objective = SpecObjective(cfg, root=root, device="cpu")
    from adamqlr.experiment import ExperimentSpec
    from adamqlr.results import ResultStore

    stored = {r.key: r for r in ResultStore(root, decode_spec=ExperimentSpec.from_dict).records()}
    tune = trials_by_role(study, "tune")
    assert len(tune) == 3
    for t in tune:  # every tuning trial is a run record, capped at the study's time cap
        record = stored[t.user_attrs["record_key"]]
        assert record.spec.seconds == 20.0 and record.spec.seed == 1_000_000 + t.number
    records = objective.load_repeats(study)
    assert [r.spec.seed for r in records] == [0, 1]
    best = best_trial(study)
    for record in records:
        assert record.provenance["stop_reason"] == "epochs"  # repeats run the full epoch budget
        assert record.spec.optimiser == "kfac"
        assert dict(record.spec.hyperparameters) == {
            "initial_damping": best.params["initial_damping"]}  # fmt: skip
        assert record.spec.batch_size == best.params["batch_size"]
        assert record.spec.seconds is None
    assert main(args + ["--status"]) == 0
