"""``torch.optim``'s step protocol (hooks, profiler label) without the label's cost when unused.

``torch.optim.Optimizer`` wraps each subclass's ``step`` (``Optimizer.profile_hook_step``) to run
the step pre- and post-hooks (``Optimizer.register_step_pre_hook`` and
``register_step_post_hook``, and the global ones of
``torch.optim.optimizer.register_optimizer_step_pre_hook`` / ``..._post_hook``), to call
``Optimizer._optimizer_step_code`` (where torch's profiler inspects an optimizer), and to label
the step ``Optimizer.step#<Class>.step`` with ``torch.autograd.profiler.record_function``. The
label is made on every step, profiler or not, and on a CPU costs about 35 us inside a training
step (an operator call that creates and closes a profiler record): about 5 % of an AdamQLR step
on the paper's MLP at batch 50.

:func:`hooked_step` does what that wrapper does, in the same order and with the same errors, and
makes the label only while torch's profiler is recording (``torch.autograd._profiler_enabled()``),
so a profile shows the step as before. Marked ``hooked``, the wrapped ``step`` is left as it is by
``Optimizer._patch_step_function``. Should a torch release rename the global hook tables or the
profiler-state function this relies on, :func:`hooked_step` returns ``step`` unchanged and torch
wraps it as before.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from itertools import chain
from typing import Any, TypeVar

import torch
import torch.optim.optimizer as _torch_optimizer

_R = TypeVar("_R")

_GLOBAL_PRE = getattr(_torch_optimizer, "_global_optimizer_pre_hooks", None)
_GLOBAL_POST = getattr(_torch_optimizer, "_global_optimizer_post_hooks", None)
_PROFILING = getattr(torch.autograd, "_profiler_enabled", None)


def hooked_step(step: Callable[..., _R]) -> Callable[..., _R]:
    """Wrap an optimizer's ``step`` as ``torch.optim`` does, labelled only while profiling.

    Args:
        step: The ``step`` method of a ``torch.optim.Optimizer`` subclass.

    Returns:
        The wrapped method (marked ``hooked``), or ``step`` itself when this torch keeps its
        global step hooks elsewhere (torch then wraps it with its own wrapper).
    """
    if _GLOBAL_PRE is None or _GLOBAL_POST is None or _PROFILING is None:
        return step
    global_pre, global_post, profiling = _GLOBAL_PRE, _GLOBAL_POST, _PROFILING

    # As torch's wrapper: the hooks see ``args`` with ``self`` first, and a pre-hook may replace
    # them (``self`` included) by returning ``(new_args, new_kwargs)``. One frame between the
    # caller and ``step``, as there (warnings raised in a step count their stacklevel by it).
    @functools.wraps(step)
    def wrapper(*args: Any, **kwargs: Any) -> _R:
        self = args[0]
        label = (
            torch.autograd.profiler.record_function(f"Optimizer.step#{type(self).__name__}.step")
            if profiling()
            else contextlib.nullcontext()
        )
        with label:
            for pre_hook in chain(global_pre.values(), self._optimizer_step_pre_hooks.values()):
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if isinstance(result, tuple) and len(result) == 2:
                        args, kwargs = result
                    else:
                        raise RuntimeError(
                            f"{step} must return None or a tuple of (new_args, new_kwargs), but "
                            f"got {result}."
                        )
            out = step(*args, **kwargs)
            self._optimizer_step_code()
            for post_hook in chain(self._optimizer_step_post_hooks.values(), global_post.values()):
                post_hook(self, args, kwargs)
            return out

    wrapper.hooked = True  # type: ignore[attr-defined]  # Optimizer._patch_step_function
    return wrapper
