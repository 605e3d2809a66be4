"""The notebook runner: failures are never published (B1), unchanged notebooks are skipped, the
input hash covers what it claims to, and the executed notebook carries its provenance."""

from __future__ import annotations

import gzip
import json
import re

import nbformat
import pytest
import yaml
from _book import ROOT, TINY, make_project

from adamqlr.book.fingerprint import code_fingerprint, declared_reads, input_hash, record_hashes
from adamqlr.book.project import Project, ProjectError
from adamqlr.book.runner import (
    COLAB_TAG,
    METADATA_KEY,
    PROVENANCE_TAG,
    NotebookFailed,
    choose_profile,
    colab_cell_source,
    execute_notebook,
    freshness,
    repository_url,
)
from adamqlr.cli import main

FAILURES = [
    ("exception", "raise ValueError('injected failure')", "ValueError: injected failure"),
    ("cell-timeout", "import time\ntime.sleep(120)", "CellTimeoutError"),
    ("kernel-killed", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "DeadKernelError"),
]


def run(root, *args: str) -> int:
    return main(["book", "run", "--root", str(root), *args])


# ----------------------------------------------------------------------------- B1


@pytest.mark.parametrize(("kind", "body", "error"), FAILURES, ids=[f[0] for f in FAILURES])
def test_failed_run_is_never_published(tmp_path, capsys, kind, body, error) -> None:
    make_project(tmp_path, {"tiny": TINY.format(body="z = 3")})
    assert run(tmp_path) == 0
    page = tmp_path / "book" / "tiny.ipynb"
    good = page.read_bytes()

    (tmp_path / "notebooks" / "tiny.py").write_text(TINY.format(body=body))
    capsys.readouterr()
    assert run(tmp_path, "--cell-timeout", "3") == 1
    err = capsys.readouterr().err

    assert "notebook tiny (notebooks/tiny.py) failed in cell 3" in err, err
    assert body.splitlines()[-1] in err  # the cell's source is shown
    assert error in err
    assert "1 failed" in err
    assert page.read_bytes() == good  # the last good page, byte for byte
    partial = nbformat.read(tmp_path / "book" / "tiny.failed.ipynb", as_version=4)
    assert any(body.splitlines()[-1] in c.source for c in partial.cells)
    state = freshness(Project(tmp_path), Project(tmp_path).notebook("tiny"))
    assert not state.up_to_date and "source changed" in state.reasons


def test_failure_in_the_api_names_cell_and_keeps_no_half_page(tmp_path) -> None:
    make_project(tmp_path, {"tiny": TINY.format(body="raise KeyError('k')")})
    target = tmp_path / "book" / "tiny.ipynb"
    with pytest.raises(NotebookFailed) as info:
        execute_notebook(tmp_path / "notebooks" / "tiny.py", target, root=tmp_path)
    assert info.value.cell_index == 3
    assert "KeyError" in info.value.reason
    assert info.value.partial == tmp_path / "book" / "tiny.failed.ipynb"
    assert not target.exists()
    assert not list((tmp_path / "book").glob(".*.tmp"))


def test_kernel_that_cannot_start_is_a_failure(tmp_path) -> None:
    make_project(tmp_path, {"tiny": TINY.format(body="z = 3")})
    with pytest.raises(NotebookFailed, match="tiny"):
        execute_notebook(
            tmp_path / "notebooks" / "tiny.py",
            tmp_path / "book" / "tiny.ipynb",
            root=tmp_path,
            kernel_name="no-such-kernel-adamqlr",
        )
    assert not (tmp_path / "book" / "tiny.ipynb").exists()


def test_a_later_success_removes_the_failed_partial(tmp_path) -> None:
    make_project(tmp_path, {"tiny": TINY.format(body="raise ValueError")})
    assert run(tmp_path) == 1
    assert (tmp_path / "book" / "tiny.failed.ipynb").exists()
    (tmp_path / "notebooks" / "tiny.py").write_text(TINY.format(body="z = 3"))
    assert run(tmp_path) == 0
    assert not (tmp_path / "book" / "tiny.failed.ipynb").exists()


