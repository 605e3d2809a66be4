"""Execute the book's notebooks with papermill: temp file, verify, promote; skip the unchanged.

One notebook (:func:`execute_notebook`):

1. read the Jupytext source; check its ``parameters`` cell sets ``profile``;
2. add two cells: first, one that installs the package pinned to the page's commit where it is
   not importable, e.g. on Colab (a no-op elsewhere; hidden in the book); last, one that reports
   which ``adamqlr`` modules were loaded and on which device the kernel ran (read back and
   removed by the runner);
3. execute it with papermill, under the project's kernel (:data:`KERNEL_NAME`, installed into the
   running environment if missing), into a temporary folder;
4. verify the result: no error output, every non-empty code cell has an execution count, no
   papermill exception flag, and the last cell ran. papermill itself flags only a cell that
   raised; after a cell timeout or a dead kernel it leaves no mark except missing counts
   (``reliability.md`` section 3.2), hence the checks and the final cell as a sentinel;
5. on success, record the provenance in ``metadata["adamqlr"]`` and atomically replace the page;
   on failure, keep the partial output beside the page (``NN_topic.failed.ipynb``), leave the last
   good page untouched, and raise :class:`NotebookFailed` naming the notebook, the cell and the
   error.

The whole book (:func:`run_book`): every notebook listed in ``_toc.yml``, in order, skipping those
whose input hash (:mod:`adamqlr.book.fingerprint`) is unchanged.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamqlr.book.fingerprint import (
    cached_digest,
    code_fingerprints,
    disk_cache,
    gather_inputs,
    input_hash,
    relative_path,
    relative_reads,
    store_reads_of,
)
from adamqlr.book.project import NotebookEntry, Project
from adamqlr.profiles import PROFILE_CHOICES, Profile, parse_profile
from adamqlr.profiles import PROFILES as ALL_PROFILES

__all__ = [
    "KERNEL_NAME",
    "METADATA_KEY",
    "Freshness",
    "NotebookFailed",
    "RunOutcome",
    "atomic_write_text",
    "choose_profile",
    "ensure_kernel",
    "execute_notebook",
    "freshness",
    "read_source",
    "recorded_metadata",
    "run_book",
    "save_caches",
    "source_profile",
]

log = logging.getLogger(__name__)

#: The Jupyter kernel the notebooks run on: this environment's Python.
KERNEL_NAME = "adamqlr"
#: Key of the runner's record in the executed notebook's metadata.
METADATA_KEY = "adamqlr"
#: Profiles a notebook can run under (``design.md`` section 4).
PROFILES: tuple[Profile, ...] = ALL_PROFILES
#: Profiles that may be published; a page last run under ``smoke`` is re-run for the book.
PUBLISHED_PROFILES: tuple[Profile, ...] = (Profile.QUICK, Profile.PAPER)

COLAB_TAG = "adamqlr-colab"
PROVENANCE_TAG = "adamqlr-provenance"
_PROVENANCE_MARK = "ADAMQLR-PROVENANCE:"
_INJECTED_TAGS = {COLAB_TAG, PROVENANCE_TAG, "injected-parameters", "papermill-error-cell-tag"}
#: Where the package is installed from on Colab when ``Project-URL: Homepage`` is unknown.
DEFAULT_REPOSITORY = "https://github.com/adamqlr-companion/adamqlr"
#: The kernelspec written into executed notebooks, so that Colab, Binder and GitHub open them with
#: their standard Python kernel; the kernel that actually ran is in ``metadata["adamqlr"]``.
PORTABLE_KERNELSPEC = {
    "name": "python3",
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
}


class NotebookFailed(RuntimeError):
    """A notebook did not run to the end; the last good executed notebook was left untouched.

    Attributes:
        notebook: The notebook's name (``01_quickstart``) or path.
        reason: What went wrong, e.g. ``"ValueError: boom"`` or ``"CellTimeoutError: ..."``.
        cell_index: Index of the failing cell in the source notebook (cells as Jupytext reads
            them, from 0), or ``None`` when no cell ran (e.g. the kernel did not start).
        cell_source: The failing cell's source.
        partial: Where the partial output was kept, if any.
        source: The notebook's source file, if known.
    """

    def __init__(
        self,
        notebook: str,
        reason: str,
        *,
        cell_index: int | None = None,
        cell_source: str | None = None,
        partial: Path | None = None,
        source: str | None = None,
    ) -> None:
        self.notebook = notebook
        self.source = source
        self.reason = reason
        self.cell_index = cell_index
        self.cell_source = cell_source
        self.partial = partial
        lines = [f"notebook {notebook} failed"]
        if source is not None:
            lines[0] = f"notebook {notebook} ({source}) failed"
        if cell_index is not None:
            lines[0] += f" in cell {cell_index} (counting from 0)"
        lines[0] += f": {reason}"
        if cell_source is not None:
            excerpt = cell_source.strip("\n").splitlines()
            shown = excerpt[:8] + (["..."] if len(excerpt) > 8 else [])
            lines.append("cell source:")
            lines.extend(f"    {line}" for line in shown)
        if partial is not None:
            lines.append(f"partial output kept in {partial}")
        lines.append("the last good executed notebook was left unchanged")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- files and sources


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    Readers see either the old file or the new one, never a half-written file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_source(path: str | os.PathLike[str]) -> Any:
    """Read a Jupytext source (``.py`` percent format or ``.ipynb``) into a notebook node."""
    import jupytext

    return jupytext.read(str(path))


def _tags(cell: Mapping[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _parameters_cell(nb: Any, name: str) -> tuple[int, dict[str, Any]]:
    """Return the index and the literal defaults of the ``parameters`` cell.

    Raises:
        ValueError: If there is no such cell, it does not parse, or it does not set ``profile``.
    """
    cells = [i for i, c in enumerate(nb.cells) if "parameters" in _tags(c)]
    if len(cells) != 1:
        raise ValueError(
            f"notebook {name}: expected exactly one code cell tagged 'parameters', found "
            f"{len(cells)}"
        )
    index = cells[0]
    try:
        tree = ast.parse(nb.cells[index].source)
    except SyntaxError as err:
        raise ValueError(f"notebook {name}: parameters cell does not parse: {err}") from None
    defaults: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                with contextlib.suppress(ValueError):
                    defaults[target.id] = ast.literal_eval(node.value)
    try:
        defaults["profile"] = parse_profile(defaults.get("profile"))  # type: ignore[arg-type]
    except ValueError:
        raise ValueError(
            f"notebook {name}: the parameters cell must set profile to one of {PROFILE_CHOICES}, "
            f"found {defaults.get('profile')!r}"
        ) from None
    return index, defaults


def source_profile(nb: Any, name: str = "notebook") -> Profile:
    """Return the default profile that a source's ``parameters`` cell sets."""
    return _parameters_cell(nb, name)[1]["profile"]


