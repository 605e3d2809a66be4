"""The training loop: budgets, honest clocks, non-finite stops, evaluation, and exact resumption."""

from __future__ import annotations

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
import torch
from tinytask import TINY_TASKS, TinyClassification, TinyRegression

from adamqlr.experiment import optimisers as opt_mod
from adamqlr.experiment.loop import MetricLog, evaluate, train
from adamqlr.experiment.optimisers import OptimiserEntry, TorchStepper, register_optimiser
from adamqlr.experiment.runner import run
from adamqlr.experiment.spec import ExperimentSpec
from adamqlr.losses import CrossEntropyLoss, SquaredErrorLoss
from adamqlr.results.store import ResultStore
from adamqlr.tasks import TASKS, Split

TESTS = Path(__file__).parent
CLOCKS = ["time", "eval_time", "wall"]


@pytest.fixture(autouse=True)
def tiny_tasks(monkeypatch):
    for name, where in TINY_TASKS.items():
        monkeypatch.setitem(TASKS, name, where)
    opt_mod.optimiser_names()  # load the providers into the real registry first
    monkeypatch.setattr(opt_mod, "_REGISTRY", dict(opt_mod._REGISTRY))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(**kw):
    base = dict(task="tiny-regression", optimiser="adam", profile="smoke", seed=0)
    return ExperimentSpec(**(base | kw))


def go(s: ExperimentSpec, **kw):
    return train(s.settings(), progress=False, **kw)


def without_clocks(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in CLOCKS if c in df])


# ------------------------------------------------------------------------------- budgets
def test_step_budget_and_metric_table():
    res = go(spec(steps=7, eval_every=3))
    df = res.metrics.frame()
    assert res.stop_reason == "steps" and res.steps == 7
    assert df["step"].tolist() == list(range(8))  # row 0: evaluation before training
    assert math.isnan(df["train_loss"].iloc[0]) and df["train_loss"].iloc[1:].notna().all()
    evaluated = df.loc[df["val_loss"].notna(), "step"].tolist()
    assert evaluated == [0, 3, 6, 7]  # the cadence, plus the end
    assert df["test_loss"].notna().tolist() == df["val_loss"].notna().tolist()
    assert (np.diff(df["time"]) > 0).all() and df["time"].iloc[0] == 0
    assert (np.diff(df["eval_time"]) >= 0).all()
    assert {"lr", "train_loss", "epoch"} <= set(df.columns)
    assert df["step"].dtype == np.int64


@pytest.mark.parametrize("epochs, steps", [(2, 10), (0.5, 3), (1.01, 6)])
def test_epoch_budget_counts_incomplete_batches(epochs, steps):
    # 70 rows, batch 16: 5 batches per epoch, the last one of 6 rows
    res = go(spec(epochs=epochs))
    assert res.stop_reason == "epochs" and res.steps == steps
    assert res.epochs == pytest.approx(steps / 5)


def test_batches_cover_the_epoch_without_padding():
    seen = []

    class Recorder(TinyRegression):
        def batches(self, split, batch_size, generator):
            for x, y in super().batches(split, batch_size, generator):
                seen.append(len(x))
                yield x, y

    train(spec(epochs=2).settings(), task=Recorder(), progress=False)
    assert seen == [16, 16, 16, 16, 6] * 2


class _Slow:
    """A stepper that takes at least ``delay`` seconds per step."""

    def __init__(self, inner, delay):
        self.inner, self.delay = inner, delay

    def step(self, x, y):
        time.sleep(self.delay)
        return self.inner.step(x, y)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, s):
        self.inner.load_state_dict(s)


def _register_slow(delay):
    def build(model, loss, h):
        return _Slow(
            TorchStepper(model, loss, torch.optim.SGD(model.parameters(), lr=h["lr"])), delay
        )

    register_optimiser(OptimiserEntry("slow-sgd", "Slow SGD", build, {"lr": 0.01}), replace=True)