# ----------------------------------------------------------------------------- skipping


def test_unchanged_is_skipped_changed_reruns_force_reruns(tmp_path, capsys) -> None:
    make_project(tmp_path, {"tiny": TINY.format(body="z = 3")})
    page = tmp_path / "book" / "tiny.ipynb"
    assert run(tmp_path) == 0
    assert "tiny: running under profile quick (never executed)" in capsys.readouterr().err
    first = page.read_bytes()

    assert run(tmp_path) == 0
    assert "tiny: up to date (profile quick, inputs unchanged); skipped" in capsys.readouterr().err
    assert page.read_bytes() == first

    assert run(tmp_path, "--force") == 0
    assert "(forced)" in capsys.readouterr().err
    ids = [cell["id"] for cell in json.loads(first)["cells"]]
    assert [cell["id"] for cell in json.loads(page.read_text())["cells"]] == ids  # no churn
    assert len(set(ids)) == len(ids)

    assert main(["book", "status", "--root", str(tmp_path)]) == 0
    (tmp_path / "notebooks" / "tiny.py").write_text(TINY.format(body="z = 4"))
    assert main(["book", "status", "--root", str(tmp_path)]) == 1
    assert "STALE: source changed" in capsys.readouterr().out

    assert run(tmp_path, "--only", "tiny", "--profile", "smoke") == 0
    assert "source changed; profile quick -> smoke" in capsys.readouterr().err
    assert json.loads(page.read_text())["metadata"][METADATA_KEY]["profile"] == "smoke"


def test_published_profile_is_kept_and_smoke_is_never_kept() -> None:
    assert choose_profile(None, {"profile": "paper"}, "quick") == "paper"
    assert choose_profile(None, {"profile": "smoke"}, "quick") == "quick"
    assert choose_profile(None, None, "quick") == "quick"
    assert choose_profile("smoke", {"profile": "paper"}, "quick") == "smoke"
    with pytest.raises(ValueError, match="'huge'"):
        choose_profile("huge", None, "quick")


def test_unknown_notebook_and_profile_are_usage_errors(tmp_path, capsys) -> None:
    make_project(tmp_path, {"tiny": TINY.format(body="z = 3")})
    assert run(tmp_path, "--only", "nope") == 2
    assert "unknown notebook 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(tmp_path, "--profile", "huge")
    assert main(["book", "run", "--root", str(tmp_path / "book")]) == 0  # found upwards


def test_declared_run_records_are_inputs(tmp_path) -> None:
    body = "# reads: results/**/*.json\nz = 3"
    project = make_project(tmp_path, {"tiny": TINY.format(body=body)})
    assert run(tmp_path) == 0
    entry = project.notebook("tiny")
    assert freshness(project, entry).up_to_date
    (tmp_path / "results" / "a").mkdir(parents=True)
    (tmp_path / "results" / "a" / "r.json").write_text("{}")
    state = freshness(project, entry)
    assert not state.up_to_date and state.reasons == ("run records changed",)


