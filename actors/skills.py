"""The `python` agent kind: an entrypoint `module:attr` names a function or a class.

A function is one skill. A class's methods marked with `@skill("capability")` are its
skills; one instance lives per replica, so it keeps state across tasks. A skill's input
schema comes from its signature: keyword parameters with type hints, or one parameter
typed as a pydantic model. A parameter typed `SkillContext` is not input: it receives the
task's ids and its cancellation flag (see `SkillContext`).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from actors.models import AgentSpec, SkillInfo, Task, new_id
from cluster import extras
from cluster.allowlist import CodePolicy, CodeSetting
from cluster.errors import InputInvalid, SpecInvalid

_SKILL_ATTR = "__dafnck_skill__"
_HANDLER_ATTR = "__dafnck_handler__"


def skill(
    capability: str | None = None, *, description: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a function or method as the skill serving `capability` (default: the only one)."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, _SKILL_ATTR, {"capability": capability, "description": description})
        return fn

    return mark


@dataclass(frozen=True)
class SkillContext:
    """What a skill knows of the task it runs, like Temporal's `activity.info()` with
    `activity.is_cancelled()`: declare a parameter typed `SkillContext` to receive it. It
    is never part of the input schema, and a caller cannot send it.

    `idempotency_key` is the same on every attempt of the same work: a workflow step's is
    `<execution_id>/<step_id>` (re-dispatched after a supervisor restart with the same
    key), a task's is the key its caller sent, or else the task id (the router keeps it on
    retries after a replica died).
    """

    task_id: str
    idempotency_key: str
    attempt: int = 1
    tenant: str = "default"
    workflow_id: str | None = None
    execution_id: str | None = None
    step_id: str | None = None
    #: The workflow engine's attempt of the step (`attempt` also counts router retries).
    step_attempt: int | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @classmethod
    def of(cls, task: Task) -> SkillContext:
        ctx = task.context
        return cls(
            task_id=task.id,
            idempotency_key=task.idempotency_key or task.id,
            attempt=ctx.attempt,
            tenant=ctx.tenant,
            workflow_id=ctx.workflow_id,
            execution_id=ctx.execution_id,
            step_id=ctx.step_id,
            step_attempt=ctx.step_attempt,
        )

    @classmethod
    def detached(cls) -> SkillContext:
        """The context of a skill called directly, outside any task."""
        task_id = new_id()
        return cls(task_id=task_id, idempotency_key=task_id)

    @property
    def cancelled(self) -> bool:
        """The task was cancelled (or timed out): a sync skill polls this and stops."""
        return self._cancel.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to `timeout` seconds for a cancellation; True once cancelled. A sync
        skill's interruptible sleep."""
        return self._cancel.wait(timeout)

    def cancel(self) -> None:
        """Set the flag (the runtime does, when the task's coroutine is cancelled)."""
        self._cancel.set()


@dataclass(frozen=True)
class Skill:
    """One callable skill with the model that validates its input."""

    capability: str
    method: str
    fn: Callable[..., Any]
    input_model: type[BaseModel]
    #: The parameter that takes the whole input model, or None for keyword arguments.
    model_param: str | None
    description: str = ""
    #: The parameter typed `SkillContext`, if any: given the task's context, never input.
    context_param: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "context_param", _context_param(self.fn))

    @property
    def info(self) -> SkillInfo:
        return SkillInfo(
            capability=self.capability,
            method=self.method,
            input_schema=self.input_model.model_json_schema(),
            description=self.description,
        )

    async def run(self, task: Task) -> Any:
        """Run the skill on a task's input (an llm skill also reads the task's ids)."""
        return await self(task.input, SkillContext.of(task))

    async def __call__(self, data: dict[str, Any], context: SkillContext | None = None) -> Any:
        """Validate `data` and run the skill; sync skills run in a worker thread. Cancelled
        (Ray's cancel, a timeout), the context's flag is set: an async skill also sees
        `CancelledError`, a thread cannot be interrupted and polls `context.cancelled`.

        Raises:
            InputInvalid: `data` does not match the skill's signature.
        """
        try:
            parsed = self.input_model.model_validate(data)
        except ValidationError as exc:
            raise InputInvalid(f"input of {self.capability!r}", _problems(exc)) from None
        if self.model_param:
            args: dict[str, Any] = {self.model_param: parsed}
        else:
            args = {name: getattr(parsed, name) for name in self.input_model.model_fields}
        context = context or SkillContext.detached()
        if self.context_param:
            args[self.context_param] = context
        try:
            if inspect.iscoroutinefunction(self.fn):
                return await self.fn(**args)
            return await asyncio.to_thread(self.fn, **args)
        except asyncio.CancelledError:
            context.cancel()
            raise


def _is_context(hint: Any) -> bool:
    return inspect.isclass(hint) and issubclass(hint, SkillContext)


def _context_param(fn: Callable[..., Any]) -> str | None:
    """The name of `fn`'s parameter typed `SkillContext`, if it has one."""
    try:
        hints = get_type_hints(fn)
    except Exception:  # unresolvable hints are reported by `_input_model`
        return None
    return next((name for name, hint in hints.items() if _is_context(hint)), None)


def _problems(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()]


