"""Every figure of the book says what produced it: profile, runs, device, torch, date, commit.

Chapters 07-12 draw stored runs and caption them with ``provenance_text`` ("Runs: ..."); chapters
01-06 compute their figures when the page is executed and caption them with
``computation_text`` ("Made by: ..."), which shares its sentence (``where_text``) with it. A
derivation figure drawn from stored runs, or an experiment figure computed by its page, takes the
other caption.
"""

from __future__ import annotations

import re
import subprocess
from datetime import datetime, timezone

import jupytext
import pytest
from _book import ROOT

from adamqlr.results import provenance
from adamqlr.results.provenance import computation_text, where_text

NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.py") if p.name[:2].isdigit())
DERIVATIONS = [p for p in NOTEBOOKS if 1 <= int(p.name[:2]) <= 6]
EXPERIMENTS = [p for p in NOTEBOOKS if 7 <= int(p.name[:2]) <= 12]


def _figures(path):
    nb = jupytext.read(path)
    return [
        (c.metadata["mystnb"]["figure"], c)
        for c in nb.cells
        if c.cell_type == "code" and "figure" in c.metadata.get("mystnb", {})
    ]


def _glued_by(path, function: str) -> set[str]:
    """Names glued (anywhere in the notebook) with a value made by ``function``."""
    text = path.read_text(encoding="utf-8")
    names = set(re.findall(r'glue\(\s*"(\w+)",\s*' + function + r"\(", text))
    for variable in re.findall(r"(\w+) = " + function + r"\(", text):
        names |= set(re.findall(r'glue\(\s*"(\w+)",\s*' + variable + r"\b", text))
    return names


@pytest.mark.parametrize("path", DERIVATIONS, ids=lambda p: p.stem)
def test_derivation_figures_say_how_they_were_made(path) -> None:
    figures = _figures(path)
    assert figures, f"{path.name} has no figure"
    made = _glued_by(path, "computation_text")
    runs = _glued_by(path, "provenance_text")  # a derivation may also draw stored runs
    for figure, _ in figures:
        found = re.findall(r"Made by: \{glue:text\}`(\w+)`\.$", figure["caption"])
        stored = re.findall(r"Runs: \{glue:text\}`(\w+)`\.$", figure["caption"])
        assert (found and found[0] in made) or (stored and stored[0] in runs), (
            f"{path.name}: {figure.get('name')}"
        )


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_figures_name_their_runs(path) -> None:
    """A figure of stored runs names them; one the page computes says how it was made."""
    runs = _glued_by(path, "provenance_text")
    made = _glued_by(path, "computation_text")
    for figure, _ in _figures(path):
        found = re.findall(r"Runs: \{glue:text\}`(\w+)`", figure["caption"])
        computed = re.findall(r"Made by: \{glue:text\}`(\w+)`\.$", figure["caption"])
        assert (found and found[0] in runs) or (computed and computed[0] in made), (
            f"{path.name}: {figure.get('name')}"
        )


def test_computation_text_names_profile_device_torch_date_and_commit(monkeypatch) -> None:
    import torch

    calls = []

    def fake_git_state(paths=()):
        calls.append(paths)
        return {"commit": "0123456789abcdef", "dirty": False}

    monkeypatch.setattr(provenance, "git_state", fake_git_state)
    text = computation_text("two runs of 30 steps, seed 0", "quick")
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert text.startswith("two runs of 30 steps, seed 0; profile quick, on cpu (")
    assert f"torch {torch.__version__}, {today}, commit 0123456 (computed when" in text
    assert ("src", "notebooks") in calls  # pages rewritten under book/ do not make it dirty
    monkeypatch.setattr(provenance, "git_state", lambda paths=(): {"commit": None, "dirty": True})
    assert "commit unknown+dirty" in computation_text("x", "smoke")


def test_computation_text_refuses_an_empty_description() -> None:
    with pytest.raises(ValueError, match="what must say what was computed"):
        computation_text("  ", "quick")
    with pytest.raises(ValueError, match="profile must be named"):
        computation_text("x", "")


def test_where_text_is_the_sentence_of_both() -> None:
    d = {
        "profiles": ["quick"],
        "devices": ["cpu (x)"],
        "torch": ["2.13.0"],
        "dates": ("2026-01-01", "2026-01-02"),
        "commits": ["a", "b", "c", "d"],
    }
    assert where_text(d) == (
        "profile quick, on cpu (x), torch 2.13.0, 2026-01-01 to 2026-01-02, commit a, b, c and "
        "others"
    )


def test_git_state_limited_to_paths_ignores_other_changes(tmp_path) -> None:
    """``git status -- src notebooks``: the form ``git_state(paths=...)`` asks."""
    git = ["git", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    for name in ("src/a.py", "book/p.ipynb"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("1")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run(
        [*git, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], check=True
    )
    (tmp_path / "book/p.ipynb").write_text("2")
    status = [*git, "status", "--porcelain", "--untracked-files=no", "--"]
    assert subprocess.run([*status, "src"], capture_output=True, text=True).stdout == ""
    assert subprocess.run(status, capture_output=True, text=True).stdout.strip()
