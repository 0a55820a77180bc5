"""Contracts of security: roles and their permissions, principals, API keys, users, tokens, audit.

Inputs (`SecurityConfig`, the token grants) refuse unknown fields; records kept in Redis
(`ApiKeyRecord`, `UserRecord`, `AuditEntry`) tolerate them so a rolling upgrade reads both.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import limits
from pydantic import Field, SecretStr, field_validator

from cluster.contracts import TENANT, Contract, Record

USERNAME = r"^[a-z0-9][a-z0-9_.@-]{0,63}$"
KEY_ID = r"^[0-9a-f]{16}$"


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    AGENT = "agent"


class Action(StrEnum):
    AGENTS_READ = "agents:read"
    AGENTS_WRITE = "agents:write"
    TASKS_READ = "tasks:read"
    TASKS_RUN = "tasks:run"
    WORKFLOWS_READ = "workflows:read"
    WORKFLOWS_WRITE = "workflows:write"
    EXECUTIONS_READ = "executions:read"
    EXECUTIONS_CONTROL = "executions:control"
    EXECUTIONS_APPROVE = "executions:approve"
    #: Deleting finished executions with everything kept for them (operators and admins).
    EXECUTIONS_PURGE = "executions:purge"
    MESSAGES_READ = "messages:read"
    MESSAGES_SEND = "messages:send"
    DATA_READ = "data:read"
    DATA_WRITE = "data:write"
    BACKUPS_MANAGE = "backups:manage"
    #: Restoring replaces the tenant's state at once: admins only.
    BACKUPS_RESTORE = "backups:restore"
    USERS_MANAGE = "users:manage"
    KEYS_MANAGE = "keys:manage"
    AUDIT_READ = "audit:read"


_READS = frozenset(a for a in Action if a.endswith(":read") and a is not Action.AUDIT_READ)
_CREDENTIALS = frozenset({Action.USERS_MANAGE, Action.KEYS_MANAGE, Action.AUDIT_READ})

#: What each role may do. Admins do everything; operators run the platform but cannot
#: mint credentials, read the audit or restore a backup; viewers read; agents (machine identities) run tasks,
#: exchange messages and use data, but define and approve nothing.
PERMISSIONS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.OPERATOR: frozenset(Action) - _CREDENTIALS - {Action.BACKUPS_RESTORE},
    Role.VIEWER: _READS,
    Role.AGENT: frozenset(
        {
            Action.AGENTS_READ,
            Action.TASKS_READ,
            Action.TASKS_RUN,
            Action.MESSAGES_READ,
            Action.MESSAGES_SEND,
            Action.DATA_READ,
            Action.DATA_WRITE,
        }
    ),
}

#: How the principal proved who it is; "token" is a verified JWT, whatever minted it.
PrincipalKind = Literal["user", "api_key", "token"]


class Principal(Record):
    """Who is calling: the subject, the tenant the credential belongs to, and its role."""

    subject: str = Field(min_length=1, max_length=200)
    tenant: str = Field(pattern=TENANT)
    role: Role
    kind: PrincipalKind
    #: The API key behind the call (directly or through a token it minted), else None.
    key_id: str | None = Field(default=None, pattern=KEY_ID)
    #: A user's token version when logged in (or in the token's `ver` claim): a token whose
    #: version is behind the user's record (new password, disabled) is refused.
    token_version: int | None = Field(default=None, ge=0)


class ApiKeyInfo(Record):
    """An API key as listed: never its secret nor its hash."""

    key_id: str = Field(pattern=KEY_ID)
    tenant: str = Field(pattern=TENANT)
    role: Role
    name: str
    created_at: float
    revoked_at: float | None = None


class ApiKeyRecord(ApiKeyInfo):
    """An API key as Redis keeps it: the SHA-256 of the secret, hex."""

    secret_sha256: str


class UserInfo(Record):
    """A user as listed: never a password hash or a TOTP secret."""

    username: str = Field(pattern=USERNAME)
    tenant: str = Field(pattern=TENANT)
    role: Role
    created_at: float
    #: "none", "pending" (secret issued, no code used yet) or "active".
    totp: Literal["none", "pending", "active"] = "none"
    #: A disabled user cannot log in and the tokens it holds are refused.
    disabled: bool = False


class UserRecord(UserInfo):
    """A user as Redis keeps it: an argon2 hash, and the TOTP secret encrypted (Fernet)."""

    password_hash: str
    totp_secret_enc: str | None = None
    #: Bumped by a new password, disabling or enabling: older tokens stop working at once.
    token_version: int = Field(default=0, ge=0)


class TotpEnrolment(Record):
    """What an authenticator app needs (the otpauth:// URI, as a QR code); shown once."""

    secret: str
    provisioning_uri: str


class PasswordGrant(Contract):
    """OAuth2 resource-owner password grant, with the TOTP code as an extension field."""

    grant_type: Literal["password"]
    tenant: str = Field(default="default", pattern=TENANT)
    username: str = Field(min_length=1, max_length=64)
    password: SecretStr
    totp_code: str | None = Field(default=None, max_length=10)
    #: Requested lifetime; capped by `SecurityConfig.max_token_ttl_s`.
    expires_in: int | None = Field(default=None, gt=0)


class ClientCredentialsGrant(Contract):
    """OAuth2 client-credentials grant: the API key is the client secret."""

    grant_type: Literal["client_credentials"]
    #: The key id; optional, but when given it must match the secret's.
    client_id: str | None = None
    client_secret: SecretStr
    expires_in: int | None = Field(default=None, gt=0)


TokenGrant = Annotated[PasswordGrant | ClientCredentialsGrant, Field(discriminator="grant_type")]


class TokenResponse(Contract):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the OAuth2 token type)
    expires_in: int


