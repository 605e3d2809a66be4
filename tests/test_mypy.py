"""The package ships ``py.typed``: mypy checks ``src`` with the settings in ``pyproject.toml``.

``src`` is not mypy-clean yet: three errors are left in :mod:`adamqlr.optim` (a ``list[object]``
of parameter groups given to ``Optimizer.__init__``, a tuple where ``_host`` takes a list, and
SGDQLR's ``_direction`` returning a tuple where a list is declared). The test is a ratchet: it
fails when the count rises above :data:`CEILING` (printing every error), so new code must
type-check; lower the ceiling as errors are fixed, down to zero.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: mypy errors in ``src`` that are known and still to fix (0 once the package is clean).
CEILING = 3


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
