"""Authentication and authorization over real HTTP: 401 everywhere but the allow-list, the
JWT negatives, the token endpoint, and a role-by-route matrix."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cluster.auth.models import PERMISSIONS, Action, Role
from cluster.auth.security import Security
from cluster.auth.tokens import JwtKeyring
from cluster.settings import Settings
from tests.e2e.conftest import Tenant

#: Routes that answer without a credential, on purpose.
ALLOW_LIST = {"/healthz", "/readyz", "/docs", "/openapi.json", "/v1/auth/token"}


def _routes(http: httpx.Client) -> list[tuple[str, str]]:
    paths = http.get("/openapi.json").json()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


def test_every_route_without_credentials_is_401_but_the_allow_list(http: httpx.Client) -> None:
    checked = 0
    for method, path in _routes(http):
        if path in ALLOW_LIST:
            continue
        url = re.sub(r"\{[^}]+\}", "x", path)
        response = http.request(method, url, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["type"] == "Unauthorized"
        checked += 1
    assert checked >= 10
    for path in ("/healthz", "/docs", "/openapi.json"):
        assert http.get(path).status_code == 200, path


def _claims(tenant: str, **override: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": "dafnck", "aud": "dafnck-api", "sub": "jwt-probe", "iat": now, "nbf": now,
              "exp": now + 300, "jti": "j", "tenant": tenant, "role": "admin",
              "origin": "user", "key_id": None}  # fmt: skip
    return {**claims, **override}


def test_jwt_negatives_are_401(
    http: httpx.Client, e2e_settings: Settings, tenants: tuple[Tenant, Tenant], security: Security
) -> None:
    kid, secret = JwtKeyring.load(e2e_settings.state_dir).current
    name = tenants[0].name
    # A user's token is checked against the user's record: the forged one names a real user.
    security.users.create_user(name, "jwt-probe", "a long enough password", Role.ADMIN)
    good = jwt.encode(_claims(name), secret, algorithm="HS256", headers={"kid": kid})
    assert http.get("/v1/agents", headers={"Authorization": f"Bearer {good}"}).status_code == 200

    head, body, sig = good.split(".")
    tampered_sig = sig[:-4] + ("AAAA" if not sig.endswith("AAAA") else "BBBB")
    bad = {
        "expired": jwt.encode(
            _claims(name, exp=int(time.time()) - 60), secret, "HS256", headers={"kid": kid}
        ),
        "wrong audience": jwt.encode(
            _claims(name, aud="other"), secret, "HS256", headers={"kid": kid}
        ),
        "alg none": jwt.encode(_claims(name), None, algorithm="none", headers={"kid": kid}),
        "tampered": f"{head}.{body}.{tampered_sig}",
        "other key": jwt.encode(_claims(name), "x" * 64, "HS256", headers={"kid": kid}),
        "not yet valid": jwt.encode(
            _claims(name, nbf=int(time.time()) + 600), secret, "HS256", headers={"kid": kid}
        ),
        "wrong issuer": jwt.encode(
            _claims(name, iss="someone-else"), secret, "HS256", headers={"kid": kid}
        ),
        "unknown kid": jwt.encode(_claims(name), secret, "HS256", headers={"kid": "nope"}),
        "no kid": jwt.encode(_claims(name), secret, "HS256"),
        "no such user": jwt.encode(
            _claims(name, sub="nobody"), secret, "HS256", headers={"kid": kid}
        ),
        **_confused(_claims(name), kid),
    }
    for why, token in bad.items():
        response = http.get("/v1/agents", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, (why, response.text)
        assert response.headers["content-type"] == "application/json", why
        assert response.json()["error"]["type"] == "Unauthorized", (why, response.text)
        assert secret not in response.text


def _confused(claims: dict[str, Any], kid: str) -> dict[str, str]:
    """Algorithm confusion: an RS256 token, and HS256 "signed" with the RSA public key (the
    classic attack on verifiers that take the key's type from the token)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid})
                                    .encode()).rstrip(b"=")  # fmt: skip
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    signature = hmac.new(public_pem, head + b"." + body, hashlib.sha256).digest()
    hs_with_public = b".".join([head, body, base64.urlsafe_b64encode(signature).rstrip(b"=")])
    return {
        "RS256": jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid}),
        "HS256 with the public key": hs_with_public.decode(),
    }


