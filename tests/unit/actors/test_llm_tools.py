"""Tools of llm agents: schemas from type hints and pydantic models, a real MCP server over
stdio and streamable HTTP, and delegation to agents (fan-out at once, its own timeout)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from actors.llm_tools import ToolBox, delegated_task
from actors.models import MCPServer, Task, TaskContext, TaskResult, ToolRef
from cluster.valkey import free_port

ROOT = str(Path(__file__).resolve().parents[3])
STDIO = MCPServer(command=["python", "-m", "tests.fixtures.mcp_server"], cwd=ROOT)
PARENT = Task(capability="text.answer", input={"prompt": "p"},
              context=TaskContext(tenant="t", execution_id="e1", step_id="s1", attempt=2))  # fmt: skip


class Query(BaseModel):
    """A search."""

    text: str
    limit: int = 10


def search(query: Query) -> list[str]:
    """Search the notes."""
    return [query.text] * min(query.limit, 2)


def test_a_pydantic_parameter_gives_the_tool_its_schema() -> None:
    box = ToolBox([ToolRef(skill=f"{__name__}:search", name="find")])
    tool = box.get("find")
    assert tool is not None
    assert tool.spec.description == "Search the notes."
    assert tool.spec.parameters["required"] == ["text"]
    assert tool.spec.parameters["properties"]["limit"]["type"] == "integer"


async def test_a_skill_tool_refuses_bad_arguments_as_a_tool_error() -> None:
    box = ToolBox([ToolRef(skill=f"{__name__}:search")])
    tool = box.get("search")
    assert tool is not None
    assert await box.run(tool, {"text": "x", "limit": 5}, PARENT) == {
        "content": '["x", "x"]',
        "is_error": False,
    }
    bad = await box.run(tool, {"limit": "many"}, PARENT)
    assert bad["is_error"] and "text" in bad["content"] and "limit" in bad["content"]


async def check_mcp(server: MCPServer, *, then_crash: bool = False) -> None:
    box = ToolBox([ToolRef(mcp=server, name="calc")])
    try:
        specs = {s.name: s for s in await box.specs()}
        assert set(specs) == {"calc_add", "calc_shout", "calc_refuse", "calc_crash"}
        assert specs["calc_add"].parameters["required"] == ["a", "b"]
        add, refuse = box.get("calc_add"), box.get("calc_refuse")
        assert add is not None and refuse is not None
        results = await asyncio.gather(*(box.run(add, {"a": i, "b": 1}, PARENT) for i in range(3)))
        assert [r["content"] for r in results] == ["1", "2", "3"]
        failed = await box.run(refuse, {"reason": "no thanks"}, PARENT)
        assert failed["is_error"] and failed["content"].endswith("refused: no thanks")
        if then_crash:  # a dead server fails its call; the next call starts it again
            crash = box.get("calc_crash")
            assert crash is not None
            died = await box.run(crash, {}, PARENT)
            assert died["is_error"] and f"MCP server {box_where(server)}" in died["content"]
            assert await box.run(add, {"a": 1, "b": 2}, PARENT) == {
                "content": "3",
                "is_error": False,
            }
    finally:
        await box.close()


def box_where(server: MCPServer) -> str:
    return server.url or " ".join(server.command or [])


async def test_mcp_tools_over_stdio_and_a_new_server_after_one_died() -> None:
    await check_mcp(STDIO, then_crash=True)


@pytest.fixture
def mcp_http() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fixtures.mcp_server", "http", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(url, timeout=0.5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def test_mcp_tools_over_streamable_http(mcp_http: str) -> None:
    await check_mcp(MCPServer(url=mcp_http, include=["add", "shout", "refuse", "crash"]))


async def test_an_unreachable_mcp_server_is_a_clear_error() -> None:
    box = ToolBox([ToolRef(mcp=MCPServer(command=["python", "-c", "raise SystemExit(3)"]))])
    with pytest.raises(Exception, match="MCP server python -c"):
        await box.specs()


async def test_delegation_fans_out_at_once_with_ids_derived_from_the_parent() -> None:
    started: list[Task] = []
    both = asyncio.Event()

    async def delegate(task: Task) -> TaskResult:
        started.append(task)
        if len(started) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 5)  # only returns once both calls are in flight
        return TaskResult(task_id=task.id, status="succeeded", output={"n": task.input["n"] * 10})

    async def schema_of(capability: str) -> dict[str, Any]:
        return {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    box = ToolBox([ToolRef(agent="math.scale", timeout_s=5)], delegate, schema_of)
    specs = await box.specs()
    assert specs[0].name == "math_scale" and specs[0].parameters["required"] == ["n"]
    tool = box.get("math_scale")
    assert tool is not None
    results = await asyncio.gather(box.run(tool, {"n": 1}, PARENT), box.run(tool, {"n": 2}, PARENT))
    assert [r["content"] for r in results] == ['{"n": 10}', '{"n": 20}']
    assert {t.capability for t in started} == {"math.scale"}
    assert all(t.timeout_s == 5 and t.context.execution_id == "e1" for t in started)
    assert all(t.context.step_id and t.context.step_id.startswith("s1/") for t in started)


async def test_a_delegation_past_its_timeout_is_a_tool_error() -> None:
    async def delegate(task: Task) -> TaskResult:
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    box = ToolBox([ToolRef(agent="slow.thing", timeout_s=0.2)], delegate, None)
    await box.specs()
    tool = box.get("slow_thing")
    assert tool is not None
    assert await box.run(tool, {}, PARENT) == {
        "content": "error: the agent serving 'slow.thing' did not answer in 0.2s",
        "is_error": True,
    }


async def test_a_failed_delegation_shows_the_agent_error() -> None:
    async def delegate(task: Task) -> TaskResult:
        return TaskResult.model_validate({"task_id": task.id, "status": "failed",
                                          "error": {"type": "InputInvalid", "message": "n: required"}})  # fmt: skip

    box = ToolBox([ToolRef(agent="math.scale")], delegate, None)
    await box.specs()
    tool = box.get("math_scale")
    assert tool is not None
    assert await box.run(tool, {}, PARENT) == {
        "content": "error: InputInvalid: n: required",
        "is_error": True,
    }


def test_a_delegated_task_is_the_same_when_the_parent_runs_again() -> None:
    first = delegated_task(PARENT, "math.scale", {"n": 1}, 5, "math_scale")
    again = delegated_task(PARENT, "math.scale", {"n": 1}, 5, "math_scale")
    other = delegated_task(PARENT, "math.scale", {"n": 2}, 5, "math_scale")
    assert (first.id, first.idempotency_key) == (again.id, again.idempotency_key)
    assert first.id != other.id and first.context.step_id != other.context.step_id
