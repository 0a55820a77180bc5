"""Webhook contracts and signatures, without Redis or Ray."""

from __future__ import annotations

import base64
import hashlib
import hmac
import pickle
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from actors.a2a_remote import A2ARemoteConfig
from actors.webhooks import Refused, Retryable, WebhookSpec, signed_headers

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def test_webhook_url_is_http_or_https_and_nothing_else() -> None:
    assert str(WebhookSpec(url="https://example.com/hook").url) == "https://example.com/hook"  # type: ignore[arg-type]
    for bad in ({"url": "ftp://example.com"}, {"url": "example"}, {"url": "http://h", "x": 1}):
        with pytest.raises(ValidationError):
            WebhookSpec.model_validate(bad)


@pytest.mark.parametrize(
    "contract",
    [
        WebhookSpec(url="http://127.0.0.1:9/x"),  # type: ignore[arg-type]
        A2ARemoteConfig(url="https://a.example/x", skills={"a.b": "b"}, auth_env="TOKEN"),
    ],
)
def test_contracts_round_trip(contract: object) -> None:
    assert pickle.loads(pickle.dumps(contract)) == contract
    assert type(contract).model_validate_json(contract.model_dump_json()) == contract  # type: ignore[attr-defined]


def test_errors_keep_their_status_through_pickle() -> None:
    for error in (Retryable("503 from h", 503), Refused("404 from h", 404)):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and again.status == error.status


def test_signature_is_standard_webhooks() -> None:
    at = datetime(2020, 1, 1, 12, 0, tzinfo=UTC)  # long past: receivers refuse it
    body = '{"type": "execution.succeeded"}'
    headers = signed_headers(SECRET, "msg_1", body, at)
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    signed = f"msg_1.{headers['webhook-timestamp']}.{body}".encode()
    digest = hmac.new(b"k" * 32, signed, hashlib.sha256).digest()
    assert headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()
    with pytest.raises(
        WebhookVerificationError, match="timestamp"
    ):  # too old for a receiver to accept
        Webhook(SECRET).verify(body, headers)
