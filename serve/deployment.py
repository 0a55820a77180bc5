"""The Ray Serve ingress: the FastAPI app of `serve.app`, deployed as `ApiIngress`.

`serve run configs/serve.yaml` imports `serve.deployment:app`; `dafnck up` and the tests
call `start_api(settings, host, port)`. Settings reach the replicas as `DAFNCK_*`
variables (the replica builds its app with `load_settings()`), so both paths agree.

Backpressure is Serve's own: each replica takes `max_ongoing_requests` at once and Serve
queues `max_queued_requests` more; beyond that Serve's `BackpressureConfig` answers 429
with `Retry-After: 1` instead of its default 503, before our code runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve as ray_serve
from ray.serve.config import BackpressureConfig
from ray.serve.deployment import Deployment

from cluster.settings import Settings, load_settings
from serve.app import build_app

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_NAME = "dafnck"
#: The measured knee on the 2-core machine (DESIGN.md): Serve's default of 5 costs ~40%.
MAX_ONGOING_REQUESTS = 200
MAX_QUEUED_REQUESTS = 1000
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 4,
    "target_ongoing_requests": 64,
    "upscale_delay_s": 5,
    "downscale_delay_s": 60,
}
LOGGING = {"encoding": "JSON", "log_level": "INFO"}


def build_ingress_app() -> FastAPI:
    """The replica's app, built from the settings in its environment (`DAFNCK_*`)."""
    return build_app(load_settings())


@ray_serve.deployment(
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    max_queued_requests=MAX_QUEUED_REQUESTS,
    autoscaling_config=AUTOSCALING,
    backpressure_config=BackpressureConfig(status_code=429, retry_after_s=1),
    # The API waits on Redis and actors; it should not hold a CPU other work needs.
    ray_actor_options={"num_cpus": 0},
)
@ray_serve.ingress(build_ingress_app)
class ApiIngress:
    """The HTTP entry point; every route lives in the FastAPI app."""


#: The decorators turn the class into a Serve `Deployment` (mypy cannot see through them).
INGRESS: Deployment = ApiIngress  # type: ignore[assignment]


app = INGRESS.bind()


def settings_env(settings: Settings) -> dict[str, str]:
    """`DAFNCK_*` variables that rebuild `settings` in a replica (and the repo on the path)."""
    env = {
        f"DAFNCK_{name.upper()}": str(value)
        for name, value in settings.model_dump(mode="json", exclude_none=True).items()
    }
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path}


def start_api(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    replicas: dict[str, Any] | None = None,
) -> str:
    """Start Serve's HTTP proxy on host:port and deploy the API; returns its base URL.

    Ray must be initialized (connected to the cluster). `replicas` overrides the
    autoscaling config (e.g. `{"min_replicas": 2, "max_replicas": 2}`).
    """
    ray_serve.start(http_options={"host": host, "port": port}, logging_config=LOGGING)
    deployment = INGRESS.options(
        autoscaling_config={**AUTOSCALING, **(replicas or {})},
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": settings_env(settings)}},
    )
    ray_serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", logging_config=LOGGING)
    return f"http://{host}:{port}"


def stop_api() -> None:
    """Remove the API application (Serve itself keeps running for other apps)."""
    ray_serve.delete(APP_NAME)


__all__ = [
    "INGRESS",
    "ApiIngress",
    "app",
    "build_ingress_app",
    "settings_env",
    "start_api",
    "stop_api",
]
