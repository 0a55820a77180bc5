"""`dafnck auth`: bootstrap credentials straight into the store (no API needed).

The first admin key of a tenant can only come from here: `dafnck auth keys create --role
admin --name ops`. Secrets and TOTP enrolments are printed once and never again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cluster.auth.models import Role
from cluster.auth.security import Security
from cluster.settings import Settings, load_settings
from cluster.store import connect_store

auth_app = typer.Typer(help="Create and revoke API keys and users.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys: create (secret shown once), list, revoke.")
users_app = typer.Typer(
    help="Users: create, passwd (password prompted), totp, ls, disable, enable, delete."
)
auth_app.add_typer(keys_app, name="keys")
auth_app.add_typer(users_app, name="users")
console = Console()


class _Options:
    config: Path | None = None


@auth_app.callback()
def _options(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Settings YAML file.")
    ] = None,
) -> None:
    _Options.config = config


def _security() -> tuple[Security, Settings]:
    settings = load_settings(_Options.config)
    return Security.from_settings(connect_store(settings), settings), settings


TenantOpt = Annotated[str | None, typer.Option("--tenant", "-t", help="Default: settings'.")]


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option("--role", "-r", help="admin, operator, viewer or agent.")],
    name: Annotated[str, typer.Option("--name", "-n", help="What the key is for.")],
    tenant: TenantOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create an API key; its secret is printed once."""
    security, settings = _security()
    tenant = tenant or settings.tenant
    key_id, secret = security.keys.create_api_key(tenant, role, name)
    if as_json:
        typer.echo(json.dumps({"key_id": key_id, "secret": secret, "tenant": tenant}))
        return
    console.print(f"key [bold]{key_id}[/] ({role.value}) for tenant {tenant!r}")
    console.print("secret (shown once, store it now):")
    typer.echo(secret)


@keys_app.command("ls")
def keys_ls(tenant: TenantOpt = None) -> None:
    """List the tenant's keys (never their secrets)."""
    security, settings = _security()
    table = Table("key id", "role", "name", "created", "revoked")
    for key in security.keys.list_api_keys(tenant or settings.tenant):
        table.add_row(
            key.key_id, key.role.value, key.name, _when(key.created_at), _when(key.revoked_at)
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, tenant: TenantOpt = None) -> None:
    """Revoke a key at once (tokens it minted stop working too)."""
    security, settings = _security()
    info = security.keys.revoke_api_key(tenant or settings.tenant, key_id)
    console.print(f"revoked key {info.key_id} ({info.name})")


@users_app.command("create")
def users_create(  # the "" default password means: prompt for it  # nosec B107
    name: str,
    role: Annotated[Role, typer.Option("--role", "-r")],
    tenant: TenantOpt = None,
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)
    ] = "",
) -> None:
    """Create a user (the password is prompted); admins must enable TOTP to log in."""
    security, settings = _security()
    user = security.users.create_user(tenant or settings.tenant, name, password, role)
    console.print(f"created user {user.username!r} ({user.role.value}) in tenant {user.tenant!r}")


@users_app.command("totp")
def users_totp(name: str, tenant: TenantOpt = None) -> None:
    """Issue a TOTP secret; print the otpauth:// URI for an authenticator app (once)."""
    security, settings = _security()
    enrolment = security.users.enable_totp(tenant or settings.tenant, name)
    console.print("add this to an authenticator app (shown once):")
    typer.echo(enrolment.provisioning_uri)


@users_app.command("ls")
def users_ls(tenant: TenantOpt = None) -> None:
    """List the tenant's users (never a hash or a secret)."""
    security, settings = _security()
    table = Table("user", "role", "totp", "disabled", "created")
    for user in security.users.list_users(tenant or settings.tenant):
        table.add_row(user.username, user.role.value, user.totp,
                      "yes" if user.disabled else "-", _when(user.created_at))  # fmt: skip
    console.print(table)


@users_app.command("disable")
def users_disable(name: str, tenant: TenantOpt = None) -> None:
    """Disable a user: no login, and its tokens are refused at once."""
    security, settings = _security()
    security.users.set_disabled(tenant or settings.tenant, name, True)
    console.print(f"disabled user {name!r}; its tokens no longer work")


@users_app.command("enable")
def users_enable(name: str, tenant: TenantOpt = None) -> None:
    """Let a disabled user log in again (its old tokens stay void)."""
    security, settings = _security()
    security.users.set_disabled(tenant or settings.tenant, name, False)
    console.print(f"enabled user {name!r}")


@users_app.command("delete")
def users_delete(name: str, tenant: TenantOpt = None) -> None:
    """Delete a user; its tokens are refused at once."""
    security, settings = _security()
    security.users.delete_user(tenant or settings.tenant, name)
    console.print(f"deleted user {name!r}")


@users_app.command("passwd")
def users_passwd(  # the "" default password means: prompt for it  # nosec B107
    name: str,
    tenant: TenantOpt = None,
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True)
    ] = "",
) -> None:
    """Set a new password (prompted); every token the user holds stops working."""
    security, settings = _security()
    security.users.set_password(tenant or settings.tenant, name, password)
    console.print(f"new password set for {name!r}; its old tokens no longer work")


@auth_app.command("audit")
def audit(
    tenant: TenantOpt = None,
    principal: Annotated[str | None, typer.Option(help="Subject, e.g. key:<id>.")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. keys:manage.")] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, denied, failed, invalid.")] = None,
    since: Annotated[str | None, typer.Option(help="'15m', '2h', '7d' ago or unix s.")] = None,
    until: Annotated[str | None, typer.Option(help="As --since.")] = None,
    cursor: Annotated[str | None, typer.Option(help="'more: --cursor' of a page.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    unauthenticated: Annotated[bool, typer.Option(help="Per-minute 401 counts.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The tenant's audit trail, filtered (or its failed authentications)."""
    from cluster.auth.audit import AuditFilter
    from cluster.cli.audit import show_audit, show_unauthenticated, when

    security, settings = _security()
    tenant = tenant or settings.tenant
    if unauthenticated:
        show_unauthenticated(security, tenant, when(since), when(until), as_json)
        return
    where = AuditFilter(principal, action, outcome, when(since), when(until))
    show_audit(security, tenant, where, (cursor, limit), as_json)


def _when(ts: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


__all__ = ["auth_app"]
