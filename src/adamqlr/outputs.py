"""Choosing the tensor the loss compares when a model returns a dict, a tuple or an object.

Many models return more than one thing: ``{"logits": ..., "aux": ...}``, ``(logits, hidden)``, a
``NamedTuple`` or a Hugging Face ``ModelOutput``. The optimiser's loss and curvature need one
tensor; the ``output`` argument of :class:`adamqlr.AdamQLR` says which:

* ``None`` (default): the model must return a tensor;
* a ``str``: a key of a mapping (``outputs[key]``), or else an attribute (``outputs.key``);
* an ``int``: an index of a tuple or list (``outputs[index]``);
* a callable: ``output(outputs)`` returns the tensor (it may compute, e.g.
  ``lambda o: o["logits"][:, -1]``; every operation must be differentiable).

The selection is applied after every forward pass the optimiser makes (the gradient pass, the
curvature pass and the trial pass), so the curvature is that of the loss of the selected tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

from torch import Tensor

__all__ = ["OutputSelector", "check_selector", "select_output"]

#: What the ``output`` argument accepts.
OutputSelector = Union[str, int, Callable[[Any], Tensor], None]  # noqa: UP007


def check_selector(selector: object) -> None:
    """Raise ``ValueError`` naming ``selector`` unless it is ``None``, a str, an int or callable."""
    ok = (
        selector is None
        or isinstance(selector, str)
        or (isinstance(selector, int) and not isinstance(selector, bool))
        or callable(selector)
    )
    if not ok:
        raise ValueError(
            f"invalid output: {selector!r} (expected None, a key (str), an index (int) or a "
            "callable that takes the model's outputs and returns the tensor for the loss)"
        )


def _describe(raw: object) -> str:
    if isinstance(raw, Mapping):
        return f"a {type(raw).__name__} with keys {list(raw)!r}"
    if isinstance(raw, (tuple, list)):
        kinds = [type(v).__name__ for v in raw]
        return f"a {type(raw).__name__} of {len(raw)} items ({', '.join(kinds)})"
    return f"a {type(raw).__name__}"


def select_output(raw: Any, selector: OutputSelector) -> Tensor:
    """Return the tensor that ``selector`` picks from the model's outputs ``raw``.

    Args:
        raw: What ``model(inputs)`` returned.
        selector: See the module's docstring.

    Returns:
        The selected tensor.

    Raises:
        ValueError: If the model returned something other than a tensor and no selector was
            given, if the key or index does not exist, or if the selection is not a tensor; the
            message says what the model returned and how to choose.
    """
    if selector is None:
        if isinstance(raw, Tensor):
            return raw
        raise ValueError(
            f"the model returned {_describe(raw)}, not a tensor; pass output=<key>, "
            "output=<index> or output=<callable> to AdamQLR to say which tensor the loss compares"
        )
    if callable(selector) and not isinstance(selector, (str, int)):
        chosen = selector(raw)
        how = f"output={selector!r}"
    elif isinstance(raw, Mapping) and not isinstance(selector, int):
        if selector not in raw:
            raise ValueError(
                f"invalid output: {selector!r} is not a key of the model's outputs "
                f"({_describe(raw)})"
            )
        chosen, how = raw[selector], f"output={selector!r}"
    elif isinstance(selector, int) and isinstance(raw, (tuple, list)):
        if not -len(raw) <= selector < len(raw):
            raise ValueError(
                f"invalid output: index {selector} is out of range for the model's outputs "
                f"({_describe(raw)})"
            )
        chosen, how = raw[selector], f"output={selector}"
    elif isinstance(selector, str) and hasattr(raw, selector):
        chosen, how = getattr(raw, selector), f"output={selector!r}"
    else:
        raise ValueError(
            f"invalid output: {selector!r} cannot select from the model's outputs "
            f"({_describe(raw)}); use a key for a mapping, an index for a tuple or list, or a "
            "callable"
        )
    if not isinstance(chosen, Tensor):
        raise ValueError(
            f"{how} selected a {type(chosen).__name__}, not a tensor, from the model's outputs "
            f"({_describe(raw)})"
        )
    return chosen
