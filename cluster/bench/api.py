"""`dafnck bench` suite `api`: a no-op task submitted and awaited over HTTP, through the
API, against a plain Serve deployment doing the same no-op, in the same run.

Both sides are one Serve replica (`max_ongoing_requests` as the API's, no CPU reserved)
behind the same Serve HTTP proxy, answering `POST` with a JSON task by awaiting `noop` on
one async actor: the API goes through its whole stack (API key, rate limits, role check,
audit entry, routing to the `bench.noop` pool replica); the plain deployment calls a raw
Ray actor with `.remote()`. 16 clients on 127.0.0.1 (`httpx.AsyncClient`) each send one
request at a time; rounds alternate which side goes first (ABBA). Requests per second is
the median of the rounds; p50 and p99 come from every request of a side.

Each client has its own admin key of the bench tenant, so the per-key rate limit (100/s
by default) does not cap the figure; any answer but 200 fails the suite. Serve is used
where it runs (its proxy's port), else started on a free port of 127.0.0.1 and shut down
after; the suite's two applications are deleted either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import ray
from ray import serve as ray_serve
from ray.exceptions import RayError
from ray.serve.deployment import Deployment
from ray.serve.exceptions import RayServeException

from actors.client import Client
from cluster.auth.keys import AUTH_SPACE, ApiKeys
from cluster.auth.models import Role
from cluster.bench.common import (
    CAPABILITY,
    CONCURRENCY,
    Result,
    bench_spec,
    raw_actor_class,
    result,
)
from cluster.errors import TaskFailed
from cluster.valkey import free_port
from serve.deployment import AUTOSCALING, INGRESS, MAX_ONGOING_REQUESTS, settings_env

SUITE = "api"
CLIENTS = 16
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ApiPlan:
    """Rounds per side, and each round's bound: at most `requests`, for at most `max_s`."""

    rounds: int
    requests: int
    max_s: float
    warmup: int


FULL = ApiPlan(rounds=4, requests=2000, max_s=8.0, warmup=300)
QUICK = ApiPlan(rounds=2, requests=96, max_s=3.0, warmup=32)


@dataclass
class Side:
    """One side's endpoint, a header set per client, and what its rounds measured."""

    url: str
    headers: list[dict[str, str]]
    rates: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def percentile_ms(self, q: int) -> float:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[q - 1]


@functools.cache
def plain_deployment() -> Deployment:
    """A plain Serve deployment: read the JSON task, await `noop` on a raw actor, answer.

    Defined inside a function so Ray pickles it by value: its replica imports nothing of ours.
    """
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    class PlainNoop:
        def __init__(self, actor: Any) -> None:
            self._actor = actor

        async def __call__(self, request: Request) -> JSONResponse:
            task = await request.json()
            output = await self._actor.noop.remote(task["input"]["n"])
            return JSONResponse({"status": "succeeded", "output": output})

    deployment: Deployment = ray_serve.deployment(
        max_ongoing_requests=MAX_ONGOING_REQUESTS, ray_actor_options={"num_cpus": 0}
    )(PlainNoop)
    return deployment


def run_api_suite(client: Client, quick: bool) -> list[Result]:
    """API no-op task throughput and p50/p99 latency against plain Serve, 16 clients.

    Raises: TaskFailed (a request answered other than 200), ClusterUnavailable,
    StoreUnavailable.
    """
    plan = QUICK if quick else FULL
    tenant = client.settings.tenant
    client.agents.apply(bench_spec())
    keys = ApiKeys(client.store)
    made = [keys.create_api_key(tenant, Role.ADMIN, f"bench-api-{i}") for i in range(CLIENTS)]
    raw = raw_actor_class().options(max_concurrency=CONCURRENCY).remote()
    prefix = f"/{tenant}-{uuid.uuid4().hex[:6]}"
    try:
        with _serve_proxy() as base, _deployed(client, raw, prefix) as (api_route, plain_route):
            api = Side(f"{base}{api_route}/v1/tasks?wait=true", [_bearer(s) for _, s in made])
            plain = Side(f"{base}{plain_route}", [{}] * CLIENTS)
            return _measure(api, plain, plan)
    finally:
        ray.kill(raw, no_restart=True)
        _drop_keys(client, [key_id for key_id, _ in made])


