"""The tenant's webhook signing secret, for admins (receivers verify signatures with it)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from actors.webhooks import signing_secret
from cluster.auth.models import Action
from serve.deps import Caller, allowed

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
#: The audit entry's object when the secret is read (a name, not a secret).
SECRET_READ = "webhooks:secret:read"  # noqa: S105  # nosec B105


class SecretResponse(BaseModel):
    secret: str
    scheme: str = "Standard Webhooks: webhook-signature = v1,<base64 HMAC-SHA256>"


@router.get("/secret", response_model=SecretResponse)
async def webhook_secret(
    who: Caller = Depends(allowed(Action.KEYS_MANAGE)),  # noqa: B008
) -> SecretResponse:
    """The secret signing this tenant's execution webhooks (created on first use)."""
    store = who.services.store.for_tenant(who.tenant)
    async with who.audit(Action.KEYS_MANAGE, obj=SECRET_READ):  # a read of a secret is audited
        secret = await asyncio.to_thread(signing_secret, store)
    return SecretResponse(secret=secret)
