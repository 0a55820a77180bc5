"""Every `dafnck_*` metric, defined once with its bounded label set.

Each metric records into two places: a `prometheus_client` registry of this process (what
the API serves on `/metrics`) and, when the process is a Ray worker or driver,
`ray.util.metrics` (what Ray exports to Prometheus and shows in the dashboard's Metrics
view, under the name `ray_dafnck_*`). Labels come only from `ALLOWED_LABELS`, whose
values are bounded by configuration (capabilities, agents, workflows, models), never ids.

    from cluster import metrics
    metrics.TASKS.inc(capability="code.review", outcome="succeeded")
    metrics.TASK_SECONDS.observe(0.12, capability="code.review", outcome="succeeded")

A new metric gets a panel in `configs/grafana/dafnck-dashboard.json` (a test checks both).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram

log = logging.getLogger(__name__)

#: Label names a metric may use; each one's values come from a bounded, configured set.
ALLOWED_LABELS = frozenset(
    {
        "capability",  # from agent specs
        "agent",  # agent name@version, from the registry
        "workflow",  # workflow names, from definitions
        "outcome",  # succeeded | failed | skipped | cancelled | ...
        "kind",  # stream kind: inbox | topic | channel | queue | events | other
        "level",  # cache level: l1 | l2
        "provider",  # LLM provider
        "model",  # LLM model
        "direction",  # LLM tokens: input | output
        "tenant",  # configured namespaces
        "method",  # HTTP method
        "route",  # route template, never the raw path
        "status",  # HTTP status code
    }
)
#: Seconds: from a cache hit to a long agent task.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

#: `_created` series double the exposition for no use here.
disable_created_metrics()
#: Every process records into its own registry; the API serves it on `/metrics`.
REGISTRY = CollectorRegistry(auto_describe=True)

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = LATENCY_BUCKETS


class Metric:
    """One metric in both backends; `inc`/`set`/`observe` take the labels as keywords.

    The Prometheus registry is updated at once (~1 us). Ray's metrics cost ~5-8 us a
    record, too much for a task's hot path, so what goes to Ray is batched here (counter
    sums, the last gauge value, histogram observations) and recorded by a background thread
    every `FLUSH_S` (Ray itself exports every 10 s).
    """

    def __init__(self, definition: MetricDef) -> None:
        bad = set(definition.labels) - ALLOWED_LABELS
        if bad:
            raise ValueError(f"metric {definition.name!r} uses unbounded labels {sorted(bad)}")
        self.definition = definition
        self._names = definition.labels
        self._prom = _prometheus(definition)
        self._ray: Any = None
        self._children: dict[tuple[str, ...], Any] = {}
        self._tags: dict[tuple[str, ...], dict[str, str]] = {}
        self._pending: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.definition.name

    def inc(self, value: float = 1.0, **labels: str) -> None:
        key = tuple(map(labels.__getitem__, self._names))
        (self._children.get(key) or self._child(key)).inc(value)
        if self._ray is not False and (self._ray is not None or _ray_connected()):
            with self._lock:
                self._pending[key] = self._pending.get(key, 0.0) + value
            _FLUSHER.dirty(self)

    def set(self, value: float, **labels: str) -> None:
        key = tuple(map(labels.__getitem__, self._names))
        (self._children.get(key) or self._child(key)).set(value)
        if self._ray is not False and (self._ray is not None or _ray_connected()):
            with self._lock:
                self._pending[key] = value
            _FLUSHER.dirty(self)

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(map(labels.__getitem__, self._names))
        (self._children.get(key) or self._child(key)).observe(value)
        if self._ray is not False and (self._ray is not None or _ray_connected()):
            with self._lock:
                self._pending.setdefault(key, []).append(value)
            _FLUSHER.dirty(self)

    def value(self, **labels: str) -> float | None:
        """This process's value (a histogram's count), as `/metrics` shows it."""
        suffix = {"counter": "_total", "gauge": "", "histogram": "_count"}[self.definition.kind]
        return REGISTRY.get_sample_value(self.name + suffix, labels)

    def _child(self, key: tuple[str, ...]) -> Any:
        """The Prometheus child of a label set seen for the first time."""
        child = self._children[key] = self._prom.labels(*key) if key else self._prom
        self._tags[key] = {n: str(v) for n, v in zip(self._names, key, strict=True)}
        return child

    def flush_to_ray(self) -> None:
        """Record what was batched since the last flush into `ray.util.metrics`."""
        with self._lock:
            pending, self._pending = self._pending, {}
        ray_metric = self._ray if self._ray is not None else self._ray_metric()
        if not ray_metric:
            return
        verb = {"counter": "inc", "gauge": "set", "histogram": "observe"}[self.definition.kind]
        record = getattr(ray_metric, verb)
        for key, value in pending.items():
            for one in value if isinstance(value, list) else [value]:
                record(one, tags=self._tags[key])

    def _ray_metric(self) -> Any:
        """The `ray.util.metrics` twin, made once this process is connected to Ray."""
        if not _ray_connected():
            return None
        from ray.util import metrics as ray_metrics

        d = self.definition
        try:
            if d.kind == "counter":
                self._ray = ray_metrics.Counter(d.name, d.help, d.labels)
            elif d.kind == "gauge":
                self._ray = ray_metrics.Gauge(d.name, d.help, d.labels)
            else:
                self._ray = ray_metrics.Histogram(d.name, d.help, list(d.buckets), d.labels)
        except Exception:  # metrics must never break the work they count
            log.warning("cannot create Ray metric %s", d.name, exc_info=True)
            self._ray = False
        return self._ray


_is_initialized: Any = None


def _ray_connected() -> bool:
    global _is_initialized
    if _is_initialized is None:
        import ray

        _is_initialized = ray.is_initialized
    return bool(_is_initialized())


class _Flusher:
    """One daemon thread per process: batched Ray records, and the watched caches."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def dirty(self, metric: Metric) -> None:
        if self._thread is None:
            self.start()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="dafnck-metrics",
                                                daemon=True)  # fmt: skip
                self._thread.start()

    def flush(self) -> None:
        sync()
        for metric in ALL:
            if metric._pending:
                metric.flush_to_ray()

    def _loop(self) -> None:
        while True:
            time.sleep(FLUSH_S)
            try:
                self.flush()
            except Exception:  # a metrics hiccup must not end the loop
                log.debug("metrics flush failed", exc_info=True)


