"""Workflow contracts: written in YAML or Python, aliases both ways, inputs typed and checked."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from cluster.errors import InputInvalid, SpecInvalid
from cluster.yamlfile import parse_models
from workflows.spec import (
    Approval,
    Fallback,
    ForEach,
    InputSpec,
    StepRetry,
    StepSpec,
    WorkflowSpec,
)

YAML = """\
name: fanout
description: one of everything
inputs:
  root: {type: string}
  limit: {type: integer, default: 5}
steps:
  - id: list
    uses: repo.list
    with: {root: "${{ inputs.root }}"}
  - id: each
    uses: agent:analyser@>=1.2,<2
    needs: list
    for_each: {items: steps.list.output.files, as: path, max_parallel: 3, join: 2}
    with: {paths: ["${{ path }}"]}
    retry: {attempts: 3, backoff_s: 0.5, on: [TaskTimeout]}
    timeout_s: 30
    on_error: {fallback: rescue}
  - id: rescue
    uses: workflow:cleanup
    approval: {prompt: "ok?", timeout_s: 60, on_timeout: approve}
    on_error: continue
outputs:
  files: "${{ steps.list.output.files }}"
"""


def parse(tmp_path: Path, text: str) -> WorkflowSpec:
    file = tmp_path / "wf.yaml"
    file.write_text(text)
    [(spec, _)] = parse_models(file, WorkflowSpec)
    return spec


def step(**fields: Any) -> StepSpec:
    return StepSpec(**{"id": "a", "uses": "x.y", **fields})


def test_yaml_spec_parses_every_field(tmp_path: Path) -> None:
    spec = parse(tmp_path, YAML)
    each = spec.step("each")
    assert each.needs == ["list"]
    assert each.for_each == ForEach(
        items="steps.list.output.files", as_="path", max_parallel=3, join=2
    )
    assert each.with_ == {"paths": ["${{ path }}"]}
    assert each.retry == StepRetry(attempts=3, backoff_s=0.5, on=["TaskTimeout"])
    assert each.on_error == Fallback(fallback="rescue")
    assert each.fallback == "rescue"
    assert spec.step("rescue").approval == Approval(
        prompt="ok?", timeout_s=60, on_timeout="approve"
    )
    assert spec.step("rescue").on_error == "continue"
    assert spec.inputs["root"].required and not spec.inputs["limit"].required


def test_python_users_write_field_names_and_dumps_use_the_yaml_aliases(tmp_path: Path) -> None:
    built = WorkflowSpec(
        name="fanout",
        description="one of everything",
        inputs={"root": InputSpec(type="string"), "limit": InputSpec(type="integer", default=5)},
        steps=[
            StepSpec(id="list", uses="repo.list", with_={"root": "${{ inputs.root }}"}),
            StepSpec(
                id="each",
                uses="agent:analyser@>=1.2,<2",
                needs=["list"],
                for_each=ForEach(
                    items="steps.list.output.files", as_="path", max_parallel=3, join=2
                ),
                with_={"paths": ["${{ path }}"]},
                retry=StepRetry(attempts=3, backoff_s=0.5, on=["TaskTimeout"]),
                timeout_s=30,
                on_error=Fallback(fallback="rescue"),
            ),
            StepSpec(
                id="rescue",
                uses="workflow:cleanup",
                approval=Approval(prompt="ok?", timeout_s=60, on_timeout="approve"),
                on_error="continue",
            ),
        ],
        outputs={"files": "${{ steps.list.output.files }}"},
    )
    assert built == parse(tmp_path, YAML)
    dumped = built.model_dump()
    assert "with" in dumped["steps"][0] and "with_" not in dumped["steps"][0]
    assert dumped["steps"][1]["for_each"]["as"] == "path"
    assert WorkflowSpec.model_validate_json(built.model_dump_json()) == built


@pytest.mark.parametrize(
    "model",
    [
        InputSpec(type="array", default=[1]),
        ForEach(items="xs", join="any"),
        StepRetry(attempts=2),
        Approval(prompt="p"),
        Fallback(fallback="b"),
        step(with_={"k": "${{ inputs.k }}"}, on_error=Fallback(fallback="b")),
    ],
    ids=lambda m: type(m).__name__,
)
def test_contracts_round_trip_through_pickle_and_json(model: BaseModel) -> None:
    assert pickle.loads(pickle.dumps(model)) == model
    assert type(model).model_validate_json(model.model_dump_json()) == model


@pytest.mark.parametrize(
    ("uses", "kind", "target", "name"),
    [
        ("code.analyse", "capability", "code.analyse", "code.analyse"),
        ("agent:reviewer", "agent", "reviewer", "reviewer"),
        ("agent:reviewer@>=1.2,<2", "agent", "reviewer@>=1.2,<2", "reviewer"),
        ("agent:reviewer@1.2.3", "agent", "reviewer@1.2.3", "reviewer"),
        ("workflow:review", "workflow", "review", "review"),
    ],
)
def test_uses_names_a_capability_an_agent_or_a_workflow(
    uses: str, kind: str, target: str, name: str
) -> None:
    made = step(uses=uses)
    assert (made.kind, made.target, made.target_name) == (kind, target, name)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"uses": "Code Review"}, "is not a capability"),
        ({"uses": "agent:Bad_Name"}, "agent name 'Bad_Name'"),
        ({"uses": "agent:reviewer@not a range"}, "version range"),
        ({"uses": "workflow:review@1.0.0"}, "only agents take a version range"),
        ({"id": "Step-1"}, "pattern"),
        ({"id": "in"}, "reserved word"),
        ({"for_each": {"items": "xs", "as": "steps"}}, "reserved name"),
        ({"for_each": {"items": "xs", "join": 0}}, "join"),
        ({"for_each": {"items": "xs", "max_parallel": 0}}, "max_parallel"),
        ({"retry": {"attempts": 0}}, "attempts"),
        ({"on_error": "explode"}, "on_error"),
        ({"approval": {"on_timeout": "shrug"}}, "on_timeout"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_step_refuses_bad_fields_saying_what_is_wrong(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        step(**fields)
    assert says in str(caught.value)


def test_workflow_needs_a_name_and_at_least_one_step() -> None:
    with pytest.raises(ValidationError) as caught:
        WorkflowSpec(name="Bad Name", steps=[])
    assert {e["loc"][0] for e in caught.value.errors()} == {"name", "steps"}


def test_input_defaults_must_fit_their_type_and_names_must_be_identifiers() -> None:
    with pytest.raises(ValidationError, match="default 'x' is not of type 'integer'"):
        InputSpec(type="integer", default="x")
    with pytest.raises(ValidationError, match="drop one of the two"):
        InputSpec(default=1, required=True, type="integer")
    with pytest.raises(ValidationError, match="must be identifiers"):
        WorkflowSpec(name="w", inputs={"max-files": InputSpec()}, steps=[step()])


def test_retry_delay_grows_by_the_factor_up_to_the_cap() -> None:
    retry = StepRetry(attempts=5, backoff_s=1, backoff_factor=3, max_backoff_s=5)
    assert [retry.delay_s(n) for n in (2, 3, 4, 5)] == [1, 3, 5, 5]


WORKFLOW = WorkflowSpec(
    name="typed",
    inputs={
        "s": InputSpec(type="string"),
        "i": InputSpec(type="integer", default=3),
        "n": InputSpec(type="number", default=0.5),
        "b": InputSpec(type="boolean", default=False),
        "a": InputSpec(type="array", default=[]),
        "o": InputSpec(type="object", default={}),
        "x": InputSpec(type="any", required=False),
    },
    steps=[step()],
)


def test_check_inputs_applies_defaults_and_accepts_matching_types() -> None:
    assert WORKFLOW.check_inputs({"s": "hi", "n": 2}) == {
        "s": "hi", "i": 3, "n": 2, "b": False, "a": [], "o": {}, "x": None
    }  # fmt: skip
    first, second = WORKFLOW.check_inputs({"s": ""}), WORKFLOW.check_inputs({"s": ""})
    first["a"].append(1)
    assert second["a"] == [], "defaults are copied, not shared between executions"


def test_check_inputs_names_every_bad_field_with_the_expected_type() -> None:
    with pytest.raises(InputInvalid) as caught:
        WORKFLOW.check_inputs({"i": True, "n": "1.5", "a": {"k": 1}, "zz": 1})
    assert set(caught.value.problems) == {
        "unknown input 'zz'; declared: 's', 'i', 'n', 'b', 'a', 'o', 'x'",
        "input 's' is required (string)",
        "input 'i': expected integer, got boolean True",
        "input 'n': expected number, got string '1.5'",
        "input 'a': expected array, got object {'k': 1}",
    }
    assert isinstance(caught.value, SpecInvalid)
    assert caught.value.message.startswith("inputs of workflow 'typed' is invalid: ")
