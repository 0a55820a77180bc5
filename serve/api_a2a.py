"""Every agent of a tenant published as an A2A agent, with the official a2a-sdk server parts.

`GET /a2a/{agent}/.well-known/agent-card.json` is its card (skills from its capabilities,
their input schemas in an extension, our bearer auth as the security scheme) and `POST
/a2a/{agent}` its JSON-RPC endpoint: the SDK's dispatcher and request handler over an
executor that routes each message as a task of that agent and answers with its result
as an artifact. Both need the caller's credential, which also names the tenant, so
another tenant's agent is not found (404).
"""

from __future__ import annotations

import asyncio
from typing import Any

from a2a.helpers import new_task, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.server.tasks import TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentExtension,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    TaskState,
)
from cachetools import LRUCache
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf.json_format import MessageToDict
from packaging.version import Version
from pydantic import ValidationError

from actors.a2a_wire import SKILL_KEY, message_input, output_parts
from actors.models import NAME, AgentRecord, AgentStatus, Task, TaskContext, TaskResult
from actors.registry import AgentRegistry
from cluster.auth.models import Action
from cluster.errors import DafnckError, InputInvalid
from serve.a2a_tasks import RedisTaskStore
from serve.deps import Caller, allowed
from serve.task_runs import cancel_here, run_cancellable
from serve.tenants import TenantServices

router = APIRouter(tags=["a2a"])
AgentName = Path(pattern=NAME, description="the agent's name (its newest active version)")
#: The card extension whose params map each skill id to its input JSON schema.
INPUT_SCHEMAS_URI = "urn:dafnck:a2a:input-schemas:v1"
MODES = ["text/plain", "application/json"]
#: Dispatchers an API replica keeps (one per tenant, agent version and URL).
DISPATCHERS = 512


def newest(records: list[AgentRecord]) -> AgentRecord:
    """The newest active version (or the newest of all when none is active)."""
    active = [r for r in records if r.status == AgentStatus.ACTIVE] or records
    return max(active, key=lambda r: Version(r.spec.version))


def _record(who: Caller, agent: str) -> AgentRecord:
    """Raises: AgentNotFound (also for another tenant's agent)."""
    return newest(AgentRegistry(who.services.store.for_tenant(who.tenant)).resolve(agent))


def agent_card(record: AgentRecord, url: str) -> AgentCard:
    """The A2A card of one agent served at `url`."""
    spec = record.spec
    skills = [
        AgentSkill(
            id=capability,
            name=capability,
            description=_description(record, capability),
            tags=[capability, *spec.tags],
            input_modes=MODES,
            output_modes=MODES,
        )
        for capability in spec.capabilities
    ]
    schemas = {c: s.input_schema for c, s in record.skills.items()}
    extension = AgentExtension(
        uri=INPUT_SCHEMAS_URI, description="input JSON schema of each skill", params=schemas
    )
    bearer = HTTPAuthSecurityScheme(
        scheme="bearer", description="an API key (dk_...) or a JWT from /v1/auth/token"
    )
    return AgentCard(
        name=spec.name,
        description=spec.description or f"DafnckMachine agent {spec.agent_id}",
        version=spec.version,
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True, extensions=[extension]),
        security_schemes={"bearer": SecurityScheme(http_auth_security_scheme=bearer)},
        security_requirements=[SecurityRequirement(schemes={"bearer": StringList()})],
        default_input_modes=MODES,
        default_output_modes=MODES,
        skills=skills,
    )


def _description(record: AgentRecord, capability: str) -> str:
    info = record.skills.get(capability)
    return (info.description if info else "") or f"{capability} of {record.spec.agent_id}"


