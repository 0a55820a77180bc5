"""The live cluster parts: agent replicas, the supervisor, the registry, and the client."""

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
