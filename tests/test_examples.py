"""The runnable examples the book shows (examples/*.py) run and do what their pages say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_ddp_example_keeps_two_ranks_identical():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ddp.py"), "--steps", "10"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 ranks, 10 steps: parameters identical on every rank" in done.stdout
    assert "step 10: loss" in done.stdout
