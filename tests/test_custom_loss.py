"""Any loss with the Fisher (GGN) curvature, and models that return dicts or tuples.

The oracle is a dense GGN ``J^T H_L J`` built independently: ``J`` by ``torch.func.jacrev`` of
the selected output over a flat parameter vector, ``H_L`` by ``torch.func.hessian`` of the user's
loss in the flattened outputs. Everything in float64, compared to 1e-10.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adamqlr import AdamQLR
from adamqlr.curvature import ggn_quadratic
from adamqlr.losses import (
    AutogradLoss,
    CrossEntropyLoss,
    MeanSquaredErrorLoss,
    TorchCrossEntropyLoss,
    get_loss,
)
from adamqlr.testing import dense_ggn, flat_params, quadratic

DTYPE = torch.float64


def _mlp(out: int = 3, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, out)).to(DTYPE)


class DictModel(nn.Module):
    """Returns ``{"logits": ..., "hidden": ...}`` (an auxiliary output the loss ignores)."""

    def __init__(self, out: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(5, 6)
        self.head = nn.Linear(6, out)
        self.to(DTYPE)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = torch.tanh(self.body(x))
        return {"hidden": h, "logits": self.head(h)}


class TupleModel(DictModel):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        out = super().forward(x)
        return out["logits"], out["hidden"]


def log_cosh(z: Tensor, y: Tensor) -> Tensor:
    """A user's loss with a non-constant output Hessian: mean of log cosh of the residual."""
    return torch.log(torch.cosh(z - y)).sum(-1).mean()


def _data(kind: str, n: int = 9, out: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g, dtype=DTYPE)
    if kind == "class":
        return x, torch.randint(0, out, (n,), generator=g)
    return x, torch.randn(n, out, generator=g, dtype=DTYPE)


# loss, the targets it needs, and the function of (outputs, targets) that the oracle uses
LOSSES: dict[str, tuple[Callable[[], object], str, Callable[[Tensor, Tensor], Tensor]]] = {
    "MSELoss": (nn.MSELoss, "real", lambda z, y: F.mse_loss(z, y)),
    "MSELoss-sum": (lambda: nn.MSELoss(reduction="sum"), "real", lambda z, y: ((z - y) ** 2).sum()),
    "CrossEntropyLoss": (nn.CrossEntropyLoss, "class", lambda z, y: F.cross_entropy(z, y)),
    "CrossEntropyLoss-smoothed": (
        lambda: nn.CrossEntropyLoss(label_smoothing=0.2),
        "class",
        lambda z, y: F.cross_entropy(z, y, label_smoothing=0.2),
    ),
    "HuberLoss": (
        lambda: nn.HuberLoss(delta=0.5),
        "real",
        lambda z, y: F.huber_loss(z, y, delta=0.5),
    ),
    "function": (lambda: log_cosh, "real", log_cosh),
}


def _dense_ggn_quadratic(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_value: Callable[[Tensor, Tensor], Tensor],
    direction: dict[str, Tensor],
    select: Callable[[object], Tensor] | None = None,
) -> float:
    """``d^T J^T H_L J d`` from :func:`adamqlr.testing.dense_ggn` (``jacrev`` and ``hessian``)."""
    v = flat_params(model).flatten(direction)
    return quadratic(dense_ggn(model, x, y, loss_value, select=select), v)


