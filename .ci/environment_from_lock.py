"""Write environment.yml from requirements-book.lock, so that conda installs the same versions.

Run by ``make lock`` after the lock is compiled: ``python .ci/environment_from_lock.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
PYTHON = re.compile(r"^# Python: (\S+)", re.M)


def main() -> int:
    lock = (ROOT / "requirements-book.lock").read_text(encoding="utf-8")
    python = PYTHON.search(lock)
    if python is None:
        print("requirements-book.lock names no '# Python: X.Y' line", file=sys.stderr)
        return 1
    pins = [f"{m.group(1)}=={m.group(2)}" for line in lock.splitlines() if (m := PIN.match(line))]
    lines = [
        "# Conda environment of the book: the versions of requirements-book.lock (without its",
        "# hashes; written by `make lock`, do not edit). Run from the repository root:",
        "#   conda env create -f environment.yml && conda activate adamqlr",
        "#   adamqlr book build        # or: make book",
        "# torch is the CPU-only build; for CUDA, then:",
        "#   pip install torch==2.13.0+cu128 --index-url https://download.pytorch.org/whl/cu128",
        "name: adamqlr",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        f"  - python={python.group(1)}",
        "  - pip",
        "  - pip:",
        "      - --extra-index-url https://download.pytorch.org/whl/cpu",
        *(f'      - "{pin}"' for pin in pins),
        '      - "-e ."',
    ]
    target = ROOT / "environment.yml"
    tmp = target.with_suffix(".yml.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(target)
    print(f"environment.yml: python {python.group(1)}, {len(pins)} pinned packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
