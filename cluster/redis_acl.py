"""Redis ACL users per tenant: a tenant's supervisor and replicas reach only its own keys.

Every key of a tenant is `dafnck:<tenant>:...` and so is every pub/sub channel (see
`Store.key`). The platform (API, CLI, `dafnck up`) keeps the admin connection; before it
starts a tenant's supervisor it makes (or updates, idempotently) the ACL user
`dafnck-<tenant>`:

    on >pw resetkeys ~dafnck:<tenant>:* resetchannels &dafnck:<tenant>:* +@all -@admin -@dangerous

so another tenant's keys, the global keys (`dafnck:_auth:*`, `dafnck:_limits:*`, the
passwords below) and commands such as KEYS, FLUSHDB, CONFIG, ACL SETUSER answer NOPERM.

Passwords are random (256 bits), made once per tenant and kept in the admin-only hash
`dafnck:_acl:passwords` (tenant -> password): no platform secret to share, they survive a
restart with the data (AOF), and any admin process can make the user again after the
server lost it (a Redis without an ACL file). Where an ACL file is configured (the
embedded Valkey's `users.acl`) the users are saved with `ACL SAVE`.
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import redis

from cluster.errors import ConfigError, StoreUnavailable
from cluster.store import redacted

log = logging.getLogger(__name__)

#: Admin-only hash: tenant -> its ACL user's password.
PASSWORDS_KEY = "dafnck:_acl:passwords"
#: What every tenant user may run: everything but administration and the commands Redis
#: marks dangerous (KEYS, FLUSHDB, INFO, CONFIG, DEBUG, MONITOR, ACL SETUSER, ...).
COMMANDS = ("+@all", "-@admin", "-@dangerous")


def user_name(tenant: str) -> str:
    return f"dafnck-{tenant}"


def tenant_rules(tenant: str, password: str) -> list[str]:
    """The ACL SETUSER rules of the tenant's user (`reset` first: the result is exact)."""
    prefix = f"dafnck:{tenant}:"
    return ["reset", "on", f">{password}", f"~{prefix}*", f"&{prefix}*", *COMMANDS]


def ensure_tenant_user(admin: redis.Redis, tenant: str) -> str:
    """Make or update the tenant's ACL user through an admin connection; its password.

    Raises:
        ConfigError: the connection's user may not manage ACL users (or the server has no
            ACLs): use an admin URL, or set `redis_tenant_acl: false`.
        StoreUnavailable: the server cannot be reached.
    """
    try:
        admin.hsetnx(PASSWORDS_KEY, tenant, secrets.token_urlsafe(32))
        raw = admin.hget(PASSWORDS_KEY, tenant)
        password = raw.decode() if isinstance(raw, bytes) else str(raw)
        admin.execute_command("ACL", "SETUSER", user_name(tenant), *tenant_rules(tenant, password))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(
            f"Redis is unreachable while making tenant {tenant!r}'s user: {exc}"
        ) from None
    except redis.ResponseError as exc:
        raise ConfigError(
            f"cannot make the Redis ACL user of tenant {tenant!r}: {exc}; the platform's "
            "redis_url must name a user allowed to run ACL SETUSER, or set "
            "redis_tenant_acl: false where the Redis service manages its users itself"
        ) from None
    _save_acl(admin)
    return password


def _save_acl(admin: redis.Redis) -> None:
    """`ACL SAVE` where the server keeps its users in a file (else users live in memory)."""
    try:
        admin.execute_command("ACL", "SAVE")
    except redis.ResponseError as exc:  # no aclfile: the next start makes the user again
        log.debug("ACL SAVE not available: %s", exc)


def with_credentials(url: str, username: str, password: str) -> str:
    """`url` with its user and password replaced (redis:// and rediss:// URLs).

    Raises:
        ConfigError: a unix-socket URL (give it the tenant user yourself, or turn
            `redis_tenant_acl` off).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(
            f"redis_url {redacted(url)!r}: tenant ACL users need a redis:// or rediss:// URL; "
            "set redis_tenant_acl: false to use this one for every process"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def without_credentials(url: str) -> str:
    """`url` with no user or password: where the store is, never how to enter it."""
    parts = urlsplit(url)
    if not parts.hostname:
        return redacted(url)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, parts.query, parts.fragment))


def tenant_url(admin_url: str, tenant: str, *, connect_timeout_s: float = 2.0) -> str:
    """The URL the tenant's supervisor and replicas use: its ACL user on the same server.

    Raises:
        ConfigError, StoreUnavailable: see `ensure_tenant_user` and `with_credentials`.
    """
    admin = redis.Redis.from_url(
        admin_url, socket_connect_timeout=connect_timeout_s, socket_timeout=connect_timeout_s * 3
    )
    try:
        password = ensure_tenant_user(admin, tenant)
    finally:
        admin.close()
    return with_credentials(admin_url, user_name(tenant), password)
