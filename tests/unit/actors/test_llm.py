"""The llm agent's conversation loop against a local server speaking each provider's wire
protocol, with the real durable effects on the session's Valkey: parallel tool calls, tool
errors shown to the model, the step bound, structured output asked again, memory per
session, streamed tokens, and specs refused with the field named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from actors.llm import LLMAgent, build_llm_agent, llm_implementation
from actors.llm_conversation import render_prompt
from actors.llm_effects import LLMEffects
from actors.messages import DomainEvent
from actors.models import AgentSpec, LLMConfig, Task
from cluster.errors import InputInvalid, OutputInvalid, SpecInvalid, StoreUnavailable
from cluster.store import Store
from tests.fixtures.fake_llm import FakeLLM

KEY_ENV = "DAFNCK_TEST_LLM_KEY"
ROOT = str(Path(__file__).resolve().parents[3])


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def divide(a: float, b: float) -> float:
    """Divide a by b."""
    return a / b


def untyped(a, b):  # type: ignore[no-untyped-def]  # no hints: no schema
    return a


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-unit-test-key-000000")


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def make_spec(llm: FakeLLM, provider: str = "openai", **fields: Any) -> AgentSpec:
    url = llm.openai_url if provider == "openai" else llm.anthropic_url
    return AgentSpec.model_validate({
        "name": "helper", "kind": "llm", "capabilities": ["text.answer"],
        "llm": {"provider": provider, "model": "m-1", "base_url": url, "api_key_env": KEY_ENV,
                "max_retries": 0, **fields},
    })  # fmt: skip


class Events:
    def __init__(self) -> None:
        self.published: list[DomainEvent] = []

    async def publish(self, event: DomainEvent) -> str:
        self.published.append(event)
        return str(len(self.published))


def agent(store: Store, spec: AgentSpec, events: Events | None = None) -> LLMAgent:
    return build_llm_agent(spec, lambda task: LLMEffects.for_task(store, spec, task), events)


def task(prompt: str = "hi", **extra: Any) -> Task:
    return Task(capability="text.answer", input={"prompt": prompt, **extra})


def tool_messages(request: dict[str, Any], provider: str) -> list[tuple[str, str, bool]]:
    """(call id, content, is_error) of the tool results a request sent."""
    body = request["body"]
    if provider == "openai":
        return [(m["tool_call_id"], m["content"], m["content"].startswith("error:"))
                for m in body["messages"] if m["role"] == "tool"]  # fmt: skip
    return [(b["tool_use_id"], b["content"], b["is_error"])
            for m in body["messages"] if isinstance(m["content"], list)
            for b in m["content"] if b["type"] == "tool_result"]  # fmt: skip


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_parallel_tool_calls_run_and_their_results_and_errors_reach_the_model(
    llm: FakeLLM, store: Store, provider: str
) -> None:
    llm.reply(tool_calls=[("c1", "add", {"a": 2, "b": 3}), ("c2", "divide", {"a": 1, "b": 0}),
                          ("c3", "nope", {})])  # fmt: skip
    llm.reply("5, and 1/0 has no answer")
    spec = make_spec(
        llm, provider, tools=[{"skill": f"{__name__}:add"}, {"skill": f"{__name__}:divide"}]
    )
    out = await agent(store, spec).run(task("2+3 and 1/0?"))
    assert out["output"] == "5, and 1/0 has no answer"
    assert out["turns"] == 2
    assert out["usage"]["input_tokens"] == 20 and out["usage"]["output_tokens"] == 10
    results = tool_messages(llm.requests[1], provider)
    assert results[0] == ("c1", "5", False)
    assert results[1][0] == "c2" and "ZeroDivisionError" in results[1][1] and results[1][2]
    assert results[2][0] == "c3" and "no tool 'nope'" in results[2][1] and results[2][2]


async def test_after_max_steps_the_model_is_asked_without_tools(llm: FakeLLM, store: Store) -> None:
    for i in range(2):
        llm.reply(tool_calls=[(f"c{i}", "add", {"a": i, "b": 1})])
    llm.reply("done")
    spec = make_spec(llm, tools=[{"skill": f"{__name__}:add"}], max_steps=2)
    out = await agent(store, spec).run(task())
    assert out["output"] == "done"
    assert ["tools" in r["body"] for r in llm.requests] == [True, True, False]


async def test_a_model_that_keeps_calling_tools_fails_the_task(llm: FakeLLM, store: Store) -> None:
    for i in range(2):
        llm.reply(tool_calls=[(f"c{i}", "add", {"a": i, "b": 1})])
    spec = make_spec(llm, tools=[{"skill": f"{__name__}:add"}], max_steps=1)
    with pytest.raises(OutputInvalid, match="max_steps=1"):
        await agent(store, spec).run(task())


SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


async def test_structured_output_is_asked_again_until_it_validates(
    llm: FakeLLM, store: Store
) -> None:
    llm.reply("it is five").reply('{"answer": "five"}').reply('```json\n{"answer": 5}\n```')
    out = await agent(store, make_spec(llm, output_schema=SCHEMA)).run(task("2+3?"))
    assert out["output"] == {"answer": 5}
    assert len(llm.requests) == 3
    system = llm.requests[0]["body"]["messages"][0]["content"]
    assert '"required": ["answer"]' in system
    last = llm.requests[2]["body"]["messages"]
    assert (
        last[-1]["role"] == "user"
        and "answer: 'five' is not of type 'integer'" in last[-1]["content"]
    )


async def test_invalid_structured_output_fails_with_the_last_reply_and_the_error(
    llm: FakeLLM, store: Store
) -> None:
    llm.reply("no").reply('{"answer": null}')
    with pytest.raises(OutputInvalid) as caught:
        await agent(store, make_spec(llm, output_schema=SCHEMA, output_attempts=2)).run(task())
    message = str(caught.value)
    assert "in 2 attempts" in message and "None is not of type 'integer'" in message
    assert "'{\"answer\": null}'" in message
    assert caught.value.retryable is False
    assert len(llm.requests) == 2


async def test_memory_carries_a_session_across_tasks(llm: FakeLLM, store: Store) -> None:
    llm.reply(tool_calls=[("c1", "add", {"a": 2, "b": 2})]).reply("4").reply("you asked 2+2")
    spec = make_spec(llm, tools=[{"skill": f"{__name__}:add"}], memory={"max_messages": 20})
    helper = agent(store, spec)
    await helper.run(task("2+2?", session="s1"))
    await helper.run(task("what did I ask?", session="s1"))
    sent = [m["role"] for m in llm.requests[2]["body"]["messages"]]
    assert sent == ["user", "assistant", "tool", "assistant", "user"]
    llm.reply("new here")
    await helper.run(task("hello", session="s2"))
    assert [m["role"] for m in llm.requests[3]["body"]["messages"]] == ["user"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_streamed_tokens_go_out_as_task_token_events(
    llm: FakeLLM, store: Store, provider: str
) -> None:
    text = "a streamed answer that is long enough to need more than one event " * 3
    llm.reply(text)
    events = Events()
    one = task()
    out = await agent(store, make_spec(llm, provider, stream=True), events).run(one)
    assert out["text"] == text
    assert {e.type for e in events.published} == {"task.token"}
    assert {e.subject for e in events.published} == {one.id}
    assert "".join(e.data["text"] for e in events.published) == text
    assert len(events.published) > 2
    assert [e.data["done"] for e in events.published][-2:] == [False, True]
    assert [e.data["seq"] for e in events.published] == list(range(len(events.published)))


async def test_a_failing_event_bus_stops_the_stream_not_the_task(
    llm: FakeLLM, store: Store
) -> None:
    class Broken(Events):
        async def publish(self, event: DomainEvent) -> str:
            await super().publish(event)
            raise StoreUnavailable("Redis at redis://x is unreachable")

    llm.reply("a reply long enough to be sent in more than one piece of streamed text " * 2)
    events = Broken()
    out = await agent(store, make_spec(llm, stream=True), events).run(task())
    assert out["text"].startswith("a reply long enough")
    assert len(events.published) == 1  # tried once, then left alone


async def test_a_prompt_without_a_string_is_refused_naming_the_field(
    llm: FakeLLM, store: Store
) -> None:
    skills = llm_implementation(agent(store, make_spec(llm))).skills
    with pytest.raises(InputInvalid, match="prompt"):
        await skills["text.answer"].run(Task(capability="text.answer", input={"question": "hi"}))
    assert llm.requests == []


async def test_memory_cut_inside_a_turn_starts_at_its_next_user_message(
    llm: FakeLLM, store: Store
) -> None:
    # A task with a tool call adds 4 messages; keeping 6 cuts the first task's turn in two.
    llm.reply(tool_calls=[("c1", "add", {"a": 1, "b": 1})]).reply("2")
    llm.reply(tool_calls=[("c2", "add", {"a": 2, "b": 2})]).reply("4").reply("ok")
    spec = make_spec(llm, tools=[{"skill": f"{__name__}:add"}], memory={"max_messages": 6})
    helper = agent(store, spec)
    for prompt in ("1+1?", "2+2?", "thanks"):
        await helper.run(task(prompt, session="s"))
    sent = llm.requests[4]["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    assert sent[0]["content"] == "2+2?"


class Reply(BaseModel):
    answer: int


def test_an_output_schema_may_be_a_pydantic_model_but_is_never_imported_by_name() -> None:
    direct = LLMConfig(provider="openai", model="m", output_schema=Reply)  # type: ignore[arg-type]
    assert direct.output_schema == Reply.model_json_schema()
    with pytest.raises(ValidationError, match="output_schema"):  # specs also come over HTTP
        LLMConfig(provider="openai", model="m", output_schema=f"{__name__}:Reply")  # type: ignore[arg-type]


async def test_a_real_mcp_server_over_stdio_serves_the_agent(llm: FakeLLM, store: Store) -> None:
    server = {
        "command": ["python", "-m", "tests.fixtures.mcp_server"],
        "cwd": ROOT,
        "include": ["add"],
    }
    llm.reply(tool_calls=[("c1", "add", {"a": 20, "b": 22})]).reply("42")
    helper = agent(store, make_spec(llm, "anthropic", tools=[{"mcp": server}]))
    try:
        assert (await helper.run(task("20+22?")))["output"] == "42"
    finally:
        await helper.tools.close()
    assert [t["name"] for t in llm.requests[0]["body"]["tools"]] == ["add"]
    assert tool_messages(llm.requests[1], "anthropic") == [("c1", "42", False)]


def test_variables_fill_the_prompt_and_the_rest_is_appended() -> None:
    assert render_prompt({"prompt": "review $path", "path": "a.py"}) == "review a.py"
    text = render_prompt({"prompt": "sum ${name}", "name": "x", "values": [1, 2], "session": "s"})
    assert text.startswith("sum x\n\nInput:") and '"values"' in text and '"session"' not in text


@pytest.mark.parametrize(
    ("llm_fields", "field"),
    [
        ({"provider": "mistral"}, "llm.provider"),
        ({"api_key_env": "DAFNCK_TEST_UNSET_KEY"}, "llm.api_key_env"),
        ({"api_key_env": None, "api_key_file": "/nonexistent/key"}, "llm.api_key_file"),
        (
            {"tools": [{"skill": f"{__name__}:add"}, {"skill": f"{__name__}:untyped"}]},
            "llm.tools[1]",
        ),
        ({"tools": [{"skill": "no.such.module:fn"}]}, "llm.tools[0].skill"),  # not allowed
        ({"output_schema": {"type": "no-such-type"}}, "llm.output_schema"),
        ({"api_key_env": "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"}, "llm.api_key_env"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(
    llm: FakeLLM, llm_fields: dict[str, Any], field: str
) -> None:
    try:
        spec = make_spec(llm, **llm_fields)
        build_llm_agent(spec, lambda task: None)  # type: ignore[arg-type, return-value]
    except ValidationError as exc:
        assert field in {".".join(map(str, e["loc"])) for e in exc.errors()}
    except SpecInvalid as exc:
        assert any(p.startswith(f"{field}:") for p in exc.problems), exc.problems
    else:
        pytest.fail(f"{llm_fields} was accepted")


def test_a_key_written_where_its_variable_is_named_is_refused_without_quoting_it() -> None:
    key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    with pytest.raises(ValidationError) as caught:
        LLMConfig(provider="openai", model="m", api_key_env=key)
    (error,) = caught.value.errors()
    assert "never the key itself" in error["msg"] and key not in error["msg"]


def test_an_llm_spec_needs_its_llm_section_and_a_python_spec_refuses_one() -> None:
    with pytest.raises(ValidationError, match="llm: required for kind 'llm'"):
        AgentSpec(name="a", kind="llm", capabilities=["x.y"])
    with pytest.raises(ValidationError, match="llm: only for kind 'llm'"):
        AgentSpec.model_validate({"name": "a", "capabilities": ["x.y"], "entrypoint": "m:f",
                                  "llm": {"provider": "openai", "model": "m"}})  # fmt: skip
