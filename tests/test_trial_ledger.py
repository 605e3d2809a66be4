"""Tuning-trial ledgers: folding full records into rows changes no choice and loses nothing."""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import adamqlr
from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.results.store import CorruptRecordError, ResultStore, StaleRecordError
from adamqlr.studies import Arm, Search, Study
from adamqlr.studies.core import apply_variation, final_value, missing, plan, search_state
from adamqlr.studies.tables import fold_trials
from adamqlr.tune.spaces import search_space

SRC = Path(__file__).resolve().parents[1] / "src"


def _spec(seed: int = 3, **kw) -> ExperimentSpec:
    return ExperimentSpec("uci-energy", "adam", profile="smoke", seed=seed, **kw)


def _save(store: ResultStore, spec: ExperimentSpec, last: float, stop: str = "epochs") -> None:
    frame = pd.DataFrame(
        {
            "step": [0, 1, 2, 3],
            "time": [0.0, 0.5, 1.0, 1.5],
            "train_loss": [2.0, 1.5, 1.2, 1.1],
            "val_loss": [1.0, 0.9, last, math.nan],  # the last row has no evaluation
        }
    )
    prov = {"stop_reason": stop, "steps": 3, "argv": ["x"] * 50, "git": {"commit": "abc"}}
    store.save(spec, frame, prov)


def test_a_folded_trial_reads_back_with_the_same_final_values(tmp_path):
    store = ResultStore(tmp_path)
    spec = _spec()
    _save(store, spec, 0.25)
    full = store.load(spec)
    removed = store.summarise([spec])
    assert removed == [store.record_dir(spec)] and not removed[0].exists()
    assert store.status(spec) == "complete"
    summary = store.load(spec)
    assert summary.manifest["form"] == "summary" and summary.provenance["summary"]
    assert summary.key == full.key and summary.spec == spec
    for metric in ("val_loss", "train_loss"):
        assert final_value(summary, metric) == final_value(full, metric)
    assert final_value(summary, "val_loss") == 0.25  # the last value that exists, not the NaN
    assert summary.metrics["step"].iloc[-1] == 3
    assert summary.provenance["git"] == {"commit": "abc"} and "argv" not in summary.provenance
    assert summary.provenance["stop_reason"] == "epochs" == full.provenance["stop_reason"]
    assert summary.settings == full.settings
    assert summary.manifest["record_sha256"] == full.fingerprint
    assert store.summarise([spec]) == []  # repeating is harmless


def test_a_diverged_trial_stays_diverged(tmp_path):
    store = ResultStore(tmp_path)
    spec = _spec()
    _save(store, spec, math.inf, stop="nonfinite_loss")
    store.summarise([spec])
    assert final_value(store.load(spec), "val_loss") == math.inf


def _edited_row(data: bytes) -> bytes:
    text = gzip.decompress(data).decode()
    return gzip.compress(text.replace('"val_loss": 0.25', '"val_loss": 0.2').encode())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_edited_row, "SHA-256"),  # an edited row
        (lambda data: data[:-8], "trials-smoke.jsonl.gz"),  # a truncated file: named
    ],
    ids=["edited-row", "not-gzip"],
)
def test_a_damaged_ledger_is_corrupt(tmp_path, damage, message):
    store = ResultStore(tmp_path)
    spec = _spec()
    _save(store, spec, 0.25)
    store.summarise([spec])
    path = store.ledger("uci-energy", "adam", "smoke").path
    path.write_bytes(damage(path.read_bytes()))
    fresh = ResultStore(tmp_path)
    assert fresh.status(spec) == "corrupt"
    with pytest.raises(CorruptRecordError, match=message):
        fresh.load(spec)