@pytest.mark.parametrize("form", [True, False], ids=["form", "json"])
def test_client_credentials_token_works_and_dies_with_its_key(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], form: bool
) -> None:
    admin = tenants[0].headers(Role.ADMIN)
    made = http.post("/v1/keys", json={"role": "viewer", "name": "cc"}, headers=admin).json()
    grant = {"grant_type": "client_credentials", "client_secret": made["secret"]}
    response = http.post("/v1/auth/token", **({"data": grant} if form else {"json": grant}))
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert http.get("/v1/agents", headers=bearer).status_code == 200
    assert http.post("/v1/agents", json={}, headers=bearer).status_code == 403
    assert http.delete(f"/v1/keys/{made['key_id']}", headers=admin).status_code == 200
    assert http.get("/v1/agents", headers=bearer).status_code == 401
    assert http.post("/v1/auth/token", data=grant).status_code == 401


def test_password_grant_for_a_user_made_over_http(
    http: httpx.Client, tenants: tuple[Tenant, Tenant]
) -> None:
    tenant = tenants[0]
    user = {"username": f"op{time.time_ns()}", "password": "a long passphrase", "role": "operator"}
    made = http.post("/v1/users", json=user, headers=tenant.headers(Role.ADMIN))
    assert made.status_code == 201, made.text
    assert "password" not in made.text
    grant = {"grant_type": "password", "tenant": tenant.name, **user}
    del grant["role"]
    token = http.post("/v1/auth/token", data=grant)
    assert token.status_code == 200, token.text
    wrong = http.post("/v1/auth/token", data={**grant, "password": "not the passphrase"})
    assert wrong.status_code == 401
    assert http.post("/v1/auth/token", json={"grant_type": "magic"}).status_code == 422


#: (method, path, body, the action the route needs). Bodies are invalid on purpose: an
#: allowed role gets 404/422 and nothing changes; a forbidden role gets 403 first.
MATRIX: list[tuple[str, str, Any, Action]] = [
    ("GET", "/v1/agents", None, Action.AGENTS_READ),
    ("GET", "/v1/agents/nope@1.0.0", None, Action.AGENTS_READ),
    ("POST", "/v1/agents", {"name": 1}, Action.AGENTS_WRITE),
    ("PUT", "/v1/agents/nope@1.0.0/status", {"status": "bogus"}, Action.AGENTS_WRITE),
    ("POST", "/v1/agents/nope/scale", {"replicas": -1}, Action.AGENTS_WRITE),
    ("DELETE", "/v1/agents/nope@1.0.0", None, Action.AGENTS_WRITE),
    ("POST", "/v1/tasks", {"capability": "BAD CAP"}, Action.TASKS_RUN),
    ("GET", "/v1/tasks/nope", None, Action.TASKS_READ),
    ("POST", "/v1/tasks/nope/cancel", None, Action.TASKS_RUN),
    ("GET", "/v1/keys", None, Action.KEYS_MANAGE),
    ("POST", "/v1/keys", {"role": "god"}, Action.KEYS_MANAGE),
    ("DELETE", "/v1/keys/0000000000000000", None, Action.KEYS_MANAGE),
    ("POST", "/v1/users", {"username": "UPPER"}, Action.USERS_MANAGE),
    ("POST", "/v1/users/nobody/totp", None, Action.USERS_MANAGE),
]


@pytest.mark.parametrize("role", list(Role), ids=str)
def test_role_by_route_matrix(
    http: httpx.Client, tenants: tuple[Tenant, Tenant], role: Role
) -> None:
    headers = tenants[0].headers(role)
    wrong = []
    for method, path, body, action in MATRIX:
        response = http.request(method, path, json=body, headers=headers)
        allowed = action in PERMISSIONS[role]
        ok = response.status_code in (200, 404, 422) if allowed else response.status_code == 403
        if not ok:
            wrong.append((method, path, response.status_code, response.text[:200]))
    assert not wrong, wrong
