"""The Ray Serve ingress: the FastAPI app of `serve.app`, deployed as `ApiIngress`.

`serve run configs/serve.yaml` imports `serve.deployment:app`; `dafnck up` and the tests
call `start_api(settings, host, port)`. Settings reach the replicas as `DAFNCK_*`
variables (the replica builds its app with `load_settings()`), so both paths agree.

The same ingress answers gRPC (serve/protos/dafnck.proto, `serve.grpc_api.GrpcApi`)
through Serve's gRPC proxy on `grpc_port`; HTTPS when `tls_certfile`/`tls_keyfile` are set.

Backpressure is Serve's own: each replica takes `max_ongoing_requests` at once and Serve
queues `max_queued_requests` more; beyond that Serve's `BackpressureConfig` answers 429
with `Retry-After: 1` instead of its default 503, before our code runs.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import json
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import SecretStr
from ray import serve as ray_serve
from ray.serve.config import BackpressureConfig, gRPCOptions
from ray.serve.deployment import Deployment

from cluster.errors import ConfigError
from cluster.settings import Settings, load_settings
from serve.app import build_app
from serve.grpc_api import SERVICER_FUNCTIONS, GrpcApi

log = logging.getLogger(__name__)
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
class ApiIngress(GrpcApi):
    """The HTTP and gRPC entry point: routes live in the FastAPI app, rpcs in `GrpcApi`."""


#: The decorators turn the class into a Serve `Deployment` (mypy cannot see through them).
INGRESS: Deployment = ApiIngress  # type: ignore[assignment]


app = INGRESS.bind()


def settings_env(settings: Settings) -> dict[str, str]:
    """`DAFNCK_*` variables that rebuild `settings` in a replica (lists as JSON, as
    pydantic-settings reads them). The repository goes on the path only when the package
    is not installed: an installed platform's replicas never import from its `tests/`."""
    env = {
        f"DAFNCK_{name.upper()}": _env_value(value)
        for name, value in settings.model_dump(mode="json", exclude_none=True).items()
    }
    for name, value in settings:  # JSON dumps a secret as "**********": pass the value
        if isinstance(value, SecretStr):
            env[f"DAFNCK_{name.upper()}"] = value.get_secret_value()
    if _installed():
        return env
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path}


def _env_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _installed() -> bool:
    """Whether the platform's packages come from an installed distribution (editable too)."""
    try:
        importlib.metadata.distribution("dafnck-machine")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def start_api(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    replicas: dict[str, Any] | None = None,
) -> str:
    """Start Serve's proxies (HTTP on host:port, gRPC on `settings.grpc_port` unless 0) and
    deploy the API; returns its base URL (https when TLS files are set).

    Ray must be initialized (connected to the cluster). `replicas` overrides the
    autoscaling config (e.g. `{"min_replicas": 2, "max_replicas": 2}`). Serve's proxy
    options are fixed once Serve runs: a later call only deploys the application again.

    Raises: ConfigError (only one of the TLS files, or one that cannot be read; gRPC on
    with a host that is not loopback).
    """
    http_options = {"host": host, "port": port, **tls_options(settings)}
    check_grpc_exposure(settings, host)
    ray_serve.start(
        http_options=http_options,
        grpc_options=grpc_options(settings),
        logging_config=LOGGING,
        controller_options=controller_options(settings),
    )
    deployment = INGRESS.options(
        autoscaling_config={**AUTOSCALING, **(replicas or {})},
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": settings_env(settings)}},
    )
    ray_serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", logging_config=LOGGING)
    scheme = "https" if http_options.get("ssl_certfile") else "http"
    return f"{scheme}://{host}:{port}"


def check_grpc_exposure(settings: Settings, host: str) -> None:
    """Serve 2.60's gRPC proxy takes no host (it binds `[::]:<port>`) and no TLS: it is
    refused beside an API on a public host, and warned about beside a loopback one.

    Raises: ConfigError (gRPC on while `host` is not loopback).
    """
    if not settings.grpc_port:
        return
    if not _loopback(host):
        raise ConfigError(
            f"grpc_port {settings.grpc_port} with api_host {host!r}: Serve's gRPC proxy serves "
            "plain text on every interface; set grpc_port: 0, or serve the API on 127.0.0.1 "
            "behind a TLS-terminating proxy for both"
        )
    log.warning("Serve's gRPC proxy on port %d listens on every interface in plain text "
                "(Ray Serve 2.60 takes no host for it): firewall it from other machines",
                settings.grpc_port)  # fmt: skip


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def controller_options(settings: Settings) -> dict[str, Any]:
    """Serve's controller environment, which its proxies inherit: the gRPC proxy reads
    `RAY_SERVE_GRPC_MAX_MESSAGE_SIZE` once when it starts (both directions; 2 GiB otherwise)."""
    size = str(settings.max_body_bytes)
    return {"runtime_env": {"env_vars": {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": size}}}


def grpc_options(settings: Settings) -> gRPCOptions | None:
    """The gRPC proxy on `grpc_port` with our services and reflection; None when 0."""
    if not settings.grpc_port:
        return None
    return gRPCOptions(
        port=settings.grpc_port, grpc_servicer_functions=SERVICER_FUNCTIONS, enable_reflection=True
    )


def tls_options(settings: Settings) -> dict[str, str]:
    """Serve's `http_options` for HTTPS. Raises: ConfigError."""
    files = {"tls_certfile": settings.tls_certfile, "tls_keyfile": settings.tls_keyfile}
    if not any(files.values()):
        return {}
    for name, path in files.items():
        if path is None:
            other = next(n for n in files if n != name)
            raise ConfigError(f"{other} is set but {name} is not: HTTPS needs both")
        if not path.is_file():
            raise ConfigError(f"{name}: {str(path)!r} is not a readable file")
    return {"ssl_certfile": str(settings.tls_certfile), "ssl_keyfile": str(settings.tls_keyfile)}


def stop_api() -> None:
    """Remove the API application (Serve itself keeps running for other apps)."""
    ray_serve.delete(APP_NAME)


__all__ = [
    "INGRESS",
    "ApiIngress",
    "app",
    "build_ingress_app",
    "check_grpc_exposure",
    "controller_options",
    "grpc_options",
    "settings_env",
    "start_api",
    "stop_api",
    "tls_options",
]