def test_only_the_records_a_page_read_or_looked_for_are_inputs(tmp_path) -> None:
    """The kernel's read log, not the page's broad glob, decides which records count."""
    body = (
        "# reads: results/**/manifest.json\n"
        "from types import SimpleNamespace\n"
        "from adamqlr.results.store import ResultStore\n"
        f"store = ResultStore({str(tmp_path / 'results')!r}, sweep=False)\n"
        "wanted = SimpleNamespace(task='t', optimiser='o', profile='quick', seed=0, key='a' * 64)\n"
        "assert store.status(wanted) == 'missing'"
    )
    project = make_project(tmp_path, {"tiny": TINY.format(body=body)})
    assert run(tmp_path) == 0
    records = json.loads((tmp_path / "book" / "tiny.ipynb").read_text())["metadata"][METADATA_KEY][
        "inputs"
    ]["records"]
    wanted = "results/t/o/quick-seed0-aaaaaaaaaaaaaaaa/manifest.json"
    ledger = "results/tuning/t/o/trials-quick.jsonl.gz"  # where a folded trial would be
    assert records["store"] == {wanted: None}  # looked for, missing
    assert records["ledger rows"] == {f"{ledger}#{'a' * 64}": None}  # its row, not the ledger
    entry = project.notebook("tiny")
    other = tmp_path / "results" / "t" / "o" / "quick-seed1-bbbbbbbbbbbbbbbb"
    other.mkdir(parents=True)
    (other / "manifest.json").write_text(json.dumps({"profile": "quick"}))
    assert freshness(project, entry).up_to_date  # another study's record, matched by the glob
    (tmp_path / ledger).parent.mkdir(parents=True)
    line_b, line_a = (json.dumps({"key": k * 64, "final": {}}) + "\n" for k in "ba")
    (tmp_path / ledger).write_bytes(gzip.compress(line_b.encode()))
    assert freshness(project, entry).up_to_date  # another trial in the same ledger
    (tmp_path / ledger).write_bytes(gzip.compress((line_b + line_a).encode()))
    state = freshness(project, entry)
    assert not state.up_to_date and state.reasons == ("run records changed",)
    (tmp_path / ledger).unlink()
    assert freshness(project, entry).up_to_date  # back as it was
    plain = tmp_path / ledger.removesuffix(".gz")  # a ledger from before compression counts too
    plain.write_text(line_a)
    state = freshness(project, entry)
    assert not state.up_to_date and state.reasons == ("run records changed",)
    plain.unlink()
    (tmp_path / wanted).parent.mkdir(parents=True)
    (tmp_path / wanted).write_text(json.dumps({"profile": "quick"}))
    state = freshness(project, entry)
    assert not state.up_to_date and state.reasons == ("run records changed",)


def test_library_code_the_notebook_ran_is_an_input(tmp_path) -> None:
    project = make_project(tmp_path, {"tiny": TINY.format(body="import adamqlr.book.demo")})
    assert run(tmp_path) == 0
    page = tmp_path / "book" / "tiny.ipynb"
    nb = json.loads(page.read_text())
    code = nb["metadata"][METADATA_KEY]["code"]
    assert {"__init__.py", "book/__init__.py", "book/demo.py"} <= set(code)
    assert "book/runner.py" not in code  # the runner is not part of what the notebook ran
    assert "optim.py" not in code  # nor the optimisers, which the package root loads on demand
    entry = project.notebook("tiny")
    assert freshness(project, entry).up_to_date
    code["book/demo.py"] = "0" * 64  # as if demo.py had changed since the run
    page.write_text(json.dumps(nb))
    state = freshness(project, entry)
    assert state.reasons == ("code changed: book/demo.py",)


