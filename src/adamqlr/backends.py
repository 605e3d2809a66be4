"""Which torch kernels an optimiser step may use, and which models it refuses.

The curvature passes differentiate the network a second time: forward-mode through the
gradient's point (``"fisher"``) or backward through the gradient's own graph (``"hessian"``).
torch's fused attention kernels implement neither: the flash-attention kernel behind
``torch.nn.functional.scaled_dot_product_attention`` on the CPU, and the "fast path" that
``nn.MultiheadAttention`` and ``nn.TransformerEncoder(Layer)`` take in evaluation mode (or
whenever no gradient is recorded) raise ``NotImplementedError`` inside torch. Their mathematically
identical "math" implementation, made of ordinary differentiable operations, supports both.

:func:`curvature_safe_attention` selects that implementation for the duration of a step and puts
the caller's settings back afterwards, so a model with attention works with either curvature
with nothing to do on the user's side. The cost: the step's passes (the gradient pass included,
so that the gradient, the curvature and the trial loss all evaluate the same function with the
same rounding) do not use the fused kernels, which on a GPU means more memory and time for long
sequences.

:func:`check_model` refuses what cannot work at all: a ``torch.compile``-d module. Its compiled
forward cannot be re-run with substituted parameters (``torch.func.functional_call``) or with
dual tensors, so the optimiser must be given the uncompiled module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["check_model", "curvature_safe_attention"]


@contextlib.contextmanager
def curvature_safe_attention() -> Iterator[None]:
    """Run the body with attention kernels that have forward-mode and double-backward rules.

    Inside: ``scaled_dot_product_attention`` uses only ``SDPBackend.MATH``, and the
    ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` fast path is off
    (``torch.backends.mha.set_fastpath_enabled(False)``). On exit, normally or by an exception,
    both settings are what they were before (these are process-wide switches).
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _compiled_module_type() -> type | None:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except Exception:  # pragma: no cover - a torch without dynamo
        return None
    return OptimizedModule


def check_model(model: nn.Module) -> None:
    """Raise ``ValueError`` for a model the optimiser cannot differentiate the way it needs.

    Today that is a module returned by ``torch.compile`` (or holding one as a submodule).

    Args:
        model: The network given to the optimiser.

    Raises:
        ValueError: Naming the problem and the fix (pass ``model._orig_mod``, the uncompiled
            module; the optimiser's passes use forward-mode autograd and double backward, which a
            compiled forward does not provide).
    """
    compiled = _compiled_module_type()
    if compiled is None:
        return
    for name, module in model.named_modules():
        if isinstance(module, compiled):
            where = "the model" if not name else f"submodule {name!r}"
            raise ValueError(
                f"invalid model: {where} is a torch.compile-d module ({type(module).__name__}); "
                "AdamQLR re-runs the network with substituted parameters, dual tensors and double "
                "backward, which a compiled forward does not support. Pass the uncompiled module "
                "instead (e.g. model._orig_mod, or the module you gave to torch.compile)."
            )
