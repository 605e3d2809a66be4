"""The Rosenbrock function as a two-parameter least-squares problem (the paper's demonstration).

The textbook function (Rosenbrock, 1960) is ``f(x, y) = (a - x)^2 + b (y - x^2)^2`` with
``a = 1`` and ``b = 100``; its minimum is ``f(1, 1) = 0`` at the end of a long curved valley. As
in the authors' camera-ready code, the optimisers see it written as least squares: the "network"
has the two parameters ``(x, y)`` and returns the two residuals

    r(x, y) = (a - x, sqrt(b) (y - x^2))          (shape (2, 1): two rows, one output each),

the targets are zeros, and the loss is :class:`adamqlr.losses.SquaredErrorLoss`, the mean over
rows of half the squared error. So the loss is ``(1/2) * sum_i r_i^2 / 2 = f / 4``, and the
generalised Gauss-Newton matrix of the least-squares form, ``G = J^T J / 2`` with
``J = dr/d(x, y)``, is available to AdamQLR's ``"fisher"`` curvature (the official code could only
use the Hessian here).

There is no data: every split is one dummy input row with the two zero targets, and every epoch is a
single full step, so the 200-epoch budget is 200 steps, started from ``(1, -1)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from adamqlr.profiles import Profile, parse_profile
from adamqlr.tasks.base import Split, Task, TaskData, TaskProfile

__all__ = ["Rosenbrock", "RosenbrockResiduals", "rosenbrock"]

#: The start of the plotted runs in the paper's figure.
START: tuple[float, float] = (1.0, -1.0)


def rosenbrock(x: Tensor | float, y: Tensor | float, a: float = 1.0, b: float = 100.0):
    """Return the textbook Rosenbrock function ``(a - x)^2 + b (y - x^2)^2`` (elementwise).

    Args:
        x: First coordinate(s); a float, a tensor or a numpy array.
        y: Second coordinate(s), broadcastable against ``x``.
        a: Position of the minimum along x (the minimum is at ``(a, a^2)``).
        b: Steepness of the valley walls.

    Returns:
        ``f(x, y)``, of the broadcast type and shape of the inputs.
    """
    return (a - x) ** 2 + b * (y - x**2) ** 2


class RosenbrockResiduals(nn.Module):
    """Two parameters ``(x, y)`` and the residuals ``(a - x, sqrt(b) (y - x^2))`` as output.

    Args:
        start: Initial ``(x, y)``.
        a: Rosenbrock's ``a``.
        b: Rosenbrock's ``b`` (> 0).
        dtype: Parameter dtype (float64 gives clean trajectories; float32 matches other tasks).

    Raises:
        ValueError: If ``b`` is not positive or ``start`` is not a pair of finite numbers.
    """

    def __init__(
        self,
        start: tuple[float, float] = START,
        a: float = 1.0,
        b: float = 100.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not (isinstance(b, (int, float)) and b > 0 and math.isfinite(b)):
            raise ValueError(f"invalid b: {b!r} (expected a positive finite number)")
        if len(start) != 2 or not all(math.isfinite(float(s)) for s in start):
            raise ValueError(f"invalid start: {start!r} (expected a pair of finite numbers)")
        self.a = float(a)
        self.b = float(b)
        self.x = nn.Parameter(torch.tensor(float(start[0]), dtype=dtype))
        self.y = nn.Parameter(torch.tensor(float(start[1]), dtype=dtype))

    def forward(self, inputs: Tensor) -> Tensor:
        """Return the residuals, shape ``(2, 1)``; ``inputs`` is a dummy and is ignored."""
        del inputs
        residuals = [self.a - self.x, math.sqrt(self.b) * (self.y - self.x**2)]
        return torch.stack(residuals).unsqueeze(-1)

    def position(self) -> tuple[float, float]:
        """Return the current ``(x, y)`` as floats."""
        return float(self.x.detach()), float(self.y.detach())

    def extra_repr(self) -> str:  # noqa: D102
        return f"a={self.a}, b={self.b}"


class Rosenbrock(Task):
    """The Rosenbrock task: least squares in two parameters, 200 full steps, no data.

    Args:
        a: Rosenbrock's ``a`` (1 in the paper).
        b: Rosenbrock's ``b`` (100 in the paper).
        start: The start ``(x, y)`` (``(1, -1)`` in the paper's figure), or ``None`` to draw each
            coordinate from a standard normal with the model seed (how the paper's tuning runs
            started).
    """

    name = "rosenbrock"
    title = "Rosenbrock"
    loss = "squared_error"
    classification = False

    def __init__(
        self, a: float = 1.0, b: float = 100.0, start: tuple[float, float] | None = START
    ) -> None:
        self.a = float(a)
        self.b = float(b)
        self.start = start

    def profile(self, name: Profile | str) -> TaskProfile:
        """Return the budget: 200 one-step epochs under every profile (it costs milliseconds).

        Raises:
            ValueError: If ``name`` names no profile (:func:`adamqlr.profiles.parse_profile`).
        """
        parse_profile(name)
        return TaskProfile(batch_size=1, epochs=200.0, time_limit_s=900.0, eval_every=1)

    def _split(self) -> Split:
        return Split(inputs=torch.zeros(1, 1), targets=torch.zeros(2, 1))

    def load_data(self, profile: Profile | str) -> TaskData:
        """Return three identical dummy splits (the loss does not depend on data).

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        self.profile(profile)
        split = self._split()
        return TaskData(
            train=split,
            val=split,
            test=split,
            meta={"dataset": "none (Rosenbrock function)", "a": self.a, "b": self.b},
        )

    def make_model(self, seed: int, profile: Profile | str) -> RosenbrockResiduals:
        """Return the residual model at the start point (drawn from ``seed`` if ``start`` is None).

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        self.profile(profile)
        if self.start is None:
            gen = torch.Generator().manual_seed(int(seed))
            x0, y0 = (float(v) for v in torch.randn(2, generator=gen, dtype=torch.float64))
            start = (x0, y0)
        else:
            start = self.start
        return RosenbrockResiduals(start=start, a=self.a, b=self.b)

    def batches(
        self, split: Split, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the whole problem once: one epoch is one full step."""
        del batch_size, generator
        yield split.inputs, split.targets


class RosenbrockRandomStart(Rosenbrock):
    """The Rosenbrock task started from a random point: each coordinate drawn N(0, 1) by the seed.

    How the paper's tuning trials start (the authors' code gives its search no start point, so
    the model's initialiser draws one); the chosen configuration then runs from ``(1, -1)`` on
    :class:`Rosenbrock`.
    """

    name = "rosenbrock-random-start"
    title = "Rosenbrock (random start)"

    def __init__(self, a: float = 1.0, b: float = 100.0) -> None:
        super().__init__(a=a, b=b, start=None)
