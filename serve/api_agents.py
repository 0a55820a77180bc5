"""Agents of the caller's tenant: apply (create or update), list and discover, get, status,
scale, delete. Client calls that wait on Ray run in a worker thread, off the event loop."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actors.models import AgentRecord, AgentSpec, AgentStatus, DiscoveryCriteria
from cluster.auth.models import Action
from cluster.errors import InputInvalid
from serve.deps import Caller, allowed
from serve.patterns import check_agent_ref

router = APIRouter(tags=["agents"])


class StatusRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    status: AgentStatus


class ScaleRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    replicas: int = Field(ge=0, le=10_000)


class AgentsResponse(BaseModel):
    agents: list[AgentRecord]


class RemovedResponse(BaseModel):
    removed: list[str]


@router.post("/v1/agents", response_model=AgentRecord)
async def apply_agent(
    spec: AgentSpec,
    who: Caller = Depends(allowed(Action.AGENTS_WRITE)),  # noqa: B008
) -> AgentRecord:
    """Create the agent `name@version`, or update it when it exists."""
    with who.audited(Action.AGENTS_WRITE, obj=f"agent:{spec.agent_id}"):
        records = await asyncio.to_thread(lambda: who.client.agents.apply(spec))
    return records[0]


@router.get("/v1/agents", response_model=AgentsResponse)
async def list_agents(
    who: Annotated[Caller, Depends(allowed(Action.AGENTS_READ))],
    capability: str | None = None,
    name: str | None = None,
    version: Annotated[str | None, Query(description="a range like '>=1.2,<2'")] = None,
    status: AgentStatus | None = None,
    tag: Annotated[list[str] | None, Query()] = None,
) -> AgentsResponse:
    """List the tenant's agents; every given filter must match (tags: all of them)."""
    try:
        criteria = DiscoveryCriteria(
            capability=capability, name=name, version=version, status=status, tags=tag or []
        )
    except ValidationError as exc:
        problems = [f"query.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise InputInvalid("agent query", problems) from None
    records = await asyncio.to_thread(lambda: who.client.agents.ls(criteria))
    return AgentsResponse(agents=records)


@router.get("/v1/agents/{agent_id}", response_model=AgentRecord)
async def get_agent(
    agent_id: str,
    who: Caller = Depends(allowed(Action.AGENTS_READ)),  # noqa: B008
) -> AgentRecord:
    return await asyncio.to_thread(lambda: who.client.agents.get(agent_id))


@router.put("/v1/agents/{agent_id}/status", response_model=AgentsResponse)
async def set_status(
    agent_id: str,
    body: StatusRequest,
    who: Caller = Depends(allowed(Action.AGENTS_WRITE)),  # noqa: B008
) -> AgentsResponse:
    """Set the status of `agent_id` (or of every version of a bare name)."""
    check_agent_ref(agent_id, "path.agent_id", "agent reference")
    with who.audited(Action.AGENTS_WRITE, obj=f"agent:{agent_id}"):
        records = await asyncio.to_thread(
            lambda: who.client.agents.set_status(agent_id, body.status)
        )
    return AgentsResponse(agents=records)


@router.post("/v1/agents/{name}/scale", response_model=AgentsResponse)
async def scale_agent(
    name: str,
    body: ScaleRequest,
    who: Caller = Depends(allowed(Action.AGENTS_WRITE)),  # noqa: B008
) -> AgentsResponse:
    """Scale every version matching `name` (or `name@range`) within its min..max."""
    check_agent_ref(name, "path.name", "agent reference")
    with who.audited(Action.AGENTS_WRITE, obj=f"agent:{name}"):
        records = await asyncio.to_thread(lambda: who.client.agents.scale(name, body.replicas))
    return AgentsResponse(agents=records)


@router.delete("/v1/agents/{agent_id}", response_model=RemovedResponse)
async def remove_agent(
    agent_id: str,
    who: Caller = Depends(allowed(Action.AGENTS_WRITE)),  # noqa: B008
) -> RemovedResponse:
    """Remove `agent_id` (or every version of a bare name) and stop its replicas."""
    check_agent_ref(agent_id, "path.agent_id", "agent reference")
    with who.audited(Action.AGENTS_WRITE, obj=f"agent:{agent_id}"):
        removed = await asyncio.to_thread(lambda: who.client.agents.rm(agent_id))
    return RemovedResponse(removed=removed)
