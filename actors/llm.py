"""The `llm` agent kind: a conversation with a model, its tool-calling loop, structured
output and token streaming.

A task's input is `{"prompt": str, "session": str | None, ...vars}`; `$name` in the prompt
takes a variable's value, and variables the prompt does not name are appended as JSON.
Each model turn goes through `LLMEffects.model_call` (cached per step, attempt and turn,
rate-limited, counted against budgets) and each tool call through `LLMEffects.tool_call`
(journalled, so a completed call is never run twice). The model's tool calls of one turn
run at once. After `max_steps` turns with tool calls the model is asked once more with
no tools offered. With an `output_schema` the final reply must be JSON satisfying it;
otherwise the model is told what is wrong and asked again, up to `output_attempts` times.

With `stream: true` the reply's text goes to live consumers as `task.token` events on the
event bus (subject: the task id), a few per second, the last one with `done: true`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from actors.llm_conversation import (
    Conversation,
    EventSink,
    LLMInput,
    TokenStream,
    parse_output,
    render_prompt,
    schema_prompt,
    whole_turns,
)
from actors.llm_providers import (
    KeyMissing,
    Message,
    Provider,
    ToolSpec,
    make_provider,
    resolve_api_key,
)
from actors.llm_tools import Delegate, SchemaLookup, ToolBox
from actors.models import AgentSpec, LLMConfig, Task
from actors.skills import Implementation, Skill, _problems
from cluster.allowlist import CodePolicy, policy_for
from cluster.errors import InputInvalid, OutputInvalid, SpecInvalid
from cluster.tracing import llm_span, llm_usage, tool_span

if TYPE_CHECKING:
    from cluster.settings import Settings

#: How much of a failing reply an OutputInvalid error quotes.
_QUOTE_CHARS = 2_000


class Effects(Protocol):
    """The durable side of one task (actors.llm_effects.LLMEffects)."""

    async def model_call(
        self, turn: int, call: Callable[[], Awaitable[dict[str, Any]]], estimated_tokens: int
    ) -> dict[str, Any]: ...

    async def tool_call(
        self,
        call_id: str,
        name: str,
        args: dict[str, Any],
        run: Callable[[], Awaitable[Any]],
        *,
        idempotent: bool = False,
    ) -> Any: ...

    async def memory_load(self, session: str) -> list[dict[str, Any]]: ...

    async def memory_append(self, session: str, messages: list[dict[str, Any]]) -> None: ...

    def usage(self) -> dict[str, Any]: ...


class LLMAgent:
    """One llm agent in one replica: its provider, its tools, and the conversation loop."""

    def __init__(
        self,
        spec: AgentSpec,
        provider: Provider,
        tools: ToolBox,
        effects_for: Callable[[Task], Effects],
        events: EventSink | None = None,
    ) -> None:
        assert spec.llm is not None
        self.spec = spec
        self.cfg: LLMConfig = spec.llm
        self.provider = provider
        self.tools = tools
        self.effects_for = effects_for
        self.events = events

    async def run(self, task: Task) -> dict[str, Any]:
        """Answer one task: `{"output", "text", "usage", "turns"}`.

        Raises:
            OutputInvalid: no valid structured reply within `output_attempts`, or tool calls
                past `max_steps`; ProviderError; and what LLMEffects raises (BudgetExceeded,
                ToolMayHaveRun, RateLimited).
        """
        effects = self.effects_for(task)
        session = task.input.get("session")
        history = await effects.memory_load(session) if session and self.cfg.memory else []
        convo = Conversation(
            whole_turns(history), [{"role": "user", "content": render_prompt(task.input)}]
        )
        stream = TokenStream(self.events, task) if self.cfg.stream and self.events else None
        try:
            text, value = await self._converse(task, effects, convo, stream)
        finally:
            if stream is not None:
                await stream.flush(done=True)
        if session and self.cfg.memory:
            await effects.memory_append(session, convo.new)
        return {"output": value, "text": text, "usage": effects.usage(), "turns": convo.turns}

    async def _converse(
        self, task: Task, effects: Effects, convo: Conversation, stream: TokenStream | None
    ) -> tuple[str, Any]:
        tools = await self.tools.specs()
        tool_turns = attempts = 0
        while True:
            offered = tools if tool_turns < self.cfg.max_steps else []
            reply = await self._model(effects, convo, offered, stream)
            text = reply.get("text") or ""
            if reply.get("tool_calls"):
                if not offered:
                    limit = f"still calling tools after max_steps={self.cfg.max_steps} turns"
                    raise OutputInvalid(self._quote(limit, text))
                tool_turns += 1
                await self._run_tools(task, effects, convo, reply)
                continue
            schema = self.cfg.output_schema
            value, error = parse_output(text, schema) if schema is not None else (text, None)
            if error is None:
                convo.new.append({"role": "assistant", "content": text})
                return text, value
            attempts += 1
            if attempts >= self.cfg.output_attempts:
                failed = f"no reply satisfied the output schema in {attempts} attempts: {error}"
                raise OutputInvalid(self._quote(failed, text))
            assert schema is not None
            again = f"That reply is invalid: {error}. {schema_prompt(schema)}"
            convo.side += [
                {"role": "assistant", "content": text},
                {"role": "user", "content": again},
            ]

    def _quote(self, what: str, text: str) -> str:
        return f"agent {self.spec.agent_id!r}: {what}; last reply: {text[:_QUOTE_CHARS]!r}"

    async def _model(
        self,
        effects: Effects,
        convo: Conversation,
        tools: list[ToolSpec],
        stream: TokenStream | None,
    ) -> dict[str, Any]:
        system = self.cfg.system_prompt
        if self.cfg.output_schema is not None:
            system = f"{system}\n\n{schema_prompt(self.cfg.output_schema)}".strip()
        messages, turn = convo.messages, convo.turns
        if stream is not None:
            stream.turn = turn

        async def call() -> dict[str, Any]:
            with llm_span(self.cfg.provider, self.cfg.model) as span:  # GenAI conventions
                reply = await self.provider.complete(system, messages, tools, stream)
                usage = reply.get("usage") or {}
                llm_usage(span, input_tokens=usage.get("input_tokens"),
                          output_tokens=usage.get("output_tokens"),
                          response_model=reply.get("model"),
                          finish_reasons=[str(reply.get("stop_reason") or "stop")])  # fmt: skip
                return reply

        convo.turns += 1
        return await effects.model_call(turn, call, convo.estimate_tokens(self.cfg.max_tokens))

    async def _run_tools(
        self, task: Task, effects: Effects, convo: Conversation, reply: dict[str, Any]
    ) -> None:
        calls = reply["tool_calls"]
        asked = [{"id": c["id"], "name": c["name"], "arguments": c["arguments"]} for c in calls]
        convo.new.append(
            {"role": "assistant", "content": reply.get("text") or "", "tool_calls": asked}
        )
        results = await asyncio.gather(*(self._tool(task, effects, c) for c in calls))
        convo.new.extend(results)

    async def _tool(self, task: Task, effects: Effects, call: dict[str, Any]) -> Message:
        name = call["name"]
        tool = self.tools.get(name)
        if call.get("error") or tool is None:
            problem = (
                call.get("error")
                or f"there is no tool {name!r}; tools: {', '.join(self.tools.names)}"
            )
            outcome = {"content": f"error: {problem}", "is_error": True}
        else:

            async def run() -> dict[str, Any]:
                with tool_span(name):
                    return await self.tools.run(tool, call["arguments"], task)

            outcome = await effects.tool_call(
                call["id"], name, call["arguments"], run, idempotent=tool.idempotent
            )
        return {"role": "tool", "tool_call_id": call["id"], "name": name,
                "content": outcome["content"], "is_error": bool(outcome["is_error"])}  # fmt: skip


@dataclass(frozen=True)
class LLMSkill(Skill):
    """A capability of an llm agent: every capability talks to the same agent."""

    agent: LLMAgent | None = None

    async def run(self, task: Task) -> Any:
        """Raises: InputInvalid: the input has no string `prompt`."""
        try:
            self.input_model.model_validate(task.input)
        except ValidationError as exc:
            raise InputInvalid(f"input of {self.capability!r}", _problems(exc)) from None
        assert self.agent is not None
        return await self.agent.run(task)


class LocalEffects:
    """Effects without a store (a runtime built outside a pool): calls made, usage counted,
    memory per process; nothing journalled or cached."""

    def __init__(self) -> None:
        self._usage = {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        self._memory: dict[str, list[dict[str, Any]]] = {}

    async def model_call(
        self, turn: int, call: Callable[[], Awaitable[dict[str, Any]]], estimated_tokens: int
    ) -> dict[str, Any]:
        reply = await call()
        for key in ("input_tokens", "output_tokens"):
            self._usage[key] += int(reply["usage"][key])
        return reply

    async def tool_call(
        self, call_id: str, name: str, args: dict[str, Any], run: Callable[[], Awaitable[Any]],
        *, idempotent: bool = False,
    ) -> Any:  # fmt: skip
        return await run()

    async def memory_load(self, session: str) -> list[dict[str, Any]]:
        return list(self._memory.get(session, []))

    async def memory_append(self, session: str, messages: list[dict[str, Any]]) -> None:
        self._memory.setdefault(session, []).extend(messages)

    def usage(self) -> dict[str, Any]:
        return dict(self._usage)


def build_llm_agent(
    spec: AgentSpec,
    effects_for: Callable[[Task], Effects],
    events: EventSink | None = None,
    delegate: Delegate | None = None,
    schema_of: SchemaLookup | None = None,
    policy: CodePolicy | None = None,
) -> LLMAgent:
    """Check the spec where the agent runs (key reference, tools; against `policy`, by
    default this process's settings) and build the agent.

    Raises:
        SpecInvalid: naming each field at fault (`llm.api_key_env`, `llm.tools[i]`).
    """
    assert spec.llm is not None
    policy = policy or policy_for(None)
    problems: list[str] = []
    key = ""
    try:
        key = resolve_api_key(spec.llm, policy)
    except KeyMissing as exc:
        problems.append(f"{exc.field}: {exc.problem}")
    try:
        tools = ToolBox(spec.llm.tools, delegate, schema_of, policy)
    except SpecInvalid as exc:
        problems += exc.problems
    if problems:
        raise SpecInvalid(f"agent {spec.agent_id!r}", problems)
    return LLMAgent(spec, make_provider(spec.llm, key), tools, effects_for, events)


def llm_implementation(agent: LLMAgent) -> Implementation:
    """The agent's capabilities as skills, for the replica's runtime."""
    spec = agent.spec
    skills = {
        cap: LLMSkill(cap, "llm", agent.run, LLMInput, None, spec.description, agent=agent)
        for cap in spec.capabilities
    }
    return Implementation(dict(skills), instance=agent)


def load_llm_agent(
    spec: AgentSpec, settings: Settings | None = None, policy: CodePolicy | None = None
) -> Implementation:
    """The replica's implementation of an llm agent: with settings (a pool replica) its
    effects are durable, its tokens go on the event bus and it may delegate to agents.

    Raises:
        SpecInvalid: see `build_llm_agent`.
    """
    policy = policy or policy_for(settings)
    if settings is None:
        return llm_implementation(build_llm_agent(spec, lambda task: LocalEffects(), policy=policy))
    from actors.events import EventBus
    from actors.llm_effects import LLMEffects
    from actors.llm_tools import ray_delegation
    from cluster.store import connect_store

    store = connect_store(settings)
    quotas = settings.quotas.for_tenant(store.tenant)  # llm_usd_per_day
    delegation: tuple[Delegate | None, SchemaLookup | None] = (None, None)
    if spec.llm is not None and any(t.agent for t in spec.llm.tools):
        delegation = ray_delegation(settings)
    delegate, schema_of = delegation
    agent = build_llm_agent(
        spec,
        lambda task: LLMEffects.for_task(store, spec, task, quotas=quotas),
        EventBus(store),
        delegate,
        schema_of,
        policy,
    )
    return llm_implementation(agent)
