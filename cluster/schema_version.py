"""Which layout of the store this platform reads and writes, and moving an older one forward.

The store records its layout under `dafnck:_meta:schema` (an integer). `dafnck up` checks it
before anything else touches the store: an empty store gets today's version; an older one
is migrated one step at a time, after a backup of the keys the step changes (Redis DUMP
payloads in `<state_dir>/backups/schema-v<N>-<time>.jsonl`, restorable with RESTORE); a
newer one (written by a later DafnckMachine) is refused, naming both versions.

Stores written before the key existed are version 1. Version 2 keeps the Arrow tables of
step outputs out of band (`workflows/store.py`, `output_blobs`): the migration moves each
legacy `{"$arrow": path}` marker that sits exactly where version 1 wrote it for that
execution and step into the tenant's outputs; any other marker stays the plain dict it is.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


def ensure_schema(client: redis.Redis, settings: Settings) -> list[int]:
    """Bring the store to `CURRENT`; returns the versions migrated from (empty: none).

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
        step = MIGRATIONS[version]
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


# -- 1 -> 2: Arrow tables out of band ----------------------------------------------------


def _execution_keys(client: redis.Redis) -> list[str]:
    return [
        str(k)
        for k in client.scan_iter(match="dafnck:*:exec:*", count=1000)
        if str(k).count(":") == 3 and client.type(k) in ("hash", b"hash")
    ]


def _markers(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[list[Any], str]]:
    if isinstance(value, dict):
        if set(value) == {"$arrow"} and isinstance(value["$arrow"], str):
            yield list(path), value["$arrow"]
            return
        for k, v in value.items():
            yield from _markers(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _markers(v, (*path, i))


def _legacy_key(execution_id: str, step_id: str, path: list[Any]) -> str:
    """Where (under the blob root) version 1 wrote the table at `path` of the step's output."""
    return f"{execution_id}/{step_id}" + "".join(f".{p}" for p in path) + ".parquet"


def _arrow_out_of_band(client: redis.Redis, settings: Settings) -> None:
    from workflows.store import BLOBS_FIELD, BlobStore

    legacy = BlobStore(settings.blobs)
    for key in _execution_keys(client):
        tenant, execution_id = key.split(":")[1], key.split(":")[3]
        outputs = BlobStore(settings.blobs).scoped(tenant, "outputs")
        for field, raw in client.hgetall(key).items():
            if not str(field).startswith("step:"):
                continue
            step_id, record = str(field)[5:], json.loads(raw)
            refs = list(record.get(BLOBS_FIELD) or [])
            for path, where in list(_markers(record.get("output"))):
                legacy_key = _legacy_key(execution_id, step_id, path)
                if where != f"{settings.blobs.rstrip('/')}/{legacy_key}":
                    continue  # not what version 1 wrote here: an agent's own dict
                table = legacy.get(legacy_key)
                stored = outputs.put(f"{execution_id}/{step_id}/{len(refs)}", table)
                record["output"] = _emptied(record["output"], path)
                refs.append([path, stored])
            if refs:
                record[BLOBS_FIELD] = refs
                client.hset(key, field, json.dumps(record))


def _emptied(output: Any, path: list[Any]) -> Any:
    if not path:
        return None
    parent = output
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = None
    return output


#: Migration from version N to N + 1.
MIGRATIONS = {1: Migration(_execution_keys, _arrow_out_of_band)}