class PlatformExecutor(AgentExecutor):
    """Runs an A2A message as a task routed to one agent of one tenant."""

    def __init__(self, tenant: TenantServices, record: AgentRecord) -> None:
        self.tenant = tenant
        self.record = record

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = context.task_id or "", context.context_id or ""
        if context.current_task is None:
            history = [context.message] if context.message else []
            submitted = TaskState.TASK_STATE_SUBMITTED
            await event_queue.enqueue_event(
                new_task(task_id, context_id, submitted, history=history)
            )
        updater = TaskUpdater(event_queue, task_id, context_id)
        await updater.start_work()
        result = await self._run(context, task_id)
        if result.ok:
            await updater.add_artifact(output_parts(result.output), name="output")
            await updater.complete()
            return
        error = result.error
        text = f"{error.type}: {error.message}" if error else "the task failed"
        await updater.failed(updater.new_agent_message([new_text_part(text)]))

    async def _run(self, context: RequestContext, task_id: str) -> TaskResult:
        """The routed task's result; errors before it runs are a failed result too."""
        try:
            task = self._task(context, task_id)
            work = self.tenant.router.run_async(task)
            return await run_cancellable(self._key(task_id), work, lambda: self._cancelled(task_id))
        except DafnckError as exc:
            return TaskResult(task_id=task_id, status="failed", error=exc.info())

    def _task(self, context: RequestContext, task_id: str) -> Task:
        """Raises: InputInvalid (an unknown skill, or a task id we cannot take)."""
        spec = self.record.spec
        message = context.message
        metadata = MessageToDict(message.metadata) if message else {}
        capability = metadata.get(SKILL_KEY) or context.metadata.get(SKILL_KEY)
        if capability is None and len(spec.capabilities) == 1:
            capability = spec.capabilities[0]
        if capability not in spec.capabilities:
            raise InputInvalid(
                f"message to {spec.name!r}",
                [f"metadata.skill: {capability!r} is not one of {spec.capabilities}"],
            )
        try:
            return Task(
                id=task_id,
                capability=capability,
                agent=spec.agent_id,
                input=message_input(message) if message else {},
                context=TaskContext(tenant=self.tenant.settings.tenant),
            )
        except ValidationError as exc:
            raise InputInvalid("A2A task", [str(e["msg"]) for e in exc.errors()]) from None

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """The A2A task is marked cancelled and its routed task stopped: here at once, on
        another replica when it reads the record (`serve.task_runs`)."""
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel()
        cancel_here(self._key(context.task_id or ""))

    def _key(self, task_id: str) -> tuple[str, str, str]:
        return (self.tenant.settings.tenant, f"a2a:{self.record.spec.name}", task_id)

    async def _cancelled(self, task_id: str) -> bool:
        store = RedisTaskStore(self.tenant.store, self.record.spec.name)
        found = await store.get(task_id, ServerCallContext())
        return found is not None and found.status.state == TaskState.TASK_STATE_CANCELED


def _dispatcher(request: Request, who: Caller, tenant: TenantServices, record: AgentRecord) -> Any:
    """The SDK's JSON-RPC dispatcher for this agent version, one per replica and tenant."""
    cache: LRUCache[tuple[str, ...], JsonRpcDispatcher] = request.app.state.__dict__.setdefault(
        "a2a_dispatchers", LRUCache(maxsize=DISPATCHERS)
    )
    url = _url(request, record.spec.name)
    key = (who.tenant, record.agent_id, url, str(record.updated_at))
    if key not in cache:
        handler = DefaultRequestHandler(
            agent_executor=PlatformExecutor(tenant, record),
            task_store=RedisTaskStore(tenant.store, record.spec.name),
            agent_card=agent_card(record, url),
        )
        cache[key] = JsonRpcDispatcher(request_handler=handler)
    return cache[key]


def _url(request: Request, agent: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/a2a/{agent}"


@router.get("/a2a/{agent}/.well-known/agent-card.json")
async def get_agent_card(
    request: Request,
    agent: str = AgentName,
    who: Caller = Depends(allowed(Action.AGENTS_READ)),  # noqa: B008
) -> Response:
    """The agent's A2A card. Raises: AgentNotFound."""
    record = await asyncio.to_thread(_record, who, agent)
    return JSONResponse(agent_card_to_dict(agent_card(record, _url(request, agent))))


@router.post("/a2a/{agent}")
async def a2a_rpc(
    request: Request,
    agent: str = AgentName,
    who: Caller = Depends(allowed(Action.TASKS_RUN)),  # noqa: B008
) -> Response:
    """A2A JSON-RPC (`SendMessage`, `SendStreamingMessage`, `GetTask`, ...). Raises: AgentNotFound."""
    record = await asyncio.to_thread(_record, who, agent)
    tenant = who.tenant_services
    async with who.audit(Action.TASKS_RUN, obj=f"a2a:{agent}"):
        response: Response = await _dispatcher(request, who, tenant, record).handle_requests(
            request
        )
    return response
