"""Restoring a backup into a live tenant, as an admin, on the record.

A restore replaces a tenant's state at once, so it is an admin action (`backups:restore`,
which operators do not hold), and it is written to the tenant's audit before anything is
touched ("started"), then again with how it ended ("ok" or "failed"): a restore that
crashes half way still shows who began it. What it never touches (credentials, the audit,
idempotency records) is decided in `cluster.data.backup`.
"""

from __future__ import annotations

import getpass
from typing import TYPE_CHECKING

from cluster.auth.models import Action, Principal, Role
from cluster.errors import DafnckError

if TYPE_CHECKING:
    from cluster.auth.audit import AuditLog
    from cluster.data.models import RestoreResult
    from cluster.data.objects import DataManager


def restore_audited(
    data: DataManager,
    audit: AuditLog,
    principal: Principal,
    backup_id: str,
    *,
    into_empty: bool = True,
    request_id: str = "",
) -> RestoreResult:
    """Record the restore in the principal's tenant's audit, run it, record how it ended.

    Raises: whatever `DataManager.restore` raises (NotFound, InputInvalid, Conflict,
    StoreUnavailable), StoreUnavailable (the audit cannot be written: nothing is restored).
    """
    action, tenant = str(Action.BACKUPS_RESTORE), principal.tenant
    mode = "into an empty tenant" if into_empty else "over the tenant's keys"
    audit.record(principal, tenant, action, backup_id, request_id, "started", mode)
    try:
        result = data.restore(backup_id, into_empty=into_empty)
    except BaseException as exc:
        detail = exc.message if isinstance(exc, DafnckError) else type(exc).__name__
        audit.record(principal, tenant, action, backup_id, request_id, "failed", detail)
        raise
    detail = f"{result.keys} keys restored; {result.skipped_keys} security records left as they are"
    audit.record(principal, tenant, action, backup_id, request_id, "ok", detail)
    return result


def operator_principal(tenant: str) -> Principal:
    """Who runs `dafnck restore`: the machine's user, who holds the store's own credentials."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Principal(subject=f"cli:{user}"[:200], tenant=tenant, role=Role.ADMIN, kind="user")


__all__ = ["operator_principal", "restore_audited"]
