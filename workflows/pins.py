"""Version pinning: an execution routes each step to the agent version that was newest
when it started, through retries, restarts and later agent upgrades.

At the start every capability and agent target of the workflow is resolved through the
dispatcher (`Pinning.pin`) and kept in the execution's record (`Execution.pins`); a target
that routes nowhere yet is resolved when its step first runs, and kept then. A workflow
with `agent_versions: latest` routes each dispatch to the newest active version instead.
A pinned version that has since been made inactive fails the step (AgentNotFound names
it): retire an old version once the executions started on it have ended.
"""

from __future__ import annotations

from cluster.errors import DafnckError
from workflows.dispatch import Dispatcher, Pinning
from workflows.run import Recorder, Run, new_event
from workflows.spec import StepSpec, WorkflowSpec

_ROUTED = ("capability", "agent")


async def resolve_pins(dispatcher: Dispatcher, spec: WorkflowSpec) -> dict[str, str]:
    """The agent version of each target the workflow's steps route to, as of now."""
    if spec.agent_versions != "pinned" or not isinstance(dispatcher, Pinning):
        return {}
    pins: dict[str, str] = {}
    for step in spec.steps:
        if step.kind in _ROUTED and step.target not in pins:
            agent = await _pin(dispatcher, step)
            if agent:
                pins[step.target] = agent
    return pins


async def pin_for(run: Run, step: StepSpec, dispatcher: Dispatcher, rec: Recorder) -> str | None:
    """The version this step's target is pinned to (resolved and kept now if it was not
    at the start); None when the workflow routes to the latest."""
    if run.spec.agent_versions != "pinned" or step.kind not in _ROUTED:
        return None
    pinned = run.execution.pins.get(step.target)
    if pinned is None and isinstance(dispatcher, Pinning):
        pinned = await _pin(dispatcher, step)
        if pinned:
            run.execution.pins[step.target] = pinned
            event = new_event(run.execution, "execution.pinned", data={step.target: pinned})
            await rec.commit(run, event)
    return pinned


async def _pin(dispatcher: Pinning, step: StepSpec) -> str | None:
    try:
        return await dispatcher.pin(step.kind, step.target)
    except DafnckError:  # nothing serves it yet: the step resolves it when it runs
        return None


__all__ = ["pin_for", "resolve_pins"]
