"""`configs/serve.yaml` is what `serve build`/`serve deploy` accept, and points at our app."""

from __future__ import annotations

import yaml
from ray.serve.schema import ServeDeploySchema

from serve.grpc_api import SERVICER_FUNCTIONS
from tests.integration.helpers import REPO_ROOT


def test_serve_yaml_is_a_valid_serve_deploy_config() -> None:
    data = yaml.safe_load((REPO_ROOT / "configs" / "serve.yaml").read_text())
    config = ServeDeploySchema.model_validate(data)
    (app,) = config.applications
    assert app.import_path == "serve.deployment:app"
    assert app.route_prefix == "/"
    assert (config.http_options.host, config.http_options.port) == ("127.0.0.1", 8000)
    assert config.grpc_options.grpc_servicer_functions == SERVICER_FUNCTIONS
    assert config.grpc_options.enable_reflection
    assert config.logging_config is not None
    assert config.logging_config.encoding == "JSON"
    (deployment,) = app.deployments
    assert deployment.name == "ApiIngress"
    assert deployment.max_ongoing_requests >= 100


def test_the_ingress_answers_429_when_full() -> None:
    from serve.deployment import ApiIngress

    config = ApiIngress._deployment_config
    assert config.max_ongoing_requests >= 100
    assert config.max_queued_requests > 0
    assert config.backpressure_config.status_code == 429
    assert config.backpressure_config.retry_after_s == 1
