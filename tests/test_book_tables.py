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
    assert list(text["test loss"]) == ["0.1235", DIVERGED, DIVERGED, DIVERGED]
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
    assert loose["test loss"].tolist()[1] == "3.9e+32"
    multi = pd.concat({"final values": frame}, axis=1)
    assert format_table(multi).text[("final values", "test loss")].tolist()[1] == DIVERGED
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


def test_values_and_their_errors_share_a_cell_and_the_numbers_stay_apart() -> None:
    frame = pd.DataFrame(
        {
            "train_loss": [0.41234, 5.47e24, math.nan],
            "train_loss ±": [0.003141, 0.2, 0.1],
            "test_accuracy": [0.9, 0.8, 0.7],
            "test_accuracy ±": [0.01, math.nan, 0.02],
            "time_s": [1.5, 2.0, 3.0],
        },
        index=["A", "B", "C"],
    )
    table = format_table(frame)
    assert list(table.text.columns) == ["train loss", "test accuracy", "time (s)"]
    assert table.text["train loss"].tolist() == ["0.4123 ±\u00a00.0031", DIVERGED, DIVERGED]
    assert table.text["test accuracy"].tolist() == ["0.9 ±\u00a00.01", "0.8", "0.7 ±\u00a00.02"]
    assert "train_loss ±" in frame.columns  # the numbers themselves stay apart
    apart = format_table(frame, errors=False).text
    assert list(apart.columns) == ["train loss", "train_loss ±", "test accuracy",
                                   "test_accuracy ±", "time (s)"]  # fmt: skip
    multi = format_table(pd.concat({"final values": frame}, axis=1)).text
    assert multi[("final values", "train loss")].tolist()[0] == "0.4123 ±\u00a00.0031"
    assert multi.columns.nlevels == 2 and len(multi.columns) == 3


def test_intervals_share_a_cell_and_absurd_ratios_read_diverged() -> None:
    frame = pd.DataFrame(
        {
            "label": ["$k = 2$", "SGD", "Adam"],
            "ratio": [1.068, 1.281e13, 0.8224],
            "ratio_low": [0.9242, 1.264e6, math.nan],
            "ratio_high": [1.113, 3.738e13, 1.337],
            "median_s": [0.0005275, 0.001, 0.002],
        }
    )
    table = format_table(
        frame, diverged=["ratio"], intervals={"ratio": ("ratio_low", "ratio_high")}
    )
    assert list(table.text.columns) == ["label", "ratio", "median (s)"]
    assert table.text["ratio"].tolist() == ["1.068 [0.9242,\u00a01.113]", DIVERGED, "0.8224"]
    assert table.text["label"].tolist()[0] == r"\(k = 2\)"
    # A bound past the threshold of a value that did not diverge says so.
    frame.loc[0, "ratio_high"] = 3e7
    text = format_table(frame, diverged=["ratio"], intervals={"ratio": ("ratio_low", "ratio_high")})
    assert text.text["ratio"].tolist()[0] == "1.068 [0.9242,\u00a0> 1e6]"
    # The unnamed 0, 1, 2 index is hidden; a named one, or one asked for, is shown.
    assert not table.index and ">0<" not in table.to_html()
    assert format_table(frame, index=True).index
    assert format_table(frame.set_index("label")).index
    assert format_table(frame, headers={"median_s": "median step (s)"}).text.columns[-1] == (
        "median step (s)"
    )
    with pytest.raises(ValueError, match="intervals names column 'nope'"):
        format_table(frame, intervals={"ratio": ("nope", "ratio_high")})


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


def test_settings_in_text_cells_read_as_settings_and_can_break() -> None:
    frame = pd.DataFrame(
        {"choice": ["initial_damping=0.293, batch_size=100", "lr=0.01", r"$\lambda=10^{-8}$"]}
    )
    text = format_table(frame).text["choice"].tolist()
    nbsp = "\u00a0=\u00a0"  # no line break around the sign
    assert text == [
        rf"initial \(\lambda\){nbsp}0.293, batch size{nbsp}100",
        f"lr{nbsp}0.01",
        r"\(\lambda=10^{-8}\)",
    ]


def test_a_verdict_tables_ratio_and_interval_read_as_one_column():
    import pandas as pd

    from adamqlr.plots.tables import format_table

    frame = pd.DataFrame(
        {
            "metric": ["test_loss"],
            "ratio": [0.93],
            "CI low": [0.88],
            "CI high": [0.99],
            "runs": ["3 / 3"],
        },
        index=pd.Index(["A lower than B"], name="claim"),
    )
    text = format_table(frame).text
    assert "CI low" not in text.columns and "CI high" not in text.columns
    assert text.iloc[0, list(text.columns).index("ratio")].startswith("0.93 [0.88,")
    kept = format_table(frame, errors=False).text
    assert "CI low" in kept.columns


def test_a_verdict_tables_absurd_ratios_read_as_past_the_threshold() -> None:
    from adamqlr.studies.verdicts import verdict_table

    frame = pd.DataFrame(
        {
            "metric": ["test loss"] * 4,
            "ratio": [6.162e-34, 0.9296, 2.5e9, math.inf],
            "CI low": [0.0, 0.9216, 3.0, 1.5],
            "CI high": [0.9029, 0.9402, math.inf, math.inf],
            "runs": ["50 / 50"] * 4,
            "verdict": ["supported", "supported", "not supported", "not supported"],
        },
        index=pd.Index(["blown baseline", "plain", "blown arm", "diverged arm"], name="claim"),
    )
    assert list(frame.columns) == list(verdict_table([]).columns)  # the shape verdicts give
    text = format_table(frame).text
    assert text["ratio"].tolist() == [
        "< 1e-6 [< 1e-6,\u00a00.9029]",
        "0.9296 [0.9216,\u00a00.9402]",
        "> 1e6 [3,\u00a0> 1e6]",
        "> 1e6 [1.5,\u00a0> 1e6]",
    ]
    # Outside a verdict table a ratio column keeps its number.
    assert format_table(frame[["ratio"]]).text["ratio"].tolist()[0] == "6.162e-34"
