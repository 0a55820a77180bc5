"""The one way to a tenant's supervisor: every `.remote` call to it is in this module.

`SupervisorGateway` is async (what Serve's routes, gRPC and other actors await); each
method takes the operation's request model from `actors.contract`, adds the caller's trace
context, and raises our own error instead of Ray's wrapper. `BlockingSupervisor` is the
thin sync facade over it for notebooks, scripts and the CLI: the same operations, run on
one background event loop per process, so a cell in a notebook (which has a running loop
of its own) can call it too.

```python
gateway = SupervisorGateway(handle)
execution = await gateway.pause_workflow(ExecutionRef(execution_id=eid))
```
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from ray.exceptions import RayTaskError

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
    SignalExecution,
    StepAction,
    WaitExecution,
    WorkflowDefined,
)
from actors.models import AgentRecord, TaskResult
from actors.router import PoolView
from cluster.errors import DafnckError
from cluster.tracing import current_traceparent
from workflows.execution import Execution

R = TypeVar("R")
#: How long a call waits for the supervisor unless the operation itself waits longer.
CALL_TIMEOUT_S = 300.0


class SupervisorGateway:
    """The tenant's supervisor, as typed async calls (implements `SupervisorApi`)."""

    def __init__(self, handle: Any) -> None:
        #: The supervisor's Ray actor handle (`actors.system.SupervisorActor`).
        self.handle = handle

    async def _call(
        self,
        method: str,
        request: Request,
        reply: type[R],
        timeout_s: float | None = CALL_TIMEOUT_S,
    ) -> R:
        request = request.model_copy(update={"traceparent": current_traceparent()})
        ref = getattr(self.handle, method).remote(request)
        try:
            return cast(R, await asyncio.wait_for(ref, timeout_s))
        except RayTaskError as exc:
            if isinstance(exc.cause, DafnckError):
                raise exc.cause from None
            raise

    async def create_agent(self, request: CreateAgent) -> AgentRecord:
        return await self._call("create_agent", request, AgentRecord)

    async def remove_agent(self, request: AgentRef) -> None:
        await self._call("remove_agent", request, type(None))

    async def scale_agents(self, request: ScaleAgent) -> AgentRecord:
        return await self._call("scale_agents", request, AgentRecord)

    async def update_agent_status(self, request: SetAgentStatus) -> AgentRecord:
        return await self._call("update_agent_status", request, AgentRecord)

    async def get_pool(self, request: GetPool) -> PoolView:
        return await self._call("get_pool", request, PoolView)

    async def execute_task(self, request: ExecuteTask) -> TaskResult:
        return await self._call("execute_task", request, TaskResult, None)

    async def monitor_health(self, request: MonitorHealth) -> dict[str, Any]:
        return await self._call("monitor_health", request, dict)

    async def define_workflow(self, request: DefineWorkflow) -> WorkflowDefined:
        return await self._call("define_workflow", request, WorkflowDefined)

    async def execute_workflow(self, request: ExecuteWorkflow) -> Execution:
        return await self._call("execute_workflow", request, Execution)

    async def coordinate_agents(self, request: CoordinateAgents) -> Execution:
        return await self._call("coordinate_agents", request, Execution, None)

    async def get_execution_status(self, request: ExecutionRef) -> Execution:
        return await self._call("get_execution_status", request, Execution)

    async def wait_execution(self, request: WaitExecution) -> Execution:
        return await self._call("wait_execution", request, Execution, None)

    async def list_executions(self, request: ListExecutions) -> list[Execution]:
        return await self._call("list_executions", request, list)

    async def pause_workflow(self, request: ExecutionRef) -> Execution:
        return await self._call("pause_workflow", request, Execution)

    async def resume_workflow(self, request: ExecutionRef) -> Execution:
        return await self._call("resume_workflow", request, Execution)

    async def retry_workflow(self, request: ExecutionRef) -> Execution:
        return await self._call("retry_workflow", request, Execution)

    async def cancel_workflow(self, request: CancelExecution) -> Execution:
        return await self._call("cancel_workflow", request, Execution)

    async def decide_step(self, request: DecideStep) -> Execution:
        return await self._call("decide_step", request, Execution)

    async def signal_execution(self, request: SignalExecution) -> Execution:
        return await self._call("signal_execution", request, Execution)

    async def cancel_step(self, request: StepAction) -> Execution:
        return await self._call("cancel_step", request, Execution)

    async def skip_step(self, request: StepAction) -> Execution:
        return await self._call("skip_step", request, Execution)


