"""Ray job submission: `dafnck submit` runs a workflow as a Ray job on a running cluster.

The job's entrypoint is `dafnck run FILE` (after `dafnck agents apply` when agents are
given), the same command `ray job submit --working-dir . -- dafnck run FILE` runs; Ray sets
`RAY_ADDRESS` for the job's driver, so it joins the cluster instead of starting one, and
its output is the job's log in the dashboard's Jobs view. The submission id is the
idempotency key: submitting again with the same id returns the job already there.
"""

from __future__ import annotations

import logging
import shlex
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from cluster.contracts import Contract
from cluster.errors import ClusterUnavailable, ConfigError, DafnckError, NotFound
from cluster.settings import Settings

log = logging.getLogger(__name__)

#: The runtime environment `dafnck submit` uses unless told otherwise.
DEFAULT_RUNTIME_ENV = Path("configs/runtime_env.yaml")
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class JobSubmission(Contract):
    """What `dafnck submit` sends to the cluster's job server."""

    workflow_file: str
    inputs: list[str] = []
    #: Agent spec files or directories applied before the workflow runs.
    agents: list[str] = []
    submission_id: str = Field(
        default_factory=lambda: f"dafnck-{uuid.uuid4().hex[:12]}",
        pattern=r"^[A-Za-z0-9_.-]{1,128}$",
    )
    runtime_env: dict[str, Any] = {}
    tenant: str = "default"

    def entrypoint(self) -> str:
        """The shell command the job runs on the cluster."""
        run = ["dafnck", "run", self.workflow_file]
        for pair in self.inputs:
            run += ["--input", pair]
        apply = [shlex.join(["dafnck", "agents", "apply", "-f", a]) for a in self.agents]
        return " && ".join([*apply, shlex.join(run)])

    def metadata(self) -> dict[str, str]:
        return {
            "tenant": self.tenant,
            "workflow": workflow_name(Path(self.workflow_file)),
            "submitted_by": "dafnck submit",
        }


def workflow_name(path: Path) -> str:
    """The `name:` of the (last) workflow in a YAML file, for the job's metadata."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the workflow: {exc}") from None
    if not docs or not isinstance(docs[-1].get("name"), str):
        raise ConfigError(f"{path}: no workflow with a name in it")
    return str(docs[-1]["name"])


def load_runtime_env(path: Path | None, tenant: str) -> dict[str, Any]:
    """The runtime_env YAML (a mapping, as `ray job submit --runtime-env` takes), with the
    tenant passed to the job's driver.

    Raises:
        ConfigError: the file is unreadable or not a mapping.
    """
    env: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the runtime_env: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a runtime_env is a mapping, got {type(loaded).__name__}")
        env = loaded
    env_vars = {**env.get("env_vars", {}), "DAFNCK_TENANT": tenant}
    return {**env, "env_vars": env_vars}


def job_client(address: str) -> Any:
    """A `JobSubmissionClient` for the dashboard at `address`, presenting Ray's token.

    Raises:
        ClusterUnavailable: nothing answers there.
    """
    from ray.job_submission import JobSubmissionClient

    from cluster.ray_runtime import _token_auth_on

    _token_auth_on()
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterUnavailable(f"no Ray job server at {address!r}: {exc}") from None


def dashboard_address(settings: Settings, address: str | None) -> str:
    """The job server to talk to: an http(s) address as given, else the dashboard of the
    cluster this machine joins (`RAY_ADDRESS`, the settings, or `dafnck up`'s head)."""
    if address and address.startswith(("http://", "https://")):
        return address
    from cluster.ray_runtime import init_ray

    dashboard = init_ray(settings, address, missing="fail")
    if not dashboard:
        raise ClusterUnavailable("the cluster runs without its dashboard, so it takes no jobs")
    return dashboard


def submit(client: Any, job: JobSubmission, agent_wait_s: float = 60) -> tuple[str, bool]:
    """Submit the job unless one with its submission id exists; returns (id, submitted).

    A head whose job agent is still starting ("No available agent") is asked again for up
    to `agent_wait_s`.

    Raises:
        DafnckError: the job server refused the job.
    """
    if _info(client, job.submission_id) is not None:
        return job.submission_id, False
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            client.submit_job(
                entrypoint=job.entrypoint(),
                submission_id=job.submission_id,
                runtime_env=job.runtime_env,
                metadata=job.metadata(),
            )
            return job.submission_id, True
        except RuntimeError as exc:
            if "already exists" in str(exc):  # another submitter won the race
                return job.submission_id, False
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise DafnckError(f"the job server refused the job: {exc}") from None
        time.sleep(1)


def _info(client: Any, submission_id: str) -> Any | None:
    try:
        return client.get_job_info(submission_id)
    except RuntimeError as exc:
        if "does not exist" in str(exc) or "404" in str(exc):
            return None
        raise


def wait(client: Any, submission_id: str, timeout_s: float, poll_s: float = 1.0) -> str:
    """Wait until the job ends; returns its status (SUCCEEDED, FAILED or STOPPED).

    Raises:
        NotFound: no such job. DafnckError: it did not end within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        info = _info(client, submission_id)
        if info is None:
            raise NotFound(f"no job {submission_id!r} on this cluster")
        status = str(getattr(info.status, "value", info.status))
        if status in _TERMINAL:
            return status
        if time.monotonic() > deadline:
            raise DafnckError(f"job {submission_id} is still {status} after {timeout_s:g}s")
        time.sleep(poll_s)
