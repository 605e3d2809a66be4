"""The CPU shortcuts of a step compute the same numbers as the general path.

``AdamQLR._direction`` passes Python numbers to ``_foreach`` ops as 0-d tensors on the CPU
(float32/float64), and ``_host`` reads 0-d CPU tensors with ``.item()``: both must give bit for
bit what the Python numbers and ``stack().tolist()`` give.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adamqlr import AdamQLR
from adamqlr.optim import _cpu_scalar, _cpu_scalar_dtype, _host


def _reference_direction(ms, vs, grads, steps, beta1, beta2, eps):
    """Adam's direction as the step computed it before, with Python numbers throughout."""
    m = torch._foreach_lerp(ms, grads, 1.0 - beta1)
    v = torch._foreach_mul(vs, beta2)
    torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
    root_c2 = [math.sqrt(1.0 - beta2**t) for t in steps]
    denominator = torch._foreach_sqrt(v)
    torch._foreach_add_(denominator, [eps * r for r in root_c2])
    d = torch._foreach_div(m, denominator)
    torch._foreach_mul_(d, [r / (1.0 - beta1**t) for r, t in zip(root_c2, steps, strict=True)])
    return d, m, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_direction_with_tensor_numbers_equals_python_numbers(dtype):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 13), nn.Tanh(), nn.Linear(13, 3)).to(dtype)
    opt = AdamQLR(model, "squared_error", betas=(0.8, 0.99), eps=1e-3)
    group = opt.param_groups[0]
    params = list(group["params"])
    for step in range(1, 4):
        grads = [torch.randn(p.shape, generator=gen, dtype=dtype) * 10.0**step for p in params]
        ms = [opt.state[p]["exp_avg"] if opt.state.get(p) else torch.zeros_like(p) for p in params]
        vs = [
            opt.state[p]["exp_avg_sq"] if opt.state.get(p) else torch.zeros_like(p) for p in params
        ]
        ref_d, ref_m, ref_v = _reference_direction(ms, vs, grads, [step] * 4, 0.8, 0.99, 1e-3)
        d, _, candidate = opt._direction(params, grads, group)
        steps, m, v, _ = candidate
        assert steps == [step] * 4
        for a, b in zip([*d, *m, *v], [*ref_d, *ref_m, *ref_v], strict=True):
            assert a.dtype == dtype
            assert torch.equal(a, b)
        opt._commit(params, grads, group, candidate)


def test_cpu_scalar_only_for_cpu_float32_and_float64():
    f32, f64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    assert _cpu_scalar_dtype([f32, f32], [f32]) is torch.float32
    assert _cpu_scalar_dtype([f64]) is torch.float64
    assert _cpu_scalar_dtype([f32, f64]) is None  # mixed
    assert _cpu_scalar_dtype([f32.half()]) is None  # 16-bit computes in float32
    assert _cpu_scalar_dtype([f32.bfloat16()]) is None
    assert _cpu_scalar(0.9, None) == 0.9
    t = _cpu_scalar(0.9, torch.float32)
    assert isinstance(t, torch.Tensor) and t.dim() == 0 and t.dtype is torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensor_number_gives_the_same_products_and_sums(dtype):
    gen = torch.Generator().manual_seed(1)
    for scale in (1e-30, 1e-3, 1.0, 1e3, 1e30):
        x = torch.randn(4096, generator=gen, dtype=dtype) * scale
        for value in (0.999, 1e-8 * 0.31622776601683794, 1.0 / 0.3439, 3.0e38):
            t = _cpu_scalar(value, dtype)
            assert torch.equal(x * value, x * t)
            assert torch.equal(x + value, x + t)


def test_host_reads_cpu_values_as_stack_tolist_does():
    values = [
        torch.tensor(1.1),
        torch.tensor(math.nan),
        torch.tensor(-math.inf, dtype=torch.float64),
        torch.tensor(0.1, dtype=torch.float16),
        torch.tensor(1e-40),
        torch.tensor([2.5]),  # one element, not 0-d
    ]
    expected = torch.stack([t.reshape(()).to(torch.float64) for t in values]).tolist()
    got = _host(values)
    assert all(isinstance(v, float) for v in got)
    assert [repr(v) for v in got] == [repr(v) for v in expected]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_squared_error_with_kept_half_equals_python_half(dtype):
    """``SquaredErrorLoss.value`` multiplies by a kept 0-d 0.5 on the CPU: the value and the
    gradient are bit for bit those of ``0.5 * r**2``."""
    from adamqlr.losses import SquaredErrorLoss

    gen = torch.Generator().manual_seed(1)
    outputs = torch.randn(37, 3, generator=gen, dtype=dtype) * 1e3
    targets = torch.randn(37, 3, generator=gen, dtype=dtype)
    mine = outputs.clone().requires_grad_()
    ref = outputs.clone().requires_grad_()
    value = SquaredErrorLoss().value(mine, targets)
    expected = 0.5 * (ref - targets).pow(2).reshape(37, -1).sum(-1).mean()
    value.backward()
    expected.backward()
    assert value.item() == expected.item()
    assert torch.equal(mine.grad, ref.grad)


def test_kept_numbers_are_ordinary_tensors_made_once():
    from adamqlr.precision import cpu_number

    with torch.inference_mode():
        first = cpu_number(0.5, torch.float32)
    assert not first.is_inference()  # usable by a later step that records a graph
    assert cpu_number(0.5, torch.float32) is first
    assert cpu_number(0.5, torch.float64).dtype == torch.float64
    assert first.dim() == 0 and first.item() == 0.5


def test_trial_pass_calls_the_activations_forward_directly_with_the_same_numbers():
    """Without a tape, ``layerwise_forward`` skips ``Module.__call__`` for activations: the
    outputs equal the module's own forward bit for bit."""
    from adamqlr.curvature import layerwise_forward, layerwise_plan

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 9), nn.ReLU(), nn.Linear(9, 9), nn.Tanh(), nn.Linear(9, 2))
    x = torch.randn(11, 5)
    plan = layerwise_plan(model)
    assert plan is not None
    with torch.no_grad():
        fast, tape = layerwise_forward(plan, x, keep=False)
        assert tape == []
        assert torch.equal(fast, model(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kept_number_made_inside_a_torch_func_transform_does_not_escape_it(dtype):
    """The first squared error of a process may be inside ``torch.func.hessian``: the kept 0.5
    is made outside the transform, so later calls, inside or outside one, still work."""
    from adamqlr.losses import SquaredErrorLoss
    from adamqlr.precision import cpu_number

    cpu_number.cache_clear()
    loss = SquaredErrorLoss()
    targets = torch.randn(4, 2, dtype=dtype)
    outputs = torch.randn(4, 2, dtype=dtype)
    hess = torch.func.hessian(lambda o: loss.value(o, targets))(outputs)
    assert torch.equal(hess.reshape(8, 8), torch.eye(8, dtype=dtype) / 4)
    again = torch.func.hessian(lambda o: loss.value(o, targets))(outputs)
    assert torch.equal(again, hess)
    assert (
        loss.value(outputs, targets).item()
        == (0.5 * (outputs - targets).pow(2)).sum(1).mean().item()
    )
