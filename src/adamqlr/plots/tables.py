r"""How the book prints a table: numbers rounded, diverged runs named, symbols typeset.

:func:`format_table` is the one function the experiment chapters display their tables with. It
turns a numeric :class:`pandas.DataFrame` into a :class:`FormattedTable` whose cells are text:

* numbers to ``digits`` significant digits (``0.0123``, ``1.025e+04``), whole-number columns
  (steps, runs, counts) as integers, booleans as ``yes``/``no``, a missing value as ``–``;
* in the columns that hold losses (a label containing ``loss``, ``objective`` or ``gap``, a
  difference of losses, or named in ``diverged``), a value that is infinite, NaN or larger than
  ``diverged_above`` as ``diverged``: a run that blew up has no meaningful final loss, and
  ``3.9e+32`` reads as one;
* in a verdict table (:func:`adamqlr.studies.verdicts.verdict_table`), a ratio or interval
  bound above ``diverged_above`` or below its reciprocal as ``> 1e6`` or ``< 1e-6`` (for the
  default ``diverged_above``), as a loss's bound past the threshold reads: a ratio of ``6e-34``
  says only that one arm's typical run blew up;
* row, column and index-name labels written with TeX between dollars, as in the figures
  (``"median $\lambda$"``), as inline TeX ``\(...\)`` inside a table of class
  ``mathjax_process``, which the book's MathJax typesets (table cells are otherwise not typeset);
  text cells written the same way are typeset too, and a setting ``batch_size=100`` in a text
  cell (as the tuning summaries write the chosen configuration) reads ``batch size = 100``, so
  that a long configuration can break between its settings;
* a value and its error in one cell: a column ``c`` followed by ``c ±`` (as
  :func:`adamqlr.studies.analysis.final_table` writes them) shows as ``0.4123 ± 0.0031``, and a
  value with an interval (``intervals``) as ``0.8224 [0.7946, 1.337]``; a line may break before
  the ``±`` or the ``[``, so that a table of many such columns still fits a page's column;
* the library's snake_case column names (``test_loss``, ``time_s``, ``initial_damping``, ...)
  under readers' headers (``test loss``, ``time (s)``, ``initial $\lambda$``: :data:`HEADERS`),
  with further headers from ``headers``;
* an unnamed default row index (0, 1, 2, ...) hidden: it carries nothing for a reader.

The numeric frame itself is never changed: code computes with it, the page shows its text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

from adamqlr.results.aggregate import BLOWN_UP, blown_up, ratio_beyond_text

__all__ = ["DIVERGED", "HEADERS", "FormattedTable", "format_number", "format_table"]

#: The text of a diverged run's value.
DIVERGED = "diverged"
#: The text of a missing value.
MISSING = "–"
#: Substrings of a column label that mark the column as holding losses.
LOSS_WORDS = ("loss", "objective", "gap")
_DOLLARS = re.compile(r"\$([^$]+)\$")
#: The suffix of a column holding the error of the column named before it.
ERROR_SUFFIX = " ±"
#: Significant digits of an error shown next to its value.
ERROR_DIGITS = 2
#: Readers' headers for the column names the library's tables use.
HEADERS: dict[str, str] = {
    "train_loss": "train loss",
    "test_loss": "test loss",
    "val_loss": "validation loss",
    "train_accuracy": "train accuracy",
    "test_accuracy": "test accuracy",
    "val_accuracy": "validation accuracy",
    "time_s": "time (s)",
    "median_s": "median (s)",
    "batch_size": "batch size",
    "weight_decay": "weight decay",
    "initial_damping": "initial $\\lambda$",
    "damping_decrease": "$\\lambda$ decrease",
    "damping_increase": "$\\lambda$ increase",
}


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


_SETTING = re.compile(r"(?<![\\\w])([a-z][a-z0-9_]*)=(?=\S)")


def _setting_text(match: re.Match[str]) -> str:
    r"""``initial_damping=`` -> ``initial $\lambda$ = ``, ``lr=`` -> ``lr = ``."""
    name = match.group(1)
    return f"{HEADERS.get(name, name)}\u00a0=\u00a0"  # a line breaks between settings


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
    return blown_up(float(value), threshold)


def _ratio_beyond(value: Any, threshold: float) -> str:
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
        return ""
    return ratio_beyond_text(float(value), threshold)


def _partner(label: Any, suffix: str) -> Any:
    if isinstance(label, tuple):
        return (*label[:-1], f"{label[-1]}{suffix}")
    return f"{label}{suffix}"


def _bound_text(
    value: Any, *, loss: bool, digits: int, threshold: float, ratio: bool = False
) -> str:
    if value is None or (isinstance(value, Real) and math.isnan(float(value))):
        return MISSING
    if ratio and (beyond := _ratio_beyond(value, threshold)):
        return beyond
    if loss and value is not None and _diverged(value, threshold):
        # a finite loss past the threshold reads as the bound it passed ("> 1e6")
        positive = isinstance(value, Real) and float(value) > 0
        return ratio_beyond_text(float(value), threshold) if positive else DIVERGED
    return format_number(value, digits=digits)


@dataclass(frozen=True)
class FormattedTable:
    """A table ready to display: text cells, with HTML and plain-text renderings.

    Attributes:
        text: The cells as strings, with the (possibly TeX) labels.
        index: Whether the row labels are shown.
    """

    text: pd.DataFrame
    index: bool = True

    def to_html(self) -> str:
        """Return the table as HTML, of class ``mathjax_process`` so that its TeX is typeset."""
        return self.text.to_html(classes=["mathjax_process"], escape=True, index=self.index)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __repr__(self) -> str:
        return self.text.to_string(index=self.index)


#: A verdict table's ratio and its interval (:func:`adamqlr.studies.verdicts.verdict_table`).
VERDICT_INTERVAL: tuple[str, str, str] = ("ratio", "CI low", "CI high")


def format_table(
    frame: pd.DataFrame | pd.Series,
    *,
    digits: int = 4,
    diverged: Collection[Any] = (),
    diverged_above: float = BLOWN_UP,
    errors: bool = True,
    intervals: Mapping[Any, tuple[Any, Any]] | None = None,
    headers: Mapping[Any, str] | None = None,
    index: bool | None = None,
) -> FormattedTable:
    r"""Format a table of results for the book (see the module's docstring for the rules).

    Args:
        frame: The table (a Series is shown as one column).
        digits: Significant digits of the numbers (an error gets two).
        diverged: Further columns (labels, or a MultiIndex label joined by spaces) whose
            non-finite or huge values mean a diverged run.
        diverged_above: In those columns, a value whose magnitude exceeds this is ``diverged``;
            in a verdict table, a ratio above it or below its reciprocal reads ``> 1e6`` or
            ``< 1e-6`` (for the default).
        errors: Show each column ``c`` that has a column ``c ±`` as one column ``value ± error``,
            and a verdict table's ``ratio``, ``CI low`` and ``CI high`` as one column
            ``ratio [low, high]`` (unless ``intervals`` is given).
        intervals: ``{column: (low column, high column)}``: show each such column as one column
            ``value [low, high]`` (in a diverged column, a huge bound reads ``> diverged_above``).
        headers: Column headers (any level) to show in place of the frame's, on top of
            :data:`HEADERS`; TeX between dollars is typeset.
        index: Show the row labels (default: unless they are an unnamed ``0, 1, 2, ...``).

    Returns:
        The :class:`FormattedTable`; ``frame`` itself is not changed.

    Raises:
        ValueError: If ``digits`` is smaller than 1, ``diverged_above`` is not positive, or a
            column named in ``intervals`` is not in the frame.
    """
    if digits < 1:
        raise ValueError(f"digits must be at least 1, got {digits!r}")
    if not diverged_above > 0:
        raise ValueError(f"diverged_above must be positive, got {diverged_above!r}")
    data = frame.to_frame() if isinstance(frame, pd.Series) else frame
    labels = list(data.columns)
    spans = dict(intervals or {})
    ratios: set[Any] = set()
    if intervals is None and errors and set(VERDICT_INTERVAL) <= set(labels):
        # a verdict table (adamqlr.studies.verdicts.verdict_table): the ratio with its interval
        spans = {VERDICT_INTERVAL[0]: VERDICT_INTERVAL[1:]}
        ratios = set(VERDICT_INTERVAL)
    for value, bounds in spans.items():
        for label in (value, *bounds):
            if label not in labels:
                raise ValueError(f"intervals names column {label!r}, which the table has not")
    error_of = {}
    if errors:
        for label in labels:
            if label not in spans and _partner(label, ERROR_SUFFIX) in labels:
                error_of[label] = _partner(label, ERROR_SUFFIX)
    hidden = set(error_of.values()) | {b for bounds in spans.values() for b in bounds}
    position = {label: j for j, label in enumerate(labels)}

    def column(label: Any) -> list[Any]:
        return data.iloc[:, position[label]].tolist()

    cells: dict[Any, list[str]] = {}
    for label in labels:
        if label in hidden and label not in error_of and label not in spans:
            continue
        series = data.iloc[:, position[label]]
        integer = _is_integer_column(series)
        loss = _is_loss_column(label, diverged)
        texts = []
        for row, value in enumerate(series.tolist()):
            if loss and value is not None and _diverged(value, diverged_above):
                texts.append(DIVERGED)
                continue
            text = format_number(value, digits=digits, integer=integer)
            if label in ratios:
                text = _ratio_beyond(value, diverged_above) or text
            if isinstance(value, str):
                text = _math_label(_SETTING.sub(_setting_text, text))
            if label in error_of:
                error = column(error_of[label])[row]
                if isinstance(error, Real) and math.isfinite(float(error)):
                    text = f"{text} ±\u00a0{format_number(error, digits=ERROR_DIGITS)}"
            elif label in spans and text != MISSING:
                low, high = (
                    _bound_text(
                        column(b)[row],
                        loss=loss,
                        digits=digits,
                        threshold=diverged_above,
                        ratio=label in ratios,
                    )
                    for b in spans[label]
                )
                if MISSING not in (low, high):
                    text = f"{text} [{low},\u00a0{high}]"
            texts.append(text)
        cells[label] = texts
    text = pd.DataFrame(cells, index=data.index, dtype=object)
    if isinstance(data.columns, pd.MultiIndex):
        text.columns = pd.MultiIndex.from_tuples(list(cells), names=data.columns.names)
    else:
        text.columns = pd.Index(list(cells), name=data.columns.name, dtype=object)
    names = {**HEADERS, **(headers or {})}
    text = text.rename(columns=lambda c: names.get(c, c) if isinstance(c, str) else c)
    text = text.rename(index=_math_label, columns=_math_label)
    text.index = text.index.set_names([_math_label(n) for n in text.index.names])
    text.columns = text.columns.set_names([_math_label(n) for n in text.columns.names])
    if index is None:
        index = not (
            isinstance(data.index, pd.RangeIndex)
            and data.index.name is None
            and data.index.start == 0
            and data.index.step == 1
        )
    return FormattedTable(text, index=index)
