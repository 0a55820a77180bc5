"""Telemetry without Ray: bounded metric labels, the exposition, spans in the Redis span
store with their parents, GenAI attributes, log context ids and redaction, log search."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster import metrics, tracing
from cluster.cli.obs import matching_lines, read_local
from cluster.logs import install, log_context
from cluster.settings import Settings, load_settings
from cluster.span_store import execution_spans
from cluster.store import Store

#: Label names that would carry ids (unbounded): none may appear on any metric.
ID_LIKE = ("id", "_id", "uuid", "key", "path", "url", "message", "error")


@pytest.mark.parametrize("metric", metrics.ALL, ids=lambda m: m.name)
def test_every_metric_has_only_bounded_labels(metric: metrics.Metric) -> None:
    assert metric.name.startswith("dafnck_")
    labels = set(metric.definition.labels)
    assert labels <= metrics.ALLOWED_LABELS
    assert not [label for label in labels if label.endswith(ID_LIKE)]


def test_the_allowed_labels_carry_no_ids_and_names_are_unique() -> None:
    assert not [label for label in metrics.ALLOWED_LABELS if label.endswith(ID_LIKE)]
    names = [m.name for m in metrics.ALL]
    assert len(names) == len(set(names)) >= 20


def test_a_metric_with_an_unbounded_label_is_refused() -> None:
    with pytest.raises(ValueError, match="unbounded labels \\['task_id'\\]"):
        metrics.Metric(metrics.MetricDef("dafnck_bad", "counter", "no", ("capability", "task_id")))


def test_the_exposition_parses_and_moves() -> None:
    before = metrics.LLM_TOKENS.value(provider="openai", model="m", tenant="t", direction="input")
    metrics.record_tokens("openai", "m", "t", input_tokens=12, output_tokens=40, cost_usd=0.5)
    text = generate_latest(metrics.REGISTRY).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for metric in metrics.ALL:  # counters lose their _total in the family name
        assert metric.name in families, metric.name
    assert metrics.LLM_TOKENS.value(provider="openai", model="m", tenant="t",
                                    direction="input") == (before or 0) + 12  # fmt: skip
    assert metrics.LLM_COST.value(provider="openai", model="m", tenant="t") >= 0.5  # type: ignore[operator]


def test_deliveries_split_into_first_and_again_by_stream_kind() -> None:
    first = metrics.MESSAGES_DELIVERED.value(kind="inbox") or 0
    again = metrics.MESSAGES_REDELIVERED.value(kind="inbox") or 0
    metrics.count_deliveries("dafnck:t:inbox:agent", [1, 1, 3])
    assert metrics.MESSAGES_DELIVERED.value(kind="inbox") == first + 2
    assert metrics.MESSAGES_REDELIVERED.value(kind="inbox") == again + 1
    assert metrics.stream_kind("dafnck:t:queue:jobs") == "queue"
    assert metrics.stream_kind("dafnck:t:exec:123") == "other"


class FakeCache:
    def __init__(self) -> None:
        self.counts = {"l1": (0, 0), "l2": (0, 0)}

    def hit_counts(self) -> dict[str, tuple[int, int]]:
        return self.counts


def test_cache_counters_reach_the_metrics_as_deltas() -> None:
    cache = FakeCache()
    metrics.watch_cache(cache)
    hits = metrics.CACHE_HITS.value(level="l1") or 0
    cache.counts = {"l1": (5, 1), "l2": (1, 0)}
    metrics.sync_caches()
    cache.counts = {"l1": (7, 1), "l2": (1, 2)}
    metrics.sync_caches()
    assert metrics.CACHE_HITS.value(level="l1") == hits + 7


# -- traces -----------------------------------------------------------------------------------


@pytest.fixture
def traced(settings: Settings, store: Store) -> Iterator[Settings]:
    tracing.shutdown()
    traced = load_settings(redis_url=settings.redis_url, state_dir=str(settings.state_dir),
                           tenant="tel", trace_exporter="redis")  # fmt: skip
    assert tracing.setup_tracing(traced, "unit")
    yield traced
    tracing.shutdown()


def test_spans_reach_the_store_with_their_parents_across_an_envelope(
    traced: Settings, store: Store
) -> None:
    with tracing.span("request") as root:
        carried = tracing.current_traceparent()
    assert carried and carried.split("-")[1] == f"{root.get_span_context().trace_id:032x}"
    # what a replica does with the envelope's traceparent
    with (
        tracing.span("agent.run x", parent=carried, attributes={tracing.EXECUTION: "e1"}),
        tracing.llm_span("openai", "gpt-4o-mini") as call,
    ):
        tracing.llm_usage(call, input_tokens=3, output_tokens=5, finish_reasons=["stop"])
    assert metrics.LLM_CALLS.value(provider="openai", model="gpt-4o-mini", outcome="succeeded")
    with tracing.span("untraced", root=False) as nothing:
        assert not nothing.is_recording()
    tracing.flush()
    spans = {s["name"]: s for s in execution_spans(store.redis, "tel", "e1")}
    assert set(spans) == {"request", "agent.run x", "chat gpt-4o-mini"}
    assert spans["agent.run x"]["parent_id"] == spans["request"]["span_id"]
    assert spans["chat gpt-4o-mini"]["parent_id"] == spans["agent.run x"]["span_id"]
    llm = spans["chat gpt-4o-mini"]
    assert llm["kind"] == "client" and llm["service"] == "dafnck-unit"
    assert llm["attributes"]["gen_ai.request.model"] == "gpt-4o-mini"
    assert llm["attributes"]["gen_ai.provider.name"] == "openai"
    assert llm["attributes"]["gen_ai.usage.output_tokens"] == 5
    assert llm["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
    assert llm["end_ms"] >= llm["start_ms"] > 1.7e12
    assert store.redis.ttl(f"dafnck:tel:trace:{llm['trace_id']}") > 0
    assert execution_spans(store.redis, "other", "e1") == []


def test_a_failing_block_marks_its_span(traced: Settings, store: Store) -> None:
    with pytest.raises(RuntimeError), tracing.span("boom", attributes={tracing.EXECUTION: "e2"}):
        raise RuntimeError("no")
    tracing.flush()
    (span,) = execution_spans(store.redis, "tel", "e2")
    assert span["status"] == "error" and span["parent_id"] is None


def test_a_bad_traceparent_is_no_parent() -> None:
    assert tracing.context_from("not-a-traceparent") is None
    assert tracing.context_from(None) is None


# -- logs -------------------------------------------------------------------------------------


def test_records_carry_the_context_ids_and_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    install()
    log = logging.getLogger("tests.telemetry")
    with caplog.at_level(logging.INFO, logger="tests.telemetry"):
        with log_context(tenant="acme", execution_id="e9"):
            with log_context(step_id="s1", agent=None):
                log.info("calling with api_key=%s and Bearer abcdefghijkl", "sk-abcdefghijklmnop")
            log.info("after the step")
        log.info("outside")
    inner, after, outside = caplog.records
    assert (inner.tenant, inner.execution_id, inner.step_id) == ("acme", "e9", "s1")  # type: ignore[attr-defined]
    assert not hasattr(inner, "agent")
    assert "sk-abc" not in inner.getMessage() and "abcdefghijkl" not in inner.getMessage()
    assert after.execution_id == "e9" and not hasattr(after, "step_id")  # type: ignore[attr-defined]
    assert not hasattr(outside, "execution_id")


def test_log_search_keeps_only_the_executions_json_lines(tmp_path: Path) -> None:
    mine = {"message": "hi", "execution_id": "abc", "timestamp_ns": 2}
    lines = [json.dumps(mine), json.dumps({"message": "x", "execution_id": "abcd"}),
             "abc not json", json.dumps({"message": "abc in text only"})]  # fmt: skip
    assert [r["message"] for r in matching_lines(lines, "abc", "f")] == ["hi"]
    (tmp_path / "worker-1.err").write_text("\n".join(lines) + "\n")
    (tmp_path / "raylet.out").write_text(json.dumps(mine) + "\n")  # not one of ours
    found = read_local("abc", [tmp_path])
    assert [(r["message"], r["source"]) for r in found] == [("hi", "worker-1.err")]


def test_the_grafana_dashboard_shows_every_metric() -> None:
    path = Path(__file__).resolve().parents[3] / "configs/grafana/dafnck-dashboard.json"
    dashboard = json.loads(path.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    missing = [m.name for m in metrics.ALL if m.name not in exprs]
    assert not missing, f"metrics without a panel: {missing}"
    assert "task_id" not in exprs and "execution_id" not in exprs


def test_status_shows_each_component_and_pool() -> None:
    from rich.console import Console

    from cluster.cli.obs import components_table

    health = {"components": {
        "store": {"status": "unavailable", "latency_ms": None, "url": "redis://h:1"},
        "ray": {"status": "ok", "nodes": 2, "dead_nodes": 0},
        "pools": {"a@1.0.0": {"status": "degraded", "running": 1, "desired": 2,
                              "restarts": 3, "load": 4}},
    }}  # fmt: skip
    console = Console(record=True, width=200)
    console.print(components_table(health))
    text = console.export_text()
    assert "store" in text and "unavailable" in text and "redis://h:1" in text
    assert "pool a@1.0.0" in text and "1/2 replicas, load 4, restarts 3" in text


@pytest.mark.parametrize(
    ("choice", "endpoint", "kind"),
    [("otlp-grpc", "http://127.0.0.1:4317", "OTLPSpanExporter"),
     ("otlp-http", "http://127.0.0.1:4318/v1/traces", "OTLPSpanExporter"),
     ("console", None, "ConsoleSpanExporter"),
     ("redis", None, "RedisSpanExporter"),
     ("none", None, None)],
)  # fmt: skip
def test_the_exporter_comes_from_settings(
    settings: Settings, choice: str, endpoint: str | None, kind: str | None
) -> None:
    chosen = load_settings(redis_url=settings.redis_url, state_dir=str(settings.state_dir),
                           trace_exporter=choice, trace_endpoint=endpoint)  # fmt: skip
    exporter = tracing._exporter(chosen, None)
    assert (type(exporter).__name__ if exporter else None) == kind
    if choice.startswith("otlp"):
        assert ("grpc" in type(exporter).__module__) == (choice == "otlp-grpc")


def test_an_unknown_exporter_is_a_settings_error() -> None:
    from cluster.errors import ConfigError

    with pytest.raises(ConfigError, match="trace_exporter"):
        load_settings(trace_exporter="jaeger")


def test_spans_reach_an_otlp_http_collector(settings: Settings) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received: list[bytes] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    tracing.shutdown()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1/traces"
        chosen = load_settings(state_dir=str(settings.state_dir), trace_exporter="otlp-http",
                               trace_endpoint=url)  # fmt: skip
        assert tracing.setup_tracing(chosen, "unit")
        with tracing.llm_span("anthropic", "claude-x"):
            pass
        tracing.flush()
    finally:
        tracing.shutdown()
        server.shutdown()
    request = ExportTraceServiceRequest.FromString(received[0])
    (span,) = request.resource_spans[0].scope_spans[0].spans
    assert span.name == "chat claude-x"
    assert {a.key for a in span.attributes} >= {"gen_ai.request.model", "gen_ai.provider.name"}


def test_the_span_store_keeps_only_the_newest_traces(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from cluster import span_store

    monkeypatch.setattr(span_store, "_TRIM_EVERY_S", 0.0)
    exporter = span_store.RedisSpanExporter(store.redis, "cap", max_spans=3, max_traces=2)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for execution in ("e1", "e2", "e3"):
        with tracer.start_as_current_span("root", attributes={tracing.EXECUTION: execution}):
            for _ in range(5):
                tracer.start_span("child").end()
    assert execution_spans(store.redis, "cap", "e1") == []  # the oldest trace went
    kept = execution_spans(store.redis, "cap", "e3")
    assert [s["name"] for s in kept] == ["root", "child", "child"]  # its last 3 spans
    assert store.redis.zcard("dafnck:cap:traces") == 2
