"""Read YAML spec files safely and point errors at the file, line and field.

`yaml.safe_load` never builds arbitrary objects; composing the node tree first keeps each
value's line, so a pydantic error location like `("replicas", "max")` becomes
`agents.yaml:12: replicas.max: ...`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cluster.errors import SpecInvalid

_SUFFIXES = (".yaml", ".yml", ".json")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Document:
    """One YAML document of a file, with its node tree for locating fields."""

    path: Path
    data: Any
    node: yaml.Node | None

    def line_of(self, loc: Sequence[str | int]) -> int:
        """1-based line of the deepest node on `loc` that exists."""
        node = self.node
        line = node.start_mark.line + 1 if node else 1
        for part in loc:
            child = _child(node, part)
            if child is None:
                break
            node, line = child, child.start_mark.line + 1
        return line

    def where(self, loc: Sequence[str | int] = ()) -> str:
        return f"{self.path}:{self.line_of(loc)}"


def _child(node: yaml.Node | None, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == part:
                return value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]
    return None


def spec_files(path: Path) -> list[Path]:
    """`path` itself, or the YAML/JSON files of a directory in name order.

    Raises:
        SpecInvalid: the path does not exist.
    """
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES)
    if not path.exists():
        raise SpecInvalid(str(path), ["no such file or directory"])
    return [path]


def read_documents(path: Path) -> Iterator[Document]:
    """Every non-empty document of one file.

    Raises:
        SpecInvalid: the file can't be read or isn't valid YAML (with the line).
    """
    try:
        text = path.read_text()
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        datas = list(yaml.safe_load_all(text))
    except OSError as exc:
        raise SpecInvalid(str(path), [f"cannot read: {exc.strerror}"]) from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise SpecInvalid(f"{path}:{line}", [f"not valid YAML: {exc.problem}"]) from None
    for node, data in zip(nodes, datas, strict=True):
        if data is not None:
            yield Document(path, data, node)


def parse_models(path: Path, model: type[M]) -> list[tuple[M, Document]]:
    """Validate every document under `path` as `model`, reporting every problem together.

    Raises:
        SpecInvalid: one entry per invalid field, each as `file:line: field: message`.
    """
    parsed: list[tuple[M, Document]] = []
    problems: list[str] = []
    for file in spec_files(path):
        try:
            documents = list(read_documents(file))
        except SpecInvalid as exc:
            problems += [f"{exc.args[0]}: {p}" for p in exc.problems]
            continue
        for doc in documents:
            try:
                parsed.append((model.model_validate(doc.data), doc))
            except ValidationError as exc:
                problems += [
                    f"{doc.where(e['loc'])}: {'.'.join(map(str, e['loc'])) or model.__name__}: {e['msg']}"
                    for e in exc.errors()
                ]
    if problems:
        raise SpecInvalid(str(path), problems)
    return parsed
