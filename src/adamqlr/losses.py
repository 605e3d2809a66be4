"""Losses with their output-space Hessians in closed form.

A :class:`Loss` knows three things about a mini-batch: its value, how many examples (or tokens)
the mean runs over, and the quadratic form ``u^T H_L u`` of the Hessian of the *mean* loss with
respect to the network outputs, evaluated along an output-space vector ``u`` (the Jacobian-vector
product ``J d``). The last is what turns one forward-mode JVP into the Gauss-Newton curvature
``d^T G d = (J d)^T H_L (J d)``.

The scaling of ``u^T H_L u`` is derived from the same reduction that defines the value, so the two
can never disagree, whatever the output dimension (the official JAX code averages the MSE over
output dimensions but sums its curvature over them; we do not copy that).

Any other loss -- a ``torch.nn`` loss module (``nn.MSELoss``, ``nn.CrossEntropyLoss``,
``nn.HuberLoss``, ...) or a function ``loss(outputs, targets) -> scalar`` -- is wrapped by
:func:`get_loss` in an :class:`AutogradLoss`, whose output Hessian is exact, by double backward
on the outputs. ``nn.MSELoss`` and ``nn.CrossEntropyLoss`` with settings that have a closed form
keep the fast path (:class:`MeanSquaredErrorLoss`, :class:`TorchCrossEntropyLoss`). The output
quadratic forms are accumulated in float32 or wider (:func:`adamqlr.precision.wide`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adamqlr.precision import cpu_number, wide

__all__ = [
    "AutogradLoss",
    "CrossEntropyLoss",
    "LOSSES",
    "Loss",
    "MeanSquaredErrorLoss",
    "SquaredErrorLoss",
    "TorchCrossEntropyLoss",
    "get_loss",
]


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

    def value_and_output_gradient(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Return :meth:`value` and its gradient with respect to ``outputs``, without autograd.

        Offered where :meth:`has_closed_form_gradient` says so, for float32 and float64 outputs. The
        package's cross-entropy and squared error run the kernels that autograd runs for their
        backward, so both numbers are those of ``value(outputs, targets)`` and its
        ``backward()``. A layer-wise network then needs no autograd graph for its gradient pass
        (:class:`adamqlr.curvature.LayerwiseFisher`).

        Raises:
            NotImplementedError: If the loss has no closed-form gradient.
        """
        raise NotImplementedError(f"{type(self).__name__} has no closed-form output gradient")

    def has_closed_form_gradient(self) -> bool:
        """Whether :meth:`value_and_output_gradient` gives the gradient of :meth:`value`.

        True when the class that defines :meth:`value_and_output_gradient` (other than this
        base) also defines the :meth:`value` in force: a subclass that changes the value alone
        (a penalty, label smoothing) falls back to autograd rather than get its parent's
        gradient. If false, an optimiser differentiates :meth:`value` with autograd.
        """
        if "value" in vars(self):  # replaced on the instance
            return False
        mro = type(self).__mro__
        gradient_from = next(c for c in mro if "value_and_output_gradient" in vars(c))
        value_from = next(c for c in mro if "value" in vars(c))
        return gradient_from is not Loss and gradient_from is value_from

    def check_shapes(self, outputs: Tensor, targets: Tensor) -> None:  # noqa: B027
        """Raise ``ValueError`` naming the shapes when outputs and targets cannot be compared.

        The base implementation accepts everything; subclasses override it. It makes every
        check, those of :meth:`check_layout` and of :meth:`check_values`.
        """

    def check_layout(self, outputs: Tensor, targets: Tensor) -> None:
        """Make the checks of :meth:`check_shapes` that read no tensor's values (no host sync).

        Shapes, dtypes, devices. The default is :meth:`check_shapes` itself (for a loss that
        does not split its checks, every check is made here).
        """
        self.check_shapes(outputs, targets)

    def check_values(self, outputs: Tensor, targets: Tensor) -> None:  # noqa: B027
        """Make the checks of :meth:`check_shapes` that read the targets' values (one host sync).

        E.g. class indices in range. An optimiser step makes them only when the loss fails or
        comes out non-finite on the CPU (where an out-of-range class index makes
        :meth:`value` raise, and no valid one a NaN), so that a valid batch costs no
        transfer; on other devices (where a bad index is a device-side assert) before
        :meth:`value`. The default accepts everything.
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
        CrossEntropyLoss.check_layout(self, outputs, targets)
        CrossEntropyLoss.check_values(self, outputs, targets)

    def check_layout(self, outputs: Tensor, targets: Tensor) -> None:
        """Check shapes, dtype and device as :meth:`check_shapes` does (no host sync)."""
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

    def check_values(self, outputs: Tensor, targets: Tensor) -> None:
        """Check class range and count as :meth:`check_shapes` does (one host sync)."""
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
        if outputs.dim() == 2 and targets.dim() == 1:  # no reshapes (a dispatch each)
            return F.cross_entropy(outputs, targets, ignore_index=self.ignore_index)
        return F.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]),
            targets.reshape(-1),
            ignore_index=self.ignore_index,
        )

    def value_and_output_gradient(  # noqa: D102
        self, outputs: Tensor, targets: Tensor
    ) -> tuple[Tensor, Tensor]:
        # F.cross_entropy is log_softmax then nll_loss; autograd's backward is nll_loss_backward
        # then _log_softmax_backward_data, i.e. (softmax - one_hot) / n on the counted positions.
        nll = torch.ops.aten
        flat = outputs.dim() == 2  # no reshapes (a few us each on a small batch)
        logits = outputs if flat else outputs.reshape(-1, outputs.shape[-1])
        classes = targets if targets.dim() == 1 else targets.reshape(-1)
        log_p = torch.log_softmax(logits, 1)
        value, total = nll.nll_loss_forward(log_p, classes, None, 1, self.ignore_index)
        grad = nll.nll_loss_backward(_one(value), log_p, classes, None, 1, self.ignore_index, total)
        grad = nll._log_softmax_backward_data(grad, log_p, 1, log_p.dtype)
        return value, grad if flat else grad.reshape(outputs.shape)

    def output_quadratic(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        outputs, u = wide(outputs), wide(u)
        pu = torch.softmax(outputs, dim=-1) * u  # p u, computed once
        per_position = (pu * u).sum(-1) - pu.sum(-1) ** 2
        mask = self._mask(targets)
        count = mask.sum().clamp_min(1)
        return torch.where(mask, per_position, 0.0).sum() / count

    def output_bilinear(  # noqa: D102
        self, outputs: Tensor, u1: Tensor, u2: Tensor, targets: Tensor
    ) -> Tensor:
        outputs, u1, u2 = wide(outputs), wide(u1), wide(u2)
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
        return _half_mean_square(outputs - self._align(outputs, targets))

    def value_and_output_gradient(  # noqa: D102
        self, outputs: Tensor, targets: Tensor
    ) -> tuple[Tensor, Tensor]:
        residual = outputs - self._align(outputs, targets)
        value = _half_mean_square(residual)
        # Autograd's backward of the mean, the halving and the square: (1/N) * 0.5 * 2 r, where
        # the factors of two are exact, so fl(1/N) * r (with 1/N rounded in the outputs' dtype).
        return value, residual.mul_(_inverse(outputs.shape[0], residual))

    def output_quadratic(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        count = self.curvature_count if self.curvature_count is not None else outputs.shape[0]
        return _divided(wide(u).pow(2).sum(), count)

    def output_bilinear(  # noqa: D102
        self, outputs: Tensor, u1: Tensor, u2: Tensor, targets: Tensor
    ) -> Tensor:
        count = self.curvature_count if self.curvature_count is not None else outputs.shape[0]
        return _divided((wide(u1) * wide(u2)).sum(), count)

    def __repr__(self) -> str:
        extra = "" if self.curvature_count is None else f"curvature_count={self.curvature_count}"
        return f"SquaredErrorLoss({extra})"


def _half_mean_square(residual: Tensor) -> Tensor:
    """Return ``(1/N) sum_n 1/2 ||r_n||^2`` for residuals ``r`` of shape ``(N, ...)``."""
    half = _halved(residual.pow(2))
    if half.dim() != 2:  # (N, D) already: no reshape (a dispatch)
        half = half.reshape(residual.shape[0], -1)
    return half.sum(-1).mean()


def _one(like: Tensor) -> Tensor:
    """Return a 0-d ``1`` of ``like``'s dtype and device (kept, on the CPU: no new tensor)."""
    if like.is_cpu and (like.dtype is torch.float32 or like.dtype is torch.float64):
        return cpu_number(1.0, like.dtype)
    return torch.ones((), dtype=like.dtype, device=like.device)


