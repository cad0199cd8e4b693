"""The folder tree is the architecture: a walk over every import of the package pins its directions.

Each module's imports are read with :mod:`ast` (top level, inside functions and under ``TYPE_CHECKING``
alike: a lazy or typing-only import is still a dependency). Two checks run over that graph: no import
cycle between modules, and no import against the layering of STYLE.md section 4:

- ``engine`` never imports ``services``, ``sinks``, ``config`` or ``qualys`` (sources, stages and outputs
  are injected; what a service provides is the protocol in ``engine/source.py``);
- ``qualys`` never imports ``engine``, ``sinks``, ``config`` or ``services`` (clients take settings objects
  from the composition root);
- ``sinks`` never import ``qualys``, ``services`` or ``engine``;
- ``services`` import ``qualys`` helpers, the engine's protocols, ``model``/``errors``/``redact`` and each
  other: never ``config``, ``sinks``, ``simulator`` or the composition modules;
- ``simulator`` imports nothing else of the package (it shares nothing with the collector but the wire);
- no package imports the composition modules (``app``, ``backfill``, ``cli``, ``demo``, ``relay``), and only they read
  ``config`` (it is no hub: every other module gets settings objects or its own options model);
- only the engine's state store (``engine/store.py`` and its delivery side ``engine/outbox.py``) imports
  ``sqlite3``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = "qualys_collector"
SRC = Path(__file__).resolve().parents[1] / "src"

#: ``layer -> layers it may never import`` (a layer is the first part after the package name).
COMPOSITION = {"app", "backfill", "cli", "demo", "relay", "__main__"}
FORBIDDEN: dict[str, set[str]] = {
    "engine": {"services", "sinks", "config", "qualys"},
    "qualys": {"engine", "sinks", "config", "services"},
    "sinks": {"qualys", "services", "engine"},
    "services": {"config", "sinks", "simulator"},
}
#: Layers that import nothing of the package outside themselves.
ISOLATED = {"simulator"}
PACKAGES = {"engine", "qualys", "sinks", "services", "config", "simulator", "observability"}
#: ``external module -> the only modules that may import it``.
ONLY: dict[str, set[str]] = {
    "sqlite3": {f"{PACKAGE}.engine.store", f"{PACKAGE}.engine.outbox"},
}
#: Imports that break a rule on purpose, each with the reason; keep this empty if you can.
ALLOWED: set[tuple[str, str]] = set()

Graph = Mapping[str, set[str]]


def modules(src: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``src``, by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(src: Path, package: str = PACKAGE) -> dict[str, set[str]]:
    """``module -> every module it imports`` (package modules by their full name, others by their top name).

    ``from a.b import c`` names ``a.b.c`` when that is a module of the package, else ``a.b``.
    """
    known = modules(src, package)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here[: len(here) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in known else base)
        graph[name] = {t if t.split(".")[0] == package else t.split(".")[0] for t in targets}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The import cycles among the graph's own modules: each strongly connected group of two or more
    (or one that imports itself), as a closed path ``a -> b -> ... -> a``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def edges(node: str) -> list[str]:
        return sorted(t for t in graph.get(node, set()) if t in graph)

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges(node):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, set()):
                found.append(_path(graph, set(group)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _path(graph: Graph, group: set[str]) -> list[str]:
    """One closed path through a strongly connected ``group``, for the failure message."""
    start = min(group)
    path = [start]
    seen = {start}
    node = start
    while True:
        nexts = sorted(t for t in graph[node] if t in group)
        if start in nexts:
            return [*path, start]
        fresh = [t for t in nexts if t not in seen]
        if not fresh:
            return [*path, nexts[0]]
        node = fresh[0]
        path.append(node)
        seen.add(node)


def layer(module: str) -> str:
    """``qualys_collector.engine.cycle`` -> ``engine``; a top-level module is its own layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(graph: Graph, allowed: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Every import against the rules, as ``"importer -> imported: rule"``."""
    allow = set(allowed)
    out = []
    for importer, targets in sorted(graph.items()):
        here = layer(importer)
        for target in sorted(targets):
            if (importer, target) in allow:
                continue
            if target in ONLY and importer not in ONLY[target]:
                out.append(f"{importer} -> {target}: only {', '.join(sorted(ONLY[target]))} may import {target}")
            if not target.startswith(f"{PACKAGE}.") or target in (PACKAGE, importer):
                continue
            there = layer(target)
            if there in FORBIDDEN.get(here, set()):
                out.append(f"{importer} -> {target}: {here}/ never imports {there}/")
            elif here in ISOLATED and there != here:
                out.append(f"{importer} -> {target}: {here}/ imports nothing else of the package")
            elif here in PACKAGES and there in COMPOSITION:
                out.append(f"{importer} -> {target}: only the composition modules import {there}")
            elif there == "config" and here != "config" and here not in COMPOSITION:
                out.append(f"{importer} -> {target}: only the composition modules import config/")
    return out


# ------------------------------------------------------------------------------------ the package itself


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph(SRC)
    assert len(graph) > 50  # the walk really found the package
    assert cycles(graph) == []


def test_every_import_goes_the_allowed_direction() -> None:
    graph = import_graph(SRC)
    assert f"{PACKAGE}.engine.source" in graph[f"{PACKAGE}.engine.cycle"]  # edges are really read
    assert violations(graph, ALLOWED) == []


def test_every_allow_list_entry_is_still_needed() -> None:
    graph = import_graph(SRC)
    stale = [(a, b) for a, b in ALLOWED if b not in graph.get(a, set()) or not violations({a: {b}})]
    assert stale == []


# ------------------------------------------------------------------------------------ the checks, tested


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A throwaway ``qualys_collector`` package under ``root/src`` from ``{relative path: source}``."""
    src = root / "src"
    for relative, text in files.items():
        path = src / PACKAGE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return src


def test_a_planted_cycle_is_found_with_its_path(tmp_path: Path) -> None:
    src = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "model.py": "",
            "engine/__init__.py": "",
            "engine/a.py": "from qualys_collector.engine import b\n",
            "engine/b.py": "from . import c\nfrom ..model import x\n",
            "engine/c.py": "def late():\n    import qualys_collector.engine.a\n",
        },
    )
    graph = import_graph(src)
    assert graph[f"{PACKAGE}.engine.b"] == {f"{PACKAGE}.engine.c", f"{PACKAGE}.model"}  # relative imports resolved
    found = cycles(graph)
    names = [f"{PACKAGE}.engine.{n}" for n in ("a", "b", "c", "a")]
    assert found == [names]


