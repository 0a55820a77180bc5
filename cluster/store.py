"""The state store: redis-py with every key under a tenant prefix and timeouts everywhere."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit

import redis
from redis._parsers import _AsyncRESP3Parser, _RESP3Parser
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from cluster.errors import ErrorInfo, StoreFull, StoreUnavailable
from cluster.valkey import ensure_valkey, running_url

P = ParamSpec("P")
R = TypeVar("R")

_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"


class StoreFullReply(StoreFull, redis.exceptions.OutOfMemoryError):  # type: ignore[misc]
    """Redis's `OOM` answer: a `StoreFull` (retryable, HTTP 507) that code catching
    redis-py's `ResponseError`/`OutOfMemoryError` still recognises."""

    def __init__(self, *args: Any, status_code: str | None = None) -> None:
        reply = str(args[0]) if args else ""
        if "the store is full" not in reply:
            reply = (
                f"the store is full ({reply.strip() or 'Redis is at its maxmemory'}); nothing "
                "was written: retry once space is freed or maxmemory is raised"
            )
        super().__init__(reply, *args[1:], status_code=status_code)
        self.status_code = StoreFull.status_code  # redis-py's "OOM" would shadow the HTTP one

    def info(self) -> ErrorInfo:
        return super().info().model_copy(update={"type": "StoreFull"})


class _Parser(_RESP3Parser):
    """redis-py's parser with `OOM` replies raised as `StoreFullReply`."""

    EXCEPTION_CLASSES = {**_RESP3Parser.EXCEPTION_CLASSES, "OOM": StoreFullReply}


class _AsyncParser(_AsyncRESP3Parser):
    EXCEPTION_CLASSES = {**_AsyncRESP3Parser.EXCEPTION_CLASSES, "OOM": StoreFullReply}


class Store:
    """A tenant's view of Redis: `key()` prefixes, `call()` turns outages into one error.

    Cores receive a `Store` and use `store.redis` for commands; every raw command that
    may hit the network goes through `unavailable_as_error` so callers see
    `StoreUnavailable` (retryable, naming the URL) rather than a redis-py exception.
    """

    def __init__(
        self, client: redis.Redis, url: str, tenant: str, options: dict[str, Any] | None = None
    ) -> None:
        #: Typed loosely: redis-py's stubs don't know `decode_responses=True` gives str.
        self.redis: Any = client
        self.url = url
        self.tenant = tenant
        self._prefix = f"dafnck:{tenant}:"
        self._options = options or {}
        self._async: dict[int, Any] = {}

    def async_redis(self) -> Any:
        """A redis.asyncio client with the same URL and timeouts, one per event loop."""
        import asyncio

        import redis.asyncio as aioredis

        loop = id(asyncio.get_running_loop())
        if loop not in self._async:
            self._async = {
                loop: aioredis.Redis.from_url(self.url, parser_class=_AsyncParser, **self._options)
            }
        return self._async[loop]

    def key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def for_tenant(self, tenant: str) -> Store:
        """The same connection pool seen under another tenant's prefix."""
        return Store(self.redis, self.url, tenant, self._options)

    def ping(self) -> None:
        """Raises: StoreUnavailable."""
        self.call(self.redis.ping)

    def call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one redis-py call, turning connection problems into `StoreUnavailable`."""
        try:
            return fn(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"Redis at {redacted(self.url)} is unreachable: {exc}") from None

    def close(self) -> None:
        self.redis.close()


def unavailable_as_error(fn: Callable[..., R]) -> Callable[..., R]:
    """Decorate a method of a class holding `self.store` so outages raise StoreUnavailable."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> R:
        try:
            return fn(self, *args, **kwargs)
        except _UNREACHABLE as exc:
            url = redacted(self.store.url)
            raise StoreUnavailable(f"Redis at {url} is unreachable: {exc}") from None

    return wrapper


class StoreSettings(Protocol):
    """What connecting reads of the settings (`cluster.settings.Settings` has it all): the
    store sits below the settings, whose sections (quotas, retention) use it."""

    @property
    def redis_url(self) -> str | None: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def tenant(self) -> str: ...
    @property
    def valkey_maxmemory_mb(self) -> int | None: ...
    @property
    def redis_connect_timeout_s(self) -> float: ...
    @property
    def redis_socket_timeout_s(self) -> float: ...


def resolve_redis_url(settings: StoreSettings) -> str:
    """The configured Redis URL, or the embedded Valkey's admin URL (started if needed).

    A configured URL without a password that names this state directory's embedded Valkey
    gets its password from the 0600 file there, so the URL itself may travel (in a
    runtime_env, a job's env) without the secret.
    """
    if settings.redis_url:
        if urlsplit(settings.redis_url).password is None:
            embedded = running_url(settings.state_dir)
            if embedded and _same_server(embedded, settings.redis_url):
                return embedded
        return settings.redis_url
    maxmemory = settings.valkey_maxmemory_mb
    return ensure_valkey(settings.state_dir, maxmemory * 1024 * 1024 if maxmemory else None)


def _same_server(a: str, b: str) -> bool:
    one, other = urlsplit(a), urlsplit(b)
    return (one.hostname, one.port, one.path or "/0") == (
        other.hostname,
        other.port,
        other.path or "/0",
    )


def connect_store(settings: StoreSettings, *, url: str | None = None) -> Store:
    """Connect to the platform's Redis and check it answers.

    Raises:
        StoreUnavailable: nothing answers at the URL within the connect timeout.
    """
    url = url or resolve_redis_url(settings)
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": settings.redis_socket_timeout_s,
        "health_check_interval": 30,
        "decode_responses": True,
    }
    client = redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        parser_class=_Parser,
        **options,
    )
    store = Store(client, url, settings.tenant, options)
    store.ping()
    return store
