"""The agent registry on the real store: registration, versions side by side, discovery."""

from __future__ import annotations

from typing import Any

import pytest

from actors.models import AgentRecord, AgentSpec, AgentStatus, DiscoveryCriteria, SkillInfo
from actors.registry import AgentRegistry
from cluster.errors import AgentNotFound, SpecInvalid
from cluster.store import Store


def record(
    name: str, version: str = "1.0.0", capabilities: tuple[str, ...] = ("test.echo",), **fields: Any
) -> AgentRecord:
    spec = AgentSpec(
        name=name,
        version=version,
        capabilities=list(capabilities),
        entrypoint="m:f",
        replicas={"min": 1, "max": 4},
        **fields,
    )
    return AgentRecord(spec=spec)


@pytest.fixture
def registry(store: Store) -> AgentRegistry:
    reg = AgentRegistry(store)
    reg.register_agent(record("echo", "1.0.0", tags=["blue"]))
    reg.register_agent(record("echo", "1.5.0", tags=["blue", "beta"]))
    reg.register_agent(record("echo", "2.0.0"))
    reg.register_agent(record("summarizer", "1.0.0", ("text.summarize", "text.translate")))
    return reg


def ids(records: list[AgentRecord]) -> list[str]:
    return [r.agent_id for r in records]


def test_register_and_get(registry: AgentRegistry) -> None:
    got = registry.get("summarizer@1.0.0")
    assert got.spec.capabilities == ["text.summarize", "text.translate"]
    assert got.status == AgentStatus.ACTIVE


def test_versions_live_side_by_side(registry: AgentRegistry) -> None:
    assert ids(registry.all()) == ["echo@1.0.0", "echo@1.5.0", "echo@2.0.0", "summarizer@1.0.0"]


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ({}, ["echo@1.0.0", "echo@1.5.0", "echo@2.0.0", "summarizer@1.0.0"]),
        ({"capability": "text.translate"}, ["summarizer@1.0.0"]),
        ({"capability": "test.echo"}, ["echo@1.0.0", "echo@1.5.0", "echo@2.0.0"]),
        ({"name": "echo", "version": ">=1.0,<2"}, ["echo@1.0.0", "echo@1.5.0"]),
        ({"name": "echo", "version": ">=2"}, ["echo@2.0.0"]),
        ({"version": "1.5.0"}, ["echo@1.5.0"]),
        ({"tags": ["blue"]}, ["echo@1.0.0", "echo@1.5.0"]),
        ({"tags": ["blue", "beta"]}, ["echo@1.5.0"]),
        ({"capability": "no.such"}, []),
    ],
)
def test_discover(registry: AgentRegistry, criteria: dict[str, Any], expected: list[str]) -> None:
    assert ids(registry.discover_agents(DiscoveryCriteria(**criteria))) == expected


def test_discover_by_status(registry: AgentRegistry) -> None:
    registry.update_agent_status("echo@1.5.0", AgentStatus.DISABLED)
    disabled = registry.discover_agents(DiscoveryCriteria(status=AgentStatus.DISABLED))
    active = registry.discover_agents(DiscoveryCriteria(name="echo", status=AgentStatus.ACTIVE))
    assert ids(disabled) == ["echo@1.5.0"]
    assert ids(active) == ["echo@1.0.0", "echo@2.0.0"]
    assert registry.get("echo@1.5.0").status == AgentStatus.DISABLED


def test_re_registering_replaces_the_record_but_keeps_first_registration_time(
    registry: AgentRegistry,
) -> None:
    first = registry.get("echo@2.0.0")
    changed = record("echo", "2.0.0", description="louder")
    registry.register_agent(changed)
    again = registry.get("echo@2.0.0")
    assert again.spec.description == "louder"
    assert again.registered_at == first.registered_at
    assert again.updated_at >= first.updated_at
    assert len(registry.all()) == 4


def test_set_desired_replicas_within_range(registry: AgentRegistry) -> None:
    registry.set_desired_replicas("echo@2.0.0", 3)
    assert registry.get("echo@2.0.0").desired_replicas == 3


@pytest.mark.parametrize("replicas", [0, 5, -1])
def test_set_desired_replicas_out_of_range_is_refused(
    registry: AgentRegistry, replicas: int
) -> None:
    with pytest.raises(SpecInvalid) as caught:
        registry.set_desired_replicas("echo@2.0.0", replicas)
    assert caught.value.problems == (f"replicas: {replicas} is outside 1..4",)
    assert registry.get("echo@2.0.0").desired_replicas == 1  # unchanged


def test_deregister(registry: AgentRegistry) -> None:
    registry.deregister_agent("echo@1.0.0")
    assert "echo@1.0.0" not in ids(registry.all())
    with pytest.raises(AgentNotFound):
        registry.deregister_agent("echo@1.0.0")


@pytest.mark.parametrize(
    "operation",
    [
        lambda reg: reg.get("ecko@1.0.0"),
        lambda reg: reg.update_agent_status("ecko@1.0.0", AgentStatus.DISABLED),
        lambda reg: reg.set_desired_replicas("ecko@1.0.0", 2),
        lambda reg: reg.deregister_agent("ecko@1.0.0"),
        lambda reg: reg.resolve("ecko@1.0.0"),
    ],
    ids=["get", "status", "scale", "deregister", "resolve"],
)
def test_unknown_agent_suggests_near_ids(registry: AgentRegistry, operation: Any) -> None:
    with pytest.raises(AgentNotFound) as caught:
        operation(registry)
    assert str(caught.value).startswith("no agent serves 'ecko@1.0.0'; did you mean ")
    assert "'echo@1.0.0'" in str(caught.value)


def test_unknown_agent_on_an_empty_registry_says_so(store: Store) -> None:
    with pytest.raises(AgentNotFound, match="no agents are registered"):
        AgentRegistry(store).get("echo@1.0.0")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("echo", ["echo@1.0.0", "echo@1.5.0", "echo@2.0.0"]),
        ("echo@<2", ["echo@1.0.0", "echo@1.5.0"]),
        ("echo@2.0.0", ["echo@2.0.0"]),
    ],
)
def test_resolve_name_or_range(registry: AgentRegistry, selector: str, expected: list[str]) -> None:
    assert ids(registry.resolve(selector)) == expected


def test_capabilities_of_an_agent(store: Store) -> None:
    reg = AgentRegistry(store)
    skill = SkillInfo(capability="test.echo", method="echo", input_schema={"type": "object"})
    reg.register_agent(record("echo").model_copy(update={"skills": {"test.echo": skill}}))
    assert reg.get_agent_capabilities("echo@1.0.0") == {"test.echo": skill}
