"""The package's import graph: rooms in layers, arrows one way, no cycles.

Every ``import`` of every module under ``src/adamqlr`` is read with :mod:`ast` (top-level,
function-level and ``TYPE_CHECKING`` imports alike), plus every string that names a package module
(what ``importlib.import_module`` or a lazy table would load). A *room* is a top-level module or
subpackage of ``adamqlr``; :data:`LAYERS` orders them as the package docstring draws them. The test
fails on an import from a room to a room in a higher layer or in the same layer, on an import of
the package root from inside the package, and on any cycle between modules; it prints the edge.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "adamqlr"

#: Rooms from the bottom up; a room may import only from rooms in lower layers (and itself).
#: Keep in step with the layering in ``src/adamqlr/__init__.py``.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("version", "profiles", "_random", "_state", "_step_hooks", "_validation", "_checks"),
    ("backends", "outputs", "precision"),
    ("losses",),
    ("curvature",),
    ("heuristics", "distributed"),
    ("rules", "heldout"),
    ("optim",),
    ("algorithm", "kfac", "baydin"),
    ("testing",),
    ("steppers",),
    ("baselines",),
    ("data",),
    ("tasks",),
    ("results",),
    ("experiment",),
    ("tune", "lens"),
    ("studies",),
    ("plots",),
    ("book",),
    ("cli",),
)
LEVEL = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}
_MODULE_STRING = re.compile(r"^adamqlr(\.[A-Za-z_][A-Za-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_]*)?$")


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """Yield ``(imported module, line)`` for each import in ``path`` of a package module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(target: str) -> str:
        while target not in known and "." in target:  # an attribute: the module that holds it
            target = target.rpartition(".")[0]
        return target

    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield resolve(alias.name), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:  # ``from adamqlr import version`` imports a module
                full = f"{module}.{alias.name}"
                yield (full if full in known else resolve(module)), node.lineno
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docs
            and _MODULE_STRING.match(node.value)
        ):
            target = node.value.partition(":")[0]
            if target in known:
                yield target, node.lineno


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def edges() -> list[tuple[str, str, str]]:
    """Every ``(importer, imported, "file:line")`` between distinct package modules."""
    mods = modules()
    out = []
    for name, path in mods.items():
        for target, line in imports(name, path, set(mods)):
            if target != name:
                rel = path.relative_to(SRC.parent).as_posix()
                out.append((name, target, f"{rel}:{line}"))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_scan_sees_every_kind_of_import():
    mods = modules()
    found = {(a, b) for a, b, _ in edges()}
    assert ("adamqlr.experiment.optimisers", "adamqlr.baselines") in found  # top level
    assert ("adamqlr.cli", "adamqlr.studies.cli") in found  # function level, from-package form
    assert ("adamqlr.tasks", "adamqlr.tasks.uci") in found  # a lazy "module:Class" string
    assert ("adamqlr.results.store", "adamqlr.version") in found  # ``from adamqlr import x``
    assert "adamqlr.lens.line" in mods and ("adamqlr.lens.line", "adamqlr.algorithm") in found


def test_the_checks_fail_on_a_cycle_and_on_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not cycles({"a": {"b"}, "b": set()})
    assert LEVEL["optim"] < LEVEL["experiment"] < LEVEL["book"]  # so book -> optim is allowed


def test_every_room_has_a_layer():
    rooms = {room(m) for m in modules()} - {PACKAGE}
    assert rooms <= set(LEVEL), f"rooms missing from LAYERS: {sorted(rooms - set(LEVEL))}"
    assert set(LEVEL) <= rooms, f"LAYERS names rooms that do not exist: {set(LEVEL) - rooms}"


def test_the_package_docstring_draws_the_same_layers():
    import adamqlr

    doc = adamqlr.__doc__ or ""
    drawing = doc[doc.index("::", doc.index("rooms in layers")) :]
    positions = {}
    for r in LEVEL:
        found = re.search(rf"(?<![\w.]){re.escape(r)}(?![\w.])", drawing)
        positions[r] = found.start() if found else -1
    assert all(p >= 0 for p in positions.values()), [r for r, p in positions.items() if p < 0]
    for lower, higher in zip(LAYERS, LAYERS[1:], strict=False):
        assert max(positions[r] for r in lower) < min(positions[r] for r in higher), (
            f"the docstring lists {higher} before {lower}"
        )


def test_imports_point_down_the_layers():
    bad = []
    for a, b, where in edges():
        ra, rb = room(a), room(b)
        if rb == PACKAGE and ra != PACKAGE:
            bad.append(f"{where}: {a} -> {b} (the package root re-exports; import the room)")
        elif ra != rb and ra != PACKAGE and LEVEL[rb] >= LEVEL[ra]:
            bad.append(f"{where}: {a} -> {b} (room {ra!r}, layer {LEVEL[ra]}, imports room "
                       f"{rb!r}, layer {LEVEL[rb]})")  # fmt: skip
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize("level", ["module", "room"])
def test_there_are_no_import_cycles(level):
    graph: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for a, b, at in edges():
        if level == "room":
            a, b = room(a), room(b)
            if a == b:
                continue
        graph.setdefault(a, set()).add(b)
        where.setdefault((a, b), at)
    found = cycles(graph)
    lines = []
    for component in found:
        members = set(component)
        lines += [f"  {where[(a, b)]}: {a} -> {b}"
                  for a in component for b in sorted(graph[a] & members)]  # fmt: skip
    assert not found, f"import cycles ({level}s): {found}\n" + "\n".join(lines)