#: "started": written before a long, state-replacing action (a restore) begins.
AuditOutcome = Literal["ok", "denied", "failed", "invalid", "started"]


class AuditEntry(Record):
    """One audited call: who, in which tenant, did what to which object, and how it ended."""

    id: str
    ts: float
    tenant: str
    subject: str
    kind: str
    role: str
    key_id: str = ""
    action: str
    object: str = ""
    request_id: str = ""
    #: The X-Request-ID the client (or a proxy) sent; `request_id` is the server's own.
    client_request_id: str = ""
    outcome: AuditOutcome
    detail: str = ""


class AuditPage(Record):
    entries: list[AuditEntry]
    #: Pass back as `cursor` for the next page; None when this page is the last.
    next_cursor: str | None = None


class SecurityConfig(Contract):
    """Issuer, audience, lifetimes, login limits and rate limits (limits' notation: "100/second";
    several joined by ";")."""

    issuer: str = "dafnck"
    audience: str = "dafnck-api"
    token_ttl_s: int = Field(default=900, gt=0)
    max_token_ttl_s: int = Field(default=3600, gt=0)
    leeway_s: float = Field(default=5.0, ge=0, le=60)
    min_password_length: int = Field(default=12, ge=8)
    #: Password logins per client address (every attempt, counted before any hashing).
    login_rate_per_source: str = "5/second;60/minute"
    #: Failed logins per username of a tenant, from anywhere (checked before hashing).
    login_rate_per_user: str = "30/minute;300/hour"
    #: Failures of one (username, address) allowed before each next try must wait a delay
    #: that doubles from `login_delay_base_s` up to `login_delay_max_s`.
    login_free_failures: int = Field(default=3, ge=0)
    login_delay_base_s: float = Field(default=1.0, gt=0)
    login_delay_max_s: float = Field(default=300.0, gt=0)
    #: How long a (username, address)'s failures are remembered without a new one.
    login_failure_window_s: int = Field(default=3600, gt=0)
    rate_per_key: str = "100/second"
    rate_per_tenant: str = "1000/second"
    rate_strategy: Literal["moving-window", "fixed-window"] = "moving-window"
    totp_issuer: str = "DafnckMachine"
    #: Approximate cap of each principal's audit stream (XADD MAXLEN ~): one caller's
    #: flood of denials evicts only its own history.
    audit_max_entries: int = Field(default=100_000, gt=0)
    #: Audit entries (and 401 counters) older than this are trimmed (XTRIM MINID).
    audit_retention_s: int = Field(default=90 * 86400, gt=0)

    @field_validator("rate_per_key", "rate_per_tenant")
    @classmethod
    def _rate(cls, value: str) -> str:
        try:
            limits.parse(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a rate like '100/second' or '10 per minute'"
            ) from None
        return value

    @field_validator("login_rate_per_source", "login_rate_per_user")
    @classmethod
    def _rates(cls, value: str) -> str:
        try:
            limits.parse_many(value)
        except ValueError:
            raise ValueError(
                f"{value!r} is not rates like '10/second;100/minute' (';' between them)"
            ) from None
        return value


__all__ = [
    "PERMISSIONS",
    "Action",
    "ApiKeyInfo",
    "ApiKeyRecord",
    "AuditEntry",
    "AuditOutcome",
    "AuditPage",
    "ClientCredentialsGrant",
    "PasswordGrant",
    "Principal",
    "PrincipalKind",
    "Role",
    "SecurityConfig",
    "TokenGrant",
    "TokenResponse",
    "TotpEnrolment",
    "UserInfo",
    "UserRecord",
]
