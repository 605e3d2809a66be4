"""Profiles: one typed definition, parsed once at every edge, never re-listed elsewhere."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import pytest

from adamqlr.profiles import PROFILES, Profile, parse_profile, pick, profile_argument

SRC = Path(__file__).resolve().parents[1] / "src" / "adamqlr"
NAMES = {p.value for p in Profile}

#: String literals equal to a profile name that are *not* profiles: (file under src/adamqlr, value).
NOT_PROFILES = {("plots/theme.py", "paper")}  # seaborn's "paper" plotting context


def test_parse_profile_accepts_members_and_names_and_names_a_bad_value():
    assert [parse_profile(p) for p in ("smoke", "quick", "paper")] == list(PROFILES)
    assert parse_profile(Profile.PAPER) is Profile.PAPER
    for bad in ("huge", "Quick", "", None, 3):
        with pytest.raises(ValueError, match=rf"unknown profile {bad!r}.*smoke, quick, paper"):
            parse_profile(bad)  # type: ignore[arg-type]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown profile 'huge'"):
        profile_argument("huge")


def test_a_profile_reads_writes_and_hashes_as_its_plain_name():
    p = Profile.QUICK
    assert p == "quick" and hash(p) == hash("quick") and {"quick": 1}[p] == 1
    assert str(p) == f"{p}" == "quick" and f"{p:<6}|" == "quick |" and repr(p) == "'quick'"
    assert json.dumps({"profile": p}) == '{"profile": "quick"}'


def test_pick_reads_a_table_keyed_by_profile():
    table = {Profile.SMOKE: 1, Profile.QUICK: 2}
    assert pick(table, "quick") == 2 and pick(table, Profile.SMOKE) == 1
    with pytest.raises(ValueError, match="unknown profile 'paper'"):
        pick(table, "paper")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        pick(table, "huge")


def test_experiment_spec_parses_its_profile_and_keeps_its_record_strings(monkeypatch):
    from tinytask import TINY_TASKS

    from adamqlr.experiment.spec import ExperimentSpec
    from adamqlr.tasks import TASKS

    for name, where in TINY_TASKS.items():
        monkeypatch.setitem(TASKS, name, where)

    by_name = ExperimentSpec("tiny-regression", "adam", profile="smoke", steps=2)
    by_member = ExperimentSpec("tiny-regression", "adam", profile=Profile.SMOKE, steps=2)
    assert by_name.profile is Profile.SMOKE and by_name == by_member
    assert by_name.key == by_member.key
    assert type(by_name.as_dict()["profile"]) is str
    assert type(by_name.settings().as_dict()["profile"]) is str
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        ExperimentSpec("tiny-regression", "adam", profile="huge")


def _literals(path: Path) -> list[tuple[int, str]]:
    """String constants in ``path`` that equal a profile name (docstrings left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value in NAMES
        and id(node) not in docstrings
    ]


def test_the_literal_scan_finds_a_profile_name():
    found = _literals(SRC / "profiles.py")
    assert sorted(v for _, v in found) == sorted(NAMES)  # where the names are defined


def test_no_module_but_profiles_spells_a_profile_name():
    offenders, allowed_seen = [], set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel == "profiles.py":
            continue
        for line, value in _literals(path):
            if (rel, value) in NOT_PROFILES:
                allowed_seen.add((rel, value))
            else:
                offenders.append(f"src/adamqlr/{rel}:{line}: {value!r}")
    assert not offenders, (
        "profile names spelled outside adamqlr.profiles (use Profile.<NAME> or parse_profile):\n"
        + "\n".join(offenders)
    )
    assert allowed_seen == NOT_PROFILES, f"stale exemptions: {NOT_PROFILES - allowed_seen}"
