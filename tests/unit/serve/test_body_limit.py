"""The body limit in front of a real FastAPI app (in process): a declared or a streamed body
over the limit gets 413, and the route never sees a byte past it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request

from serve.body_limit import BodyLimit

LIMIT = 64 * 1024


def make_app(seen: list[int]) -> FastAPI:
    app = FastAPI()

    @app.post("/json")
    async def parsed(body: dict[str, str]) -> dict[str, int]:
        return {"keys": len(body)}

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            seen.append(total)
        return {"bytes": total}

    app.add_middleware(BodyLimit, max_bytes=LIMIT)
    return app


async def chunks(total: int, size: int = 8192) -> AsyncIterator[bytes]:
    for _ in range(total // size):
        yield b"x" * size


@pytest.fixture
def seen() -> list[int]:
    return []


@pytest.fixture
async def client(seen: list[int]) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(seen))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


async def test_a_streamed_body_over_the_limit_gets_413_and_the_route_stops_at_it(
    client: httpx.AsyncClient, seen: list[int]
) -> None:
    answer = await client.post("/raw", content=chunks(4 * LIMIT))
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["type"] == "PayloadTooLarge"
    assert max(seen) <= LIMIT  # nothing past the limit reached the route


async def test_a_chunked_json_body_over_the_limit_is_413_not_a_parse_error(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.post(
        "/json", content=chunks(2 * LIMIT), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413, answer.text


async def test_a_declared_length_over_the_limit_is_refused_unread(
    client: httpx.AsyncClient, seen: list[int]
) -> None:
    answer = await client.post("/raw", content=b"x" * (LIMIT + 1))
    assert answer.status_code == 413 and seen == []
    assert "limit is 65536" in answer.json()["error"]["message"]


async def test_bodies_up_to_the_limit_pass(client: httpx.AsyncClient) -> None:
    assert (await client.post("/raw", content=chunks(LIMIT))).json() == {"bytes": LIMIT}
    assert (await client.post("/json", json={"a": "b"})).json() == {"keys": 1}
