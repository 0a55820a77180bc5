"""The shipped demo: three agents from configs/agents/review.yaml review the `actors/` folder."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from actors.client import Client, load_agent_specs
from actors.examples.review import review_specs
from tests.integration.helpers import REPO_ROOT

pytestmark = pytest.mark.timeout(150)

BATCH = 4


def expected_measures(root: Path) -> dict[str, int]:
    """The same measures, taken here independently of the agents."""
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    functions = classes = lines = todos = 0
    for path in files:
        text = path.read_text()
        tree = ast.parse(text)
        functions += sum(
            isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(tree)
        )
        classes += sum(isinstance(n, ast.ClassDef) for n in ast.walk(tree))
        lines += text.count("\n") + 1
        todos += text.count("TODO") + text.count("FIXME")
    return {
        "files": len(files),
        "functions": functions,
        "lines": lines,
        "todos": todos,
        "classes": classes,
    }


def test_review_pipeline_writes_the_report(client: Client, tmp_path: Path) -> None:
    root = REPO_ROOT / "actors"
    output = tmp_path / "out" / "review.md"
    specs = load_agent_specs(REPO_ROOT / "configs" / "agents" / "review.yaml")
    records = client.agents.apply(review_specs(specs, root, output))  # confined to `root`
    assert [r.agent_id for r in records] == [
        "repo-lister@1.0.0",
        "file-analyser@1.0.0",
        "report-writer@1.0.0",
    ]

    listing = client.tasks.run("repo.list", {"root": str(root)})
    assert listing.ok, listing.error
    files = listing.output["files"]
    assert files == sorted(str(p) for p in root.rglob("*.py") if "__pycache__" not in p.parts)

    batches = [files[i : i + BATCH] for i in range(0, len(files), BATCH)]
    pending = [client.tasks.submit("code.analyse", {"paths": batch}) for batch in batches]
    analysed = [client.tasks.result(p) for p in pending]
    assert all(r.ok for r in analysed), [r.error for r in analysed if not r.ok]
    assert sum(r.output["files"].num_rows for r in analysed) == len(files)

    merged = client.tasks.run(
        "report.merge",
        {
            "root": str(root),
            "functions": [r.output["functions"] for r in analysed],
            "files": [r.output["files"] for r in analysed],
            "top": 5,
        },
    )
    assert merged.ok, merged.error

    want = expected_measures(root)
    summary = merged.output["summary"]
    assert {k: summary[k] for k in ("files", "functions", "lines", "todos")} == {
        k: want[k] for k in ("files", "functions", "lines", "todos")
    }
    assert summary["unparsable"] == 0

    report = output.read_text()
    assert report.startswith(f"# Code review of `{root}`\n")
    assert f"| files | {want['files']} |" in report
    assert f"| functions | {want['functions']} |" in report
    assert f"| lines | {want['lines']} |" in report
    assert "## Most complex functions (top 5)" in report
    assert "## Functions longer than 40 lines" in report
    table = report.split("## Most complex functions (top 5)")[1].split("## Functions longer")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == 5
    complexities = [int(row.split("|")[3]) for row in rows]
    assert complexities == sorted(complexities, reverse=True)
    assert all(" | actors/" not in row and ".py:" in row for row in rows)  # paths relative to root
    assert merged.output["report"] == str(output)
