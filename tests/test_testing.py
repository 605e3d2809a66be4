"""The dense oracles of :mod:`adamqlr.testing` against each other, curvlinops and the library.

Each oracle is checked by one built another way: the GGN against the exact true Fisher (per-example
gradients only), against curvlinops and against the library's matrix-free products; the Hessian by
double backward against ``torch.func.hessian`` and against ``G + R``; the Jacobian against
``torch.autograd.functional.jacobian``; the output Hessian against the losses' closed forms; the
Gram matrix against ``V^T G V``. Each exact comparison is in float64 to 1e-12 (relative to the
matrix's scale), and a perturbed input must *not* match, so that no check compares a quantity with
itself.
"""

from __future__ import annotations

import pytest
import torch
from _models import ConvBN, classification, curvlinops_quadratic, mlp, problem, random_direction
from torch import nn

from adamqlr.curvature import ggn_quadratic, hessian_quadratic
from adamqlr.losses import CrossEntropyLoss, SquaredErrorLoss
from adamqlr.testing import (
    dense_empirical_fisher,
    dense_fisher,
    dense_ggn,
    dense_gradient,
    dense_hessian,
    dense_jacobian,
    dense_output_hessian,
    dense_residual_term,
    flat_params,
    flatten,
    ggn_gram,
    named_params,
    per_example_grads,
    quadratic,
)

F64 = torch.float64
KINDS = ["cross_entropy", "squared_error"]


def close(a: float, b: float, tol: float = 1e-12) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


# ------------------------------------------------------------------- against the library
@pytest.mark.parametrize("kind", KINDS)
def test_dense_products_equal_the_library_curvature_engine_to_1e_12(kind):
    model, x, y, loss = problem(kind)
    params = named_params(model)
    ggn, hess = dense_ggn(model, x, y, loss), dense_hessian(model, x, y, loss)
    for seed in (2, 3, 4):
        d = random_direction(model, seed=seed)
        for method in ("layerwise", "func"):
            ours = ggn_quadratic(model, params, d, x, y, loss, method=method).item()
            assert close(quadratic(ggn, d), ours), (method, quadratic(ggn, d), ours)
        assert close(quadratic(hess, d), hessian_quadratic(model, params, d, x, y, loss).item())
    # a perturbed matrix must not match
    d = random_direction(model, seed=2)
    assert not close(
        quadratic(ggn * (1 + 1e-9), d), ggn_quadratic(model, params, d, x, y, loss).item()
    )


@pytest.mark.parametrize("kind", KINDS)
def test_dense_matrices_agree_with_curvlinops(kind):
    model, x, y, loss = problem(kind)
    fp = flat_params(model)
    d = random_direction(model)
    v = fp.flatten(d)
    ggn, hess = dense_ggn(model, x, y, loss), dense_hessian(model, x, y, loss)
    assert float(v @ ggn @ v) == pytest.approx(
        curvlinops_quadratic("fisher", model, x, y, kind, d), rel=1e-10
    )
    assert float(v @ hess @ v) == pytest.approx(
        curvlinops_quadratic("hessian", model, x, y, kind, d), rel=1e-10
    )
    assert torch.allclose(ggn, ggn.T) and torch.linalg.eigvalsh(ggn).min() > -1e-12


def test_dense_ggn_through_batch_norm_equals_the_library():
    model = ConvBN()
    x, y = classification(model, n=5, in_shape=(2, 5, 5))
    loss = CrossEntropyLoss()
    d = random_direction(model)
    ours = ggn_quadratic(model, named_params(model), d, x, y, loss).item()
    assert close(quadratic(dense_ggn(model, x, y, loss), d), ours, 1e-10)


