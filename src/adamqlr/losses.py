"""Losses with their output-space Hessians in closed form.

A :class:`Loss` knows three things about a mini-batch: its value, how many examples (or tokens)
the mean runs over, and the quadratic form ``u^T H_L u`` of the Hessian of the *mean* loss with
respect to the network outputs, evaluated along an output-space vector ``u`` (the Jacobian-vector
product ``J d``). The last is what turns one forward-mode JVP into the Gauss-Newton curvature
``d^T G d = (J d)^T H_L (J d)``.

The scaling of ``u^T H_L u`` is derived from the same reduction that defines the value, so the two
can never disagree, whatever the output dimension (the official JAX code averages the MSE over
output dimensions but sums its curvature over them; we do not copy that).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CrossEntropyLoss", "Loss", "SquaredErrorLoss", "get_loss", "LOSSES"]


class Loss(ABC):
    """A mean loss over a mini-batch together with its output-space curvature."""

    #: Short name used in specs, records and error messages.
    name: str = "loss"

    @abstractmethod
    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Return the scalar mean loss of ``outputs`` against ``targets``."""

    @abstractmethod
    def output_quadratic(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:
        """Return ``u^T H_L u`` for the Hessian ``H_L`` of :meth:`value` w.r.t. ``outputs``.

        Args:
            outputs: Network outputs at which the Hessian is evaluated.
            u: A tangent of the same shape as ``outputs`` (typically ``J d``).
            targets: The targets the loss compares against.

        Returns:
            A scalar tensor, the quadratic form of the Hessian of the *mean* loss.
        """

    def output_bilinear(self, outputs: Tensor, u1: Tensor, u2: Tensor, targets: Tensor) -> Tensor:
        """Return ``u1^T H_L u2``, the bilinear form of the same output Hessian.

        The default polarises :meth:`output_quadratic`; the package's losses override it with
        their closed forms. K-FAC's two-dimensional quadratic model needs the cross terms.
        """
        both = self.output_quadratic(outputs, u1 + u2, targets)
        one = self.output_quadratic(outputs, u1, targets)
        two = self.output_quadratic(outputs, u2, targets)
        return 0.5 * (both - one - two)

    def check_shapes(self, outputs: Tensor, targets: Tensor) -> None:  # noqa: B027
        """Raise ``ValueError`` naming the shapes when outputs and targets cannot be compared.

        The base implementation accepts everything; subclasses override it.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy, averaged over examples (and token positions).

    Matches ``torch.nn.functional.cross_entropy(outputs, targets, ignore_index=...)`` with mean
    reduction: logits of shape ``(N, C)`` or ``(N, T, C)`` (class dimension last), integer
    targets of shape ``(N,)`` or ``(N, T)``. Positions whose target equals ``ignore_index`` (padded
    tokens) contribute neither to the value nor to the curvature, and the mean runs over the
    remaining positions only.

    The output Hessian per position is ``(diag(p) - p p^T) / n`` with ``p = softmax(z)`` and ``n``
    the number of counted positions, so ``u^T H_L u = sum_i (p_i . u_i^2 - (p_i . u_i)^2) / n``.

    Args:
        ignore_index: Target value that marks a position to skip (default -100, as in torch).
    """

    name = "cross_entropy"

    def __init__(self, ignore_index: int = -100) -> None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
        self.ignore_index = ignore_index

    def check_shapes(self, outputs: Tensor, targets: Tensor) -> None:
        """Check logits ``(*, C)`` against class-index targets ``(*)``, naming the bad value.

        Besides the shapes: the targets must be ``torch.long`` (or ``torch.uint8``) class
        indices in ``[0, C)`` or ``ignore_index``, and at least one must count. The range and
        the count need one device-to-host transfer of three numbers.

        Raises:
            ValueError: Naming ``targets`` and the bad shape, dtype, class index, or that every
                target is ``ignore_index`` (the mean over no positions is NaN).
        """
        if outputs.dim() < 2 or outputs.shape[:-1] != targets.shape:
            raise ValueError(
                "cross_entropy needs logits of shape (*, C) and integer targets of shape (*); got "
                f"outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)}"
            )
        if targets.is_floating_point():
            raise ValueError(
                f"invalid targets: cross_entropy needs integer class targets, got dtype "
                f"{targets.dtype}"
            )
        if targets.dtype not in (torch.long, torch.uint8):
            raise ValueError(
                f"invalid targets: dtype {targets.dtype} (cross_entropy needs torch.long class "
                "indices; use targets.long())"
            )
        if targets.device != outputs.device:
            raise ValueError(
                f"invalid targets: on device {targets.device}, the outputs on {outputs.device}"
            )
        classes = outputs.shape[-1]
        counted = targets != self.ignore_index
        indices = targets.where(counted, 0).long()
        low, high, count = torch.stack([indices.min(), indices.max(), counted.sum()]).tolist()
        if count == 0:
            raise ValueError(
                f"invalid targets: every one of the {targets.numel()} targets equals ignore_index "
                f"{self.ignore_index}, so the mean loss is over no positions"
            )
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"invalid targets: class index {bad} is out of range for {classes} classes "
                f"(expected 0 <= targets < {classes}, or ignore_index {self.ignore_index})"
            )

    def _mask(self, targets: Tensor) -> Tensor:
        return targets != self.ignore_index

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        return F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]),
            targets.reshape(-1),
            ignore_index=self.ignore_index,
        )

    def output_quadratic(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        pu = torch.softmax(outputs, dim=-1) * u  # p u, computed once
        per_position = (pu * u).sum(-1) - pu.sum(-1) ** 2
        mask = self._mask(targets)
        count = mask.sum().clamp_min(1)
        return torch.where(mask, per_position, 0.0).sum() / count

    def output_bilinear(  # noqa: D102
        self, outputs: Tensor, u1: Tensor, u2: Tensor, targets: Tensor
    ) -> Tensor:
        p = torch.softmax(outputs, dim=-1)
        per_position = (p * u1 * u2).sum(-1) - (p * u1).sum(-1) * (p * u2).sum(-1)
        mask = self._mask(targets)
        count = mask.sum().clamp_min(1)
        return torch.where(mask, per_position, torch.zeros_like(per_position)).sum() / count

    def __repr__(self) -> str:
        return f"CrossEntropyLoss(ignore_index={self.ignore_index})"


class SquaredErrorLoss(Loss):
    """Half the squared error, summed over output dimensions and averaged over examples.

    Convention (the paper's): ``L = (1/N) sum_n 1/2 ||y_n - t_n||^2`` for outputs ``y`` of shape
    ``(N, D)`` and targets of the same shape (``(N,)`` targets are accepted when ``D == 1``). For a
    single output this is half of ``torch.nn.functional.mse_loss``; for ``D > 1`` it is ``D/2``
    times it, because the squared error is summed over outputs.

    The output Hessian is ``I / N``, so ``u^T H_L u = ||u||^2 / N``: the same ``1/N`` as the value,
    for any ``D``.

    Args:
        curvature_count: If given, the curvature is divided by this many rows instead of the
            batch's own ``N``. This exists only to reproduce the official code's padding dilution
            (a batch of ``n`` real rows padded to ``curvature_count`` rows, whose Fisher term is
            under-counted by ``n / curvature_count``); leave it ``None`` for the algorithm as
            intended.
    """

    name = "squared_error"

    def __init__(self, curvature_count: int | None = None) -> None:
        if curvature_count is not None and (
            isinstance(curvature_count, bool)
            or not isinstance(curvature_count, int)
            or curvature_count < 1
        ):
            raise ValueError(
                f"curvature_count must be a positive int or None, got {curvature_count!r}"
            )
        self.curvature_count = curvature_count

    def _align(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if (
            targets.shape != outputs.shape
            and targets.dim() == 1
            and outputs.shape
            == (
                targets.shape[0],
                1,
            )
        ):
            return targets.unsqueeze(-1)
        return targets

    def check_shapes(self, outputs: Tensor, targets: Tensor) -> None:
        """Check real-valued targets shaped like the outputs, naming the bad value.

        Raises:
            ValueError: Naming ``targets`` and its shape, its device, or its dtype: integer,
                boolean or complex targets are refused rather than silently converted (class
                indices belong with ``cross_entropy``; convert regression targets with
                ``targets.float()``).
        """
        if self._align(outputs, targets).shape != outputs.shape:
            raise ValueError(
                "squared_error needs targets shaped like the outputs; got outputs "
                f"{tuple(outputs.shape)} and targets {tuple(targets.shape)}"
            )
        if not targets.is_floating_point():
            raise ValueError(
                f"invalid targets: dtype {targets.dtype} (squared_error needs real floating-point "
                "targets; integer targets are not converted silently: for class labels use "
                "loss='cross_entropy', for numbers use targets.to(outputs.dtype))"
            )
        if targets.device != outputs.device:
            raise ValueError(
                f"invalid targets: on device {targets.device}, the outputs on {outputs.device}"
            )

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        residual = outputs - self._align(outputs, targets)
        return 0.5 * residual.pow(2).reshape(outputs.shape[0], -1).sum(-1).mean()

    def output_quadratic(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        count = self.curvature_count if self.curvature_count is not None else outputs.shape[0]
        return u.pow(2).sum() / count

    def output_bilinear(  # noqa: D102
        self, outputs: Tensor, u1: Tensor, u2: Tensor, targets: Tensor
    ) -> Tensor:
        count = self.curvature_count if self.curvature_count is not None else outputs.shape[0]
        return (u1 * u2).sum() / count

    def __repr__(self) -> str:
        extra = "" if self.curvature_count is None else f"curvature_count={self.curvature_count}"
        return f"SquaredErrorLoss({extra})"


#: Names accepted wherever a loss is given as a string.
LOSSES: dict[str, type[Loss]] = {
    "cross_entropy": CrossEntropyLoss,
    "squared_error": SquaredErrorLoss,
    "mse": SquaredErrorLoss,
}


def get_loss(loss: str | Loss, **kwargs: object) -> Loss:
    """Return a :class:`Loss` from a name (``"cross_entropy"``, ``"squared_error"``/``"mse"``).

    Args:
        loss: A loss name or an existing :class:`Loss`, which is returned unchanged.
        **kwargs: Passed to the loss class (e.g. ``ignore_index``).

    Returns:
        The loss object.

    Raises:
        ValueError: If ``loss`` is neither a known name nor a :class:`Loss`.
    """
    if isinstance(loss, Loss):
        if kwargs:
            raise ValueError(
                f"loss options {sorted(kwargs)} given with a ready Loss object {loss!r}"
            )
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss](**kwargs)
    raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)} or a Loss instance")
