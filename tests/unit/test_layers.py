"""The packages stack in floors, and no file imports its way back to itself.

The allowed direction is written once, in `FLOORS`: a module may import from its own floor
and the floors below it, never from a floor above. Every import counts, function-local and
`TYPE_CHECKING` ones included, because a cycle hidden in a function body is still a cycle
(it only shows later, as a partly initialised module). Between files there are no cycles
at all, on any floor.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Bottom to top. A room is a package, or `cluster` for the ground files directly in
#: cluster/; a module belongs to the longest room its dotted name starts with.
FLOORS: list[tuple[str, ...]] = [
    ("cluster",),
    ("cluster.auth", "cluster.data", "cluster.llm"),
    ("workflows",),
    ("actors",),
    ("serve",),
    ("cluster.cli", "cluster.bench"),
]
PACKAGES = ("cluster", "workflows", "actors", "serve")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module of ours
    line: int
    text: str  # the import statement as written


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[module_name(path)] = path
    return found


def resolve(name: str) -> str | None:
    """The module of ours `name` runs: itself, or the nearest package holding it."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


def imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    # `from pkg import mod` imports the module file when there is one, else pkg itself.
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]


def statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement, at any depth: in functions, classes, `if TYPE_CHECKING:`, `try:`..."""
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody"):
            yield from statements(getattr(node, field, []))
        for nested in (*getattr(node, "handlers", []), *getattr(node, "cases", [])):
            yield from statements(nested.body)


@cache
def imports() -> tuple[Import, ...]:
    found: dict[tuple[str, str, int], Import] = {}
    for module, path in modules().items():
        source = path.read_text()
        lines = source.splitlines()
        for node in statements(ast.parse(source, str(path)).body):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            text = " ".join(" ".join(lines[node.lineno - 1 : node.end_lineno]).split())
            for name in imported(module, path, node):
                target = resolve(name)
                if target is not None and target != module:
                    found.setdefault(
                        (module, target, node.lineno), Import(module, target, node.lineno, text)
                    )
    return tuple(found.values())


def room(module: str) -> str:
    rooms = [r for floor in FLOORS for r in floor if module == r or module.startswith(r + ".")]
    return max(rooms, key=len)


def floor(module: str) -> int:
    return next(i for i, rooms in enumerate(FLOORS) if room(module) in rooms)


def where(item: Import) -> str:
    return f"{modules()[item.source].relative_to(REPO)}:{item.line}: {item.text}"


def cycles() -> list[list[Import]]:
    """One shortest cycle through each strongly connected group of files (Tarjan)."""
    edges: dict[str, dict[str, Import]] = {}
    for item in imports():
        edges.setdefault(item.source, {}).setdefault(item.target, item)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while (top := stack.pop()) != node:
                group.add(top)
            if group:
                groups.append(group | {node})

    for node in sorted(modules()):
        if node not in index:
            visit(node)
    return [shortest_cycle(sorted(group)[0], group, edges) for group in groups]


def shortest_cycle(
    start: str, group: set[str], edges: dict[str, dict[str, Import]]
) -> list[Import]:
    came: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt, item in sorted(edges.get(node, {}).items()):
            if nxt not in group or nxt in came:
                continue
            came[nxt] = item
            if nxt == start:
                path = [item]
                while path[0].source != start:
                    path.insert(0, came[path[0].source])
                return path
            queue.append(nxt)
    raise AssertionError(f"no cycle through {start}")


def test_every_package_and_cluster_room_has_a_floor() -> None:
    placed = {r for rooms in FLOORS for r in rooms}
    rooms = set(PACKAGES) | {
        f"cluster.{d.name}" for d in (REPO / "cluster").iterdir() if (d / "__init__.py").exists()
    }
    assert placed == rooms, (
        f"FLOORS names {sorted(placed - rooms)} that do not exist and misses "
        f"{sorted(rooms - placed)}: place each package of cluster/ on a floor"
    )
    tops = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert tops == set(PACKAGES), f"packages {sorted(tops ^ set(PACKAGES))}: walk or drop them"


def test_the_walk_sees_every_kind_of_import() -> None:
    """The walk is not blind: the function-local and relative imports it must see, it sees."""
    seen = {(i.source, i.target) for i in imports()}
    assert ("cluster.cli.executions", "cluster.cli.jobs") in seen  # function-local
    assert ("cluster.cli.main", "cluster.cli.cluster") in seen  # `from pkg import mod`
    assert len(seen) > 500


def test_no_import_runs_up_a_floor() -> None:
    upward = [
        f"{where(i)}  ({room(i.source)} may not import {room(i.target)})"
        for i in imports()
        if floor(i.target) > floor(i.source)
    ]
    order = " < ".join("/".join(rooms) for rooms in FLOORS)
    assert not upward, f"imports up a floor ({order}):\n" + "\n".join(upward)


def test_no_import_cycle_between_files() -> None:
    found = [
        " -> ".join([c[0].source, *(i.target for i in c)]) + "\n    " + "\n    ".join(map(where, c))
        for c in cycles()
    ]
    assert not found, "import cycles between files:\n" + "\n".join(found)
