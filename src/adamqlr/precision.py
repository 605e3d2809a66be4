"""Mixed precision: where a step's scalars are accumulated, and which loss changes it trusts.

Under ``torch.autocast`` (bfloat16 or float16) or with a low-precision model, the network's
outputs, and so the loss and the curvature's output-space vectors, carry 8 (bfloat16) or 11
(float16) significant bits. Three rules keep the step's arithmetic meaningful:

1. **Accumulate wide.** Every scalar the step size and the reduction ratio are made of
   (``g^T d``, ``d^T C d``, ``||d||^2``, the output-space sums of the curvature) is summed in
   float32 or wider (:func:`wide`): a float16 sum over a mini-batch overflows at 65504, and a
   bfloat16 one keeps three decimal digits. The step then combines them in Python floats.
2. **Forget stale casts.** Inside a ``torch.autocast`` region torch caches the 16-bit copy of
   each parameter it casts, until the region ends. The step updates the parameters in place, so
   a loop that calls ``step`` repeatedly inside *one* autocast region (``with autocast(): for
   ...: opt.step(...)``) would compute every later gradient from the first step's weights;
   :func:`forget_cast_weights` clears the cache after each update.
3. **Do not read rounding noise as a loss change.** The reduction ratio
   ``rho = (f1 - f0) / predicted`` divides the difference of two losses evaluated in the
   low precision. The optimiser's rule for a difference within the loss's rounding level
   (:func:`adamqlr.heuristics.loss_difference_trustworthy`: a few units in the last place at the
   loss's magnitude; ``rho`` is then not computed, ``StepStats.loss_unresolved`` is true and the
   damping follows :meth:`adamqlr.heuristics.LevenbergMarquardt.after_unresolved`) is applied in
   the *rounding dtype* (:func:`rounding_dtype`): the least precise of the loss's dtype, the
   outputs' dtype and the autocast dtype in force. torch computes e.g. cross-entropy in float32
   under autocast, but from bfloat16 logits, so the loss is no more precise than bfloat16.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["cpu_number", "forget_cast_weights", "rounding_dtype", "wide", "wide_dtype"]

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
    autocast = device_type is not None and torch.is_autocast_enabled(device_type)
    if not autocast and dtypes and dtypes[0].is_floating_point:
        first = dtypes[0]
        if all(d == first for d in dtypes):  # the usual case, without building the list
            return first
    candidates = [d for d in dtypes if d.is_floating_point]
    if autocast and device_type is not None:
        candidates.append(torch.get_autocast_dtype(device_type))
    if not candidates:
        return torch.float64
    return max(candidates, key=lambda d: torch.finfo(d).eps)


def forget_cast_weights() -> None:
    """Drop autocast's cached low-precision copies of the parameters (after an in-place update).

    ``torch.clear_autocast_cache``: cheap, and a no-op outside an autocast region.
    """
    torch.clear_autocast_cache()


@functools.lru_cache(maxsize=64)
def cpu_number(value: float, dtype: torch.dtype) -> Tensor:
    """Return ``value`` as a 0-d CPU tensor of ``dtype``, made once per pair and kept.

    [loops] On the CPU, ``tensor * 0.5`` wraps the number in a 0-d tensor and converts it to the
    tensor's dtype (``aten::to``, ``_to_copy``, ``copy_``: a few us) before the operation; with
    a kept 0-d tensor of the same dtype the operation runs without the conversion and gives the
    same numbers for float32 and float64 tensors (the CPU kernels compute with the number
    rounded to the tensor's dtype). Use it only for constants: each distinct value is kept.

    Args:
        value: The number (a constant of the algorithm, e.g. 0.5 or a batch size).
        dtype: ``torch.float32`` or ``torch.float64``.
    """
    # An ordinary tensor, usable by any later step: not an inference tensor, and not wrapped by a
    # torch.func transform that happens to be active at the first call (it would escape it).
    with torch.inference_mode(False), torch._C._DisableFuncTorch():
        return torch.full((), value, dtype=dtype, device="cpu")
