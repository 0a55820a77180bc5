"""The audit log on a real Valkey: one principal's flood evicts only its own entries, entries
age out, filters and cursors page across principals, and 401s are counted, not stored."""

from __future__ import annotations

import hashlib
import time

import pytest

from cluster.auth.audit import AuditFilter, AuditLog
from cluster.auth.keys import AUTH_SPACE, ApiKeys
from cluster.auth.models import Principal, Role
from cluster.errors import InputInvalid
from cluster.logs import log_context
from cluster.store import Store


def who(name: str, role: Role = Role.VIEWER, tenant: str = "acme") -> Principal:
    return Principal(subject=name, tenant=tenant, role=role, kind="user")


def test_one_principals_flood_evicts_only_its_own_history(store: Store) -> None:
    audit = AuditLog(store, max_entries=50)
    admin_id = audit.record(who("admin", Role.ADMIN), "acme", "keys:manage", "key:k", "r0")
    for i in range(200):
        audit.record(who("noisy"), "acme", "agents:write", f"a{i}", f"n{i}", "denied")
    [admin_entry] = audit.list("acme", where=AuditFilter(principal="admin")).entries
    assert admin_entry.id == admin_id and admin_entry.object == "key:k"
    noisy = audit.list("acme", limit=1000, where=AuditFilter(principal="noisy")).entries
    # MAXLEN ~ trims whole nodes: about the cap is kept, never the whole flood.
    assert 50 <= len(noisy) < 200
    assert noisy[-1].object == "a199"


def test_entries_older_than_the_retention_are_trimmed(store: Store) -> None:
    audit = AuditLog(store, retention_s=3600)
    stream = store.for_tenant("acme").key("audit", "p", hashlib.sha256(b"v").hexdigest()[:16])
    # An entry written two hours ago, as the clock then would have named it.
    old_ms = int((time.time() - 7200) * 1000)
    store.redis.xadd(stream, {"ts": "0", "tenant": "acme", "subject": "v", "kind": "user",
                     "role": "viewer", "action": "x", "object": "old", "outcome": "ok"},
                     id=f"{old_ms}-0")  # fmt: skip
    for i in range(150):
        audit.record(who("v"), "acme", "agents:write", f"fresh-{i}")
    entries = audit.list("acme", limit=1000).entries
    assert len(entries) == 150 and entries[0].object == "fresh-0"
    assert 0 < store.redis.ttl(stream) <= 3600


def test_filters_and_cursors_page_across_principals(store: Store) -> None:
    audit = AuditLog(store)
    ids = []
    for i in range(6):
        principal = who("alice" if i % 2 else "bob", Role.OPERATOR)
        outcome = "denied" if i == 3 else "ok"
        ids.append(audit.record(principal, "acme", f"data:write{i % 3}", f"o{i}", "", outcome))
    pages, cursor = [], None
    while True:
        page = audit.list("acme", cursor=cursor, limit=4)
        pages.append([e.object for e in page.entries])
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == [["o0", "o1", "o2", "o3"], ["o4", "o5"]]
    only = audit.list("acme", where=AuditFilter(principal="alice", outcome="ok")).entries
    assert [e.object for e in only] == ["o1", "o5"]
    assert [e.object for e in audit.list("acme", where=AuditFilter(action="data:write0")).entries] == [
        "o0", "o3"
    ]  # fmt: skip
    later = float(ids[4].split("-")[0]) / 1000
    assert [e.object for e in audit.list("acme", where=AuditFilter(since=later)).entries][
        -1
    ] == "o5"
    assert audit.list("acme", where=AuditFilter(until=later - 3600)).entries == []
    assert audit.list("other").entries == []
    with pytest.raises(InputInvalid, match=r"since .* is after until"):
        audit.list("acme", where=AuditFilter(since=2.0, until=1.0))


def test_the_clients_request_id_is_kept_apart_from_the_servers(store: Store) -> None:
    audit = AuditLog(store)
    with log_context(request_id="server-1", client_request_id="spoofed"):
        audit.record(who("v"), "acme", "agents:write", "a", "server-1", "denied")
    [entry] = audit.list("acme").entries
    assert (entry.request_id, entry.client_request_id) == ("server-1", "spoofed")


def test_failed_authentications_are_counted_per_minute_key_and_source(store: Store) -> None:
    audit = AuditLog(store)
    key_id, secret = ApiKeys(store).create_api_key("acme", Role.AGENT, "worker")
    wrong = f"dk_{key_id}_{'x' * 43}"
    for _ in range(3):
        audit.record_failed_authentication(wrong, "10.0.0.7")
    audit.record_failed_authentication("dk_0123456789abcdef_" + "y" * 43, "10.0.0.8")
    audit.record_failed_authentication("garbage", "10.0.0.8")
    audit.record_failed_authentication(None, "10.0.0.9")
    [counted] = audit.unauthenticated("acme")
    assert (counted.key_id, counted.source, counted.count) == (key_id, "10.0.0.7", 3)
    platform = {(c.key_id, c.source): c.count for c in audit.unauthenticated(AUTH_SPACE)}
    # An unknown key id is not kept: a caller could otherwise grow the counters at will.
    assert platform == {("-", "10.0.0.8"): 2, ("-", "10.0.0.9"): 1}
    assert audit.list("acme").entries == []  # counted, never one entry per 401
    assert secret not in str(store.redis.keys("*"))
