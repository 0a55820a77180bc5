"""LLM providers over the official SDKs: `openai` (OpenAI and every OpenAI-compatible
endpoint by `base_url`) and `anthropic`, behind one provider-neutral shape.

Messages are plain dicts, the same ones conversation memory keeps:
`{"role": "user", "content": str}`, `{"role": "assistant", "content": str, "tool_calls":
[{"id", "name", "arguments"}]}` and `{"role": "tool", "tool_call_id", "name", "content",
"is_error"}`. A reply is a JSON-able dict: `{"model", "text", "tool_calls", "stop_reason",
"usage": {"input_tokens", "output_tokens"}}`.

Retries of 429 (honouring Retry-After), 5xx and timeouts are the SDK's (`max_retries` from
the spec); its final error becomes a `ProviderError`, which is not retryable, so the task
retries of the router and the workflow engine never stack on top. The API key is read from
the environment variable or file the spec names, handed to the SDK, and scrubbed from every
error message; it is never logged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from actors.models import LLMConfig
from cluster import netguard
from cluster.allowlist import CodePolicy, SecretRefused, policy_for
from cluster.errors import ProviderError, SpecInvalid
from cluster.outbound import outbound_policy
from cluster.redact import redact, register_secret

log = logging.getLogger(__name__)

Message = dict[str, Any]
#: Receives each piece of streamed text as it arrives.
TokenSink = Callable[[str], Awaitable[None]]

_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_DEFAULT_URL_ENV = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
#: What a keyless OpenAI-compatible endpoint (Ollama, vLLM, LM Studio) is sent as a key.
_NO_KEY = "not-needed"


@dataclass(frozen=True)
class ToolSpec:
    """What the model is told about one tool."""

    name: str
    description: str
    parameters: dict[str, Any]


class Provider(Protocol):
    """One model behind one SDK client."""

    name: str
    model: str

    async def complete(
        self,
        system: str,
        messages: list[Message],
        tools: list[ToolSpec],
        on_token: TokenSink | None,
    ) -> dict[str, Any]:
        """One model turn. Raises: ProviderError after the SDK's own retries."""
        ...