def _inverse(count: int, like: Tensor) -> Tensor:
    """Return ``1 / count`` as a 0-d tensor of ``like``'s dtype, divided in that dtype.

    As autograd's backward of a mean computes it (the number ``1 / count`` rounded once to the
    dtype, not first to float64).
    """
    return torch.div(_one(like), count)


def _divided(total: Tensor, count: int) -> Tensor:
    """Return ``total / count``.

    [loops] On the CPU, ``total / count`` wraps ``count`` in a 0-d tensor and converts it to
    ``total``'s dtype (``aten::to``, ``_to_copy``, ``copy_``: a few us) before the division;
    for float32 and float64 the converted divisor is kept
    (:func:`adamqlr.precision.cpu_number`) and the same division runs without the conversion.
    """
    if total.is_cpu and (total.dtype is torch.float32 or total.dtype is torch.float64):
        return total / cpu_number(count, total.dtype)
    return total / count


def _halved(x: Tensor) -> Tensor:
    """Return ``0.5 * x``.

    [loops] The same saving as :func:`_divided` (about 4 us a call on the CPU, in the forward
    and again in the backward): for float32 and float64 CPU tensors the factor is a kept 0-d
    tensor of their dtype. The numbers are the same, since the CPU kernels multiply by a Python
    number in the tensor's own dtype, and 0.5 is exact in every dtype.
    """
    if x.is_cpu and (x.dtype is torch.float32 or x.dtype is torch.float64):
        return x * cpu_number(0.5, x.dtype)
    return 0.5 * x


