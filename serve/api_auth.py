"""Credentials over HTTP: the OAuth2 token endpoint, API keys and users.

`POST /v1/auth/token` takes a form (as OAuth2 clients send it) or JSON: the `password`
grant (with `totp_code` when the user has TOTP on) or `client_credentials` with an API
key as `client_secret`. Keys and users are managed within the caller's own tenant: an
API key's secret is in the answer that creates it and never again.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cluster.errors import InputInvalid
from cluster.security_models import (
    USERNAME,
    Action,
    ApiKeyInfo,
    Role,
    TokenResponse,
    TotpEnrolment,
    UserInfo,
)
from serve.deps import Caller, Services, allowed, services

router = APIRouter(tags=["auth"])

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
    """OAuth2 token endpoint (no credential needed: the grant is the credential)."""
    grant = await _grant(request)
    return await asyncio.to_thread(svc.security.token_endpoint, grant)


@router.post("/v1/keys", status_code=201, response_model=KeyCreateResponse)
async def create_key(
    body: KeyCreateRequest,
    who: Caller = Depends(allowed(Action.KEYS_MANAGE)),  # noqa: B008
) -> KeyCreateResponse:
    with who.audited(Action.KEYS_MANAGE, obj=f"key:{body.name}"):
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
    with who.audited(Action.KEYS_MANAGE, obj=f"key:{key_id}"):
        return await asyncio.to_thread(
            who.services.security.keys.revoke_api_key, who.tenant, key_id
        )


@router.post("/v1/users", status_code=201, response_model=UserInfo)
async def create_user(
    body: UserCreateRequest,
    who: Caller = Depends(allowed(Action.USERS_MANAGE)),  # noqa: B008
) -> UserInfo:
    users = who.services.security.users
    with who.audited(Action.USERS_MANAGE, obj=f"user:{body.username}"):
        return await asyncio.to_thread(
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
    with who.audited(Action.USERS_MANAGE, obj=f"user:{username}"):
        return await asyncio.to_thread(users.enable_totp, who.tenant, username)
