"""The auth cache as the API uses it: `authenticate_cached` answers without I/O once
`authenticate` has filled it, and a change made through another connection (another
process) empties it before the change returns. Real Valkey, no Ray."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.auth.models import Role
from cluster.auth.security import Security
from cluster.data.keyring import KEY_ENV
from cluster.errors import Unauthorized
from cluster.settings import load_settings
from cluster.store import Store, connect_store

PASSWORD = "correct horse battery"


@pytest.fixture
def replicas(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Security, Security]]:
    """Two API replicas: one `Security` each, on connections of their own."""
    monkeypatch.delenv("DAFNCK_JWT_SECRET", raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = load_settings(redis_url=store.url, state_dir=str(tmp_path))
    other = connect_store(settings)
    yield Security.from_settings(store, settings), Security.from_settings(other, settings)
    other.close()


def test_a_key_is_answered_from_the_cache_until_revoked_elsewhere(
    replicas: tuple[Security, Security],
) -> None:
    here, there = replicas
    key_id, secret = there.keys.create_api_key("acme", Role.AGENT, "worker")
    token = here.tokens.issue_token(here.authenticate(secret))
    assert here.authenticate_cached(token) is not None  # the key's record is cached now
    cached = here.authenticate_cached(secret)
    assert cached is not None and (cached.key_id, cached.tenant) == (key_id, "acme")

    there.keys.revoke_api_key("acme", key_id)

    assert here.authenticate_cached(secret) is None  # dropped: the caller asks the store
    assert here.authenticate_cached(token) is None
    with pytest.raises(Unauthorized, match="has been revoked"):
        here.authenticate(secret)
    with pytest.raises(Unauthorized, match="has been revoked"):  # now cached as revoked
        here.authenticate_cached(secret)
    with pytest.raises(Unauthorized, match="behind this token has been revoked"):
        here.authenticate_cached(token)


def test_a_wrong_secret_is_refused_from_the_cache_too(replicas: tuple[Security, Security]) -> None:
    here, _ = replicas
    _, secret = here.keys.create_api_key("acme", Role.VIEWER, "reader")
    here.authenticate(secret)
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    with pytest.raises(Unauthorized, match="secret does not match"):
        here.authenticate_cached(forged)


def test_a_users_token_is_answered_from_the_cache_until_disabled_elsewhere(
    replicas: tuple[Security, Security],
) -> None:
    here, there = replicas
    there.users.create_user("acme", "ada", PASSWORD, Role.VIEWER)
    token = here.tokens.issue_token(here.users.login("acme", "ada", PASSWORD))
    assert here.authenticate_cached(token) is None  # nothing cached yet
    here.authenticate(token)
    cached = here.authenticate_cached(token)
    assert cached is not None and cached.subject == "ada"

    there.users.set_disabled("acme", "ada", True)

    assert here.authenticate_cached(token) is None
    with pytest.raises(Unauthorized, match="is disabled"):
        here.authenticate(token)