class TorchCrossEntropyLoss(CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss()`` exactly: the class dimension is dimension 1.

    Logits ``(N, C)`` or ``(N, C, d1, ...)`` and integer targets ``(N,)`` or ``(N, d1, ...)``,
    mean over the counted positions, ``ignore_index`` skipped; the value is torch's own
    ``F.cross_entropy``, the curvature the closed form of :class:`CrossEntropyLoss`. What
    :func:`get_loss` returns for ``nn.CrossEntropyLoss`` with ``reduction="mean"``, no class
    weights and no label smoothing.
    """

    name = "torch_cross_entropy"

    def check_shapes(self, outputs: Tensor, targets: Tensor) -> None:
        """Check logits ``(N, C, ...)`` against class-index targets ``(N, ...)``.

        Then every check of :meth:`CrossEntropyLoss.check_shapes` (dtype, device, class range,
        at least one counted target) on the class-last view.

        Raises:
            ValueError: Naming the bad shape or value; class-probability (floating) targets
                included, which have no closed form here (pass the loss as a function instead to
                get an :class:`AutogradLoss`).
        """
        self._check_class_dim(outputs, targets)
        super().check_shapes(self._last(outputs), targets)

    def check_layout(self, outputs: Tensor, targets: Tensor) -> None:  # noqa: D102
        self._check_class_dim(outputs, targets)
        super().check_layout(self._last(outputs), targets)

    def check_values(self, outputs: Tensor, targets: Tensor) -> None:  # noqa: D102
        super().check_values(self._last(outputs), targets)

    @staticmethod
    def _check_class_dim(outputs: Tensor, targets: Tensor) -> None:
        if (
            outputs.dim() < 2
            or targets.dim() != outputs.dim() - 1
            or targets.shape[:1] != outputs.shape[:1]
            or targets.shape[1:] != outputs.shape[2:]
        ):
            raise ValueError(
                "nn.CrossEntropyLoss needs logits of shape (N, C, ...) and integer targets of "
                f"shape (N, ...); got outputs {tuple(outputs.shape)} and targets "
                f"{tuple(targets.shape)}"
            )

    @staticmethod
    def _last(t: Tensor) -> Tensor:
        return t if t.dim() == 2 else t.movedim(1, -1)

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        return F.cross_entropy(outputs, targets, ignore_index=self.ignore_index)

    def output_quadratic(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        return super().output_quadratic(self._last(outputs), self._last(u), targets)

    def output_bilinear(  # noqa: D102
        self, outputs: Tensor, u1: Tensor, u2: Tensor, targets: Tensor
    ) -> Tensor:
        last = self._last
        return super().output_bilinear(last(outputs), last(u1), last(u2), targets)

    def __repr__(self) -> str:
        return f"TorchCrossEntropyLoss(ignore_index={self.ignore_index})"


class MeanSquaredErrorLoss(Loss):
    """``torch.nn.MSELoss(reduction=...)`` exactly: the squared error over every element.

    ``reduction="mean"``: ``L = sum (y - t)^2 / numel``, output Hessian ``2 I / numel``;
    ``reduction="sum"``: ``L = sum (y - t)^2``, output Hessian ``2 I``. Unlike torch, targets must
    have the outputs' shape (torch broadcasts ``(N, 1)`` against ``(N,)`` to ``(N, N)`` with a
    warning, which is rarely what was meant).

    Args:
        reduction: ``"mean"`` or ``"sum"``.
    """

    name = "mse_loss"

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"invalid reduction: {reduction!r} (expected 'mean' or 'sum')")
        self.reduction = reduction

    def check_shapes(self, outputs: Tensor, targets: Tensor) -> None:  # noqa: D102
        if targets.shape != outputs.shape:
            raise ValueError(
                "nn.MSELoss needs targets shaped like the outputs; got outputs "
                f"{tuple(outputs.shape)} and targets {tuple(targets.shape)}"
            )

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        return F.mse_loss(outputs, targets, reduction=self.reduction)

    def _scale(self, outputs: Tensor) -> float:
        return 2.0 / outputs.numel() if self.reduction == "mean" else 2.0

    def output_quadratic(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        return wide(u).pow(2).sum() * self._scale(outputs)

    def output_bilinear(  # noqa: D102
        self, outputs: Tensor, u1: Tensor, u2: Tensor, targets: Tensor
    ) -> Tensor:
        return (wide(u1) * wide(u2)).sum() * self._scale(outputs)

    def __repr__(self) -> str:
        return f"MeanSquaredErrorLoss(reduction={self.reduction!r})"


class AutogradLoss(Loss):
    """Any scalar loss ``fn(outputs, targets)``, its output-space Hessian exact by autograd.

    ``u^T H_L u`` is a Hessian-vector product on the outputs: the gradient of ``fn`` with respect
    to the (detached) outputs, with its graph, is differentiated once more along ``u`` (double
    backward), and ``u . (H_L u)`` is summed in float32 or wider. Its cost is about two backward
    passes through the *loss* only (not the network), on tensors the size of the outputs. The
    Gauss-Newton matrix ``J^T H_L J`` it gives is positive semi-definite when ``fn`` is convex
    in the outputs (``nn.MSELoss``, ``nn.CrossEntropyLoss``, ``nn.HuberLoss``, ...); it equals the
    Fisher only for losses that are negative log-likelihoods of exponential families in natural
    parameters.

    Args:
        fn: ``fn(outputs, targets)`` returning a 0-d tensor (a ``torch.nn`` loss module or any
            function); it must be twice differentiable in ``outputs`` (piecewise, like
            ``nn.HuberLoss``, is fine) and is assumed to be a *mean* (or sum) over the batch as
            the user wants it: the curvature is that of exactly this value.
        name: Short name for records and messages (default: the class or function name).

    Raises:
        ValueError: If ``fn`` is not callable.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: str | None = None) -> None:
        if not callable(fn):
            raise ValueError(f"invalid loss: {fn!r} (expected a callable loss(outputs, targets))")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__

    def value(self, outputs: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        value = self.fn(outputs, targets)
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"loss {self.name!r} returned {shape}, expected a scalar tensor (use a mean or "
                "sum reduction)"
            )
        return value.reshape(())

    def output_hvp(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:
        """Return ``H_L u``, the output Hessian of :meth:`value` applied to ``u`` (no graph)."""
        with torch.enable_grad():
            z = outputs.detach().requires_grad_(True)
            value = self.value(z, targets)
            (g,) = torch.autograd.grad(value, z, create_graph=True, allow_unused=True)
            if g is None or not g.requires_grad:  # the loss is affine in the outputs
                return torch.zeros_like(outputs)
            (hu,) = torch.autograd.grad(g, z, grad_outputs=u.detach(), allow_unused=True)
        return torch.zeros_like(outputs) if hu is None else hu.detach()

    def output_quadratic(self, outputs: Tensor, u: Tensor, targets: Tensor) -> Tensor:  # noqa: D102
        return (wide(u) * wide(self.output_hvp(outputs, u, targets))).sum()

    def output_bilinear(  # noqa: D102
        self, outputs: Tensor, u1: Tensor, u2: Tensor, targets: Tensor
    ) -> Tensor:
        return (wide(u1) * wide(self.output_hvp(outputs, u2, targets))).sum()

    def __repr__(self) -> str:
        return f"AutogradLoss({self.fn!r})"


#: Names accepted wherever a loss is given as a string.
LOSSES: dict[str, type[Loss]] = {
    "cross_entropy": CrossEntropyLoss,
    "squared_error": SquaredErrorLoss,
    "mse": SquaredErrorLoss,
}


def _closed_form(module: nn.Module) -> Loss | None:
    """Return the closed-form :class:`Loss` exactly equivalent to a torch loss module, or None."""
    if type(module) is nn.MSELoss and module.reduction in ("mean", "sum"):
        return MeanSquaredErrorLoss(module.reduction)
    if (
        type(module) is nn.CrossEntropyLoss
        and module.reduction == "mean"
        and module.weight is None
        and module.label_smoothing == 0.0
    ):
        return TorchCrossEntropyLoss(ignore_index=module.ignore_index)
    return None


def get_loss(
    loss: str | Loss | nn.Module | Callable[[Tensor, Tensor], Tensor], **kwargs: object
) -> Loss:
    """Return a :class:`Loss` from a name, a torch loss module or a function.

    Args:
        loss: A loss name (``"cross_entropy"``, ``"squared_error"``/``"mse"``), an existing
            :class:`Loss` (returned unchanged), a ``torch.nn`` loss module, or a function
            ``loss(outputs, targets) -> 0-d tensor``. ``nn.MSELoss`` (``reduction`` "mean" or
            "sum") and ``nn.CrossEntropyLoss`` (``reduction="mean"``, no ``weight``, no label
            smoothing) map to the exactly equivalent closed forms :class:`MeanSquaredErrorLoss`
            and :class:`TorchCrossEntropyLoss`; any other module or function becomes an
            :class:`AutogradLoss` (output Hessian by double backward). Note ``"mse"`` is the
            paper's half squared error summed over outputs, not ``nn.MSELoss``.
        **kwargs: Passed to the loss class of a name (e.g. ``ignore_index``).

    Returns:
        The loss object.

    Raises:
        ValueError: If ``loss`` is an unknown name or not callable, or options come with an
            object.
    """
    if isinstance(loss, Loss):
        if kwargs:
            raise ValueError(
                f"loss options {sorted(kwargs)} given with a ready Loss object {loss!r}"
            )
        return loss
    if isinstance(loss, str):
        if loss in LOSSES:
            return LOSSES[loss](**kwargs)
        raise ValueError(
            f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}, a Loss, a torch.nn loss "
            "module or a function loss(outputs, targets)"
        )
    if callable(loss):
        if kwargs:
            raise ValueError(f"loss options {sorted(kwargs)} given with a loss object {loss!r}")
        if isinstance(loss, nn.Module):
            closed = _closed_form(loss)
            if closed is not None:
                return closed
        return AutogradLoss(loss)
    raise ValueError(
        f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}, a Loss, a torch.nn loss module "
        "or a function loss(outputs, targets)"
    )
