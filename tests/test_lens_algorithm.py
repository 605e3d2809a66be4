"""The derivation chapters' Adam directions are :mod:`adamqlr.algorithm`'s and the optimisers' own.

:func:`adamqlr.lens.line.adam_direction` (AdamQLR's next direction) and
:func:`adamqlr.lens.adam.adam_moments` (``torch.optim.Adam``'s moments) apply the one definition
of Adam's direction in :mod:`adamqlr.algorithm`: they equal it bit for bit, and equal the
direction the optimisers themselves take to rounding (1e-12 in float64, float32 rounding in
float32).
"""

from __future__ import annotations

import math

import pytest
import torch
from _models import mlp

from adamqlr import AdamQLR, algorithm
from adamqlr.algorithm import AdamQLRSettings, AdamQLRState
from adamqlr.lens.adam import adam_moments
from adamqlr.lens.line import adam_direction
from adamqlr.losses import CrossEntropyLoss
from adamqlr.testing import flat_params

#: Relative agreement with the optimiser, by dtype: float64 to 1e-12, float32 to its rounding.
REL = {torch.float64: 1e-12, torch.float32: 1e-6}


def _problem(dtype: torch.dtype, n: int = 12, seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    model = mlp((4, 6, 3), seed=seed).to(dtype)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64).to(dtype)
    return model, x, torch.randint(0, 3, (n,), generator=g), CrossEntropyLoss()


def _grads(model, x, y, loss) -> dict[str, torch.Tensor]:
    names = [n for n, _ in model.named_parameters()]
    found = torch.autograd.grad(loss.value(model(x), y), list(model.parameters()))
    return dict(zip(names, found, strict=True))


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def _assert_close(a: torch.Tensor, b: torch.Tensor, rel: float, scale: float = 0.0) -> None:
    """Equal to ``rel`` relative to the tensors' (or a given larger) scale: an element may cancel
    to near zero, and a parameter step is rounded at the parameters' scale, not the step's."""
    scale = max(float(a.abs().max()), float(b.abs().max()), scale, 1e-300)
    assert float((a - b).abs().max()) <= rel * scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_lens_adam_direction_is_the_algorithms_and_the_optimisers(dtype):
    model, x, y, loss = _problem(dtype)
    opt = AdamQLR(model, betas=(0.8, 0.95), eps=1e-6)
    settings = AdamQLRSettings.of(opt)
    for _ in range(4):
        grads = _grads(model, x, y, loss)
        d = adam_direction(opt, grads)
        # Bit for bit the reference iteration's direction, from the optimiser's own state.
        state = AdamQLRState.of(opt)
        for n, g in grads.items():
            m, v = algorithm.adam_moments(
                state.exp_avg.get(n, torch.zeros_like(g)),
                state.exp_avg_sq.get(n, torch.zeros_like(g)),
                g,
                settings.betas,
            )
            t = state.moment_steps.get(n, 0) + 1
            ref = algorithm.adam_direction(
                *algorithm.bias_corrected(m, v, t, settings.betas), settings.eps
            )
            assert d[n].dtype == dtype and torch.equal(d[n], ref), n
        # The optimiser's own direction: its g^T d, ||d||^2 and the step it takes.
        before = flat_params(model).vector.clone()
        stats = opt.step(x, y)
        assert stats.accepted
        gtd = math.fsum(float((grads[n].double() * d[n].double()).sum()) for n in d)
        sq = math.fsum(float(d[n].double().pow(2).sum()) for n in d)
        assert _rel(gtd, stats.grad_dot_dir) <= REL[dtype]
        assert _rel(sq, stats.direction_sq_norm) <= REL[dtype]
        taken = (flat_params(model).vector - before).double()
        predicted = -stats.lr * torch.cat([d[n].double().reshape(-1) for n in d])
        _assert_close(taken, predicted, 4 * REL[dtype], float(before.abs().max()))


def test_lens_adam_direction_refuses_missing_gradients_and_several_groups():
    model, x, y, loss = _problem(torch.float64)
    opt = AdamQLR(model)
    grads = _grads(model, x, y, loss)
    grads.pop(next(iter(grads)))
    with pytest.raises(ValueError, match="no gradient for"):
        adam_direction(opt, grads)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_lens_adam_moments_are_the_algorithms_and_torch_adams(dtype):
    model, x, y, loss = _problem(dtype)
    betas, eps, lr = (0.8, 0.95), 1e-6, 0.01
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=eps)
    m = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
    v = [torch.zeros_like(p, dtype=torch.float64) for p in model.parameters()]
    for t in range(1, 5):
        before = flat_params(model).vector.clone()
        opt.zero_grad()
        loss.value(model(x), y).backward()
        grads = [p.grad.double() for p in model.parameters()]
        opt.step()
        out = adam_moments(opt)
        assert out["m_hat"].dtype == out["direction"].dtype == torch.float64
        # The direction is algorithm.adam_direction of the moments returned, bit for bit.
        assert torch.equal(
            out["direction"], algorithm.adam_direction(out["m_hat"], out["v_hat"], eps)
        )
        # The moments are algorithm's, tracked from the same gradients (torch updates in place).
        for i, g in enumerate(grads):
            m[i], v[i] = algorithm.adam_moments(m[i], v[i], g, betas)
        m_hat, v_hat = algorithm.bias_corrected(
            torch.cat([a.reshape(-1) for a in m]), torch.cat([a.reshape(-1) for a in v]), t, betas
        )
        _assert_close(out["m_hat"], m_hat, REL[dtype])
        _assert_close(out["v_hat"], v_hat, REL[dtype])
        # And the step torch took is -lr d.
        taken = (flat_params(model).vector - before).double()
        _assert_close(taken, -lr * out["direction"], 4 * REL[dtype], float(before.abs().max()))
