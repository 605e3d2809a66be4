"""AdamQLR under mixed precision: wide accumulation and the loss-resolution rule.

The end-to-end check runs the README example under ``torch.autocast("cpu", ...)``. One run's
final loss is a chaotic function of the rounding (a 1e-3 relative perturbation of the initial
weights alone moves the float32 result by about 20 %), so the comparison is of the mean over
four data orders, run by run the same orders in every precision.
"""

from __future__ import annotations

import math
import statistics
import warnings
from functools import cache

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adamqlr import SGDQLR, AdamQLR
from adamqlr.heuristics import loss_resolution
from adamqlr.precision import rounding_dtype, wide, wide_dtype

LOW = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _readme_problem() -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    torch.manual_seed(0)
    inputs = torch.randn(2048, 20)
    targets = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0).long()  # 3 classes
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
    return inputs, targets, model


@cache
def _final_loss(
    dtype_name: str | None, curvature: str, order: int, one_region: bool = False, steps: int = 30
) -> float:
    """The full-data loss after ``steps`` steps; autocast around each step or the whole loop."""
    inputs, targets, model = _readme_problem()
    opt = AdamQLR(model, loss="cross_entropy", curvature=curvature)
    g = torch.Generator().manual_seed(order)
    dtype = LOW.get(dtype_name or "", torch.bfloat16)
    enabled = dtype_name is not None
    taken = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no rejected step
        with torch.autocast("cpu", dtype=dtype, enabled=enabled and one_region):
            while taken < steps:
                for batch in torch.randperm(2048, generator=g).split(512):
                    if one_region:  # no context of its own (leaving one clears autocast's cache)
                        stats = opt.step(inputs[batch], targets[batch])
                    else:
                        with torch.autocast("cpu", dtype=dtype, enabled=enabled):
                            stats = opt.step(inputs[batch], targets[batch])
                    assert stats.accepted, stats.reason
                    taken += 1
                    if taken == steps:
                        break
    with torch.no_grad():
        return F.cross_entropy(model(inputs), targets).item()


@pytest.mark.parametrize("region", ["each-step", "whole-loop"])
@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
@pytest.mark.parametrize("dtype_name", sorted(LOW))
def test_readme_example_under_autocast_ends_near_float32(
    dtype_name: str, curvature: str, region: str
) -> None:
    """Within 20 % of float32, whether autocast wraps each step or the whole loop.

    In one region around the whole loop, torch's autocast keeps its 16-bit copies of the
    parameters from the first step unless the step forgets them after updating the parameters
    (the loss used to end at 6.3 instead of 0.057).
    """
    orders = range(4)
    full = statistics.mean(_final_loss(None, curvature, k) for k in orders)
    low = statistics.mean(
        _final_loss(dtype_name, curvature, k, region == "whole-loop") for k in orders
    )
    assert full < 0.15  # it trained (from 1.1)
    assert abs(low - full) <= 0.2 * full, (low, full)


def test_float16_curvature_does_not_overflow() -> None:
    """A float16 sum of ``u^T H u`` over 512 examples overflows; it is accumulated in float32."""
    inputs, targets, model = _readme_problem()
    reference = AdamQLR(_readme_problem()[2], "cross_entropy").step(inputs[:512], targets[:512])
    with torch.autocast("cpu", dtype=torch.float16):
        stats = AdamQLR(model, "cross_entropy").step(inputs[:512], targets[:512])
    assert stats.accepted and math.isfinite(stats.curvature)
    assert stats.curvature == pytest.approx(reference.curvature, rel=2e-2)
    assert stats.grad_dot_dir == pytest.approx(reference.grad_dot_dir, rel=2e-2)


def test_scalars_of_16bit_parameters_accumulate_in_float32() -> None:
    """With ``d = g`` (SGDQLR), ``g^T d`` and ``||d||^2`` are ``sum g^2`` of the bf16 gradient."""
    inputs, targets, model = _readme_problem()
    model = model.to(torch.bfloat16)
    stats = SGDQLR(model, "cross_entropy").step(inputs[:512].bfloat16(), targets[:512])
    exact = math.fsum(float(v) ** 2 for p in model.parameters() for v in p.grad.reshape(-1))
    assert stats.grad_dot_dir == pytest.approx(exact, rel=1e-5)
    assert stats.direction_sq_norm == pytest.approx(exact, rel=1e-5)


def test_unresolved_loss_change_under_autocast_gives_no_rho() -> None:
    """A step too small to change a bfloat16-precision loss gives no rho and no doubling.

    The loss itself is float32 (torch's autocast computes cross-entropy in float32) but made of
    bfloat16 logits; the rule is applied at bfloat16's resolution. Here even the predicted change
    is below it, so the damping comes down (``LevenbergMarquardt.after_unresolved``) instead of
    being doubled on rounding noise.
    """
    inputs, targets, model = _readme_problem()
    opt = AdamQLR(model, "cross_entropy", initial_damping=1e6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = opt.step(inputs[:512], targets[:512])
    assert stats.accepted and stats.lr > 0
    assert stats.loss_unresolved
    assert math.isnan(stats.rho)
    assert stats.damping == 0.5e6 == opt.damping
    assert abs(stats.trial_loss - stats.loss) <= loss_resolution(stats.loss, torch.bfloat16)
    assert abs(stats.predicted_change) <= loss_resolution(stats.loss, torch.bfloat16)
    # the same problem without autocast, default damping: resolved, rho adapts lambda
    inputs, targets, model = _readme_problem()
    stats = AdamQLR(model, "cross_entropy").step(inputs[:512], targets[:512])
    assert not stats.loss_unresolved and math.isfinite(stats.rho) and stats.damping != 1e-3


def test_bfloat16_resolution_applies_under_autocast() -> None:
    """A change that float32 resolves but bfloat16 does not is unresolved under bf16 autocast."""
    inputs, targets, _ = _readme_problem()
    for autocast in (False, True):
        model = _readme_problem()[2]
        opt = AdamQLR(model, "cross_entropy", initial_damping=300.0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            stats = opt.step(inputs[:512], targets[:512])
        change = abs(stats.trial_loss - stats.loss)
        assert loss_resolution(stats.loss, torch.float32) < change
        assert change <= loss_resolution(stats.loss, torch.bfloat16)
        assert stats.loss_unresolved == autocast
        assert math.isnan(stats.rho) == autocast


def test_rounding_dtype_and_wide() -> None:
    assert rounding_dtype(torch.float32, torch.bfloat16) == torch.bfloat16
    assert rounding_dtype(torch.float64) == torch.float64
    assert rounding_dtype(torch.float32, device_type="cpu") == torch.float32
    with torch.autocast("cpu", dtype=torch.float16):
        assert rounding_dtype(torch.float32, device_type="cpu") == torch.float16
        assert rounding_dtype(torch.float32) == torch.float32  # no device: autocast ignored
    assert wide_dtype(torch.bfloat16) == torch.float32 == wide_dtype(torch.float16)
    t = torch.ones(3, dtype=torch.float64)
    assert wide(t) is t
    assert wide(t.half()).dtype == torch.float32
