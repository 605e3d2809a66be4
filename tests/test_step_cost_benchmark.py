"""The step-cost benchmark saves medians over runs with provenance, and the package reads them."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adamqlr.studies.benchmarks import load_step_cost

ROOT = Path(__file__).resolve().parents[1]


def test_saved_benchmark_holds_medians_of_its_runs(tmp_path):
    out = tmp_path / "benchmarks" / "step_cost-cpu.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "benchmarks" / "step_cost.py")
    cmd = [sys.executable, script, "--cases", "energy-588", "--repeats", "3", "--warmup", "1",
           "--burst", "2", "--runs", "2", "--save", str(out), "--json"]  # fmt: skip
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
    adam_ms = [r["energy-588"]["adam"]["ms"] for r in saved["runs"]]
    adam_row = bench.table.set_index(["case", "variant"]).loc[("energy-588", "adam")]
    assert adam_row["ms"] == pytest.approx(statistics.median(adam_ms))
    assert saved["provenance"]["burst"] == 2
    assert "medians of 2 runs" in bench.text() and "(2 steps in a row per turn)" in bench.text()
    with pytest.raises(KeyError, match="'resnet18'"):
        bench.ratio("resnet18", "adam")


def test_a_missing_or_foreign_benchmark_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--save"):
        load_step_cost(tmp_path)
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a saved step-cost benchmark"):
        load_step_cost(path=bad)


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("step_cost", ROOT / "benchmarks" / "step_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("step_cost", module)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules["step_cost"])
    return sys.modules["step_cost"]


class _Counting:
    """A variant that records the batch of every call and every reset."""

    def __init__(self, log: list[tuple[str, int]], name: str) -> None:
        self.log, self.name = log, name

    def reset(self) -> None:
        self.log.append((self.name, -1))

    def __call__(self, x, y) -> None:
        self.log.append((self.name, int(x)))


@pytest.mark.parametrize("burst", [1, 3])
def test_a_round_runs_each_variant_burst_times_in_a_row(burst):
    bench = _benchmark_module()
    batches = [(torch.tensor(i), torch.tensor(i)) for i in range(4)]
    case = bench.Case("toy", torch.nn.Linear(1, 1), None, "toy", batches)
    log: list[tuple[str, int]] = []
    fns = {"a": _Counting(log, "a"), "b": _Counting(log, "b")}
    times = bench.time_variants(case, fns, torch.device("cpu"), warmup=1, repeats=5,
                                reset_every=6, burst=burst)  # fmt: skip
    assert {k: len(v) for k, v in times.items()} == {"a": 5, "b": 5}  # one time per round
    # Resets come every 6 calls (every 6 // burst rounds), each with one untimed step on the
    # round's first batch; drop them to see the timed calls.
    every = max(1, 6 // burst)
    reset_rounds = [r for r in range(1, 6) if r % every == 0]
    calls, expected_resets = [], []
    i = 0
    while i < len(log):
        name, b = log[i]
        if b < 0:
            expected_resets.append((name, log[i + 1]))
            i += 2
            continue
        calls.append((name, b))
        i += 1
    assert [(n, c) for n, c in expected_resets] == [
        (n, (n, (r * burst) % 4)) for r in reset_rounds for n in ("a", "b")
    ]
    expected = []  # rotating order; each variant's whole burst, on successive batches
    for r in range(6):
        for name in ["a", "b"] if r % 2 == 0 else ["b", "a"]:
            expected += [(name, (r * burst + k) % 4) for k in range(burst)]
    assert calls == expected


def test_a_burst_below_one_is_refused():
    bench = _benchmark_module()
    case = bench.Case("toy", torch.nn.Linear(1, 1), None, "toy", [(torch.zeros(1),) * 2])
    with pytest.raises(ValueError, match="invalid burst 0"):
        bench.time_variants(case, {}, torch.device("cpu"), 0, 1, burst=0)


def test_the_fisher_floor_takes_the_cheaper_gradient_pass():
    bench = _benchmark_module()
    medians = {"fb": 3.0, "forward": 1.0, "jvp:func": 2.0, "jvp:layerwise-tangent": 0.5,
               "fb+hvp:graph": 7.0, "g+hvp:func": 9.0}  # fmt: skip
    assert bench.floors(medians)["adamqlr-fisher"] == (4.5, "fb + jvp:layerwise-tangent + forward")
    with_tape = medians | {"fb:layerwise": 2.0}
    fisher = bench.floors(with_tape)["adamqlr-fisher"]
    assert fisher == (3.5, "fb:layerwise + jvp:layerwise-tangent + forward")
    assert bench.floors(medians | {"fb:layerwise": 4.0})["adamqlr-fisher"][0] == 4.5
    # the Hessian floor is untouched by it (its gradient pass needs the graph)
    assert bench.floors(with_tape)["adamqlr-hessian"] == (8.0, "fb+hvp:graph + forward")


def test_the_tape_gradient_piece_is_the_gradient():
    bench = _benchmark_module()
    for name in ("energy-588", "mlp-50"):
        case = bench.make_case(name, torch.device("cpu"), batch=16)
        fns = bench.variants(case, linearize_ok=False)
        model = fns["fb"].__defaults__[0]  # the model fb and fb:layerwise share
        assert fns["fb:layerwise"].__defaults__[0] is model
        x, y = case.batches[0]
        fns["fb"](x, y)
        expected = [p.grad.clone() for p in model.parameters()]
        fns["fb:layerwise"](x, y)
        for p, e in zip(model.parameters(), expected, strict=True):
            assert torch.equal(p.grad, e)


def test_a_section_is_timed_in_rounds_of_its_own_beside_adam(monkeypatch):
    """A section's variants never share rounds with the main table's (their calls would slow
    the others' next calls), and their ratios are to the Adam timed beside them."""
    import argparse
    import types

    bench = _benchmark_module()
    groups: list[list[str]] = []

    def fake_time_variants(case, fns, device, warmup, repeats, reset_every=25, burst=1):
        groups.append(list(fns))
        adam_time = 1.0 if "heavy" not in fns else 2.0  # the section's own Adam is slower
        return {k: [adam_time if k == "adam" else 0.5 if k == "fb" else 3.0] for k in fns}

    monkeypatch.setattr(bench, "time_variants", fake_time_variants)
    section = types.SimpleNamespace(
        variants=lambda case: {"heavy": lambda x, y: None},
        floors=lambda case, medians: {"heavy": (medians["fb"], "fb")},
    )
    args = argparse.Namespace(batch=8, repeats=1, burst=1, warmup=0, reset_every=0, ops=False,
                              memory=False)  # fmt: skip
    _, rows, _, _ = bench.run_case("energy-588", torch.device("cpu"), args, [section])
    main, own = groups
    assert "heavy" not in main and {"adam", "adamqlr-fisher", "adamqlr-hessian"} <= set(main)
    assert own == ["adam", "fb", "heavy"]
    assert rows["adam"]["ratio"] == 1.0 and rows["adamqlr-fisher"]["ratio"] == 3.0
    assert rows["heavy"]["ratio"] == 1.5  # 3.0 / its own Adam's 2.0
    assert rows["heavy"]["over_floor_update"] == 3.0 / (0.5 + 1.5)  # fb + (own adam - fb)