def test_a_ledger_is_gzip_whose_bytes_depend_only_on_its_rows(tmp_path):
    paths = []
    for root in (tmp_path / "a", tmp_path / "b"):
        store = ResultStore(root)
        for seed in (1, 2):
            _save(store, _spec(seed), 0.25)
        store.summarise([_spec(1), _spec(2)])
        paths.append(store.ledger("uci-energy", "adam", "smoke").path)
        time.sleep(1.1)  # a gzip header with a time stamp would differ
    assert paths[0].name == "trials-smoke.jsonl.gz"
    text = gzip.decompress(paths[0].read_bytes()).decode()
    assert len(text.splitlines()) == 2 and len(paths[0].read_bytes()) < len(text)
    lines = [json.loads(line) for line in text.splitlines()]
    assert [r["seed"] for r in lines] == [1, 2]
    rows = [ResultStore(p.parents[3]).ledger("uci-energy", "adam", "smoke").rows() for p in paths]
    assert rows[0].keys() == rows[1].keys()
    # the rows differ only in when they were written; the same rows give the same bytes
    for p in paths:
        ResultStore(p.parents[3]).ledger("uci-energy", "adam", "smoke")._write(rows[0])
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_a_plain_text_ledger_is_read_merged_and_compressed(tmp_path):
    """A ledger written before compression still counts; the next write folds it in."""
    store = ResultStore(tmp_path)
    for seed in (1, 2, 3):
        _save(store, _spec(seed), 0.1 * seed)
    store.summarise([_spec(1), _spec(2)])
    ledger = store.ledger("uci-energy", "adam", "smoke")
    rows = ledger.rows()
    plain = ledger.path.with_suffix("")
    assert plain.name == "trials-smoke.jsonl" and not plain.exists()
    # as an older version wrote it: all rows in plain text, nothing compressed
    plain.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows.values()))
    ledger.path.unlink()
    fresh = ResultStore(tmp_path)
    assert fresh.status(_spec(1)) == "complete"
    assert final_value(fresh.load(_spec(2)), "val_loss") == pytest.approx(0.2)
    assert [p.name for p in fresh.compress_ledgers()] == ["trials-smoke.jsonl.gz"]
    assert not plain.exists() and fresh.ledger("uci-energy", "adam", "smoke").rows() == rows
    assert fresh.compress_ledgers() == []  # nothing left to compress
    # both at once (an older writer beside a newer one): the plain file's rows are merged in
    row = next(iter(rows.values()))
    plain.write_text(json.dumps(row, sort_keys=True) + "\n")
    fresh.ledger("uci-energy", "adam", "smoke").remove(row["key"])
    assert not plain.exists()
    assert list(ResultStore(tmp_path).ledger("uci-energy", "adam", "smoke").rows()) == [
        k for k in rows if k != row["key"]
    ]
    store3 = ResultStore(tmp_path)
    plain.write_text(json.dumps(row, sort_keys=True) + "\n")
    store3.summarise([_spec(3)])
    assert not plain.exists()
    assert set(store3.ledger("uci-energy", "adam", "smoke").rows()) == set(rows) | {_spec(3).key}


def test_one_module_names_a_ledgers_files(tmp_path):
    from adamqlr.results.ledger import ledger_files, ledger_path, ledger_profile, legacy_ledgers

    path = ledger_path(tmp_path, "uci-energy", "adam", "paper")
    assert ledger_files(path) == (path, path.with_name("trials-paper.jsonl"))
    assert ledger_files(path.with_name("trials-paper.jsonl")) == (
        path.with_name("trials-paper.jsonl"),
    )
    assert [ledger_profile(p) for p in ledger_files(path)] == ["paper", "paper"]
    for name in ("trials-.jsonl.gz", "trials-.jsonl", "manifest.json", "trials-paper.json"):
        assert ledger_profile(tmp_path / name) is None
    # a plain-text ledger names its (task, optimiser, profile); a compressed one is not legacy
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert legacy_ledgers(tmp_path) == []
    ledger_files(ledger_path(tmp_path, "uci-protein", "kfac", "quick"))[1].parent.mkdir(
        parents=True
    )
    ledger_files(ledger_path(tmp_path, "uci-protein", "kfac", "quick"))[1].write_text("")
    assert legacy_ledgers(tmp_path) == [("uci-protein", "kfac", "quick")]


