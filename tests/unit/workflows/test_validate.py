"""Whole-workflow validation: every problem at once, with file:line and the step id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cluster.errors import SpecInvalid
from workflows.loader import load_workflow_specs
from workflows.spec import StepSpec, WorkflowSpec
from workflows.validate import effective_needs, topological_order, validate_workflow

BROKEN = """\
name: broken
inputs:
  root: {type: string}
steps:
  - id: list
    uses: repo.lst
    with:
      root: "${{ inputs.rot }}"
  - id: analyse
    uses: agent:analyzer@>=1
    needs: [lists, analyse]
    for_each:
      items: steps.list.output.files.map(
    with:
      paths: ["${{ item }}", "${{ steps.report.outptu }}"]
  - id: list
    uses: repo.list
  - id: report
    uses: workflow:sub
    when: "${{ inputs.root != '' }}"
    with:
      files: "${{ steps.analyse.output }}"
      where: "at ${{ item }}"
    on_error: {fallback: nobody}
outputs:
  total: "${{ steps.nothing.output }}"
  constant: "42"
  bad: "${{ 1 + }}"
"""


def test_one_file_with_many_problems_reports_them_all_with_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "broken.yaml"
    file.write_text(BROKEN)
    with pytest.raises(SpecInvalid) as caught:
        load_workflow_specs(
            file,
            known_capabilities={"repo.list", "code.analyse"},
            known_agents={"analyser"},
            known_workflows={"review"},
        )
    assert [p.replace(str(file), "F") for p in caught.value.problems] == [
        "F:6: step 'list': uses unknown capability 'repo.lst'; did you mean 'repo.list'?",
        "F:8: step 'list': 'inputs.rot': unknown input 'rot'; did you mean 'root'?",
        "F:9: step 'analyse': steps form a cycle: analyse -> report -> analyse (each needs the next)",
        "F:10: step 'analyse': uses unknown agent 'analyzer'; did you mean 'analyser'?",
        "F:11: step 'analyse': needs unknown step 'lists'; did you mean 'list'?",
        "F:11: step 'analyse': needs itself",
        "F:13: step 'analyse': for_each.items: 'steps.list.output.files.map(' ends too early"
        " at line 1 column 29",
        "F:15: step 'analyse': 'steps.report.outptu': steps.report has only output, not 'outptu'",
        "F:16: step 'list': id is used more than once (first by steps[0])",
        "F:19: step 'report': uses unknown workflow 'sub'; known: 'broken', 'review'",
        "F:20: step 'report': when: \"${{ inputs.root != '' }}\" must be a bare expression,"
        " without ${{ }}",
        "F:23: step 'report': 'item': unknown name 'item'; expressions here can use inputs, steps",
        "F:24: step 'report': fallback 'nobody' is not a step; known: 'analyse', 'list', 'report'",
        "F:26: output 'total': 'steps.nothing.output': unknown step 'nothing';"
        " known: 'analyse', 'list', 'report'",
        "F:27: output 'constant': '42' reads no step or input;"
        " write it like '${{ steps.<id>.output }}'",
        "F:28: output 'bad': '1 +' ends too early at line 1 column 4",
    ]
    assert caught.value.message.startswith(f"{file} is invalid: {file}:6: step 'list'")


def wf(*steps: dict[str, Any], **fields: Any) -> WorkflowSpec:
    return WorkflowSpec(name="w", steps=[StepSpec(**{"uses": "x.y", **s}) for s in steps], **fields)


def problems(spec: WorkflowSpec, **known: Any) -> list[str]:
    with pytest.raises(SpecInvalid) as caught:
        validate_workflow(spec, **known)
    assert caught.value.message.startswith("workflow 'w' is invalid: ")
    return list(caught.value.problems)


def test_a_cycle_is_named_in_need_order_from_its_first_step() -> None:
    spec = wf(
        {"id": "a", "needs": ["c"]},
        {"id": "b", "needs": ["a"]},
        {"id": "c", "with": {"x": "${{ steps.b.output }}"}},
        {"id": "d", "needs": ["e"]},
        {"id": "e", "when": "steps.d.output > 1"},
        {"id": "ok", "needs": ["a"]},
    )
    cycle_abc = "steps form a cycle: a -> c -> b -> a (each needs the next)"
    cycle_de = "steps form a cycle: d -> e -> d (each needs the next)"
    assert problems(spec) == [f"step 'a': {cycle_abc}", f"step 'd': {cycle_de}"]
    with pytest.raises(SpecInvalid) as caught:
        topological_order(spec)
    assert caught.value.problems == (cycle_abc, cycle_de)


def test_needs_are_explicit_plus_inferred_from_every_expression() -> None:
    spec = wf(
        {"id": "a"},
        {"id": "b", "needs": "a"},
        {"id": "c", "with": {"deep": [{"k": "x ${{ steps.a.output }}"}]}},
        {"id": "d", "when": "steps.b.output.ok", "for_each": {"items": "steps.c.output"}},
        {"id": "e", "approval": {"prompt": "Ship ${{ steps.d.output }}?"}},
        {"id": "f", "needs": ["e", "ghost"], "with": {"s": "${{ steps['a'].output }}"}},
    )
    assert effective_needs(spec) == {
        "a": set(), "b": {"a"}, "c": {"a"}, "d": {"b", "c"}, "e": {"d"}, "f": {"a", "e"}
    }  # fmt: skip


def test_topological_order_keeps_file_order_where_it_is_free_to() -> None:
    spec = wf(
        {"id": "report", "needs": ["left", "right"]},
        {"id": "right", "with": {"x": "${{ steps.root.output }}"}},
        {"id": "left", "needs": ["root"]},
        {"id": "root"},
        {"id": "alone"},
    )
    assert topological_order(spec) == ["root", "right", "left", "report", "alone"]


def test_a_long_chain_orders_and_validates_without_recursion() -> None:
    steps = [{"id": "s0"}] + [{"id": f"s{i}", "needs": [f"s{i - 1}"]} for i in range(1, 1500)]
    spec = wf(*steps)
    validate_workflow(spec)
    assert topological_order(spec) == [f"s{i}" for i in range(1500)]
    looped = wf(*steps[1:], {"id": "s0", "needs": ["s1499"]})
    assert "s1 -> s0 -> s1499 -> " in problems(looped)[0]


def test_unknown_uses_are_checked_only_against_the_sets_given() -> None:
    spec = wf(
        {"id": "a", "uses": "code.reveiw"},
        {"id": "b", "uses": "agent:writer@>=2"},
        {"id": "c", "uses": "workflow:w"},
        {"id": "d", "uses": "workflow:other"},
    )
    assert problems(spec) == ["step 'c': uses its own workflow 'w'"]
    assert problems(spec, known_capabilities={"code.review"}, known_agents=set()) == [
        "step 'a': uses unknown capability 'code.reveiw'; did you mean 'code.review'?",
        "step 'b': uses unknown agent 'writer'; none are declared",
        "step 'c': uses its own workflow 'w'",
    ]
    many = {f"cap.n{i}" for i in range(10)}
    assert problems(spec, known_capabilities=many, known_workflows={"zzz"})[0:1] == [
        "step 'a': uses unknown capability 'code.reveiw'; known: 'cap.n0', 'cap.n1', 'cap.n2',"
        " 'cap.n3', 'cap.n4', 'cap.n5', 'cap.n6', 'cap.n7', ..."
    ]


def test_reads_must_name_declared_inputs_and_other_steps_outputs() -> None:
    spec = wf(
        {"id": "a", "with": {"x": "${{ steps.a.output }}", "y": "${{ inputs.n + inputs.m }}"}},
        {"id": "b", "with": {"x": "${{ steps[inputs.n].output }}", "z": "${{ steps.a }}"}},
        inputs={"n": {"type": "integer", "default": 1}},
    )
    assert problems(spec) == [
        "step 'a': 'steps.a.output': a step cannot read its own output",
        "step 'a': 'inputs.n + inputs.m': unknown input 'm'; known: 'n'",
        "step 'b': 'steps[inputs.n].output': name the step, as in steps.<id>.output",
    ]


def test_the_item_name_and_index_exist_only_in_the_with_of_a_for_each_step() -> None:
    spec = wf(
        {"id": "a"},
        {
            "id": "each",
            "for_each": {"items": "steps.a.output.map(x, x * index)", "as": "file"},
            "when": "file != ''",
            "with": {"path": "${{ file }}", "n": "${{ index }}", "bad": "${{ item }}"},
            "approval": {"prompt": "${{ file }}?"},
        },
    )
    assert problems(spec) == [
        "step 'each': 'item': unknown name 'item'; expressions here can use file, index,"
        " inputs, steps",
        "step 'each': \"file != ''\": unknown name 'file'; expressions here can use inputs, steps",
        "step 'each': 'steps.a.output.map(x, x * index)': unknown name 'index';"
        " expressions here can use inputs, steps",
        "step 'each': 'file': unknown name 'file'; expressions here can use inputs, steps",
    ]


def test_fallbacks_must_be_other_steps_that_do_not_depend_on_the_failing_one() -> None:
    spec = wf(
        {"id": "a", "on_error": {"fallback": "rescue"}},
        {"id": "rescue", "with": {"x": "${{ steps.a.output }}"}},
        {"id": "b", "on_error": {"fallback": "b"}},
        {"id": "c", "on_error": {"fallback": "resuce"}},
        {"id": "d", "on_error": {"fallback": "spare"}},
        {"id": "spare"},
    )
    assert problems(spec) == [
        "step 'a': fallback 'rescue' depends on 'a', so it could never run when that step fails",
        "step 'b': is its own fallback",
        "step 'c': fallback 'resuce' is not a step; did you mean 'rescue'?",
    ]


def test_outputs_must_read_a_step_or_an_input() -> None:
    spec = wf(
        {"id": "a"},
        outputs={"fine": "${{ steps.a.output }} and ${{ inputs }}", "none": "${{ 1 + 2 }}"},
    )
    assert problems(spec) == [
        "output 'none': '${{ 1 + 2 }}' reads no step or input;"
        " write it like '${{ steps.<id>.output }}'"
    ]


def test_a_valid_workflow_passes_silently() -> None:
    validate_workflow(
        wf(
            {"id": "a", "with": {"n": "${{ inputs.n }}"}},
            {"id": "b", "for_each": {"items": "steps.a.output"}, "with": {"i": "${{ item }}"}},
            inputs={"n": {"type": "integer"}},
            outputs={"all": "${{ steps.b.output }}"},
        ),
        known_capabilities={"x.y"},
    )


def test_two_workflows_with_one_name_are_refused_with_both_places(tmp_path: Path) -> None:
    file = tmp_path / "w.yaml"
    file.write_text(
        "name: w\nsteps: [{id: a, uses: x.y}]\n---\nname: w\nsteps: [{id: a, uses: x.y}]\n"
    )
    with pytest.raises(SpecInvalid) as caught:
        load_workflow_specs(file)
    assert caught.value.problems == (
        f"{file}:4: workflow 'w' is defined twice (first at {file}:1)",
    )


def test_null_checks_and_cel_type_names_are_accepted() -> None:
    spec = wf(
        {"id": "a"},
        {"id": "b", "when": "steps.a.output.y != null && type(steps.a.output) != null_type"},
    )
    validate_workflow(spec)  # raises SpecInvalid on a problem
