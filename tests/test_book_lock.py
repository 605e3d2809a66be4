"""The book's environment is pinned with hashes, and environment.yml and pyproject.toml agree."""

from __future__ import annotations

import re

import pytest
import yaml
from _book import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11, the lock's Python

LOCK = (ROOT / "requirements-book.lock").read_text(encoding="utf-8")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
ENVIRONMENT = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))


def _entries() -> dict[str, tuple[str, list[str]]]:
    """``{name: (version, [hashes])}`` of the lock's requirements."""
    entries = {}
    for block in re.split(r"\n(?=\S)", LOCK):
        first = block.split()[0] if block.strip() else ""
        if not first or first.startswith(("#", "-")):
            continue
        name, _, version = first.partition("==")
        assert version, f"not pinned with ==: {first}"
        entries[canonicalize_name(name)] = (
            version,
            re.findall(r"--hash=sha256:([0-9a-f]{64})", block),
        )
    return entries


ENTRIES = _entries()


def test_every_locked_package_is_pinned_with_a_hash() -> None:
    assert len(ENTRIES) > 100
    unhashed = [name for name, (_, hashes) in ENTRIES.items() if not hashes]
    assert not unhashed


def test_torch_is_the_cpu_build_of_2_13_0() -> None:
    assert ENTRIES["torch"][0] == "2.13.0+cpu"
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in LOCK.splitlines()


def _requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if not r.startswith("adamqlr")]
    return reqs


@pytest.mark.parametrize("req", _requirements(), ids=str)
def test_the_lock_satisfies_pyproject(req) -> None:
    version, _ = ENTRIES[canonicalize_name(req.name)]
    assert req.specifier.contains(Version(version), prereleases=True), (req, version)


def test_environment_yml_installs_the_locked_versions() -> None:
    deps = ENVIRONMENT["dependencies"]
    python = re.search(r"^# Python: (\S+)", LOCK, re.M).group(1)
    assert f"python={python}" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    pins = {}
    for line in pip:
        if "==" in line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    assert pins == {name: version for name, (version, _) in ENTRIES.items()}
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip and "-e ." in pip


def test_license_is_an_spdx_expression_with_its_file() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))
    setuptools = next(r for r in PYPROJECT["build-system"]["requires"] if "setuptools" in r)
    assert Requirement(setuptools).specifier.contains("77")  # PEP 639 support
    assert not Requirement(setuptools).specifier.contains("76")
