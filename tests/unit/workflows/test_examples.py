"""The example workflows in configs/workflows validate against the demo agents' capabilities,
and their steps' inputs bind to the demo skills once rendered."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from actors.examples.review import FILES, FUNCTIONS, FileAnalyser, RepoLister, ReportWriter
from actors.models import AgentSpec
from cluster.yamlfile import parse_models
from workflows.expressions import compile_expr, render
from workflows.loader import load_workflow_specs
from workflows.spec import WorkflowSpec
from workflows.validate import topological_order

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
AGENTS = [
    spec
    for name in ("review.yaml", "llm/repo-guide.yaml")
    for spec, _ in parse_models(CONFIGS / "agents" / name, AgentSpec)
]
CAPABILITIES = {c for spec in AGENTS for c in spec.capabilities}
ROOT = str(CONFIGS.parent)  # the demo agents' workspace: only their signatures are bound here
SKILLS = {
    "repo.list": RepoLister(ROOT).list_files,
    "code.analyse": FileAnalyser(ROOT).analyse,
    "report.merge": ReportWriter(ROOT, output_dir=ROOT).merge,
}


@pytest.fixture(scope="module")
def workflows() -> dict[str, WorkflowSpec]:
    loaded = load_workflow_specs(
        CONFIGS / "workflows",
        known_capabilities=CAPABILITIES,
        known_agents={spec.name for spec in AGENTS},
        known_workflows=set(),
    )
    return {spec.name: spec for spec, _ in loaded}


def test_both_examples_load_and_validate(workflows: dict[str, WorkflowSpec]) -> None:
    assert set(workflows) == {"review", "approval-demo", "llm-demo"}
    for name in ("review", "approval-demo"):
        assert topological_order(workflows[name]) == ["list", "analyse", "report"]
    assert topological_order(workflows["llm-demo"]) == ["list", "guide"]


def test_the_llm_demo_hands_the_listed_files_to_the_guide(
    workflows: dict[str, WorkflowSpec],
) -> None:
    from actors.llm_conversation import render_prompt

    spec = workflows["llm-demo"]
    context: dict[str, Any] = {"inputs": spec.check_inputs({"root": "/repo"}), "steps": {}}
    inspect.signature(SKILLS["repo.list"]).bind(**render(spec.step("list").with_, context))
    context["steps"]["list"] = {"output": {"root": "/repo", "files": ["/repo/a.py"]}}
    prompt = render_prompt(render(spec.step("guide").with_, context))
    assert prompt.startswith("Which files should a newcomer read first")
    assert prompt.endswith('The Python files are:\n["/repo/a.py"]')


def analyse_output(path: str) -> dict[str, pa.Table]:
    return {
        "functions": FUNCTIONS.empty_table(),
        "files": pa.Table.from_pylist([{"path": path, "lines": 1}], schema=FILES),
    }


@pytest.mark.parametrize("name", ["review", "approval-demo"])
def test_rendered_inputs_bind_to_the_demo_skills(
    workflows: dict[str, WorkflowSpec], name: str
) -> None:
    spec = workflows[name]
    inputs = spec.check_inputs({"root": "/repo"})
    files = ["/repo/a.py", "/repo/b.py"]
    context: dict[str, Any] = {"inputs": inputs, "steps": {}}

    listed = render(spec.step("list").with_, context)
    inspect.signature(SKILLS["repo.list"]).bind(**listed)
    context["steps"]["list"] = {"output": {"root": "/repo", "files": files}}

    analyse = spec.step("analyse")
    assert analyse.for_each is not None
    items = compile_expr(analyse.for_each.items).evaluate(context)
    assert items == files
    per_item = [
        render(analyse.with_, {**context, analyse.for_each.as_: item, "index": i})
        for i, item in enumerate(items)
    ]
    assert per_item == [{"paths": ["/repo/a.py"]}, {"paths": ["/repo/b.py"]}]
    for bound in per_item:
        inspect.signature(SKILLS["code.analyse"]).bind(**bound)
    # A for_each step's output: its items' outputs, in item order.
    context["steps"]["analyse"] = {"output": [analyse_output(f) for f in items]}

    report = render(spec.step("report").with_, context)
    inspect.signature(SKILLS["report.merge"]).bind(**report)
    assert [t["path"][0].as_py() for t in report["files"]] == files
    assert all(isinstance(t, pa.Table) for t in report["functions"])


def test_approval_demo_gates_the_report_with_a_rendered_prompt(
    workflows: dict[str, WorkflowSpec],
) -> None:
    report = workflows["approval-demo"].step("report")
    assert report.approval is not None and report.approval.on_timeout == "reject"
    context = {
        "inputs": {},
        "steps": {"list": {"output": {"root": "/repo", "files": ["/repo/a.py"]}}},
    }
    assert render(report.approval.prompt, context) == ("Write the review of 1 files under /repo?")
    assert report.when is not None
    assert compile_expr(report.when).evaluate(context) is True
