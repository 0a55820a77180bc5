"""Security as the API will use it, on a real Valkey (and redis-server where present): the role
table, credentials in and tokens out, rate limits shared by processes, and the audit stream."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from pydantic import BaseModel, ValidationError

from cluster.auth.audit import AuditLog
from cluster.auth.limits import RateLimits
from cluster.auth.models import (
    Action,
    ApiKeyInfo,
    ApiKeyRecord,
    AuditEntry,
    AuditPage,
    ClientCredentialsGrant,
    PasswordGrant,
    Principal,
    Role,
    SecurityConfig,
    TokenResponse,
    TotpEnrolment,
    UserInfo,
    UserRecord,
)
from cluster.auth.security import Security, authorize, is_allowed
from cluster.data.keyring import KEY_ENV
from cluster.errors import Conflict, DafnckError, Forbidden, InputInvalid, RateLimited, Unauthorized
from cluster.settings import load_settings
from cluster.store import Store, connect_store

# Written out by hand, independently of PERMISSIONS: x = allowed.
MATRIX = """
action              admin operator viewer agent
agents:read           x      x       x      x
agents:write          x      x       .      .
tasks:read            x      x       x      x
tasks:run             x      x       .      x
workflows:read        x      x       x      .
workflows:write       x      x       .      .
executions:read       x      x       x      .
executions:control    x      x       .      .
executions:approve    x      x       .      .
executions:purge      x      x       .      .
messages:read         x      x       x      x
messages:send         x      x       .      x
data:read             x      x       x      x
data:write            x      x       .      x
backups:manage        x      x       .      .
backups:restore       x      .       .      .
users:manage          x      .       .      .
keys:manage           x      .       .      .
audit:read            x      .       .      .
"""
PASSWORD = "correct horse battery"


def _matrix() -> dict[tuple[Role, str], bool]:
    header, *rows = MATRIX.strip().splitlines()
    roles = [Role(r) for r in header.split()[1:]]
    return {
        (role, action): mark == "x"
        for action, *marks in (row.split() for row in rows)
        for role, mark in zip(roles, marks, strict=True)
    }


def who(role: Role, tenant: str = "acme") -> Principal:
    return Principal(subject=f"{role}-1", tenant=tenant, role=role, kind="user")


def test_the_matrix_names_every_action_and_every_role() -> None:
    matrix = _matrix()
    assert {a for _, a in matrix} == {a.value for a in Action}
    assert {r for r, _ in matrix} == set(Role)


@pytest.mark.parametrize(("role", "action"), list(_matrix()))
def test_every_role_and_action_matches_the_table(role: Role, action: str) -> None:
    allowed = _matrix()[role, action]
    assert is_allowed(who(role), action) is allowed
    if allowed:
        authorize(who(role), Action(action))
    else:
        with pytest.raises(Forbidden, match=rf"role '{role}' is not allowed to '{action}'"):
            authorize(who(role), action)


def test_an_unknown_action_is_granted_to_no_one() -> None:
    for role in Role:
        with pytest.raises(Forbidden):
            authorize(who(role), "agents:destroy")


@pytest.fixture
def security(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Security:
    monkeypatch.delenv("DAFNCK_JWT_SECRET", raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = load_settings(redis_url=store.url, state_dir=str(tmp_path))
    return Security.from_settings(store, settings)


def test_an_api_key_and_the_token_it_mints_authenticate_until_revoked(security: Security) -> None:
    key_id, secret = security.keys.create_api_key("acme", Role.AGENT, "worker")
    assert security.authenticate(secret).kind == "api_key"
    response = security.token_endpoint(
        {"grant_type": "client_credentials", "client_secret": secret}
    )
    assert (response.token_type, response.expires_in) == ("bearer", 900)
    principal = security.authenticate(response.access_token)
    assert (principal.kind, principal.tenant, principal.role, principal.key_id) == (
        "token", "acme", Role.AGENT, key_id,
    )  # fmt: skip
    security.keys.revoke_api_key("acme", key_id)
    with pytest.raises(
        Unauthorized, match=rf"API key '{key_id}' behind this token has been revoked"
    ):
        security.authenticate(response.access_token)
    with pytest.raises(Unauthorized, match=r"has been revoked"):
        security.authenticate(secret)


def test_no_credential_or_a_foreign_client_id_is_refused(security: Security) -> None:
    with pytest.raises(Unauthorized, match=r"no credential"):
        security.authenticate("")
    _, secret = security.keys.create_api_key("acme", Role.AGENT, "worker")
    grant = ClientCredentialsGrant(
        grant_type="client_credentials", client_id="0123456789abcdef", client_secret=secret
    )
    with pytest.raises(Unauthorized, match=r"client_id does not name the key"):
        security.token_endpoint(grant)


def test_a_token_of_tenant_a_never_yields_tenant_b(security: Security) -> None:
    _, a = security.keys.create_api_key("a", Role.ADMIN, "k")
    _, b = security.keys.create_api_key("b", Role.VIEWER, "k")
    for secret, tenant in ((a, "a"), (b, "b")):
        token = security.token_endpoint(
            ClientCredentialsGrant(grant_type="client_credentials", client_secret=secret)
        ).access_token
        assert security.authenticate(token).tenant == tenant


def test_the_password_grant_needs_the_admins_code(security: Security) -> None:
    security.users.create_user("acme", "root", PASSWORD, Role.ADMIN)
    grant = {"grant_type": "password", "tenant": "acme", "username": "root", "password": PASSWORD}
    with pytest.raises(Unauthorized, match=r"invalid username, password or one-time code"):
        security.token_endpoint(grant)
    code = pyotp.TOTP(security.users.enable_totp("acme", "root").secret).now()
    response = security.token_endpoint({**grant, "totp_code": code, "expires_in": 10**6})
    assert response.expires_in == 3600  # capped
    assert security.authenticate(response.access_token).role is Role.ADMIN


def test_a_malformed_grant_names_fields_but_never_echoes_values(security: Security) -> None:
    with pytest.raises(InputInvalid, match=r"token request is invalid: .*implicit"):
        security.token_endpoint({"grant_type": "implicit"})
    with pytest.raises(InputInvalid) as err:
        security.token_endpoint({"grant_type": "password", "username": 5, "password": "s3cret-v"})
    assert "username" in str(err.value) and "s3cret-v" not in str(err.value)
    grant = PasswordGrant(grant_type="password", username="bob", password="s3cret-v")
    assert "s3cret-v" not in repr(grant) and "s3cret-v" not in grant.model_dump_json()


@pytest.fixture
def two_processes(any_store_url: str, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Two connections of their own, as two replicas would have."""
    settings = load_settings(state_dir=str(tmp_path))
    one, two = (
        connect_store(settings, url=any_store_url),
        connect_store(settings, url=any_store_url),
    )
    one.redis.flushdb()
    yield one, two
    one.redis.flushdb()
    one.close()
    two.close()


