"""The package's import graph: no cycles, and no import that climbs the layer
table of docs/architecture.md.

Imports are read from the source (``ast`` for ``.py``, a regex for Cython's
``.pyx``), so an import inside a function or under ``TYPE_CHECKING`` counts as
much as one at the top: a cycle that only runs later is still a cycle.
"""

from __future__ import annotations

import ast
import pathlib
import re
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PKG = ROOT / "periodic_fast"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Client-side modules talk to a server over the wire only (style.md): they
# never import the server, the scheduler, the store or the timer wheel.
CLIENT_SIDE = (
    "periodic_fast.client",
    "periodic_fast.worker",
    "periodic_fast.cluster",
    "periodic_fast.sync",
    "periodic_fast.rsa_transport",
)
SERVER_ONLY = (
    "periodic_fast.server",
    "periodic_fast.scheduler",
    "periodic_fast.store",
    "periodic_fast.wheel",
)


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, pathlib.Path]:
    found: dict[str, pathlib.Path] = {}
    for path in sorted(PKG.rglob("*.py")) + sorted(PKG.rglob("*.pyx")):
        found[_module_name(path)] = path
    return found


MODULES = _sources()


def _is_package(name: str) -> bool:
    return (ROOT / name.replace(".", "/") / "__init__.py").exists()


def _resolve(importer: str, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...``."""
    if level == 0:
        return target or ""
    base = importer.split(".")
    if not _is_package(importer):
        base.pop()  # a module's relative imports start from its package
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _edges_py(name: str, path: pathlib.Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # ``from . import codec`` imports a module, ``from . import
                # Store`` a name of the package itself
                yield sub if sub in MODULES else base


_PYX_IMPORT = re.compile(
    r"^\s*(?:from\s+(\.*)([\w.]*)\s+c?import\s+(\([^)]*\)|[\w, ]+)"
    r"|c?import\s+([\w.]+))",
    re.MULTILINE,
)


def _edges_pyx(name: str, path: pathlib.Path) -> Iterator[str]:
    for dots, target, names, plain in _PYX_IMPORT.findall(path.read_text()):
        if plain:
            yield plain
            continue
        base = _resolve(name, len(dots), target or None)
        for item in names.strip("()").split(","):
            sub = f"{base}.{item.split('#')[0].strip()}"
            yield sub if sub in MODULES else base


def _owner(target: str) -> str | None:
    """The periodic_fast module that ``target`` names (or is inside of)."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """periodic_fast module -> the periodic_fast modules it imports."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = (
            _edges_pyx(name, path) if path.suffix == ".pyx" else _edges_py(name, path)
        )
        graph[name] = set()
        for target in edges:
            owner = _owner(target)
            if owner is not None and owner != name:
                graph[name].add(owner)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


_ROW = re.compile(r"^\|\s*L(\d)\s*\|([^|]*)\|")
_TICKED = re.compile(r"`([\w./]+)`")


def layer_table() -> dict[str, int]:
    """Module (or package prefix ending in ``.``) -> layer, from the table in
    docs/architecture.md. A package written ``store/`` covers its modules;
    a quoted word that names no module (a class, say) is prose."""
    layers: dict[str, int] = {}
    for line in ARCHITECTURE.read_text().splitlines():
        row = _ROW.match(line)
        if not row:
            continue
        for item in _TICKED.findall(row.group(2)):
            name = "periodic_fast." + item.rstrip("/").replace("/", ".")
            if name not in MODULES:
                continue
            layers[name + "." if item.endswith("/") else name] = int(row.group(1))
    return layers


def _layer_of(module: str, layers: dict[str, int]) -> int | None:
    if module in layers:
        return layers[module]
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for key, layer in layers.items():
        if key.endswith(".") and (module + ".").startswith(key):
            if best is None or len(key) > best[0]:
                best = (len(key), layer)
    return None if best is None else best[1]


def test_the_walker_sees_known_edges() -> None:
    """The graph is not empty by mistake: edges every reader can check."""
    graph = import_graph()
    assert "periodic_fast.codec" in graph["periodic_fast.sched_core"]
    assert "periodic_fast.errors" in graph["periodic_fast._codec_py"]
    assert "periodic_fast.errors" in graph["periodic_fast._codec_c"]  # .pyx
    assert "periodic_fast.store" in graph["periodic_fast.server.app"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert _cycles(import_graph()) == []


def test_every_module_has_a_layer() -> None:
    layers = layer_table()
    assert layers, "no layer table found in docs/architecture.md"
    missing = [
        m for m in MODULES if m != "periodic_fast" and _layer_of(m, layers) is None
    ]
    assert missing == [], f"add these to the table in docs/architecture.md: {missing}"


def test_no_import_climbs_the_layer_table() -> None:
    layers = layer_table()
    climbing = []
    for module, targets in import_graph().items():
        mine = _layer_of(module, layers)
        if mine is None:  # the package root re-exports lazily (by name)
            continue
        for target in targets:
            theirs = _layer_of(target, layers)
            if theirs is not None and theirs > mine:
                climbing.append(f"{module} (L{mine}) imports {target} (L{theirs})")
    assert climbing == []


@pytest.mark.parametrize("module", CLIENT_SIDE)
def test_client_side_never_imports_the_server_side(module: str) -> None:
    graph = import_graph()
    seen: set[str] = set()
    todo = [module]
    while todo:  # everything it pulls in, transitively
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(graph.get(current, ()))
    bad = sorted(
        m for m in seen for s in SERVER_ONLY if m == s or m.startswith(s + ".")
    )
    assert bad == []


def test_no_module_outgrows_its_room() -> None:
    """Hand-written modules stay under ~900 lines; the compiled twins (a spec
    with a C-level mirror) are measured by their pure twin instead."""
    too_big = {
        name: n
        for name, path in MODULES.items()
        if path.suffix == ".py" and (n := len(path.read_text().splitlines())) > 900
    }
    assert too_big == {}
