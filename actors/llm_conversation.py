"""The conversation of one llm task: its input, its prompt, its messages, the check of a
structured reply, and the stream of its tokens to live consumers.

Messages are provider-neutral dicts (see `actors.llm_providers`). Streamed text goes out as
`task.token` events on the event bus (subject: the task id), gathered into a few events a
second; a failing bus stops the stream, never the task.
"""

from __future__ import annotations

import json
import logging
import re
import string
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from actors.llm_providers import Message
from actors.messages import DomainEvent
from actors.models import Task

log = logging.getLogger(__name__)

#: A streamed piece of text goes out once this many characters or seconds have gathered.
_FLUSH_CHARS = 64
_FLUSH_S = 0.1


class LLMInput(BaseModel):
    """What a task gives an llm agent: the prompt, an optional session, any variables."""

    model_config = ConfigDict(extra="allow")

    prompt: str
    #: Conversation memory is kept per session (with the spec's `llm.memory`).
    session: str | None = None


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


def schema_prompt(schema: dict[str, Any]) -> str:
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
