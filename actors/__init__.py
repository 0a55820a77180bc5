"""The live cluster parts: agent replicas, the supervisor, the registry, and the client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.contracts import lazy_exports

if TYPE_CHECKING:
    from actors.client import Client, connect
    from actors.models import (
        AgentRecord,
        AgentSpec,
        AgentStatus,
        DiscoveryCriteria,
        Replicas,
        Resources,
        RetryPolicy,
        Task,
        TaskContext,
        TaskResult,
    )
    from actors.registry import AgentRegistry
    from actors.router import PoolRouter
    from actors.skills import skill
    from actors.supervisor import Supervisor

#: Public name -> the module that defines it, imported on first use.
_HOME = {
    "AgentRecord": "actors.models",
    "AgentRegistry": "actors.registry",
    "AgentSpec": "actors.models",
    "AgentStatus": "actors.models",
    "Client": "actors.client",
    "DiscoveryCriteria": "actors.models",
    "PoolRouter": "actors.router",
    "Replicas": "actors.models",
    "Resources": "actors.models",
    "RetryPolicy": "actors.models",
    "Supervisor": "actors.supervisor",
    "Task": "actors.models",
    "TaskContext": "actors.models",
    "TaskResult": "actors.models",
    "connect": "actors.client",
    "skill": "actors.skills",
}

__all__ = [
    "AgentRecord",
    "AgentRegistry",
    "AgentSpec",
    "AgentStatus",
    "Client",
    "DiscoveryCriteria",
    "PoolRouter",
    "Replicas",
    "Resources",
    "RetryPolicy",
    "Supervisor",
    "Task",
    "TaskContext",
    "TaskResult",
    "connect",
    "skill",
]


__getattr__ = lazy_exports(__name__, _HOME)