class _SlowEval(TinyRegression):
    """Evaluation (eval mode) costs 50 ms per call of the model; training does not."""

    def make_model(self, seed, profile):
        model = super().make_model(seed, profile)

        def hook(module, args):
            if not module.training:
                time.sleep(0.05)

        model.register_forward_pre_hook(hook)
        return model


def test_seconds_budget_counts_optimisation_time_only():
    _register_slow(0.02)
    s = spec(optimiser="slow-sgd", seconds=0.2, eval_every=1)
    res = train(s.settings(), task=_SlowEval(), progress=False)
    df = res.metrics.frame()
    assert res.stop_reason == "seconds"
    assert 0.2 <= res.optimisation_time_s < 0.2 + 0.2  # stops at the first step past the limit
    assert res.steps <= 10
    assert (np.diff(df["time"]) >= 0.02).all()  # every step's own cost is counted
    # each evaluation (val + test, 50 ms each) is on the evaluation clock, not the optimisation one
    assert res.eval_time_s >= 0.1 * (res.steps + 1) * 0.95
    assert df["time"].iloc[-1] == pytest.approx(res.optimisation_time_s)
    assert res.wall_time_s >= res.optimisation_time_s + res.eval_time_s - 1e-6


# ----------------------------------------------------------------------------- stopping
def test_nonfinite_training_loss_stops_the_run():
    res = go(spec(optimiser="sgd", hyperparameters={"lr": 1e6}, steps=200, eval_every=50))
    df = res.metrics.frame()
    assert res.stop_reason == "nonfinite_train_loss"
    assert res.steps < 200
    assert not math.isfinite(df["train_loss"].iloc[-1])
    assert df["train_loss"].iloc[1:-1].map(math.isfinite).all()


def test_an_overflowing_baydin_learning_rate_ends_the_run_as_diverged():
    # unclipped hypergradient descent can push alpha past float32's range within a step or two
    hp = {"lr": 0.01, "hypergrad_lr": 1e40}
    res = go(spec(optimiser="baydin-sgd", hyperparameters=hp, steps=20, eval_every=5))
    assert res.stop_reason == "nonfinite_train_loss"
    assert res.steps < 20


def _register_poison(at_step):
    class Poison(TorchStepper):
        calls = 0

        def step(self, x, y):
            out = super().step(x, y)
            Poison.calls += 1
            if Poison.calls == at_step:
                with torch.no_grad():
                    for p in self.model.parameters():
                        p.fill_(math.inf)
            return out

    def build(model, loss, h):
        return Poison(model, loss, torch.optim.SGD(model.parameters(), lr=0.01))

    register_optimiser(OptimiserEntry("poison", "Poison", build, {}), replace=True)


def test_nonfinite_validation_loss_stops_the_run():
    _register_poison(at_step=4)
    res = go(spec(optimiser="poison", steps=50, eval_every=2))
    assert res.stop_reason == "nonfinite_val_loss"
    assert res.steps == 4  # the evaluation after step 4 sees it
    assert math.isfinite(res.metrics.frame()["train_loss"].iloc[-1])


def test_callback_can_stop_the_run():
    calls = []

    def cb(row):
        calls.append(row["step"])
        return "pruned" if row["step"] == 3 else None

    res = go(spec(steps=20), callback=cb)
    assert res.stop_reason == "callback:pruned" and res.steps == 3 and calls == [1, 2, 3]


