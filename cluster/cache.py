"""CacheManager: an in-process TTL cache (L1) in front of Redis (L2), coherent across processes.

`fetch(key, load)` reads through: L1, else L2, else `load()` (the store itself, "L3"),
filling both. It is for records read on every request and changed rarely (API keys, users'
token versions, the agent registry), whose changes must be seen at once: whoever changes
one calls `invalidate(key)` after writing the store. That bumps `store.key(namespace +
"-gen")` (so a fill that raced the change is not written to L2), drops the key from L2 and
publishes it on `store.key(namespace + "-invalidate")`; every started manager of the tenant
drops its L1 copy and acknowledges, and `invalidate` returns once every subscriber has (or
after `ack_timeout_s`: a stuck one keeps its copy at most `l1_ttl_s`). L1 serves only
while the listener is subscribed (it starts on the first fetch); after it loses and
regains Redis it clears its whole L1, since it may have missed changes meanwhile.

Values are JSON in L2 (`dumps`/`loads` are pluggable; never pickle: L2 is shared), under
`store.key(namespace, key)`. L1 holds what `load` returned, shared by every caller: treat
it as read-only (that is what keeps an L1 hit in microseconds).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

import redis
from cachetools import TTLCache

from cluster import metrics
from cluster.errors import ConfigError, StoreUnavailable
from cluster.store import Store, redacted, unavailable_as_error

log = logging.getLogger(__name__)

_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
_POLL_S = 0.2
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 1.0
_SCAN_COUNT = 500
#: How long an acknowledgement list outlives a change (the writer waits far less).
_ACK_KEEP_MS = 10_000
#: Write L2 only if no change bumped the generation since the reader looked (ARGV[1]).
_FILL_L2 = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then redis.call('SET', KEYS[1], ARGV[2])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""
_now = time.monotonic

#: An L1 entry: (monotonic expiry, value).
Entry = tuple[float, Any]


@dataclass(frozen=True, slots=True)
class LevelStats:
    """Counters of one cache level since the manager was built; size None if unknown."""

    hits: int
    misses: int
    size: int | None
    errors: int = 0


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Hits, misses, errors and sizes of L1 (this process) and L2 (Redis, whole namespace)."""

    l1: LevelStats
    l2: LevelStats


class _NoL1(dict[str, Entry]):
    """The L1 of a manager built with l1_maxsize=0: forgets everything it is given."""

    def __setitem__(self, key: str, value: Entry) -> None:
        return None

    def expire(self) -> None:
        return None


