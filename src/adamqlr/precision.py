"""Mixed precision: where a step's scalars are accumulated, and which loss changes it trusts.

Under ``torch.autocast`` (bfloat16 or float16) or with a low-precision model, the network's
outputs, and so the loss and the curvature's output-space vectors, carry 8 (bfloat16) or 11
(float16) significant bits. Two rules keep the step's arithmetic meaningful:

1. **Accumulate wide.** Every scalar the step size and the reduction ratio are made of
   (``g^T d``, ``d^T C d``, ``||d||^2``, the output-space sums of the curvature) is summed in
   float32 or wider (:func:`wide`): a float16 sum over a mini-batch overflows at 65504, and a
   bfloat16 one keeps three decimal digits. The step then combines them in Python floats.
2. **Do not read rounding noise as a loss change.** The reduction ratio
   ``rho = (f1 - f0) / predicted`` divides the difference of two losses evaluated in the
   low precision. When ``|f1 - f0|`` is no larger than :func:`loss_resolution` -- a few units in
   the last place (:data:`RESOLUTION_ULPS`) of the *rounding dtype* at the loss's magnitude --
   the difference says nothing about the step, only about rounding: rho is not computed from it
   (it is NaN), the damping is left unchanged, and ``StepStats.loss_unresolved`` is true. The
   rounding dtype (:func:`rounding_dtype`) is the least precise of the loss's dtype, the
   outputs' dtype and the autocast dtype in force (torch computes e.g. cross-entropy in float32
   under autocast, but from bfloat16 logits, so the loss is no more precise than bfloat16). In
   float32 and float64 runs the rule almost never fires, and then only when the loss did not
   change measurably.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "RESOLUTION_ULPS",
    "loss_change_resolved",
    "loss_resolution",
    "rounding_dtype",
    "wide",
    "wide_dtype",
]

#: How many units in the last place of the rounding dtype a loss change must exceed.
RESOLUTION_ULPS = 4.0

_LOW = (torch.float16, torch.bfloat16)


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype to accumulate ``dtype`` in: float32 for 16-bit floats, else itself."""
    return torch.float32 if dtype in _LOW else dtype


def wide(t: Tensor) -> Tensor:
    """Return ``t`` in :func:`wide_dtype` (``t`` itself when it is already float32 or wider)."""
    target = wide_dtype(t.dtype)
    return t if t.dtype == target else t.to(target)


def rounding_dtype(*dtypes: torch.dtype, device_type: str | None = None) -> torch.dtype:
    """Return the least precise floating dtype among ``dtypes`` and the autocast dtype in force.

    Args:
        *dtypes: Dtypes of the tensors a loss was computed from (e.g. the loss and the outputs).
        device_type: ``"cpu"``, ``"cuda"``, ...: the device whose autocast state counts
            (``None``: no autocast is considered).
    """
    candidates = [d for d in dtypes if d.is_floating_point]
    if device_type is not None and torch.is_autocast_enabled(device_type):
        candidates.append(torch.get_autocast_dtype(device_type))
    if not candidates:
        return torch.float64
    return max(candidates, key=lambda d: torch.finfo(d).eps)


def loss_resolution(loss: float, dtype: torch.dtype, ulps: float = RESOLUTION_ULPS) -> float:
    """Return the smallest change of a loss of size ``loss`` in ``dtype`` that is not rounding.

    ``ulps * eps(dtype) * 2^(e - 1)`` for ``|loss| = m 2^e``, ``m`` in [0.5, 1): ``ulps`` units in
    the last place at the loss's magnitude; ``ulps`` times the smallest normal number at zero.

    Raises:
        ValueError: If ``dtype`` is not a floating dtype or ``ulps`` is negative or NaN.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"invalid dtype: {dtype!r} (expected a floating-point torch.dtype)")
    if not ulps >= 0.0:
        raise ValueError(f"invalid ulps: {ulps!r} (expected >= 0)")
    info = torch.finfo(dtype)
    magnitude = abs(loss)
    if not math.isfinite(magnitude):
        return math.inf
    if magnitude < info.tiny:
        return ulps * info.tiny
    _, exponent = math.frexp(magnitude)
    return ulps * info.eps * math.ldexp(1.0, exponent - 1)


def loss_change_resolved(
    old: float, new: float, dtype: torch.dtype, ulps: float = RESOLUTION_ULPS
) -> bool:
    """Return whether ``new - old`` exceeds :func:`loss_resolution` at ``max(|old|, |new|)``.

    Non-finite values are never resolved.
    """
    if not (math.isfinite(old) and math.isfinite(new)):
        return False
    return abs(new - old) > loss_resolution(max(abs(old), abs(new)), dtype, ulps)
