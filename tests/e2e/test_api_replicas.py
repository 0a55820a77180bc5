"""Two API replicas behind Serve share one rate limit per key (it is counted in Redis)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from ray import serve as ray_serve

from cluster.auth.models import Role
from cluster.auth.security import Security
from cluster.settings import Settings
from serve.deployment import AUTOSCALING, INGRESS, settings_env
from tests.e2e.conftest import Tenant

LIMIT = 10


@pytest.fixture
def two_replicas_url(api_url: str, e2e_settings: Settings) -> Iterator[str]:
    """The ingress with two fixed replicas and a limit of LIMIT calls a minute per key."""
    name = f"two-replicas-{uuid.uuid4().hex[:6]}"
    limited = e2e_settings.model_copy(update={"rate_per_key": f"{LIMIT}/minute"})
    deployment = INGRESS.options(
        autoscaling_config={**AUTOSCALING, "min_replicas": 2, "max_replicas": 2},
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": settings_env(limited)}},
    )
    ray_serve.run(deployment.bind(), name=name, route_prefix=f"/{name}")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        states = ray_serve.status().applications[name].deployments["ApiIngress"].replica_states
        if states.get("RUNNING") == 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"two replicas never ran: {states}")
    yield f"{api_url}/{name}"
    ray_serve.delete(name)


async def _burst(url: str, headers: dict[str, str], n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=60, headers=headers) as http:
        return list(await asyncio.gather(*(http.get(url) for _ in range(n))))


def test_a_key_limit_holds_across_two_replicas(
    two_replicas_url: str, security: Security, tenants: tuple[Tenant, Tenant]
) -> None:
    """2*LIMIT concurrent calls spread over both replicas: a limit kept per replica would
    let up to 2*LIMIT through; the shared one lets exactly LIMIT through."""
    _, secret = security.keys.create_api_key(tenants[0].name, Role.ADMIN, "rate-shared")
    headers = {"Authorization": f"Bearer {secret}"}
    answers = asyncio.run(_burst(f"{two_replicas_url}/v1/keys", headers, 2 * LIMIT))
    codes = Counter(r.status_code for r in answers)
    assert codes == {200: LIMIT, 429: LIMIT}, codes
    refused = next(r for r in answers if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "RateLimited"