def _direction(model: nn.Module, seed: int = 2) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g, dtype=DTYPE) for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ggn_of_any_loss_equals_dense_ggn(name: str) -> None:
    make, targets, oracle = LOSSES[name]
    model = _mlp()
    x, y = _data(targets)
    loss = get_loss(make())  # type: ignore[arg-type]
    d = _direction(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    expected = _dense_ggn_quadratic(model, x, y, oracle, d)
    assert expected > 0
    for method in ("layerwise", "forward_ad", "func"):
        got = float(ggn_quadratic(model, params, d, x, y, loss, method=method))
        assert got == pytest.approx(expected, rel=1e-10), method
    # the value is the user's loss exactly
    assert float(loss.value(model(x), y)) == float(oracle(model(x), y))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_optimizer_step_uses_the_losss_ggn(name: str) -> None:
    """The step's ``d^T G d`` with the user's loss object equals the dense GGN along its ``d``."""
    make, targets, oracle = LOSSES[name]
    model = _mlp()
    x, y = _data(targets)
    expected_model = _mlp()  # same seed: same parameters
    opt = AdamQLR(model, make(), "fisher")  # type: ignore[arg-type]
    stats = opt.step(x, y)
    grads = {n: p.grad for n, p in model.named_parameters()}
    d = {n: g / (g.abs() + 1e-8) for n, g in grads.items()}  # Adam's first direction
    expected = _dense_ggn_quadratic(expected_model, x, y, oracle, d)
    assert stats.accepted
    assert stats.curvature == pytest.approx(expected, rel=1e-10)
    assert stats.loss == pytest.approx(float(oracle(expected_model(x), y)), rel=1e-14)


def test_torch_losses_map_to_closed_forms_where_exact() -> None:
    assert isinstance(get_loss(nn.MSELoss()), MeanSquaredErrorLoss)
    assert get_loss(nn.MSELoss(reduction="sum")).reduction == "sum"  # type: ignore[attr-defined]
    ce = get_loss(nn.CrossEntropyLoss(ignore_index=4))
    assert isinstance(ce, TorchCrossEntropyLoss) and ce.ignore_index == 4
    for other in (
        nn.CrossEntropyLoss(label_smoothing=0.1),
        nn.CrossEntropyLoss(weight=torch.ones(3)),
        nn.CrossEntropyLoss(reduction="sum"),
        nn.HuberLoss(),
        nn.L1Loss(),
        log_cosh,
    ):
        assert isinstance(get_loss(other), AutogradLoss), other
    assert isinstance(get_loss("cross_entropy"), CrossEntropyLoss)  # names unchanged


@pytest.mark.parametrize("ignore", [False, True])
def test_closed_forms_equal_double_backward(ignore: bool) -> None:
    """Fast paths and the autograd fallback agree, including class-dim-1 sequence logits."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 3, 5, generator=g, dtype=DTYPE)  # (N, C, T) as nn.CrossEntropyLoss wants
    y = torch.randint(0, 3, (4, 5), generator=g)
    if ignore:
        y[0, :2] = -100
    u1, u2 = torch.randn(2, 4, 3, 5, generator=g, dtype=DTYPE)
    module = nn.CrossEntropyLoss()
    fast, slow = get_loss(module), AutogradLoss(module)
    assert float(fast.value(z, y)) == float(module(z, y))
    for a, b in ((u1, u1), (u1, u2)):
        assert float(fast.output_bilinear(z, a, b, y)) == pytest.approx(
            float(slow.output_bilinear(z, a, b, y)), rel=1e-12
        )
    assert float(fast.output_quadratic(z, u1, y)) == pytest.approx(
        float(slow.output_quadratic(z, u1, y)), rel=1e-12
    )
    r = torch.randn(4, 3, 5, generator=g, dtype=DTYPE)
    mse, mse_slow = get_loss(nn.MSELoss()), AutogradLoss(nn.MSELoss())
    assert float(mse.output_quadratic(z, u1, r)) == pytest.approx(
        float(mse_slow.output_quadratic(z, u1, r)), rel=1e-12
    )


SELECTORS = {
    "dict-key": (DictModel, "logits", lambda o: o["logits"]),
    "dict-callable": (DictModel, lambda o: o["logits"] * 2.0, lambda o: o["logits"] * 2.0),
    "tuple-index": (TupleModel, 0, lambda o: o[0]),
}


@pytest.mark.parametrize("curvature", ["fisher", "hessian"])
@pytest.mark.parametrize("case", sorted(SELECTORS))
def test_models_returning_dicts_or_tuples(case: str, curvature: str) -> None:
    make, selector, select = SELECTORS[case]
    model, reference = make(), make()
    x, y = _data("class")
    opt = AdamQLR(model, nn.CrossEntropyLoss(), curvature, output=selector)
    stats = opt.step(x, y)
    assert stats.accepted
    assert stats.loss == pytest.approx(float(F.cross_entropy(select(reference(x)), y)), rel=1e-14)
    assert torch.equal(opt.last_outputs(), select(reference(x)).detach())
    if curvature == "fisher":
        grads = {n: p.grad for n, p in model.named_parameters()}
        d = {n: gr / (gr.abs() + 1e-8) for n, gr in grads.items()}
        expected = _dense_ggn_quadratic(reference, x, y, F.cross_entropy, d, select)
        assert stats.curvature == pytest.approx(expected, rel=1e-10)
    for _ in range(3):
        assert math.isfinite(opt.step(x, y).loss)


def test_unselected_dict_output_is_a_clear_error() -> None:
    x, y = _data("class")
    opt = AdamQLR(DictModel(), "cross_entropy")
    with pytest.raises(ValueError, match=r"dict with keys \['hidden', 'logits'\].*output="):
        opt.step(x, y)
    with pytest.raises(ValueError, match="not a key"):
        AdamQLR(DictModel(), "cross_entropy", output="scores").step(x, y)
    with pytest.raises(ValueError, match="out of range"):
        AdamQLR(TupleModel(), "cross_entropy", output=5).step(x, y)
    with pytest.raises(ValueError, match="invalid output"):
        AdamQLR(DictModel(), "cross_entropy", output=1.5)  # type: ignore[arg-type]


def test_loss_that_is_not_a_scalar_is_a_clear_error() -> None:
    x, y = _data("real")
    opt = AdamQLR(_mlp(), nn.MSELoss(reduction="none"))
    with pytest.raises(ValueError, match=r"returned \(9, 3\), expected a scalar"):
        opt.step(x, y)
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss(42)  # type: ignore[arg-type]
