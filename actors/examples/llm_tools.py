"""Tools for the LLM demo's agent: small, typed python functions an LLM may call.

Their JSON schemas come from their type hints; their docstrings tell the model what they do.
"""

from __future__ import annotations

import ast
from pathlib import Path

#: How many top-level definitions an outline lists.
MAX_ITEMS = 40


def outline(path: str) -> dict[str, object]:
    """The module docstring and the top-level classes and functions (with the first line of
    each docstring) of one Python file, given by its absolute path."""
    file = Path(path)
    if file.suffix != ".py" or not file.is_file():
        raise ValueError(f"{path!r} is not a Python file")
    tree = ast.parse(file.read_text(encoding="utf-8", errors="replace"))
    items = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            doc = (ast.get_docstring(node) or "").split("\n")[0]
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            items.append(f"{kind} {node.name}: {doc}".rstrip(": "))
    module_doc = (ast.get_docstring(tree) or "").split("\n\n")[0]
    return {"path": path, "doc": module_doc, "lines": len(file.read_text().splitlines()),
            "items": items[:MAX_ITEMS]}  # fmt: skip


def word_count(text: str) -> int:
    """How many whitespace-separated words the text has."""
    return len(text.split())
