"""The dashboard's static files at `/` never shadow the API: its paths stay JSON errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

import serve.app
from cluster.settings import load_settings
from serve.api_dashboard import STATIC_DIR
from serve.api_metrics import REGISTRY


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(serve.app, "ROUTER_MODULES", ["serve.api_health"])  # no store needed
    with TestClient(serve.app.build_app(load_settings())) as test_client:
        yield test_client


def test_the_pages_are_served_from_the_package(client: TestClient) -> None:
    index = client.get("/")
    assert index.status_code == 200 and 'src="app.js"' in index.text
    assert index.headers["cache-control"] == "no-cache"
    assert "frame-ancestors 'none'" in index.headers["content-security-policy"]
    assert index.headers["x-frame-options"] == "DENY"
    for name in ("app.js", "api.js", "graph.js", "style.css", "favicon.svg"):
        assert (STATIC_DIR / name).is_file()
        assert client.get(f"/{name}").status_code == 200, name


def test_api_paths_stay_the_apis(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/docs").status_code == 200
    for path in ("/v1/nothing", "/metrics/x", "/missing.js", "/..%2Fpyproject.toml"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["type"] == "HTTPError", path
    assert client.post("/index.html").status_code == 404
    assert client.delete("/").status_code == 404


def test_an_unknown_websocket_path_is_refused(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/v1/ws/nothing") as ws:
        ws.receive_text()


def _count(route: str, status: str) -> float:
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            labels = sample.labels
            if sample.name == "dafnck_http_requests_total" and (
                labels["route"],
                labels["status"],
            ) == (route, status):
                return sample.value
    return 0.0


def test_pages_count_under_one_route_label_and_api_misses_stay_unmatched(
    client: TestClient,
) -> None:
    pages, misses = _count("/", "200"), _count("unmatched", "404")
    client.get("/style.css")
    client.get("/v1/nothing")
    assert (_count("/", "200"), _count("unmatched", "404")) == (pages + 1, misses + 1)
