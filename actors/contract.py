"""The supervisor's contract: one request model per operation, and `SupervisorApi`.

Every surface (REST, gRPC, the CLI, the Python client, the dashboard) reaches a tenant's
supervisor through these operations and nothing else, so an operation has one argument
list and one meaning everywhere. Adding one is a request model here, a method on
`SupervisorApi` (implemented by `actors.system.SupervisorActor`), one method on
`actors.gateway.SupervisorGateway`, and one line per surface.

Requests are frozen pydantic models with every field named: no positional argument
orders to keep in step. `traceparent` is set by the gateway (the caller's span), never by
a surface.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from actors.models import AgentRecord, AgentSpec, AgentStatus, Task, TaskResult
from actors.router import PoolView
from workflows.execution import Execution, ExecutionStatus
from workflows.spec import WorkflowSpec


class Request(BaseModel):
    """What every supervisor operation is called with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The W3C traceparent of the calling span, so the supervisor's work joins its trace.
    traceparent: str | None = None


# -- agents ------------------------------------------------------------------------------


class CreateAgent(Request):
    """Create an agent, or a new version of one, and start its pool."""

    spec: AgentSpec


class AgentRef(Request):
    """One agent version, by id (`name@version`)."""

    agent_id: str


class ScaleAgent(AgentRef):
    replicas: int = Field(ge=0)


class SetAgentStatus(AgentRef):
    status: AgentStatus


class GetPool(Request):
    """The pool a task for `capability` (or for the agent `agent`) is routed to."""

    capability: str
    agent: str | None = None


class ExecuteTask(Request):
    """Run one task through the supervisor (a relay: clients route to replicas directly)."""

    task: Task


class MonitorHealth(Request):
    """The platform's health: pools, replicas, the store, the supervisor, Ray."""


# -- workflows and executions ----------------------------------------------------------


class DefineWorkflow(Request):
    spec: WorkflowSpec


class WorkflowDefined(BaseModel):
    """The version a definition was stored as (`created` False: the same as the latest)."""

    name: str
    version: int
    created: bool


class ExecuteWorkflow(Request):
    """Start an execution; the same `execution_id` again returns the first one."""

    workflow: str
    inputs: dict[str, Any] = {}
    version: int | None = None
    execution_id: str


class CoordinateAgents(Request):
    """Define, run and wait for a workflow in one call (the seed's coordinateAgents)."""

    spec: WorkflowSpec
    inputs: dict[str, Any] = {}
    timeout_s: float | None = None


class ExecutionRef(Request):
    """One execution, by id: status, pause, resume, retry."""

    execution_id: str


class WaitExecution(ExecutionRef):
    """Wait until the execution ends (or `timeout_s` passes: then its current state)."""

    timeout_s: float | None = None


class CancelExecution(ExecutionRef):
    by: str = ""
    reason: str = ""


class DecideStep(ExecutionRef):
    """Approve (`approved`) or reject a step waiting at its approval gate."""

    step: str
    approved: bool
    by: str
    reason: str = ""


class SignalExecution(ExecutionRef):
    """Send signal `name` to an execution: a step waiting for it takes `payload` as its
    output (kept for the first step that will, if none waits yet)."""

    name: str
    payload: Any = None


class StepAction(ExecutionRef):
    """Cancel or skip one step of a live execution (its running work is cancelled)."""

    step: str
    by: str = ""
    reason: str = ""


class ListExecutions(Request):
    limit: int = Field(default=50, ge=1, le=1000)
    status: ExecutionStatus | None = None


class SupervisorApi(Protocol):
    """Every operation of a tenant's supervisor. Errors are `cluster.errors.DafnckError`s."""

    async def create_agent(self, request: CreateAgent) -> AgentRecord: ...
    async def remove_agent(self, request: AgentRef) -> None: ...
    async def scale_agents(self, request: ScaleAgent) -> AgentRecord: ...
    async def update_agent_status(self, request: SetAgentStatus) -> AgentRecord: ...
    async def get_pool(self, request: GetPool) -> PoolView: ...
    async def execute_task(self, request: ExecuteTask) -> TaskResult: ...
    async def monitor_health(self, request: MonitorHealth) -> dict[str, Any]: ...
    async def define_workflow(self, request: DefineWorkflow) -> WorkflowDefined: ...
    async def execute_workflow(self, request: ExecuteWorkflow) -> Execution: ...
    async def coordinate_agents(self, request: CoordinateAgents) -> Execution: ...
    async def get_execution_status(self, request: ExecutionRef) -> Execution: ...
    async def wait_execution(self, request: WaitExecution) -> Execution: ...
    async def list_executions(self, request: ListExecutions) -> list[Execution]: ...
    async def pause_workflow(self, request: ExecutionRef) -> Execution: ...
    async def resume_workflow(self, request: ExecutionRef) -> Execution: ...
    async def retry_workflow(self, request: ExecutionRef) -> Execution: ...
    async def cancel_workflow(self, request: CancelExecution) -> Execution: ...
    async def decide_step(self, request: DecideStep) -> Execution: ...
    async def signal_execution(self, request: SignalExecution) -> Execution: ...
    async def cancel_step(self, request: StepAction) -> Execution: ...
    async def skip_step(self, request: StepAction) -> Execution: ...
