"""The API's error body is the one `ErrorInfo`: `{"error": {type, message, retryable, ...}}`
with an error's details under their own names, for our errors, bad input and HTTP errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Query
from fastapi.testclient import TestClient

from cluster.errors import DafnckError, ErrorInfo, QuotaExceeded, RateLimited, SpecInvalid
from serve.errors import ERROR_RESPONSES, ErrorResponse, install

RAISED: dict[str, DafnckError] = {
    "quota": QuotaExceeded("agents", 5, "remove one first"),
    "rate": RateLimited("too many requests for key 'k1'", 2.4),
    "spec": SpecInvalid("workflow 'w'", ["step 'b' needs unknown step 'x'"]),
}


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = FastAPI(responses=ERROR_RESPONSES)
    install(app)

    @app.get("/raise/{name}")
    def _raise(name: str) -> None:
        raise RAISED[name]

    @app.get("/count")
    def _count(n: int = Query(ge=1)) -> int:
        return n

    with TestClient(app) as test_client:
        yield test_client


def test_our_errors_answer_their_info_with_details(client: TestClient) -> None:
    quota = client.get("/raise/quota")
    assert quota.status_code == 429
    assert quota.json() == {"error": {
        "type": "QuotaExceeded", "message": "quota 'agents' (5) exceeded: remove one first",
        "retryable": False, "limit": "agents", "value": 5.0,
    }}  # fmt: skip
    rate = client.get("/raise/rate")
    assert rate.headers["retry-after"] == "2"
    assert rate.json()["error"]["retry_after_s"] == 2.4 and rate.json()["error"]["retryable"]
    spec = client.get("/raise/spec").json()["error"]
    assert spec["problems"] == ["step 'b' needs unknown step 'x'"]
    for name, error in RAISED.items():
        body = client.get(f"/raise/{name}").json()
        assert ErrorResponse.model_validate(body).error == error.info()


def test_bad_input_and_http_errors_have_the_same_shape(client: TestClient) -> None:
    bad = client.get("/count", params={"n": 0})
    assert bad.status_code == 422
    error = ErrorInfo.model_validate(bad.json()["error"])
    assert (error.type, error.retryable) == ("InputInvalid", False)
    assert error.problems == [
        {"field": "query.n", "problem": "Input should be greater than or equal to 1"}
    ]
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {"type": "HTTPError", "message": "Not Found", "retryable": False}
    }


def test_the_openapi_document_names_the_error_fields(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    info = schemas["ErrorInfo"]
    assert {"type", "message", "retryable", "problems"} <= set(info["properties"])
    assert info["required"] == ["type", "message"] and info["additionalProperties"] is True
