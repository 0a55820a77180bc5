"""Contracts of the agent layer: what people write (`*Spec`), what flows (`Task`, `TaskResult`),
and what the registry keeps (`AgentRecord`). The CLI, the API and the actors share them."""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version
from pydantic import (
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from cluster.contracts import Contract, Record

SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
NAME = r"^[a-z][a-z0-9-]{0,62}$"
CAPABILITY = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$"


def new_id() -> str:
    return uuid.uuid4().hex


class Resources(Contract):
    #: Agents mostly wait on I/O, so replicas reserve no CPU unless the spec asks.
    num_cpus: float = Field(default=0, ge=0)
    num_gpus: float = Field(default=0, ge=0)
    memory_mb: int | None = Field(default=None, gt=0)
    custom: dict[str, float] = {}


class Replicas(Contract):
    min: int = Field(default=1, ge=0, le=1000)
    max: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class RetryPolicy(Contract):
    """How often a task is tried when its replica dies or it fails with a retryable error."""

    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff_s: float = Field(default=0.1, ge=0)


class Messaging(Contract):
    """How the agent's pool takes messages (when its class has a `@handler`)."""

    #: Topics the pool consumes besides its inbox.
    topics: list[str] = []
    #: A message unacknowledged this long (its replica died mid-handler) goes to another replica.
    claim_idle_s: float = Field(default=30, gt=0)
    #: After this many deliveries a message goes to the dead-letter stream.
    max_deliveries: int = Field(default=5, ge=1, le=1000)


class AgentSpec(Contract):
    """One agent: a pool of replicas of the same code, serving its capabilities."""

    name: str = Field(pattern=NAME)
    version: str = Field(default="1.0.0", pattern=SEMVER)
    description: str = ""
    kind: Literal["python"] = "python"
    capabilities: list[str] = Field(min_length=1)
    #: `module:attr`: a function (one skill) or a class whose `@skill` methods are skills.
    entrypoint: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    #: Keyword arguments for the class's constructor.
    config: dict[str, Any] = {}
    resources: Resources = Resources()
    replicas: Replicas = Replicas()
    max_concurrency: int = Field(default=16, ge=1, le=10_000)
    #: Tasks a replica may hold waiting beyond `max_concurrency` before the pool says QueueFull.
    max_queued: int = Field(default=100, ge=0, le=100_000)
    timeout_s: float = Field(default=300, gt=0)
    retry: RetryPolicy = RetryPolicy()
    messaging: Messaging = Messaging()
    tags: list[str] = []

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, value: list[str]) -> list[str]:
        import re

        bad = [c for c in value if not re.match(CAPABILITY, c)]
        if bad:
            raise ValueError(
                f"capabilities {bad!r} must be dotted lowercase names like 'code.review'"
            )
        if len(set(value)) != len(value):
            raise ValueError("capabilities must not repeat")
        return value

    @field_validator("version")
    @classmethod
    def _orderable(cls, value: str) -> str:
        from packaging.version import InvalidVersion

        try:
            Version(value)
        except InvalidVersion:
            raise ValueError(
                f"version {value!r} cannot be ordered; use -alpha.1, -beta.2, -rc.1 or -dev"
            ) from None
        return value

    @property
    def agent_id(self) -> str:
        return f"{self.name}@{self.version}"


class AgentStatus(StrEnum):
    ACTIVE = "active"  # receives tasks
    DRAINING = "draining"  # finishes what it has, receives nothing new
    DISABLED = "disabled"  # receives nothing; replicas stopped


class SkillInfo(Record):
    capability: str
    method: str
    input_schema: dict[str, Any]
    description: str = ""


class AgentRecord(Record):
    """The registry's entry for one version of one agent."""

    spec: AgentSpec
    status: AgentStatus = AgentStatus.ACTIVE
    desired_replicas: int = 1
    skills: dict[str, SkillInfo] = {}
    registered_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)

    @property
    def agent_id(self) -> str:
        return self.spec.agent_id


class DiscoveryCriteria(Contract):
    capability: str | None = None
    name: str | None = None
    #: A version range such as ">=1.2,<2" or an exact "1.2.3".
    version: str | None = None
    status: AgentStatus | None = None
    tags: list[str] = []

    @field_validator("version")
    @classmethod
    def _range(cls, value: str | None) -> str | None:
        if value is not None:
            version_range(value)
        return value

    def matches(self, record: AgentRecord) -> bool:
        spec = record.spec
        return (
            (self.capability is None or self.capability in spec.capabilities)
            and (self.name is None or self.name == spec.name)
            and (self.version is None or Version(spec.version) in version_range(self.version))
            and (self.status is None or self.status == record.status)
            and set(self.tags) <= set(spec.tags)
        )


def version_range(text: str) -> SpecifierSet:
    """Parse ">=1.2,<2" (or a bare "1.2.3", meaning exactly it).

    Raises:
        ValueError: the range does not parse.
    """
    text = text.strip()
    if text and text[0].isdigit():
        text = f"=={text}"
    try:
        return SpecifierSet(text, prereleases=True)
    except InvalidSpecifier:
        raise ValueError(f"version range {text!r} is not like '>=1.2,<2' or '1.2.3'") from None


class TaskContext(Contract):
    tenant: str = "default"
    traceparent: str | None = None
    workflow_id: str | None = None
    execution_id: str | None = None
    step_id: str | None = None
    attempt: int = 1


class Task(Contract):
    """One unit of work for whichever agent serves `capability` (or the named `agent`)."""

    id: str = Field(default_factory=new_id, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    capability: str = Field(pattern=CAPABILITY)
    #: Restrict routing to one agent: "name" or "name@<version range>".
    agent: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9-]{0,62}(@.{1,100})?$")
    input: dict[str, Any] = {}
    priority: int = 0
    timeout_s: float | None = Field(default=None, gt=0)
    idempotency_key: str | None = Field(default=None, pattern=r"^[\x21-\x7e]{1,200}$")
    context: TaskContext = TaskContext()

    @field_validator("agent")
    @classmethod
    def _agent_range(cls, value: str | None) -> str | None:
        if value and "@" in value:
            version_range(value.partition("@")[2])
        return value


class ErrorInfo(Record):
    type: str
    message: str
    retryable: bool = False


class TaskResult(Record):
    task_id: str
    status: Literal["succeeded", "failed"]
    output: Any = None
    error: ErrorInfo | None = None
    agent: str = ""
    replica: str = ""
    attempts: int = 1
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at) * 1000


def _arrow_table(value: Any) -> Any:
    import pyarrow as pa

    if not isinstance(value, pa.Table):
        raise ValueError(f"expected an Arrow table, got {type(value).__name__}")
    return value


#: A skill parameter holding an Arrow table: passed by Ray (through its object store when
#: large), never as JSON. Its JSON schema has no `type`, so routers let it through.
ArrowTable = Annotated[
    Any,
    PlainValidator(_arrow_table),
    WithJsonSchema({"description": "an Arrow table", "x-dafnck-type": "arrow.table"}),
]
