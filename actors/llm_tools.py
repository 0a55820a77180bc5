"""The tools an `llm` agent may call: python skills, MCP servers' tools, and other agents.

- A skill tool is a `module:function`; its JSON schema comes from its type hints or its one
  pydantic-model parameter, derived as `actors.skills` derives a skill's input schema.
- An MCP tool comes from an MCP server reached through the official `mcp` SDK, over stdio
  (the server's command, started once per replica) or streamable HTTP (a URL, reached only
  at addresses the platform's `outbound_allow` admits: `cluster.netguard`). The
  connection opens on the agent's first task and stays open.
- An agent tool delegates to whichever agent serves a capability: a task routed like any
  other (by the supervisor's pool view, straight to a replica), with the tool's own timeout;
  the model's parallel tool calls run at once, so it may fan out to several agents.

A tool's failure is shown to the model as the tool's result (`is_error`), not raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from actors.admission import tool_problems
from actors.llm_providers import ToolSpec
from actors.models import MCPServer, Task, TaskResult, ToolRef
from actors.skills import Skill, _input_model, load_entrypoint
from cluster import netguard
from cluster.allowlist import CodePolicy, policy_for
from cluster.errors import SpecInvalid
from cluster.outbound import outbound_policy

if TYPE_CHECKING:
    from cluster.settings import Settings

log = logging.getLogger(__name__)

#: Routes a task to an agent and waits for its result (the replica's PoolRouter).
Delegate = Callable[[Task], Awaitable[TaskResult]]
#: The input schema of the agent serving a capability.
SchemaLookup = Callable[[str], Awaitable[dict[str, Any]]]
#: What a tool returns to the model is cut to this many characters.
MAX_RESULT_CHARS = 16_000
#: Beyond a delegated task's own timeout, how long the caller waits for its answer (at most).
_DELEGATE_GRACE_S = 10.0


class ToolFailed(Exception):
    """A tool's failure, shown to the model as the tool's result."""


@dataclass(frozen=True)
class Tool:
    """One tool as the model sees it, and how to run it for a task."""

    spec: ToolSpec
    run: Callable[[dict[str, Any], Task], Awaitable[Any]]
    idempotent: bool = False
    timeout_s: float | None = None


def skill_tool(ref: ToolRef, policy: CodePolicy) -> Tool:
    """A python function the operator allows (`tool_skills`) as a tool.

    Raises:
        ValueError: not allowed, not loadable, or no schema can be derived.
    """
    target = load_entrypoint(ref.skill or "", policy, "tool_skills")
    if inspect.isclass(target) or not callable(target):
        raise ValueError(f"{ref.skill!r} must name a function")
    name = ref.name or target.__name__
    model, model_param = _input_model(target, name)
    try:
        schema = model.model_json_schema()
    except Exception as exc:  # a type pydantic cannot describe in JSON schema
        raise ValueError(f"no JSON schema for {ref.skill!r}: {exc}") from None
    skill = Skill(name, name, target, model, model_param)
    doc = (inspect.getdoc(target) or "").split("\n\n")[0]

    async def run(args: dict[str, Any], task: Task) -> Any:
        return await skill(args)

    description = ref.description or doc or f"the python function {ref.skill}"
    return Tool(ToolSpec(name, description, schema), run, ref.idempotent, ref.timeout_s)


def agent_tool(ref: ToolRef, delegate: Delegate, schema: dict[str, Any]) -> Tool:
    """A capability as a tool: each call is a task routed to the agent serving it."""
    capability = ref.agent or ""
    name = ref.name or capability.replace(".", "_")
    timeout_s = ref.timeout_s

    async def run(args: dict[str, Any], parent: Task) -> Any:
        task = delegated_task(parent, capability, args, timeout_s, name)
        # The replica enforces the task's timeout and answers TaskTimeout; this bounds a
        # replica that does not answer at all. Without a timeout the router's wait applies.
        wait_s = timeout_s + min(_DELEGATE_GRACE_S, max(1.0, timeout_s)) if timeout_s else None
        try:
            async with asyncio.timeout(wait_s):
                result = await delegate(task)
        except TimeoutError:
            raise ToolFailed(
                f"the agent serving {capability!r} did not answer in {timeout_s}s"
            ) from None
        if not result.ok:
            error = result.error
            raise ToolFailed(f"{error.type}: {error.message}" if error else "the agent failed")
        return result.output

    description = ref.description or f"Ask the agent serving {capability!r} to do it."
    # No ToolBox timeout on top: the delegated task carries its own.
    return Tool(ToolSpec(name, description, schema or {"type": "object"}), run, ref.idempotent)


def delegated_task(
    parent: Task, capability: str, args: dict[str, Any], timeout_s: float | None, call: str
) -> Task:
    """The task a delegation sends: ids derived from the parent's, so running the parent
    again sends the same task (and an llm agent it reaches replays its own replies)."""
    base = parent.idempotency_key or parent.id
    digest = hashlib.sha256(
        f"{base}/{call}/{json.dumps(args, sort_keys=True)}".encode()
    ).hexdigest()
    ctx = parent.context
    step = f"{ctx.step_id or parent.id}/{call}-{digest[:8]}"
    context = ctx.model_copy(update={"step_id": step, "attempt": 1})
    return Task(
        id=f"{parent.id[:80]}.{digest[:32]}",
        capability=capability,
        input=args,
        timeout_s=timeout_s,
        idempotency_key=f"{base[:150]}/{digest[:32]}",
        context=context,
    )


class MCPConnection:
    """One open MCP client session, held by a background task (the SDK's transports are
    anyio context managers that must close in the task that opened them)."""

    def __init__(
        self,
        server: MCPServer,
        timeout_s: float | None,
        outbound: netguard.OutboundPolicy | None = None,
    ) -> None:
        self.server = server
        self.timeout_s = timeout_s
        self.outbound = outbound or outbound_policy(None)
        self.client: Any = None
        self.tools: list[Any] = []
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: A call failed below the tool (the server died, the session ended): reconnect.
        self._broken = False
        self._reopening = asyncio.Lock()

    def _target(self) -> Any:
        if self.server.url:
            return _guarded_http(self.server.url, self.outbound)
        from mcp.client.stdio import StdioServerParameters

        command = list(self.server.command or [])
        if command[0] in ("python", "python3"):
            command[0] = sys.executable  # the replica's own interpreter and packages
        return StdioServerParameters(
            command=command[0], args=command[1:], env=self.server.env or None, cwd=self.server.cwd
        )

    async def open(self) -> None:
        """Connect and list the server's tools. Raises: ToolFailed naming the server."""
        self._ready, self._stop, self._broken = asyncio.Event(), asyncio.Event(), False
        self._task = asyncio.create_task(self._hold(), name="mcp-client")
        waiter = asyncio.create_task(self._ready.wait())
        await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not self._ready.is_set():
            exc = self._task.exception()
            raise ToolFailed(f"MCP server {self.where()} could not be reached: {_root(exc)}")

    async def _hold(self) -> None:
        from mcp import Client

        async with Client(self._target(), read_timeout_seconds=self.timeout_s) as client:
            self.client = client
            listed = await client.list_tools()
            include = self.server.include
            self.tools = [t for t in listed.tools if include is None or t.name in include]
            self._ready.set()
            await self._stop.wait()

    def where(self) -> str:
        return self.server.url or " ".join(self.server.command or [])

    async def call(self, name: str, args: dict[str, Any]) -> Any:
        """The tool's structured result (or its text); a connection that failed before is
        opened again first (the failed call itself is not repeated: it may have run).

        Raises:
            ToolFailed: the tool failed, or the server cannot be reached.
        """
        async with self._reopening:
            if self._broken or self._task is None or self._task.done():
                log.warning("MCP server %s: connecting again", self.where())
                await self.close()
                await self.open()
        try:
            result = await self.client.call_tool(name, args, read_timeout_seconds=self.timeout_s)
        except Exception as exc:
            self._broken = True
            raise ToolFailed(f"MCP server {self.where()} failed: {_root(exc)}") from None
        text = "\n".join(getattr(c, "text", "") for c in result.content if getattr(c, "text", None))
        if result.is_error:
            raise ToolFailed(text or f"MCP tool {name!r} failed")
        if result.structured_content is not None:
            structured = result.structured_content
            return structured.get("result", structured) if len(structured) == 1 else structured
        return text

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


