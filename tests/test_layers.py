"""The import direction of vitkit's layers: no module imports a higher layer, lazily or not, and
no package imports another that imports it back.

Layers, bottom up: 0 the values every layer passes around (``checks``, ``span``, ``item``: the
model code consumes ``MultimodalItem``); 1 model code (``vitkit.encoders``, ``vitkit.lm``); 2 the
core step (the package root and ``request``, ``cache``, ``chunk``, ``embed``, ``processing``,
``images``); 3 cost models (``vitkit.costs``); 4 the simulator (``vitkit.sim``); 5 benchmarks
(``vitkit.bench``); 6 notebook views (``vitkit.viz``). Modules are found on disk and
read with ``ast`` (never imported), so every import statement counts: inside functions, under
``TYPE_CHECKING``, relative ones.
"""

from __future__ import annotations

import ast
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import vitkit

PACKAGES = {"vitkit.encoders": 1, "vitkit.lm": 1, "vitkit.costs": 3, "vitkit.sim": 4, "vitkit.bench": 5, "vitkit.viz": 6}
VALUES = {f"vitkit.{m}" for m in ("checks", "span", "item")}
CORE = {"vitkit", *(f"vitkit.{m}" for m in ("request", "cache", "chunk", "embed", "processing", "images"))}
LAYER_NAMES = {0: "values", 1: "model code", 2: "core", 3: "costs", 4: "sim", 5: "bench", 6: "viz"}


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of ``vitkit`` by dotted name: (its source file, whether it is a package)."""
    found = {"vitkit": (Path(vitkit.__file__), True)}

    def walk(path: Path, prefix: str) -> None:
        for info in pkgutil.iter_modules([str(path)]):
            name = f"{prefix}.{info.name}"
            if info.ispkg:
                found[name] = (path / info.name / "__init__.py", True)
                walk(path / info.name, name)
            else:
                found[name] = (path / f"{info.name}.py", False)

    walk(Path(vitkit.__file__).parent, "vitkit")
    return found


MODULES = modules()


def package_of(module: str) -> str:
    """The unit the layers are drawn between: a layer package, "vitkit.values" for the values or
    "vitkit" for the core modules."""
    for package in PACKAGES:
        if module == package or module.startswith(package + "."):
            return package
    if module in VALUES:
        return "vitkit.values"
    if module in CORE:
        return "vitkit"
    raise KeyError(module)


def layer_of(module: str) -> int:
    return {"vitkit.values": 0, "vitkit": 2, **PACKAGES}[package_of(module)]


def imports_in(source: str, module: str, is_package: bool = False) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement in ``source`` (of ``module``), wherever
    it is: at the top, in a function, under ``if TYPE_CHECKING``; relative ones resolved."""
    base = module if is_package else module.rpartition(".")[0]  # what a relative import is relative to
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{parent}.{node.module}" if node.module else parent
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"  # ``from vitkit.costs import results`` imports a module
                yield (sub if sub in MODULES else target), node.lineno


def vitkit_imports(module: str, source: str | None = None) -> set[tuple[str, int]]:
    """The vitkit modules ``module`` imports (each with its line); a name imported from a module
    counts as that module."""
    path, is_package = MODULES.get(module, (None, False))
    found = set()
    for target, line in imports_in(path.read_text() if source is None else source, module, is_package):
        if target == "vitkit" or target.startswith("vitkit."):
            while target not in MODULES and "." in target:  # ``import vitkit.sim.replay.x`` -> the module
                target = target.rpartition(".")[0]
            found.add((target, line))
    return found


def test_every_module_has_a_layer():
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"modules with no layer (add them to tests/test_layers.py): {unplaced}"
    assert {package_of(m) for m in MODULES} == {"vitkit", "vitkit.values", *PACKAGES}  # each layer package exists


def test_the_reader_sees_every_kind_of_import():
    source = """
import os
import vitkit.sim.replay
from vitkit.costs import results
from . import engine
from .scheduler import Arrival
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from vitkit.bench.validate import validate

def lazy():
    from vitkit.viz.plan import chunk_plan
"""
    found = vitkit_imports("vitkit.sim.example", source)
    assert found == {("vitkit.sim.replay", 3), ("vitkit.costs.results", 4), ("vitkit.sim.engine", 5),
                     ("vitkit.sim.scheduler", 6), ("vitkit.bench.validate", 9), ("vitkit.viz.plan", 12)}
    assert all(t in MODULES for m in MODULES for t, _ in vitkit_imports(m))


def test_no_module_imports_a_higher_layer():
    upward = []
    for module in sorted(MODULES):
        for target, line in sorted(vitkit_imports(module), key=lambda t: t[1]):
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} ({LAYER_NAMES[layer_of(module)]}) line {line} imports {target} "
                              f"({LAYER_NAMES[layer_of(target)]})")
    assert not upward, "imports up a layer:\n" + "\n".join(upward)


def test_vitkit_root_imports_the_core_only():
    assert {package_of(t) for t, _ in vitkit_imports("vitkit")} <= {"vitkit", "vitkit.values"}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph ``edges`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder():
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_package_cycle():
    edges: dict[str, set[str]] = {}
    where: dict[tuple[str, str], str] = {}
    for module in sorted(MODULES):
        for target, line in sorted(vitkit_imports(module), key=lambda t: t[1]):
            a, b = package_of(module), package_of(target)
            if a != b:
                edges.setdefault(a, set()).add(b)
                where.setdefault((a, b), f"{module} line {line} imports {target}")
    cycle = _cycle(edges)
    assert cycle is None, "package cycle " + " -> ".join(cycle) + ":\n" + "\n".join(
        where[(a, b)] for a, b in zip(cycle, cycle[1:]))


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_each_layer_package_is_walked(package):
    assert any(m.startswith(package + ".") for m in MODULES), f"no modules found under {package}"
