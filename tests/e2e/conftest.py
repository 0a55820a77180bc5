"""The API over real HTTP: Serve on a free port of 127.0.0.1, on one Ray per session and
the session's Valkey; two tenants with an API key for every role."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster.auth.models import Role
from cluster.auth.security import Security
from cluster.settings import Settings, load_settings
from cluster.store import connect_store
from cluster.valkey import free_port
from tests.conftest import METRICS_TOKEN
from tests.integration.conftest import kill_tenant

#: The echo agent the e2e modules share (tests.fixtures.agents:echo).
ECHO = {
    "name": "echo",
    "version": "1.0.0",
    "capabilities": ["test.echo"],
    "entrypoint": "tests.fixtures.agents:echo",
}


#: The session's settings and Serve API, shared by every conftest that re-exports these
#: fixtures (tests/security): pytest keeps one instance per conftest, a Ray cluster has one
#: Serve proxy, so a second start on another port would never answer.
_SESSION: dict[str, Any] = {}


@pytest.fixture(scope="session")
def e2e_ray(ray_session: None) -> None:
    """The session's one Ray (tests/conftest.py)."""


@pytest.fixture(scope="session")
def e2e_settings(valkey_url: str, state_dir: Path) -> Settings:
    if "settings" not in _SESSION:
        _SESSION["settings"] = load_settings(
            redis_url=valkey_url,
            state_dir=str(state_dir),
            reconcile_interval_s=0.5,
            grpc_port=free_port(),  # Serve's gRPC proxy, next to the HTTP one
            metrics_token=METRICS_TOKEN,
        )
    settings: Settings = _SESSION["settings"]
    return settings


@pytest.fixture(scope="session")
def security(e2e_settings: Settings) -> Security:
    return Security.from_settings(connect_store(e2e_settings), e2e_settings)


@dataclass(frozen=True)
class Tenant:
    name: str
    keys: dict[Role, str]

    def headers(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}


def _tenant(security: Security, label: str) -> Tenant:
    name = f"e2e{label}{uuid.uuid4().hex[:6]}"
    keys = {role: security.keys.create_api_key(name, role, f"{role}-key")[1] for role in Role}
    return Tenant(name, keys)


@pytest.fixture(scope="session")
def tenants(security: Security) -> Iterator[tuple[Tenant, Tenant]]:
    pair = (_tenant(security, "a"), _tenant(security, "b"))
    yield pair
    for tenant in pair:
        kill_tenant(tenant.name)


@pytest.fixture(scope="session")
def api_url(e2e_ray: None, e2e_settings: Settings) -> Iterator[str]:
    """Serve's proxy on a free port of 127.0.0.1 with the API deployed, ready to answer."""
    from ray import serve as ray_serve

    from serve.deployment import start_api

    if "url" in _SESSION:  # started by another conftest's copy of this fixture
        yield _SESSION["url"]
        return
    url = start_api(e2e_settings, host="127.0.0.1", port=free_port())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        pytest.fail(f"the API at {url} did not become ready in 60 s")
    _SESSION["url"] = url
    yield url
    _SESSION.pop("url", None)
    ray_serve.shutdown()


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=30) as client:
        yield client