class KeyMissing(ValueError):
    """The spec's key reference does not resolve; `field` names the spec field at fault."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field = field
        self.problem = problem


def base_url(cfg: LLMConfig) -> str | None:
    """The spec's endpoint, else the SDK's usual environment variable (`OPENAI_BASE_URL`)."""
    return cfg.base_url or os.environ.get(_DEFAULT_URL_ENV[cfg.provider]) or None


def resolve_api_key(cfg: LLMConfig, policy: CodePolicy | None = None) -> str:
    """The API key the spec refers to, read in this process (the replica's node), only
    from where `policy` (default: this process's settings) lets a spec read secrets: a file
    inside `secrets_dir`, a variable named `secret_env_prefix*` or in `secret_env_allow`.

    Without a reference the provider's usual variable is read (`OPENAI_API_KEY`,
    `ANTHROPIC_API_KEY`, when allowed); an OpenAI-compatible `base_url` may go without a key.

    Raises:
        KeyMissing: the reference is not allowed, the variable is unset or empty, or the
            file is missing or empty.
    """
    policy = policy or policy_for(None)
    if cfg.api_key_file:
        key = _key_from_file(cfg.api_key_file, policy)
        register_secret(key)
        return key
    env = cfg.api_key_env or _DEFAULT_KEY_ENV[cfg.provider]
    keyless = cfg.api_key_env is None and cfg.provider == "openai" and base_url(cfg)
    try:
        key = policy.read_secret_env(env)
    except SecretRefused as exc:
        if keyless:
            return _NO_KEY
        raise KeyMissing("llm.api_key_env", str(exc)) from None
    if key:
        register_secret(key)
        return key
    if keyless:
        return _NO_KEY
    raise KeyMissing(
        "llm.api_key_env",
        f"environment variable {env!r} is not set where the agent runs (export it before "
        "`dafnck up`, or name a key file with api_key_file)",
    )


def _key_from_file(ref: str, policy: CodePolicy) -> str:
    """Raises: KeyMissing (outside the secrets directory, unreadable or empty)."""
    try:
        key = policy.read_secret_file(ref)
    except SecretRefused as exc:
        raise KeyMissing("llm.api_key_file", str(exc)) from None
    except OSError as exc:
        raise KeyMissing("llm.api_key_file", f"cannot read {ref!r}: {exc.strerror}") from None
    if not key:
        raise KeyMissing("llm.api_key_file", f"{ref!r} is empty")
    return key


def make_provider(
    cfg: LLMConfig, api_key: str, outbound: netguard.OutboundPolicy | None = None
) -> Provider:
    """The provider for the spec's `provider` field, over its official SDK; it connects only
    where `outbound` allows (default: this process's settings' `outbound_allow`).

    Raises: SpecInvalid (`llm.base_url` resolves to an address the platform does not allow).
    """
    outbound = outbound or outbound_policy(None)
    problem = outbound.url_problem(cfg.base_url) if cfg.base_url else None
    if problem:
        raise SpecInvalid(f"llm model {cfg.model!r}", [f"llm.base_url: {problem}"])
    if not cfg.base_url and base_url(cfg):  # the operator's OPENAI_BASE_URL, not a tenant's
        outbound = outbound.trusting(str(base_url(cfg)))
    if cfg.provider == "anthropic":
        return AnthropicProvider(cfg, api_key, outbound)
    return OpenAIProvider(cfg, api_key, outbound)


def _http_client(sdk: Any, outbound: netguard.OutboundPolicy | None) -> Any:
    """The SDK's own default client, over a transport that checks every connection."""
    import httpx2

    policy = outbound or outbound_policy(None)
    return sdk.DefaultAsyncHttpxClient(transport=netguard.guarded_transport(policy, httpx2))


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret and secret != _NO_KEY else text


def _failure(provider: str, cfg: LLMConfig, exc: BaseException, secret: str) -> ProviderError:
    """The SDK's final error as a non-retryable ProviderError, key scrubbed."""
    status = getattr(exc, "status_code", None)
    what = f"HTTP {status}" if status else type(exc).__name__
    detail = redact(_scrub(str(getattr(exc, "message", None) or exc), secret))[:500]
    refused = netguard.refused_in(exc)
    if refused is not None:  # the address, not the model: say which and why
        what, detail = "refused", refused.message
    return ProviderError(
        f"{provider} model {cfg.model!r} failed ({what}, after up to {cfg.max_retries} SDK "
        f"retries): {detail}"
    )


def _arguments(raw: str | dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """A tool call's arguments as a dict, or the reason they are unusable."""
    if isinstance(raw, dict):
        return raw, None
    try:
        value = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        return {}, f"arguments are not valid JSON ({exc.msg}): {raw!r:.200}"
    if not isinstance(value, dict):
        return {}, f"arguments must be a JSON object, got {type(value).__name__}"
    return value, None


def _call(cid: str, name: str, raw: str | dict[str, Any] | None) -> dict[str, Any]:
    args, error = _arguments(raw)
    return {"id": cid, "name": name, "arguments": args, "error": error}


def _estimate(text: str) -> int:
    return max(1, len(text) // 4)


class OpenAIProvider:
    """Chat completions through `openai.AsyncOpenAI` (any OpenAI-compatible `base_url`)."""

    name = "openai"

    def __init__(
        self, cfg: LLMConfig, api_key: str, outbound: netguard.OutboundPolicy | None = None
    ) -> None:
        import openai

        self.cfg = cfg
        self.model = cfg.model
        self._secret = api_key
        self._errors = (openai.OpenAIError, ValueError)
        # OpenAI itself takes (and its newer models need) `max_completion_tokens`; the
        # OpenAI-compatible servers behind a base_url know `max_tokens`.
        self._limit = "max_tokens" if base_url(cfg) else "max_completion_tokens"
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url(cfg),
            timeout=cfg.timeout_s,
            max_retries=cfg.max_retries,
            http_client=_http_client(openai, outbound),
        )

    async def complete(
        self,
        system: str,
        messages: list[Message],
        tools: list[ToolSpec],
        on_token: TokenSink | None,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": to_openai(system, messages),
            self._limit: self.cfg.max_tokens,
        }
        if self.cfg.temperature is not None:
            request["temperature"] = self.cfg.temperature
        if tools:
            request["tools"] = [
                {"type": "function", "function": {"name": t.name, "description": t.description,
                                                  "parameters": t.parameters}}
                for t in tools
            ]  # fmt: skip
        try:
            if on_token is None:
                return _openai_reply(await self._client.chat.completions.create(**request))
            return await self._stream(request, on_token)
        except self._errors as exc:
            raise _failure(self.name, self.cfg, exc, self._secret) from None

    async def _stream(self, request: dict[str, Any], on_token: TokenSink) -> dict[str, Any]:
        stream = await self._client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}
        )
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        usage: Any = None
        model, stop = self.cfg.model, None
        async for chunk in stream:
            model = chunk.model or model
            usage = chunk.usage or usage
            for choice in chunk.choices:
                delta = choice.delta
                stop = choice.finish_reason or stop
                if delta.content:
                    text.append(delta.content)
                    await on_token(delta.content)
                for part in delta.tool_calls or []:
                    slot = calls.setdefault(part.index, {"id": "", "name": "", "args": ""})
                    slot["id"] = part.id or slot["id"]
                    if part.function is not None:
                        slot["name"] += part.function.name or ""
                        slot["args"] += part.function.arguments or ""
        content = "".join(text)
        return {
            "model": model,
            "text": content,
            "tool_calls": [_call(c["id"], c["name"], c["args"]) for _, c in sorted(calls.items())],
            "stop_reason": stop or "stop",
            "usage": _usage(usage, "prompt_tokens", "completion_tokens", request, content),
        }


