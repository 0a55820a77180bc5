"""A repository review done by three agents: list the Python files, measure them in
parallel with `ast`, and merge the measurements into a Markdown report.

Each analyser returns Arrow tables; Ray carries them through its object store.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from actors.models import ArrowTable
from actors.skills import skill

#: A function longer than this many lines is reported as long.
LONG_FUNCTION_LINES = 40
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", ".ruff_cache"}

FUNCTIONS = pa.schema([
    ("path", pa.string()), ("function", pa.string()), ("line", pa.int32()),
    ("lines", pa.int32()), ("complexity", pa.int32()),
])  # fmt: skip
FILES = pa.schema([
    ("path", pa.string()), ("lines", pa.int32()), ("functions", pa.int32()),
    ("classes", pa.int32()), ("todos", pa.int32()), ("error", pa.string()),
])  # fmt: skip


@skill("repo.list", description="List the Python files under a directory.")
def list_files(root: str, exclude: list[str] | None = None) -> dict[str, object]:
    base = Path(root).resolve()
    if not base.is_dir():
        raise ValueError(f"{root!r} is not a directory")
    patterns = exclude or []
    files = sorted(
        str(p) for p in base.rglob("*.py")
        if not _SKIP_DIRS & set(p.relative_to(base).parts)
        and not any(fnmatch.fnmatch(str(p.relative_to(base)), pat) for pat in patterns)
    )  # fmt: skip
    return {"root": str(base), "files": files}


_BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.IfExp,
             ast.comprehension, ast.match_case)  # fmt: skip


def _complexity(node: ast.AST) -> int:
    """McCabe-style: one plus each branch point and each extra boolean operand."""
    score = 1
    for child in ast.walk(node):
        if isinstance(child, _BRANCHES):
            score += 1
        elif isinstance(child, ast.BoolOp):
            score += len(child.values) - 1
    return score


class FileAnalyser:
    """Measures Python files; one instance per replica counts what it has analysed."""

    def __init__(self) -> None:
        self.files_seen = 0

    @skill("code.analyse", description="Measure functions, complexity and TODOs of files.")
    def analyse(self, paths: list[str]) -> dict[str, pa.Table]:
        functions: list[dict[str, object]] = []
        files: list[dict[str, object]] = []
        for path in paths:
            files.append(self._measure(path, functions))
        self.files_seen += len(paths)
        return {
            "functions": pa.Table.from_pylist(functions, schema=FUNCTIONS),
            "files": pa.Table.from_pylist(files, schema=FILES),
        }

    def _measure(self, path: str, functions: list[dict[str, object]]) -> dict[str, object]:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
            tree = ast.parse(text, filename=path)
        except (OSError, SyntaxError, ValueError) as exc:
            return {
                "path": path,
                "lines": 0,
                "functions": 0,
                "classes": 0,
                "todos": 0,
                "error": str(exc),
            }
        defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        for node in defs:
            functions.append({
                "path": path, "function": node.name, "line": node.lineno,
                "lines": (node.end_lineno or node.lineno) - node.lineno + 1,
                "complexity": _complexity(node),
            })  # fmt: skip
        return {
            "path": path,
            "lines": text.count("\n") + 1,
            "functions": len(defs),
            "classes": sum(isinstance(n, ast.ClassDef) for n in ast.walk(tree)),
            "todos": sum(line.count("TODO") + line.count("FIXME") for line in text.splitlines()),
            "error": None,
        }


@skill("report.merge", description="Merge analyser tables into a Markdown report.")
def merge_report(
    root: str, functions: list[ArrowTable], files: list[ArrowTable], output: str, top: int = 10
) -> dict[str, object]:
    funcs = pa.concat_tables(functions) if functions else FUNCTIONS.empty_table()
    table = pa.concat_tables(files) if files else FILES.empty_table()
    base = Path(root)
    rel = lambda p: str(Path(p).relative_to(base)) if p.startswith(str(base)) else p  # noqa: E731
    long = funcs.filter(pc.greater(funcs["lines"], LONG_FUNCTION_LINES))
    worst = funcs.sort_by([("complexity", "descending")]).slice(0, top).to_pylist()
    todo_files = table.filter(pc.greater(table["todos"], 0)).sort_by([("todos", "descending")])
    summary = {
        "files": table.num_rows,
        "lines": int(pc.sum(table["lines"]).as_py() or 0),
        "functions": funcs.num_rows,
        "long_functions": long.num_rows,
        "todos": int(pc.sum(table["todos"]).as_py() or 0),
        "unparsable": table.filter(pc.is_valid(table["error"])).num_rows,
    }
    lines = [f"# Code review of `{root}`", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v} |" for k, v in summary.items()]
    lines += ["", f"## Most complex functions (top {top})", "", "| function | file:line | complexity | lines |",
              "|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| `{r['function']}` | {rel(r['path'])}:{r['line']} | {r['complexity']} | {r['lines']} |"
        for r in worst
    ]
    lines += ["", f"## Functions longer than {LONG_FUNCTION_LINES} lines", ""]
    lines += [
        f"- `{r['function']}` ({rel(r['path'])}:{r['line']}, {r['lines']} lines)"
        for r in long.to_pylist()
    ] or ["none"]
    lines += ["", "## Files with TODO or FIXME", ""]
    lines += [f"- {rel(r['path'])}: {r['todos']}" for r in todo_files.to_pylist()] or ["none"]
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text("\n".join(lines) + "\n")
    return {"report": output, "summary": summary, "top": worst[:5]}
