"""`dafnck auth audit`: the tenant's audit trail and its failed authentications, read straight
from the store (the operator's view; admins have `GET /v1/audit`)."""

from __future__ import annotations

import json
import re
import time

import typer
from rich.console import Console
from rich.table import Table

from cluster.auth.audit import AuditFilter
from cluster.auth.security import Security

console = Console()
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def when(value: str | None, now: float | None = None) -> float | None:
    """A time from "15m"/"2h"/"7d" ago, or unix seconds. Raises: typer.BadParameter."""
    if value is None:
        return None
    match = _AGO.match(value.strip())
    if match:
        return (now or time.time()) - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r}: use a duration ago like '15m' or unix seconds"
        ) from None


def show_audit(
    security: Security,
    tenant: str,
    where: AuditFilter,
    page_at: tuple[str | None, int],
    as_json: bool,
) -> None:
    """Print one page of entries, oldest first (`page_at`: cursor and limit)."""
    cursor, limit = page_at
    page = security.audit.list(tenant, cursor, limit, where)
    if as_json:
        typer.echo(page.model_dump_json())
        return
    table = Table("time", "subject", "role", "action", "object", "outcome", "request", "detail")
    for e in page.entries:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.ts))
        table.add_row(stamp, e.subject, e.role, e.action, e.object, e.outcome,
                      e.request_id[:12], e.detail[:60])  # fmt: skip
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {page.next_cursor}")


def show_unauthenticated(
    security: Security, tenant: str, since: float | None, until: float | None, as_json: bool
) -> None:
    """Print the per-minute counters of failed authentications."""
    counts = security.audit.unauthenticated(tenant, since, until)
    if as_json:
        typer.echo(json.dumps([c.model_dump() for c in counts]))
        return
    table = Table("minute", "key id", "source", "401s")
    for c in counts:
        minute = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.minute))
        table.add_row(minute, c.key_id, c.source, str(c.count))
    console.print(table)


__all__ = ["show_audit", "show_unauthenticated", "when"]