# ----------------------------------------------------------------------------- evaluation
def test_evaluate_is_the_full_split_mean_whatever_the_chunk():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).train()
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    y[::7] = -100  # ignored positions count neither in the loss nor in the accuracy
    with torch.no_grad():
        model.eval()
        out = model(x)
        model.train()
    keep = y != -100
    ref_loss = torch.nn.functional.cross_entropy(out, y, ignore_index=-100)
    ref_acc = (out.argmax(-1)[keep] == y[keep]).float().mean()
    running = model[1].running_mean.clone()
    for chunk in (1, 7, 50, 1000):
        res = evaluate(model, Split(x, y), CrossEntropyLoss(), device=torch.device("cpu"),
                       chunk=chunk, accuracy=True)  # fmt: skip
        assert res["loss"] == pytest.approx(float(ref_loss), rel=1e-6)
        assert res["accuracy"] == pytest.approx(float(ref_acc), rel=1e-6)
    assert model.training and torch.equal(model[1].running_mean, running)  # eval mode, restored
    empty = Split(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert evaluate(model, empty, CrossEntropyLoss(), device=torch.device("cpu"), chunk=4,
                    accuracy=True) == {}  # fmt: skip


def test_training_accuracy_comes_from_the_pre_update_forward():
    res = go(spec(task="tiny-classification", optimiser="adamqlr", steps=6))
    df = res.metrics.frame()
    assert df["train_accuracy"].iloc[1:].between(0, 1).all()
    assert {"val_accuracy", "test_accuracy", "damping", "rho"} <= set(df.columns)
    # the first step's accuracy is that of the initial model on the first batch
    task = TinyClassification()
    data = task.load_data("smoke")
    model = task.make_model(0, "smoke")
    from adamqlr.experiment.loop import derived_seeds

    g = torch.Generator().manual_seed(derived_seeds(0)[0])
    xb, yb = next(iter(task.batches(data.train, 16, g)))
    with torch.no_grad():
        acc = (model(xb).argmax(-1) == yb).float().mean().item()
    assert df["train_accuracy"].iloc[1] == pytest.approx(acc)


def test_small_models_log_their_parameters():
    class Point(TinyRegression):
        def make_model(self, seed, profile):
            torch.manual_seed(seed)
            return torch.nn.Linear(4, 1)

    res = train(spec(steps=3).settings(), task=Point(), progress=False)
    df = res.metrics.frame()
    assert {"param.weight.0", "param.weight.3", "param.bias.0"} <= set(df.columns)
    assert torch.equal(
        torch.tensor(df[[f"param.weight.{i}" for i in range(4)]].iloc[-1].to_numpy()),
        res.model.weight.detach().double().reshape(-1),
    )


def test_padding_dilution_divides_the_curvature_by_the_batch_size():
    """With dilution, q is computed as if the batch had ``batch_size`` rows: alpha grows."""
    s_plain = spec(optimiser="adamqlr-untuned", steps=1)
    s_dil = spec(optimiser="adamqlr-untuned", steps=1, padding_dilution=True)
    a = go(s_plain).metrics.frame()
    b = go(s_dil).metrics.frame()
    # one full batch of 70 real rows, padded (in the official code) to 3200
    assert b["curvature"].iloc[1] == pytest.approx(a["curvature"].iloc[1] * 70 / 3200, rel=1e-5)
    assert b["train_loss"].iloc[1] == a["train_loss"].iloc[1]
    assert SquaredErrorLoss(curvature_count=3200).curvature_count == 3200


def test_metric_log_backfills_new_columns():
    log = MetricLog()
    log.append({"a": 1.0})
    log.append({"b": 2.0})
    log.update_last({"c": 3.0})
    assert log.rows == 2
    assert log.columns["a"][1] != log.columns["a"][1]  # NaN
    assert log.columns["b"][0] != log.columns["b"][0] and log.columns["c"][1] == 3.0
    back = MetricLog.from_tensors(log.to_tensors())
    assert back.frame().equals(log.frame())


def test_same_seed_same_run_other_seed_other_run():
    a = go(spec(task="tiny-dropout", optimiser="adamqlr", steps=8)).metrics.frame()
    b = go(spec(task="tiny-dropout", optimiser="adamqlr", steps=8)).metrics.frame()
    c = go(spec(task="tiny-dropout", optimiser="adamqlr", steps=8, seed=1)).metrics.frame()
    pd.testing.assert_frame_equal(without_clocks(a), without_clocks(b))
    assert not without_clocks(a).equals(without_clocks(c))


# ----------------------------------------------------------------------------- resumption
class _Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "task, optimiser, stop_at",
    [
        ("tiny-dropout", "adamqlr", 3),  # mid-epoch checkpoint (after step 2)
        ("tiny-dropout", "adamqlr", 6),  # epoch-boundary checkpoint (after step 5)
        ("tiny-classification", "sgd-full", 9),
        ("tiny-regression", "adam", 5),  # checkpoint at the end of an epoch, before rollover
    ],
)
def test_resumed_run_equals_uninterrupted_bitwise(tmp_path, task, optimiser, stop_at):
    s = spec(task=task, optimiser=optimiser, epochs=3, eval_every=2).settings()
    ckpt = tmp_path / "run.pt"
    whole = train(s, progress=False)

    def interrupt(row):
        if row["step"] == stop_at:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(s, checkpoint=ckpt, checkpoint_every_s=0, checkpoint_epoch_min_s=0,
              progress=False, callback=interrupt)  # fmt: skip
    assert ckpt.exists()
    torch.manual_seed(12345)  # the global random state must come from the checkpoint
    resumed = train(s, checkpoint=ckpt, progress=False)
    assert resumed.resumed == 1 and resumed.steps == whole.steps == 15
    pd.testing.assert_frame_equal(
        without_clocks(resumed.metrics.frame()), without_clocks(whole.metrics.frame())
    )
    for p, q in zip(resumed.model.parameters(), whole.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_checkpoints_are_weights_only_and_foreign_ones_are_ignored(tmp_path):
    s = spec(optimiser="adamqlr", epochs=2)
    ckpt = tmp_path / "c.pt"

    def stop(row):
        if row["step"] == 4:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(s.settings(), checkpoint=ckpt, checkpoint_every_s=0, progress=False, callback=stop)
    state = torch.load(ckpt, weights_only=True)
    assert state["counters"]["step"] == 3 and state["key"] == s.key
    other = spec(optimiser="adamqlr", epochs=2, seed=5).settings()
    with pytest.warns(RuntimeWarning, match="belongs to other settings"):
        res = train(other, checkpoint=ckpt, progress=False)
    assert res.resumed == 0 and res.steps == 10


_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
import tinytask; tinytask.register()
import torch; torch.set_num_threads(1)
from adamqlr.experiment import ExperimentSpec, run
spec = ExperimentSpec.from_dict({spec!r})
def cb(row):
    print(int(row["step"]), flush=True)
    time.sleep(0.01)
run(spec, root={root!r}, progress=False, checkpoint_every_s=0, checkpoint_epoch_min_s=0,
    callback=cb)
print("done", flush=True)
"""


def test_run_killed_with_sigkill_resumes_to_the_same_record(tmp_path):
    s = spec(task="tiny-dropout", optimiser="adamqlr", epochs=8, eval_every=3, device="cpu")
    reference = run(s, root=tmp_path / "ref", progress=False)
    root = tmp_path / "killed"
    code = _CHILD.format(tests=str(TESTS), spec=s.as_dict(), root=str(root))
    rng = np.random.default_rng(0)
    kill_after = int(rng.integers(5, 35))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if line.strip() == "done" or int(line) >= kill_after:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    store = ResultStore(root)
    assert store.status(s) == "missing"  # no half-written record
    assert store.checkpoint_path(s.key).exists()
    record = run(s, store=store, progress=False)
    assert record.provenance["resumed"] == 1
    assert record.provenance["steps"] == reference.provenance["steps"] == 40
    pd.testing.assert_frame_equal(without_clocks(record.metrics), without_clocks(reference.metrics))
    assert not store.checkpoint_path(s.key).exists()  # removed once the record is saved
