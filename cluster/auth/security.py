"""Security for the API, as a library: who is calling, may they, how often, and the audit.

The API builds one `Security` per process and, per request: `principal =
security.authenticate(credential)` (an API key `dk_...` or a bearer JWT; on an event loop,
`authenticate_cached` first, which answers from the auth cache without I/O), then
`security.check_rate(principal)`, then `security.authorize(...)` for reads or `with
security.audited(...)` around a mutating call. The tenant always comes from the principal
(`store.for_tenant(principal.tenant)`), never from the request.

Parts: `ApiKeys` (cluster.auth.keys), `Users` (cluster.auth.users), `TokenService` and
`JwtKeyring` (cluster.auth.tokens), `RateLimits` (cluster.auth.limits), `AuditLog`
(cluster.auth.audit); errors in cluster.auth_errors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any, cast

from pydantic import TypeAdapter, ValidationError

from cluster.auth.audit import AuditLog
from cluster.auth.keys import KEY_PREFIX, ApiKeys, auth_cache
from cluster.auth.limits import LoginLimits, RateLimits
from cluster.auth.models import (
    PERMISSIONS,
    Action,
    ClientCredentialsGrant,
    PasswordGrant,
    Principal,
    SecurityConfig,
    TokenGrant,
    TokenResponse,
)
from cluster.auth.tokens import JwtKeyring, TokenService
from cluster.auth.users import Users
from cluster.data.keyring import KeyRing
from cluster.errors import DafnckError, Forbidden, InputInvalid, RateLimited, Unauthorized
from cluster.settings import Settings
from cluster.store import Store

log = logging.getLogger(__name__)

# mypy reads the Annotated union as a value; pydantic builds the discriminated adapter.
_GRANT: TypeAdapter[PasswordGrant | ClientCredentialsGrant] = TypeAdapter(cast(Any, TokenGrant))
Grant = PasswordGrant | ClientCredentialsGrant


def is_allowed(principal: Principal, action: Action | str) -> bool:
    """Whether the principal's role grants the action; an unknown action is never granted."""
    return action in PERMISSIONS[principal.role]


def authorize(principal: Principal, action: Action | str) -> None:
    """Raises: Forbidden (naming the role and the action) unless the role grants the action."""
    if not is_allowed(principal, action):
        raise Forbidden.for_role(principal.role.value, str(action))


