"""Bad agent specs are refused whole, with every problem named, and change nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from actors.client import Client
from actors.models import AgentSpec
from cluster.errors import SpecInvalid
from tests.integration.helpers import replica_names, wait_until

pytestmark = pytest.mark.timeout(120)

GOOD_AND_BAD = """\
name: echo
capabilities: [test.echo]
entrypoint: tests.fixtures.agents:echo
---
name: Broken Agent
capabilities: [test.echo]
entrypoint: tests.fixtures.agents:echo
replicas: {min: 5, max: 2}
max_queued: -1
"""


def test_bad_yaml_file_is_refused_with_every_problem_and_applies_nothing(
    client: Client, tmp_path: Path
) -> None:
    file = tmp_path / "agents.yaml"
    file.write_text(GOOD_AND_BAD)
    with pytest.raises(SpecInvalid) as caught:
        client.agents.apply(file)
    assert [p.split(": ")[:2] for p in caught.value.problems] == [
        [f"{file}:5", "name"],
        [f"{file}:8", "replicas"],
        [f"{file}:9", "max_queued"],
    ]
    assert client.agents.ls() == []  # the good spec in the same file was not applied either
    assert client.health()["pools"] == {}


def test_entrypoint_that_does_not_serve_its_capabilities_is_refused(client: Client) -> None:
    spec = AgentSpec(
        name="stray",
        capabilities=["test.echo", "test.bare", "test.missing"],
        entrypoint="tests.fixtures.agents:Stray",
    )
    started = time.monotonic()
    with pytest.raises(SpecInvalid) as caught:
        client.agents.apply(spec)
    assert time.monotonic() - started < 60
    problems = caught.value.problems
    assert "entrypoint: skill 'other' serves 'test.other', not in capabilities" in problems
    assert "entrypoint: parameter 'text' of 'bare' needs a type hint" in problems
    assert "capabilities: no skill serves 'test.missing'" in problems
    assert "'stray@1.0.0'" in str(caught.value)
    assert client.agents.ls() == []
    # the replica that tried to load it is gone again
    wait_until(
        lambda: replica_names(client.settings.tenant) == set(), 10, "the failed replica stopped"
    )


# The two below refuse a spec and look at nothing else in the tenant, so they share one; the
# two above check that the tenant stays empty and keep a fresh one each.
def test_function_without_type_hints_is_refused(shared_client: Client) -> None:
    spec = AgentSpec(
        name="untyped", capabilities=["test.untyped"], entrypoint="tests.fixtures.agents:untyped"
    )
    with pytest.raises(SpecInvalid, match="parameter 'text' of 'untyped' needs a type hint"):
        shared_client.agents.apply(spec)


def test_missing_module_is_refused(shared_client: Client) -> None:
    spec = AgentSpec(
        name="ghost", capabilities=["test.echo"], entrypoint="tests.fixtures.ghost:echo"
    )
    with pytest.raises(SpecInvalid, match=r"cannot import module 'tests\.fixtures\.ghost'"):
        shared_client.agents.apply(spec)
