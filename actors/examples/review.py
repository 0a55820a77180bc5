"""A repository review done by three agents: list the Python files, measure them in
parallel with `ast`, and merge the measurements into a Markdown report.

Each analyser returns Arrow tables; Ray carries them through its object store.

The agents are confined to a workspace the operator chose, never the caller: the spec's
`config.root` (which `dafnck demo` writes), bounded by the `workspace_root` setting of the
nodes they run on (and that setting when the spec names no root). A task's paths are
checked against it (`actors.examples.workspace`); the report is written as the spec's
`config.report_name` in its `config.output_dir`, never where a task says.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from actors.examples.workspace import (
    MAX_READ_BYTES,
    REPORT_NAME,
    Workspace,
    bounded_dir,
    write_report,
)
from actors.models import AgentSpec, ArrowTable
from actors.skills import skill
from cluster.errors import InputInvalid

#: A function longer than this many lines is reported as long.
LONG_FUNCTION_LINES = 40
#: The report's file name unless the spec's `config.report_name` says otherwise.
DEFAULT_REPORT = "review.md"
#: The most paths one `code.analyse` task takes, and the most rows a report lists.
MAX_PATHS = 1000
MAX_TOP = 1000
_SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", "node_modules", ".mypy_cache", ".ruff_cache"}

FUNCTIONS = pa.schema([
    ("path", pa.string()), ("function", pa.string()), ("line", pa.int32()),
    ("lines", pa.int32()), ("complexity", pa.int32()),
])  # fmt: skip
FILES = pa.schema([
    ("path", pa.string()), ("lines", pa.int32()), ("functions", pa.int32()),
    ("classes", pa.int32()), ("todos", pa.int32()), ("error", pa.string()),
])  # fmt: skip


def workspace_root(root: str | None) -> Path:
    """The agent's workspace: `root` from its spec, inside the `workspace_root` setting.

    Raises:
        ValueError: no workspace at all, or `root` is not a directory inside the setting.
    """
    bound = setting_bound()
    if root is None:
        if bound is None:
            raise ValueError(
                "the agent has no workspace: set config.root in its spec (`dafnck demo` "
                "does) or the workspace_root setting (DAFNCK_WORKSPACE_ROOT) where it runs"
            )
        root = str(bound)
    return bounded_dir(root, bound, "config.root")


def setting_bound() -> Path | None:
    """The `workspace_root` setting as this process sees it (the node's DAFNCK_* env)."""
    from cluster.settings import load_settings

    return load_settings().workspace_root


class RepoLister:
    """Lists Python files under a directory of its workspace."""

    def __init__(self, root: str | None = None) -> None:
        self.workspace = Workspace(workspace_root(root))

    @skill("repo.list", description="List the Python files under a directory.")
    def list_files(self, root: str = ".", exclude: list[str] | None = None) -> dict[str, object]:
        """Raises: InputInvalid (`root` outside the workspace, a link, or too many files)."""
        base = self.workspace.directory(root, "root")
        patterns = exclude or []
        files = sorted(
            str(p) for p in self.workspace.python_files(base, _SKIP_DIRS)
            if not any(fnmatch.fnmatch(str(p.relative_to(base)), pat) for pat in patterns)
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

    def __init__(self, root: str | None = None) -> None:
        self.workspace = Workspace(workspace_root(root), MAX_READ_BYTES)
        self.files_seen = 0

    @skill("code.analyse", description="Measure functions, complexity and TODOs of files.")
    def analyse(self, paths: list[str]) -> dict[str, pa.Table]:
        """A file that cannot be read or parsed (too large, not a regular file) is a row with
        its error. Raises: InputInvalid (a path outside the workspace, `..` or a link)."""
        if len(paths) > MAX_PATHS:
            raise InputInvalid("input of 'code.analyse'", [f"paths: more than {MAX_PATHS}"])
        checked = [self.workspace.inside(p, f"paths[{i}]") for i, p in enumerate(paths)]
        functions: list[dict[str, object]] = []
        files: list[dict[str, object]] = []
        for path in checked:
            files.append(self._measure(path, functions))
        self.files_seen += len(paths)
        return {
            "functions": pa.Table.from_pylist(functions, schema=FUNCTIONS),
            "files": pa.Table.from_pylist(files, schema=FILES),
        }

    def _measure(self, file: Path, functions: list[dict[str, object]]) -> dict[str, object]:
        path = str(file)
        try:
            text = self.workspace.read_text(file)
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


class ReportWriter:
    """Merges the analysers' tables into a Markdown report, written where its spec says."""

    def __init__(
        self, root: str | None = None, output_dir: str | None = None,
        report_name: str = DEFAULT_REPORT,
    ) -> None:  # fmt: skip
        if not REPORT_NAME.fullmatch(report_name):
            raise ValueError(
                f"config.report_name {report_name!r} must be a plain file name ending in .md"
            )
        where = Path(output_dir) if output_dir else workspace_root(root) / "reports"
        bound = setting_bound()
        bounded = where.is_absolute() and (
            bound is None or where.resolve().is_relative_to(bound.resolve())
        )
        if bounded:  # created only where it may be: checked again, resolved, below
            where.mkdir(parents=True, exist_ok=True)
        self.output_dir = bounded_dir(where, bound, "config.output_dir")
        self.report_name = report_name

    @skill("report.merge", description="Merge analyser tables into a Markdown report.")
    def merge(
        self, root: str, functions: list[ArrowTable], files: list[ArrowTable], top: int = 10
    ) -> dict[str, object]:
        """Raises: InputInvalid (`top` out of range, or the report's name is a link)."""
        if not 1 <= top <= MAX_TOP:
            raise InputInvalid("input of 'report.merge'", [f"top: {top} is not in 1..{MAX_TOP}"])
        text, summary, worst = render_report(root, functions, files, top)
        written = write_report(self.output_dir, self.report_name, text)
        return {"report": str(written), "summary": summary, "top": worst[:5]}


def render_report(
    root: str, functions: list[ArrowTable], files: list[ArrowTable], top: int
) -> tuple[str, dict[str, int], list[dict[str, object]]]:
    """The report's Markdown, its summary, and the `top` most complex functions."""
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
    return "\n".join(lines) + "\n", summary, worst


#: The demo's agents by name, and the config keys `review_specs` sets on each.
_CONFIGURED = {"repo-lister": ("root",), "file-analyser": ("root",),
               "report-writer": ("root", "output_dir", "report_name")}  # fmt: skip


def review_specs(specs: list[AgentSpec], root: Path, output: Path | None = None) -> list[AgentSpec]:
    """The review agents' specs confined to `root`, the report written as `output`.

    `dafnck demo` applies these: the directory it reviews is the agents' workspace.
    """
    root = root.resolve()
    report = (output or root / "reports" / DEFAULT_REPORT).absolute()
    values = {"root": str(root), "output_dir": str(report.parent), "report_name": report.name}
    return [
        spec.model_copy(update={"config": {
            **spec.config, **{k: values[k] for k in _CONFIGURED[spec.name]}
        }}) if spec.name in _CONFIGURED else spec
        for spec in specs
    ]  # fmt: skip
