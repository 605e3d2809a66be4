r"""How the book prints a table: numbers rounded, diverged runs named, symbols typeset.

:func:`format_table` is the one function the experiment chapters display their tables with. It
turns a numeric :class:`pandas.DataFrame` into a :class:`FormattedTable` whose cells are text:

* numbers to ``digits`` significant digits (``0.0123``, ``1.025e+04``), whole-number columns
  (steps, runs, counts) as integers, booleans as ``yes``/``no``, a missing value as ``–``;
* in the columns that hold losses (a label containing ``loss`` or ``objective``, or named in
  ``diverged``), a value that is infinite, NaN or larger than ``diverged_above`` as
  ``diverged``: a run that blew up has no meaningful final loss, and ``3.9e+32`` reads as one;
* row, column and index-name labels written with TeX between dollars, as in the figures
  (``"median $\lambda$"``), as inline TeX ``\(...\)`` inside a table of class
  ``mathjax_process``, which the book's MathJax typesets (table cells are otherwise not typeset).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["DIVERGED", "FormattedTable", "format_number", "format_table"]

#: The text of a diverged run's value.
DIVERGED = "diverged"
#: The text of a missing value.
MISSING = "–"
#: Substrings of a column label that mark the column as holding losses.
LOSS_WORDS = ("loss", "objective")
_DOLLARS = re.compile(r"\$([^$]+)\$")


def format_number(value: Any, *, digits: int = 4, integer: bool = False) -> str:
    """Return ``value`` as table text (no divergence rule: see :func:`format_table`).

    Args:
        value: A number, a boolean, ``None`` or anything else (shown with ``str``).
        digits: Significant digits of a float.
        integer: Show a finite whole number without decimals.

    Returns:
        ``yes``/``no`` for a boolean, ``–`` for ``None`` or NaN, ``∞``/``−∞`` for infinities,
        else the number to ``digits`` significant digits (``%g`` style).

    Raises:
        ValueError: If ``digits`` is smaller than 1.
    """
    if digits < 1:
        raise ValueError(f"digits must be at least 1, got {digits!r}")
    if value is None:
        return MISSING
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        x = float(value)
        if math.isnan(x):
            return MISSING
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        if integer and x.is_integer():
            return str(int(x))
        return f"{x:.{digits}g}"
    return str(value)


def _label_text(label: Any) -> str:
    return " ".join(str(part) for part in label) if isinstance(label, tuple) else str(label)


def _math_label(label: Any) -> Any:
    r"""``"median $\lambda$"`` -> ``"median \(\lambda\)"``; other labels unchanged."""
    return _DOLLARS.sub(r"\\(\1\\)", label) if isinstance(label, str) else label


def _is_loss_column(label: Any, diverged: Collection[Any]) -> bool:
    if label in diverged or _label_text(label) in diverged:
        return True
    last = label[-1] if isinstance(label, tuple) else label
    return any(word in str(last).lower() for word in LOSS_WORDS)


def _is_integer_column(column: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
        return False
    values = column.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    return bool(len(finite)) and bool(np.all(finite == np.round(finite)))


def _diverged(value: Any, threshold: float) -> bool:
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
        return False
    x = float(value)
    return not math.isfinite(x) or abs(x) > threshold


@dataclass(frozen=True)
class FormattedTable:
    """A table ready to display: text cells, with HTML and plain-text renderings.

    Attributes:
        text: The cells as strings, with the (possibly TeX) labels.
    """

    text: pd.DataFrame

    def to_html(self) -> str:
        """Return the table as HTML, of class ``mathjax_process`` so that its TeX is typeset."""
        return self.text.to_html(classes=["mathjax_process"], escape=True)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return self.text.to_string()


def format_table(
    frame: pd.DataFrame | pd.Series,
    *,
    digits: int = 4,
    diverged: Collection[Any] = (),
    diverged_above: float = 1e6,
) -> FormattedTable:
    r"""Format a table of results for the book (see the module's docstring for the rules).

    Args:
        frame: The table (a Series is shown as one column).
        digits: Significant digits of the numbers.
        diverged: Further columns (labels, or a MultiIndex label joined by spaces) whose
            non-finite or huge values mean a diverged run.
        diverged_above: In those columns, a value whose magnitude exceeds this is ``diverged``.

    Returns:
        The :class:`FormattedTable`; ``frame`` itself is not changed.

    Raises:
        ValueError: If ``digits`` is smaller than 1 or ``diverged_above`` is not positive.
    """
    if digits < 1:
        raise ValueError(f"digits must be at least 1, got {digits!r}")
    if not diverged_above > 0:
        raise ValueError(f"diverged_above must be positive, got {diverged_above!r}")
    data = frame.to_frame() if isinstance(frame, pd.Series) else frame
    text = pd.DataFrame(index=data.index, columns=data.columns, dtype=object)
    for j, label in enumerate(data.columns):
        column = data.iloc[:, j]
        integer = _is_integer_column(column)
        loss = _is_loss_column(label, diverged)
        text.iloc[:, j] = [
            DIVERGED
            if loss and value is not None and _diverged(value, diverged_above)
            else format_number(value, digits=digits, integer=integer)
            for value in column.tolist()
        ]
    text = text.rename(index=_math_label, columns=_math_label)
    text.index = text.index.set_names([_math_label(n) for n in text.index.names])
    text.columns = text.columns.set_names([_math_label(n) for n in text.columns.names])
    return FormattedTable(text)
