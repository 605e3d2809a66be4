"""Our optimizers keep ``torch.optim``'s step protocol: hooks, their order, the profiler label."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.profiler import profile

from adamqlr import AdamQLR
from adamqlr.kfac.optimizer import KFAC


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, generator=gen), torch.randint(0, 2, (8,), generator=gen)


def _optimizers():
    return [AdamQLR(_model()), KFAC(_model())]


@pytest.mark.parametrize("which", [0, 1], ids=["AdamQLR", "KFAC"])
def test_the_step_is_labelled_for_the_profiler_only_while_it_records(which, monkeypatch):
    opt = _optimizers()[which]
    x, y = _batch()
    with profile() as prof:
        opt.step(x, y)
    label = f"Optimizer.step#{type(opt).__name__}.step"
    assert [e.name for e in prof.events() if e.name.startswith("Optimizer.step")] == [label]

    def no_label(name):
        raise AssertionError(f"a profiler record {name!r} made with no profiler running")

    monkeypatch.setattr(torch.autograd.profiler, "record_function", no_label)
    opt.step(x, y)


def test_torch_does_not_wrap_the_step_again():
    for opt in _optimizers() + _optimizers():
        step = type(opt).step
        assert step.hooked and not hasattr(step.__wrapped__, "__wrapped__")


def test_hooks_run_in_torchs_order_and_see_self_first_in_args():
    opt = AdamQLR(_model())
    calls = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global pre", a[0] is o))),
        opt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", a[0] is o))),
        opt.register_step_post_hook(lambda o, a, k: calls.append(("post", a[0] is o))),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global post", a[0] is o))),
    ]
    try:
        opt.step(*_batch())
    finally:
        for h in handles:
            h.remove()
    assert calls == [("global pre", True), ("pre", True), ("post", True), ("global post", True)]


def test_a_pre_hook_may_replace_the_arguments_or_is_refused_by_name():
    replaced, plain = AdamQLR(_model()), AdamQLR(_model())
    x, y = _batch(0)
    x2, y2 = _batch(1)
    replaced.register_step_pre_hook(lambda o, a, k: ((o, x2, y2), {}))
    assert replaced.step(x, y).loss == plain.step(x2, y2).loss
    for p, q in zip(replaced.param_groups[0]["params"], plain.param_groups[0]["params"],
                    strict=True):  # fmt: skip
        assert torch.equal(p, q)
    bad = AdamQLR(_model())
    bad.register_step_pre_hook(lambda o, a, k: "nonsense")
    with pytest.raises(RuntimeError, match="must return None or a tuple of"):
        bad.step(x, y)


def test_a_learning_rate_scheduler_sees_the_step_called():
    opt = AdamQLR(_model())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Detected call of lr_scheduler.step() before ..."
        opt.step(*_batch())
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("which", [0, 1], ids=["AdamQLR", "KFAC"])
def test_a_rejected_steps_warning_points_at_the_callers_line(which):
    opt = _optimizers()[which]
    x, y = _batch()
    with pytest.warns(RuntimeWarning) as caught:
        opt.step(torch.full_like(x, float("nan")), y)
    assert caught[0].filename == __file__, caught[0].filename


@pytest.mark.parametrize("missing", ["_GLOBAL_PRE", "_GLOBAL_POST", "_PROFILING"])
def test_without_what_it_relies_on_the_step_is_left_to_torchs_wrapper(missing, monkeypatch):
    from adamqlr import _step_hooks

    def step(self, inputs, targets):
        return None

    assert getattr(_step_hooks.hooked_step(step), "hooked", False)
    monkeypatch.setattr(_step_hooks, missing, None)
    assert _step_hooks.hooked_step(step) is step
