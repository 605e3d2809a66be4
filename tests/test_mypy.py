"""The package ships ``py.typed``: mypy checks ``src`` with the settings in ``pyproject.toml``.

``src`` is mypy-clean; the test fails on any error (printing every one), so new code must
type-check.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: mypy errors in ``src`` that are tolerated: none.
CEILING = 0


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (pip install 'adamqlr[test]' installs it)",
)
def test_mypy_errors_do_not_grow():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "src"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = done.stdout + done.stderr
    if done.returncode == 0:
        return  # clean
    found = re.search(r"Found (\d+) errors? in", out)
    assert found, f"mypy did not run:\n{out}"
    errors = int(found.group(1))
    assert errors <= CEILING, (
        f"mypy finds {errors} errors in src, more than the {CEILING} still to fix:\n{out}"
    )
