"""Workflows inside the supervisor: the seed's WorkflowManager operations over the engine.

`AgentDispatcher` runs a step by routing a task straight to an agent replica (the
supervisor's own router: step outputs go replica -> supervisor -> next replica as Ray
objects, never through a driver). `WorkflowService` validates definitions against the
registry, keeps them versioned, and forwards execution control to the engine.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from packaging.version import Version

from actors.models import AgentStatus, DiscoveryCriteria, Task, TaskContext
from actors.registry import AgentRegistry
from actors.router import Call, PoolRouter
from cluster.errors import DafnckError, QueueFull, SpecInvalid
from cluster.quotas import Quotas
from workflows.dispatch import Dispatcher
from workflows.engine import StepOutcome, StepRequest, WorkflowEngine
from workflows.execution import Execution, ExecutionStatus
from workflows.run import Run
from workflows.spec import WorkflowSpec
from workflows.store import ExecutionStore
from workflows.validate import validate_workflow

#: How long a step waits before trying a full pool again (backpressure, not a failure).
_QUEUE_FULL_WAIT_S = 0.02


class AgentDispatcher:
    """Runs a workflow step as a task on an agent; waits politely while a pool is full."""

    def __init__(self, router: PoolRouter, registry: AgentRegistry) -> None:
        self.router = router
        self.registry = registry
        #: Calls in flight by idempotency key, so `cancel` reaches the replica.
        self._calls: dict[str, Call] = {}

    async def run(self, request: StepRequest) -> StepOutcome:
        key = request.idempotency_key
        try:
            task = self._task(request)
            while True:
                try:
                    call = self._calls[key] = await self.router.submit_async(task)
                    break
                except QueueFull:
                    await asyncio.sleep(_QUEUE_FULL_WAIT_S)
            result = await self.router.result_async(call)
        except DafnckError as exc:
            return StepOutcome(ok=False, error=exc.info())
        finally:
            self._calls.pop(key, None)
        if result.ok:
            return StepOutcome(ok=True, output=result.output)
        error = result.error
        return StepOutcome(ok=False, error=error)

    async def cancel(self, request: StepRequest) -> None:
        """`ray.cancel` the step's task on its replica and give back its slot at once."""
        call = self._calls.pop(request.idempotency_key, None)
        if call is not None:
            self.router.cancel(call)

    async def pin(self, kind: str, target: str) -> str | None:
        """The newest active agent version (`name@version`) a step's target routes to."""
        return await asyncio.to_thread(self._newest, kind, target)

    def _newest(self, kind: str, target: str) -> str | None:
        name, _, version = target.partition("@") if kind == "agent" else ("", "", "")
        criteria = DiscoveryCriteria(
            capability=target if kind == "capability" else None,
            name=name or None,
            version=version or None,
            status=AgentStatus.ACTIVE,
        )
        found = self.registry.discover_agents(criteria)
        newest = max(found, key=lambda r: Version(r.spec.version), default=None)
        return newest.agent_id if newest else None

    def _task(self, request: StepRequest) -> Task:
        capability, agent = request.target, request.pinned
        if request.kind == "agent":
            agent = request.pinned or request.target
            capabilities = {c for r in self.registry.resolve(agent) for c in r.spec.capabilities}
            if len(capabilities) != 1:
                raise SpecInvalid(
                    f"step {request.step_id!r}",
                    [f"agent {agent!r} serves {sorted(capabilities)}; use one capability instead"],
                )
            capability = capabilities.pop()
        context = TaskContext(
            tenant=self.registry.store.tenant,
            workflow_id=request.workflow or None,
            execution_id=request.execution_id,
            step_id=request.step_id,
            attempt=request.attempt,
            step_attempt=request.attempt,
            budget=request.budget,
            budget_waived=request.budget_waived,
        )
        return Task(
            capability=capability,
            agent=agent,
            input=request.input,
            timeout_s=request.timeout_s,
            idempotency_key=request.idempotency_key,
            context=context,
        )


class WorkflowService:
    """define / execute / pause / resume / status of workflows, for one tenant."""

    def __init__(
        self,
        executions: ExecutionStore,
        registry: AgentRegistry,
        dispatcher: Dispatcher,
        *,
        quotas: Quotas | None = None,
        runs: dict[str, Run] | None = None,
    ) -> None:
        self.executions = executions
        self.registry = registry
        self.engine = WorkflowEngine(executions, dispatcher, self.load, quotas, runs)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - one service per supervisor, definitions never change
    def _parsed(self, name: str, version: int) -> WorkflowSpec:
        return WorkflowSpec.model_validate_json(self.executions.definition(name, version)[1])

    def load(self, name: str, version: int | None = None) -> tuple[int, WorkflowSpec]:
        version = version or self.executions.definition(name)[0]
        return version, self._parsed(name, version)

    def triggered(self) -> list[WorkflowSpec]:
        """The latest version of every workflow that has triggers."""
        specs = [self.load(name)[1] for name in self.executions.workflows()]
        return [spec for spec in specs if spec.triggers]

    def define_workflow(self, spec: WorkflowSpec) -> dict[str, Any]:
        """Validate against the registry and store a new version (unless unchanged).

        Raises:
            SpecInvalid: every problem at once.
        """
        records = self.registry.all()
        validate_workflow(
            spec,
            known_capabilities={c for r in records for c in r.spec.capabilities},
            known_agents={r.spec.name for r in records},
            known_workflows=set(self.executions.workflows()) | {spec.name},
        )
        version, created = self.executions.define(spec.name, spec.model_dump_json(by_alias=True))
        return {"name": spec.name, "version": version, "created": created}

    async def execute_workflow(
        self,
        name: str,
        inputs: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        execution_id: str | None = None,
    ) -> Execution:
        """Start an execution; the same `execution_id` again returns the first one.

        Raises:
            NotFound, InputInvalid.
        """
        if execution_id:
            existing = self._existing(execution_id)
            if existing:
                return existing
        return await self.engine.execute(name, inputs, version=version, execution_id=execution_id)

    def _existing(self, execution_id: str) -> Execution | None:
        try:
            return self.engine.get(execution_id)
        except DafnckError:
            return None

    async def coordinate_agents(
        self,
        spec: WorkflowSpec,
        inputs: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Execution:
        """Define, run and wait for a workflow in one call (the seed's coordinateAgents)."""
        self.define_workflow(spec)
        execution = await self.engine.execute(spec.name, inputs)
        return await self.engine.wait(execution.id, timeout_s)

    def get_execution_status(self, execution_id: str) -> Execution:
        return self.engine.get(execution_id)

    def list_executions(
        self, limit: int = 50, status: ExecutionStatus | None = None
    ) -> list[Execution]:
        return self.executions.list_executions(limit, status)
