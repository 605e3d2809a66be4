"""The results store: atomic records, kill -9 safety, sweeping, cross-process reads, staleness."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tinytask import registered

import adamqlr
from adamqlr.experiment.runner import run
from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.results import atomic
from adamqlr.results.atomic import (
    LockTimeout,
    atomic_write_json,
    file_lock,
    is_temporary,
    sweep_temporaries,
)
from adamqlr.results.provenance import validate_provenance
from adamqlr.results.store import (
    MANIFEST,
    SCHEMA_VERSION,
    SUPPORTED_SCHEMAS,
    CorruptRecordError,
    MissingRecordError,
    ResultStore,
    StaleRecordError,
    default_root,
    load,
)

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures" / "results_store"


@pytest.fixture(autouse=True)
def tiny_tasks(monkeypatch):
    yield from registered(monkeypatch)


def spec(**kw):
    base = dict(task="tiny-regression", optimiser="adam", profile="smoke", seed=0)
    return ExperimentSpec(**(base | kw))


def table(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"step": np.arange(n), "time": np.linspace(0, 1, n), "x": rng.random(n)})


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and is_temporary(p)]


# ------------------------------------------------------------------------- atomic writes
def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert temporaries(tmp_path) == []

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic.atomic_write(target, boom)
    assert json.loads(target.read_text()) == {"a": 2}  # old content intact
    assert temporaries(tmp_path) == []
    with pytest.raises(ValueError):
        atomic_write_json(target, {"a": float("nan")})


def test_sweep_removes_only_dead_writers_temporaries(tmp_path):
    dead = tmp_path / f".x.json.{atomic._HOST}.999999999.abcd.tmp"
    alive = tmp_path / f".y.json.{atomic._HOST}.{os.getpid()}.abcd.tmp"
    foreign_old = tmp_path / ".z.json.otherhost.12.abcd.tmp"
    foreign_new = tmp_path / ".w.json.otherhost.13.abcd.tmp"
    for p in (dead, alive, foreign_old, foreign_new):
        p.write_bytes(b"x")
    old = time.time() - 3 * 86400
    os.utime(foreign_old, (old, old))
    removed = set(sweep_temporaries(tmp_path))
    assert removed == {dead, foreign_old}
    assert alive.exists() and foreign_new.exists()


def test_lock_excludes_and_times_out(tmp_path):
    path = tmp_path / "k.lock"
    with file_lock(path):
        code = (  # load the module from its file: stdlib only, no torch import
            "import importlib.util as u\n"
            f"s = u.spec_from_file_location('atomic', {atomic.__file__!r})\n"
            "m = u.module_from_spec(s); s.loader.exec_module(m)\n"
            f"try:\n    with m.file_lock({str(path)!r}, timeout=0.2): print('got')\n"
            "except m.LockTimeout: print('timeout')"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.stdout.strip() == "timeout", out.stderr
    with file_lock(path, timeout=0):
        pass


def test_exclusive_lock_fallback(tmp_path, monkeypatch):
    """Without the filelock package: an O_EXCL lock file, broken when its owner is dead."""
    monkeypatch.setitem(sys.modules, "filelock", None)  # import filelock -> ImportError
    path = tmp_path / "k.lock"
    with file_lock(path):
        assert path.read_text().split()[1] == str(os.getpid())
        with pytest.raises(LockTimeout):
            with file_lock(path, timeout=0.05):
                pass
    assert not path.exists()
    path.write_text(f"{atomic._HOST} 999999999\n")  # left by a dead process
    with file_lock(path, timeout=0.5):
        pass


# ------------------------------------------------------------------------------- records
def test_save_load_round_trip_and_layout(tmp_path):
    store = ResultStore(tmp_path)
    s = spec(seed=3)
    df = table()
    folder = store.save(s, df, {"stop_reason": "steps", "note": float("nan")})
    assert folder == store.record_dir(s)
    assert folder.relative_to(tmp_path).parts[:2] == ("tiny-regression", "adam")
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == MANIFEST and len(names) == 3
    assert names[1].startswith("metrics-") and names[2].startswith("provenance-")
    rec = store.load(s)
    pd.testing.assert_frame_equal(rec.metrics, df)
    assert rec.spec == s and rec.key == s.key and not rec.stale
    assert rec.provenance["settings"]["batch_size"] == 16
    assert rec.provenance["note"] == "nan"  # JSON has no NaN: stored as text
    assert rec.manifest["schema_version"] == SCHEMA_VERSION == 3 and rec.manifest["rows"] == 5
    assert store.status(s) == "complete" and store.status(spec(seed=4)) == "missing"


def test_missing_record_names_the_command(tmp_path):
    store = ResultStore(tmp_path)
    s = spec(seed=2, steps=7)
    with pytest.raises(MissingRecordError, match=r"adamqlr run --task tiny-regression .*--seeds 2"):
        store.load(s)
    store.save(spec(seed=1), table(), {})
    with pytest.raises(MissingRecordError, match=r"1 of 2 run records.*\n.*missing.*seed2"):
        store.load_many([spec(seed=1), s])


def test_corrupt_record_is_detected(tmp_path):
    store = ResultStore(tmp_path)
    s = spec()
    folder = store.save(s, table(), {})
    metrics = next(folder.glob("metrics-*.npz"))
    data = bytearray(metrics.read_bytes())
    data[len(data) // 2] ^= 0xFF
    metrics.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError, match="SHA-256"):
        store.load(s)
    (folder / MANIFEST).write_text("{not json")
    assert store.status(s) == "corrupt"


def test_stale_record_is_reported_not_reused(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    s = spec(steps=3)
    first = run(s, store=store, progress=False)
    monkeypatch.setattr(adamqlr.version, "ALGORITHM_VERSION", adamqlr.ALGORITHM_VERSION + 1)
    assert store.status(s) == "stale"
    with pytest.raises(StaleRecordError, match="algorithm version"):
        store.load(s)
    old = store.load(s, allow_stale=True)
    assert old.stale
    assert store.query(task="tiny-regression").empty
    assert len(store.query(task="tiny-regression", include_stale=True)) == 1
    with pytest.raises(MissingRecordError, match="stale"):
        store.load_many([s])
    again = run(s, store=store, progress=False)  # rerun, not reused
    assert again.manifest["algorithm_version"] == adamqlr.version.ALGORITHM_VERSION
    assert again.provenance["finished_at"] >= first.provenance["finished_at"]
    assert not again.stale and store.status(s) == "complete"


def test_forced_rewrite_replaces_files_and_drops_old_ones(tmp_path):
    store = ResultStore(tmp_path)
    s = spec()
    folder = store.save(s, table(seed=0), {})
    store.save(s, table(n=9, seed=1), {})
    assert len(list(folder.iterdir())) == 3
    assert len(store.load(s).metrics) == 9


def test_query_filters_and_records(tmp_path):
    store = ResultStore(tmp_path)
    for seed in range(3):
        store.save(spec(seed=seed), table(), {})
    store.save(spec(optimiser="sgd"), table(), {})
    store.save(spec(task="tiny-classification"), table(), {})
    q = store.query(task="tiny-regression", optimiser="adam")
    assert sorted(q["seed"]) == [0, 1, 2]
    assert len(store.query()) == 5
    assert sorted(store.query(seeds=[0])["optimiser"]) == ["adam", "adam", "sgd"]
    assert len(store.records(optimiser="sgd")) == 1


def test_run_skips_a_finished_run_and_records_provenance(tmp_path):
    store = ResultStore(tmp_path)
    s = spec(task="tiny-classification", optimiser="adamqlr-untuned", steps=4, device="cpu")
    rec = run(s, store=store, progress=False)
    assert validate_provenance(rec.provenance) == []
    p = rec.provenance
    assert p["stop_reason"] == "steps" and p["steps"] == 4 and p["device"] == "cpu"
    assert p["optimiser_label"] == "AdamQLR (Untuned)" and p["task_title"] == "Tiny classification"
    assert p["torch_version"] == torch.__version__ and p["algorithm_version"] == 1
    assert p["data"]["dataset"] == "synthetic tiny-classification"
    assert p["git"]["commit"] is None or len(p["git"]["commit"]) == 40
    assert p["optimisation_time_s"] <= p["duration_s"]
    assert rec.metrics["time"].iloc[-1] == pytest.approx(p["optimisation_time_s"])
    again = run(s, store=store, progress=False)
    assert again.provenance["finished_at"] == p["finished_at"]  # loaded, not rerun
    pd.testing.assert_frame_equal(again.metrics, rec.metrics)
    forced = run(s, store=store, progress=False, force=True)
    assert forced.provenance["started_at"] >= p["started_at"]
    assert validate_provenance({"key": 1}) != []


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAMQLR_RESULTS", str(tmp_path / "r"))
    assert default_root() == tmp_path / "r"
    monkeypatch.delenv("ADAMQLR_RESULTS")
    assert default_root().name == "results"


# -------------------------------------------------------------------- other processes
_READER = """
import sys, json, hashlib
sys.path.insert(0, {tests!r})
import tinytask; tinytask.register()
from adamqlr.experiment import ExperimentSpec, load
rec = load(ExperimentSpec.from_dict({spec!r}), root={root!r})
print(json.dumps({{"metrics": hashlib.sha256(rec.metrics.to_json().encode()).hexdigest(),
                  "provenance": rec.provenance, "key": rec.key}}))
