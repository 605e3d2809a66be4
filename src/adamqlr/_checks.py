"""Checks at step time and at ``load_state_dict``: each error names the argument and the value.

The argument checks at construction are in :mod:`adamqlr._validation`; the checks that need the
network's outputs (class indices against the number of classes, the targets' shape and dtype) are
the losses' own (:meth:`adamqlr.losses.Loss.check_shapes`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import Tensor

__all__ = ["check_batch", "check_loaded_state", "missing_batch_error"]


def missing_batch_error(optimiser: str, got: object) -> TypeError:
    """Return the ``TypeError`` for a step called without a batch (``step()``/``step(closure)``)."""
    if got is None:
        what = "no arguments"
    elif callable(got) and not isinstance(got, Tensor):
        what = "a closure"
    else:
        what = "inputs but no targets"
    return TypeError(
        f"{optimiser}.step() got {what}; it needs the mini-batch: call "
        f"`stats = opt.step(inputs, targets)`. The step computes the loss and the gradient "
        "itself, then the curvature along its direction and the trial loss, and all three must "
        "evaluate the model on the same batch, so neither gradients from loss.backward() nor a "
        "closure are enough (no zero_grad()/backward() is needed before it)."
    )


def _device_error(name: str, value: Tensor, devices: set[torch.device]) -> ValueError:
    where = ", ".join(sorted(str(d) for d in devices))
    return ValueError(
        f"invalid {name}: on device {value.device}, but the parameters are on {where} (move the "
        f"batch with {name}.to(device))"
    )


def check_batch(inputs: object, targets: object, devices: set[torch.device]) -> None:
    """Check a mini-batch before the forward pass (no host synchronisation).

    Args:
        inputs: The inputs; checked only when they are a tensor (their device).
        targets: The targets: a non-empty tensor on one of ``devices``.
        devices: The devices of the optimised parameters.

    Raises:
        ValueError: Naming ``targets``/``inputs`` and the bad value.
    """
    if not isinstance(targets, Tensor):
        raise ValueError(f"invalid targets: {type(targets).__name__} (expected a Tensor)")
    if targets.numel() == 0:
        raise ValueError(
            f"invalid targets: an empty batch (shape {tuple(targets.shape)}); a step needs at "
            "least one example (skip empty batches before calling step)"
        )
    if targets.device not in devices:
        raise _device_error("targets", targets, devices)
    if isinstance(inputs, Tensor) and inputs.device not in devices:
        raise _device_error("inputs", inputs, devices)


def _counter(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"invalid state_dict: {name} {value!r} (expected an int >= 0)")


def check_loaded_state(
    state_dict: object,
    param_groups: list[dict[str, Any]],
    global_key: str,
    defaults: dict[str, Any],
    validate_group: Callable[[dict[str, Any]], None],
    counters: Iterable[str],
    max_damping: float = math.inf,
) -> None:
    """Check a state dict against the optimiser before anything is loaded.

    Args:
        state_dict: What :meth:`torch.optim.Optimizer.load_state_dict` is given.
        param_groups: The optimiser's own groups (with ``params`` and ``param_names``).
        global_key: The key of the optimiser-wide state.
        defaults: The optimiser's group defaults (filled into groups saved without them).
        validate_group: Checks the option values of one group, raising ``ValueError``.
        counters: Keys of the optimiser-wide state that must be ints >= 0.
        max_damping: The optimiser's upper bound on the damping. With no finite bound (the
            paper's rule) repeated increases can reach ``inf``, a state the optimiser can be in
            and must be able to resume from; with a finite bound, ``inf`` is refused.

    Raises:
        ValueError: Naming the group, parameter, option or entry and its value: a different
            number of groups or parameters, a state tensor whose shape is not its parameter's
            (state saved for another model), an invalid option (e.g. ``betas`` 1.5) or an invalid
            damping or counter.
    """
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError(
            f"invalid state_dict: a {type(state_dict).__name__} without 'state' and "
            "'param_groups' (expected what state_dict() returns)"
        )
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(param_groups):
        raise ValueError(
            f"invalid state_dict: {len(saved_groups)} parameter groups, the optimiser has "
            f"{len(param_groups)} (was it saved for another model or other groups?)"
        )
    state = state_dict["state"]
    for i, (saved, group) in enumerate(zip(saved_groups, param_groups, strict=True)):
        ids = saved.get("params", [])
        if len(ids) != len(group["params"]):
            raise ValueError(
                f"invalid state_dict: parameter group {i} has {len(ids)} parameters, the "
                f"optimiser's has {len(group['params'])} (was it saved for another model?)"
            )
        for pid, p, name in zip(ids, group["params"], group["param_names"], strict=True):
            for key, value in state.get(pid, {}).items():
                if isinstance(value, Tensor) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(
                        f"invalid state_dict: {key} of parameter {name} has shape "
                        f"{tuple(value.shape)}, the parameter {tuple(p.shape)} (was it saved "
                        "for another model?)"
                    )
                if isinstance(value, Tensor) and value.dim() > 0:
                    bad = not bool(torch.isfinite(value).all())
                    if bad:
                        raise ValueError(
                            f"invalid state_dict: {key} of parameter {name} is not finite"
                        )
        options = {k: v for k, v in saved.items() if k not in ("params", "param_names")}
        try:
            validate_group({**defaults, **options})
        except ValueError as error:
            raise ValueError(f"invalid state_dict: parameter group {i}: {error}") from None
    glob = state.get(global_key)
    if not isinstance(glob, dict):
        return  # the caller's loader says that the entry is missing
    if "damping" in glob:
        damping = glob["damping"]
        reachable = math.isinf(max_damping) and damping == math.inf
        if (
            isinstance(damping, bool)
            or not isinstance(damping, numbers.Real)
            or not (0.0 <= cast(float, damping) < math.inf or reachable)
        ):
            bound = "a real number >= 0" if math.isinf(max_damping) else "a finite real number >= 0"
            raise ValueError(f"invalid state_dict: damping {damping!r} (expected {bound})")
    for key in counters:
        if key in glob:
            _counter(key, glob[key])
