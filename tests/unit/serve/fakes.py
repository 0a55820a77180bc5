"""A supervisor without Ray, for route tests: `FakeSupervisor` implements
`actors.contract.SupervisorApi` over a real store, as the supervisor does.

Agents go into the tenant's real `AgentRegistry` and workflow definitions into its real
`ExecutionStore`, so the routes' own reads (list, get, versions) see them; executions are
kept in memory and obey the supervisor's rules for each control call (pausing only a
running one, deciding only a step at its gate, ...), raising the same errors.
"""

from __future__ import annotations

import time
from typing import Any

from actors.contract import (
    AgentRef,
    CancelExecution,
    CoordinateAgents,
    CreateAgent,
    DecideStep,
    DefineWorkflow,
    ExecuteTask,
    ExecuteWorkflow,
    ExecutionRef,
    GetPool,
    ListExecutions,
    MonitorHealth,
    Request,
    ScaleAgent,
    SetAgentStatus,
    WaitExecution,
    WorkflowDefined,
)
from actors.models import AgentRecord, TaskResult
from actors.registry import AgentRegistry
from actors.router import PoolView
from cluster.errors import Conflict, NotFound
from workflows.execution import (
    ApprovalDecision,
    Execution,
    ExecutionStatus,
    StepState,
    StepStatus,
)
from workflows.store import ExecutionStore

S = ExecutionStatus


class FakeSupervisor:
    """One tenant's supervisor, in memory; `calls` lists every request it was given."""

    def __init__(self, registry: AgentRegistry, executions: ExecutionStore) -> None:
        self.registry = registry
        self.executions = executions
        self.runs: dict[str, Execution] = {}
        self.calls: list[Request] = []

    def _seen(self, request: Request) -> None:
        self.calls.append(request)

    # -- agents ----------------------------------------------------------------------------

    async def create_agent(self, request: CreateAgent) -> AgentRecord:
        self._seen(request)
        return self.registry.register_agent(AgentRecord(spec=request.spec))

    async def remove_agent(self, request: AgentRef) -> None:
        self._seen(request)
        self.registry.get(request.agent_id)  # NotFound
        self.registry.deregister_agent(request.agent_id)

    async def scale_agents(self, request: ScaleAgent) -> AgentRecord:
        self._seen(request)
        return self.registry.set_desired_replicas(request.agent_id, request.replicas)

    async def update_agent_status(self, request: SetAgentStatus) -> AgentRecord:
        self._seen(request)
        return self.registry.update_agent_status(request.agent_id, request.status)

    async def get_pool(self, request: GetPool) -> PoolView:
        raise NotImplementedError("route tests never route a task")

    async def execute_task(self, request: ExecuteTask) -> TaskResult:
        raise NotImplementedError("route tests never route a task")

    async def monitor_health(self, request: MonitorHealth) -> dict[str, Any]:
        self._seen(request)
        return {"status": "ok", "pools": {}}

    # -- workflows ---------------------------------------------------------------------------

    async def define_workflow(self, request: DefineWorkflow) -> WorkflowDefined:
        self._seen(request)
        spec = request.spec
        version, created = self.executions.define(spec.name, spec.model_dump_json(by_alias=True))
        return WorkflowDefined(name=spec.name, version=version, created=created)

    async def execute_workflow(self, request: ExecuteWorkflow) -> Execution:
        self._seen(request)
        if request.execution_id in self.runs:
            return self.runs[request.execution_id]
        version, _ = self.executions.definition(request.workflow, request.version)  # NotFound
        execution = Execution(
            id=request.execution_id, workflow=request.workflow, version=version,
            status=S.RUNNING, inputs=request.inputs,
        )  # fmt: skip
        self.runs[execution.id] = execution
        return execution

    async def coordinate_agents(self, request: CoordinateAgents) -> Execution:
        raise NotImplementedError("no route coordinates agents")

    async def get_execution_status(self, request: ExecutionRef) -> Execution:
        self._seen(request)
        return self._run(request.execution_id)

    async def wait_execution(self, request: WaitExecution) -> Execution:
        self._seen(request)
        return self._run(request.execution_id)  # as it is: nothing runs in the fake

    async def list_executions(self, request: ListExecutions) -> list[Execution]:
        self._seen(request)
        found = [e for e in self.runs.values() if request.status in (None, e.status)]
        return sorted(found, key=lambda e: -e.created_at)[: request.limit]

    async def pause_workflow(self, request: ExecutionRef) -> Execution:
        self._seen(request)
        return self._move(request.execution_id, {S.RUNNING, S.WAITING_APPROVAL}, S.PAUSED)

    async def resume_workflow(self, request: ExecutionRef) -> Execution:
        self._seen(request)
        return self._move(request.execution_id, {S.PAUSED}, S.RUNNING)

    async def retry_workflow(self, request: ExecutionRef) -> Execution:
        self._seen(request)
        return self._move(request.execution_id, {S.FAILED, S.CANCELLED}, S.RUNNING)

    async def cancel_workflow(self, request: CancelExecution) -> Execution:
        self._seen(request)
        live = {s for s in S if not s.terminal}
        return self._move(request.execution_id, live, S.CANCELLED)

    async def decide_step(self, request: DecideStep) -> Execution:
        self._seen(request)
        execution = self._run(request.execution_id)
        step = execution.steps.get(request.step)
        if step is None or step.status is not StepStatus.WAITING_APPROVAL:
            raise Conflict(f"step {request.step!r} is not waiting for approval")
        decision = "approved" if request.approved else "rejected"
        step.approval = ApprovalDecision(decision=decision, by=request.by, reason=request.reason)
        step.status = StepStatus.QUEUED if request.approved else StepStatus.FAILED
        execution.status = S.RUNNING if request.approved else S.FAILED
        return execution

    # -- test helpers ----------------------------------------------------------------------

    def gate(self, execution_id: str, step: str) -> None:
        """Hold `step` of the execution at its approval gate."""
        execution = self._run(execution_id)
        execution.steps[step] = StepState(status=StepStatus.WAITING_APPROVAL)
        execution.status = S.WAITING_APPROVAL

    def _run(self, execution_id: str) -> Execution:
        if execution_id not in self.runs:
            raise NotFound(f"execution {execution_id!r} does not exist")
        return self.runs[execution_id]

    def _move(self, execution_id: str, sources: set[S], target: S) -> Execution:
        execution = self._run(execution_id)
        if execution.status not in sources:
            raise Conflict(f"execution {execution_id!r} is {execution.status}, not {target}-able")
        execution.status, execution.updated_at = target, time.time()
        return execution
