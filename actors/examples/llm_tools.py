"""Tools for the LLM demo's agent: small, typed python functions an LLM may call.

Their JSON schemas come from their type hints; their docstrings tell the model what they do.
"""

from __future__ import annotations

import ast
from pathlib import Path

from actors.examples.workspace import Workspace

#: How many top-level definitions an outline lists.
MAX_ITEMS = 40


def outline(path: str) -> dict[str, object]:
    """The module docstring and the top-level classes and functions (with the first line of
    each docstring) of one Python file, given by its absolute path."""
    from actors.examples.review import setting_bound

    # The model picks the path: inside the workspace_root setting when there is one; never
    # through a symlink or "..", and only a regular file of at most 1 MiB is read.
    workspace = Workspace((setting_bound() or Path("/")).resolve())
    file = workspace.inside(path, "path")
    if file.suffix != ".py" or not file.is_file():
        raise ValueError(f"{path!r} is not a Python file")
    text = workspace.read_text(file)
    tree = ast.parse(text)
    items = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            doc = (ast.get_docstring(node) or "").split("\n")[0]
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            items.append(f"{kind} {node.name}: {doc}".rstrip(": "))
    module_doc = (ast.get_docstring(tree) or "").split("\n\n")[0]
    return {"path": path, "doc": module_doc, "lines": len(text.splitlines()),
            "items": items[:MAX_ITEMS]}  # fmt: skip


def word_count(text: str) -> int:
    """How many whitespace-separated words the text has."""
    return len(text.split())
