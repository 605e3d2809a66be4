"""Losses: values against torch, output-space curvature against ``torch.func.hessian``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _models import DTYPE, oracle_ce, oracle_se

from adamqlr.losses import LOSSES, CrossEntropyLoss, Loss, SquaredErrorLoss, get_loss
from adamqlr.testing import dense_output_hessian, quadratic


def _dense_output_quadratic(value, z, u, y) -> float:
    return quadratic(dense_output_hessian(value, z, y), u.reshape(-1))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(6, 4), (3, 5, 4)])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_value_and_curvature(shape, ignore_index):
    g = _gen()
    z = torch.randn(*shape, generator=g, dtype=DTYPE)
    y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    y.view(-1)[1] = ignore_index if ignore_index >= 0 else -100
    u = torch.randn(*shape, generator=g, dtype=DTYPE)
    loss = CrossEntropyLoss(ignore_index=ignore_index)
    loss.check_shapes(z, y)
    expected = F.cross_entropy(z.reshape(-1, shape[-1]), y.reshape(-1), ignore_index=ignore_index)
    assert torch.equal(loss.value(z, y), expected)
    dense = _dense_output_quadratic(oracle_ce(ignore_index), z, u, y)
    assert float(loss.output_quadratic(z, u, y)) == pytest.approx(dense, rel=1e-12, abs=1e-14)


def test_cross_entropy_ignored_positions_do_not_count():
    g = _gen(1)
    z = torch.randn(2, 3, 4, generator=g, dtype=DTYPE)
    y = torch.randint(0, 4, (2, 3), generator=g)
    y[1, 2] = -100
    u = torch.randn(2, 3, 4, generator=g, dtype=DTYPE)
    loss = CrossEntropyLoss()
    base = loss.output_quadratic(z, u, y)
    u2 = u.clone()
    u2[1, 2] += 1e3  # a padded position: changes nothing
    z2 = z.clone()
    z2[1, 2] -= 7.0
    assert torch.equal(loss.output_quadratic(z2, u2, y), base)
    assert torch.equal(loss.value(z2, y), loss.value(z, y))


def test_cross_entropy_all_ignored_gives_nan_value_and_zero_curvature():
    z = torch.randn(2, 3, dtype=DTYPE)
    y = torch.full((2,), -100)
    loss = CrossEntropyLoss()
    assert math.isnan(float(loss.value(z, y)))
    assert float(loss.output_quadratic(z, torch.ones_like(z), y)) == 0.0


@pytest.mark.parametrize("out_dim", [1, 3, 5])
def test_squared_error_convention_and_curvature(out_dim):
    g = _gen(2)
    z = torch.randn(6, out_dim, generator=g, dtype=DTYPE)
    t = torch.randn(6, out_dim, generator=g, dtype=DTYPE)
    u = torch.randn(6, out_dim, generator=g, dtype=DTYPE)
    loss = SquaredErrorLoss()
    value = loss.value(z, t)
    assert float(value) == pytest.approx(float(oracle_se(z, t)), rel=1e-14)
    # the docstring's statement: D/2 times torch's element-mean MSE
    assert float(value) == pytest.approx(out_dim / 2 * float(F.mse_loss(z, t)), rel=1e-14)
    dense = _dense_output_quadratic(oracle_se, z, u, t)
    assert float(loss.output_quadratic(z, u, t)) == pytest.approx(dense, rel=1e-12)


def test_squared_error_accepts_flat_targets_for_one_output():
    z = torch.randn(5, 1, dtype=DTYPE)
    t = torch.randn(5, dtype=DTYPE)
    loss = SquaredErrorLoss()
    loss.check_shapes(z, t)
    assert torch.equal(loss.value(z, t), loss.value(z, t[:, None]))


def test_squared_error_curvature_count_dilutes_only_the_curvature():
    z, t, u = (torch.randn(4, 2, dtype=DTYPE) for _ in range(3))
    plain, padded = SquaredErrorLoss(), SquaredErrorLoss(curvature_count=8)
    assert torch.equal(plain.value(z, t), padded.value(z, t))
    assert float(padded.output_quadratic(z, u, t)) == pytest.approx(
        float(plain.output_quadratic(z, u, t)) / 2, rel=1e-15
    )


@pytest.mark.parametrize(
    ("loss", "z", "y", "match"),
    [
        (CrossEntropyLoss(), torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), r"\(4, 3\)"),
        (CrossEntropyLoss(), torch.zeros(4), torch.zeros(4, dtype=torch.long), r"\(4,\)"),
        (CrossEntropyLoss(), torch.zeros(4, 3), torch.zeros(4), "float"),
        (SquaredErrorLoss(), torch.zeros(4, 3), torch.zeros(4, 2), r"\(4, 2\)"),
        (SquaredErrorLoss(), torch.zeros(4, 3), torch.zeros(4), r"\(4,\)"),
    ],
)
def test_shape_errors_name_the_shapes(loss, z, y, match):
    with pytest.raises(ValueError, match=match):
        loss.check_shapes(z, y)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: get_loss("hinge"), "'hinge'"),
        (lambda: get_loss(3), "3"),
        (lambda: get_loss(SquaredErrorLoss(), ignore_index=1), "ignore_index"),
        (lambda: CrossEntropyLoss(ignore_index=1.5), "1.5"),
        (lambda: CrossEntropyLoss(ignore_index=True), "True"),
        (lambda: SquaredErrorLoss(curvature_count=0), "0"),
        (lambda: SquaredErrorLoss(curvature_count=2.0), "2.0"),
    ],
)
def test_bad_loss_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_get_loss_names_and_objects():
    assert set(LOSSES) >= {"cross_entropy", "squared_error", "mse"}
    assert isinstance(get_loss("mse"), SquaredErrorLoss)
    ce = get_loss("cross_entropy", ignore_index=7)
    assert isinstance(ce, CrossEntropyLoss) and ce.ignore_index == 7
    obj = SquaredErrorLoss()
    assert get_loss(obj) is obj
    assert isinstance(obj, Loss)
    assert "ignore_index=7" in repr(ce)


@pytest.mark.parametrize("kind", ["cross_entropy", "squared_error"])
def test_output_bilinear_is_the_polarised_quadratic_and_symmetric(kind):
    torch.manual_seed(3)
    loss = get_loss(kind)
    outputs = torch.randn(6, 4, dtype=torch.float64)
    targets = torch.randint(0, 4, (6,)) if kind == "cross_entropy" else torch.randn(6, 4).double()
    u1, u2 = torch.randn_like(outputs), torch.randn_like(outputs)
    closed = loss.output_bilinear(outputs, u1, u2, targets)
    polarised = Loss.output_bilinear(loss, outputs, u1, u2, targets)  # the base-class default
    assert torch.allclose(closed, polarised, rtol=1e-12, atol=1e-14)
    assert torch.allclose(closed, loss.output_bilinear(outputs, u2, u1, targets), rtol=1e-12)
    assert torch.allclose(
        loss.output_bilinear(outputs, u1, u1, targets), loss.output_quadratic(outputs, u1, targets)
    )
