"""Replaying the random state of a gradient pass in the passes an optimiser makes after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["replayed_rng"]


@contextlib.contextmanager
def replayed_rng(cpu_state: Tensor, cuda_states: list[Tensor] | None) -> Iterator[None]:
    """Run the body with the random state captured before the gradient pass.

    Dropout and other random layers then draw the same masks as in the gradient pass, and the
    global random state afterwards is as if the body had not run.

    Args:
        cpu_state: ``torch.get_rng_state()`` taken before the gradient pass.
        cuda_states: ``torch.cuda.get_rng_state_all()`` taken then, or ``None`` on the CPU.
    """
    devices = list(range(len(cuda_states))) if cuda_states else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu_state)
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
        yield
