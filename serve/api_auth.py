"""Credentials over HTTP: the OAuth2 token endpoint, API keys and users.

`POST /v1/auth/token` takes a form (as OAuth2 clients send it) or JSON: the `password`
grant (with `totp_code` when the user has TOTP on) or `client_credentials` with an API
key as `client_secret`. Keys and users are managed within the caller's own tenant: an
API key's secret is in the answer that creates it and never again.

Logins cannot starve the other routes: a password grant is admitted by the login limits
(per address, per username, a delay per both) before any hashing, and argon2 runs on a small
pool of its own (`LOGIN_WORKERS` threads, at most `MAX_WAITING_LOGINS` waiting per replica),
never on the default executor every route's Redis calls share. Measured before: 30
concurrent bad logins pushed `GET /v1/agents` from ~20 ms to ~7 s.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cluster.auth.models import (
    USERNAME,
    Action,
    ApiKeyInfo,
    Role,
    TokenResponse,
    TotpEnrolment,
    UserInfo,
)
from cluster.errors import InputInvalid, RateLimited
from serve.deps import Caller, Services, allowed, services

router = APIRouter(tags=["auth"])
T = TypeVar("T")
#: Threads that hash passwords: argon2id (64 MiB, t=3) costs ~0.25 s of one core, so hashing
#: may take at most half the cores (one on the 2-core test machine, two from four cores).
LOGIN_WORKERS = max(1, min(2, (os.cpu_count() or 2) // 2))
#: Hashing calls a replica queues before it answers 429 instead.
MAX_WAITING_LOGINS = 32
_hashing: ThreadPoolExecutor | None = None
_hashing_calls = 0


async def on_hashing_pool(call: Callable[..., T], *args: Any) -> T:
    """Run a password hash (or anything that does one) on the hashing pool.

    Raises: RateLimited (the pool's queue is full), whatever `call` raises.
    """
    global _hashing, _hashing_calls
    if _hashing_calls >= MAX_WAITING_LOGINS:
        raise RateLimited(
            f"{MAX_WAITING_LOGINS} logins are in progress on this API replica; retry in 1 s", 1.0
        )
    if _hashing is None:
        _hashing = ThreadPoolExecutor(LOGIN_WORKERS, thread_name_prefix="dafnck-hash")
    _hashing_calls += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_hashing, call, *args)
    finally:
        _hashing_calls -= 1


_TOKEN_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}


class KeyCreateRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    name: str = Field(min_length=1, max_length=100)


class KeyCreateResponse(BaseModel):
    key_id: str
    #: Shown once: store it now.
    secret: str
    tenant: str
    role: Role
    name: str


class UserCreateRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str = Field(pattern=USERNAME)
    password: SecretStr
    role: Role


class PasswordChangeRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    password: SecretStr


async def _grant(request: Request) -> dict[str, Any]:
    """The token request as a mapping. Raises: InputInvalid (not a form nor a JSON object)."""
    raw = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "application/x-www-form-urlencoded":
            return dict(parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=False))
        data = json.loads(raw or b"null")
    except (UnicodeDecodeError, ValueError):
        raise InputInvalid("token request", ["body: not a form nor JSON"]) from None
    if not isinstance(data, dict):
        raise InputInvalid("token request", ["body: expected a form or a JSON object"])
    return data


@router.post("/v1/auth/token", response_model=TokenResponse, openapi_extra=_TOKEN_BODY)
async def token(request: Request, svc: Services = Depends(services)) -> TokenResponse:  # noqa: B008
    """OAuth2 token endpoint (no credential needed: the grant is the credential).

    A password login over its limits answers 429 with `Retry-After` before any hashing.
    """
    source = request.client.host if request.client else "-"
    admitted = await asyncio.to_thread(svc.security.admit_login, await _grant(request), source)
    return await on_hashing_pool(svc.security.issue_for, admitted, source)


@router.post("/v1/keys", status_code=201, response_model=KeyCreateResponse)
async def create_key(
    body: KeyCreateRequest,
    who: Caller = Depends(allowed(Action.KEYS_MANAGE)),  # noqa: B008
) -> KeyCreateResponse:
    async with who.audit(Action.KEYS_MANAGE, obj=f"key:{body.name}"):
        key_id, secret = await asyncio.to_thread(
            who.services.security.keys.create_api_key, who.tenant, body.role, body.name
        )
    return KeyCreateResponse(
        key_id=key_id, secret=secret, tenant=who.tenant, role=body.role, name=body.name
    )


@router.get("/v1/keys", response_model=list[ApiKeyInfo])
async def list_keys(
    who: Caller = Depends(allowed(Action.KEYS_MANAGE)),  # noqa: B008
) -> list[ApiKeyInfo]:
    return await asyncio.to_thread(who.services.security.keys.list_api_keys, who.tenant)


@router.delete("/v1/keys/{key_id}", response_model=ApiKeyInfo)
async def revoke_key(
    key_id: str,
    who: Caller = Depends(allowed(Action.KEYS_MANAGE)),  # noqa: B008
) -> ApiKeyInfo:
    async with who.audit(Action.KEYS_MANAGE, obj=f"key:{key_id}"):
        return await asyncio.to_thread(
            who.services.security.keys.revoke_api_key, who.tenant, key_id
        )


@router.post("/v1/users", status_code=201, response_model=UserInfo)
async def create_user(
    body: UserCreateRequest,
    who: Caller = Depends(allowed(Action.USERS_MANAGE)),  # noqa: B008
) -> UserInfo:
    users = who.services.security.users
    async with who.audit(Action.USERS_MANAGE, obj=f"user:{body.username}"):
        return await on_hashing_pool(
            users.create_user,
            who.tenant,
            body.username,
            body.password.get_secret_value(),
            body.role,
        )


@router.post("/v1/users/{username}/totp", response_model=TotpEnrolment)
async def enable_totp(
    username: str,
    who: Caller = Depends(allowed(Action.USERS_MANAGE)),  # noqa: B008
) -> TotpEnrolment:
    """Issue a TOTP secret (shown once); the user's next login with a code activates it."""
    users = who.services.security.users
    async with who.audit(Action.USERS_MANAGE, obj=f"user:{username}"):
        return await asyncio.to_thread(users.enable_totp, who.tenant, username)


@router.get("/v1/users", response_model=list[UserInfo])
async def list_users(
    who: Caller = Depends(allowed(Action.USERS_MANAGE)),  # noqa: B008
) -> list[UserInfo]:
    return await asyncio.to_thread(who.services.security.users.list_users, who.tenant)


@router.put("/v1/users/{username}/password", response_model=UserInfo)
async def set_password(
    username: str,
    body: PasswordChangeRequest,
    who: Caller = Depends(allowed(Action.USERS_MANAGE)),  # noqa: B008
) -> UserInfo:
    """Give the user a new password: every token the user holds stops working at once."""
    users = who.services.security.users
    async with who.audit(Action.USERS_MANAGE, obj=f"user:{username}"):
        return await on_hashing_pool(
            users.set_password, who.tenant, username, body.password.get_secret_value()
        )


@router.post("/v1/users/{username}/disable", response_model=UserInfo)
async def disable_user(
    username: str,
    who: Caller = Depends(allowed(Action.USERS_MANAGE)),  # noqa: B008
) -> UserInfo:
    """The user can no longer log in, and its tokens are refused at once."""
    users = who.services.security.users
    async with who.audit(Action.USERS_MANAGE, obj=f"user:{username}"):
        return await asyncio.to_thread(users.set_disabled, who.tenant, username, True)


@router.post("/v1/users/{username}/enable", response_model=UserInfo)
async def enable_user(
    username: str,
    who: Caller = Depends(allowed(Action.USERS_MANAGE)),  # noqa: B008
) -> UserInfo:
    """The user may log in again (tokens from before it was disabled stay void)."""
    users = who.services.security.users
    async with who.audit(Action.USERS_MANAGE, obj=f"user:{username}"):
        return await asyncio.to_thread(users.set_disabled, who.tenant, username, False)


@router.delete("/v1/users/{username}", status_code=204, response_class=Response)
async def delete_user(
    username: str,
    who: Caller = Depends(allowed(Action.USERS_MANAGE)),  # noqa: B008
) -> Response:
    """Remove the account; its tokens are refused at once."""
    users = who.services.security.users
    async with who.audit(Action.USERS_MANAGE, obj=f"user:{username}"):
        await asyncio.to_thread(users.delete_user, who.tenant, username)
    return Response(status_code=204)
