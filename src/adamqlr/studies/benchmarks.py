"""The committed step-cost benchmark: the one source of a step's cost for every page.

``benchmarks/step_cost.py --runs 3 --kfac --save results/benchmarks/step_cost-cpu.json`` times
AdamQLR (Fisher and Hessian) and K-FAC against ``torch.optim.Adam`` side by side, every variant
in turn for a few steps in a row on the same batches (as a training loop takes them), and writes
the medians over the runs beside every run and its provenance (commit, date, machine, threads,
steps in a row). Wall-clock differences between separate training
runs mix in machine load (identical runs of ours differ by up to 3x); ratios measured side by side
do not, so pages quote these.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["STEP_COST_FILE", "StepCostBenchmark", "load_step_cost"]

#: Where the committed CPU benchmark lives, relative to the results folder.
STEP_COST_FILE = Path("benchmarks") / "step_cost-cpu.json"

_COLUMNS = (
    "ms", "ratio", "ratio_lo", "ratio_hi", "floor", "over_floor", "floor_update",
    "over_floor_update", "floor_via", "runs",
)  # fmt: skip


@dataclass(frozen=True)
class StepCostBenchmark:
    """A saved step-cost benchmark.

    Attributes:
        provenance: Commit, date, machine, threads, runs (as the benchmark wrote them).
        table: One row per (case, variant): ``ms`` (the median time of one call in
            milliseconds, over the runs), ``ratio`` (median time / Adam's), ``ratio_lo`` and
            ``ratio_hi`` (the range over runs), ``floor`` and ``floor_update`` (the floors / Adam),
            ``over_floor`` and ``over_floor_update`` (time / floor), ``floor_via``, ``runs``.
        path: The file.
    """

    provenance: dict[str, Any]
    table: pd.DataFrame
    path: Path

    def ratio(self, case: str, variant: str) -> float:
        """Return the median ratio of ``variant``'s step time to Adam's on ``case``.

        Raises:
            KeyError: For a case or variant the benchmark did not measure (named in the message).
        """
        rows = self.table[(self.table["case"] == case) & (self.table["variant"] == variant)]
        if rows.empty:
            raise KeyError(
                f"{self.path} has no {variant!r} on {case!r}; it has "
                f"{sorted(set(zip(self.table['case'], self.table['variant'], strict=True)))}"
            )
        return float(rows["ratio"].iloc[0])

    def text(self) -> str:
        """One line of provenance for a caption."""
        p = self.provenance
        commit = str((p.get("git") or {}).get("commit") or "unknown")[:7]
        dirty = " (uncommitted changes)" if (p.get("git") or {}).get("dirty") else ""
        burst = p.get("burst") or 1  # records made before --burst ran one step per turn
        turn = "one step" if burst == 1 else f"{burst} steps in a row"
        return (
            f"step-cost benchmark, medians of {p.get('runs')} runs measured side by side "
            f"({turn} per turn), "
            f"{p.get('threads')} torch thread(s) on {p.get('processor')} ({p.get('device')}), "
            f"torch {p.get('torch_version')}, commit {commit}{dirty}, {p.get('written_at')}"
        )


def load_step_cost(
    root: str | os.PathLike[str] | None = None, path: str | os.PathLike[str] | None = None
) -> StepCostBenchmark:
    """Load the committed step-cost benchmark.

    Args:
        root: The results folder (default :func:`adamqlr.results.default_root`).
        path: The file itself (overrides ``root``).

    Raises:
        FileNotFoundError: If there is no benchmark file (the message gives the command).
        ValueError: If the file is not a saved benchmark.
    """
    if path is None:
        if root is None:
            from adamqlr.results import default_root

            root = default_root()
        path = Path(root) / STEP_COST_FILE
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no step-cost benchmark at {path}; make it with: python benchmarks/step_cost.py "
            f"--runs 3 --kfac --save {path}"
        )
    try:
        data = json.loads(path.read_text())
        median = data["median"]
        provenance = dict(data["provenance"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a saved step-cost benchmark: {err!r}") from err
    rows = []
    for case, variants in median.items():
        for variant, row in variants.items():
            lo, hi = row.get("ratio_range", [row["ratio"], row["ratio"]])
            rows.append(
                {
                    "case": case,
                    "variant": variant,
                    **{k: row.get(k) for k in _COLUMNS},
                    "ratio_lo": lo,
                    "ratio_hi": hi,
                }
            )
    table = pd.DataFrame(rows, columns=["case", "variant", *_COLUMNS])
    return StepCostBenchmark(provenance=provenance, table=table, path=path)
