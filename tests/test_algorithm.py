"""The pure functional reference of one AdamQLR iteration equals the optimiser, step by step."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from _models import DTYPE, ConvBN, classification, mlp, regression
from torch import nn

from adamqlr import AdamQLR
from adamqlr.algorithm import (
    AdamQLRSettings,
    AdamQLRState,
    adam_direction,
    adam_moments,
    adamqlr_iteration,
    bias_corrected,
)
from adamqlr.losses import get_loss

REL = 1e-12

#: name -> (optimiser keyword arguments, what the run must contain)
CONFIGS = {
    "fisher": (dict(curvature="fisher"), set()),
    "hessian-reject": (dict(curvature="hessian", initial_damping=1e-6), {"rejected"}),
    "hessian-absolute": (
        dict(curvature="hessian", nonpositive_curvature="absolute", amplification=0.7),
        set(),
    ),
    "fisher-clipped-decay": (dict(lr_clip=0.02, weight_decay=0.01), {"clipped"}),
    "hessian-clipped": (dict(curvature="hessian", lr_clip=0.02), {"clipped"}),
    "fisher-undamped": (dict(undamped=True), set()),
    "fisher-interval-betas": (
        dict(damping_interval=3, betas=(0.5, 0.9), eps=1e-4, damping_in_rho=False),
        set(),
    ),
    "fisher-bounded": (dict(damping_bounds=(1e-3, 0.1), initial_damping=0.05), set()),
}


def _close(a: float, b: float) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b or abs(a - b) <= REL * max(abs(a), abs(b), 1e-300)


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal to ``REL`` relative to the tensor's scale (an element may cancel to near zero)."""
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-300)
    assert float((a - b).abs().max()) <= REL * scale


def _run_both(
    model: nn.Module, loss_name: str, kwargs: dict, batches, before_step=None
) -> list[tuple]:
    """Step the optimiser; before each step, run the reference from the optimiser's own values.

    Each iteration is compared alone (the reference starts from the optimiser's parameters and
    state), so that the comparison measures one iteration, not the growth of rounding
    differences along a trajectory. Returns ``(optimiser stats, reference stats)`` per step.
    """
    # The reference only reads the model (frozen parameters, buffers), never writes it.
    opt_model = copy.deepcopy(model)
    opt = AdamQLR(opt_model, loss_name, **kwargs)
    settings = AdamQLRSettings.of(opt)
    loss = get_loss(loss_name)
    pairs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k, (x, y) in enumerate(batches):
            if before_step is not None:
                before_step(k, opt_model)
            trainable = {n for n, p in opt_model.named_parameters() if p.requires_grad}
            params = {n: p.detach().clone() for n, p in opt_model.named_parameters()}
            frozen = {n: params.pop(n) for n in list(params) if n not in trainable}
            state = AdamQLRState.initial(settings) if not pairs else AdamQLRState.of(opt)
            params, state, ref = adamqlr_iteration(opt_model, params, state, (x, y), settings, loss)
            stats = opt.step(x, y)
            pairs.append((stats, ref))
            for n, p in opt_model.named_parameters():
                _assert_close(p.detach(), params[n] if n in params else frozen[n])
            mirrored = AdamQLRState.of(opt)
            assert (mirrored.step, mirrored.rejected_steps) == (state.step, state.rejected_steps)
            assert _close(mirrored.damping, state.damping)
            assert mirrored.moment_steps == state.moment_steps
            for n in state.exp_avg:
                _assert_close(mirrored.exp_avg[n], state.exp_avg[n])
                _assert_close(mirrored.exp_avg_sq[n], state.exp_avg_sq[n])
    return pairs


def _assert_stats_close(a, b, where) -> None:
    a, b = a.as_dict(), b.as_dict()
    for key in a:
        if key == "rho" and a["accepted"] and not math.isnan(a[key]):
            # rho = (f1 - f0) / predicted change: its rounding is that of f0 and f1 over it
            scale = (abs(a["loss"]) + abs(a["trial_loss"])) / abs(a["predicted_change"])
            assert abs(a[key] - b[key]) <= REL * max(scale, abs(a[key])), (where, key)
        elif key == "curvature" and math.isfinite(a[key]):
            # q can be a small difference of large terms (saturated softmax, an indefinite
            # Hessian): its rounding matters on the scale of the damped curvature
            scale = max(abs(a[key]), a["damping_used"] * a["direction_sq_norm"])
            assert abs(a[key] - b[key]) <= REL * scale, (where, key, a[key], b[key])
        else:
            assert _close(a[key], b[key]), (where, key, a[key], b[key])


