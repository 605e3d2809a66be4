"""Interleaved timing rounds, shared by ``step_cost.py`` and ``kfac_cost.py``.

Each round runs every variant in turn, in an order that rotates from round to round, so that
whatever load the machine carries hits every variant alike; each turn is a burst of calls in a
row on successive batches, so that a call follows the variant's own previous call, as the steps
of a training loop do (``burst=1``: each call follows another variant's work).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["time_rounds"]


def time_rounds(
    batches: Sequence[tuple[Any, Any]],
    fns: dict[str, Callable[[Any, Any], object]],
    warmup: int,
    repeats: int,
    *,
    burst: int = 1,
    reset_every: int = 0,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Return, per variant, the time per call (seconds) of each timed round.

    Call ``i`` of round ``r`` takes batch ``(r * burst + i) mod len(batches)``; the first
    ``warmup`` rounds are not timed. Variants with a ``reset()`` method are reset, and take one
    untimed call on the round's first batch, every ``reset_every`` calls (``0``: never), at the
    start of a round: every ``max(1, reset_every // burst)`` rounds.

    Args:
        batches: The batches, ``(inputs, targets)``.
        fns: The variants by name, each called as ``fn(inputs, targets)``.
        warmup: Untimed rounds first.
        repeats: Timed rounds.
        burst: Calls of a variant in a row per round.
        reset_every: Calls between resets (``0``: never).
        sync: Called before and after each burst (e.g. ``torch.cuda.synchronize``).

    Raises:
        ValueError: For a ``burst`` below 1.
    """
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ValueError(f"invalid burst {burst!r} (expected an int >= 1)")
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    every = max(1, reset_every // burst) if reset_every else 0
    for r in range(warmup + repeats):
        first = batches[(r * burst) % len(batches)]
        if r and every and r % every == 0:
            for fn in fns.values():
                if hasattr(fn, "reset"):
                    fn.reset()
                    fn(*first)
        order = names[r % len(names) :] + names[: r % len(names)]
        turn = [batches[(r * burst + i) % len(batches)] for i in range(burst)]
        for name in order:
            fn = fns[name]
            if sync is not None:
                sync()
            start = time.perf_counter()
            for x, y in turn:
                fn(x, y)
            if sync is not None:
                sync()
            if r >= warmup:
                times[name].append((time.perf_counter() - start) / burst)
    return times