#: How often batched records reach Ray's metrics (and caches' counters the metrics).
FLUSH_S = 1.0
_FLUSHER = _Flusher()


def flush() -> None:
    """Push everything batched to Ray now (tests, and before a process exits)."""
    _FLUSHER.flush()


def _prometheus(d: MetricDef) -> Any:
    if d.kind == "counter":
        return PromCounter(d.name, d.help, d.labels, registry=REGISTRY)
    if d.kind == "gauge":
        return PromGauge(d.name, d.help, d.labels, registry=REGISTRY)
    return PromHistogram(d.name, d.help, d.labels, registry=REGISTRY, buckets=d.buckets)


def _m(name: str, kind: Kind, help: str, *labels: str) -> Metric:
    return Metric(MetricDef(name, kind, help, labels))


# -- tasks (the caller's router) ----------------------------------------------------------
TASKS = _m("dafnck_tasks", "counter", "Tasks finished, by capability and outcome.",
           "capability", "outcome")  # fmt: skip
TASK_SECONDS = _m("dafnck_task_duration_seconds", "histogram",
                  "Task latency seen by the caller, retries included.", "capability", "outcome")  # fmt: skip
TASKS_IN_FLIGHT = _m("dafnck_tasks_in_flight", "gauge",
                     "Tasks this process has sent and not yet settled (polled).", "capability")  # fmt: skip