def recorded_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the runner's record of an executed notebook, or ``None`` if there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        try:
            nb = json.load(fh)
        except json.JSONDecodeError:
            return None
    meta = nb.get("metadata", {}).get(METADATA_KEY)
    return meta if isinstance(meta, dict) else None


def choose_profile(
    requested: Profile | str | None, recorded: Mapping[str, Any] | None, default: Profile | str
) -> Profile:
    """Pick the profile a notebook runs under.

    The explicit request wins; otherwise the profile of the published page (so a page made on a
    GPU under ``paper`` stays ``paper`` and reads its stored records); otherwise the source's
    default. A page last run under ``smoke`` (the tests' profile) is never kept for the book.

    Raises:
        ValueError: If ``requested`` is not a profile.
    """
    if requested is not None:
        return parse_profile(requested)
    if recorded and recorded.get("profile") in PUBLISHED_PROFILES:
        return parse_profile(recorded["profile"])
    return parse_profile(default)


# --------------------------------------------------------------------------- kernel and provenance


def ensure_kernel(name: str = KERNEL_NAME) -> str:
    """Make sure a kernelspec ``name`` runs this very interpreter; install it if not.

    The kernelspec goes into this environment (``sys.prefix``), like
    ``python -m ipykernel install --sys-prefix --name adamqlr``; where that is not writable, into
    the user's Jupyter folder.

    Returns:
        The kernel name.
    """
    from filelock import FileLock
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def usable() -> bool:
        try:
            spec = KernelSpecManager().get_kernel_spec(name)
        except NoSuchKernel:
            return False
        exe = spec.argv[0] if spec.argv else ""
        if exe in {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"}:
            return True  # jupyter_client substitutes sys.executable
        # The same environment: same bin folder and the same interpreter behind the links.
        here = Path(sys.executable)
        return (
            Path(exe).is_absolute()
            and Path(exe).parent == here.parent
            and os.path.realpath(exe) == os.path.realpath(here)
        )

    if usable():
        return name
    lock = Path(tempfile.gettempdir()) / f"adamqlr-kernelspec-{os.getuid()}.lock"
    with FileLock(str(lock)):
        if usable():
            return name
        from ipykernel.kernelspec import install

        try:
            install(kernel_name=name, display_name="Python (adamqlr)", prefix=sys.prefix)
        except OSError:
            install(kernel_name=name, display_name="Python (adamqlr)", user=True)
        log.info("installed the Jupyter kernel %r for %s", name, sys.executable)
    if not usable():
        raise RuntimeError(f"could not install a Jupyter kernel {name!r} for {sys.executable}")
    return name


def repository_url() -> str:
    """Return the repository the package is installed from on Colab (``Project-URL: Homepage``)."""
    from importlib.metadata import PackageNotFoundError, metadata

    with contextlib.suppress(PackageNotFoundError):
        for entry in metadata("adamqlr").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() in {"homepage", "repository", "source"} and url.strip():
                return url.strip()
    return DEFAULT_REPOSITORY


def git_state(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Return ``{"commit": sha or None, "dirty": bool or None}`` of the checkout at ``root``.

    The pages this runner writes (``book/*.ipynb``, ``book/reproducibility.md``) do not count:
    a run that executes several pages changes them as it goes, and the page executed after
    another must not call the tree dirty for that. Untracked files do not count either.

    Without git (or outside a checkout), ``ADAMQLR_GIT_COMMIT`` and ``ADAMQLR_GIT_DIRTY``
    (``0``/``1``) are used when set, as in :mod:`adamqlr.results`.
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    if commit is None and os.environ.get("ADAMQLR_GIT_COMMIT"):
        # A copied tree without .git (e.g. on a GPU machine): the caller says which commit it is.
        dirty = os.environ.get("ADAMQLR_GIT_DIRTY")
        return {
            "commit": os.environ["ADAMQLR_GIT_COMMIT"].strip(),
            "dirty": None if dirty is None else dirty.strip() not in ("", "0", "false"),
        }
    changed = None if status is None else [line[3:] for line in status.splitlines() if line]
    return {
        "commit": commit.strip() if commit else None,
        "dirty": None if changed is None else any(not _written_here(p) for p in changed),
    }


def _written_here(path: str) -> bool:
    """Whether ``path`` (relative to the root, as ``git status`` prints it) is a page output."""
    path = path.strip().strip('"')
    return path == "book/reproducibility.md" or (
        path.startswith("book/") and path.endswith(".ipynb") and path.count("/") == 1
    )


#: The extras a page needs beyond torch and numpy (what the Colab cell installs).
COLAB_EXTRAS = "experiments,plots,tune"


def colab_cell_source(url: str, commit: str | None) -> str:
    """Return the source of the first cell of every executed notebook.

    Where ``adamqlr`` is already importable (the book's own runs, a checkout, Binder, which builds
    ``environment.yml``) the cell does nothing. Elsewhere (Colab) it fetches the repository at
    ``commit``, the commit the page was executed from, installs the package from that checkout
    with the extras the pages use, and points :func:`adamqlr.results.default_root` at the
    checkout's ``results/`` (the run records the experiment pages read), so the page runs with
    the code and records that made it.

    Args:
        url: The git repository (``Project-URL: Homepage``).
        commit: The commit to pin (``None``, outside a git checkout: the ``main`` branch).

    Returns:
        Python source.
    """
    ref = commit or "main"
    return f"""\
# Run this page anywhere: where `adamqlr` is not installed (e.g. on Colab), fetch the companion at
# the commit this page was executed from and install it; where it is installed, do nothing.
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("adamqlr") is None:
    _repo, _commit = {url!r}, {ref!r}
    _dest = os.path.abspath("adamqlr-" + _commit[:12])
    if not os.path.isdir(os.path.join(_dest, ".git")):
        for _args in (
            ["init", "-q", _dest],
            ["-C", _dest, "fetch", "-q", "--depth", "1", _repo, _commit],
            ["-C", _dest, "checkout", "-q", "FETCH_HEAD"],
        ):
            subprocess.run(["git", *_args], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", _dest + "[{COLAB_EXTRAS}]"], check=True
    )
    os.environ["ADAMQLR_RESULTS"] = os.path.join(_dest, "results")  # the records the pages read
"""


def _colab_cell(url: str, commit: str | None) -> Any:
    import nbformat

    cell = nbformat.v4.new_code_cell(colab_cell_source(url, commit).rstrip("\n"))
    cell.metadata["tags"] = [COLAB_TAG, "remove-cell"]
    return cell


def _provenance_cell() -> Any:
    import nbformat

    source = f"""\
import json as _json, os as _os, platform as _platform, sys as _sys
_torch = _sys.modules.get("torch")
_pkg = _sys.modules.get("adamqlr")
_base = _os.path.dirname(_os.path.abspath(_pkg.__file__)) if _pkg else None
_mods = sorted(
    _os.path.relpath(_os.path.abspath(_m.__file__), _base).replace(_os.sep, "/")
    for _n, _m in list(_sys.modules.items())
    if _base and (_n == "adamqlr" or _n.startswith("adamqlr."))
    and getattr(_m, "__file__", None) and _m.__file__.endswith(".py")
)
def _cpu():
    try:
        with open("/proc/cpuinfo") as _fh:
            for _line in _fh:
                if _line.startswith("model name"):
                    return _line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine()
if _torch is not None and _torch.cuda.is_available():
    _device = "GPU: " + _torch.cuda.get_device_name(0)
else:
    _device = "CPU: " + _cpu() + f" ({{_os.cpu_count()}} logical cores)"
_reads = _sys.modules.get("adamqlr.results.reads")
print("{_PROVENANCE_MARK}" + _json.dumps({{
    "modules": _mods,
    "store_reads": _reads.logged() if _reads is not None else None,
    "device": _device,
    "torch": getattr(_torch, "__version__", None),
    "torch_threads": _torch.get_num_threads() if _torch is not None else None,
    "python": _platform.python_version(),
    "platform": _platform.platform(),
}}))"""
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = [PROVENANCE_TAG, "remove-cell"]
    return cell


#: The environment variable that makes the kernel log what it reads from a results store
#: (:data:`adamqlr.results.reads.ENV`; named here, not imported, so that the book's commands do
#: not load the results package).
READS_ENV = "ADAMQLR_LOG_READS"


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables (which a kernel started inside inherits), then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class _Problem:
    position: int  # index in the executed notebook
    reason: str


def _source_index(nb: Any, position: int) -> int | None:
    """Index of executed cell ``position`` among the source's cells (injected cells skipped)."""
    if _INJECTED_TAGS & set(_tags(nb.cells[position])):
        return None
    return sum(1 for c in nb.cells[:position] if not _INJECTED_TAGS & set(_tags(c)))


def _error_text(output: Mapping[str, Any]) -> str:
    ename, evalue = output.get("ename", "Error"), output.get("evalue", "")
    return f"{ename}: {evalue}" if evalue else str(ename)


def _problems(nb: Any, exc: BaseException | None) -> list[_Problem]:
    """Everything that says the executed notebook did not run cleanly to its end."""
    found: list[_Problem] = []
    code = [
        (i, c)
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and c.source.strip() and "papermill-error-cell-tag" not in _tags(c)
    ]
    for i, cell in code:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                found.append(_Problem(i, _error_text(output)))
                break
    missing = [i for i, cell in code if cell.get("execution_count") is None]
    if missing:
        # The cell that was running when execution stopped is the last one papermill started
        # (it stamps start_time before sending a cell to the kernel; the execution count may
        # never arrive from a kernel that dies).
        started = [
            i for i, cell in code if cell.get("metadata", {}).get("papermill", {}).get("start_time")
        ]
        earlier = [i for i, _ in code if i < missing[0]]
        culprit = started[-1] if started else (earlier[-1] if earlier else missing[0])
        why = f"{type(exc).__name__}: {exc}".strip() if exc is not None else "not executed"
        found.append(_Problem(culprit, f"execution stopped ({why.splitlines()[0]})"))
    if nb.metadata.get("papermill", {}).get("exception"):
        found.append(_Problem(code[-1][0] if code else 0, "papermill flagged an exception"))
    for i, cell in code:
        if PROVENANCE_TAG in _tags(cell) and _read_provenance(cell) is None and not missing:
            found.append(_Problem(i, "the final cell did not report (the run did not finish)"))
    found.sort(key=lambda p: p.position)
    return found


def _read_provenance(cell: Mapping[str, Any]) -> dict[str, Any] | None:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream" and output.get("name") == "stdout":
            for line in "".join(output.get("text", "")).splitlines():
                if line.startswith(_PROVENANCE_MARK):
                    with contextlib.suppress(json.JSONDecodeError):
                        return json.loads(line[len(_PROVENANCE_MARK) :])
    return None


def _stderr_outputs(nb: Any) -> list[str]:
    found = []
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                text = "".join(output.get("text", "")).strip()
                found.append(f"cell {_source_index(nb, i)}: {text[:200]}")
    return found


# --------------------------------------------------------------------------- one notebook


def execute_notebook(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    profile: Profile | str | None = None,
    parameters: Mapping[str, Any] | None = None,
    root: str | os.PathLike[str] | None = None,
    failed_path: str | os.PathLike[str] | None = None,
    cell_timeout: float | None = None,
    start_timeout: float = 120.0,
    kernel_name: str = KERNEL_NAME,
) -> dict[str, Any]:
    """Execute one notebook source and publish the result atomically.

    Args:
        source: The Jupytext source (``notebooks/NN_topic.py``).
        target: The executed notebook to write (``book/NN_topic.ipynb``). It is replaced only
            after a verified, complete run.
        profile: ``smoke``, ``quick`` or ``paper``; default: the source's own default.
        parameters: Other papermill parameters for the ``parameters`` cell.
        root: The project root, for ``# reads:`` globs and the git state (default: the source's
            grandparent folder).
        failed_path: Where to keep the partial output of a failed run (default:
            ``NN_topic.failed.ipynb`` beside ``target``).
        cell_timeout: Seconds a single cell may run (``None``: no limit).
        start_timeout: Seconds the kernel may take to start.
        kernel_name: The Jupyter kernel; :data:`KERNEL_NAME` is installed for this interpreter
            when missing.

    Returns:
        The record written to ``metadata["adamqlr"]`` of the executed notebook.

    Raises:
        NotebookFailed: If the run failed in any way (exception in a cell, cell timeout, dead
            kernel, kernel that does not start, incomplete run). The partial output, if any, is
            kept at ``failed_path``.
        ValueError: If the source has no valid ``parameters`` cell or a parameter is invalid.
    """
    import nbformat
    import papermill

    from adamqlr.version import ALGORITHM_VERSION, __version__

    source, target = Path(source).resolve(), Path(target).resolve()
    root = Path(root).resolve() if root is not None else source.parent.parent
    name = target.stem
    failed = Path(failed_path) if failed_path else target.with_name(f"{name}.failed.ipynb")
    nb = read_source(source)
    _, defaults = _parameters_cell(nb, name)
    profile = parse_profile(profile or defaults["profile"])
    params = dict(parameters or {})
    if "profile" in params:
        raise ValueError("pass the profile as profile=..., not inside parameters")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(
            f"notebook {name}: parameters {unknown} are not set in its parameters cell "
            f"(it sets {sorted(defaults)})"
        )
    code_cells = [c.source for c in nb.cells if c.cell_type == "code"]
    inputs = gather_inputs(root, source, code_cells, profile, params)

    if kernel_name == KERNEL_NAME:
        ensure_kernel(kernel_name)
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {
        "name": kernel_name,
        "display_name": kernel_name,
        "language": "python",
    }
    nb.metadata.setdefault("language_info", {"name": "python"})
    git = git_state(root)
    nb.cells.insert(0, _colab_cell(repository_url(), git["commit"]))
    nb.cells.append(_provenance_cell())

    target.parent.mkdir(parents=True, exist_ok=True)  # the notebook runs in its page's folder
    started = dt.datetime.now(dt.timezone.utc)
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"adamqlr-{name}-") as tmp:
        tmp_in, tmp_out = Path(tmp) / f"{name}.input.ipynb", Path(tmp) / f"{name}.ipynb"
        nbformat.write(nb, str(tmp_in))
        error: BaseException | None = None
        try:
            with _environment({READS_ENV: "1"}):  # the kernel logs the store's reads
                papermill.execute_notebook(
                    str(tmp_in),
                    str(tmp_out),
                    parameters={"profile": profile.value, **params},
                    kernel_name=kernel_name,
                    language="python",
                    progress_bar=False,
                    start_timeout=start_timeout,
                    execution_timeout=cell_timeout,
                    cwd=str(target.parent),
                )
        except BaseException as err:  # noqa: BLE001 - every failure must be caught (B1)
            error = err
        duration = time.perf_counter() - clock
        executed = nbformat.read(str(tmp_out), as_version=4) if tmp_out.is_file() else None
        problems = _problems(executed, error) if executed is not None else []
        if error is not None or problems or executed is None:
            partial = None
            if executed is not None:
                failed.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(failed, nbformat.writes(executed))
                partial = failed
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise error
            if problems:
                assert executed is not None  # problems come only from an executed notebook
                first = problems[0]
                index = _source_index(executed, first.position)
                cell = executed.cells[first.position]
                reason = first.reason
                if error is not None and not isinstance(error, papermill.PapermillExecutionError):
                    # A timeout or a dead kernel: the exception says more than the cell's output.
                    message = str(error).strip().splitlines()
                    reason = f"{type(error).__name__}: {message[0] if message else ''}".strip()
                raise NotebookFailed(
                    name,
                    reason,
                    cell_index=index,
                    cell_source=cell.source if index is not None else None,
                    partial=partial,
                    source=relative_path(source, root),
                ) from error
            reason = f"{type(error).__name__}: {error}" if error else "no output was written"
            raise NotebookFailed(
                name, reason.strip(), partial=partial, source=relative_path(source, root)
            ) from error

    tail = executed.cells[-1]
    provenance = _read_provenance(tail) or {}
    executed.cells.pop()  # the provenance cell has done its job
    for warning in _stderr_outputs(executed):
        log.warning("%s: output on stderr: %s", name, warning)
    code = code_fingerprints(provenance.get("modules", []))
    logged = provenance.get("store_reads")
    if isinstance(logged, dict):  # what the page read from the results store, exactly
        reads = relative_reads(logged, root)
        inputs = gather_inputs(root, source, code_cells, profile, params, store_reads=reads)
    content = inputs.content_hash()
    record = {
        "profile": profile.value,
        "parameters": params,
        "started": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "duration_s": round(duration, 1),
        "device": provenance.get("device"),
        "torch": provenance.get("torch"),
        "torch_threads": provenance.get("torch_threads"),
        "python": provenance.get("python"),
        "platform": provenance.get("platform"),
        "adamqlr": __version__,
        "algorithm_version": int(ALGORITHM_VERSION),
        "git": git,
        "kernel": kernel_name,
        "source": relative_path(source, root),
        "inputs": inputs.as_dict(),
        "content_hash": content,
        "code": code,
        "input_hash": input_hash(content, code),
    }
    executed.metadata[METADATA_KEY] = record
    _hide_default_parameters(executed)
    _stable_cell_ids(executed)
    pm_meta = executed.metadata.get("papermill", {})
    pm_meta["input_path"], pm_meta["output_path"] = record["source"], relative_path(target, root)
    executed.metadata["kernelspec"] = dict(PORTABLE_KERNELSPEC)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, nbformat.writes(executed))
    with contextlib.suppress(FileNotFoundError):
        failed.unlink()
    return record


def _stable_cell_ids(nb: Any) -> None:
    """Give every cell an id drawn from its type and source, not at random.

    nbformat and papermill give each cell a random id on every run, so re-executing an unchanged
    page rewrote every id and a rerun showed a diff on every cell. An id made from the cell's
    content stays the same across runs (a repeated cell gets a ``-N`` suffix), so a page whose
    outputs did not change differs only in its recorded commit and times.
    """
    import hashlib

    seen: dict[str, int] = {}
    for cell in nb.cells:
        text = f"{cell.get('cell_type', '')}\0{cell.get('source', '')}"
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        count = seen.get(digest, 0)
        seen[digest] = count + 1
        cell["id"] = digest if count == 0 else f"{digest}-{count}"


def _hide_default_parameters(nb: Any) -> None:
    """Hide the source's default ``parameters`` cell in the book once papermill injected its own.

    The injected cell holds the values the page actually ran with (e.g. ``profile = "paper"``);
    showing the defaults above it as well would tell the reader two different things.
    """
    injected = any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    if not injected:
        return
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]


# --------------------------------------------------------------------------- freshness


@dataclass(frozen=True)
class Freshness:
    """Whether a page is up to date with its inputs, and if not, why.

    Attributes:
        entry: The notebook.
        profile: The profile it would run under now.
        up_to_date: Recorded input hash equals the current one.
        reasons: Why not (empty when up to date).
        recorded: The page's ``metadata["adamqlr"]`` (``None`` if never executed).
    """

    entry: NotebookEntry
    profile: Profile
    up_to_date: bool
    reasons: tuple[str, ...]
    recorded: dict[str, Any] | None


def freshness(
    project: Project,
    entry: NotebookEntry,
    *,
    profile: Profile | str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> Freshness:
    """Compare a page's recorded inputs with the current ones.

    Args:
        project: The project.
        entry: The notebook.
        profile: Profile asked for (default: :func:`choose_profile`).
        parameters: Other parameters asked for (default: none).

    Returns:
        The verdict, with the reasons when stale.
    """
    default, code_cells = _source_summary(entry.source, entry.name)
    recorded = recorded_metadata(entry.target)
    chosen = choose_profile(profile, recorded, default)
    logged = store_reads_of(((recorded or {}).get("inputs") or {}).get("records") or {})
    inputs = gather_inputs(
        project.root, entry.source, code_cells, chosen, parameters, store_reads=logged
    )
    if recorded is None:
        return Freshness(entry, chosen, False, ("never executed",), None)
    reasons: list[str] = []
    old = recorded.get("inputs") or {}
    labels = {
        "source_sha256": "source changed",
        "profile": f"profile {old.get('profile')} -> {chosen}",
        "parameters": "parameters changed",
        "algorithm_version": "ALGORITHM_VERSION changed",
        "runner_version": "runner version changed",
        "records": "run records changed",
    }
    now = inputs.as_dict()
    for key, label in labels.items():
        if old.get(key) != now.get(key):
            reasons.append(label)
    old_code = recorded.get("code") or {}
    new_code = code_fingerprints(old_code)
    changed = sorted(k for k in old_code if old_code[k] != new_code.get(k))
    if changed:
        reasons.append("code changed: " + ", ".join(changed))
    current = input_hash(inputs.content_hash(), new_code)
    if current != recorded.get("input_hash") and not reasons:
        reasons.append("input hash differs")
    return Freshness(entry, chosen, not reasons, tuple(reasons), recorded)


def _source_summary(source: str | os.PathLike[str], name: str) -> tuple[Profile, list[str]]:
    """Return a source's default profile and its code cells, parsed once per version of the file.

    Parsing the 15 Jupytext sources took a good part of ``adamqlr book status``; the summary is
    kept in the on-disk cache of :mod:`adamqlr.book.fingerprint`, valid while the file is
    unchanged. A source whose ``parameters`` cell is invalid raises (and is not cached).
    """

    def summary(path: Path) -> dict[str, Any]:
        nb = read_source(path)
        return {
            "profile": source_profile(nb, name).value,
            "code": [c.source for c in nb.cells if c.cell_type == "code"],
        }

    found = cached_digest(source, "source-summary-1", summary)
    return parse_profile(found["profile"]), list(found["code"])


def save_caches() -> None:
    """Write the digests computed by this process to the on-disk cache (see ``freshness``)."""
    disk_cache().save()


# --------------------------------------------------------------------------- the whole book


@dataclass
class RunOutcome:
    """What :func:`run_book` did with one notebook.

    Attributes:
        name: The notebook.
        status: ``"skipped"`` (up to date), ``"executed"`` or ``"failed"``.
        profile: The profile.
        detail: Why it ran or was skipped, or the error.
        duration_s: Execution time (0 when skipped).
        warnings: stderr outputs of the run (they fail the strict build).
    """

    name: str
    status: str
    profile: Profile
    detail: str = ""
    duration_s: float = 0.0
    warnings: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _quiet_papermill() -> Iterator[None]:
    logger = logging.getLogger("papermill")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def run_book(
    project: Project,
    *,
    profile: Profile | str | None = None,
    only: Sequence[str] | None = None,
    force: bool = False,
    keep_going: bool = False,
    cell_timeout: float | None = None,
) -> list[RunOutcome]:
    """Execute the book's notebooks that are out of date, in ``_toc.yml`` order.

    Args:
        project: The project.
        profile: Run every selected notebook under this profile (default: per notebook,
            :func:`choose_profile`).
        only: Run only these notebooks (names like ``01_quickstart``).
        force: Run even notebooks whose inputs are unchanged.
        keep_going: After a failure, go on with the other notebooks (the failure is still
            reported); by default the run stops at the first failure.
        cell_timeout: Seconds a single cell may run.

    Returns:
        One outcome per selected notebook (fewer when stopped by a failure).
    """
    if profile is not None:
        profile = parse_profile(profile)
    entries = [project.notebook(n) for n in only] if only else project.notebooks()
    outcomes: list[RunOutcome] = []
    try:
        _run_entries(project, entries, outcomes, profile, force, cell_timeout, keep_going)
    finally:
        save_caches()
    return outcomes


def _run_entries(
    project: Project,
    entries: Sequence[NotebookEntry],
    outcomes: list[RunOutcome],
    profile: Profile | str | None,
    force: bool,
    cell_timeout: float | None,
    keep_going: bool,
) -> None:
    for entry in entries:
        state = freshness(project, entry, profile=profile)
        if state.up_to_date and not force:
            log.info(
                "%s: up to date (profile %s, inputs unchanged); skipped", entry.name, state.profile
            )
            outcomes.append(RunOutcome(entry.name, "skipped", state.profile, "inputs unchanged"))
            continue
        why = "forced" if state.up_to_date else "; ".join(state.reasons)
        log.info("%s: running under profile %s (%s)", entry.name, state.profile, why)
        try:
            with _quiet_papermill():
                record = execute_notebook(
                    entry.source,
                    entry.target,
                    profile=state.profile,
                    root=project.root,
                    failed_path=entry.failed_path(),
                    cell_timeout=cell_timeout,
                )
        except NotebookFailed as err:
            log.error("%s", err)
            outcomes.append(RunOutcome(entry.name, "failed", state.profile, str(err)))
            if not keep_going:
                break
            continue
        import nbformat

        warnings = _stderr_outputs(nbformat.read(str(entry.target), as_version=4))
        log.info("%s: executed in %.1f s", entry.name, record["duration_s"])
        outcomes.append(
            RunOutcome(entry.name, "executed", state.profile, why, record["duration_s"], warnings)
        )
