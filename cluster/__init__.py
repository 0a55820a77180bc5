"""The ground floor: settings, errors, the state store, the embedded Valkey, the Ray connection.

The files directly in cluster/ are the ground every package stands on. Its rooms: the
domain services `cluster.auth` (keys, users, tokens, audit), `cluster.data` (data objects,
backups) and `cluster.llm` (prices, limits, usage) stand on the ground only; the operator's
entry points `cluster.cli` and `cluster.bench` stand on top of every package and are not
imported here. tests/unit/test_layers.py holds the order and checks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.contracts import lazy_exports

if TYPE_CHECKING:
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

#: Public name -> the module that defines it, imported on first use.
_HOME = {
    "RAY_NAMESPACE": "cluster.settings",
    "AgentNotFound": "cluster.errors",
    "ClusterUnavailable": "cluster.errors",
    "ConfigError": "cluster.errors",
    "Conflict": "cluster.errors",
    "DafnckError": "cluster.errors",
    "InputInvalid": "cluster.errors",
    "NotFound": "cluster.errors",
    "QueueFull": "cluster.errors",
    "ReplicaDied": "cluster.errors",
    "Settings": "cluster.settings",
    "SpecInvalid": "cluster.errors",
    "Store": "cluster.store",
    "StoreUnavailable": "cluster.errors",
    "TaskFailed": "cluster.errors",
    "TaskTimeout": "cluster.errors",
    "connect_store": "cluster.store",
    "load_settings": "cluster.settings",
    "resolve_redis_url": "cluster.store",
}

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


__getattr__ = lazy_exports(__name__, _HOME)
