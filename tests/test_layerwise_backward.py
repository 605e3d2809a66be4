"""The gradient pass without autograd: the layers' backward on the forward's tape.

For a sequential MLP whose loss has a closed-form output gradient, :class:`LayerwiseFisher`
computes ``.grad`` with :func:`layerwise_backward` instead of ``loss.backward()``. The oracle is
autograd itself: the same kernels run, so the gradients and the steps are compared for equality,
not closeness, where the layers are 2-D; and every case that autograd would treat differently
(hooks, inputs or parameters outside the optimiser that need a gradient, autocast, 16-bit
parameters, losses without the closed form) must take the autograd path.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from _models import ACTIVATIONS
from torch import nn

from adamqlr import AdamQLR
from adamqlr.curvature import (
    ForwardModeFisher,
    layerwise_backward,
    layerwise_forward,
    layerwise_plan,
)
from adamqlr.losses import (
    CrossEntropyLoss,
    Loss,
    MeanSquaredErrorLoss,
    SquaredErrorLoss,
    TorchCrossEntropyLoss,
)


def _autograd_grads(model: nn.Module, loss: Loss, x: torch.Tensor, y: torch.Tensor):
    model.zero_grad(set_to_none=True)
    loss.value(model(x), y).backward()
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _tape_grads(model: nn.Module, loss: Loss, x: torch.Tensor, y: torch.Tensor):
    plan = layerwise_plan(model)
    assert plan is not None
    with torch.no_grad():
        outputs, tape = layerwise_forward(plan, x)
        _, grad_outputs = loss.value_and_output_gradient(outputs, y)
    got: dict[int, torch.Tensor] = {}
    for p, g in layerwise_backward(plan, tape, grad_outputs):
        got[id(p)] = g if id(p) not in got else got[id(p)] + g
    return [got.get(id(p)) for p in model.parameters()]


def _assert_same(got, expected, exact: bool = True) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (g is None) == (e is None)
        if g is not None:
            if exact:
                assert torch.equal(g, e), (g - e).abs().max()
            else:
                torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=repr)
def test_every_activation_gives_autograd_gradients_exactly(act: nn.Module, dtype) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), act, nn.Linear(9, 9), act, nn.Linear(9, 4)).to(dtype)
    x = torch.randn(13, 6, dtype=dtype)
    y = torch.randint(0, 4, (13,))
    loss = CrossEntropyLoss()
    _assert_same(_tape_grads(model, loss, x, y), _autograd_grads(model, loss, x, y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_squared_error_gradients_are_autograd_s_exactly(dtype) -> None:
    torch.manual_seed(1)
    for out, y_shape in ((1, (21,)), (1, (21, 1)), (3, (21, 3))):
        model = nn.Sequential(nn.Linear(8, 50), nn.Tanh(), nn.Linear(50, out)).to(dtype)
        x = torch.randn(21, 8, dtype=dtype)
        y = torch.randn(*y_shape, dtype=dtype)
        loss = SquaredErrorLoss()
        _assert_same(_tape_grads(model, loss, x, y), _autograd_grads(model, loss, x, y))
        with torch.no_grad():
            value, _ = loss.value_and_output_gradient(model(x), y)
        assert torch.equal(value, loss.value(model(x), y).detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_value_and_gradient_are_autograd_s_exactly(dtype) -> None:
    torch.manual_seed(2)
    for shape, ignore in (((17, 5), -100), ((4, 6, 5), -100), ((4, 6, 5), 3)):
        z = torch.randn(*shape, dtype=dtype, requires_grad=True)
        y = torch.randint(0, 5, shape[:-1])
        y[0] = -100 if ignore == -100 else 3  # some positions skipped
        loss = CrossEntropyLoss(ignore_index=ignore)
        expected = loss.value(z, y)
        (expected_grad,) = torch.autograd.grad(expected, z)
        value, grad = loss.value_and_output_gradient(z.detach(), y)
        assert torch.equal(value, expected.detach())
        assert torch.equal(grad, expected_grad)


def test_shape_only_layers_dropout_and_three_dimensional_inputs() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 10),
        nn.Unflatten(-1, (2, 5)),
        nn.Identity(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.ReLU(),
        nn.Linear(10, 3),
    ).double()
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    loss = CrossEntropyLoss()
    state = torch.get_rng_state()
    expected = _autograd_grads(model, loss, x, y)
    torch.set_rng_state(state)  # the same dropout mask
    _assert_same(_tape_grads(model, loss, x, y), expected)

    sequence = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 5)).double()
    x = torch.randn(3, 7, 4, dtype=torch.float64)  # (batch, positions, features)
    y = torch.randint(0, 5, (3, 7))
    _assert_same(
        _tape_grads(sequence, loss, x, y), _autograd_grads(sequence, loss, x, y), exact=False
    )


def test_frozen_layers_get_no_gradient_and_a_shared_layer_gets_the_sum() -> None:
    torch.manual_seed(4)
    shared = nn.Linear(6, 6)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), shared, nn.Tanh(), shared, nn.Linear(6, 2))
    model = model.double()
    model[0].weight.requires_grad_(False)
    model[5].bias.requires_grad_(False)
    x = torch.randn(9, 5, dtype=torch.float64)
    y = torch.randint(0, 2, (9,))
    loss = CrossEntropyLoss()
    expected = _autograd_grads(model, loss, x, y)
    assert expected[0] is None and expected[-1] is None  # the frozen ones
    _assert_same(_tape_grads(model, loss, x, y), expected, exact=False)
    # nothing below the lowest trainable layer: freeze the first layer entirely
    model[0].bias.requires_grad_(False)
    plan = layerwise_plan(model)
    with torch.no_grad():
        outputs, tape = layerwise_forward(plan, x)
        _, g = loss.value_and_output_gradient(outputs, y)
    touched = {id(p) for p, _ in layerwise_backward(plan, tape, g)}
    assert touched == {id(shared.weight), id(shared.bias), id(model[5].weight)}


def _pair(model: nn.Module, loss: str | nn.Module = "cross_entropy"):
    twin = copy.deepcopy(model)
    return AdamQLR(model, loss=loss), AdamQLR(twin, loss=loss), twin


def _batches(n_in: int, classes: int, dtype=torch.float32, count: int = 15):
    gen = torch.Generator().manual_seed(5)
    return [
        (
            torch.randn(32, n_in, generator=gen, dtype=dtype),
            torch.randint(0, classes, (32,), generator=gen),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adamqlr_steps_are_those_of_the_autograd_pass_bit_for_bit(dtype) -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))
    model = model.to(dtype)
    fast, slow, twin = _pair(model)
    for p in twin.parameters():  # a no-op hook: autograd must run it, so it takes autograd
        p.register_post_accumulate_grad_hook(lambda p: None)
    for i, (x, y) in enumerate(_batches(10, 4, dtype)):
        torch.manual_seed(100 + i)
        a = fast.step(x, y)
        torch.manual_seed(100 + i)
        b = slow.step(x, y)
        assert (a.loss, a.lr, a.curvature, a.damping) == (b.loss, b.lr, b.curvature, b.damping)
    assert fast.curvature_engine.gradient_by == "closed-form"
    assert slow.curvature_engine.gradient_by == "autograd"
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def _engine_path(model: nn.Module, opt: AdamQLR, x, y) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.step(x, y)
    return opt.curvature_engine.gradient_by


def test_what_autograd_would_notice_takes_the_autograd_path() -> None:
    torch.manual_seed(7)
    ((x, y),) = _batches(5, 3, count=1)

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

    model = net()
    opt = AdamQLR(model)
    assert _engine_path(model, opt, x, y) == "closed-form"

    # a hook on a parameter's gradient runs, and sees the gradient
    seen: list[torch.Tensor] = []
    handle = model[0].weight.register_hook(lambda g: seen.append(g))
    assert _engine_path(model, opt, x, y) == "autograd" and len(seen) == 1
    handle.remove()
    assert _engine_path(model, opt, x, y) == "closed-form"

    # a module's backward hooks, on a layer or on the container (which the layer-wise passes
    # never call): no layer-wise plan at all, so the model itself is called and they run
    calls: list[int] = []
    handle = model[2].register_full_backward_hook(lambda m, gi, go: calls.append(1))
    assert _engine_path(model, opt, x, y) == "autograd" and calls == [1]
    assert type(opt.curvature_engine) is ForwardModeFisher
    handle.remove()
    handle = model.register_full_backward_pre_hook(lambda m, go: calls.append(2))
    assert _engine_path(model, opt, x, y) == "autograd" and calls == [1, 2]
    assert type(opt.curvature_engine) is ForwardModeFisher
    handle.remove()
    assert _engine_path(model, opt, x, y) == "closed-form"

    # inputs that require a gradient get one
    xg = x.clone().requires_grad_(True)
    assert _engine_path(model, opt, xg, y) == "autograd" and xg.grad is not None

    # a parameter the optimiser does not own but autograd would fill
    partial = AdamQLR(model, params=list(model[2].parameters()))
    model[0].weight.grad = None
    assert _engine_path(model, partial, x, y) == "autograd"
    assert model[0].weight.grad is not None
    model[0].requires_grad_(False)  # frozen: nothing to fill, so the fast pass is exact again
    left = model[0].weight.grad.clone()
    assert _engine_path(model, partial, x, y) == "closed-form"
    assert torch.equal(model[0].weight.grad, left)  # as autograd: a frozen .grad is not touched

    # autocast, 16-bit parameters, and losses without the closed form
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _engine_path(model, opt, x, y) == "autograd"
    half = net().to(torch.bfloat16)
    assert _engine_path(half, AdamQLR(half), x.to(torch.bfloat16), y) == "autograd"
    for loss in (TorchCrossEntropyLoss(), nn.CrossEntropyLoss(label_smoothing=0.1)):
        other = net()
        assert _engine_path(other, AdamQLR(other, loss=loss), x, y) == "autograd"
    reg = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    assert _engine_path(reg, AdamQLR(reg, loss=MeanSquaredErrorLoss()), x, torch.randn(32, 1)) == (
        "autograd"
    )
    assert _engine_path(reg, AdamQLR(reg, loss="squared_error"), x, torch.randn(32, 1)) == (
        "closed-form"
    )


def test_bad_targets_are_refused_with_the_clear_error_on_the_fast_path() -> None:
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = AdamQLR(model)
    x = torch.randn(4, 5)
    with pytest.raises(ValueError, match="targets"):
        opt.step(x, torch.tensor([0, 1, 7, 2]))
    assert all(p.grad is None for p in model.parameters())
    assert opt.curvature_engine.gradient_by == "closed-form"


def test_losses_without_a_closed_form_say_so() -> None:
    assert CrossEntropyLoss().has_closed_form_gradient()
    assert SquaredErrorLoss().has_closed_form_gradient()
    assert not TorchCrossEntropyLoss().has_closed_form_gradient()  # class dimension 1
    assert not MeanSquaredErrorLoss().has_closed_form_gradient()

    class Penalised(CrossEntropyLoss):  # a new value alone: its gradient is not the parent's
        def value(self, outputs, targets):
            return super().value(outputs, targets) + outputs.pow(2).mean()

    assert not Penalised().has_closed_form_gradient()
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    ((x, y),) = _batches(5, 3, count=1)
    assert _engine_path(model, AdamQLR(model, loss=Penalised()), x, y) == "autograd"
    replaced = CrossEntropyLoss()
    replaced.value = lambda outputs, targets: outputs.sum()  # on the instance
    assert not replaced.has_closed_form_gradient()
    with pytest.raises(NotImplementedError, match="MeanSquaredErrorLoss"):
        MeanSquaredErrorLoss().value_and_output_gradient(torch.zeros(2, 1), torch.zeros(2, 1))
