"""Where a run came from: the environment, the code version, and the checks a record must pass.

:func:`environment` collects what a figure caption needs to say which run made it (device, torch,
Python, platform, git commit and whether the tree was dirty); :func:`validate_provenance` checks a
stored provenance against the schema (reliability goal R5).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from adamqlr import version

__all__ = [
    "REQUIRED_FIELDS",
    "computation_text",
    "device_name",
    "environment",
    "git_state",
    "validate_provenance",
    "where_text",
]

#: Fields every stored provenance has, with their JSON types.
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "key": str,
    "spec": dict,
    "settings": dict,
    "algorithm_version": int,
    "package_version": str,
    "torch_version": str,
    "python_version": str,
    "platform": str,
    "device": str,
    "device_name": str,
    "git": dict,
    "started_at": str,
    "finished_at": str,
    "duration_s": (int, float),
    "optimisation_time_s": (int, float),
    "eval_time_s": (int, float),
    "steps": int,
    "epochs": (int, float),
    "stop_reason": str,
    "data": dict,
}


@lru_cache(maxsize=4)
def git_state(paths: Sequence[str] = ()) -> dict[str, Any]:
    """Return ``{"commit": sha or None, "dirty": bool or None}`` of the source checkout.

    The package's own checkout is asked (``git rev-parse HEAD``, ``git status --porcelain
    --untracked-files=no``, limited to ``paths`` of the checkout when given: a tuple, e.g.
    ``("src", "notebooks")``). Where there is no git (e.g. a copied tree on a GPU machine),
    ``ADAMQLR_GIT_COMMIT`` and ``ADAMQLR_GIT_DIRTY`` (``0``/``1``) are used if set.
    """
    repo = Path(__file__).resolve().parent.parent.parent.parent
    state: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--",
             *paths],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        state = {"commit": commit or None, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    if state["commit"] is None and os.environ.get("ADAMQLR_GIT_COMMIT"):
        dirty = os.environ.get("ADAMQLR_GIT_DIRTY")
        state = {
            "commit": os.environ["ADAMQLR_GIT_COMMIT"],
            "dirty": None if dirty is None else dirty not in ("0", "false", "False", ""),
        }
    return state


def device_name(device: str) -> str:
    """Return a human-readable name of ``device`` (the GPU model, or the CPU model)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return str(torch.cuda.get_device_name(dev))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def environment(device: str) -> dict[str, Any]:
    """Return the environment part of a provenance for a run on ``device``."""
    import numpy
    import torch

    env: dict[str, Any] = {
        "package_version": version.__version__,
        "algorithm_version": version.ALGORITHM_VERSION,
        "torch_version": torch.__version__,
        "numpy_version": numpy.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cuda_version": torch.version.cuda,
        "git": git_state(),
        "argv": list(sys.argv),
    }
    return env


def validate_provenance(prov: Mapping[str, Any]) -> list[str]:
    """Return the problems of a stored provenance (empty when it is valid).

    Checks that every field of :data:`REQUIRED_FIELDS` is present with the right type, that the
    times are non-negative, and that the spec names its seed.
    """
    problems = []
    for name, kind in REQUIRED_FIELDS.items():
        if name not in prov:
            problems.append(f"missing {name!r}")
        elif isinstance(prov[name], bool) or not isinstance(prov[name], kind):
            problems.append(f"{name!r} has type {type(prov[name]).__name__}")
    for name in ("duration_s", "optimisation_time_s", "eval_time_s"):
        value = prov.get(name)
        if isinstance(value, (int, float)) and not value >= 0:
            problems.append(f"{name!r} is negative: {value!r}")
    if isinstance(prov.get("spec"), dict) and "seed" not in prov["spec"]:
        problems.append("spec has no seed")
    if isinstance(prov.get("git"), dict) and "commit" not in prov["git"]:
        problems.append("git has no commit field")
    return problems


def computation_text(what: str, profile: str, device: str = "cpu") -> str:
    """One sentence for the caption of a figure computed on its page rather than read from runs.

    The same sentence (through :func:`where_text`) as
    :func:`adamqlr.studies.analysis.provenance_text` gives for stored runs (profile, device,
    torch, date, commit), for the computation that is running now: the derivation chapters
    compute their figures when the page is executed.

    Args:
        what: What the page computed (``"two training runs of 300 steps, seed 0"``).
        profile: The page's profile.
        device: The torch device it computed on.

    Returns:
        ``"<what>; profile <profile>, on <device> (<name>), torch <version>, <date>, commit
        <short hash> (computed when the page was executed)"``; the commit is marked ``+dirty``
        when the library or notebook sources differed from it.

    Raises:
        ValueError: If ``what`` or ``profile`` is empty.
    """
    if not what.strip():
        raise ValueError("what must say what was computed, got an empty string")
    if not profile.strip():
        raise ValueError("profile must be named, got an empty string")
    from datetime import datetime, timezone

    env = environment(device)
    git = git_state(paths=("src", "notebooks"))  # a page rewritten in book/ does not count
    commit = str(git.get("commit") or "unknown")[:7] + ("+dirty" if git.get("dirty") else "")
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    d = {
        "profiles": [profile],
        "devices": [f"{device} ({env['device_name']})"],
        "torch": [env["torch_version"]],
        "dates": (today, today),
        "commits": [commit],
    }
    return f"{what}; {where_text(d)} (computed when the page was executed)"


def where_text(d: Mapping[str, Any]) -> str:
    """Return the caption text of where and when runs were made.

    Args:
        d: ``profiles``, ``devices``, ``torch``, ``dates`` (first, last) and ``commits``, as
            :func:`adamqlr.studies.analysis.describe_runs` gives them.
    """
    first, last = d["dates"]
    dates = first if first == last else f"{first} to {last}"
    commits = ", ".join(d["commits"][:3]) + (" and others" if len(d["commits"]) > 3 else "")
    return (
        f"profile {'/'.join(d['profiles'])}, on {'; '.join(d['devices'])}, "
        f"torch {'/'.join(d['torch'])}, {dates}, commit {commits}"
    )
