"""Agent kinds: one loader per `AgentSpec.kind`, in one table.

A loader builds what a replica runs (`Implementation`: skills, instance, message handler)
from a spec that has passed the platform's allow-lists. Adding a kind is one loader and one
entry in `LOADERS` (plus the value in `AgentSpec.kind`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from actors.admission import check_code
from actors.models import AgentSpec
from actors.skills import Implementation, Skill, load_python_agent
from cluster import extras
from cluster.allowlist import CodePolicy, policy_for
from cluster.errors import SpecInvalid

if TYPE_CHECKING:
    from cluster.settings import Settings

#: (spec, the replica's settings or None, the code policy) -> what the replica runs.
Loader = Callable[[AgentSpec, "Settings | None", CodePolicy], Implementation]


def _python(spec: AgentSpec, settings: Settings | None, policy: CodePolicy) -> Implementation:
    return load_python_agent(spec, policy)


def _llm(spec: AgentSpec, settings: Settings | None, policy: CodePolicy) -> Implementation:
    absent = extras.problem("llm", "an llm agent")
    if absent:
        raise SpecInvalid(f"agent {spec.agent_id!r}", [f"kind: {absent}"])
    # Imported here: a python agent's replica never loads the LLM machinery.
    from actors.llm import load_llm_agent

    return load_llm_agent(spec, settings, policy)


#: Every agent kind and how its replicas are built.
LOADERS: dict[str, Loader] = {"python": _python, "llm": _llm}


def load_agent(spec: AgentSpec, settings: Settings | None = None) -> Implementation:
    """Build the spec's implementation with the loader of its kind.

    Nothing is imported unless the spec's code and secret references pass the platform's
    allow-lists (`actors.admission`, with `settings` or this process's own). With
    `settings` (a pool replica's), an llm agent's effects are durable and it may delegate.

    Raises:
        SpecInvalid: the spec names code or secrets the platform does not allow, its kind's
            extra is not installed, the entrypoint cannot be loaded or its skills don't
            match the spec's capabilities; every problem is listed.
    """
    policy = policy_for(settings)
    check_code(spec, policy)
    return LOADERS[spec.kind](spec, settings, policy)


def build_skills(spec: AgentSpec) -> dict[str, Skill]:
    """The spec's skills, built with this process's policy and no settings.

    Raises:
        SpecInvalid: see `load_agent`.
    """
    return load_agent(spec).skills


__all__ = ["LOADERS", "Loader", "build_skills", "load_agent"]