# -- pools (the supervisor) ---------------------------------------------------------------
POOL_DESIRED = _m(
    "dafnck_pool_replicas_desired", "gauge", "Replicas the pool should have.", "agent"
)
POOL_RUNNING = _m("dafnck_pool_replicas_running", "gauge", "Replicas alive in the pool.", "agent")
POOL_QUEUE = _m("dafnck_pool_queue_depth", "gauge",
                "Tasks the pool's replicas hold (running and queued).", "agent")  # fmt: skip
POOL_RESTARTS = _m("dafnck_pool_restarts", "counter", "Dead replicas replaced.", "agent")
POOL_AUTOSCALED = _m("dafnck_pool_autoscaled", "counter",
                     "Autoscaling decisions, by reason (load, idle, wake).", "agent", "outcome")  # fmt: skip
# -- workflows (the supervisor's engine) --------------------------------------------------
EXECUTIONS = _m("dafnck_executions", "counter", "Executions ended, by workflow and outcome.",
                "workflow", "outcome")  # fmt: skip
EXECUTION_SECONDS = _m("dafnck_execution_duration_seconds", "histogram",
                       "Execution wall time.", "workflow", "outcome")  # fmt: skip
EXECUTIONS_RUNNING = _m("dafnck_executions_running", "gauge",
                        "Executions the engine drives now.", "tenant")  # fmt: skip
STEPS = _m("dafnck_steps", "counter", "Steps (and fan-out items) ended, by outcome.",
           "workflow", "outcome")  # fmt: skip
STEP_SECONDS = _m("dafnck_step_duration_seconds", "histogram",
                  "Step wall time, retries included.", "workflow", "outcome")  # fmt: skip
# -- messages (streams) -------------------------------------------------------------------
MESSAGES_SENT = _m("dafnck_messages_sent", "counter", "Entries appended to streams.", "kind")
MESSAGES_DELIVERED = _m("dafnck_messages_delivered", "counter",
                        "Entries handed to a consumer for the first time.", "kind")  # fmt: skip
MESSAGES_REDELIVERED = _m("dafnck_messages_redelivered", "counter",
                          "Entries handed out again after a consumer did not acknowledge.", "kind")  # fmt: skip
MESSAGES_DEAD = _m("dafnck_messages_dead_lettered", "counter",
                   "Entries moved to a dead-letter stream.", "kind")  # fmt: skip
# -- cache --------------------------------------------------------------------------------
CACHE_HITS = _m("dafnck_cache_hits", "counter", "Cache hits by level.", "level")
CACHE_MISSES = _m("dafnck_cache_misses", "counter", "Cache misses by level.", "level")
# -- LLM ----------------------------------------------------------------------------------
LLM_TOKENS = _m("dafnck_llm_tokens", "counter", "LLM tokens, by provider, model and direction.",
                "provider", "model", "tenant", "direction")  # fmt: skip
LLM_COST = _m("dafnck_llm_cost_usd", "counter", "LLM spend in US dollars.",
              "provider", "model", "tenant")  # fmt: skip
LLM_CALLS = _m("dafnck_llm_calls", "counter", "LLM calls, by provider, model and outcome.",
               "provider", "model", "outcome")  # fmt: skip
# -- API ----------------------------------------------------------------------------------
HTTP_REQUESTS = _m("dafnck_http_requests", "counter",
                   "HTTP requests answered, by method, route template and status.",
                   "method", "route", "status")  # fmt: skip
HTTP_SECONDS = _m("dafnck_http_request_duration_seconds", "histogram",
                  "HTTP request latency, by method and route template.", "method", "route")  # fmt: skip

#: Every metric above, for `/metrics`, the dashboard and the label test.
ALL: tuple[Metric, ...] = tuple(v for v in list(globals().values()) if isinstance(v, Metric))