def key(key_id: str, tenant: str = "acme") -> Principal:
    return Principal(
        subject=f"key:{key_id}", tenant=tenant, role=Role.AGENT, kind="api_key", key_id=key_id
    )


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
def test_a_keys_limit_is_shared_by_two_processes(
    two_processes: tuple[Store, Store], strategy: str
) -> None:
    config = SecurityConfig(
        rate_per_key="4/minute", rate_per_tenant="100/minute", rate_strategy=strategy
    )  # type: ignore[arg-type]
    limiters = [RateLimits(s, config) for s in two_processes]
    for i in range(4):
        limiters[i % 2].check_rate(key("00000000000000aa"))
    with pytest.raises(
        RateLimited, match=r"4 per 1 minute for credential '00000000000000aa'"
    ) as err:
        limiters[0].check_rate(key("00000000000000aa"))
    assert 0 < err.value.retry_after_s <= 60
    again = pickle.loads(pickle.dumps(err.value))
    assert again.retry_after_s == err.value.retry_after_s and again.retryable
    limiters[1].check_rate(key("00000000000000bb"))  # another key has its own budget
    user = Principal(subject="bob", tenant="acme", role=Role.VIEWER, kind="user")
    limiters[1].check_rate(user)


def test_a_tenants_limit_is_shared_by_its_keys_and_processes(
    two_processes: tuple[Store, Store],
) -> None:
    config = SecurityConfig(rate_per_key="100/minute", rate_per_tenant="6/minute")
    limiters = [RateLimits(s, config) for s in two_processes]
    for i in range(6):
        limiters[i % 2].check_rate(key(f"00000000000000{i:02x}"))
    with pytest.raises(RateLimited, match=r"for tenant 'acme' exceeded"):
        limiters[1].check_rate(key("00000000000000ff"))
    limiters[0].check_rate(key("00000000000000ff", tenant="other"))


