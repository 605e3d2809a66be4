"""K-FAC computes the same steps as the implementation frozen in ``fixtures/kfac_reference``.

The recorded trajectories (float64, 12 steps per case: MLPs with and without dropout, a
regression MLP, CNNs with and without batch norm and a free scalar parameter; adaptive and
unadaptive, with and without momentum, every estimation, stale inverses) come from the commit named
in the file, made by ``fixtures/kfac_reference/make.py``. A change to how K-FAC computes its
statistics, factorisations or curvature products must leave every step as it was to rounding.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent / "fixtures" / "kfac_reference"
RECORD = json.loads((HERE / "trajectories.json").read_text())


def _maker():
    spec = importlib.util.spec_from_file_location("kfac_reference_make", HERE / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = _maker()


def _close(actual: float, expected: float, rtol: float = 1e-8, atol: float = 1e-11) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    return abs(actual - expected) <= atol + rtol * abs(expected)


def test_the_record_covers_every_case():
    assert set(RECORD["cases"]) == set(MAKE.CASES)


@pytest.mark.parametrize("name", sorted(MAKE.CASES))
def test_steps_match_the_frozen_implementation(name):
    expected = RECORD["cases"][name]
    actual = MAKE.run(name)
    for step, (a, e) in enumerate(zip(actual["stats"], expected["stats"], strict=True)):
        assert a["accepted"] == e["accepted"] and a["reason"] == e["reason"], step
        assert a["step"] == e["step"], step
        for key in ("loss", "lr", "momentum", "damping", "rho", "quad_change", "trial_loss",
                    "damping_used"):  # fmt: skip
            assert _close(a[key], e[key]), (step, key, a[key], e[key])
    assert _close(actual["damping"], expected["damping"])
    for n, values in expected["params"].items():
        torch.testing.assert_close(
            torch.tensor(actual["params"][n]), torch.tensor(values), rtol=1e-8, atol=1e-11
        )
    assert set(actual["factors"]) == set(expected["factors"])
    for block, factors in expected["factors"].items():
        for k, values in factors.items():
            torch.testing.assert_close(
                torch.tensor(actual["factors"][block][k]),
                torch.tensor(values),
                rtol=1e-8,
                atol=1e-12,
            )
