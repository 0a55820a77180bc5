"""Python agents: entrypoints become skills whose input schemas come from type hints."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.kinds import build_skills
from actors.models import AgentSpec
from actors.skills import Skill
from cluster.errors import InputInvalid, SpecInvalid
from tests.fixtures.agents import Point


def spec(entrypoint: str, *capabilities: str, **fields: Any) -> AgentSpec:
    return AgentSpec(name="agent", capabilities=list(capabilities), entrypoint=entrypoint, **fields)


def call(skill: Skill, data: dict[str, Any]) -> Any:
    return asyncio.run(skill(data))


def test_function_entrypoint_is_one_skill_with_schema_from_type_hints() -> None:
    skills = build_skills(spec("tests.fixtures.agents:echo", "test.echo"))
    assert list(skills) == ["test.echo"]
    info = skills["test.echo"].info
    assert info.method == "echo"
    assert info.description == "Return the text, repeated."
    schema = info.input_schema
    assert schema["properties"]["text"]["type"] == "string"
    assert schema["properties"]["times"] == {"default": 1, "title": "Times", "type": "integer"}
    assert schema["required"] == ["text"]
    assert schema["additionalProperties"] is False
    assert call(skills["test.echo"], {"text": "ab", "times": 3})["text"] == "ababab"


def test_async_function_skill_is_awaited() -> None:
    skills = build_skills(spec("tests.fixtures.agents:slow", "test.slow"))
    assert call(skills["test.slow"], {"seconds": 0.01})["slept"] == 0.01


def test_class_entrypoint_keeps_state_per_instance_and_gets_config() -> None:
    skills = build_skills(
        spec("tests.fixtures.agents:Counter", "counter.add", "counter.get", config={"start": 10})
    )
    assert set(skills) == {"counter.add", "counter.get"}
    assert skills["counter.add"].info.input_schema["properties"]["amount"]["type"] == "integer"
    call(skills["counter.add"], {"amount": 2})
    call(skills["counter.add"], {"amount": 3})
    assert call(skills["counter.get"], {}) == 15
    # a second build is a second replica: its own instance, its own state
    other = build_skills(spec("tests.fixtures.agents:Counter", "counter.add", "counter.get"))
    assert call(other["counter.get"], {}) == 0


def test_pydantic_model_parameter_is_the_whole_input() -> None:
    skills = build_skills(spec("tests.fixtures.agents:norm", "geo.norm"))
    assert skills["geo.norm"].info.input_schema == Point.model_json_schema()
    assert call(skills["geo.norm"], {"x": 3, "y": 4}) == 5.0


def test_bad_input_lists_every_problem_by_field() -> None:
    skills = build_skills(spec("tests.fixtures.agents:echo", "test.echo"))
    with pytest.raises(InputInvalid) as caught:
        call(skills["test.echo"], {"times": "many", "colour": "red"})
    problems = caught.value.problems
    assert any(p.startswith("text: Field required") for p in problems)
    assert any(p.startswith("times: ") for p in problems)
    assert any(p.startswith("colour: Extra inputs are not permitted") for p in problems)
    assert "'test.echo'" in str(caught.value)


def test_bad_model_input_names_the_field() -> None:
    skills = build_skills(spec("tests.fixtures.agents:norm", "geo.norm"))
    with pytest.raises(InputInvalid) as caught:
        call(skills["geo.norm"], {"x": "east"})
    assert {p.split(":")[0] for p in caught.value.problems} == {"x", "y"}


def test_every_binding_problem_is_listed_in_one_error() -> None:
    # Stray serves test.echo (fine), test.other (not declared) and test.bare (no type hint);
    # nothing serves test.missing.
    with pytest.raises(SpecInvalid) as caught:
        build_skills(spec("tests.fixtures.agents:Stray", "test.echo", "test.bare", "test.missing"))
    problems = caught.value.problems
    assert "entrypoint: skill 'other' serves 'test.other', not in capabilities" in problems
    assert "entrypoint: parameter 'text' of 'bare' needs a type hint" in problems
    assert "capabilities: no skill serves 'test.missing'" in problems
    assert "agent 'agent@1.0.0' is invalid" in str(caught.value)


def test_function_without_type_hints_is_refused() -> None:
    with pytest.raises(SpecInvalid) as caught:
        build_skills(spec("tests.fixtures.agents:untyped", "test.untyped"))
    assert "entrypoint: parameter 'text' of 'untyped' needs a type hint" in caught.value.problems


def test_function_serving_several_capabilities_must_name_one() -> None:
    with pytest.raises(SpecInvalid) as caught:
        build_skills(spec("tests.fixtures.agents:norm", "geo.norm", "geo.dist"))
    # norm is marked @skill("geo.norm"), so only geo.dist is unserved
    assert caught.value.problems == ("capabilities: no skill serves 'geo.dist'",)


@pytest.mark.parametrize(
    ("entrypoint", "expected"),
    [
        (
            "tests.fixtures.nowhere:echo",
            "entrypoint: cannot import module 'tests.fixtures.nowhere'",
        ),
        (
            "tests.fixtures.agents:absent",
            "entrypoint: module 'tests.fixtures.agents' has no attribute 'absent'",
        ),
    ],
)
def test_entrypoint_that_does_not_load_is_refused(entrypoint: str, expected: str) -> None:
    with pytest.raises(SpecInvalid) as caught:
        build_skills(spec(entrypoint, "test.echo"))
    assert caught.value.problems[0].startswith(expected)