def test_a_typing_only_cycle_counts_and_a_self_import_is_a_cycle(tmp_path: Path) -> None:
    src = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from qualys_collector.b import B\n",
            "b.py": "from qualys_collector import a\n",
            "c.py": "import qualys_collector.c\n",
        },
    )
    assert cycles(import_graph(src)) == [
        [f"{PACKAGE}.a", f"{PACKAGE}.b", f"{PACKAGE}.a"],
        [f"{PACKAGE}.c", f"{PACKAGE}.c"],
    ]


def test_an_acyclic_graph_has_no_cycle() -> None:
    graph = {"p.a": {"p.b", "p.c"}, "p.b": {"p.c"}, "p.c": {"os"}}
    assert cycles(graph) == []


def test_each_forbidden_direction_is_reported(tmp_path: Path) -> None:
    src = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "app.py": "from qualys_collector.engine import cycle\nimport sqlite3\n",
            "engine/__init__.py": "",
            "engine/cycle.py": "from qualys_collector.services import vm\n",
            "engine/store.py": "import sqlite3\n",
            "qualys/__init__.py": "",
            "qualys/vm.py": "from qualys_collector.config import schema\nimport sqlite3\n",
            "config/__init__.py": "",
            "config/schema.py": "from qualys_collector.services import vm\n",
            "services/__init__.py": "",
            "services/vm.py": "from qualys_collector.qualys import vm\nfrom qualys_collector.engine import cycle\n",
            "services/bad.py": "from qualys_collector.config import schema\n",
            "sinks/__init__.py": "",
            "sinks/file.py": "from qualys_collector import app\nfrom qualys_collector.engine import store\n",
            "simulator/__init__.py": "",
            "simulator/vm.py": "from qualys_collector.model import x\n",
            "observability/__init__.py": "",
            "observability/metrics.py": "from qualys_collector.config import schema\n",
        },
    )
    p = PACKAGE
    assert violations(import_graph(src)) == [
        f"{p}.app -> sqlite3: only {p}.engine.outbox, {p}.engine.store may import sqlite3",
        f"{p}.engine.cycle -> {p}.services.vm: engine/ never imports services/",
        f"{p}.observability.metrics -> {p}.config.schema: only the composition modules import config/",
        f"{p}.qualys.vm -> {p}.config.schema: qualys/ never imports config/",
        f"{p}.qualys.vm -> sqlite3: only {p}.engine.outbox, {p}.engine.store may import sqlite3",
        f"{p}.services.bad -> {p}.config.schema: services/ never imports config/",
        f"{p}.simulator.vm -> {p}.model: simulator/ imports nothing else of the package",
        f"{p}.sinks.file -> {p}.app: only the composition modules import app",
        f"{p}.sinks.file -> {p}.engine.store: sinks/ never imports engine/",
    ]
    allowed = {(f"{p}.engine.cycle", f"{p}.services.vm")}
    assert f"{p}.engine.cycle -> {p}.services.vm: engine/ never imports services/" not in violations(
        import_graph(src), allowed
    )
