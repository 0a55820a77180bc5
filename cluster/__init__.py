"""The ground floor: settings, errors, the state store, the embedded Valkey, the Ray connection.

The operator entry points (`cluster.cli`, `cluster.bench`) sit on top of every package and
are not imported here.
"""

from cluster.errors import (
    AgentNotFound,
    ClusterUnavailable,
    ConfigError,
    Conflict,
    DafnckError,
    InputInvalid,
    NotFound,
    QueueFull,
    ReplicaDied,
    SpecInvalid,
    StoreUnavailable,
    TaskFailed,
    TaskTimeout,
)
from cluster.settings import RAY_NAMESPACE, Settings, load_settings
from cluster.store import Store, connect_store, resolve_redis_url

__all__ = [
    "RAY_NAMESPACE",
    "AgentNotFound",
    "ClusterUnavailable",
    "ConfigError",
    "Conflict",
    "DafnckError",
    "InputInvalid",
    "NotFound",
    "QueueFull",
    "ReplicaDied",
    "Settings",
    "SpecInvalid",
    "Store",
    "StoreUnavailable",
    "TaskFailed",
    "TaskTimeout",
    "connect_store",
    "load_settings",
    "resolve_redis_url",
]