def test_a_ledger_row_of_another_algorithm_version_is_stale(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    spec = _spec()
    _save(store, spec, 0.25)
    store.summarise([spec])
    monkeypatch.setattr(adamqlr.version, "ALGORITHM_VERSION", adamqlr.ALGORITHM_VERSION + 1)
    assert store.status(spec) == "stale"
    with pytest.raises(StaleRecordError, match="allow_stale"):
        store.load(spec)
    assert store.load(spec, allow_stale=True).stale


def test_a_record_rewritten_while_folding_is_kept(tmp_path, monkeypatch):
    """A forced rerun that lands between reading and deleting wins: its folder stays."""
    store = ResultStore(tmp_path)
    spec = _spec()
    _save(store, spec, 0.25)
    ledger = store.ledger("uci-energy", "adam", "smoke")
    extend = ledger.extend

    def extend_then_rewrite(rows):
        n = extend(rows)
        _save(store, spec, 0.5)  # the concurrent rewrite
        return n

    monkeypatch.setattr(ledger, "extend", extend_then_rewrite)
    assert store.summarise([spec]) == []
    assert final_value(store.load(spec), "val_loss") == 0.5  # the folder wins over the ledger


def test_delete_removes_the_ledger_row(tmp_path):
    store = ResultStore(tmp_path)
    spec, other = _spec(3), _spec(4)
    _save(store, spec, 0.25)
    _save(store, other, 0.5)
    store.summarise([spec, other])
    assert store.delete(spec) and store.status(spec) == "missing"
    assert store.status(other) == "complete" and not store.delete(spec)


def test_folding_changes_no_search_decision_and_keeps_repeats(tmp_path):
    arm = Arm(
        "a", "Adam", ExperimentSpec("uci-energy", "adam", profile="smoke"), seeds=(0, 1),
        search=Search(search_space("adam", "uci-energy"), 16, stream="test"),
    )  # fmt: skip
    study = Study("s", "smoke", "t", (arm,), chapter="x")
    store = ResultStore(tmp_path)
    for _ in range(3):  # three rungs: score every pending trial, configuration n scores ~1/(n+1)
        state = search_state(study, arm, store)
        for n, r, spec in state.trials:
            if store.status(spec) == "missing":
                _save(store, spec, math.inf if n == 5 else 1 / (n + 1) + r)
    (before,) = plan(study, store)
    assert before.choice is not None
    for spec in before.repeats:
        _save(store, spec, 0.1)
    removed = fold_trials([study], store)
    assert len(removed) == len(before.trials)
    (after,) = plan(study, store)
    assert after.choice == before.choice and after.repeats == before.repeats
    assert after.objectives == before.objectives
    assert missing(study, store) == ([], [])
    for spec in before.repeats:  # repeats keep their full curves
        assert store.record_dir(spec).exists() and len(store.load(spec).metrics) == 4
    rows = store.ledger("uci-energy", "adam", "smoke").rows()
    assert set(rows) == {s.key for s in before.trials}
    line = max(len(json.dumps(r)) for r in rows.values())
    assert line < 1500, line  # a row is a small fraction of a full record


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(x) for x in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_campaign_and_its_workers(tmp_path, signum):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "adamqlr.studies", "run", "untuned-vs-tuned", "--profile",
           "smoke", "--jobs", "1", "--results", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    workers: set[int] = set()
    while time.time() < deadline and proc.poll() is None:
        workers = _children(proc.pid) - {proc.pid}
        if workers and list(tmp_path.glob("*/*/*/manifest.json")):
            break
        time.sleep(0.2)
    assert workers and proc.poll() is None, proc.stdout.read().decode()[-2000:]
    os.kill(proc.pid, signum)  # the parent only, as `kill PID` or a supervisor does
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the campaign did not stop within 30 s of the signal")
    assert rc == 128 + signum, proc.stdout.read().decode()[-2000:]
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)], "a worker outlived its campaign"
    assert "run again to resume" in proc.stdout.read().decode()


