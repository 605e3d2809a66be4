"""The step-cost benchmark saves medians over runs with provenance, and the package reads them."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from adamqlr.studies.benchmarks import load_step_cost

ROOT = Path(__file__).resolve().parents[1]


def test_saved_benchmark_holds_medians_of_its_runs(tmp_path):
    out = tmp_path / "benchmarks" / "step_cost-cpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "benchmarks" / "step_cost.py")
    cmd = [sys.executable, script, "--cases", "energy-588", "--repeats", "3", "--warmup", "1",
           "--runs", "2", "--save", str(out), "--json"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads(out.read_text())
    assert json.loads(done.stdout) == saved["median"]
    assert saved["provenance"]["runs"] == 2 and len(saved["runs"]) == 2
    assert "commit" in saved["provenance"]["git"] and saved["provenance"]["threads"] == 1
    assert saved["provenance"]["device_name"]
    bench = load_step_cost(tmp_path)
    ratios = [r["energy-588"]["adamqlr-fisher"]["ratio"] for r in saved["runs"]]
    assert bench.ratio("energy-588", "adamqlr-fisher") == pytest.approx(statistics.median(ratios))
    row = bench.table.set_index(["case", "variant"]).loc[("energy-588", "adamqlr-hessian")]
    assert row["ratio_lo"] <= row["ratio"] <= row["ratio_hi"]
    assert row["over_floor_update"] == pytest.approx(
        statistics.median(r["energy-588"]["adamqlr-hessian"]["over_floor_update"]
                          for r in saved["runs"])
    )  # fmt: skip
    assert bench.ratio("energy-588", "adam") == 1.0
    assert "medians of 2 runs" in bench.text()
    with pytest.raises(KeyError, match="'resnet18'"):
        bench.ratio("resnet18", "adam")


def test_a_missing_or_foreign_benchmark_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--save"):
        load_step_cost(tmp_path)
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a saved step-cost benchmark"):
        load_step_cost(path=bad)