class BlockingSupervisor:
    """`SupervisorGateway`'s operations as blocking calls (notebooks, scripts, the CLI)."""

    def __init__(self, gateway: SupervisorGateway) -> None:
        self.gateway = gateway

    def create_agent(self, r: CreateAgent) -> AgentRecord:
        return blocking(self.gateway.create_agent(r))

    def remove_agent(self, r: AgentRef) -> None:
        blocking(self.gateway.remove_agent(r))

    def scale_agents(self, r: ScaleAgent) -> AgentRecord:
        return blocking(self.gateway.scale_agents(r))

    def update_agent_status(self, r: SetAgentStatus) -> AgentRecord:
        return blocking(self.gateway.update_agent_status(r))

    def get_pool(self, r: GetPool) -> PoolView:
        return blocking(self.gateway.get_pool(r))

    def execute_task(self, r: ExecuteTask) -> TaskResult:
        return blocking(self.gateway.execute_task(r))

    def monitor_health(self, r: MonitorHealth) -> dict[str, Any]:
        return blocking(self.gateway.monitor_health(r))

    def define_workflow(self, r: DefineWorkflow) -> WorkflowDefined:
        return blocking(self.gateway.define_workflow(r))

    def execute_workflow(self, r: ExecuteWorkflow) -> Execution:
        return blocking(self.gateway.execute_workflow(r))

    def coordinate_agents(self, r: CoordinateAgents) -> Execution:
        return blocking(self.gateway.coordinate_agents(r))

    def get_execution_status(self, r: ExecutionRef) -> Execution:
        return blocking(self.gateway.get_execution_status(r))

    def wait_execution(self, r: WaitExecution) -> Execution:
        return blocking(self.gateway.wait_execution(r))

    def list_executions(self, r: ListExecutions) -> list[Execution]:
        return blocking(self.gateway.list_executions(r))

    def pause_workflow(self, r: ExecutionRef) -> Execution:
        return blocking(self.gateway.pause_workflow(r))

    def resume_workflow(self, r: ExecutionRef) -> Execution:
        return blocking(self.gateway.resume_workflow(r))

    def retry_workflow(self, r: ExecutionRef) -> Execution:
        return blocking(self.gateway.retry_workflow(r))

    def cancel_workflow(self, r: CancelExecution) -> Execution:
        return blocking(self.gateway.cancel_workflow(r))

    def decide_step(self, r: DecideStep) -> Execution:
        return blocking(self.gateway.decide_step(r))

    def signal_execution(self, r: SignalExecution) -> Execution:
        return blocking(self.gateway.signal_execution(r))

    def cancel_step(self, r: StepAction) -> Execution:
        return blocking(self.gateway.cancel_step(r))

    def skip_step(self, r: StepAction) -> Execution:
        return blocking(self.gateway.skip_step(r))


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    """This process's loop for blocking calls, started on first use (a daemon thread)."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="dafnck-gateway", daemon=True).start()
        return _loop


def blocking(coro: Coroutine[Any, Any, R]) -> R:
    """Run `coro` on the background loop and wait for it, re-raising what it raised. It runs
    in a copy of the caller's context (`call_soon_threadsafe` copies it), so the caller's
    trace span and log ids go with it."""
    return asyncio.run_coroutine_threadsafe(coro, _background_loop()).result()
