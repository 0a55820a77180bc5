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
import json
import logging
import re
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from actors.llm_providers import (
    KeyMissing,
    Message,
    Provider,
    ToolSpec,
    make_provider,
    resolve_api_key,
)
from actors.llm_tools import Delegate, SchemaLookup, ToolBox
from actors.messages import DomainEvent
from actors.models import AgentSpec, LLMConfig, Task
from actors.skills import Implementation, Skill, _problems
from cluster.errors import InputInvalid, OutputInvalid, SpecInvalid

if TYPE_CHECKING:
    from cluster.settings import Settings

log = logging.getLogger(__name__)

#: A streamed piece of text goes out once this many characters or seconds have gathered.
_FLUSH_CHARS = 64
_FLUSH_S = 0.1
#: How much of a failing reply an OutputInvalid error quotes.
_QUOTE_CHARS = 2_000


class LLMInput(BaseModel):
    """What a task gives an llm agent: the prompt, an optional session, any variables."""

    model_config = ConfigDict(extra="allow")

    prompt: str
    #: Conversation memory is kept per session (with the spec's `llm.memory`).
    session: str | None = None


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


class EventSink(Protocol):
    async def publish(self, event: DomainEvent) -> str: ...


def render_prompt(data: dict[str, Any]) -> str:
    """The prompt with `$name` replaced by the task's variables; unnamed ones appended."""
    prompt = str(data["prompt"])
    variables = {k: v for k, v in data.items() if k not in ("prompt", "session")}
    if not variables:
        return prompt
    named = {m.group(2) or m.group(3) for m in string.Template.pattern.finditer(prompt)}
    values = {
        k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in variables.items()
    }
    rendered = string.Template(prompt).safe_substitute(values)
    rest = {k: v for k, v in variables.items() if k not in named}
    return f"{rendered}\n\nInput:\n{json.dumps(rest, indent=1, default=str)}" if rest else rendered


def parse_output(text: str, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """The reply as JSON satisfying `schema`, or what is wrong with it."""
    import jsonschema

    body = text.strip()
    fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", body, re.DOTALL)
    try:
        value = json.loads(fenced.group(1) if fenced else body)
    except json.JSONDecodeError as exc:
        return None, f"the reply is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "the reply"
        return None, f"{where}: {error.message}"
    return value, None


def whole_turns(history: list[Message]) -> list[Message]:
    """Memory from its first user message on: bounding it may have cut a turn in two, and
    providers refuse tool results whose call is gone."""
    for i, message in enumerate(history):
        if message.get("role") == "user":
            return list(history[i:])
    return []


def _schema_prompt(schema: dict[str, Any]) -> str:
    return (
        "Reply with only a JSON value (no prose, no code fences) that satisfies this JSON "
        f"schema:\n{json.dumps(schema)}"
    )


@dataclass
class Conversation:
    """The messages of one task: the session's memory, then this task's turns."""

    history: list[Message]
    new: list[Message] = field(default_factory=list)
    #: Re-asks for valid output: sent to the model, not kept in memory.
    side: list[Message] = field(default_factory=list)
    turns: int = 0

    @property
    def messages(self) -> list[Message]:
        return [*self.history, *self.new, *self.side]

    def estimate_tokens(self, max_tokens: int) -> int:
        return len(json.dumps(self.messages, default=str)) // 4 + max_tokens


class TokenStream:
    """Streamed text as `task.token` events, gathered into a few events a second."""

    def __init__(self, events: EventSink, task: Task) -> None:
        self.events = events
        self.task = task
        self.turn = 0
        self.seq = 0
        self._buffer: list[str] = []
        self._last = time.monotonic()
        #: The event bus failed once: the rest of the task is not streamed.
        self.broken = False

    async def __call__(self, text: str) -> None:
        self._buffer.append(text)
        if sum(map(len, self._buffer)) >= _FLUSH_CHARS or time.monotonic() - self._last >= _FLUSH_S:
            await self.flush()

    async def flush(self, done: bool = False) -> None:
        if not self._buffer and not done:
            return
        text, self._buffer, self._last = "".join(self._buffer), [], time.monotonic()
        ctx = self.task.context
        data = {"task": self.task.id, "execution": ctx.execution_id, "step": ctx.step_id,
                "turn": self.turn, "seq": self.seq, "text": text, "done": done}  # fmt: skip
        self.seq += 1
        if self.broken:
            return
        try:
            await self.events.publish(
                DomainEvent(type="task.token", subject=self.task.id, data=data)
            )
        except Exception as exc:  # streaming is for watchers: it never fails the task
            self.broken = True
            log.warning("task %s: token events stopped: %s", self.task.id, exc)


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
            again = f"That reply is invalid: {error}. {_schema_prompt(schema)}"
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
            system = f"{system}\n\n{_schema_prompt(self.cfg.output_schema)}".strip()
        messages, turn = convo.messages, convo.turns
        if stream is not None:
            stream.turn = turn

        async def call() -> dict[str, Any]:
            return await self.provider.complete(system, messages, tools, stream)

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
) -> LLMAgent:
    """Check the spec where the agent runs (key reference, tools) and build the agent.

    Raises:
        SpecInvalid: naming each field at fault (`llm.api_key_env`, `llm.tools[i]`).
    """
    assert spec.llm is not None
    problems: list[str] = []
    key = ""
    try:
        key = resolve_api_key(spec.llm)
    except KeyMissing as exc:
        problems.append(f"{exc.field}: {exc.problem}")
    try:
        tools = ToolBox(spec.llm.tools, delegate, schema_of)
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


def load_llm_agent(spec: AgentSpec, settings: Settings | None = None) -> Implementation:
    """The replica's implementation of an llm agent: with settings (a pool replica) its
    effects are durable, its tokens go on the event bus and it may delegate to agents.

    Raises:
        SpecInvalid: see `build_llm_agent`.
    """
    if settings is None:
        return llm_implementation(build_llm_agent(spec, lambda task: LocalEffects()))
    from actors.events import EventBus
    from actors.llm_effects import LLMEffects
    from actors.llm_tools import ray_delegation
    from cluster.store import connect_store

    store = connect_store(settings)
    delegation: tuple[Delegate | None, SchemaLookup | None] = (None, None)
    if spec.llm is not None and any(t.agent for t in spec.llm.tools):
        delegation = ray_delegation(settings)
    delegate, schema_of = delegation
    agent = build_llm_agent(
        spec,
        lambda task: LLMEffects.for_task(store, spec, task),
        EventBus(store),
        delegate,
        schema_of,
    )
    return llm_implementation(agent)