class Security:
    """Keys, users, tokens, limits and audit over one store, for every tenant."""

    def __init__(
        self,
        keys: ApiKeys,
        users: Users,
        tokens: TokenService,
        limits: RateLimits,
        audit: AuditLog,
        logins: LoginLimits | None = None,
    ) -> None:
        self.keys, self.users, self.tokens = keys, users, tokens
        self.limits, self.audit = limits, audit
        self.config = tokens.config
        self.logins = logins or LoginLimits(limits.store, self.config)

    @classmethod
    def from_settings(
        cls, store: Store, settings: Settings, config: SecurityConfig | None = None
    ) -> Security:
        """JWT keys from `$DAFNCK_JWT_SECRET` or `<state_dir>/jwt_keys.json`; TOTP secrets
        encrypted with the data key (`$DAFNCK_DATA_KEY` or `<state_dir>/data.key`).

        Raises: ConfigError (unusable JWT keys).
        """
        config = config or SecurityConfig()
        cache = auth_cache(store)  # one listener for key records and token versions
        return cls(
            ApiKeys(store, cache),
            Users(store, KeyRing(settings.state_dir / "data.key"), config, cache=cache),
            TokenService(JwtKeyring.load(settings.state_dir), config),
            RateLimits(store, config),
            AuditLog(store, config.audit_max_entries, config.audit_retention_s),
        )

    def authenticate(self, credential: str) -> Principal:
        """The principal behind an API key or a bearer token (the part after "Bearer ").

        A token an API key minted stops working as soon as the key is revoked; a user's token
        as soon as the user is deleted, disabled or given a new password.

        Raises: Unauthorized (the message says why, never echoing the credential),
        StoreUnavailable.
        """
        if not credential:
            raise Unauthorized("no credential: send an API key or a bearer token")
        if credential.startswith(KEY_PREFIX):
            return self.keys.authenticate_api_key(credential)
        principal = self.tokens.verify_token(credential)
        if principal.key_id is None:  # a user's login minted it
            self.users.check_token(principal.tenant, principal.subject, principal.token_version)
        elif not self.keys.is_active(principal.key_id):
            raise Unauthorized(f"API key {principal.key_id!r} behind this token has been revoked")
        return principal

    def authenticate_cached(self, credential: str) -> Principal | None:
        """`authenticate` from this process's auth cache alone: no I/O, so an event loop may
        call it on every request and run `authenticate` (which fills the cache) in a worker
        thread only when this returns None (something it needs is not cached).

        Raises: Unauthorized (as `authenticate`).
        """
        if not credential:
            raise Unauthorized("no credential: send an API key or a bearer token")
        if credential.startswith(KEY_PREFIX):
            return self.keys.authenticate_cached(credential)
        principal = self.tokens.verify_token(credential)
        if principal.key_id is None:
            checked = self.users.check_token_cached(
                principal.tenant, principal.subject, principal.token_version
            )
            return principal if checked else None
        active = self.keys.is_active_cached(principal.key_id)
        if active is False:
            raise Unauthorized(f"API key {principal.key_id!r} behind this token has been revoked")
        return principal if active else None

    def token_endpoint(self, grant: Grant | Mapping[str, Any], source: str = "") -> TokenResponse:
        """OAuth2 token endpoint: `admit_login` then `issue_for` (the API runs the two apart).

        Raises: InputInvalid, Unauthorized, RateLimited, StoreUnavailable.
        """
        return self.issue_for(self.admit_login(grant, source), source)

    def admit_login(self, grant: Grant | Mapping[str, Any], source: str = "") -> Grant:
        """The validated grant, once a password grant is admitted by the login limits (no
        hashing here: cheap enough to answer a flood quickly).

        Raises: InputInvalid (malformed grant, naming fields, never values), RateLimited,
        StoreUnavailable.
        """
        if not isinstance(grant, PasswordGrant | ClientCredentialsGrant):
            try:
                grant = _GRANT.validate_python(grant)
            except ValidationError as exc:
                problems = [
                    f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
                ]
                raise InputInvalid("token request", problems) from None
        if isinstance(grant, PasswordGrant):
            self.logins.admit(grant.tenant, grant.username, source or "-")
        return grant

    def issue_for(self, grant: Grant, source: str = "") -> TokenResponse:
        """A token for an admitted grant: `password` (+ `totp_code`, the costly hash) or
        `client_credentials`; a failed password login delays the next from `source`.

        Raises: Unauthorized, StoreUnavailable.
        """
        if isinstance(grant, PasswordGrant):
            tenant, username = grant.tenant, grant.username
            try:
                principal = self.users.login(
                    tenant, username, grant.password.get_secret_value(), grant.totp_code
                )
            except Unauthorized:
                self.logins.failed(tenant, username, source or "-")
                raise
            self.logins.succeeded(tenant, username, source or "-")
        else:
            principal = self.keys.authenticate_api_key(grant.client_secret.get_secret_value())
            if grant.client_id is not None and grant.client_id != principal.key_id:
                raise Unauthorized("client_id does not name the key given as client_secret")
        ttl_s = min(grant.expires_in or self.config.token_ttl_s, self.config.max_token_ttl_s)
        token = self.tokens.issue_token(principal, ttl_s)
        return TokenResponse(access_token=token, expires_in=ttl_s)

    def check_rate(self, principal: Principal) -> None:
        """Raises: RateLimited (retry_after_s set), StoreUnavailable."""
        self.limits.check_rate(principal)

    def authorize(
        self, principal: Principal, action: Action | str, *, obj: str = "", request_id: str = ""
    ) -> None:
        """`authorize`, recording a denial in the principal's tenant's audit stream.

        Raises: Forbidden, StoreUnavailable.
        """
        try:
            authorize(principal, action)
        except Forbidden as exc:
            self.audit.record(
                principal, principal.tenant, str(action), obj, request_id, "denied", exc.message
            )
            raise

    @contextlib.contextmanager
    def audited(
        self, principal: Principal, action: Action | str, *, obj: str = "", request_id: str = ""
    ) -> Iterator[None]:
        """Authorize, run the block, and record one entry: "ok", "denied" or "failed".

        Raises: Forbidden, whatever the block raises, StoreUnavailable.
        """
        self.authorize(principal, action, obj=obj, request_id=request_id)
        try:
            yield
        except BaseException as exc:
            detail = exc.message if isinstance(exc, DafnckError) else type(exc).__name__
            self.audit.record(
                principal, principal.tenant, str(action), obj, request_id, "failed", detail
            )
            raise
        self.audit.record(principal, principal.tenant, str(action), obj, request_id, "ok")


__all__ = [
    "AuditLog",
    "Forbidden",
    "JwtKeyring",
    "RateLimited",
    "Security",
    "TokenService",
    "Unauthorized",
    "authorize",
    "is_allowed",
]
