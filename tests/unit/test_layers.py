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
from functools import cache, cached_property
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


def statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement, at any depth: in functions, classes, `if TYPE_CHECKING:`, `try:`..."""
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody"):
            yield from statements(getattr(node, field, []))
        for nested in (*getattr(node, "handlers", []), *getattr(node, "cases", [])):
            yield from statements(nested.body)


@dataclass
class Tree:
    """The modules of `PACKAGES` under `root`, and every import between them."""

    root: Path

    @cached_property
    def modules(self) -> dict[str, Path]:
        found = {}
        for package in PACKAGES:
            for path in sorted((self.root / package).rglob("*.py")):
                if "__pycache__" not in path.parts:
                    parts = list(path.relative_to(self.root).with_suffix("").parts)
                    found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
        return found

    def resolve(self, name: str) -> str | None:
        """The module of ours `name` runs: itself, or the nearest package holding it."""
        while name:
            if name in self.modules:
                return name
            name = name.rpartition(".")[0]
        return None

    def imported(self, module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            is_package = self.modules[module].name == "__init__.py"
            package = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        # `from pkg import mod` imports the module file when there is one, else pkg itself.
        return [
            f"{base}.{a.name}" if f"{base}.{a.name}" in self.modules else base for a in node.names
        ]

    @cached_property
    def imports(self) -> tuple[Import, ...]:
        found: dict[tuple[str, str, int], Import] = {}
        for module, path in self.modules.items():
            source = path.read_text()
            lines = source.splitlines()
            for node in statements(ast.parse(source, str(path)).body):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                text = " ".join(" ".join(lines[node.lineno - 1 : node.end_lineno]).split())
                for name in self.imported(module, node):
                    target = self.resolve(name)
                    if target is not None and target != module:
                        item = Import(module, target, node.lineno, text)
                        found.setdefault((module, target, node.lineno), item)
        return tuple(found.values())

    def where(self, item: Import) -> str:
        return f"{self.modules[item.source].relative_to(self.root)}:{item.line}: {item.text}"

    def upward(self) -> list[str]:
        """Each import that runs up a floor, named by file, line and statement."""
        return [
            f"{self.where(i)}  ({room(i.source)} may not import {room(i.target)})"
            for i in self.imports
            if floor(i.target) > floor(i.source)
        ]

    def cycles(self) -> list[str]:
        """One shortest cycle through each strongly connected group of files, spelled out."""
        edges: dict[str, dict[str, Import]] = {}
        for item in self.imports:
            edges.setdefault(item.source, {}).setdefault(item.target, item)
        found = []
        for group in strongly_connected(sorted(self.modules), edges):
            cycle = shortest_cycle(min(group), group, edges)
            files = " -> ".join([cycle[0].source, *(i.target for i in cycle)])
            found.append(files + "".join(f"\n    {self.where(i)}" for i in cycle))
        return found


def room(module: str) -> str:
    rooms = [r for floor in FLOORS for r in floor if module == r or module.startswith(r + ".")]
    return max(rooms, key=len)


def floor(module: str) -> int:
    return next(i for i, rooms in enumerate(FLOORS) if room(module) in rooms)


def strongly_connected(nodes: list[str], edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's groups of more than one file: each holds at least one cycle."""
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
            group = {node}
            while (top := stack.pop()) != node:
                group.add(top)
            if len(group) > 1:
                groups.append(group)

    for node in nodes:
        if node not in index:
            visit(node)
    return groups


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


@cache
def repo() -> Tree:
    return Tree(REPO)


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


def test_no_import_runs_up_a_floor() -> None:
    order = " < ".join("/".join(rooms) for rooms in FLOORS)
    upward = repo().upward()
    assert not upward, f"imports up a floor ({order}):\n" + "\n".join(upward)


def test_no_import_cycle_between_files() -> None:
    found = repo().cycles()
    assert not found, "import cycles between files:\n" + "\n".join(found)


def test_the_walk_finds_hidden_upward_imports_and_cycles(tmp_path: Path) -> None:
    """A made-up tree whose faults hide where the walk must look: in a function body, under
    `TYPE_CHECKING`, behind a relative import and a `from package import module`."""
    files = {
        "cluster/__init__.py": "",
        "cluster/store.py": "from cluster import settings\n\n\ndef f():\n    import serve.app\n",
        "cluster/settings.py": (
            "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .store import Store\n"
        ),
        "cluster/cli/__init__.py": "from . import main\n",
        "cluster/cli/main.py": "import cluster.cli\nfrom serve.app import build\n",
        "serve/__init__.py": "",
        "serve/app.py": "import json\n",
        "workflows/__init__.py": "",
        "actors/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    tree = Tree(tmp_path)

    assert tree.upward() == ["cluster/store.py:5: import serve.app  (cluster may not import serve)"]
    cycles = sorted(tree.cycles())
    assert len(cycles) == 2, cycles
    assert cycles[0].startswith("cluster.cli -> cluster.cli.main -> cluster.cli\n")
    assert cycles[1].startswith("cluster.settings -> cluster.store -> cluster.settings\n")
    assert "cluster/settings.py:4: from .store import Store" in cycles[1]
    assert "cluster/store.py:1: from cluster import settings" in cycles[1]
