"""Baydin et al.'s hypergradient-descent SGD ("SGD-HD"), the paper's "Baydin SGD" baseline.

The learning rate is itself learned by gradient descent on the loss: since
``d f(theta_t) / d alpha_{t-1} = -g_t^T g_{t-1}`` for
``theta_t = theta_{t-1} - alpha_{t-1} g_{t-1}``,

    alpha_t = alpha_{t-1} + beta g_t^T g_{t-1},
    theta_t = theta_{t-1} - alpha_t g_t,

with ``g_0 = 0``, so the first step uses ``alpha_0`` unchanged (Baydin et al. 2018, "Online Learning
Rate Adaptation with Hypergradient Descent", ICLR; the official AdamQLR code's ``BaydinSGD``). There
is no clipping: ``alpha`` may become negative.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["BaydinSGD"]


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"invalid {name}: {value!r} (expected a finite real number)")
    return float(value)


class BaydinSGD(torch.optim.Optimizer):
    """SGD whose learning rate follows the hypergradient ``g_t^T g_{t-1}``.

    Each parameter group carries one learning rate, updated from the inner product of the current
    and previous gradients over the group's parameters; ``group["lr"]`` always holds the learning
    rate of the latest step (``alpha_t``), so it is what a logger reads. With a single group (the
    default) this is exactly the official code's update over the flattened parameter vector.
    Nothing bounds ``alpha``: with a large ``hypergrad_lr`` it can grow past what the parameters'
    dtype holds, and the step then writes ``inf`` into them (where the gradient is not zero)
    instead of raising, so a training loop sees a non-finite loss and stops the run as diverged.

    Example::

        opt = BaydinSGD(model.parameters(), lr=1e-3, hypergrad_lr=1e-3)
        loss.backward()
        opt.step()
        opt.param_groups[0]["lr"]   # alpha_t

    Args:
        params: Parameters or parameter groups.
        lr: Initial learning rate ``alpha_0`` (finite).
        hypergrad_lr: Hypergradient learning rate ``beta`` (finite, >= 0).

    Raises:
        ValueError: If ``lr`` or ``hypergrad_lr`` is invalid.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        hypergrad_lr: float = 1e-3,
    ) -> None:
        lr = _finite("lr", lr)
        hypergrad_lr = _finite("hypergrad_lr", hypergrad_lr)
        if hypergrad_lr < 0.0:
            raise ValueError(f"invalid hypergrad_lr: {hypergrad_lr!r} (expected >= 0)")
        super().__init__(params, dict(lr=lr, hypergrad_lr=hypergrad_lr))
        for group in self.param_groups:
            _finite("lr", group["lr"])
            beta = _finite("hypergrad_lr", group["hypergrad_lr"])
            if beta < 0.0:
                raise ValueError(f"invalid hypergrad_lr: {beta!r} (expected >= 0)")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one step with the gradients in ``.grad``.

        Args:
            closure: Optional function that re-evaluates the model and returns the loss (called
                with gradients enabled before the step, as in ``torch.optim.SGD``).

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            live = [p for p in group["params"] if p.grad is not None]
            if not live:
                continue
            hypergrad = 0.0
            for p in live:
                prev = self.state[p].get("prev_grad")
                if prev is not None:
                    hypergrad += float((p.grad.double() * prev.double()).sum())
            group["lr"] = group["lr"] + group["hypergrad_lr"] * hypergrad
            for p in live:
                g = p.grad
                self.state[p]["prev_grad"] = g.detach().clone()
                _descend(p, g, group["lr"])
        return loss


def _descend(p: Tensor, g: Tensor, lr: float) -> None:
    """``p -= lr * g``, also when ``lr`` lies beyond the range of ``p``'s dtype.

    Without clipping, a large ``hypergrad_lr`` can grow ``alpha`` past what a float32 scalar
    holds, where ``add_(g, alpha=-lr)`` refuses the conversion. The run has then blown up:
    the product is formed in float64 and rounded to ``p``'s dtype (``inf`` where ``g`` is not
    zero, nothing added where it is), so the next loss is non-finite and the run ends as
    diverged, as the unclipped algorithm would.
    """
    if p.is_floating_point() and abs(lr) > torch.finfo(p.dtype).max:
        p.add_((g.double() * -lr).to(p.dtype))
    else:
        p.add_(g, alpha=-lr)
