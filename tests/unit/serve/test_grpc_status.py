"""Platform errors become the gRPC status codes REST's HTTP statuses correspond to."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from cluster.errors import (
    Conflict,
    DafnckError,
    Forbidden,
    InputInvalid,
    NotFound,
    QueueFull,
    RateLimited,
    StoreUnavailable,
    TaskFailed,
    Unauthorized,
)
from serve.grpc_api import _fail

Code = grpc.StatusCode


class FakeContext:
    """What `RayServegRPCContext` offers a servicer to answer with."""

    def __init__(self) -> None:
        self.code: Code | None = None
        self.details = ""
        self.trailing: tuple[tuple[str, str], ...] = ()

    def set_code(self, code: Code) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Unauthorized("no credential"), Code.UNAUTHENTICATED),
        (Forbidden("viewer may not"), Code.PERMISSION_DENIED),
        (NotFound("task 'x' not found"), Code.NOT_FOUND),
        (InputInvalid("task", ["capability: bad"]), Code.INVALID_ARGUMENT),
        (Conflict("already ended"), Code.FAILED_PRECONDITION),
        (QueueFull("full"), Code.RESOURCE_EXHAUSTED),
        (StoreUnavailable("redis down"), Code.UNAVAILABLE),
        (TaskFailed("boom"), Code.INTERNAL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, DafnckError) else str(v),
)
def test_errors_map_to_status_codes(error: DafnckError, code: Code) -> None:
    context = FakeContext()
    _fail(context, error)
    assert (context.code, context.details) == (code, error.message)


def test_rate_limited_says_when_to_retry() -> None:
    context = FakeContext()
    _fail(context, RateLimited("rate limit of 10 per 1 minute exceeded", 2.4))
    assert context.code == Code.RESOURCE_EXHAUSTED
    assert context.trailing == (("retry-after", "2"),)


def test_an_unexpected_error_is_internal_without_its_message(caplog: Any) -> None:
    context = FakeContext()
    _fail(context, RuntimeError("secret detail"))
    assert context.code == Code.INTERNAL
    assert "secret detail" not in context.details
