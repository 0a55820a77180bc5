"""Read workflow specs from YAML files (one workflow per document) and check them whole.

Python users build `WorkflowSpec(...)` directly and call `validate_workflow` on it.
"""

from __future__ import annotations

from pathlib import Path

from cluster.errors import SpecInvalid
from cluster.yamlfile import Document, parse_models
from workflows.spec import WorkflowSpec
from workflows.validate import validate_workflow


def load_workflow_specs(
    path: str | Path,
    *,
    known_capabilities: set[str] | None = None,
    known_agents: set[str] | None = None,
    known_workflows: set[str] | None = None,
) -> list[tuple[WorkflowSpec, Document]]:
    """Every workflow in a file or a directory's YAML files, validated.

    Workflows defined in the same files count as known to each other's `workflow:` steps.

    Raises:
        SpecInvalid: every problem of every workflow, each as `file:line: ...`.
    """
    parsed = parse_models(Path(path), WorkflowSpec)
    workflows = None if known_workflows is None else known_workflows | {s.name for s, _ in parsed}
    problems: list[str] = []
    first: dict[str, Document] = {}
    for spec, document in parsed:
        if spec.name in first:
            problems.append(
                f"{document.where(('name',))}: workflow {spec.name!r} is defined twice "
                f"(first at {first[spec.name].where(('name',))})"
            )
        first.setdefault(spec.name, document)
        try:
            validate_workflow(
                spec,
                known_capabilities=known_capabilities,
                known_agents=known_agents,
                known_workflows=workflows,
                document=document,
            )
        except SpecInvalid as exc:
            problems += exc.problems
    if problems:
        raise SpecInvalid(str(path), problems)
    return parsed


__all__ = ["load_workflow_specs"]
