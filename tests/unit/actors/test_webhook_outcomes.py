"""What a failed webhook attempt records: its class only, never the remote's own words."""

from __future__ import annotations

import httpx

from actors.webhooks import Refused, Retryable, outcome_of
from cluster.errors import OutboundRefused


def test_outcomes_are_classes_not_remote_text() -> None:
    remote_text = "Traceback ... ray job API: secret-token-123"
    wrapped = httpx.ConnectError("connection failed")
    wrapped.__cause__ = OutboundRefused("10.0.0.1 is a private address")
    assert outcome_of(OutboundRefused("127.0.0.1 is a loopback address")) == "refused"
    assert outcome_of(wrapped) == "refused"
    assert outcome_of(Retryable(remote_text, 500)) == "http 500"
    assert outcome_of(Refused(remote_text, 404)) == "http 404"
    assert outcome_of(httpx.ReadTimeout(remote_text)) == "timeout"
    assert outcome_of(httpx.ConnectError(remote_text)) == "connection error"
    assert outcome_of(httpx.RemoteProtocolError(remote_text)) == "connection error"
