"""Workflow specs, validation, expressions, durable execution records and the pure engine.

Nothing here knows Ray or agents: the engine asks a `Dispatcher` to run a step, and the
supervisor supplies one.
"""

from workflows.engine import Dispatcher, StepOutcome, StepRequest, WorkflowEngine
from workflows.execution import Event, Execution, ExecutionStatus, StepState, StepStatus
from workflows.expressions import (
    Expr,
    ExpressionError,
    compile_expr,
    parse_template,
    render,
    template_references,
    template_strings,
)
from workflows.loader import load_workflow_specs
from workflows.spec import Approval, Fallback, ForEach, InputSpec, StepRetry, StepSpec, WorkflowSpec
from workflows.store import BlobStore, ExecutionStore
from workflows.validate import effective_needs, topological_order, validate_workflow

__all__ = [
    "Approval",
    "BlobStore",
    "Dispatcher",
    "Event",
    "Execution",
    "ExecutionStatus",
    "ExecutionStore",
    "Expr",
    "ExpressionError",
    "Fallback",
    "ForEach",
    "InputSpec",
    "StepOutcome",
    "StepRequest",
    "StepRetry",
    "StepSpec",
    "StepState",
    "StepStatus",
    "WorkflowEngine",
    "WorkflowSpec",
    "compile_expr",
    "effective_needs",
    "load_workflow_specs",
    "parse_template",
    "render",
    "template_references",
    "template_strings",
    "topological_order",
    "validate_workflow",
]
