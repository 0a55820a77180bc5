"""The API's FastAPI app over a real Valkey, each tenant's supervisor a `FakeSupervisor`:
routes tested end to end through HTTP (ASGI), credentials, roles and audit included,
without Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from actors.registry import AgentRegistry
from cluster.auth.models import Role
from cluster.settings import Settings, load_settings
from cluster.store import Store
from serve.app import build_app
from serve.deps import Services
from tests.unit.serve.fakes import FakeSupervisor
from workflows.store import BlobStore, ExecutionStore


@dataclass
class Api:
    """The app's HTTP client, its services, a key per (tenant, role), the fakes per tenant."""

    http: httpx.AsyncClient
    services: Services
    supervisors: dict[str, FakeSupervisor] = field(default_factory=dict)
    _keys: dict[tuple[str, Role], str] = field(default_factory=dict)

    def headers(self, role: Role = Role.ADMIN, tenant: str = "acme") -> dict[str, str]:
        if (tenant, role) not in self._keys:
            keys = self.services.security.keys
            _, secret = keys.create_api_key(tenant, role, f"test-{role.value}")
            self._keys[(tenant, role)] = secret
        return {"Authorization": f"Bearer {self._keys[(tenant, role)]}"}


@pytest.fixture
def api_settings(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("DAFNCK_JWT_SECRET", raising=False)
    return load_settings(redis_url=store.url, state_dir=str(tmp_path), trace_exporter="none")


@pytest.fixture
async def api(api_settings: Settings, store: Store) -> AsyncIterator[Api]:
    supervisors: dict[str, FakeSupervisor] = {}

    def supervisor(settings: Settings) -> FakeSupervisor:
        tenant = store.for_tenant(settings.tenant)
        fake = FakeSupervisor(
            AgentRegistry(tenant), ExecutionStore(tenant, BlobStore(settings.blobs))
        )
        supervisors[settings.tenant] = fake
        return fake

    app = build_app(api_settings)
    services = app.state.services = Services(api_settings, supervisors=supervisor)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield Api(http, services, supervisors)