"""


def test_record_written_here_loads_identically_in_another_process(tmp_path):
    s = spec(task="tiny-dropout", optimiser="adamqlr", steps=6, device="cpu")
    rec = run(s, root=tmp_path, progress=False)
    code = _READER.format(tests=str(TESTS), spec=s.as_dict(), root=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    theirs = json.loads(out.stdout)
    assert theirs["key"] == rec.key
    assert theirs["provenance"] == rec.provenance
    assert theirs["metrics"] == hashlib.sha256(rec.metrics.to_json().encode()).hexdigest()
    assert load(s, root=tmp_path).metrics.equals(rec.metrics)


_ZYGOTE = """
import os, sys
sys.path.insert(0, {tests!r})
import tinytask; tinytask.register()
import numpy as np, pandas as pd
from adamqlr.experiment import ExperimentSpec
from adamqlr.results import ResultStore
print("zygote", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "blob":
        pid = os.fork()
        if pid == 0:  # rewrites one file of 0.5-2 MB (payload + its SHA-256) until killed
            import hashlib
            from adamqlr.results.atomic import atomic_write_bytes
            rng = np.random.default_rng(int(args[1]))
            print("ready", os.getpid(), flush=True)
            while True:
                body = rng.bytes(int(rng.integers(1 << 19, 1 << 21)))
                atomic_write_bytes(os.path.join(args[0], "blob.bin"),
                                   body + hashlib.sha256(body).digest())
    elif cmd == "fork":
        pid = os.fork()
        if pid == 0:  # the writer: saves records as fast as it can until it is killed
            store = ResultStore(args[0], sweep=False)
            rng = np.random.default_rng(int(args[1]))
            print("ready", os.getpid(), flush=True)
            i = 0
            while True:
                n = int(rng.integers(100, 3000))
                df = pd.DataFrame(rng.random((n, 8)), columns=[f"c{{j}}" for j in range(8)])
                df["step"] = np.arange(n)
                spec = ExperimentSpec("tiny-regression", "adam", profile="smoke", seed=i % 12)
                store.save(spec, df, {{"stop_reason": "steps", "n": n}})
                i += 1
    elif cmd == "reap":
        os.waitpid(int(args[0]), 0)
        print("reaped", flush=True)
"""


def test_sigkilled_writers_leave_complete_records_or_none(tmp_path):
    """R1/R2: kill -9 a writer at random times; every record is whole or absent after a sweep.

    Half the repetitions hammer the primitive itself: one large file rewritten in a loop must
    always hold one complete payload.

    The writers are forked from a process that has already imported everything, so each
    repetition costs the writing time only.
    """
    rng = np.random.default_rng(1)
    seen_records = seen_blobs = 0
    zygote = subprocess.Popen(
        [sys.executable, "-c", _ZYGOTE.format(tests=str(TESTS))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert zygote.stdout.readline().strip() == "zygote"
        for rep in range(14):
            blob = rep % 2 == 1
            root = tmp_path / ("blob" if blob else f"r{rep % 3}")  # rewrite earlier records
            root.mkdir(exist_ok=True)
            zygote.stdin.write(f"{'blob' if blob else 'fork'} {root} {rep}\n")
            zygote.stdin.flush()
            word, pid = zygote.stdout.readline().split()
            assert word == "ready"
            time.sleep(float(rng.uniform(0.0, 0.5)))
            os.kill(int(pid), signal.SIGKILL)
            zygote.stdin.write(f"reap {pid}\n")
            zygote.stdin.flush()
            assert zygote.stdout.readline().strip() == "reaped"
            store = ResultStore(root)  # sweeps on opening
            assert temporaries(root) == [], rep
            if blob:  # the file holds one complete payload (or was never written)
                path = root / "blob.bin"
                if path.exists():
                    data = path.read_bytes()
                    assert hashlib.sha256(data[:-32]).digest() == data[-32:], rep
                    seen_blobs += 1
                continue
            for seed in range(12):
                s = spec(seed=seed)
                folder = store.record_dir(s)
                if store.status(s) == "missing":
                    assert not folder.exists() or not any(folder.iterdir()), rep
                    continue
                rec = store.load(s)  # verifies every hash
                assert len(rec.metrics) == rec.provenance["n"]
                assert len(list(folder.iterdir())) == 3  # no stray data files
                seen_records += 1
    finally:
        zygote.kill()
        zygote.wait(timeout=60)
    assert seen_records > 0 and seen_blobs > 0


def test_sweep_leaves_a_locked_experiment_alone(tmp_path):
    store = ResultStore(tmp_path)
    s = spec()
    folder = store.record_dir(s)
    folder.mkdir(parents=True)
    (folder / "metrics-0123.parquet").write_bytes(b"half a record")
    with store.lock(s.key):
        ResultStore(tmp_path)
        assert (folder / "metrics-0123.parquet").exists()  # a live writer may be working on it
    ResultStore(tmp_path)
    assert not folder.exists()


def test_sweep_spares_a_record_finished_between_its_listing_and_its_lock(tmp_path, monkeypatch):
    """A sweep lists a folder, then takes its lock. A writer that finished in between (the
    sweeping process was descheduled) left a whole record: the sweep must not act on the listing
    it made before the lock (it did once, deleting the data file of a record a campaign had
    just written, whose manifest then named a missing file)."""
    from adamqlr.results import store as store_mod

    store = ResultStore(tmp_path)
    s = spec()
    run(s, root=tmp_path, progress=False)
    folder = store.record_dir(s)
    names = sorted(p.name for p in folder.iterdir())
    # mid-write, as the sweep lists it: the metrics file only
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in names:
        if not name.startswith("metrics-"):
            (folder / name).rename(aside / name)
    real_lock = store_mod.file_lock

    @contextlib.contextmanager
    def writer_finishes_first(path, timeout=-1):
        for name in list(os.listdir(aside)):  # the writer completes its record, then lets go
            (aside / name).rename(folder / name)
        with real_lock(path, timeout=timeout):
            yield

    monkeypatch.setattr(store_mod, "file_lock", writer_finishes_first)
    ResultStore(tmp_path)  # sweeps
    monkeypatch.setattr(store_mod, "file_lock", real_lock)
    assert sorted(p.name for p in folder.iterdir()) == names
    assert store.load(s).key == s.key


# ---------------------------------------------------------------------------- schemas
def test_checked_in_records_of_every_schema_version_load():
    """R6: records written by earlier versions of the store stay readable."""
    store = ResultStore(FIXTURES, sweep=False)
    index = store.query(include_stale=True)
    assert len(index) >= 1
    versions = set()
    for path in index["path"]:
        rec = store.load_dir(path, allow_stale=True)
        assert validate_provenance(rec.provenance) == [], path
        versions.add(rec.manifest["schema_version"])
        assert len(rec.metrics) == rec.manifest["rows"] > 0
    assert versions == set(SUPPORTED_SCHEMAS) and SCHEMA_VERSION in versions


def test_metrics_layout_packs_the_float_columns_and_reads_back_every_dtype():
    """Schema 3: the float64 columns are one matrix; other dtypes, NaN and order survive."""
    from adamqlr.results.store import _metrics_npz, _read_metrics

    frame = pd.DataFrame(
        {
            "step": np.arange(4, dtype=np.int64),
            "time": [0.0, 0.5, np.nan, 1.5],
            "accepted": [True, False, True, True],
            "half": np.array([1.0, 2.0, 3.0, np.inf], dtype=np.float32),
            "loss": [3.0, -0.0, 1e300, np.nan],
            "lr": pd.Series([np.nan, 0.1, None, 0.2], dtype=object),
        }
    )
    data = _metrics_npz(frame)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        assert z["floats"].shape == (3, 4) and z["__packed__"].tolist() == [1, 4, 5]
        assert sorted(z.files) == ["__columns__", "__packed__", "c0", "c2", "c3", "floats"]
    back = _read_metrics(data, "metrics-x.npz")
    pd.testing.assert_frame_equal(
        back, frame.assign(lr=frame["lr"].astype(float)), check_exact=True
    )
    assert np.signbit(back["loss"][1])  # -0.0 stays negative zero
    for edge in (frame.iloc[:0], frame[["step", "accepted"]], frame[["time"]]):
        pd.testing.assert_frame_equal(
            _read_metrics(_metrics_npz(edge), "m.npz"), edge.assign(
                **({"lr": edge["lr"].astype(float)} if "lr" in edge else {})
            ), check_exact=True,
        )  # fmt: skip


def _older_layouts(store: ResultStore) -> list[str]:
    """The store's record folders written in an older layout than the current one, sorted."""
    return sorted(
        str(folder)
        for folder, manifest in store.manifests()
        if manifest["schema_version"] < SCHEMA_VERSION
    )


def _copy_fixtures(tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "store"
    shutil.copytree(FIXTURES, root)
    return root


def test_upgrade_rewrites_older_layouts_losslessly_and_only_once(tmp_path, capsys):
    """Schema-1 and -2 records become schema 3: same table, provenance kept byte for byte."""
    root = _copy_fixtures(tmp_path)
    store = ResultStore(root, sweep=False)
    folders = _older_layouts(store)
    assert len(folders) == 2
    before = {f: store.load_dir(f, allow_stale=True) for f in folders}
    provenance = {f: sorted(Path(f).glob("provenance-*.json"))[0].read_bytes() for f in folders}
    assert {r.manifest["schema_version"] for r in before.values()} >= {1, 2}

    assert sorted(map(str, store.upgrade())) == sorted(folders)
    for f in folders:
        rec = store.load_dir(f, allow_stale=True)  # hashes checked
        pd.testing.assert_frame_equal(rec.metrics, before[f].metrics, check_exact=True)
        assert rec.provenance == before[f].provenance
        assert [p.read_bytes() for p in Path(f).glob("provenance-*.json")] == [provenance[f]]
        assert rec.manifest["schema_version"] == SCHEMA_VERSION
        old = before[f].manifest
        upgraded = rec.manifest["upgraded"]
        assert upgraded["from_schema"] == old["schema_version"]
        assert set(upgraded["git"]) == {"commit", "dirty"} and upgraded["package_version"]
        changed = ("files", "schema_version", "upgraded")
        assert {k: v for k, v in rec.manifest.items() if k not in changed} == {
            k: v for k, v in old.items() if k not in changed
        }
        names = sorted(p.name for p in Path(f).iterdir())  # the old metrics file is gone
        assert len(names) == 3 and [n for n in names if n.startswith("metrics-")] == [
            rec.manifest["files"]["metrics"]["name"]
        ]
        assert names[1].endswith(".npz")
    assert store.upgrade() == []  # nothing left to do

    from adamqlr.cli import main

    assert main(["study", "upgrade", "--results", str(root)]) == 0
    assert "upgraded 0 record(s)" in capsys.readouterr().out


def test_upgrade_leaves_a_corrupt_record_alone_and_upgrades_the_rest(tmp_path, caplog):
    root = _copy_fixtures(tmp_path)
    store = ResultStore(root, sweep=False)
    folders = _older_layouts(store)
    bad = Path(folders[0])
    metrics = next(p for p in bad.iterdir() if p.name.startswith("metrics-"))
    damaged = bytearray(metrics.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    metrics.write_bytes(bytes(damaged))
    files = sorted(p.name for p in bad.iterdir())
    with caplog.at_level("WARNING"):
        assert [str(p) for p in store.upgrade()] == folders[1:]
    assert "not upgrading" in caplog.text and sorted(p.name for p in bad.iterdir()) == files
    with pytest.raises(CorruptRecordError, match="SHA-256"):
        store.load_dir(bad, allow_stale=True)


def test_upgrade_interrupted_before_its_manifest_leaves_the_old_record(tmp_path, monkeypatch):
    """A crash between the new metrics file and the new manifest: the old record still loads,
    the next sweep removes the orphan file, and the next upgrade finishes the job."""
    import adamqlr.results.store as store_mod

    root = _copy_fixtures(tmp_path)
    store = ResultStore(root, sweep=False)
    folder = next(store.manifests())[0]  # the first one upgrade() takes
    before = store.load_dir(folder, allow_stale=True)
    real = store_mod.atomic_write_bytes

    def crash_on_manifest(path, data):
        if Path(path).name == MANIFEST:
            raise KeyboardInterrupt("killed")
        real(path, data)

    monkeypatch.setattr(store_mod, "atomic_write_bytes", crash_on_manifest)
    with pytest.raises(KeyboardInterrupt):
        store.upgrade()
    monkeypatch.setattr(store_mod, "atomic_write_bytes", real)
    assert len(list(folder.iterdir())) == 4  # the new metrics file, named by no manifest
    again = store.load_dir(folder, allow_stale=True)
    assert again.manifest == before.manifest
    pd.testing.assert_frame_equal(again.metrics, before.metrics, check_exact=True)
    ResultStore(root)  # opening a store sweeps
    assert len(list(folder.iterdir())) == 3
    assert folder in store.upgrade()
    pd.testing.assert_frame_equal(
        store.load_dir(folder, allow_stale=True).metrics, before.metrics, check_exact=True
    )


def test_upgrade_refuses_a_table_that_would_not_read_back(tmp_path, monkeypatch):
    """A layout that lost anything would be a bug: the record is left as it was, loudly."""
    import adamqlr.results.store as store_mod

    root = _copy_fixtures(tmp_path)
    store = ResultStore(root, sweep=False)
    listing = {f: sorted(p.name for p in Path(f).iterdir()) for f in _older_layouts(store)}
    real = store_mod._metrics_npz
    monkeypatch.setattr(store_mod, "_metrics_npz", lambda m: real(m.iloc[:, :-1]))
    with pytest.raises(ValueError, match="would not read back unchanged"):
        store.upgrade()
    assert {f: sorted(p.name for p in Path(f).iterdir()) for f in listing} == listing
    assert _older_layouts(store) == sorted(listing)


def test_obtain_loads_or_names_every_missing_run(tmp_path):
    from adamqlr.experiment import obtain

    done, missing = spec(seed=0, steps=2), spec(seed=1, steps=2)
    run(done, root=tmp_path, progress=False)
    with pytest.raises(MissingRecordError, match=r"1 of 2 .*\n  missing: .*seed1\n    adamqlr run"):
        obtain([done, missing], root=tmp_path)
    records = obtain([done, missing], root=tmp_path, compute=True, progress=False)
    assert [r.spec for r in records] == [done, missing]
    assert len(obtain([done, missing], root=tmp_path)) == 2


def test_interrupted_sweep_loses_no_finished_run_and_reruns_none(tmp_path):
    """R3 in miniature: a sweep stopped in its third run keeps runs 1-2 and resumes run 3."""
    from adamqlr.experiment import run_many

    specs = [spec(seed=s, epochs=3) for s in range(4)]

    def stop_in_third(row):
        if row["step"] == 7:
            raise KeyboardInterrupt

    first = []
    with pytest.raises(KeyboardInterrupt):
        for s in specs:
            cb = stop_in_third if s.seed == 2 else None
            first.append(run(s, root=tmp_path, progress=False, callback=cb,
                             checkpoint_every_s=0))  # fmt: skip
    assert len(first) == 2
    records = run_many(specs, root=tmp_path, progress=False)
    for old, new in zip(first, records, strict=False):  # finished runs are loaded, not rerun
        pd.testing.assert_frame_equal(new.metrics, old.metrics)  # clocks included: same run
        assert new.provenance == old.provenance
    assert records[2].provenance["resumed"] == 1 and records[2].provenance["steps"] == 15
    assert records[3].provenance["resumed"] == 0


def test_every_committed_record_holds_the_files_its_manifest_names():
    """A record whose manifest reached a commit without its data files is corrupt for every
    reader (it happened once: a page stopped on it). Checked by name and size, without reading
    the files' contents."""
    results = TESTS.parent / "results"
    broken = []
    for manifest in sorted(results.glob(f"*/*/*/{MANIFEST}")):
        files = json.loads(manifest.read_text()).get("files", {})
        for info in files.values():
            path = manifest.parent / info["name"]
            if not path.is_file() or path.stat().st_size != info["bytes"]:
                broken.append(f"{manifest.parent.relative_to(results)}: {info['name']}")
    assert not broken, "records missing a file their manifest names:\n" + "\n".join(broken)


def test_the_committed_store_stays_within_its_size_budget():
    """The book's records travel with every clone: ``results/`` is kept under 100 MB of content
    (bytes of its files; tuning trials as compressed ledgers, full curves only for repeats)."""
    results = TESTS.parent / "results"
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "results"], cwd=TESTS.parent, capture_output=True, check=False
    )
    if tracked.returncode == 0 and tracked.stdout:
        files = [TESTS.parent / f for f in tracked.stdout.decode().split("\0") if f]
    else:  # not a git checkout (an unpacked archive): every file under results/
        files = [p for p in results.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files if p.is_file())
    assert total < 100 * 2**20, f"results/ holds {total / 2**20:.1f} MiB (budget 100 MiB)"
