"""The paper's final-value table: bootstrap medians at the end, and the generalisation gap."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from adamqlr.results.store import RunRecord


def test_final_table_adds_the_generalisation_gap_with_summed_errors():
    from adamqlr.studies.analysis import final_table

    def run(train, test):
        frame = pd.DataFrame(
            {"step": [0.0, 1.0], "time": [0.0, 1.0], "train_loss": [2.0, train],
             "test_loss": [2.0, test]}
        )  # fmt: skip
        return RunRecord(spec=None, metrics=frame, provenance={}, manifest={"key": "k"},
                         path=Path("k"))  # fmt: skip

    table = final_table({"A": [run(0.1, 0.3), run(0.2, 0.5), run(0.3, 0.4)]})
    row = table.loc["A"]
    assert row["test_loss"] == pytest.approx(0.4, abs=0.06)
    assert row["generalisation gap"] == pytest.approx(row["test_loss"] - row["train_loss"])
    assert row["generalisation gap ±"] == pytest.approx(row["test_loss ±"] + row["train_loss ±"])
    assert row["steps"] == 1 and row["runs"] == 3
    only_test = final_table({"A": [run(0.1, 0.3)]}, ("test_loss",))
    assert "generalisation gap" not in only_test.columns