def _drop_keys(client: Client, key_ids: list[str]) -> None:
    """Revoke the suite's keys and drop them from the key index (the tenant's go with it)."""
    keys = ApiKeys(client.store)
    for key_id in key_ids:
        keys.revoke_api_key(client.settings.tenant, key_id)
    client.store.redis.hdel(client.store.for_tenant(AUTH_SPACE).key("apikeys"), *key_ids)


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _measure(api: Side, plain: Side, plan: ApiPlan) -> list[Result]:
    for side in (api, plain):  # warm: connections, the pool view, the replicas' imports
        _round(side, plan.warmup, plan.max_s * 4, keep=False)
    for i in range(plan.rounds):
        for side in (api, plain) if i % 2 == 0 else (plain, api):
            _round(side, plan.requests, plan.max_s, keep=True)
    return [
        result(SUITE, "api_noop_rps", statistics.median(api.rates), "req/s",
               statistics.median(plain.rates)),
        result(SUITE, "api_noop_p50_ms", api.percentile_ms(50), "ms", plain.percentile_ms(50)),
        result(SUITE, "api_noop_p99_ms", api.percentile_ms(99), "ms", plain.percentile_ms(99)),
    ]  # fmt: skip


def _round(side: Side, requests: int, max_s: float, *, keep: bool) -> None:
    rate, latencies_ms, statuses = asyncio.run(_load(side, requests, max_s))
    failed = {code: n for code, n in statuses.items() if code != 200}
    if failed:
        raise TaskFailed(
            f"bench requests to {side.url} failed: {failed} of {sum(statuses.values())} "
            "answers were not 200 (is the tenant rate limit below the rate reached?)"
        )
    if keep:
        side.rates.append(rate)
        side.latencies_ms += latencies_ms


async def _load(side: Side, requests: int, max_s: float) -> tuple[float, list[float], Counter[int]]:
    """CLIENTS clients, one request in flight each, until `requests` were sent or `max_s`."""
    latencies_ms: list[float] = []
    statuses: Counter[int] = Counter()
    numbers = itertools.count()
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) as http:

        async def one_client(headers: dict[str, str], stop: float) -> None:
            while time.perf_counter() < stop and (n := next(numbers)) < requests:
                task = {"capability": CAPABILITY, "input": {"n": n}}
                sent = time.perf_counter()
                answer = await http.post(side.url, json=task, headers=headers)
                latencies_ms.append((time.perf_counter() - sent) * 1000)
                statuses[answer.status_code] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client(h, started + max_s) for h in side.headers))
        elapsed = time.perf_counter() - started
    return len(latencies_ms) / elapsed, latencies_ms, statuses


@contextlib.contextmanager
def _serve_proxy() -> Iterator[str]:
    """The running Serve proxy's base URL; else Serve started on a free port, shut down after."""
    from ray.serve.context import _get_global_client

    running = _get_global_client(raise_if_no_controller_running=False)
    if running is not None:
        yield f"http://127.0.0.1:{running.http_config.port}"
        return
    port = free_port()
    ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        ray_serve.shutdown()


@contextlib.contextmanager
def _deployed(client: Client, raw: Any, prefix: str) -> Iterator[tuple[str, str]]:
    """The API and the plain deployment, one replica each, under `prefix`; deleted after."""
    settings = client.settings.model_copy(update={"redis_url": client.store.url})
    api = INGRESS.options(
        autoscaling_config={**AUTOSCALING, "min_replicas": 1, "max_replicas": 1},
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": settings_env(settings)}},
    )
    routes = (f"{prefix}-api", f"{prefix}-plain")
    names = [route.strip("/") for route in routes]
    try:
        ray_serve.run(api.bind(), name=names[0], route_prefix=routes[0])
        ray_serve.run(plain_deployment().bind(raw), name=names[1], route_prefix=routes[1])
        yield routes
    finally:
        for name in names:
            with contextlib.suppress(RayError, RayServeException):
                ray_serve.delete(name)


__all__ = ["run_api_suite"]
