"""The README's steps do what it says: `make` targets, torch's build, `adamqlr run`'s folder."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from _book import ROOT
from tinytask import registered

from adamqlr.cli import main
from adamqlr.experiment.cli import results_folder, user_data_folder
from adamqlr.results.store import ResultStore

README = (ROOT / "README.md").read_text(encoding="utf-8")
MAKE = shutil.which("make")


def _dry_run(target: str, **variables: str) -> str:
    args = [MAKE, "-n", "-B", "-f", str(ROOT / "Makefile"), target, "VENV=/nonexistent/venv"]
    args += [f"{k}={v}" for k, v in variables.items()]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout


@pytest.mark.skipif(MAKE is None, reason="no make")
def test_make_book_builds_and_make_rerun_forces_every_page() -> None:
    assert "adamqlr book build\n" in _dry_run("book")
    assert "adamqlr book build --force" in _dry_run("rerun")
    assert "make rerun" in README and "make book" in README


@pytest.mark.skipif(MAKE is None, reason="no make")
def test_the_environment_comes_from_the_hashed_lock_unless_told() -> None:
    lines = _dry_run("env").splitlines()
    lock = next(
        i for i, line in enumerate(lines) if "--require-hashes -r requirements-book.lock" in line
    )
    package = next(i for i, line in enumerate(lines) if re.search(r"--no-deps .*-e \.$", line))
    assert lock < package
    assert not any("download.pytorch.org/whl/cu" in line for line in lines)
    cuda = _dry_run("env", TORCH_CUDA="cu128")
    assert '"torch==2.13.0+cu128" --index-url https://download.pytorch.org/whl/cu128' in cuda
    unpinned = _dry_run("env", LOCK="")
    assert "requirements-book.lock" not in unpinned
    torch_line = unpinned.index('--extra-index-url https://download.pytorch.org/whl/cpu "torch==')
    assert torch_line < unpinned.index('-e ".[test]"')
    for text in ("download.pytorch.org/whl/cpu", "TORCH_CUDA=cu128", "LOCK=", "make lock"):
        assert text in README, text


@pytest.fixture
def tiny_tasks(monkeypatch):
    yield from registered(monkeypatch)


def _files(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_adamqlr_run_writes_to_a_user_folder_not_the_books_results(
    tiny_tasks, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.delenv("ADAMQLR_RESULTS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(ROOT)  # even from the checkout, the book's results/ is left alone
    book_results = ROOT / "results"
    before = _files(book_results)
    args = ["run", "--task", "tiny-regression", "--optimiser", "adam", "--profile", "smoke",
            "--steps", "2", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    user = tmp_path / "data" / "adamqlr" / "results"
    assert str(user) in capsys.readouterr().out
    assert len(ResultStore(user).query()) == 1
    assert _files(book_results) == before
    assert "~/.local/share/adamqlr/results" in README


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="the XDG rule is for Linux")
def test_results_option_and_environment_choose_the_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ADAMQLR_RESULTS", str(tmp_path / "env"))
    assert results_folder() == tmp_path / "env"
    assert results_folder(tmp_path / "opt") == tmp_path / "opt"
    monkeypatch.delenv("ADAMQLR_RESULTS")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert results_folder() == tmp_path / "xdg" / "adamqlr" / "results"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_data_folder() == tmp_path / "home" / ".local" / "share" / "adamqlr"
    assert results_folder() == tmp_path / "home" / ".local" / "share" / "adamqlr" / "results"
    assert str(results_folder("results")) == "results"
    assert "--results results" in README


@pytest.mark.skipif(MAKE is None, reason="no make")
def test_asking_for_another_torch_build_reinstalls(tmp_path) -> None:
    """`make book TORCH_CUDA=cu128` after a plain `make book` installs the CUDA build (the
    environment's stamp alone would say "up to date"), and a plain one afterwards goes back."""
    venv = tmp_path / "venv"

    def dry(**variables: str) -> str:
        args = [MAKE, "-n", "-f", str(ROOT / "Makefile"), "env", f"VENV={venv}"]
        args += [f"{k}={v}" for k, v in variables.items()]
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout

    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / ".torch-cpu").touch()
    stamp = venv / "bin" / ".installed"
    stamp.touch()
    import os
    import time

    newest = max(
        time.time(),
        *(p.stat().st_mtime for p in (ROOT / "pyproject.toml", ROOT / "requirements-book.lock")),
    )

    os.utime(stamp, (newest + 10, newest + 10))
    assert "pip install" not in dry()  # a plain make book: up to date
    cuda = dry(TORCH_CUDA="cu128")
    assert '"torch==2.13.0+cu128" --index-url https://download.pytorch.org/whl/cu128' in cuda
    (venv / "bin" / ".torch-cpu").unlink()
    (venv / "bin" / ".torch-cu128").touch()
    os.utime(stamp, (newest + 20, newest + 20))
    back = dry()
    assert "--require-hashes -r requirements-book.lock" in back and "cu128" not in back
