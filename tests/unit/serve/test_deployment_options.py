"""Serve's proxy options from settings: HTTPS needs both readable files, gRPC its port."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.serve.config import ControllerOptions

from cluster.errors import ConfigError
from cluster.settings import load_settings
from serve.deployment import (
    check_grpc_exposure,
    controller_options,
    grpc_options,
    settings_env,
    tls_options,
)
from serve.grpc_api import SERVICER_FUNCTIONS


def test_tls_needs_both_files_and_they_must_exist(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("c")
    key.write_text("k")
    assert tls_options(load_settings(state_dir=str(tmp_path))) == {}
    both = load_settings(state_dir=str(tmp_path), tls_certfile=str(cert), tls_keyfile=str(key))
    assert tls_options(both) == {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    with pytest.raises(ConfigError, match="tls_certfile is set but tls_keyfile is not"):
        tls_options(load_settings(state_dir=str(tmp_path), tls_certfile=str(cert)))
    missing = load_settings(state_dir=str(tmp_path), tls_certfile=str(cert),
                            tls_keyfile=str(tmp_path / "nope.pem"))  # fmt: skip
    with pytest.raises(ConfigError, match=r"tls_keyfile: .*nope\.pem"):
        tls_options(missing)


def test_grpc_options_follow_the_port(tmp_path: Path) -> None:
    assert grpc_options(load_settings(state_dir=str(tmp_path), grpc_port=0)) is None
    options = grpc_options(load_settings(state_dir=str(tmp_path), grpc_port=9123))
    assert options is not None
    assert (options.port, options.enable_reflection) == (9123, True)
    assert options.grpc_servicer_functions == SERVICER_FUNCTIONS


def test_grpc_is_off_by_default_and_refused_beside_a_public_api(tmp_path: Path) -> None:
    assert load_settings(state_dir=str(tmp_path)).grpc_port == 0
    on = load_settings(state_dir=str(tmp_path), grpc_port=9123)
    for host in ("0.0.0.0", "192.0.2.7", "api.example.com", "::"):
        with pytest.raises(ConfigError, match=r"plain text on every interface; set grpc_port: 0"):
            check_grpc_exposure(on, host)
    for host in ("127.0.0.1", "::1", "localhost"):
        check_grpc_exposure(on, host)  # allowed, with a warning to firewall the port
    check_grpc_exposure(load_settings(state_dir=str(tmp_path)), "0.0.0.0")


def test_grpc_messages_are_capped_like_http_bodies(tmp_path: Path) -> None:
    settings = load_settings(state_dir=str(tmp_path), max_body_bytes=2048)
    assert controller_options(settings) == {
        "runtime_env": {"env_vars": {"RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": "2048"}}
    }
    # Serve's own validation of the options we pass.
    ControllerOptions.model_validate(controller_options(settings))


def test_the_replicas_get_the_scrape_credential_itself_not_its_mask(tmp_path: Path) -> None:
    token = "s" * 24
    env = settings_env(load_settings(state_dir=str(tmp_path), metrics_token=token))
    assert env["DAFNCK_METRICS_TOKEN"] == token
    assert "DAFNCK_METRICS_TOKEN" not in settings_env(load_settings(state_dir=str(tmp_path)))
