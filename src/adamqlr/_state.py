"""Optimiser-wide state (damping, counters) saved beside torch's per-parameter state."""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["OptimiserWideState"]


class OptimiserWideState:
    """Mixin for a ``torch.optim.Optimizer`` whose ``self.state[global_key]`` holds a plain dict.

    torch packs non-tensor keys of ``self.state`` as they are; this mixin copies that dict on save,
    refuses a state dict that lacks it, never mutates the dict it loads, and fills keys that an
    older state dict did not have from :meth:`_fresh_global_state`.
    """

    #: Key of the optimiser-wide entry in ``self.state``.
    global_key: str
    #: torch's ``Optimizer.state``, which torch types as keyed by tensors only; here one key is the
    #: string :attr:`global_key` (an annotation, no value: the attribute is torch's).
    state: Any

    def _fresh_global_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        state = super().state_dict()  # type: ignore[misc]
        key = self.global_key
        state["state"] = {**state["state"], key: dict(self.state[key])}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict (the input is not modified)."""
        state_dict = copy.deepcopy(state_dict)
        key = self.global_key
        if key not in state_dict.get("state", {}):
            raise ValueError(
                f"invalid state_dict: no {key!r} entry (was it saved by {type(self).__name__}?)"
            )
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self.state[key] = {**self._fresh_global_state(), **dict(self.state[key])}
