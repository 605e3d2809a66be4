"""One look for every figure of the book: a seaborn theme and fixed colours per optimiser.

Call :func:`set_theme` once at the top of a notebook. :func:`palette` gives each optimiser label
the same colour in every figure (the paper's labels first, in a fixed order; other labels take the
next free colours in the order they are first asked for).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib as mpl
import seaborn as sns

__all__ = ["KNOWN_LABELS", "RC", "palette", "set_theme"]

#: Optimiser labels of the paper's figures, in the order their colours are assigned.
KNOWN_LABELS: tuple[str, ...] = (
    "AdamQLR",
    "AdamQLR (Untuned)",
    "Adam",
    "SGD",
    "K-FAC",
    "K-FAC (Unadaptive)",
    "AdamQLR (Undamped)",
    "AdamQLR (Hessian)",
    "Baydin SGD",
    "SGDQLR",
)

#: Matplotlib settings applied on top of seaborn's ``whitegrid`` style.
RC: dict[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "figure.constrained_layout.use": True,
    "legend.frameon": False,
    "lines.linewidth": 1.4,
    "image.cmap": "viridis",
}

_COLOURS = sns.color_palette("colorblind", n_colors=10)
_EXTRA = 24
_assigned: dict[str, tuple[float, float, float]] = dict(zip(KNOWN_LABELS, _COLOURS, strict=False))


def set_theme(context: str = "notebook", font_scale: float = 1.0) -> None:
    """Apply the book's theme (seaborn ``whitegrid``, colour-blind palette, :data:`RC`).

    Args:
        context: seaborn context: ``"paper"``, ``"notebook"``, ``"talk"`` or ``"poster"``.
        font_scale: Scale of all fonts.

    Raises:
        ValueError: If ``context`` is not a seaborn context or ``font_scale`` is not positive.
    """
    if context not in ("paper", "notebook", "talk", "poster"):
        raise ValueError(
            f"invalid context: {context!r} (expected 'paper', 'notebook', 'talk' or 'poster')"
        )
    if not isinstance(font_scale, (int, float)) or not font_scale > 0:
        raise ValueError(f"invalid font_scale: {font_scale!r} (expected a number > 0)")
    sns.set_theme(
        context=context, style="whitegrid", palette="colorblind", font_scale=font_scale, rc=RC
    )
    mpl.rcParams.update(RC)  # type: ignore[arg-type]  # matplotlib types the keys as literals


def palette(labels: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """Return a fixed colour for each label (stable across figures and notebooks).

    Args:
        labels: Optimiser (or run) labels.

    Returns:
        ``{label: RGB}``, in the order given.
    """
    labels = list(dict.fromkeys(labels))
    for label in labels:
        if label not in _assigned:
            used = set(_assigned.values())
            free: Sequence[tuple[float, float, float]] = [c for c in _COLOURS if c not in used]
            if free:
                _assigned[label] = free[0]
            else:  # more labels than colour-blind colours: spread the rest around the hue circle
                extra = sns.color_palette("husl", n_colors=_EXTRA)
                _assigned[label] = extra[(len(_assigned) - len(_COLOURS)) % _EXTRA]
    return {label: _assigned[label] for label in labels}