@contextlib.asynccontextmanager
async def _guarded_http(url: str, outbound: netguard.OutboundPolicy) -> AsyncIterator[Any]:
    """MCP's streamable HTTP transport over a client that connects only where allowed."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    transport = netguard.guarded_transport(outbound, httpx2)
    timeout = httpx2.Timeout(30, read=300)  # the SDK's own: a stream may stay open long
    async with (
        httpx2.AsyncClient(transport=transport, timeout=timeout) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


def _root(exc: BaseException | None) -> str:
    """The innermost error of an exception group (anyio wraps transport failures)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if exc else "it closed"


def mcp_tools(ref: ToolRef, connection: MCPConnection) -> list[Tool]:
    """The connected server's tools, named `<ref.name>_<tool>` when the ref has a name."""
    tools = []
    for listed in connection.tools:

        async def run(args: dict[str, Any], task: Task, _name: str = listed.name) -> Any:
            return await connection.call(_name, args)

        name = f"{ref.name}_{listed.name}" if ref.name else listed.name
        spec = ToolSpec(
            name, listed.description or ref.description or listed.name, listed.input_schema
        )
        tools.append(Tool(spec, run, ref.idempotent, ref.timeout_s))
    return tools


class ToolBox:
    """The tools of one llm agent replica: skills at once, MCP servers and agents on the
    first task (they need a connection or the registry)."""

    def __init__(
        self,
        refs: list[ToolRef],
        delegate: Delegate | None = None,
        schema_of: SchemaLookup | None = None,
        policy: CodePolicy | None = None,
    ) -> None:
        """Checks every tool against `policy` (default: this process's settings) before
        importing or starting anything. Raises: SpecInvalid naming each tool at fault."""
        policy = policy or policy_for(None)
        self.refs = refs
        self._delegate = delegate
        self._schema_of = schema_of
        self._tools: dict[str, Tool] = {}
        self._connections: list[MCPConnection] = []
        self._ready = False
        self._lock = asyncio.Lock()
        self._outbound = outbound_policy(None)
        problems = tool_problems(refs, policy) + self._url_problems(refs)
        if problems:  # nothing is imported when any tool is refused
            raise SpecInvalid("tools", problems)
        for i, ref in enumerate(refs):
            if ref.skill:
                try:
                    self._add(skill_tool(ref, policy))
                except ValueError as exc:
                    problems.append(f"llm.tools[{i}]: {exc}")
            elif ref.agent and delegate is None:
                problems.append(
                    f"llm.tools[{i}]: delegation needs a replica started by the supervisor"
                )
        if problems:
            raise SpecInvalid("tools", problems)

    def _url_problems(self, refs: list[ToolRef]) -> list[str]:
        """MCP urls whose host resolves to an address the platform does not allow."""
        found = []
        for i, ref in enumerate(refs):
            url = ref.mcp.url if ref.mcp else None
            problem = self._outbound.url_problem(url) if url else None
            if problem:
                found.append(f"llm.tools[{i}].mcp.url: {problem}")
        return found

    def _add(self, tool: Tool) -> None:
        if tool.spec.name in self._tools:
            raise ValueError(f"two tools are named {tool.spec.name!r}; give one a `name`")
        self._tools[tool.spec.name] = tool

    async def specs(self) -> list[ToolSpec]:
        """What the model is told; connects MCP servers and looks up agents the first time.

        Raises:
            ToolFailed: an MCP server cannot be reached; AgentNotFound: no agent serves a
            delegated capability.
        """
        async with self._lock:
            if not self._ready:
                await self._connect()
                self._ready = True
        return [t.spec for t in self._tools.values()]

    async def _connect(self) -> None:
        for ref in self.refs:
            if ref.mcp is not None:
                connection = MCPConnection(ref.mcp, ref.timeout_s, self._outbound)
                await connection.open()
                self._connections.append(connection)
                for tool in mcp_tools(ref, connection):
                    self._add(tool)
            elif ref.agent and self._delegate is not None:
                schema = await self._schema_of(ref.agent) if self._schema_of else {}
                self._add(agent_tool(ref, self._delegate, schema))

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._tools)

    async def run(self, tool: Tool, args: dict[str, Any], task: Task) -> dict[str, Any]:
        """Run a tool; its failure becomes an error result for the model."""
        try:
            async with asyncio.timeout(tool.timeout_s):
                value = await tool.run(args, task)
        except TimeoutError:
            return {
                "content": f"error: the tool timed out after {tool.timeout_s}s",
                "is_error": True,
            }
        except Exception as exc:  # shown to the model, which decides what to do next
            message = str(exc) if isinstance(exc, ToolFailed) else f"{type(exc).__name__}: {exc}"
            return {"content": f"error: {message}"[:MAX_RESULT_CHARS], "is_error": True}
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return {"content": text[:MAX_RESULT_CHARS], "is_error": False}

    async def close(self) -> None:
        for connection in self._connections:
            await connection.close()


def ray_delegation(settings: Settings) -> tuple[Delegate, SchemaLookup]:
    """Delegation from a replica: a PoolRouter fed by the tenant's supervisor (Ray calls)."""
    import ray

    from actors.contract import GetPool
    from actors.gateway import SupervisorGateway, blocking
    from actors.names import supervisor_name
    from actors.router import PoolRouter, PoolView
    from cluster.settings import RAY_NAMESPACE

    def source(capability: str, agent: str | None) -> PoolView:
        supervisor = ray.get_actor(supervisor_name(settings.tenant), namespace=RAY_NAMESPACE)
        return blocking(
            SupervisorGateway(supervisor).get_pool(GetPool(capability=capability, agent=agent))
        )

    router = PoolRouter(source)

    async def delegate(task: Task) -> Any:
        return await router.run_async(task)

    async def schema_of(capability: str) -> dict[str, Any]:
        pool = await asyncio.to_thread(source, capability, None)
        return dict(pool.schemas.get(capability, {}))

    return delegate, schema_of
