"""The book's one table formatter: numbers rounded, diverged runs named, symbols typeset."""

from __future__ import annotations

import ast
import math
import re

import numpy as np
import pandas as pd
import pytest
from _book import ROOT

from adamqlr.plots.tables import DIVERGED, format_number, format_table

EXPERIMENTS = sorted((ROOT / "notebooks").glob("1[0-2]_*.py")) + sorted(
    (ROOT / "notebooks").glob("0[7-9]_*.py")
)


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "test_loss": [0.123456, 3.9e32, math.inf, math.nan],
            "objective": [1.5, -2e7, 0.25, 2.0],
            "steps": [1000.0, 250.0, 12.0, math.nan],
            "median $\\lambda$": [1e-8, 0.0, math.nan, 2.5e-5],
            "chosen": [True, False, False, True],
            "ratio": [math.inf, 1.2345678e13, 0.5, 1.0],
        },
        index=pd.Index(["AdamQLR", "$k = 2$", "Adam", "SGD"], name="optimiser"),
    )


def test_diverged_losses_are_named_and_other_numbers_rounded() -> None:
    text = format_table(_frame()).text
    assert list(text["test_loss"]) == ["0.1235", DIVERGED, DIVERGED, DIVERGED]
    assert list(text["objective"]) == ["1.5", DIVERGED, "0.25", "2"]
    assert list(text["steps"]) == ["1000", "250", "12", "–"]
    assert list(text["chosen"]) == ["yes", "no", "no", "yes"]
    # Not a loss column: no divergence rule, however large the value.
    assert list(text["ratio"]) == ["∞", "1.235e+13", "0.5", "1"]
    assert text.iloc[2, 3] == "–"


def test_named_columns_and_threshold_choose_what_counts_as_diverged() -> None:
    frame = _frame()
    assert format_table(frame, diverged=["ratio"]).text["ratio"].tolist()[:2] == [DIVERGED] * 2
    loose = format_table(frame, diverged_above=1e40).text
    assert loose["test_loss"].tolist()[1] == "3.9e+32"
    multi = pd.concat({"final values": frame}, axis=1)
    assert format_table(multi).text[("final values", "test_loss")].tolist()[1] == DIVERGED
    assert format_table(multi, diverged=["final values ratio"]).text.iloc[1, 5] == DIVERGED


def test_dollar_labels_become_typeset_math_and_html_is_processed() -> None:
    table = format_table(_frame())
    assert r"median \(\lambda\)" in table.text.columns
    assert r"\(k = 2\)" in table.text.index
    html = table._repr_html_()
    assert 'class="dataframe mathjax_process"' in html
    assert r"\(\lambda\)" in html and "3.9e+32" not in html and "nan" not in html.lower()
    assert "diverged" in repr(table)
    frame = _frame()
    format_table(frame)
    assert frame.equals(_frame())  # the input is not changed


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, "–"), (np.float64(2.0), "2"), (np.int64(7), "7"), (-math.inf, "−∞"), ("x", "x")],
)
def test_format_number(value, expected) -> None:
    assert format_number(value) == expected


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="digits must be at least 1, got 0"):
        format_table(_frame(), digits=0)
    with pytest.raises(ValueError, match="diverged_above must be positive, got -1"):
        format_table(_frame(), diverged_above=-1)


def _displayed(source: str) -> list[str]:
    """The last expression of every code cell (what the page displays)."""
    shown = []
    for cell in re.split(r"^# %%.*$", source, flags=re.M)[1:]:
        try:
            body = ast.parse(cell).body
        except SyntaxError:  # a markdown cell
            continue
        if body and isinstance(body[-1], ast.Expr):
            shown.append(ast.unparse(body[-1].value))
    return shown


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_table_of_the_experiment_chapters_goes_through_format_table(path) -> None:
    shown = _displayed(path.read_text(encoding="utf-8"))
    tables = [s for s in shown if not s.startswith(("plt.", "glue(", "print("))]
    assert tables, f"{path.name} displays no table"
    for expression in tables:
        assert expression.startswith("format_table("), f"{path.name}: {expression[:80]}"
