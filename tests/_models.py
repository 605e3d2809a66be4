"""Tiny float64 models, problems and loss oracles shared by the core's tests.

The oracles never call :mod:`adamqlr.curvature` or :mod:`adamqlr.losses`: the loss values are
written here again from torch primitives, the dense matrices are those of :mod:`adamqlr.testing`
(``torch.func.jacrev`` / ``torch.func.hessian`` or double backward over a flat parameter vector,
fed with these loss values), and the curvlinops operators come from curvlinops-for-pytorch 3.0.1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adamqlr.losses import CrossEntropyLoss, SquaredErrorLoss
from adamqlr.testing import flatten, without_running_stats

#: Every elementwise activation of the layer-wise plan, with non-default settings where it has
#: any (the hand-written JVP and the tape backward are checked against autograd on each).
ACTIVATIONS = [
    nn.ReLU(),
    nn.Tanh(),
    nn.Sigmoid(),
    nn.GELU(),
    nn.GELU(approximate="tanh"),
    nn.SiLU(),
    nn.LeakyReLU(0.2),
    nn.ELU(0.7),
    nn.Softplus(beta=2.0, threshold=1.0),
]

F64 = torch.float64

DTYPE = torch.float64


# ----------------------------------------------------------------------------------- models
def mlp(sizes=(5, 4, 3), act: type[nn.Module] = nn.Tanh, seed: int = 0) -> nn.Sequential:
    """Return a float64 MLP ``Linear -> act -> ... -> Linear`` with non-trivial weights."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(DTYPE)


class ConvBN(nn.Module):
    """A small conv net with batch norm: conv -> BN -> ReLU -> conv -> BN -> tanh -> linear."""

    def __init__(self, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(2)
        self.head = nn.Linear(2 * 2 * 2, classes)
        with torch.no_grad():  # batch-norm affine parameters away from (1, 0)
            for bn in (self.bn1, self.bn2):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
        self.to(DTYPE)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.tanh(self.bn2(self.conv2(x)))
        return self.head(x.flatten(1))


# ------------------------------------------------------------------------------- problems
def classification(model: nn.Module, n: int = 7, in_shape=(5,), classes: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *in_shape, generator=g, dtype=DTYPE)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def regression(n: int = 7, in_dim: int = 5, out_dim: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_dim, generator=g, dtype=DTYPE)
    y = torch.randn(n, out_dim, generator=g, dtype=DTYPE)
    return x, y


def sequence(n: int = 3, t: int = 4, in_dim: int = 5, classes: int = 3, ignore_index=-100, seed=1):
    """Inputs (N, T, F) and token targets (N, T) with a few positions set to ``ignore_index``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, in_dim, generator=g, dtype=DTYPE)
    y = torch.randint(0, classes, (n, t), generator=g)
    y[0, -1] = ignore_index
    y[1, -2:] = ignore_index
    return x, y


# ------------------------------------------------------------------------ oracle loss values
def oracle_ce(ignore_index: int = -100) -> Callable[[Tensor, Tensor], Tensor]:
    def value(z: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), ignore_index=ignore_index)

    return value


def oracle_se(z: Tensor, y: Tensor) -> Tensor:
    """The paper's convention: mean over examples of half the squared error summed over outputs."""
    return 0.5 * ((z - y) ** 2).sum() / z.shape[0]


# ------------------------------------------------------------------------- flat parameters
def random_direction(model: nn.Module, seed: int = 2) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()
    }


