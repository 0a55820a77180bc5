"""The store's layout migrations that change workflow records (`cluster.schema_version`).

1 -> 2: Arrow tables of step outputs out of band (`workflows/store.py`, `output_blobs`): each
legacy `{"$arrow": path}` marker that sits exactly where version 1 wrote it for that
execution and step moves into the tenant's outputs; any other marker stays the plain dict
it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import redis

from cluster.schema_version import Migration
from cluster.settings import Settings
from workflows.store import BLOBS_FIELD, BlobStore


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


__all__ = ["MIGRATIONS"]
