"""Serve's proxy options from settings: HTTPS needs both readable files, gRPC its port."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import ConfigError
from cluster.settings import load_settings
from serve.deployment import grpc_options, tls_options
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