@pytest.mark.parametrize("loss_name", ["cross_entropy", "squared_error"])
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_reference_iteration_equals_the_optimiser(config, loss_name):
    kwargs, must = CONFIGS[config]
    model = mlp((5, 6, 3), nn.Tanh, seed=3)
    with torch.no_grad():  # large weights: an indefinite Hessian, so rejections happen
        for p in model.parameters():
            p.mul_(3.0)
    if loss_name == "cross_entropy":
        x, y = classification(model, n=60, seed=4)
    else:
        x, y = regression(n=60, out_dim=3, seed=4)
    batches = [(x[(7 * k) % 48 :][:12], y[(7 * k) % 48 :][:12]) for k in range(25)]
    pairs = _run_both(model, loss_name, kwargs, batches)
    for k, (stats, ref) in enumerate(pairs):
        _assert_stats_close(stats, ref, (config, k))
    seen = set()
    if any(not s.accepted for s, _ in pairs):
        seen.add("rejected")
    clip = kwargs.get("lr_clip")
    if clip and any(s.accepted and abs(s.lr) == pytest.approx(clip) for s, _ in pairs):
        seen.add("clipped")
    if loss_name == "squared_error":
        must = must - {"rejected"}  # a convex loss in the outputs rejects rarely
    assert must <= seen, f"{config}: the run should contain {must - seen}"
    assert sum(s.accepted for s, _ in pairs) >= 5


def test_reference_with_relu_batch_norm_and_frozen_parameters():
    """ReLU kinks, batch norm (train mode) and a frozen layer that keeps its moment count."""
    model = ConvBN(seed=1)
    x = torch.randn(16, 2, 5, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(3))
    batches = [(x[k % 4 :][:12], y[k % 4 :][:12]) for k in range(6)]
    for curvature in ("fisher", "hessian"):
        pairs = _run_both(model, "cross_entropy", dict(curvature=curvature), batches)
        for k, (s, r) in enumerate(pairs):
            _assert_stats_close(s, r, (curvature, k))
    mlp_model = mlp((4, 5, 2), nn.ReLU, seed=1)
    x, y = classification(mlp_model, n=20, in_shape=(4,), classes=2, seed=5)

    def freeze_for_a_while(k: int, model: nn.Module) -> None:  # steps 2-3: the first layer rests
        model[0].weight.requires_grad_(k not in (2, 3))

    batches = [(x[k:][:10], y[k:][:10]) for k in range(7)]
    pairs = _run_both(mlp_model, "cross_entropy", {}, batches, freeze_for_a_while)
    for k, (s, r) in enumerate(pairs):
        _assert_stats_close(s, r, ("frozen", k))


def test_no_gradient_and_nonfinite_loss_are_handled_like_the_optimiser():
    model = mlp((3, 2), seed=0)
    x, y = regression(n=4, in_dim=3, out_dim=2)
    settings = AdamQLRSettings()
    loss = get_loss("squared_error")
    params = {n: p.detach() for n, p in model.named_parameters()}
    state = AdamQLRState.initial(settings)
    bad = x.clone()
    bad[0, 0] = math.nan
    new, after, stats = adamqlr_iteration(model, params, state, (bad, y), settings, loss)
    assert (stats.accepted, stats.reason) == (False, "nonfinite_loss")
    assert after.damping == 2 * state.damping and after.rejected_steps == 1
    assert all(new[n] is params[n] for n in params)
    model.requires_grad_(False)
    _, same, stats = adamqlr_iteration(model, {}, state, (x, y), settings, loss)
    assert stats.reason == "no_gradient" and same is state


def test_adam_direction_pieces_are_torch_adams_update():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(7, dtype=DTYPE, generator=g, requires_grad=True)
    adam = torch.optim.Adam([p], lr=1.0, betas=(0.8, 0.95), eps=1e-6)
    m = v = torch.zeros(7, dtype=DTYPE)
    for t in range(1, 5):
        grad = torch.randn(7, dtype=DTYPE, generator=g)
        before = p.detach().clone()
        p.grad = grad.clone()
        adam.step()
        m, v = adam_moments(m, v, grad, (0.8, 0.95))
        d = adam_direction(*bias_corrected(m, v, t, (0.8, 0.95)), 1e-6)
        torch.testing.assert_close(before - p.detach(), d, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="invalid step: 0"):
        bias_corrected(m, v, 0, (0.9, 0.999))


def test_settings_are_validated_and_read_from_an_optimiser():
    with pytest.raises(ValueError, match="invalid curvature: 'kfac'"):
        AdamQLRSettings(curvature="kfac")
    with pytest.raises(ValueError, match="invalid nonpositive_curvature"):
        AdamQLRSettings(nonpositive_curvature="clip")
    opt = AdamQLR(mlp(), lr_clip=0.3, damping_interval=2, betas=(0.5, 0.6))
    s = AdamQLRSettings.of(opt)
    assert (s.lr_clip, s.damping_interval, s.betas) == (0.3, 2, (0.5, 0.6))
    model = mlp()
    two = AdamQLR(model, params=[{"params": [model[0].weight]}, {"params": [model[0].bias]}])
    with pytest.raises(ValueError, match="one parameter group"):
        AdamQLRSettings.of(two)