def test_rosenbrock_trials_start_at_random_points_and_the_choice_at_1_minus_1():
    """As in the authors' code: tuning trials from N(0, 1) starts, the chosen run from (1, -1)."""
    from adamqlr.studies import get_study
    from adamqlr.tasks import get_task

    study = get_study("rosenbrock", "quick")
    arm = next(a for a in study.arms if a.search is not None)
    trials = [arm.trial_spec(k) for k in range(3)]
    assert {t.task for t in trials} == {"rosenbrock-random-start"}
    starts = {
        tuple(float(p.detach()) for p in get_task(t.task).make_model(t.seed, "quick").parameters())
        for t in trials
    }
    assert len(starts) == 3 and (1.0, -1.0) not in starts
    (repeat,) = arm.repeats_of(arm.trial_spec(0).replace(task="rosenbrock"))
    model = get_task(repeat.task).make_model(repeat.seed, "quick")
    assert tuple(float(p) for p in model.parameters()) == (1.0, -1.0)


def test_paper_trials_evaluate_only_where_the_search_looks(tmp_path):
    """A paper-scale trial is evaluated at its start, first and last step; repeats at 100 points."""
    from adamqlr.experiment.runner import run
    from adamqlr.studies import get_study

    arm = get_study("untuned-vs-tuned", "paper").arm("uci-energy/adam")
    study = get_study("untuned-vs-tuned", "paper")
    trial = study.spec(arm.trial_spec(3, arm.search.rungs[0][1]))
    repeat = study.spec(arm.repeats_of(apply_variation(arm.base, arm.search.configuration(3)))[0])
    assert trial.eval_points == 2 and repeat.eval_points == 100
    (p,) = [p for p in plan(study, ResultStore(tmp_path)) if p.arm.id == arm.id]
    assert p.trials[3] == trial
    small = trial.replace(profile="smoke", epochs=20.0)
    record = run(small, store=ResultStore(tmp_path), progress=False)
    evaluated = record.metrics["val_loss"].notna().sum()
    assert evaluated == 3, record.metrics
    with pytest.raises(ValueError, match="eval_points=1"):
        Search(search_space("adam", "uci-energy"), 4, eval_points=1)


@pytest.fixture
def read_log():
    from adamqlr.results import reads

    reads.start()
    yield reads
    reads.stop()


def test_the_read_log_names_what_a_reader_consulted(tmp_path, read_log):
    """Records read, trials read from their ledger, records looked for and missing, scans."""
    store = ResultStore(tmp_path)
    present, folded, absent = _spec(seed=1), _spec(seed=2), _spec(seed=3)
    _save(store, present, 0.5)
    _save(store, folded, 0.25)
    store.summarise([folded])
    read_log.stop()
    read_log.start()
    assert store.status(present) == "complete" and store.status(folded) == "complete"
    assert store.status(absent) == "missing"
    store.load(present)
    store.load(folded)
    with pytest.raises(Exception, match="no run record"):
        store.load(absent)
    list(store.manifests(task="uci-energy"))
    log = read_log.logged()
    ledger = str(store.ledger("uci-energy", "adam", "smoke").path)
    manifest = {s.seed: str(store.record_dir(s) / "manifest.json") for s in (present, absent)}
    assert log["files"] == sorted({manifest[1], manifest[3]})
    assert str(store.record_dir(folded) / "manifest.json") not in log["files"]  # its ledger row
    # the ledger's rows of the trials looked up, read or missing, not the whole ledger
    keys = {s.seed: s.settings().key for s in (folded, absent)}
    assert log["rows"] == sorted(f"{ledger}#{keys[seed]}" for seed in (2, 3))
    assert log["scans"] == [str(tmp_path / "uci-energy/*/*-seed*/manifest.json")]


def test_the_read_log_is_off_unless_asked_for():
    from adamqlr.book import fingerprint
    from adamqlr.book.runner import READS_ENV
    from adamqlr.results import reads

    assert READS_ENV == reads.ENV  # the runner names the variable without importing the store
    assert fingerprint.ROW_SEPARATOR == reads.ROW_SEPARATOR  # and the rows' separator
    code = "from adamqlr.results import reads; print(reads.active())"
    env = {k: v for k, v in os.environ.items() if k != reads.ENV} | {"PYTHONPATH": str(SRC)}
    for value, expected in ((None, "False"), ("1", "True"), ("0", "False")):
        run_env = env if value is None else env | {reads.ENV: value}
        out = subprocess.run(
            [sys.executable, "-c", code], env=run_env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == expected