def _usage(usage: Any, inp: str, out: str, request: dict[str, Any], text: str) -> dict[str, int]:
    """Token counts from the provider, or estimated when an endpoint sends none."""
    if usage is not None:
        return {
            "input_tokens": int(getattr(usage, inp) or 0),
            "output_tokens": int(getattr(usage, out) or 0),
        }
    return {
        "input_tokens": _estimate(json.dumps(request["messages"])),
        "output_tokens": _estimate(text),
    }


def _openai_reply(completion: Any) -> dict[str, Any]:
    if not completion.choices:
        raise ValueError("the reply has no choices")
    choice = completion.choices[0]
    message = choice.message
    calls = [
        _call(c.id, c.function.name, c.function.arguments)
        for c in message.tool_calls or []
        if getattr(c, "function", None) is not None
    ]
    return {
        "model": completion.model,
        "text": message.content or "",
        "tool_calls": calls,
        "stop_reason": choice.finish_reason or "stop",
        "usage": _usage(
            completion.usage,
            "prompt_tokens",
            "completion_tokens",
            {"messages": []},
            message.content or "",
        ),
    }


def to_openai(system: str, messages: list[Message]) -> list[dict[str, Any]]:
    """Provider-neutral messages as chat-completions messages."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": m["tool_call_id"], "content": m["content"]})
        elif m["role"] == "assistant" and m.get("tool_calls"):
            calls = [
                {"id": c["id"], "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                for c in m["tool_calls"]
            ]  # fmt: skip
            out.append(
                {"role": "assistant", "content": m.get("content") or None, "tool_calls": calls}
            )
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


class AnthropicProvider:
    """The messages API through `anthropic.AsyncAnthropic`."""

    name = "anthropic"

    def __init__(
        self, cfg: LLMConfig, api_key: str, outbound: netguard.OutboundPolicy | None = None
    ) -> None:
        import anthropic

        self.cfg = cfg
        self.model = cfg.model
        self._secret = api_key
        self._errors = (anthropic.AnthropicError, ValueError)
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url(cfg),
            timeout=cfg.timeout_s,
            max_retries=cfg.max_retries,
            http_client=_http_client(anthropic, outbound),
        )

    async def complete(
        self,
        system: str,
        messages: list[Message],
        tools: list[ToolSpec],
        on_token: TokenSink | None,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": to_anthropic(messages),
            "max_tokens": self.cfg.max_tokens,
        }
        if system:
            request["system"] = system
        if self.cfg.temperature is not None:
            request["temperature"] = self.cfg.temperature
        if tools:
            request["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in tools
            ]
        try:
            if on_token is None:
                return _anthropic_reply(await self._client.messages.create(**request))
            async with self._client.messages.stream(**request) as stream:
                async for text in stream.text_stream:
                    await on_token(text)
                return _anthropic_reply(await stream.get_final_message())
        except self._errors as exc:
            raise _failure(self.name, self.cfg, exc, self._secret) from None


def _anthropic_reply(message: Any) -> dict[str, Any]:
    text = "".join(b.text for b in message.content if b.type == "text")
    calls = [_call(b.id, b.name, b.input) for b in message.content if b.type == "tool_use"]
    return {
        "model": message.model,
        "text": text,
        "tool_calls": calls,
        "stop_reason": message.stop_reason or "end_turn",
        "usage": {
            "input_tokens": message.usage.input_tokens,
            "output_tokens": message.usage.output_tokens,
        },
    }


def to_anthropic(messages: list[Message]) -> list[dict[str, Any]]:
    """Provider-neutral messages as messages-API turns: tool results of one turn go
    together in one user turn, as `tool_result` blocks."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": m["tool_call_id"],
                "content": m["content"],
                "is_error": bool(m.get("is_error")),
            }
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        elif m["role"] == "assistant":
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": m["content"]}] if m.get("content") else []
            )
            for c in m.get("tool_calls") or []:
                blocks.append(
                    {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["arguments"]}
                )
            out.append(
                {"role": "assistant", "content": blocks or [{"type": "text", "text": "(no reply)"}]}
            )
        else:
            out.append({"role": "user", "content": m.get("content") or ""})
    return out
