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
    BeforeValidator,
    Field,
    ModelWrapValidatorHandler,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from cluster.contracts import CAPABILITY, NAME, TASK_ID, Contract, Record
from cluster.errors import ErrorInfo
from cluster.llm.usage import WorkflowBudget

SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"


def new_id() -> str:
    return uuid.uuid4().hex


def _placement_probe() -> None:
    """Never run: a function whose Ray options check a label selector."""


class Resources(Contract):
    #: Agents mostly wait on I/O, so replicas reserve no CPU unless the spec asks.
    num_cpus: float = Field(default=0, ge=0)
    num_gpus: float = Field(default=0, ge=0)
    memory_mb: int | None = Field(default=None, gt=0)
    custom: dict[str, float] = {}
    #: Ray label selector: only nodes whose labels match (`{"zone": "us-east1-b"}`,
    #: values may be `!v`, `in(a,b)`, `!in(a,b)`), e.g. the nodes serving an LLM.
    node_labels: dict[str, str] = {}
    #: Replicas of a pool go to different nodes when they can (Ray's SPREAD strategy).
    spread: bool = True

    @field_validator("node_labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        if value:
            import ray

            # Ray's public options check (no cluster needed) raises ValueError naming the
            # bad key or value, exactly as starting the replica would.
            ray.remote(_placement_probe).options(label_selector=value)
        return value


class Replicas(Contract):
    min: int = Field(default=1, ge=0, le=1000)
    max: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class Autoscaling(Contract):
    """How the supervisor sizes a pool from its load, within `replicas.min..max`."""

    #: In-flight tasks one replica should carry; the pool grows past it and shrinks below.
    target_inflight_per_replica: float = Field(default=4, gt=0)
    #: Load must want more replicas this long before the pool grows (0: at once).
    upscale_delay_s: float = Field(default=0, ge=0)
    #: Load must want fewer replicas this long before the pool shrinks.
    downscale_delay_s: float = Field(default=30, ge=0)
    #: A pool idle this long stops its last replica (needs `replicas.min: 0`); the next
    #: task waits for one to start. None keeps at least one replica.
    idle_to_zero_s: float | None = Field(default=None, gt=0)


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


ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
ENTRYPOINT = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


class MCPServer(Contract):
    """An MCP server whose tools an LLM agent may call: a command over stdio or an HTTP URL."""

    #: stdio transport: the server's argv, started per replica; `command[0]` must match the
    #: operator's `mcp_commands` allow-list (empty by default).
    command: list[str] | None = Field(default=None, min_length=1)
    #: Extra environment for the stdio server (values, so never put a secret here).
    env: dict[str, str] = {}
    #: Working directory of the stdio server (default: the replica's).
    cwd: str | None = None
    #: streamable HTTP transport: the server's MCP endpoint, e.g. http://host:8000/mcp.
    url: str | None = Field(default=None, pattern=r"^https?://")
    #: Only these of the server's tools (default: all it lists).
    include: list[str] | None = None

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServer:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (stdio) or url (streamable HTTP)")
        return self


class ToolRef(Contract):
    """One tool (or, for MCP, a set of tools) an LLM agent may call: exactly one of
    `skill` (a python function), `mcp` (an MCP server) or `agent` (a capability)."""

    #: `module:function` in the operator's `tool_skills` allow-list; its JSON schema comes
    #: from its type hints or pydantic model.
    skill: str | None = Field(default=None, pattern=ENTRYPOINT)
    mcp: MCPServer | None = None
    #: Delegate to whichever agent serves this capability, routed like any task.
    agent: str | None = Field(default=None, pattern=CAPABILITY)
    #: The name the model sees (default: the function name, the MCP tool's, or the
    #: capability with dots as underscores).
    name: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
    description: str = ""
    #: For delegation and MCP calls; skills run under the task's own timeout.
    timeout_s: float | None = Field(default=None, gt=0)
    #: Safe to run again when a crash left it unclear whether it ran.
    idempotent: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> ToolRef:
        given = [k for k in ("skill", "mcp", "agent") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of skill, mcp or agent (got {given or 'none'})")
        return self


class MemoryConfig(Contract):
    """Conversation memory per session, kept in Redis, bounded by messages and/or tokens."""

    max_messages: int = Field(default=50, ge=1, le=10_000)
    max_tokens: int | None = Field(default=None, gt=0)
    #: Seconds a session is kept after its last message (None: until removed).
    ttl_s: float | None = Field(default=None, gt=0)


class BudgetConfig(Contract):
    """Limits on what one task may spend; `on_exceeded` says what happens past them."""

    max_tokens: int | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, gt=0)
    #: "fail" stops the task; "pause" stops it and, in a workflow, holds the step at an
    #: approval gate.
    on_exceeded: Literal["fail", "pause"] = "fail"


def _schema_of(value: Any) -> Any:
    """A pydantic model (from Python) becomes its JSON schema; a dict passes as is. A
    `module:Model` string is not imported: specs also arrive over HTTP."""
    from pydantic import BaseModel

    if isinstance(value, type) and issubclass(value, BaseModel):
        return value.model_json_schema()
    return value


class LLMConfig(Contract):
    """How an `llm` agent talks to its model. The API key is named, never written here."""

    provider: Literal["openai", "anthropic"]
    model: str = Field(min_length=1)
    #: Any OpenAI-compatible endpoint (vLLM, Ollama, LM Studio, Ray Serve LLM).
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    #: The key by reference only: an environment variable's name (`DAFNCK_SECRET_*` or one
    #: the operator lists in `secret_env_allow`) ...
    api_key_env: str | None = Field(default=None, pattern=ENV_NAME)
    #: ... or the path of a file holding it, inside the platform's `secrets_dir`.
    api_key_file: str | None = None
    system_prompt: str = ""
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int = Field(default=1024, gt=0)
    timeout_s: float = Field(default=60, gt=0)
    #: The SDK's own retries (429 honouring Retry-After, 5xx, timeouts); ours never stack.
    max_retries: int = Field(default=2, ge=0, le=10)
    #: Stream the reply's tokens to live consumers as `task.token` events.
    stream: bool = False
    #: JSON schema (or, from Python, a pydantic model) the final reply must satisfy.
    output_schema: Annotated[dict[str, Any] | None, BeforeValidator(_schema_of)] = None
    #: How often the model is asked for a reply that parses and validates.
    output_attempts: int = Field(default=3, ge=1, le=20)
    tools: list[ToolRef] = []
    #: Model turns of the tool-calling loop before the task fails.
    max_steps: int = Field(default=8, ge=1, le=200)
    memory: MemoryConfig | None = None
    budget: BudgetConfig | None = None

    @field_validator("output_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        return value

    @field_validator("api_key_env", mode="before")
    @classmethod
    def _a_name_not_a_key(cls, value: Any) -> Any:
        if isinstance(value, str) and ("-" in value or len(value) > 64):
            # Never quote the value: it may be the key itself.
            raise ValueError(
                "names an environment variable (like OPENAI_API_KEY), never the key itself"
            )
        return value

    @model_validator(mode="after")
    def _one_key_ref(self) -> LLMConfig:
        if self.api_key_env and self.api_key_file:
            raise ValueError("give api_key_env or api_key_file, not both")
        return self


class AgentSpec(Contract):
    """One agent: a pool of replicas of the same code, serving its capabilities."""

    name: str = Field(pattern=NAME)
    version: str = Field(default="1.0.0", pattern=SEMVER)
    description: str = ""
    kind: Literal["python", "llm"] = "python"
    capabilities: list[str] = Field(min_length=1)
    #: `module:attr`: a function (one skill) or a class whose `@skill` methods are skills.
    #: Required for kind `python`; unused by kind `llm`. Must match the operator's
    #: `agent_entrypoints` allow-list.
    entrypoint: str | None = Field(default=None, pattern=ENTRYPOINT)
    #: The model, its prompt and its tools: required for kind `llm`, refused otherwise.
    llm: LLMConfig | None = None
    #: Keyword arguments for the class's constructor.
    config: dict[str, Any] = {}
    resources: Resources = Resources()
    replicas: Replicas = Replicas()
    #: Size the pool from its load (None: `replicas.min`, or what `agents scale` sets).
    autoscaling: Autoscaling | None = None
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

    @model_validator(mode="wrap")
    @classmethod
    def _entrypoint_beside_the_rest(
        cls, data: Any, handler: ModelWrapValidatorHandler[AgentSpec]
    ) -> AgentSpec:
        """A python agent's missing entrypoint is reported together with every other problem."""
        missing = (
            isinstance(data, dict)
            and data.get("kind", "python") == "python"
            and data.get("entrypoint") is None
        )
        errors: list[Any] = []
        try:
            spec = handler(data)
        except ValidationError as exc:
            if not missing:
                raise
            errors = [
                {"type": e["type"], "loc": e["loc"], "input": e["input"], "ctx": e.get("ctx", {})}
                for e in exc.errors()
            ]
        if missing:
            errors.append({"type": "missing", "loc": ("entrypoint",), "input": data})
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return spec

    @model_validator(mode="after")
    def _kind_fields(self) -> AgentSpec:
        if self.kind == "llm" and self.llm is None:
            raise ValueError("llm: required for kind 'llm' (provider, model, ...)")
        if self.kind == "python" and self.llm is not None:
            raise ValueError("llm: only for kind 'llm'; set kind: llm")
        return self

    @model_validator(mode="after")
    def _autoscaling_fits(self) -> AgentSpec:
        scaling = self.autoscaling
        if scaling is None:
            return self
        if scaling.target_inflight_per_replica > self.max_concurrency:
            raise ValueError(
                f"autoscaling.target_inflight_per_replica ({scaling.target_inflight_per_replica:g}) "
                f"must not exceed max_concurrency ({self.max_concurrency}): a replica never "
                "runs more at once, so the pool would never grow"
            )
        if scaling.idle_to_zero_s is not None and self.replicas.min != 0:
            raise ValueError("autoscaling.idle_to_zero_s needs replicas.min: 0")
        return self

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
    #: The workflow's model budget, checked by LLM agents against the execution's usage.
    budget: WorkflowBudget | None = None
    #: A person approved going past the budgets for this step: they are not checked.
    budget_waived: bool = False
    #: The workflow engine's attempt of the step (`attempt` also counts the router's
    #: retries after a replica died): LLM replies are cached per step attempt.
    step_attempt: int | None = Field(default=None, ge=1)


class Task(Contract):
    """One unit of work for whichever agent serves `capability` (or the named `agent`)."""

    id: str = Field(default_factory=new_id, pattern=TASK_ID)
    capability: str = Field(pattern=CAPABILITY)
    #: Restrict routing to one agent: "name" or "name@<version range>".
    agent: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9-]{0,62}(@.{1,100})?$")
    input: dict[str, Any] = {}
    priority: int = 0
    #: Finite; the router caps it at the agent's own `timeout_s`.
    timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    idempotency_key: str | None = Field(default=None, pattern=r"^[\x21-\x7e]{1,200}$")
    context: TaskContext = TaskContext()

    @field_validator("agent")
    @classmethod
    def _agent_range(cls, value: str | None) -> str | None:
        if value and "@" in value:
            version_range(value.partition("@")[2])
        return value


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
