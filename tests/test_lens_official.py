"""The authors' AdamQLR step (adamqlr.lens.official) against ours, in float64 on a tiny MLP."""

from __future__ import annotations

import math
import os
import warnings

import pandas as pd
import pytest
import torch
from torch import Tensor

from adamqlr import AdamQLR
from adamqlr.algorithm import AdamQLRState
from adamqlr.curvature import loss_at
from adamqlr.lens.official import (
    OfficialSettings,
    OfficialState,
    kfac_damping_update,
    official_step,
    run_official,
)
from adamqlr.lens.official_divergence import (
    COMPARISON_FILE,
    divergence_comparison,
    load_divergence_comparison,
    summarise_divergence,
)
from adamqlr.losses import CrossEntropyLoss, Loss
from adamqlr.tasks._common import MLP

DT = torch.float64


def _model(seed: int = 0) -> MLP:
    return MLP((4, 6, 3), torch.Generator().manual_seed(seed)).to(DT)


def _batch(seed: int, n: int = 16) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(100 + seed)
    return torch.randn(n, 4, generator=gen, dtype=DT), torch.randint(0, 3, (n,), generator=gen)


def _params(model: torch.nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _ours(model: torch.nn.Module, loss: Loss | str = "cross_entropy") -> AdamQLR:
    # the paper's untuned settings, as the experiments run them
    return AdamQLR(model, loss, damping_bounds=(1e-8, math.inf), resolve_loss=False)


def _step_ours(opt: AdamQLR, batch: tuple[Tensor, Tensor]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return opt.step(*batch)


def _close(a: float, b: float, tol: float = 1e-12) -> bool:
    return abs(a - b) <= tol * max(abs(a), abs(b), 1e-300)


class _Wall(Loss):
    """Cross-entropy, but infinite once any output exceeds ``limit`` in magnitude."""

    def __init__(self, limit: float) -> None:
        self.ce, self.limit = CrossEntropyLoss(), limit

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:
        wall = math.inf if float(outputs.detach().abs().max()) > self.limit else 0.0
        return self.ce.value(outputs, targets) + wall

    def output_quadratic(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:
        return self.ce.output_quadratic(outputs, u, targets)


class _Concave(Loss):
    """A loss with a negative output-space Hessian, so that ``d^T G d < 0``."""

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return -0.5 * (outputs * outputs).sum(-1).mean()

    def output_quadratic(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:
        return -(u * u).sum(-1).mean()


class _Flat(Loss):
    """A loss that does not depend on the outputs: zero gradient, zero curvature."""

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return 0.0 * outputs.sum() + 1.0

    def output_quadratic(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:
        return 0.0 * u.sum()


# ------------------------------------------------------------------ where ours accepts: equal
def test_official_step_equals_ours_on_accepted_steps():
    # each step starts both from our optimiser's state, so rounding does not accumulate
    loss = CrossEntropyLoss()
    settings = OfficialSettings()
    model = _model()
    opt = _ours(model, loss)
    rhos = []
    for i in range(25):
        batch = _batch(i)
        ours = AdamQLRState.of(opt)
        params = _params(model)
        state = OfficialState(
            ours.step,
            torch.tensor(ours.damping, dtype=DT),
            {n: ours.exp_avg.get(n, torch.zeros_like(p)) for n, p in params.items()},
            {n: ours.exp_avg_sq.get(n, torch.zeros_like(p)) for n, p in params.items()},
        )
        new, new_state, stats = official_step(model, params, state, batch, settings, loss)
        mine = _step_ours(opt, batch)
        assert mine.accepted, mine.reason
        after = AdamQLRState.of(opt)
        for name, p in model.named_parameters():
            assert torch.allclose(new[name], p.detach(), rtol=1e-12, atol=1e-14), (i, name)
            assert torch.allclose(new_state.mu[name], after.exp_avg[name], rtol=1e-12, atol=0)
            assert torch.allclose(new_state.nu[name], after.exp_avg_sq[name], rtol=1e-12, atol=0)
        assert _close(stats.loss, mine.loss)
        assert _close(stats.alpha, mine.lr)
        assert _close(stats.curvature, mine.curvature)
        assert _close(stats.grad_dot_dir, mine.grad_dot_dir)
        assert _close(stats.model_change, mine.predicted_change)
        assert _close(stats.trial_loss, mine.trial_loss)
        assert _close(stats.rho, mine.rho, 1e-9)  # a ratio of a loss difference: 1e-12 / |f1-f0|
        assert stats.damping == mine.damping and stats.damping_used == mine.damping_used
        assert stats.step == new_state.count == mine.step == i + 1
        rhos.append(stats.rho)
    # the run exercised both directions of the damping rule
    assert min(rhos) < 0.25 and max(rhos) > 0.75


# ------------------------------------------------------------- where ours rejects: as specified
def test_nonfinite_trial_loss_moves_the_parameters_and_raises_the_damping():
    model = _model(1)
    batch = _batch(0)
    probe = CrossEntropyLoss()
    p0 = _params(model)
    settings = OfficialSettings()
    # find where the step lands, then put an infinite wall between the start and there
    moved, _, _ = official_step(
        model, p0, OfficialState.initial(p0, settings), batch, settings, probe
    )
    before = float(model(batch[0]).detach().abs().max())
    after = float(torch.func.functional_call(model, moved, (batch[0],)).abs().max())
    assert after > before
    loss = _Wall(0.5 * (before + after))

    new, state, stats = official_step(
        model, p0, OfficialState.initial(p0, settings), batch, settings, loss
    )
    opt = _ours(model, loss)
    mine = _step_ours(opt, batch)
    assert not mine.accepted and mine.reason == "nonfinite_trial_loss"
    for name, p in model.named_parameters():  # ours: nothing moved
        assert torch.equal(p.detach(), p0[name])
    # the authors': the step is taken all the same, theta - (a / Q) d, with d = g / (|g| + eps)
    assert math.isinf(stats.trial_loss) and stats.rho == -math.inf
    q_damped = mine.curvature + 1e-3 * mine.direction_sq_norm
    assert _close(stats.damped_curvature, q_damped) and _close(
        stats.alpha, mine.grad_dot_dir / q_damped
    )
    grads = torch.autograd.grad(probe.value(model(batch[0]), batch[1]), list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), grads, strict=True):
        d = g / (g.abs() + 1e-8)
        assert torch.allclose(new[name], p0[name] - stats.alpha * d, rtol=1e-12, atol=1e-14)
    # rho = -inf < 1/4: lambda doubles; Adam's count advanced (no revert)
    assert stats.damping == 2e-3 and float(state.damping) == 2e-3 and state.count == 1
    assert opt.state[opt.global_key]["step"] == 0


def test_nonpositive_curvature_is_stepped_through_with_a_flipped_step_size():
    model = _model(2)
    batch = _batch(3)
    loss = _Concave()
    p0 = _params(model)
    settings = OfficialSettings()
    new, state, stats = official_step(
        model, p0, OfficialState.initial(p0, settings), batch, settings, loss
    )
    mine = _step_ours(_ours(model, loss), batch)
    assert not mine.accepted and mine.reason == "nonpositive_curvature"
    assert stats.curvature < 0 and stats.damped_curvature < 0 and stats.grad_dot_dir > 0
    assert stats.alpha < 0  # Q < 0 flips the step: theta moves along +d
    assert _close(stats.damped_curvature, mine.curvature + 1e-3 * mine.direction_sq_norm)
    f1 = float(loss_at(model, new, *batch, loss))
    assert _close(stats.trial_loss, f1)
    s = -stats.alpha
    m = 0.5 * s * s * stats.damped_curvature + s * stats.grad_dot_dir
    assert _close(stats.model_change, m) and _close(stats.rho, (f1 - stats.loss) / m, 1e-9)
    expected = 5e-4 if stats.rho > 0.75 else 2e-3 if stats.rho < 0.25 else 1e-3
    assert stats.damping == expected and float(state.damping) == expected
    # ours jumps lambda past -q / ||d||^2 instead
    assert mine.damping == pytest.approx(2 * max(1e-3, -mine.curvature / mine.direction_sq_norm))


def test_nan_rho_leaves_the_damping_unchanged():
    settings = OfficialSettings()
    lam = torch.tensor(1e-3, dtype=DT)
    assert float(kfac_damping_update(lam, torch.tensor(math.nan, dtype=DT), settings)) == 1e-3
    assert float(kfac_damping_update(lam, torch.tensor(0.8, dtype=DT), settings)) == 5e-4
    assert float(kfac_damping_update(lam, torch.tensor(0.1, dtype=DT), settings)) == 2e-3
    for rho in (0.25, 0.5, 0.75):  # strict comparisons
        assert float(kfac_damping_update(lam, torch.tensor(rho, dtype=DT), settings)) == 1e-3
    assert float(kfac_damping_update(lam, torch.tensor(-math.inf, dtype=DT), settings)) == 2e-3
    assert float(kfac_damping_update(lam, torch.tensor(math.inf, dtype=DT), settings)) == 5e-4
    # clipped below at 1e-8, never above
    tiny, huge = torch.tensor(1.5e-8, dtype=DT), torch.tensor(1e300, dtype=DT)
    assert float(kfac_damping_update(tiny, torch.tensor(0.9, dtype=DT), settings)) == 1e-8
    assert float(kfac_damping_update(huge, torch.tensor(0.0, dtype=DT), settings)) == 2e300

    # in a step: a zero gradient gives a = Q = 0, a NaN step size and NaN parameters, rho NaN
    model = _model(3)
    p0 = _params(model)
    new, state, stats = official_step(
        model, p0, OfficialState.initial(p0, settings), _batch(0), settings, _Flat()
    )
    assert stats.grad_dot_dir == 0 and stats.damped_curvature == 0
    assert math.isnan(stats.alpha) and math.isnan(stats.rho)
    assert all(bool(torch.isnan(p).all()) for p in new.values())
    assert stats.damping == 1e-3 and float(state.damping) == 1e-3


# ---------------------------------------------------------------------------------- the driver
def test_run_official_follows_the_steps_and_stops_at_the_step_limit():
    model = _model()
    loss = CrossEntropyLoss()
    before = _params(model)
    batches = [_batch(i) for i in range(6)]
    run = run_official(model, batches, 4, loss)
    assert run.stop_reason == "steps" and run.stop_step is None and len(run.frame) == 4
    params, state = _params(model), OfficialState.initial(before, OfficialSettings())
    for i in range(4):
        params, state, stats = official_step(
            model, params, state, batches[i], OfficialSettings(), loss
        )
        assert run.frame["loss"].iloc[i] == stats.loss
        assert run.frame["damping"].iloc[i] == stats.damping
    assert all(torch.equal(run.params[n], params[n]) for n in params)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    short = run_official(model, batches[:2], 5, loss)
    assert short.stop_reason == "steps" and len(short.frame) == 2


def test_run_official_stops_at_the_first_nonfinite_loss_and_says_so():
    model = _model()
    loss = CrossEntropyLoss()
    batches = [_batch(i) for i in range(6)]
    bad = (batches[2][0].clone(), batches[2][1])
    bad[0][0, 0] = math.nan
    batches[2] = bad
    run = run_official(model, batches, 6, loss)
    assert run.stop_reason == "nonfinite_train_loss" and run.stop_step == 3
    assert len(run.frame) == 3 and math.isnan(run.frame["loss"].iloc[-1])

    x, t = _batch(9)
    x_bad = x.clone()
    x_bad[1, 2] = math.inf
    run = run_official(
        model, [_batch(i) for i in range(6)], 6, loss, held_out={"val": (x, t), "test": (x_bad, t)}
    )
    assert run.stop_reason == "nonfinite_test_loss" and run.stop_step == 1
    assert math.isfinite(run.frame["val_loss"].iloc[0])
    with pytest.raises(ValueError, match="steps"):
        run_official(model, batches, 0, loss)
    with pytest.raises(ValueError, match="held_out"):
        run_official(model, batches, 1, loss, held_out={"train": (x, t)})


def test_settings_are_validated():
    with pytest.raises(ValueError, match="curvature"):
        OfficialSettings(curvature="gauss")
    with pytest.raises(ValueError, match="initial_damping"):
        OfficialSettings(initial_damping=-1.0)


# ------------------------------------------------------------------- real data (mirror)
MIRROR = os.environ.get("ADAMQLR_DATA")
needs_data = pytest.mark.skipif(
    not MIRROR or not os.path.exists(os.path.join(MIRROR, "fashion-mnist")),
    reason="no data mirror (ADAMQLR_DATA)",
)


@needs_data
def test_divergence_comparison_at_a_tiny_scale():
    runs = divergence_comparison((50,), (0, 1), steps=4, profile="smoke", held_out_size=20)
    assert list(runs["seed"]) == [0, 1] and (runs["steps_run"] == 4).all()
    assert (runs["stop_reason"] == "steps").all() and runs["stop_step"].isna().all()
    # same initialisation and batches: the first step agrees to float32 rounding
    assert (runs["first_alpha_rel_diff"] < 1e-5).all() and (runs["max_rel_diff"] < 1e-4).all()
    assert (runs["compared_steps"] == 4).all() and runs["ours_first_rejection"].isna().all()
    table = summarise_divergence(runs)
    assert list(table["batch_size"]) == [50] and int(table["runs"].iloc[0]) == 2
    assert 0.0 <= table["low"].iloc[0] <= table["high"].iloc[0] <= 1.0
    with pytest.raises(ValueError, match="batch_size"):
        divergence_comparison((0,), (0,), steps=1, profile="smoke")


@needs_data
def test_divergence_table_is_saved_with_its_arguments_and_reloaded(tmp_path):
    args = dict(batch_sizes=(50,), seeds=(0,), steps=3, profile="smoke", held_out_size=10)
    with pytest.raises(FileNotFoundError, match="compute=True"):
        load_divergence_comparison(**args, root=tmp_path)
    made = load_divergence_comparison(**args, root=tmp_path, compute=True)
    assert (tmp_path / COMPARISON_FILE).is_file()
    again = load_divergence_comparison(**args, root=tmp_path)
    pd.testing.assert_frame_equal(made, again, check_dtype=False)
    assert again["stop_step"].isna().all() and again["stop_reason"].iloc[0] == "steps"
    with pytest.raises(FileNotFoundError):  # other arguments: not this file
        load_divergence_comparison(**(args | {"steps": 4}), root=tmp_path)