def record_tokens(
    provider: str,
    model: str,
    tenant: str,
    input_tokens: int,
    output_tokens: int,
    cost_usd: float = 0.0,
) -> None:
    """Count one LLM call's tokens and cost (call it once per model call)."""
    LLM_TOKENS.inc(input_tokens, provider=provider, model=model, tenant=tenant, direction="input")
    LLM_TOKENS.inc(output_tokens, provider=provider, model=model, tenant=tenant, direction="output")
    if cost_usd:
        LLM_COST.inc(cost_usd, provider=provider, model=model, tenant=tenant)


_caches: weakref.WeakKeyDictionary[Any, dict[str, tuple[int, int]]] = weakref.WeakKeyDictionary()
_sync_lock = threading.Lock()


def watch_cache(manager: Any) -> None:
    """Count a `CacheManager`'s hits and misses (it keeps plain ints: an L1 hit stays ~1 us).

    Its counters reach the metrics on every `/metrics` scrape and every `FLUSH_S`.
    """
    with _sync_lock:
        _caches[manager] = {"l1": (0, 0), "l2": (0, 0)}
    _FLUSHER.start()


def sync_caches() -> None:
    """Add what every watched cache counted since the last sync."""
    with _sync_lock:
        for manager, seen in list(_caches.items()):
            now = manager.hit_counts()
            for level, (hits, misses) in now.items():
                old_hits, old_misses = seen.get(level, (0, 0))
                if hits > old_hits:
                    CACHE_HITS.inc(hits - old_hits, level=level)
                if misses > old_misses:
                    CACHE_MISSES.inc(misses - old_misses, level=level)
            _caches[manager] = now


_meters: weakref.WeakSet[Any] = weakref.WeakSet()
_capabilities_seen: set[str] = set()


def watch_in_flight(meter: Any) -> None:
    """Report a router's `in_flight` (capability -> tasks) as `dafnck_tasks_in_flight`.

    Polled like the caches, so a task's send and result touch no gauge.
    """
    _meters.add(meter)
    _FLUSHER.start()


def sync_in_flight() -> None:
    """Set the in-flight gauge to the sum over this process's routers."""
    totals: dict[str, int] = dict.fromkeys(_capabilities_seen, 0)
    for meter in list(_meters):
        for capability, count in list(meter.in_flight.items()):
            totals[capability] = totals.get(capability, 0) + count
    _capabilities_seen.update(totals)
    for capability, count in totals.items():
        TASKS_IN_FLIGHT.set(count, capability=capability)


def sync() -> None:
    """Bring polled values (caches, routers' in-flight) into the metrics now."""
    sync_caches()
    sync_in_flight()


def count_deliveries(stream_key: str, delivery_counts: list[int]) -> None:
    """A reader's batch: first deliveries and redeliveries, by stream kind."""
    if not delivery_counts:
        return
    kind = stream_kind(stream_key)
    again = sum(1 for n in delivery_counts if n > 1)
    if again:
        MESSAGES_REDELIVERED.inc(again, kind=kind)
    if len(delivery_counts) > again:
        MESSAGES_DELIVERED.inc(len(delivery_counts) - again, kind=kind)


def stream_kind(stream_key: str) -> str:
    """`dafnck:<tenant>:inbox:x` -> "inbox": the bounded label of a stream."""
    parts = stream_key.split(":", 3)
    kind = parts[2] if len(parts) > 2 else ""
    return kind if kind in _STREAM_KINDS else "other"


_STREAM_KINDS = frozenset({"inbox", "topic", "channel", "queue", "events"})

__all__ = [
    "ALL",
    "ALLOWED_LABELS",
    "REGISTRY",
    "Metric",
    "MetricDef",
    "count_deliveries",
    "flush",
    "record_tokens",
    "stream_kind",
    "sync",
    "sync_caches",
    "sync_in_flight",
    "watch_cache",
    "watch_in_flight",
]
