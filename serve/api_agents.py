"""Agents of the caller's tenant: apply (create or update), list and discover, get, status,
scale, delete. Changes are the supervisor's operations, awaited through the tenant's
gateway; listings read the registry (a blocking store read, in a worker thread)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actors.contract import AgentRef, CreateAgent, ScaleAgent, SetAgentStatus
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
    async with who.audit(Action.AGENTS_WRITE, obj=f"agent:{spec.agent_id}"):
        return await who.gateway.create_agent(CreateAgent(spec=spec))


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
    registry = who.tenant_services.registry
    return AgentsResponse(agents=await asyncio.to_thread(registry.discover_agents, criteria))


@router.get("/v1/agents/{agent_id}", response_model=AgentRecord)
async def get_agent(
    agent_id: str,
    who: Caller = Depends(allowed(Action.AGENTS_READ)),  # noqa: B008
) -> AgentRecord:
    return await asyncio.to_thread(who.tenant_services.registry.get, agent_id)


@router.put("/v1/agents/{agent_id}/status", response_model=AgentsResponse)
async def set_status(
    agent_id: str,
    body: StatusRequest,
    who: Caller = Depends(allowed(Action.AGENTS_WRITE)),  # noqa: B008
) -> AgentsResponse:
    """Set the status of `agent_id` (or of every version of a bare name)."""
    check_agent_ref(agent_id, "path.agent_id", "agent reference")
    async with who.audit(Action.AGENTS_WRITE, obj=f"agent:{agent_id}"):
        records = [
            await who.gateway.update_agent_status(
                SetAgentStatus(agent_id=found.agent_id, status=body.status)
            )
            for found in await _matching(who, agent_id)
        ]
    return AgentsResponse(agents=records)


@router.post("/v1/agents/{name}/scale", response_model=AgentsResponse)
async def scale_agent(
    name: str,
    body: ScaleRequest,
    who: Caller = Depends(allowed(Action.AGENTS_WRITE)),  # noqa: B008
) -> AgentsResponse:
    """Scale every version matching `name` (or `name@range`) within its min..max."""
    check_agent_ref(name, "path.name", "agent reference")
    async with who.audit(Action.AGENTS_WRITE, obj=f"agent:{name}"):
        records = [
            await who.gateway.scale_agents(
                ScaleAgent(agent_id=found.agent_id, replicas=body.replicas)
            )
            for found in await _matching(who, name)
        ]
    return AgentsResponse(agents=records)


@router.delete("/v1/agents/{agent_id}", response_model=RemovedResponse)
async def remove_agent(
    agent_id: str,
    who: Caller = Depends(allowed(Action.AGENTS_WRITE)),  # noqa: B008
) -> RemovedResponse:
    """Remove `agent_id` (or every version of a bare name) and stop its replicas."""
    check_agent_ref(agent_id, "path.agent_id", "agent reference")
    async with who.audit(Action.AGENTS_WRITE, obj=f"agent:{agent_id}"):
        removed = [found.agent_id for found in await _matching(who, agent_id)]
        for each in removed:
            await who.gateway.remove_agent(AgentRef(agent_id=each))
    return RemovedResponse(removed=removed)


async def _matching(who: Caller, name: str) -> list[AgentRecord]:
    """Every version `name` (or `name@range`) names. Raises: AgentNotFound."""
    return await asyncio.to_thread(who.tenant_services.registry.resolve, name)
