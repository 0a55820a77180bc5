"""The audit trail: one Redis stream per tenant, an entry per audited call, denials included.

Redis: `dafnck:<tenant>:audit` (stream; fields of `AuditEntry` but `id`, capped with
`MAXLEN ~ audit_max_entries`).
"""

from __future__ import annotations

import re
import time

from cluster.errors import InputInvalid
from cluster.security_models import AuditEntry, AuditOutcome, AuditPage, Principal
from cluster.store import Store, unavailable_as_error

MAX_PAGE = 1000
_CURSOR = re.compile(r"^\d{1,20}-\d{1,20}$")


class AuditLog:
    """Append and page through audit entries; the tenant is explicit on every call."""

    def __init__(self, store: Store, max_entries: int = 1_000_000) -> None:
        self.store = store
        self._max_entries = max_entries

    def _stream(self, tenant: str) -> str:
        return self.store.for_tenant(tenant).key("audit")

    @unavailable_as_error
    def record(
        self,
        principal: Principal | None,
        tenant: str,
        action: str,
        obj: str = "",
        request_id: str = "",
        outcome: AuditOutcome = "ok",
        detail: str = "",
    ) -> str:
        """Append one entry (principal None: the caller was not authenticated); returns its id.

        Raises: StoreUnavailable.
        """
        fields = {
            "ts": repr(time.time()),
            "tenant": tenant,
            "subject": principal.subject if principal else "anonymous",
            "kind": principal.kind if principal else "",
            "role": principal.role.value if principal else "",
            "key_id": (principal.key_id or "") if principal else "",
            "action": action,
            "object": obj,
            "request_id": request_id,
            "outcome": outcome,
            "detail": detail,
        }
        entry_id: str = self.store.redis.xadd(
            self._stream(tenant), fields, maxlen=self._max_entries, approximate=True
        )
        return entry_id

    @unavailable_as_error
    def list(self, tenant: str, cursor: str | None = None, limit: int = 100) -> AuditPage:
        """Entries oldest first, after `cursor` (an entry id from a previous page).

        Raises: InputInvalid (limit outside 1..1000 or a malformed cursor), StoreUnavailable.
        """
        problems = []
        if not 1 <= limit <= MAX_PAGE:
            problems.append(f"limit {limit!r} must be in 1..{MAX_PAGE}")
        if cursor is not None and not _CURSOR.match(cursor):
            problems.append(f"cursor {cursor!r} is not an entry id like '1700000000000-0'")
        if problems:
            raise InputInvalid("audit query", problems)
        start = f"({cursor}" if cursor else "-"
        raw = self.store.redis.xrange(self._stream(tenant), min=start, max="+", count=limit + 1)
        entries = [AuditEntry(id=eid, **fields) for eid, fields in raw[:limit]]
        more = len(raw) > limit
        return AuditPage(entries=entries, next_cursor=entries[-1].id if more else None)