# ----------------------------------------------------------------------- curvlinops oracles
class _FlattenTokens(nn.Module):
    """Present ``(N, T, C)`` logits as ``(N*T, C)`` rows for ``nn.CrossEntropyLoss``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        z = self.inner(x)
        return z.reshape(-1, z.shape[-1])


def curvlinops_matrix(kind: str, model: nn.Module, x: Tensor, y: Tensor, loss: str, **kw):
    """Return a curvlinops 3.0.1 GGN or Hessian operator scaled to *our* loss convention.

    Cross-entropy: ``nn.CrossEntropyLoss(reduction="mean", ignore_index=...)`` is our loss exactly
    (one batch, so curvlinops' normalisation factor ``N_batch / N_data`` is 1). Squared error:
    curvlinops' ``nn.MSELoss(reduction="mean")`` is ``(1/(N D)) sum (z - t)^2`` over all ``N D``
    entries, while ours is ``(1/N) sum_n 1/2 ||z_n - t_n||^2 = (D/2) * MSE_mean``; both matrices
    are linear in the loss, so ours is ``D/2`` times curvlinops'.

    Returns:
        ``(operator, scale)`` with our matrix ``= scale * operator``.
    """
    from curvlinops import GGNLinearOperator, HessianLinearOperator

    model = without_running_stats(model)
    scale = 1.0
    if loss == "cross_entropy":
        loss_func = nn.CrossEntropyLoss(ignore_index=kw.get("ignore_index", -100))
        if y.dim() == 2:
            model, y = _FlattenTokens(model), y.reshape(-1)
    elif loss == "squared_error":
        loss_func = nn.MSELoss(reduction="mean")
        scale = y.shape[-1] / 2.0
    else:  # pragma: no cover - test helper misuse
        raise ValueError(loss)
    cls = {"fisher": GGNLinearOperator, "hessian": HessianLinearOperator}[kind]
    params = [p for p in model.parameters() if p.requires_grad]
    op = cls(model, loss_func, params, [(x, y)], check_deterministic=False)
    return op, scale


def curvlinops_quadratic(kind: str, model, x, y, loss: str, d: dict[str, Tensor], **kw) -> float:
    op, scale = curvlinops_matrix(kind, model, x, y, loss, **kw)
    v = flatten(d)
    return float(scale * (v @ (op @ v)))


# ------------------------------------------------------------------------ fault injection
class _NaNGrad(torch.autograd.Function):
    """Identity forward; the backward returns ``value`` everywhere (NaN or inf)."""

    @staticmethod
    def forward(ctx, x: Tensor, value: float) -> Tensor:  # noqa: D102
        ctx.value = value
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        return torch.full_like(g, ctx.value), None


class _NaNSecond(torch.autograd.Function):
    """Identity forward, identity backward; differentiating the backward again gives ``value``.

    The gradient stays finite, the Hessian-vector product through the gradient's graph does not.
    """

    @staticmethod
    def forward(ctx, x: Tensor, value: float) -> Tensor:  # noqa: D102
        ctx.value = value
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        return _NaNGrad.apply(g, ctx.value), None


class Faulty(nn.Module):
    """Wraps a model; on demand, one forward call of the next step goes bad.

    ``arm(call, value, where)`` makes the ``call``-th forward of the coming step (1 = the gradient
    pass; with the Fisher 2 = the curvature pass and 3 = the trial-loss pass; with the Hessian,
    which differentiates the gradient pass's graph again, 2 = the trial-loss pass) emit ``value``
    in its outputs (``where="output"``), in its gradient only (``where="grad"``), or only in the
    second derivative through the gradient's graph (``where="second"``).
    ``new_step()`` resets the call counter. Only one fault is armed at a time.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.fault: tuple[int, float, str] | None = None

    def new_step(self) -> None:
        self.calls = 0

    def arm(self, call: int, value: float, where: str = "output") -> None:
        self.fault = (call, value, where)

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        z = self.inner(x)
        if self.fault is not None and self.fault[0] == self.calls:
            _, value, where = self.fault
            self.fault = None
            if where == "grad":
                return _NaNGrad.apply(z, value)
            if where == "second":
                return _NaNSecond.apply(z, value)
            mask = torch.zeros_like(z)
            mask.view(-1)[0] = 1.0
            return z * (1.0 + mask * value)  # one entry bad, in the primal and in the tangent
        return z


def problem(kind: str, n: int = 6, seed: int = 1):
    """A float64 MLP, its batch and loss: ``"cross_entropy"`` (3 classes) or squared error."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g, dtype=F64)
    if kind == "cross_entropy":
        return (
            mlp((4, 5, 3), seed=seed),
            x,
            torch.randint(0, 3, (n,), generator=g),
            CrossEntropyLoss(),
        )
    return (
        mlp((4, 5, 2), seed=seed),
        x,
        torch.randn(n, 2, generator=g, dtype=F64),
        SquaredErrorLoss(),
    )


class CountingCE(CrossEntropyLoss):
    """Cross-entropy that counts its evaluations (one per forward pass of a step)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def value(self, outputs, targets):  # noqa: D102
        self.calls += 1
        return super().value(outputs, targets)

    def value_and_output_gradient(self, outputs, targets):  # noqa: D102
        self.calls += 1  # the gradient pass, when it needs no autograd graph
        return super().value_and_output_gradient(outputs, targets)
