"""Workflow contracts: what people write in `configs/workflows/*.yaml` or in Python.

A workflow is a DAG of steps. Each step `uses` a capability (`code.analyse`), an agent
(`agent:NAME` or `agent:NAME@>=1.2,<2`) or another workflow (`workflow:NAME`), with inputs
(`with`) given as literals or `${{ EXPR }}` templates over `inputs` and
`steps.<id>.output` (see `workflows.expressions`). Checks that need the whole workflow
(unknown steps, cycles, references) live in `workflows.validate`.

Semantics the engine implements:

- `when` is evaluated once, before the step (and before any fan-out); false skips it.
- `for_each` runs the step once per item of the list `items` evaluates to, with the item
  bound to `as` (default `item`) and its position to `index`. The step's output is the
  list of the items' outputs in item order (`None` for an item that failed when the
  join policy lets the step succeed anyway). Over an empty list the step succeeds with
  `[]` when `join` is "all"; "any" and k need that many items to succeed.
- `approval` gates the step before it is dispatched: it waits for a person's decision,
  or for `timeout_s`, after which `on_timeout` decides.
- `trigger_rule` (default `all_succeeded`) says when a step runs given how the steps it
  needs ended: see `workflows.triggers`.
- `on_error: {fallback: ID}` runs step ID when this step fails (after its retries); the
  fallback's output then stands for this step's output. A step named as a fallback runs
  only as one.
"""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import Field, field_validator, model_validator

from cluster.contracts import CAPABILITY, NAME, TOPIC, Contract
from cluster.errors import InputInvalid
from cluster.llm.usage import WorkflowBudget
from workflows.spec_waits import Repeat, Sleep, Wait
from workflows.triggers import TriggerRule

#: Step ids are CEL identifiers, so `steps.<id>.output` parses.
STEP_ID = r"^[a-z][a-z0-9_]*$"
_VARIABLE = r"^[a-z_][a-z0-9_]*$"
#: Words CEL reserves: a step id or item name spelled like one would not parse in `steps.X`.
CEL_RESERVED = frozenset({
    "as", "break", "const", "continue", "else", "false", "for", "function", "if", "import",
    "in", "let", "loop", "package", "namespace", "null", "return", "true", "var", "void",
    "while",
})  # fmt: skip
#: Names every expression sees; a `for_each` item may not shadow them.
ROOT_NAMES = frozenset({"inputs", "steps", "index"})

InputType = Literal["string", "integer", "number", "boolean", "array", "object", "any"]
StepKind = Literal["capability", "agent", "workflow", "sleep", "wait"]


_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "number": (int, float), "boolean": bool,
    "array": list, "object": dict,
}  # fmt: skip


def type_matches(kind: InputType, value: Any) -> bool:
    """Whether `value` (as JSON would carry it) is of the declared input type."""
    if kind == "any":
        return True
    if isinstance(value, bool):
        return kind == "boolean"
    return isinstance(value, _PYTHON_TYPES[kind])


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
             dict: "object", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


class InputSpec(Contract):
    """One declared workflow input; `required` is true unless a default is given."""

    type: InputType = "string"
    default: Any = None
    required: bool = True
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _required_unless_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "required" not in data:
            return {**data, "required": "default" not in data}
        return data

    @model_validator(mode="after")
    def _default_fits(self) -> InputSpec:
        if self.required and self.default is not None:
            raise ValueError("an input with a default is not required; drop one of the two")
        if self.default is not None and not type_matches(self.type, self.default):
            raise ValueError(f"default {_shown(self.default)} is not of type {self.type!r}")
        return self


class ForEach(Contract):
    """Fan a step out over a list computed at run time."""

    #: A bare CEL expression (no `${{ }}`) giving a list, e.g. `steps.list.output.files`.
    items: str = Field(min_length=1)
    as_: str = Field(default="item", alias="as", pattern=_VARIABLE)
    max_parallel: int = Field(default=10, ge=1, le=10_000)
    #: The step succeeds when all items do, any one does, or at least k do (and ends as
    #: soon as that is decided, cancelling the rest); `none` starts them and goes on.
    join: Literal["all", "any", "none"] | Annotated[int, Field(ge=1)] = "all"

    @field_validator("as_")
    @classmethod
    def _not_a_root(cls, value: str) -> str:
        if value in ROOT_NAMES or value in CEL_RESERVED:
            raise ValueError(f"{value!r} is a reserved name; pick another, e.g. 'item'")
        return value


