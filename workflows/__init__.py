"""Workflow specs, validation, expressions, durable execution records and the pure engine.

Nothing here knows Ray or agents: the engine asks a `Dispatcher` to run a step, and the
supervisor supplies one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.contracts import lazy_exports

if TYPE_CHECKING:
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
    from workflows.spec import (
        Approval,
        Fallback,
        ForEach,
        InputSpec,
        StepRetry,
        StepSpec,
        WorkflowSpec,
    )
    from workflows.store import BlobStore, ExecutionStore
    from workflows.validate import effective_needs, topological_order, validate_workflow

#: Public name -> the module that defines it, imported on first use.
_HOME = {
    "Approval": "workflows.spec",
    "BlobStore": "workflows.store",
    "Dispatcher": "workflows.engine",
    "Event": "workflows.execution",
    "Execution": "workflows.execution",
    "ExecutionStatus": "workflows.execution",
    "ExecutionStore": "workflows.store",
    "Expr": "workflows.expressions",
    "ExpressionError": "workflows.expressions",
    "Fallback": "workflows.spec",
    "ForEach": "workflows.spec",
    "InputSpec": "workflows.spec",
    "StepOutcome": "workflows.engine",
    "StepRequest": "workflows.engine",
    "StepRetry": "workflows.spec",
    "StepSpec": "workflows.spec",
    "StepState": "workflows.execution",
    "StepStatus": "workflows.execution",
    "WorkflowEngine": "workflows.engine",
    "WorkflowSpec": "workflows.spec",
    "compile_expr": "workflows.expressions",
    "effective_needs": "workflows.validate",
    "load_workflow_specs": "workflows.loader",
    "parse_template": "workflows.expressions",
    "render": "workflows.expressions",
    "template_references": "workflows.expressions",
    "template_strings": "workflows.expressions",
    "topological_order": "workflows.validate",
    "validate_workflow": "workflows.validate",
}

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


__getattr__ = lazy_exports(__name__, _HOME)
