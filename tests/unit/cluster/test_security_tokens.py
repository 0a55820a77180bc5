"""JWT access tokens: a valid token round-trips; every forged, stale or foreign one is refused
with a reason; keys load from the environment or a 0600 file and rotate by key id."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cluster.auth.models import Principal, Role, SecurityConfig
from cluster.auth.tokens import KEY_FILE, JwtKeyring, TokenService, rotate_key_file
from cluster.errors import ConfigError, InputInvalid, Unauthorized

KEY_PRINCIPAL = Principal(
    subject="key:0123456789abcdef",
    tenant="acme",
    role=Role.OPERATOR,
    kind="api_key",
    key_id="0123456789abcdef",
)
USER = Principal(subject="alice", tenant="acme", role=Role.VIEWER, kind="user")


@pytest.fixture
def keyring(tmp_path: Path) -> JwtKeyring:
    return JwtKeyring.load(tmp_path, env={})


@pytest.fixture
def service(keyring: JwtKeyring) -> TokenService:
    return TokenService(keyring, SecurityConfig(leeway_s=5))


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "dafnck",
        "aud": "dafnck-api",
        "sub": "alice",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": "j1",
        "tenant": "acme",
        "role": "viewer",
        "origin": "user",
        "key_id": None,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not ...}


def _forge(keyring: JwtKeyring, *, alg: str = "HS256", key: Any = None, **claims: Any) -> str:
    kid, secret = keyring.current
    return jwt.encode(
        _claims(**claims), secret if key is None else key, algorithm=alg, headers={"kid": kid}
    )


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_token_round_trips_to_the_principal_with_kind_token(service: TokenService) -> None:
    got = service.verify_token(service.issue_token(KEY_PRINCIPAL, 60))
    assert got == KEY_PRINCIPAL.model_copy(update={"kind": "token"})
    header = jwt.get_unverified_header(service.issue_token(USER))
    assert header["alg"] == "HS256" and header["kid"] == service.keyring.current[0]
    claims = jwt.decode(service.issue_token(USER, 60), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 60 and claims["aud"] == "dafnck-api"


def test_a_well_formed_forged_token_with_our_key_is_accepted(
    keyring: JwtKeyring, service: TokenService
) -> None:
    # The control for the negatives below: only the one thing each changes makes it fail.
    assert service.verify_token(_forge(keyring)).subject == "alice"


def test_alg_none_is_refused(keyring: JwtKeyring, service: TokenService) -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': keyring.current[0]})}.{_b64(_claims())}."
    with pytest.raises(Unauthorized, match=r"algorithm 'none' is refused; only HS256"):
        service.verify_token(token)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256"])
def test_asymmetric_tokens_are_refused(
    keyring: JwtKeyring, service: TokenService, alg: str
) -> None:
    if alg.startswith("ES"):
        key: Any = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthorized, match=rf"algorithm '{alg}' is refused"):
        service.verify_token(_forge(keyring, alg=alg, key=key))


def test_another_hmac_algorithm_with_our_key_is_refused(
    keyring: JwtKeyring, service: TokenService
) -> None:
    with pytest.raises(Unauthorized, match=r"algorithm 'HS512' is refused"):
        service.verify_token(_forge(keyring, alg="HS512"))


def test_a_token_signed_with_another_key_under_our_kid_is_refused(
    keyring: JwtKeyring, service: TokenService
) -> None:
    with pytest.raises(Unauthorized, match=r"signature does not match"):
        service.verify_token(_forge(keyring, key="x" * 48))


def test_a_tampered_payload_is_refused(service: TokenService) -> None:
    head, _, sig = service.issue_token(USER).split(".")
    elevated = _claims(role="admin")
    with pytest.raises(Unauthorized, match=r"signature does not match"):
        service.verify_token(f"{head}.{_b64(elevated)}.{sig}")


def test_unknown_or_missing_kid_is_refused(keyring: JwtKeyring, service: TokenService) -> None:
    secret = keyring.current[1]
    foreign = jwt.encode(_claims(), secret, algorithm="HS256", headers={"kid": "nope"})
    with pytest.raises(Unauthorized, match=r"key id 'nope' is unknown"):
        service.verify_token(foreign)
    with pytest.raises(Unauthorized, match=r"no key id"):
        service.verify_token(jwt.encode(_claims(), secret, algorithm="HS256"))


def test_expired_tokens_are_refused_beyond_the_leeway(
    keyring: JwtKeyring, service: TokenService
) -> None:
    now = int(time.time())
    assert service.verify_token(_forge(keyring, iat=now - 100, nbf=now - 100, exp=now - 2))
    with pytest.raises(Unauthorized, match=r"expired"):
        service.verify_token(_forge(keyring, iat=now - 100, nbf=now - 100, exp=now - 30))


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid_tokens_are_refused(
    keyring: JwtKeyring, service: TokenService, claim: str
) -> None:
    now = int(time.time())
    soon: dict[str, Any] = {claim: now + 2}
    later: dict[str, Any] = {claim: now + 60}
    assert service.verify_token(_forge(keyring, **soon))
    with pytest.raises(Unauthorized, match=r"not yet valid"):
        service.verify_token(_forge(keyring, **later))


def test_wrong_audience_or_issuer_is_refused(keyring: JwtKeyring, service: TokenService) -> None:
    with pytest.raises(Unauthorized, match=r"audience is not 'dafnck-api'"):
        service.verify_token(_forge(keyring, aud="other-api"))
    with pytest.raises(Unauthorized, match=r"audience is not 'dafnck-api'"):
        service.verify_token(_forge(keyring, aud=["dafnck-api", "other"]))
    with pytest.raises(Unauthorized, match=r"issuer is not 'dafnck'"):
        service.verify_token(_forge(keyring, iss="evil"))


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat", "aud", "iss", "sub", "jti"])
def test_every_required_claim_must_be_present(
    keyring: JwtKeyring, service: TokenService, claim: str
) -> None:
    with pytest.raises(Unauthorized, match=rf"lacks the '{claim}' claim"):
        missing: dict[str, Any] = {claim: ...}
        service.verify_token(_forge(keyring, **missing))


def test_malformed_tokens_and_bad_claims_are_refused(
    keyring: JwtKeyring, service: TokenService
) -> None:
    for junk in ["", "abc", "a.b.c", "dk_not_a_jwt"]:
        with pytest.raises(Unauthorized, match=r"malformed"):
            service.verify_token(junk)
    with pytest.raises(Unauthorized, match=r"claims are invalid"):
        service.verify_token(_forge(keyring, tenant="../other"))
    with pytest.raises(Unauthorized, match=r"claims are invalid"):
        service.verify_token(_forge(keyring, role="root"))


def test_ttl_is_bounded_and_tokens_do_not_mint_tokens(service: TokenService) -> None:
    for ttl in (0, -5, 3601):
        with pytest.raises(InputInvalid, match=r"ttl_s"):
            service.issue_token(USER, ttl)
    token_principal = service.verify_token(service.issue_token(USER))
    with pytest.raises(Unauthorized, match=r"cannot mint"):
        service.issue_token(token_principal)


def test_the_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    first = JwtKeyring.load(tmp_path, env={})
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    again = JwtKeyring.load(tmp_path, env={})
    assert again.current == first.current and len(first.current[1]) >= 32
    token = TokenService(first).issue_token(USER)
    assert TokenService(again).verify_token(token).subject == "alice"


def test_a_key_file_others_can_read_or_a_malformed_one_is_refused(tmp_path: Path) -> None:
    JwtKeyring.load(tmp_path, env={})
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(ConfigError, match=r"readable by others; chmod 600"):
        JwtKeyring.load(tmp_path, env={})
    os.chmod(tmp_path / KEY_FILE, 0o600)
    (tmp_path / KEY_FILE).write_text('{"current": "a", "keys": {"b": "' + "s" * 40 + '"}}')
    with pytest.raises(ConfigError, match=r"current key id 'a' is not among \['b'\]"):
        JwtKeyring.load(tmp_path, env={})


def test_the_environment_secret_wins_and_every_process_derives_the_same_kid(
    tmp_path: Path,
) -> None:
    env = {"DAFNCK_JWT_SECRET": "e" * 40}
    one, two = JwtKeyring.load(tmp_path / "a", env=env), JwtKeyring.load(tmp_path / "b", env=env)
    assert one.current == two.current and one.current[1] == "e" * 40
    assert not (tmp_path / "a" / KEY_FILE).exists()
    assert TokenService(two).verify_token(TokenService(one).issue_token(USER)) is not None
    with pytest.raises(ConfigError, match=r"DAFNCK_JWT_SECRET: keys .* shorter than 32 bytes"):
        JwtKeyring.load(tmp_path, env={"DAFNCK_JWT_SECRET": "short"})


def test_the_environment_may_hold_several_keys_one_current(tmp_path: Path) -> None:
    old, new = "o" * 40, "n" * 40
    env = {"DAFNCK_JWT_SECRET": json.dumps({"current": "k2", "keys": {"k1": old, "k2": new}})}
    service = TokenService(JwtKeyring.load(tmp_path, env=env))
    assert jwt.get_unverified_header(service.issue_token(USER))["kid"] == "k2"
    by_old_key = jwt.encode(_claims(), old, algorithm="HS256", headers={"kid": "k1"})
    assert service.verify_token(by_old_key).subject == "alice"


def test_rotation_keeps_old_tokens_valid_until_their_key_is_dropped(tmp_path: Path) -> None:
    service = TokenService(JwtKeyring.load(tmp_path, env={}))
    old_kid = service.keyring.current[0]
    old_token = service.issue_token(USER)
    new_kid = rotate_key_file(tmp_path)
    # The running service re-reads the file: it signs with the new key at once.
    new_token = service.issue_token(USER)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid != old_kid
    assert service.verify_token(old_token).subject == "alice"
    with pytest.raises(ConfigError, match=r"cannot drop the current key"):
        rotate_key_file(tmp_path, drop=[service.keyring.current[0]])
    rotate_key_file(tmp_path, drop=[old_kid])
    with pytest.raises(Unauthorized, match=rf"key id '{old_kid}' is unknown"):
        service.verify_token(old_token)
    assert service.verify_token(new_token).subject == "alice"
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