def _input_model(fn: Callable[..., Any], name: str) -> tuple[type[BaseModel], str | None]:
    """The pydantic model of a skill's input, and the parameter that takes it whole."""
    try:
        hints = get_type_hints(fn)
    except Exception as exc:  # a bad annotation is the author's error, reported as such
        raise ValueError(f"type hints of {name!r} cannot be resolved: {exc}") from None
    params = [
        p for p in inspect.signature(fn).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and not _is_context(hints.get(p.name))
    ]  # fmt: skip
    if len(params) == 1:
        hint = hints.get(params[0].name)
        if inspect.isclass(hint) and issubclass(hint, BaseModel):
            return hint, params[0].name
    fields: dict[str, Any] = {}
    for p in params:
        if p.name not in hints:
            raise ValueError(f"parameter {p.name!r} of {name!r} needs a type hint")
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints[p.name], default)
    model = create_model(  # type: ignore[call-overload]
        f"{name}_input", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model, None


def load_entrypoint(entrypoint: str, policy: CodePolicy, setting: CodeSetting) -> Any:
    """Import `module:attr` when it matches the operator's allow-list `setting` (checked
    before the import), and return it when it is defined where the list allows too.

    Raises:
        ValueError: not allowed, or the module or attribute does not exist.
    """
    problem = policy.code_problem(entrypoint, setting)
    if problem:
        raise ValueError(problem)
    module_name, _, attr = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}{extras.hint(exc)}") from None
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    problem = policy.defined_problem(target, setting)
    if problem:
        raise ValueError(f"{entrypoint!r} {problem}")
    return target


def handler(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark the method that receives the agent's messages (inbox and subscribed topics)."""
    setattr(fn, _HANDLER_ATTR, True)
    return fn


@dataclass(frozen=True)
class Implementation:
    """What a replica runs: the skills, the class instance (if any), its message handler."""

    skills: dict[str, Skill]
    instance: Any = None
    handler: Callable[..., Any] | None = None

    @property
    def stateful(self) -> bool:
        """The class keeps durable state: it defines `get_state()` and `set_state(state)`."""
        return callable(getattr(self.instance, "get_state", None)) and callable(
            getattr(self.instance, "set_state", None)
        )


def load_python_agent(spec: AgentSpec, policy: CodePolicy) -> Implementation:
    """The `python` kind's loader (see `actors.kinds`): instantiate the spec's entrypoint,
    its skills, instance and message handler. The caller has checked the spec's code and
    secret references against `policy` (`actors.admission`).

    Raises:
        SpecInvalid: the entrypoint cannot be loaded or its skills don't match the spec's
            capabilities; every problem is listed.
    """
    what = f"agent {spec.agent_id!r}"
    instance = on_message = None
    try:
        target = load_entrypoint(spec.entrypoint or "", policy, "agent_entrypoints")
        if inspect.isclass(target):
            instance = target(**spec.config)
            candidates = [
                (name, getattr(instance, name), getattr(member, _SKILL_ATTR))
                for name, member in inspect.getmembers(target)
                if hasattr(member, _SKILL_ATTR)
            ] + _instance_skills(instance)
            handlers = [
                n for n, m in inspect.getmembers(target) if getattr(m, _HANDLER_ATTR, False)
            ]
            on_message = getattr(instance, handlers[0]) if handlers else None
        elif callable(target):
            candidates = [(target.__name__, target, getattr(target, _SKILL_ATTR, {}))]
        else:
            raise ValueError(f"{spec.entrypoint!r} is neither a function nor a class")
    except SpecInvalid:
        raise
    except Exception as exc:
        raise SpecInvalid(what, [f"entrypoint: {exc}"]) from None
    return Implementation(_bind(spec, candidates), instance, on_message)


def _instance_skills(instance: Any) -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    """Skills set on the instance in `__init__`: capabilities that come from the config."""
    members = getattr(instance, "__dict__", {})
    return [(n, m, getattr(m, _SKILL_ATTR)) for n, m in members.items() if hasattr(m, _SKILL_ATTR)]


def _bind(
    spec: AgentSpec, candidates: list[tuple[str, Callable[..., Any], dict[str, Any]]]
) -> dict[str, Skill]:
    problems: list[str] = []
    skills: dict[str, Skill] = {}
    only = spec.capabilities[0] if len(spec.capabilities) == 1 else None
    for method, fn, meta in candidates:
        capability = meta.get("capability") or only
        if capability is None:
            problems.append(
                f"entrypoint: skill {method!r} must name its capability (@skill('x.y'))"
            )
            continue
        if capability not in spec.capabilities:
            problems.append(
                f"entrypoint: skill {method!r} serves {capability!r}, not in capabilities"
            )
            continue
        try:
            model, model_param = _input_model(fn, method)
        except ValueError as exc:
            problems.append(f"entrypoint: {exc}")
            continue
        skills[capability] = Skill(
            capability, method, fn, model, model_param, meta.get("description", "")
        )
    missing = [
        c for c in spec.capabilities if c not in skills and not any(c in p for p in problems)
    ]
    problems += [f"capabilities: no skill serves {c!r}" for c in missing]
    if problems:
        raise SpecInvalid(f"agent {spec.agent_id!r}", problems)
    return skills
