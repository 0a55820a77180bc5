"""Data objects (create, get, update with optimistic concurrency, delete, query) and
backups of the tenant's state (create, list, restore).

An object's version is its ETag: `PATCH` needs `If-Match: <version>` and answers 409 when
another version is current, so two writers never overwrite each other unseen. Query
fields come as `field.<name>=<value>`; a value that parses as a JSON scalar (`3`, `2.5`,
`true`, `"7"`) is matched as that, anything else as a string.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from typing import Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict

from cluster.auth.models import Action
from cluster.data.models import BACKUP_ID, BackupCriteria, DataMetadata, DataQuery, Scalar
from cluster.data.restore import restore_audited
from cluster.errors import DafnckError, InputInvalid
from serve.deps import Caller, allowed
from serve.errors import ErrorResponse

router = APIRouter(tags=["data"])

ObjectId = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")


class PreconditionRequired(DafnckError):
    """An update without `If-Match`: the client must say which version it changes."""

    status_code = 428


class DataRequest(BaseModel):
    """A new data object: JSON `data` and its metadata."""

    model_config = ConfigDict(extra="forbid")

    data: Any
    metadata: DataMetadata


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


@router.post("/v1/data", status_code=201)
async def create_object(
    body: DataRequest,
    response: Response,
    caller: Caller = Depends(allowed(Action.DATA_WRITE)),  # noqa: B008
) -> dict[str, Any]:
    """Keep a new object at version 1. Raises: InputInvalid (422)."""
    async with caller.audit(Action.DATA_WRITE, obj=body.metadata.name):
        result = await asyncio.to_thread(
            caller.tenant_services.data.store, body.data, body.metadata
        )
    response.headers["Location"] = f"/v1/data/{result.id}"
    response.headers["ETag"] = f'"{result.version}"'
    return _dump(result)


@router.get("/v1/data/{object_id}")
async def get_object(
    response: Response,
    object_id: str = ObjectId,
    caller: Caller = Depends(allowed(Action.DATA_READ)),  # noqa: B008
) -> dict[str, Any]:
    """The latest version; its version is the ETag. Raises: NotFound."""
    found = await asyncio.to_thread(caller.tenant_services.data.get, object_id)
    response.headers["ETag"] = f'"{found.version}"'
    return _dump(found)


def _version(if_match: str | None) -> int:
    """The version in `If-Match` (`3`, `"3"` or `W/"3"`). Raises: PreconditionRequired,
    InputInvalid."""
    if if_match is None:
        raise PreconditionRequired(
            "an update needs 'If-Match: <version>' (the ETag of the object you read)"
        )
    text = if_match.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise InputInvalid("If-Match", [f"{if_match!r} is not an object version like '3'"])
    return int(text)


@router.patch(
    "/v1/data/{object_id}",
    responses={428: {"model": ErrorResponse, "description": "If-Match (the version) is missing"}},
)
async def update_object(
    response: Response,
    object_id: str = ObjectId,
    patch: dict[str, Any] = Body(description='{"data": merge patch, "metadata": {...}}'),  # noqa: B008
    if_match: str | None = Header(default=None),
    caller: Caller = Depends(allowed(Action.DATA_WRITE)),  # noqa: B008
) -> dict[str, Any]:
    """Merge `data` and/or `metadata` in (JSON merge patch) if the version still matches.

    Raises: PreconditionRequired (428), Conflict (409, another version), NotFound.
    """
    expected = _version(if_match)
    async with caller.audit(Action.DATA_WRITE, obj=object_id):
        result = await asyncio.to_thread(
            caller.tenant_services.data.update, object_id, patch, expected
        )
    response.headers["ETag"] = f'"{result.version}"'
    return _dump(result)


@router.delete("/v1/data/{object_id}")
async def delete_object(
    object_id: str = ObjectId,
    caller: Caller = Depends(allowed(Action.DATA_WRITE)),  # noqa: B008
) -> dict[str, Any]:
    """Remove the object and its files. Raises: NotFound."""
    async with caller.audit(Action.DATA_WRITE, obj=object_id):
        result = await asyncio.to_thread(caller.tenant_services.data.delete, object_id)
    return _dump(result)


def _check_cursor(cursor: str) -> None:
    """Refuse a page cursor (`[time, id]`, as `cluster.data.objects` writes it) whose time is not a
    finite number, before it becomes a bound of a Redis range. Raises: InputInvalid."""
    try:
        finite = math.isfinite(float(json.loads(base64.urlsafe_b64decode(cursor.encode()))[0]))
    except (ValueError, TypeError, IndexError, KeyError, binascii.Error):
        return  # not a cursor at all: the data store refuses it, naming it
    if not finite:
        raise InputInvalid("query", [f"cursor: {cursor!r} is not one this API returned"])


def _scalar(text: str) -> Scalar:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, bool | int | float | str) else text


@router.get("/v1/data")
async def query_objects(
    request: Request,
    name: str | None = None,
    kind: str | None = None,
    tag: list[str] = Query(default=[]),  # noqa: B008
    since: float | None = Query(
        default=None, allow_inf_nan=False, description="Created at or after (epoch s)"
    ),
    until: float | None = Query(
        default=None, allow_inf_nan=False, description="Created before (epoch s)"
    ),
    cursor: str | None = Query(default=None, max_length=200),
    limit: int = Query(default=50, ge=1, le=1000),
    include_data: bool = True,
    caller: Caller = Depends(allowed(Action.DATA_READ)),  # noqa: B008
) -> dict[str, Any]:
    """Objects matching every constraint (`field.<name>=<value>` too), newest first.

    Raises: InputInvalid (a malformed constraint or cursor).
    """
    fields = {
        k.removeprefix("field."): _scalar(v)
        for k, v in request.query_params.items()
        if k.startswith("field.")
    }
    try:
        query = DataQuery(
            name=name, kind=kind, tags=tag, fields=fields, created_since=since,
            created_before=until, limit=limit, cursor=cursor, include_data=include_data,
        )  # fmt: skip
    except ValueError as exc:  # pydantic's ValidationError is one
        raise InputInvalid("query", [str(exc)]) from None
    if cursor is not None:
        _check_cursor(cursor)
    page = await asyncio.to_thread(caller.tenant_services.data.retrieve, query)
    return _dump(page)


@router.post("/v1/backups", status_code=201)
async def create_backup(
    criteria: BackupCriteria | None = Body(default=None),  # noqa: B008
    caller: Caller = Depends(allowed(Action.BACKUPS_MANAGE)),  # noqa: B008
) -> dict[str, Any]:
    """Back up the tenant's keys (all, or those under `prefixes`)."""
    async with caller.audit(Action.BACKUPS_MANAGE, obj="backup"):
        result = await asyncio.to_thread(caller.tenant_services.data.backup, criteria)
    return _dump(result)


@router.get("/v1/backups")
async def list_backups(
    caller: Caller = Depends(allowed(Action.BACKUPS_MANAGE)),  # noqa: B008
) -> dict[str, Any]:
    """Complete backups of the tenant, newest first."""
    found = await asyncio.to_thread(caller.tenant_services.data.list_backups)
    return {"backups": [_dump(b) for b in found]}


@router.post("/v1/backups/{backup_id}/restore")
async def restore_backup(
    backup_id: str = Path(pattern=BACKUP_ID),
    into_empty: bool = Query(default=True, description="Refuse if the tenant has keys"),
    caller: Caller = Depends(allowed(Action.BACKUPS_RESTORE)),  # noqa: B008
) -> dict[str, Any]:
    """Write the backup's keys back under the tenant (admins only; audited before it starts).
    API keys, users, the audit and idempotency records stay as they are live.

    Raises: Forbidden (not an admin), NotFound, Conflict.
    """
    result = await asyncio.to_thread(
        restore_audited, caller.tenant_services.data, caller.services.security.audit, caller.principal,
        backup_id, into_empty=into_empty, request_id=caller.request_id,
    )  # fmt: skip
    return _dump(result)
