"""HTTPS: the API served by `start_api` with `tls_certfile`/`tls_keyfile` answers over TLS
with the configured certificate (self-signed here, made with `cryptography`).

Serve's proxy options are fixed once Serve runs and the session's Serve is plain HTTP, so
this starts its own Ray and Serve in a subprocess (one Ray per process)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cluster.valkey import free_port
from tests.integration.helpers import REPO_ROOT

#: The subprocess: its own local Ray, the API over HTTPS, until its stdin closes.
SERVER = """
import sys, ray
from cluster.settings import load_settings
from serve.deployment import start_api
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
settings = load_settings(redis_url=sys.argv[1], state_dir=sys.argv[2], grpc_port=0,
                         tls_certfile=sys.argv[3], tls_keyfile=sys.argv[4])
print(start_api(settings, "127.0.0.1", int(sys.argv[5])), flush=True)
sys.stdin.read()
"""


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def https_api(tmp_path: Path, valkey_url: str) -> Iterator[tuple[str, Path]]:
    """(base URL, certificate) of an API served over HTTPS by a subprocess."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    state = tmp_path / "state"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, valkey_url, str(state), str(cert), str(key), str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url == f"https://127.0.0.1:{port}", url
        yield url, cert
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_the_api_answers_https_with_the_configured_certificate(
    https_api: tuple[str, Path],
) -> None:
    url, cert = https_api
    trust = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.get(f"{url}/readyz", verify=trust, timeout=5)
            if response.status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the HTTPS API never became ready"
        time.sleep(0.3)
    assert response.json() == {"status": "ready"}
    assert httpx.get(f"{url}/v1/agents", verify=trust).status_code == 401
    with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused
        httpx.get(f"{url}/healthz", timeout=5)
    with pytest.raises(httpx.TransportError):  # and plain HTTP gets no answer
        httpx.get(url.replace("https", "http", 1) + "/healthz", timeout=5)