def test_fingerprint_ignores_docstrings_comments_and_layout(tmp_path) -> None:
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""Doc."""\n\ndef f(x):\n    """Twice."""\n    return 2 * x  # double\n')
    b.write_text("def f(x):\n    return 2*x\n")
    c.write_text("def f(x):\n    return 3 * x\n")
    assert code_fingerprint(a) == code_fingerprint(b)
    assert code_fingerprint(a) != code_fingerprint(c)
    bad = tmp_path / "bad.py"
    bad.write_text("def (:\n")
    assert len(code_fingerprint(bad)) == 64
    assert input_hash("x", {"a.py": "1"}) != input_hash("x", {"a.py": "2"})


def test_reads_declarations_are_checked() -> None:
    assert declared_reads(["# reads: results/x/*.json\n#reads:  a.json ", "x = 1"]) == [
        "results/x/*.json",
        "a.json",
    ]
    with pytest.raises(ValueError, match="/etc/passwd"):
        declared_reads(["# reads: /etc/passwd"])
    with pytest.raises(ValueError, match=r"\.\./up"):
        declared_reads(["# reads: ../up/*.json"])


def test_record_hashes_leave_out_records_of_other_profiles(tmp_path) -> None:
    def write(key: str, profile: str) -> None:
        folder = tmp_path / "results" / "task" / "opt" / key
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"key": key, "profile": profile}))

    write("a", "quick")
    pattern = "results/task/*/*/manifest.json"
    before = record_hashes(tmp_path, [pattern], "quick")
    write("b", "paper")  # a paper campaign writing into the same store
    assert record_hashes(tmp_path, [pattern], "quick") == before
    assert list(record_hashes(tmp_path, [pattern], "paper")[pattern]) == [
        "results/task/opt/b/manifest.json"
    ]
    assert len(record_hashes(tmp_path, [pattern])[pattern]) == 2  # no profile: every file
    write("c", "quick")
    assert record_hashes(tmp_path, [pattern], "quick") != before
    broken = "results/task/opt/a/manifest.json"
    (tmp_path / broken).write_text("{broken")  # unreadable: still hashed, so the change shows
    assert broken in record_hashes(tmp_path, [pattern], "quick")[pattern]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl"])
def test_record_hashes_count_trial_ledgers_of_the_page_profile_only(tmp_path, suffix) -> None:
    folder = tmp_path / "results" / "tuning" / "task" / "opt"
    folder.mkdir(parents=True)
    (folder / f"trials-quick{suffix}").write_text("{}\n")
    pattern = f"results/tuning/*/*/trials-*{suffix}"
    before = record_hashes(tmp_path, [pattern], "quick")
    assert list(before[pattern]) == [f"results/tuning/task/opt/trials-quick{suffix}"]
    (folder / f"trials-paper{suffix}").write_text("{}\n")  # a paper campaign folding its trials
    assert record_hashes(tmp_path, [pattern], "quick") == before
    (folder / f"trials-quick{suffix}").write_text("{}\n{}\n")
    assert record_hashes(tmp_path, [pattern], "quick") != before


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("# %%\nprofile = 'quick'\n", "exactly one code cell tagged 'parameters'"),
        ('# %% tags=["parameters"]\nseed = 0\n', "must set profile"),
        ('# %% tags=["parameters"]\nprofile = "huge"\n', "'huge'"),
    ],
)
def test_bad_parameters_cell_is_refused(tmp_path, source, message) -> None:
    make_project(tmp_path, {"tiny": source})
    with pytest.raises(ValueError, match=message):
        execute_notebook(tmp_path / "notebooks" / "tiny.py", tmp_path / "book" / "tiny.ipynb")


def test_unknown_parameter_is_refused(tmp_path) -> None:
    make_project(tmp_path, {"tiny": TINY.format(body="z = 3")})
    with pytest.raises(ValueError, match=r"\['steps'\]"):
        execute_notebook(
            tmp_path / "notebooks" / "tiny.py",
            tmp_path / "book" / "tiny.ipynb",
            parameters={"steps": 3},
        )


def test_executed_only_page_without_source_is_refused(tmp_path) -> None:
    project = make_project(tmp_path, {})
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/orphan\n"
    )
    (tmp_path / "book" / "orphan.ipynb").write_text("{}")
    with pytest.raises(ProjectError, match="without a source"):
        project.notebooks()


# ----------------------------------------------------------------------------- provenance


def test_executed_notebook_records_provenance_and_installs_on_colab(tmp_path, monkeypatch) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("ADAMQLR_GIT_COMMIT", commit)  # tmp_path is no git checkout
    make_project(tmp_path, {"tiny": TINY.format(body="print(profile, scale)")})
    record = execute_notebook(
        tmp_path / "notebooks" / "tiny.py",
        tmp_path / "book" / "tiny.ipynb",
        profile="smoke",
        parameters={"scale": 2},
        root=tmp_path,
    )
    nb = nbformat.read(tmp_path / "book" / "tiny.ipynb", as_version=4)
    meta = nb.metadata[METADATA_KEY]
    assert meta == record
    assert meta["profile"] == "smoke" and meta["parameters"] == {"scale": 2}
    assert meta["started"].endswith("Z") and meta["duration_s"] > 0
    assert meta["device"].startswith(("CPU: ", "GPU: "))
    assert meta["python"] and meta["kernel"] == "adamqlr"
    assert set(meta["git"]) == {"commit", "dirty"}
    assert meta["source"] == "notebooks/tiny.py"
    assert len(meta["input_hash"]) == 64
    assert nb.metadata.kernelspec.name == "python3"  # opens with Colab's and Binder's kernel
    assert nb.metadata.papermill.output_path == "book/tiny.ipynb"

    first = nb.cells[0]
    assert COLAB_TAG in first.metadata.tags and "remove-cell" in first.metadata.tags
    assert first.source == colab_cell_source(repository_url(), commit).rstrip("\n")
    assert meta["git"]["commit"] == commit
    assert first.outputs == [] and first.execution_count == 1  # ran, did nothing here
    assert not any(PROVENANCE_TAG in c.metadata.get("tags", []) for c in nb.cells)
    printed = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("smoke 2" in "".join(o.get("text", "")) for o in printed)


def _run_colab_cell(source, monkeypatch, tmp_path, *, importable: bool) -> list[list[str]]:
    import importlib.util
    import subprocess

    calls: list[list[str]] = []
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            (real(name, *a) if importable else None) if name == "adamqlr" else real(name, *a)
        ),
    )
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(list(args)))
    monkeypatch.chdir(tmp_path)
    # setenv first, so that monkeypatch restores the variable (or its absence) the cell sets
    monkeypatch.setenv("ADAMQLR_RESULTS", "")
    monkeypatch.delenv("ADAMQLR_RESULTS")
    exec(compile(source, "colab-cell", "exec"), {})
    return calls


def test_colab_cell_does_nothing_where_the_package_is_importable(tmp_path, monkeypatch) -> None:
    source = colab_cell_source("https://example.org/repo", "a" * 40)
    assert _run_colab_cell(source, monkeypatch, tmp_path, importable=True) == []
    assert "ADAMQLR_RESULTS" not in __import__("os").environ


def test_colab_cell_installs_the_package_at_the_pages_commit(tmp_path, monkeypatch) -> None:
    import os
    import sys

    commit = "b" * 40
    source = colab_cell_source("https://example.org/repo", commit)
    calls = _run_colab_cell(source, monkeypatch, tmp_path, importable=False)
    dest = str(tmp_path / f"adamqlr-{commit[:12]}")
    assert calls[0] == ["git", "init", "-q", dest]
    assert calls[1] == ["git", "-C", dest, "fetch", "-q", "--depth", "1",
                        "https://example.org/repo", commit]  # fmt: skip
    assert calls[2] == ["git", "-C", dest, "checkout", "-q", "FETCH_HEAD"]
    assert calls[3] == [sys.executable, "-m", "pip", "install", "-q",
                        dest + "[experiments,plots,tune]"]  # fmt: skip
    assert os.environ["ADAMQLR_RESULTS"] == os.path.join(dest, "results")
    assert "'main'" in colab_cell_source("https://example.org/repo", None)  # no commit known


def test_one_repository_url_everywhere() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    url = re.search(r'^Homepage = "([^"]+)"', pyproject, re.M).group(1)
    assert re.search(r'^Issues = "([^"]+)"', pyproject, re.M).group(1) == f"{url}/issues"
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert config["repository"]["url"] == url
    assert citation["repository-code"] == url
    assert repository_url() == url


# ----------------------------------------------------------------------------- status speed


def test_status_fingerprints_each_module_once(monkeypatch, tmp_path) -> None:
    from adamqlr.book import fingerprint
    from adamqlr.book.project import Project

    project = Project(ROOT)
    calls: list[str] = []
    real = fingerprint._code_fingerprint
    monkeypatch.setattr(fingerprint, "_FINGERPRINTS", {})
    monkeypatch.setattr(fingerprint, "_DISK", fingerprint.StampedCache(tmp_path / "h.json"))
    monkeypatch.setattr(fingerprint, "_code_fingerprint", lambda p: calls.append(str(p)) or real(p))
    states = [freshness(project, entry) for entry in project.notebooks()]
    assert len(states) >= 12
    assert calls and len(calls) == len(set(calls)), "a module was fingerprinted twice"


def test_cached_fingerprint_follows_edits(tmp_path) -> None:
    module = tmp_path / "m.py"
    module.write_text("x = 1\n")
    first = code_fingerprint(module)
    assert code_fingerprint(module) == first
    module.write_text("x = 2\n")  # same size: the modification time tells
    import os

    os.utime(module, ns=(1, 1))
    second = code_fingerprint(module)
    assert second != first
    module.write_text('"""Doc."""\nx = 2\n')  # a docstring is not code
    assert code_fingerprint(module) == second


def test_digests_are_kept_between_processes_while_the_file_is_unchanged(
    tmp_path, monkeypatch
) -> None:
    import os
    import time

    from adamqlr.book import fingerprint
    from adamqlr.book.fingerprint import StampedCache, sha256_file

    monkeypatch.setattr(fingerprint, "RACY_SECONDS", 0.05)  # a file older than this is cached
    record = tmp_path / "manifest.json"
    record.write_text('{"profile": "quick"}')
    old = time.time() - 3600
    os.utime(record, (old, old))
    time.sleep(0.1)
    calls: list[str] = []

    def digest(path):
        calls.append(str(path))
        return sha256_file(path)

    cache = StampedCache(tmp_path / "cache" / "h.json")
    first = cache.get(record, "sha256", digest)
    assert cache.get(record, "sha256", digest) == first and len(calls) == 1
    cache.save()
    again = StampedCache(tmp_path / "cache" / "h.json")  # another process
    assert again.get(record, "sha256", digest) == first and len(calls) == 1
    record.write_text('{"profile": "paper"}')  # same size; its times change
    os.utime(record, (old, old))  # even with the old modification time: ctime tells
    time.sleep(0.1)
    changed = again.get(record, "sha256", digest)
    assert changed != first and changed == sha256_file(record) and len(calls) == 2


def test_a_file_just_written_is_hashed_but_not_cached(tmp_path) -> None:
    from adamqlr.book.fingerprint import StampedCache, sha256_file

    fresh = tmp_path / "fresh.json"
    fresh.write_text("{}")
    cache = StampedCache(tmp_path / "h.json")
    calls: list[int] = []
    for _ in range(2):
        assert cache.get(fresh, "sha256", lambda p: calls.append(1) or sha256_file(p))
    assert len(calls) == 2  # within the file system's time resolution an edit could hide
    cache.save()
    assert not (tmp_path / "h.json").exists()


def test_an_unwritable_cache_costs_time_only(tmp_path) -> None:
    from adamqlr.book.fingerprint import StampedCache

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = StampedCache(blocker / "h.json")
    module = tmp_path / "m.py"
    module.write_text("x = 1\n")
    import os

    os.utime(module, (1, 1))
    cache._load()
    cache._entries = {str(module): {"stamp": [0, 0, 0, 0]}}
    cache._dirty = True
    cache.save()  # no error
    assert cache.get(module, "x", lambda p: 7) == 7


def test_book_commands_do_not_import_torch() -> None:
    """`adamqlr book status` answers in about a second: importing the package root loads its
    optimisers (and torch, seconds) only when one is asked for."""
    import subprocess
    import sys

    code = (
        "import sys, adamqlr, adamqlr.cli, adamqlr.book.cli, adamqlr.book.runner, "
        "adamqlr.book.build; assert 'torch' not in sys.modules, 'torch imported'; "
        "from adamqlr import AdamQLR, KFAC, get_loss; import adamqlr.optim; "
        "assert adamqlr.AdamQLR is adamqlr.optim.AdamQLR; "
        "assert set(adamqlr.__all__) <= set(dir(adamqlr))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_pages_the_runner_wrote_do_not_make_the_tree_dirty(tmp_path) -> None:
    """A run executing several pages changes book/*.ipynb as it goes: the next page's git
    state stays clean; any other change (a source, a record) still makes it dirty."""
    import subprocess

    from adamqlr.book.runner import git_state

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "02_page.ipynb").write_text("{}")
    (tmp_path / "book" / "reproducibility.md").write_text("a")
    (tmp_path / "src.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "init")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "book" / "02_page.ipynb").write_text('{"cells": []}')
    (tmp_path / "book" / "reproducibility.md").write_text("b")
    (tmp_path / "untracked.txt").write_text("u")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "src.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True
