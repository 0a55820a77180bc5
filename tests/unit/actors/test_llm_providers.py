"""The OpenAI and Anthropic adapters over the official SDKs, against a local server speaking
each provider's wire protocol: replies, tool calls, streaming, and provider errors retried
by the SDK alone (counted in HTTP requests), keys by reference and never in an error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.llm_providers import (
    KeyMissing,
    ToolSpec,
    make_provider,
    resolve_api_key,
    to_anthropic,
    to_openai,
)
from actors.models import LLMConfig
from cluster.errors import ProviderError
from tests.fixtures.fake_llm import FakeLLM

KEY = "sk-test-canary-0123456789"
ADD = ToolSpec("add", "Add two integers.", {"type": "object", "properties": {
    "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]})  # fmt: skip
PROVIDERS = ["openai", "anthropic"]


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def config(llm: FakeLLM, provider: str, **fields: Any) -> LLMConfig:
    url = llm.openai_url if provider == "openai" else llm.anthropic_url
    return LLMConfig.model_validate(
        {"provider": provider, "model": "m-1", "base_url": url, "max_retries": 1, **fields}
    )


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
async def test_a_reply_with_tool_calls_is_parsed_in_the_neutral_shape(
    llm: FakeLLM, provider: str, stream: bool
) -> None:
    llm.reply("let me add", tool_calls=[("c1", "add", {"a": 1, "b": 2}), ("c2", "add", {"a": 3, "b": 4})],
              tokens=(31, 7))  # fmt: skip
    tokens: list[str] = []

    async def sink(text: str) -> None:
        tokens.append(text)

    reply = await make_provider(config(llm, provider), KEY).complete(
        "be brief", [{"role": "user", "content": "1+2, 3+4?"}], [ADD], sink if stream else None
    )
    assert reply["text"] == "let me add"
    assert [(c["id"], c["name"], c["arguments"]) for c in reply["tool_calls"]] == [
        ("c1", "add", {"a": 1, "b": 2}), ("c2", "add", {"a": 3, "b": 4})]  # fmt: skip
    assert reply["usage"] == {"input_tokens": 31, "output_tokens": 7}
    assert reply["model"] == "m-1"
    assert ("".join(tokens), len(tokens) > 1) == (("let me add", True) if stream else ("", False))
    sent = llm.requests[0]
    assert sent["headers"].get("Authorization", sent["headers"].get("X-Api-Key", "")).endswith(KEY)
    body = sent["body"]
    if provider == "openai":
        assert body["messages"][0] == {"role": "system", "content": "be brief"}
        assert body["max_tokens"] == 1024  # an OpenAI-compatible base_url: the classic name
        assert body["tools"][0]["function"]["name"] == "add"
    else:
        assert body["system"] == "be brief"
        assert body["tools"][0]["input_schema"] == ADD.parameters


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_429_with_retry_after_is_retried_once_by_the_sdk(
    llm: FakeLLM, provider: str
) -> None:
    llm.error(429, "slow down", headers={"Retry-After": "0.05"}).reply("ok")
    reply = await make_provider(config(llm, provider), KEY).complete(
        "", [{"role": "user", "content": "hi"}], [], None
    )
    assert reply["text"] == "ok"
    assert len(llm.requests) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_500_that_persists_fails_after_the_sdk_retries_as_a_non_retryable_error(
    llm: FakeLLM, provider: str
) -> None:
    for _ in range(3):
        llm.error(500, f"upstream broke; key was {KEY}", headers={"Retry-After": "0.01"})
    with pytest.raises(ProviderError) as caught:
        await make_provider(config(llm, provider, max_retries=2), KEY).complete(
            "", [{"role": "user", "content": "hi"}], [], None
        )
    assert len(llm.requests) == 3  # one try and max_retries=2 retries, no more
    assert caught.value.retryable is False
    assert (
        "HTTP 500" in str(caught.value)
        and KEY not in str(caught.value)
        and "***" in str(caught.value)
    )


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_timeout_is_retried_by_the_sdk_then_reported(llm: FakeLLM, provider: str) -> None:
    llm.slow(0.6).slow(0.6)
    with pytest.raises(ProviderError, match="Timeout"):
        await make_provider(config(llm, provider, timeout_s=0.2, max_retries=1), KEY).complete(
            "", [{"role": "user", "content": "hi"}], [], None
        )
    assert len(llm.requests) == 2


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_malformed_body_fails_once_without_a_retry(llm: FakeLLM, provider: str) -> None:
    llm.malformed().reply("never reached")
    with pytest.raises(ProviderError):
        await make_provider(config(llm, provider), KEY).complete(
            "", [{"role": "user", "content": "hi"}], [], None
        )
    assert len(llm.requests) == 1


def test_the_key_comes_from_the_named_variable_or_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DAFNCK_TEST_MY_KEY", KEY)  # the suite's secret prefix (tests/conftest.py)
    cfg = LLMConfig(provider="openai", model="m", api_key_env="DAFNCK_TEST_MY_KEY")
    assert resolve_api_key(cfg) == KEY
    (tmp_path / "key").write_text(KEY + "\n")
    assert (
        resolve_api_key(
            LLMConfig(provider="anthropic", model="m", api_key_file=str(tmp_path / "key"))
        )
        == KEY
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"provider": "openai", "api_key_env": "NOPE_UNSET"}, "llm.api_key_env"),
        ({"provider": "anthropic"}, "llm.api_key_env"),  # ANTHROPIC_API_KEY unset
        ({"provider": "openai", "api_key_file": "/nonexistent/key"}, "llm.api_key_file"),
    ],
)
def test_a_missing_key_reference_names_the_field(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], field: str
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with pytest.raises(KeyMissing) as caught:
        resolve_api_key(LLMConfig.model_validate({"model": "m", **fields}))
    assert caught.value.field == field


def test_a_keyless_openai_compatible_endpoint_needs_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = LLMConfig(provider="openai", model="llama3", base_url="http://127.0.0.1:11434/v1")
    assert resolve_api_key(cfg) == "not-needed"


HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "sum"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "name": "add", "arguments": {"a": 1, "b": 2}},
        {"id": "c2", "name": "add", "arguments": {"a": 3, "b": 4}}]},
    {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "3", "is_error": False},
    {"role": "tool", "tool_call_id": "c2", "name": "add", "content": "boom", "is_error": True},
    {"role": "assistant", "content": "3 and an error"},
]  # fmt: skip


def test_tool_results_of_one_turn_are_one_anthropic_user_turn() -> None:
    turns = to_anthropic(HISTORY)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert [b["type"] for b in turns[1]["content"]] == ["tool_use", "tool_use"]
    assert [(b["tool_use_id"], b["is_error"]) for b in turns[2]["content"]] == [
        ("c1", False),
        ("c2", True),
    ]


def test_openai_messages_carry_tool_calls_and_results() -> None:
    out = to_openai("sys", HISTORY)
    assert out[0] == {"role": "system", "content": "sys"}
    assert out[2]["tool_calls"][1]["function"] == {"name": "add", "arguments": '{"a": 3, "b": 4}'}
    assert out[3] == {"role": "tool", "tool_call_id": "c1", "content": "3"}