class StepRetry(Contract):
    """How often a failed step is tried again, and after how long."""

    attempts: int = Field(default=1, ge=1, le=100)
    backoff_s: float = Field(default=1.0, ge=0)
    backoff_factor: float = Field(default=2.0, ge=1)
    max_backoff_s: float = Field(default=60.0, ge=0)
    #: Error type names that may be retried; empty means any error marked retryable.
    on: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads an unquoted `on:` key as the boolean True.
        if isinstance(data, dict) and True in data and "on" not in data:
            return {("on" if key is True else key): value for key, value in data.items()}
        return data

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait before attempt number `attempt` (2 is the first retry)."""
        return min(self.backoff_s * self.backoff_factor ** max(attempt - 2, 0), self.max_backoff_s)


class Fallback(Contract):
    fallback: str = Field(pattern=STEP_ID)


class Approval(Contract):
    """A human gate before the step runs."""

    #: Shown to the approver; may hold `${{ }}` templates.
    prompt: str = ""
    timeout_s: float | None = Field(default=None, gt=0)
    on_timeout: Literal["approve", "reject", "fail"] = "reject"


class StepSpec(Contract):
    """One step of a workflow."""

    id: str = Field(pattern=STEP_ID, max_length=63)
    #: What runs the step; empty for a step that waits (`sleep` or `wait`) instead.
    uses: str = ""
    #: A durable timer instead of `uses`.
    sleep: Sleep | None = None
    #: An external signal to wait for instead of `uses`.
    wait: Wait | None = None
    #: Run the step again until a condition holds (a structured loop).
    repeat: Repeat | None = None
    description: str = ""
    with_: dict[str, Any] = Field(default={}, alias="with")
    needs: list[str] = []
    #: When the step runs given how its upstream steps ended (`workflows.triggers`).
    trigger_rule: TriggerRule = "all_succeeded"
    #: A bare CEL condition; the step is skipped when it is false.
    when: str | None = None
    for_each: ForEach | None = None
    retry: StepRetry = StepRetry()
    timeout_s: float | None = Field(default=None, gt=0)
    on_error: Literal["fail", "continue"] | Fallback = "fail"
    approval: Approval | None = None

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in CEL_RESERVED:
            raise ValueError(f"{value!r} is a reserved word in expressions; pick another id")
        return value

    @field_validator("needs", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_kind(self) -> StepSpec:
        given = [k for k in ("uses", "sleep", "wait") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "a step has exactly one of uses, sleep or wait"
                + (f", not {' and '.join(given)}" if given else "")
            )
        if not self.uses and (self.for_each or self.repeat):
            raise ValueError("a sleep or wait step cannot fan out or repeat")
        if self.for_each and self.repeat:
            raise ValueError("a step cannot both fan out and repeat; repeat a sub-workflow")
        return self

    @field_validator("uses")
    @classmethod
    def _uses(cls, value: str) -> str:
        if not value:
            return value
        kind, target = _split_uses(value)
        if kind == "capability" and not re.match(CAPABILITY, target):
            raise ValueError(
                f"uses {value!r} is not a capability like 'code.review', "
                "an agent like 'agent:reviewer@>=1,<2' or a workflow like 'workflow:review'"
            )
        name, _, version = target.partition("@")
        if kind != "capability" and not re.match(NAME, name):
            raise ValueError(f"{kind} name {name!r} must be lowercase letters, digits and '-'")
        if version and kind != "agent":
            raise ValueError(f"only agents take a version range, not {kind} {name!r}")
        if version:
            _check_range(version)
        return value

    @property
    def kind(self) -> StepKind:
        if not self.uses:
            return "sleep" if self.sleep else "wait"
        return _split_uses(self.uses)[0]

    @property
    def target(self) -> str:
        """The capability, the agent as `Task.agent` takes it (`name@range`), or the workflow."""
        return _split_uses(self.uses)[1]

    @property
    def target_name(self) -> str:
        """The capability, agent or workflow name without any version range."""
        return self.target.partition("@")[0]

    @property
    def fallback(self) -> str | None:
        return self.on_error.fallback if isinstance(self.on_error, Fallback) else None


def _split_uses(value: str) -> tuple[StepKind, str]:
    for kind in ("agent", "workflow"):
        if value.startswith(f"{kind}:"):
            return kind, value[len(kind) + 1 :]  # type: ignore[return-value]
    return "capability", value


def _check_range(text: str) -> None:
    text = text.strip()
    try:
        SpecifierSet(f"=={text}" if text[:1].isdigit() else text)
    except InvalidSpecifier:
        raise ValueError(f"version range {text!r} is not like '>=1.2,<2' or '1.2.3'") from None


class Trigger(Contract):
    """Start the workflow on each message published to `topic`, or on each `cron` tick.

    `inputs` are templates over `message` (its `payload`, `sender`, `id`, ...) or `tick`
    (the tick's time, ISO 8601).
    """

    topic: str | None = Field(default=None, pattern=TOPIC)
    cron: str | None = None
    inputs: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_source(self) -> Trigger:
        if (self.topic is None) == (self.cron is None):
            raise ValueError("a trigger has either a topic or a cron schedule")
        if self.cron is not None:
            from croniter import croniter

            if not croniter.is_valid(self.cron):
                raise ValueError(f"cron {self.cron!r} is not a valid schedule like '*/5 * * * *'")
        return self


class WorkflowSpec(Contract):
    """A named DAG of steps with typed inputs and outputs computed from its steps."""

    name: str = Field(pattern=NAME)
    description: str = ""
    inputs: dict[str, InputSpec] = {}
    #: Each a `${{ EXPR }}` template over `inputs` and `steps.<id>.output`.
    outputs: dict[str, str] = {}
    steps: list[StepSpec] = Field(min_length=1)
    triggers: list[Trigger] = []
    #: What one execution may spend on models (LLM agents check it before each call);
    #: `on_exceed: approval` holds the step that ran out at an approval gate.
    budget: WorkflowBudget | None = None
    #: `pinned`: each execution routes every step to the agent version that was newest
    #: when it started (or when the step first ran); `latest`: to the newest at each
    #: dispatch.
    agent_versions: Literal["pinned", "latest"] = "pinned"
    #: The longest one execution may run (paused time included); then it fails with
    #: WorkflowTimeout and its running steps are cancelled.
    timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, value: dict[str, InputSpec]) -> dict[str, InputSpec]:
        bad = [k for k in value if not re.match(_VARIABLE, k) or k in CEL_RESERVED]
        if bad:
            raise ValueError(f"input names {bad!r} must be identifiers like 'root' or 'max_files'")
        return value

    def step(self, step_id: str) -> StepSpec:
        """The step with this id.

        Raises:
            KeyError: no such step.
        """
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def check_inputs(self, values: dict[str, Any] | None = None) -> dict[str, Any]:
        """The execution's inputs: `values` checked against the declared types, defaults added.

        An optional input without a default is present as None.

        Raises:
            InputInvalid: naming every missing, unknown or mistyped input.
        """
        values = dict(values or {})
        problems = [
            f"unknown input {key!r}; declared: {', '.join(map(repr, self.inputs)) or 'none'}"
            for key in values
            if key not in self.inputs
        ]
        checked: dict[str, Any] = {}
        for key, spec in self.inputs.items():
            if key not in values:
                if spec.required:
                    problems.append(f"input {key!r} is required ({spec.type})")
                checked[key] = copy.deepcopy(spec.default)
            elif values[key] is None and not spec.required:
                checked[key] = None
            elif not type_matches(spec.type, values[key]):
                problems.append(
                    f"input {key!r}: expected {spec.type}, "
                    f"got {_json_type(values[key])} {_shown(values[key])}"
                )
            else:
                checked[key] = values[key]
        if problems:
            raise InputInvalid(f"inputs of workflow {self.name!r}", problems)
        return checked


__all__ = [
    "CAPABILITY",
    "CEL_RESERVED",
    "NAME",
    "ROOT_NAMES",
    "STEP_ID",
    "Approval",
    "Contract",
    "Fallback",
    "ForEach",
    "InputSpec",
    "InputType",
    "StepKind",
    "StepRetry",
    "StepSpec",
    "Trigger",
    "WorkflowBudget",
    "WorkflowSpec",
    "type_matches",
]