# ------------------------------------------------------------------- against each other
@pytest.mark.parametrize("kind", KINDS)
def test_true_fisher_equals_ggn_but_the_empirical_fisher_does_not(kind):
    model, x, y, loss = problem(kind)
    ggn = dense_ggn(model, x, y, loss)
    assert torch.allclose(dense_fisher(model, x, loss), ggn, atol=1e-12)
    assert not torch.allclose(dense_empirical_fisher(model, x, y, loss), ggn, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_hessian_two_ways_and_split_into_ggn_plus_residual(kind):
    model, x, y, loss = problem(kind)
    h = dense_hessian(model, x, y, loss)
    scale = h.abs().max()
    assert torch.allclose(h, dense_hessian(model, x, y, loss, method="func"), atol=1e-12 * scale)
    g, r = dense_ggn(model, x, y, loss), dense_residual_term(model, x, y, loss)
    assert torch.allclose(h, g + r, atol=1e-12 * scale)
    assert not torch.allclose(h, g, atol=1e-6 * scale)  # the residual term is not negligible
    with pytest.raises(ValueError, match="invalid method"):
        dense_hessian(model, x, y, loss, method="fd")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_jacobian_output_hessian_and_gradient_against_autograd(kind):
    model, x, y, loss = problem(kind)
    fp = flat_params(model)

    def outputs(flat):
        return torch.func.functional_call(model, fp.unflatten(flat), (x,)).reshape(-1)

    expected = torch.autograd.functional.jacobian(outputs, fp.vector)
    assert torch.allclose(dense_jacobian(model, x), expected, atol=1e-14)
    z = model(x).detach()
    h_out = dense_output_hessian(loss, z, y)
    u = torch.randn(z.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    closed = loss.output_quadratic(z, u, y).item()  # the library's closed form
    assert close(float(u.reshape(-1) @ h_out @ u.reshape(-1)), closed)
    model.zero_grad()
    loss.value(model(x), y).backward()
    backward = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(dense_gradient(model, x, y, loss), backward, atol=1e-14)
    # a plain callable works as the loss too
    assert torch.equal(dense_ggn(model, x, y, loss.value), dense_ggn(model, x, y, loss))


@pytest.mark.parametrize("kind", KINDS)
def test_ggn_gram_equals_v_transpose_dense_ggn_v(kind):
    model, x, y, loss = problem(kind)
    fp = flat_params(model)
    vs = [fp.flatten(random_direction(model, seed=s)) for s in (2, 3, 4)]
    gram = ggn_gram(model, x, y, loss, vs)
    v = torch.stack(vs).T
    expected = v.T @ dense_ggn(model, x, y, loss) @ v
    assert torch.allclose(gram, expected, atol=1e-12 * expected.abs().max())
    assert torch.allclose(gram, gram.T)


def test_evaluating_at_other_parameters_equals_moving_the_model():
    model, x, y, loss = problem("cross_entropy")
    fp = flat_params(model)
    at = fp.vector + 0.1
    moved = mlp((4, 5, 3), seed=1)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.1)
    assert torch.equal(dense_ggn(model, x, y, loss, at=at), dense_ggn(moved, x, y, loss))
    assert torch.equal(dense_hessian(model, x, y, loss, at=at), dense_hessian(moved, x, y, loss))
    assert torch.equal(dense_gradient(model, x, y, loss, at=at), dense_gradient(moved, x, y, loss))
    assert not torch.equal(dense_ggn(model, x, y, loss), dense_ggn(moved, x, y, loss))
    with pytest.raises(ValueError, match="invalid at"):
        dense_ggn(model, x, y, loss, at=at[:-1])


# ------------------------------------------------------------- flat parameters, gradients
def test_per_example_grads_average_to_the_batch_gradient_and_unflatten():
    model, x, y, loss = problem("cross_entropy")
    grads = per_example_grads(model, x, y, loss, chunk_size=4)
    loss.value(model(x), y).backward()
    fp = flat_params(model)
    batch = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert grads.shape == (6, fp.vector.numel())
    assert torch.allclose(grads.mean(0), batch)
    named = fp.unflatten(grads)
    assert named["0.weight"].shape == (6, 5, 4)
    assert torch.equal(fp.flatten(named, batch_dims=1), grads)
    assert torch.equal(flatten(named_params(model)), fp.vector)
    d = random_direction(model)
    assert quadratic(torch.eye(fp.vector.numel(), dtype=F64), d) == pytest.approx(
        float(fp.flatten(d).pow(2).sum())
    )
    with pytest.raises(ValueError, match="last dimension 3"):
        fp.unflatten(torch.zeros(3, dtype=F64))


def test_per_example_oracles_refuse_buffers_and_unknown_losses():
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double()
    x, y = torch.randn(5, 4, dtype=F64), torch.randint(0, 3, (5,))
    with pytest.raises(ValueError, match="buffers"):
        per_example_grads(bn, x, y, CrossEntropyLoss())
    with pytest.raises(ValueError, match="buffers"):
        dense_fisher(bn, x, CrossEntropyLoss())

    class Other(CrossEntropyLoss.__mro__[1]):
        def value(self, outputs, targets):
            return outputs.sum()

        def output_quadratic(self, outputs, u, targets):
            return u.sum()

    model, x, y, _ = problem("cross_entropy")
    with pytest.raises(ValueError, match="invalid loss"):
        per_example_grads(model, x, y, Other())
    with pytest.raises(ValueError, match="curvature_count"):
        per_example_grads(
            model, x, torch.randn(6, 3, dtype=F64), SquaredErrorLoss(curvature_count=2)
        )