def _redis_literal(text: str) -> str:
    """`text` escaped so that a Redis MATCH pattern matches it literally."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


class CacheManager:
    """A tenant's read-through cache of one namespace; a change anywhere drops every copy."""

    def __init__(
        self,
        store: Store,
        *,
        l1_maxsize: int = 1024,
        l1_ttl_s: float = 60.0,
        l2_ttl_s: float | None = None,
        namespace: str = "cache",
        dumps: Callable[[Any], str] = json.dumps,
        loads: Callable[[str], Any] = json.loads,
        subscribe_timeout_s: float = 5.0,
        l2: bool = True,
        ack_timeout_s: float = 1.0,
    ) -> None:
        """`l2=False`: `fetch` goes from L1 straight to the store (where L2 would cost the same
        round trip); `ack_timeout_s`: how long a change waits for other listeners.

        Raises: ConfigError: a size or TTL is out of range (every problem is listed).
        """
        problems = [
            f"{name} must be {rule}, got {value!r}"
            for name, value, ok, rule in (
                ("l1_maxsize", l1_maxsize, l1_maxsize >= 0, ">= 0 (0 disables L1)"),
                ("l1_ttl_s", l1_ttl_s, l1_ttl_s > 0, "> 0"),
                ("l2_ttl_s", l2_ttl_s, l2_ttl_s is None or l2_ttl_s > 0,
                 "> 0 or None (no expiry)"),
                ("namespace", namespace, bool(namespace), "a non-empty string"),
                ("ack_timeout_s", ack_timeout_s, ack_timeout_s >= 0, ">= 0"),
            )
            if not ok
        ]  # fmt: skip
        if problems:
            raise ConfigError("cache settings are invalid: " + "; ".join(problems))
        self.store = store
        self._prefix = store.key(namespace, "")
        self._channel = store.key(f"{namespace}-invalidate")
        self._gen_key = store.key(f"{namespace}-gen")
        self._ack_prefix = store.key(f"{namespace}-ack", "")
        self._l2 = l2
        self._ack_timeout_s = ack_timeout_s
        self._fill_l2 = store.redis.register_script(_FILL_L2)
        self._l1: MutableMapping[str, Entry] = (
            TTLCache(l1_maxsize, l1_ttl_s, timer=_now) if l1_maxsize else _NoL1()
        )
        self._l1_ttl_s = l1_ttl_s
        self._l2_ttl_s = l2_ttl_s
        self._dumps, self._loads = dumps, loads
        self._subscribe_timeout_s = subscribe_timeout_s
        self._origin = uuid.uuid4().hex
        self._lock = threading.Lock()
        #: Bumped on every change seen; an L2 read only fills L1 if none came in between.
        self._epoch = 0
        self._l1_hits = self._l1_misses = 0
        metrics.watch_cache(self)  # dafnck_cache_hits/misses from the counters below
        self._l2_hits = self._l2_misses = self._l2_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: True while the listener is subscribed: only then may `fetch` serve L1.
        self._subscribed = False
        self._start_lock = threading.Lock()
        self._started_once = False

    # -- reading ------------------------------------------------------------------------

    def fetch(self, key: str, load: Callable[[], Any]) -> Any:
        """The value under `key` from L1, else L2, else `load()` (the store), filling both.

        A None from `load` (nothing there) is returned and never cached. L1 serves only
        while the listener is subscribed (started on the first fetch), so a change made
        anywhere is never answered from a copy this process was not told about.

        Raises:
            Whatever `load` raises; an L2 outage alone is counted in `get_stats().l2.errors`.
        """
        found, value = self.peek(key)
        if found:
            return value
        if not self._started_once:
            self._listen_lazily()
        with self._lock:
            self._l1_misses += 1
            epoch = self._epoch
        raw, gen = self._read_through_l2(key)
        if raw is not None:
            value = self._loads(raw)
        else:
            value = load()
            if value is None:
                return None
            if gen is not None:
                self._write_l2(key, self._dumps(value), gen)
        with self._lock:
            if self._subscribed and self._epoch == epoch:
                self._l1[key] = (_now() + self._l1_ttl_s, value)
        return value

    def peek(self, key: str) -> tuple[bool, Any]:
        """(True, value) if `fetch` would answer from L1 now, else (False, None); no I/O, so
        code on an event loop may call it and `fetch` in a worker thread only on a miss."""
        with self._lock:
            hit = self._l1.get(key) if self._subscribed else None
            if hit is None or hit[0] <= _now():
                return False, None
            self._l1_hits += 1
            return True, hit[1]

    def _listen_lazily(self) -> None:
        with self._start_lock:
            if self._started_once:
                return
            self._started_once = True
            try:
                self.start()
            except StoreUnavailable as exc:  # fetch still answers, from L2 and the store
                log.warning("cache %s serves without L1: %s", self._channel, exc)

    def _read_through_l2(self, key: str) -> tuple[str | None, str | None]:
        """(L2's raw value, the generation read with it); gen None: do not fill L2."""
        if not self._l2:
            return None, None
        try:
            raw, gen = self.store.redis.mget(self._prefix + key, self._gen_key)
        except _UNREACHABLE as exc:
            with self._lock:
                self._l2_errors += 1
            log.warning("cache L2 unreachable, reading %r from the store: %s", key, exc)
            return None, None
        with self._lock:
            if raw is None:
                self._l2_misses += 1
            else:
                self._l2_hits += 1
        return raw, gen or ""

    def _write_l2(self, key: str, raw: str, gen: str) -> None:
        ttl_ms = 0 if self._l2_ttl_s is None else max(1, round(self._l2_ttl_s * 1000))
        try:
            self._fill_l2(keys=[self._prefix + key, self._gen_key], args=[gen, raw, ttl_ms])
        except _UNREACHABLE as exc:
            with self._lock:
                self._l2_errors += 1
            log.warning("cache L2 unreachable, %r not filled: %s", key, exc)

    # -- writing ------------------------------------------------------------------------

    @unavailable_as_error
    def invalidate(self, *keys: str) -> None:
        """Drop `keys` from L2 and from every manager's L1; call it after changing the store.

        Returns once every listening manager has dropped them (or after `ack_timeout_s`).

        Raises:
            StoreUnavailable: Redis cannot be reached; this L1 is cleaned anyway, other
                processes' copies live until their L1 TTL.
        """
        try:
            if self._l2:
                pipe = self.store.redis.pipeline(transaction=True)
                pipe.incr(self._gen_key)  # with the unlink: a fill that read before fails
                pipe.unlink(*(self._prefix + key for key in keys))
                pipe.execute()
        finally:
            self._drop_l1_keys(keys)
        nonce = uuid.uuid4().hex
        body = json.dumps({"o": self._origin, "k": list(keys), "a": nonce})
        self._await_acks(nonce, int(self.store.redis.publish(self._channel, body)))

    def _await_acks(self, nonce: str, listeners: int) -> None:
        """Wait until `listeners` managers have handled change `nonce`, or `ack_timeout_s`."""
        name = self._ack_prefix + nonce
        deadline = _now() + self._ack_timeout_s
        acked = 0
        while acked < listeners and (left_s := deadline - _now()) > 0:
            if self.store.redis.blpop([name], timeout=max(left_s, 0.01)) is None:
                break
            acked += 1
        if acked < listeners:
            log.warning(
                "cache %s: %d of %d listeners acknowledged a change within %ss; the others "
                "keep their copies at most %ss", self._channel, acked, listeners,
                self._ack_timeout_s, self._l1_ttl_s,
            )  # fmt: skip
        if listeners:
            self.store.redis.unlink(name)

    def _drop_l1_keys(self, keys: Iterable[str]) -> None:
        with self._lock:
            self._epoch += 1
            for key in keys:
                self._l1.pop(key, None)

    def _drop_l1_all(self) -> None:
        with self._lock:
            self._epoch += 1
            self._l1.clear()

    # -- stats --------------------------------------------------------------------------

    def hit_counts(self) -> dict[str, tuple[int, int]]:
        """(hits, misses) per level since construction; cheap (`cluster.metrics` polls it)."""
        return {"l1": (self._l1_hits, self._l1_misses), "l2": (self._l2_hits, self._l2_misses)}

    def get_stats(self) -> CacheStats:
        """Counters since construction and current sizes; L2's size is None while Redis is down.

        L2's size counts the namespace's keys with SCAN, so it costs O(keys): not for hot paths.

        Raises:
            Nothing on a store outage (see above).
        """
        with self._lock:
            self._l1.expire()  # type: ignore[attr-defined]
            l1 = LevelStats(self._l1_hits, self._l1_misses, len(self._l1))
            l2_counts = (self._l2_hits, self._l2_misses, self._l2_errors)
        try:
            match = _redis_literal(self._prefix) + "*"
            size: int | None = sum(
                1 for _ in self.store.redis.scan_iter(match=match, count=_SCAN_COUNT)
            )
        except _UNREACHABLE:
            size = None
        return CacheStats(l1, LevelStats(l2_counts[0], l2_counts[1], size, l2_counts[2]))

    # -- the invalidation listener ------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the background listener thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> CacheManager:
        """Subscribe to the tenant's invalidations and listen in a daemon thread.

        Returns once subscribed, so changes made anywhere afterwards reach this L1.

        Raises:
            StoreUnavailable: Redis cannot be reached or did not confirm the subscription.
        """
        if self.running:
            return self
        self._stop.clear()
        pubsub = self._subscribe()
        with self._lock:
            self._subscribed = True
        self._thread = threading.Thread(
            target=_listen,
            args=(weakref.ref(self), pubsub, self._stop),
            name=f"dafnck-cache-{self._channel}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the listener thread (its L1 no longer hears of changes); the store stays open."""
        self._stop.set()
        self._unsubscribed()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _subscribe(self) -> Any:
        pubsub = self.store.redis.pubsub()
        try:
            pubsub.subscribe(self._channel)
            deadline = _now() + self._subscribe_timeout_s
            while _now() < deadline:
                message = pubsub.get_message(timeout=_POLL_S)
                if message is not None and message["type"] == "subscribe":
                    return pubsub
        except _UNREACHABLE as exc:
            pubsub.close()
            raise StoreUnavailable(
                f"Redis at {redacted(self.store.url)} is unreachable: {exc}"
            ) from None
        pubsub.close()
        raise StoreUnavailable(
            f"Redis at {redacted(self.store.url)} did not confirm the subscription to "
            f"{self._channel!r} within {self._subscribe_timeout_s}s"
        )

    def _resubscribed(self) -> None:
        with self._lock:
            self._epoch += 1
            self._l1.clear()  # messages sent while we were away are lost
            self._subscribed = True
        log.info("cache listener resubscribed to %s", self._channel)

    def _unsubscribed(self) -> None:
        with self._lock:
            self._epoch += 1  # a fetch under way must not fill L1 now
            self._subscribed = False

    def _on_message(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            # redis-py reconnected and resubscribed by itself: we may have missed changes.
            self._drop_l1_all()
            return
        if message["type"] != "message":
            return
        try:
            body = json.loads(message["data"])
            origin, keys, nonce = body["o"], body.get("k"), body.get("a")
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring malformed cache invalidation %r", message["data"])
            return
        if origin != self._origin and isinstance(keys, list):
            self._drop_l1_keys(key for key in keys if isinstance(key, str))
        if isinstance(nonce, str):
            ack = self._ack_prefix + nonce
            self.store.redis.pipeline(transaction=False).rpush(ack, 1).pexpire(
                ack, _ACK_KEEP_MS
            ).execute()


def _listen(ref: weakref.ref[CacheManager], pubsub: Any, stop: threading.Event) -> None:
    """The listener thread; it holds its manager weakly, so a manager no one uses ends it."""
    delay_s = _RETRY_MIN_S
    while not stop.is_set() and (manager := ref()) is not None:
        try:
            if pubsub is None:
                pubsub = manager._subscribe()
                manager._resubscribed()
                delay_s = _RETRY_MIN_S
            message = pubsub.get_message(timeout=_POLL_S)
            if message is not None:
                manager._on_message(message)
        except Exception as exc:  # the listener must outlive every error
            manager._unsubscribed()
            if delay_s == _RETRY_MIN_S:
                log.warning("cache listener lost %s, retrying: %s", manager._channel, exc)
            if pubsub is not None:
                _close_quietly(pubsub)
                pubsub = None
            del manager
            stop.wait(delay_s)
            delay_s = min(delay_s * 2, _RETRY_MAX_S)
            continue
        del manager
    if pubsub is not None:
        _close_quietly(pubsub)


_shared: weakref.WeakValueDictionary[tuple[int, str, str], CacheManager] = (
    weakref.WeakValueDictionary()
)
_shared_lock = threading.Lock()


def shared_cache(store: Store, namespace: str, **options: Any) -> CacheManager:
    """This process's manager of `namespace` for the store's connection pool and tenant.

    Objects built per request (a registry, a key table) share one L1 and one listener, for
    as long as anything holds the manager; `options` apply when it is first built.

    Raises:
        ConfigError: as `CacheManager`.
    """
    name = (id(store.redis), store.tenant, namespace)
    with _shared_lock:
        manager = _shared.get(name)
        if manager is None:
            manager = _shared[name] = CacheManager(store, namespace=namespace, **options)
        return manager


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception as exc:  # closing a dead connection may fail in many ways
        log.debug("closing cache pubsub failed: %s", exc)


__all__ = ["CacheManager", "CacheStats", "LevelStats", "shared_cache"]
