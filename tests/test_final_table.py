"""The paper's final-value table: bootstrap medians at the end, and the generalisation gap."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from adamqlr.results.store import RunRecord


def run(train, test):
    """A two-point run record ending at these training and test losses."""
    frame = pd.DataFrame(
        {"step": [0.0, 1.0], "time": [0.0, 1.0], "train_loss": [2.0, train],
         "test_loss": [2.0, test]}
    )  # fmt: skip
    return RunRecord(spec=None, metrics=frame, provenance={}, manifest={"key": "k"},
                     path=Path("k"))  # fmt: skip


def test_final_table_adds_the_generalisation_gap_with_summed_errors():
    from adamqlr.studies.analysis import final_table

    table = final_table({"A": [run(0.1, 0.3), run(0.2, 0.5), run(0.3, 0.4)]})
    row = table.loc["A"]
    assert row["test_loss"] == pytest.approx(0.4, abs=0.06)
    assert row["generalisation gap"] == pytest.approx(row["test_loss"] - row["train_loss"])
    assert row["generalisation gap ±"] == pytest.approx(row["test_loss ±"] + row["train_loss ±"])
    assert row["steps"] == 1 and row["runs"] == 3
    only_test = final_table({"A": [run(0.1, 0.3)]}, ("test_loss",))
    assert "generalisation gap" not in only_test.columns


def test_an_arm_whose_typical_run_blew_up_has_no_gap_and_reads_diverged():
    from adamqlr.plots.tables import DIVERGED, format_table
    from adamqlr.studies.analysis import final_table, run_diverged

    # Two blown-up losses whose difference is small: the difference is not a gap.
    blown = [run(4.0e32, 4.0e32 + 1e17), run(5.0e32, 5.0e32), run(float("inf"), float("inf"))]
    fine = [run(0.1, 0.3), run(0.2, 0.5)]
    table = final_table({"blown": blown, "fine": fine})
    assert table.loc["blown", "generalisation gap"] == float("inf")
    assert pd.isna(table.loc["blown", "generalisation gap ±"])
    assert table.loc["fine", "generalisation gap"] == pytest.approx(
        table.loc["fine", "test_loss"] - table.loc["fine", "train_loss"]
    )
    text = format_table(table).text
    assert text.loc["blown", "generalisation gap"] == DIVERGED
    assert text.loc["fine", "generalisation gap"] != DIVERGED
    # A run counts as diverged at a non-finite or blown-up final loss, not at a large fine one.
    assert [run_diverged(r) for r in blown] == [True, True, True]
    assert not run_diverged(run(0.1, 0.3)) and not run_diverged(run(9.9e5, 1.0))
    assert run_diverged(run(9.9e5, 1.0), blowup=1e5)
