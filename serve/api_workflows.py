"""Workflow definitions: define a new version, list, get one (latest or a version), versions.

The body of `POST /v1/workflows` is a `WorkflowSpec` as people write it in YAML (`with`,
`as`); checks that need the registry (unknown capabilities, agents, workflows) run in the
supervisor, and every problem comes back together in one 422.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Response

from actors.contract import DefineWorkflow
from cluster.auth.models import Action
from cluster.errors import NotFound
from serve.deps import Caller, allowed
from workflows.spec import NAME, WorkflowSpec

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])

WorkflowName = Path(pattern=NAME, description="The workflow's name")


@router.post("", status_code=201)
async def define_workflow(
    spec: WorkflowSpec,
    response: Response,
    caller: Caller = Depends(allowed(Action.WORKFLOWS_WRITE)),  # noqa: B008
) -> dict[str, Any]:
    """Store the spec as the workflow's next version (the same text gives the latest back).

    Raises: SpecInvalid (422, every problem listed).
    """
    async with caller.audit(Action.WORKFLOWS_WRITE, obj=spec.name):
        result = await caller.gateway.define_workflow(DefineWorkflow(spec=spec))
    response.headers["Location"] = f"/v1/workflows/{spec.name}?version={result.version}"
    return result.model_dump()


@router.get("")
async def list_workflows(
    caller: Caller = Depends(allowed(Action.WORKFLOWS_READ)),  # noqa: B008
) -> dict[str, Any]:
    """Every defined workflow of the tenant with its versions."""
    executions = caller.tenant_services.executions

    def listing() -> list[dict[str, Any]]:
        rows = []
        for name in executions.workflows():
            versions = executions.versions(name)
            rows.append({"name": name, "latest": max(versions, default=0), "versions": versions})
        return rows

    return {"workflows": await asyncio.to_thread(listing)}


@router.get("/{name}")
async def get_workflow(
    name: str = WorkflowName,
    version: int | None = Query(default=None, ge=1),
    caller: Caller = Depends(allowed(Action.WORKFLOWS_READ)),  # noqa: B008
) -> dict[str, Any]:
    """The latest version of the workflow, or `?version=N`. Raises: NotFound."""
    found, raw = await asyncio.to_thread(
        caller.tenant_services.executions.definition, name, version
    )
    return {"name": name, "version": found, "spec": json.loads(raw)}


@router.get("/{name}/versions")
async def workflow_versions(
    name: str = WorkflowName,
    caller: Caller = Depends(allowed(Action.WORKFLOWS_READ)),  # noqa: B008
) -> dict[str, Any]:
    """Every stored version number, oldest first. Raises: NotFound."""
    versions = await asyncio.to_thread(caller.tenant_services.executions.versions, name)
    if not versions:
        raise NotFound(f"workflow {name!r} is not defined")
    return {"name": name, "versions": versions, "latest": versions[-1]}
