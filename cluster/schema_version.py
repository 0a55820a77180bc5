"""Which layout of the store this platform reads and writes, and moving an older one forward.

The store records its layout under `dafnck:_meta:schema` (an integer). `dafnck up` checks it
before anything else touches the store: an empty store gets today's version; an older one
is migrated one step at a time, after a backup of the keys the step changes (Redis DUMP
payloads in `<state_dir>/backups/schema-v<N>-<time>.jsonl`, restorable with RESTORE); a
newer one (written by a later DafnckMachine) is refused, naming both versions.

Stores written before the key existed are version 1. The steps themselves change records
that the packages above this floor own, so they live with them (`workflows/migrations.py`)
and `dafnck up` hands them to `ensure_schema`.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import redis

from cluster.errors import ConfigError
from cluster.settings import Settings

SCHEMA_KEY = "dafnck:_meta:schema"
#: The layout this version of the platform reads and writes.
CURRENT = 2


def platform_version() -> str:
    """The installed dafnck-machine version (what wrote the store is named by it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dafnck-machine")
    except PackageNotFoundError:
        return "unknown"


def stored_version(client: redis.Redis) -> int | None:
    """The store's layout version: None for an empty store, 1 for one written before it
    was recorded."""
    raw = client.get(SCHEMA_KEY)
    if raw is not None:
        return int(raw)
    return 1 if next(client.scan_iter(match="dafnck:*", count=1000), None) else None


def ensure_schema(
    client: redis.Redis, settings: Settings, migrations: Mapping[int, Migration]
) -> list[int]:
    """Bring the store to `CURRENT` with `migrations` (version N -> N + 1); returns the
    versions migrated from (empty: none).

    Raises:
        ConfigError: the store was written by a newer layout than this platform knows.
    """
    found = stored_version(client)
    if found is None:
        _record(client, CURRENT)
        return []
    if found > CURRENT:
        raise ConfigError(
            f"the store at {SCHEMA_KEY} has schema version {found}, written by a newer "
            f"DafnckMachine; this one ({platform_version()}) reads schema {CURRENT}: "
            "upgrade dafnck-machine, or point DAFNCK_REDIS_URL at another store"
        )
    migrated = []
    for version in range(found, CURRENT):
        step = migrations[version]
        backup(client, settings, version, step.keys(client))
        step.run(client, settings)
        _record(client, version + 1)
        migrated.append(version)
    return migrated


def _record(client: redis.Redis, version: int) -> None:
    client.set(SCHEMA_KEY, version)
    client.hset(
        "dafnck:_meta:written_by", mapping={"schema": version, "version": platform_version()}
    )


def backup(client: redis.Redis, settings: Settings, version: int, keys: list[str]) -> Path:
    """DUMP `keys` to a 0600 JSON-lines file under `<state_dir>/backups`; returns its path."""
    directory = settings.state_dir / "backups"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"schema-v{version}-{int(time.time())}.jsonl"
    with open(path, "w", opener=lambda p, flags: os.open(p, flags, 0o600)) as out:
        for key in keys:
            payload = client.dump(key)  # bytes: DUMP is never decoded
            if payload is not None:
                dumped = base64.b64encode(payload).decode()  # type: ignore[arg-type]
                out.write(json.dumps({"key": key, "dump": dumped}) + "\n")
    return path


class Migration:
    """One step forward: the keys it changes (backed up first) and the change itself."""

    def __init__(
        self,
        keys: Callable[[redis.Redis], list[str]],
        run: Callable[[redis.Redis, Settings], None],
    ) -> None:
        self.keys, self.run = keys, run