def test_a_denied_call_is_audited(security: Security) -> None:
    viewer = who(Role.VIEWER)
    with pytest.raises(Forbidden):
        security.authorize(viewer, Action.AGENTS_WRITE, obj="agent/reviewer", request_id="r1")
    security.authorize(viewer, Action.AGENTS_READ, obj="agent/reviewer", request_id="r2")
    [entry] = security.audit.list("acme").entries
    assert (entry.subject, entry.role, entry.kind, entry.action, entry.object) == (
        "viewer-1", "viewer", "user", "agents:write", "agent/reviewer",
    )  # fmt: skip
    assert (entry.request_id, entry.outcome) == ("r1", "denied") and "not allowed" in entry.detail


def test_audited_records_one_entry_per_call_and_its_outcome(security: Security) -> None:
    operator, ran = who(Role.OPERATOR), []
    with security.audited(operator, Action.WORKFLOWS_WRITE, obj="workflow/w", request_id="r1"):
        ran.append(1)
    with pytest.raises(Conflict), security.audited(operator, "executions:control", obj="e/1"):
        raise Conflict("execution 'e/1' already ended")
    with pytest.raises(Forbidden), security.audited(operator, Action.KEYS_MANAGE, obj="key/x"):
        ran.append(2)
    entries = security.audit.list("acme").entries
    assert ran == [1]
    assert [(e.action, e.outcome) for e in entries] == [
        ("workflows:write", "ok"),
        ("executions:control", "failed"),
        ("keys:manage", "denied"),
    ]
    assert entries[1].detail == "execution 'e/1' already ended"


def test_the_audit_pages_by_cursor_and_keeps_tenants_apart(store: Store) -> None:
    audit = AuditLog(store)
    ids = [
        audit.record(who(Role.ADMIN), "acme", "data:write", f"obj/{i}", f"r{i}") for i in range(5)
    ]
    audit.record(None, "other", "agents:write", "agent/x", "r9", "denied", "no credential")
    pages, cursor = [], None
    while True:
        page = audit.list("acme", cursor=cursor, limit=2)
        pages.append([e.id for e in page.entries])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == [ids[:2], ids[2:4], ids[4:]]
    [other] = audit.list("other").entries
    assert (other.subject, other.kind, other.outcome) == ("anonymous", "", "denied")
    with pytest.raises(InputInvalid, match=r"limit 0 must be in 1..1000; cursor 'x' is not"):
        audit.list("acme", cursor="x", limit=0)


ERRORS: list[DafnckError] = [
    Unauthorized("bearer token has expired; get a new one"),
    Forbidden.for_role("viewer", "agents:write"),
    RateLimited("rate limit exceeded", 1.5),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling_with_their_status(error: DafnckError) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and again.to_dict() == error.to_dict()
    assert (again.status_code, again.retryable) == {
        Unauthorized: (401, False), Forbidden: (403, False), RateLimited: (429, True),
    }[type(error)]  # fmt: skip


PRINCIPAL = key("0123456789abcdef")
CONTRACTS: list[BaseModel] = [
    PRINCIPAL,
    ApiKeyInfo(key_id="0123456789abcdef", tenant="acme", role=Role.AGENT, name="n", created_at=1.0),
    ApiKeyRecord(
        key_id="0123456789abcdef",
        tenant="acme",
        role="agent",
        name="n",
        created_at=1.0,  # type: ignore[arg-type]
        revoked_at=2.0,
        secret_sha256="ab" * 32,
    ),
    UserInfo(username="bob", tenant="acme", role=Role.ADMIN, created_at=1.0, totp="active"),
    UserRecord(username="bob", tenant="acme", role=Role.ADMIN, created_at=1.0, password_hash="$a"),
    TotpEnrolment(secret="ABC", provisioning_uri="otpauth://totp/x"),
    TokenResponse(access_token="t", expires_in=60),
    AuditPage(
        entries=[
            AuditEntry(
                id="1-0",
                ts=1.0,
                tenant="acme",
                subject="s",
                kind="user",
                role="admin",
                action="data:write",
                outcome="ok",
            )
        ],
        next_cursor="1-0",
    ),
    SecurityConfig(rate_per_key="5 per minute"),
]


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: type(c).__name__)
def test_contracts_survive_pickle_and_json(contract: BaseModel) -> None:
    assert pickle.loads(pickle.dumps(contract)) == contract
    assert type(contract).model_validate_json(contract.model_dump_json()) == contract


def test_a_rate_that_limits_cannot_parse_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"'lots' is not a rate like '100/second'"):
        SecurityConfig(rate_per_tenant="lots")
