"""The auth and registry caches across real processes: a change made in one is refused or
seen by another's cache the moment the change returns (no polling), on a real Valkey."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from actors.models import AgentRecord, AgentSpec, AgentStatus
from actors.registry import AgentRegistry
from cluster.auth.models import Role
from cluster.auth.security import Security
from cluster.errors import Unauthorized
from cluster.settings import Settings, load_settings
from cluster.store import Store, connect_store

Peer = Callable[[str, str], tuple[str, Any]]
PASSWORD = "correct horse battery"


def _serve(conn: Connection, redis_url: str, state_dir: str, tenant: str) -> None:
    """Another API replica, in its own process: authenticates and reads the registry."""
    settings = load_settings(redis_url=redis_url, state_dir=state_dir, tenant=tenant)
    store = connect_store(settings)
    security = Security.from_settings(store, settings)
    registry = AgentRegistry(store)
    while (request := conn.recv()) is not None:
        command, argument = request
        try:
            if command == "auth":
                reply: tuple[str, Any] = ("ok", security.authenticate(argument).subject)
            elif command == "agents":
                reply = ("ok", [(r.agent_id, r.status.value) for r in registry.all()])
            else:  # "l1_hits": how many answers came from this process's L1
                reply = ("ok", security.keys.cache.hit_counts()["l1"][0]
                         + registry.cache.hit_counts()["l1"][0])  # fmt: skip
        except Unauthorized as exc:
            reply = ("refused", exc.message)
        conn.send(reply)


@pytest.fixture
def settings(valkey_url: str, state_dir: Path) -> Settings:
    return load_settings(
        redis_url=valkey_url, state_dir=str(state_dir), tenant=f"t{uuid.uuid4().hex[:10]}"
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    store = connect_store(settings)
    yield store
    store.close()


@pytest.fixture
def security(store: Store, settings: Settings) -> Security:
    return Security.from_settings(store, settings)  # writes the JWT keys the peer reads


@pytest.fixture
def peer(settings: Settings, security: Security) -> Iterator[Peer]:
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve,
        args=(theirs, settings.redis_url, str(settings.state_dir), settings.tenant),
        daemon=True,
    )
    process.start()

    def ask(command: str, argument: str = "") -> tuple[str, Any]:
        ours.send((command, argument))
        if not ours.poll(60):
            raise AssertionError(f"the peer process did not answer {command!r}")
        reply: tuple[str, Any] = ours.recv()
        return reply

    yield ask
    ours.send(None)
    process.join(10)
    if process.is_alive():
        process.kill()


def served_from_its_cache(peer: Peer, command: str, argument: str = "") -> tuple[str, Any]:
    """The peer's answer, asked twice: the second must come from its L1."""
    first = peer(command, argument)
    hits = peer("l1_hits", "")[1]
    assert peer(command, argument) == first
    assert peer("l1_hits", "")[1] == hits + 1, "not served from its cache"
    return first


def test_a_key_revoked_here_is_refused_by_another_process_at_once(
    security: Security, settings: Settings, peer: Peer
) -> None:
    key_id, secret = security.keys.create_api_key(settings.tenant, Role.VIEWER, "peer")
    token = security.tokens.issue_token(security.authenticate(secret))
    assert served_from_its_cache(peer, "auth", secret) == ("ok", f"key:{key_id}")
    assert peer("auth", token) == ("ok", f"key:{key_id}")

    security.keys.revoke_api_key(settings.tenant, key_id)

    assert peer("auth", secret) == ("refused", f"API key {key_id!r} has been revoked")
    assert peer("auth", token) == (
        "refused",
        f"API key {key_id!r} behind this token has been revoked",
    )


def test_a_user_disabled_repassworded_or_deleted_here_loses_tokens_in_another_process(
    security: Security, settings: Settings, peer: Peer
) -> None:
    tenant, users = settings.tenant, security.users
    users.create_user(tenant, "ada", PASSWORD, Role.VIEWER)

    def fresh_token() -> str:
        token = security.tokens.issue_token(users.login(tenant, "ada", PASSWORD))
        assert served_from_its_cache(peer, "auth", token) == ("ok", "ada")
        return token

    token = fresh_token()
    users.set_disabled(tenant, "ada", True)
    assert peer("auth", token) == ("refused", "user 'ada' behind this token is disabled")
    users.set_disabled(tenant, "ada", False)
    assert peer("auth", token)[0] == "refused"  # enabled again, the old token stays void

    token = fresh_token()
    users.set_password(tenant, "ada", PASSWORD + "!")
    assert peer("auth", token)[0] == "refused"

    token = security.tokens.issue_token(users.login(tenant, "ada", PASSWORD + "!"))
    assert served_from_its_cache(peer, "auth", token) == ("ok", "ada")
    users.delete_user(tenant, "ada")
    assert peer("auth", token) == ("refused", "user 'ada' behind this token no longer exists")


def test_registry_changes_here_are_seen_by_another_process_at_once(
    store: Store, peer: Peer
) -> None:
    registry = AgentRegistry(store)
    spec = AgentSpec(
        name="echo", version="1.0.0", capabilities=["test.echo"], entrypoint="m:f",
        replicas={"min": 1, "max": 4},  # type: ignore[arg-type]  # validated into Replicas
    )  # fmt: skip
    assert served_from_its_cache(peer, "agents") == ("ok", [])
    registry.register_agent(AgentRecord(spec=spec))
    assert served_from_its_cache(peer, "agents") == ("ok", [("echo@1.0.0", "active")])

    registry.update_agent_status("echo@1.0.0", AgentStatus.DRAINING)
    assert peer("agents", "") == ("ok", [("echo@1.0.0", "draining")])
    registry.deregister_agent("echo@1.0.0")
    assert peer("agents", "") == ("ok", [])
