"""What the agent contracts accept and refuse when people write them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from actors.models import AgentRecord, AgentSpec, DiscoveryCriteria, Task


def spec(**fields: Any) -> AgentSpec:
    return AgentSpec(
        **{"name": "echo", "capabilities": ["test.echo"], "entrypoint": "m:f", **fields}
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "Echo"}, "name"),
        ({"version": "1.0"}, "version"),
        ({"capabilities": ["Code Review"]}, "capabilities"),
        ({"capabilities": ["a.b", "a.b"]}, "capabilities"),
        ({"entrypoint": "module.only"}, "entrypoint"),
        ({"replicas": {"min": 4, "max": 2}}, "replicas"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"shoe_size": 42}, "shoe_size"),
    ],
)
def test_spec_refuses_bad_fields_naming_them(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        spec(**fields)
    assert [e["loc"][0] for e in caught.value.errors()] == [field]


def test_agent_id_is_name_at_version() -> None:
    assert spec(version="2.3.4").agent_id == "echo@2.3.4"


def test_spec_refuses_versions_it_cannot_order() -> None:
    with pytest.raises(ValidationError):
        spec(version="1.0.0-nightly")


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0-rc.1", "1.2.3+build.5"])
def test_accepted_versions_are_matched_by_ranges(version: str) -> None:
    record = AgentRecord(spec=spec(version=version))
    assert DiscoveryCriteria(version=">=1.0.0rc0,<3").matches(record)
    assert not DiscoveryCriteria(version=">=3").matches(record)


def test_bare_version_in_criteria_means_exactly_it() -> None:
    criteria = DiscoveryCriteria(version="1.2.0")
    assert criteria.matches(AgentRecord(spec=spec(version="1.2.0")))
    assert not criteria.matches(AgentRecord(spec=spec(version="1.2.1")))


def test_criteria_refuse_a_range_that_does_not_parse() -> None:
    with pytest.raises(ValidationError, match="is not like"):
        DiscoveryCriteria(version="about two")


def test_task_capability_must_be_a_dotted_name() -> None:
    with pytest.raises(ValidationError):
        Task(capability="Code Review")
    with pytest.raises(ValidationError):
        Task(capability="a.b", timeout_s=0)
    assert Task(capability="a.b").id != Task(capability="a.b").id
