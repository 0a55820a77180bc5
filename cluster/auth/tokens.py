"""Short-lived JWT access tokens (pyjwt): HS256 only, `kid`-selected keys, `iss`/`aud` pinned.

Keys come from `$DAFNCK_JWT_SECRET` (a bare secret of at least 32 bytes, whose kid is
derived from its digest so every process agrees, or the JSON below), else from
`<state_dir>/jwt_keys.json`, created 0600 on first use:

    {"current": "<kid>", "keys": {"<kid>": "<secret>", "<older kid>": "<secret>"}}

Rotation: `rotate_key_file` adds a key and makes it current; tokens signed with older keys
verify until those are dropped (after the longest token lifetime). A keyring read from a
file re-reads it when the file changes, so every local process sees a rotation at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
from pydantic import ValidationError

from cluster.auth.models import Principal, SecurityConfig
from cluster.errors import ConfigError, InputInvalid, Unauthorized

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
SECRET_ENV = "DAFNCK_JWT_SECRET"  # noqa: S105 (a variable name, not a secret)  # nosec B105
KEY_FILE = "jwt_keys.json"
MIN_SECRET_BYTES = 32
_REQUIRED = ["exp", "nbf", "iat", "iss", "aud", "sub", "jti"]


class JwtKeyring:
    """HMAC keys by id, one current; from the environment or a key file."""

    def __init__(
        self, keys: Mapping[str, str], current: str, source: str, path: Path | None = None
    ) -> None:
        _check(keys, current, source)
        self._keys, self._current, self.source = dict(keys), current, source
        self._path = path
        self._mtime = _mtime(path)

    @classmethod
    def load(cls, state_dir: Path, env: Mapping[str, str] | None = None) -> JwtKeyring:
        """From `$DAFNCK_JWT_SECRET` if set, else `<state_dir>/jwt_keys.json` (created if missing).

        Raises: ConfigError (unreadable, malformed, too short, or readable by others).
        """
        value = (os.environ if env is None else env).get(SECRET_ENV, "").strip()
        if value:
            keys, current = _parse(value, f"${SECRET_ENV}")
            return cls(keys, current, f"${SECRET_ENV}")
        path = state_dir / KEY_FILE
        keys, current = _read_or_create(path)
        return cls(keys, current, str(path), path)

    @property
    def current(self) -> tuple[str, str]:
        """(kid, secret) that signs new tokens."""
        self._refresh()
        return self._current, self._keys[self._current]

    def get(self, kid: str) -> str | None:
        self._refresh()
        return self._keys.get(kid)

    def _refresh(self) -> None:
        mtime = _mtime(self._path)
        if self._path is None or mtime == self._mtime:
            return
        try:
            keys, current = _parse(self._path.read_text(), str(self._path))
        except (OSError, ConfigError) as exc:
            # Keep serving with the keys we have rather than refuse every request.
            log.error("cannot reload JWT keys, keeping the old ones: %s", exc)
            self._mtime = mtime
            return
        self._keys, self._current, self._mtime = keys, current, mtime
        log.info("reloaded JWT keys from %s (current %s)", self._path, current)


class TokenService:
    """Issue and verify access tokens for principals; each refusal says why."""

    def __init__(self, keyring: JwtKeyring, config: SecurityConfig | None = None) -> None:
        self.keyring = keyring
        self.config = config or SecurityConfig()

    def issue_token(self, principal: Principal, ttl_s: int | None = None) -> str:
        """A signed token for the principal, valid from now for `ttl_s` (default from config).

        Raises: InputInvalid (ttl not in (0, max_token_ttl_s]), Unauthorized (the principal
        is itself a token: tokens are not exchanged for longer-lived ones).
        """
        ttl = self.config.token_ttl_s if ttl_s is None else ttl_s
        if not 0 < ttl <= self.config.max_token_ttl_s:
            raise InputInvalid(
                "token request", [f"ttl_s {ttl!r} must be in (0, {self.config.max_token_ttl_s}]"]
            )
        if principal.kind == "token":
            raise Unauthorized(
                "a token cannot mint another; authenticate with a password or an API key"
            )
        kid, secret = self.keyring.current
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": principal.subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "tenant": principal.tenant,
            "role": principal.role.value,
            "origin": principal.kind,
            "key_id": principal.key_id,
        }
        if principal.kind == "user":
            # The user's token version: a new password or disabling voids this token.
            claims["ver"] = principal.token_version or 0
        return jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": kid})

    def verify_token(self, token: str) -> Principal:
        """The principal a valid token names, with kind "token".

        Raises: Unauthorized naming the reason: malformed, algorithm not HS256 (including
        "none" and RS/ES), missing or unknown kid, bad signature (tampered or another key),
        wrong audience or issuer, expired, not yet valid, missing claims.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthorized("bearer token is malformed: not a JWT") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg != ALGORITHM:
            raise Unauthorized(f"bearer token algorithm {alg!r} is refused; only {ALGORITHM}")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("bearer token has no key id (kid) header")
        secret = self.keyring.get(kid)
        if secret is None:
            raise Unauthorized(f"bearer token key id {kid!r} is unknown (retired or foreign key)")
        claims = self._decode(token, secret)
        try:
            return Principal(
                subject=claims["sub"],
                tenant=claims.get("tenant"),
                role=claims.get("role"),
                kind="token",
                key_id=claims.get("key_id"),
                token_version=claims.get("ver"),
            )
        except ValidationError:
            raise Unauthorized(
                "bearer token claims are invalid (tenant, role, key_id or ver)"
            ) from None

    def _decode(self, token: str, secret: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_s,
                options={"require": _REQUIRED, "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("bearer token has expired; get a new one") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("bearer token is not yet valid (nbf/iat in the future)") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized(
                "bearer token signature does not match (tampered or another key)"
            ) from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(f"bearer token audience is not {self.config.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized(f"bearer token issuer is not {self.config.issuer!r}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"bearer token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"bearer token is invalid: {type(exc).__name__}") from None


def rotate_key_file(state_dir: Path, drop: Iterable[str] = ()) -> str:
    """Add a new current key to `<state_dir>/jwt_keys.json`, dropping the given old kids.

    Raises: ConfigError (unreadable or malformed file, or dropping the current key).
    """
    path = state_dir / KEY_FILE
    keys, current = _read_or_create(path)
    kid = secrets.token_hex(6)
    for old in drop:
        if old == current:
            raise ConfigError(f"{path}: cannot drop the current key {old!r}; rotate first")
        keys.pop(old, None)
    keys[kid] = secrets.token_urlsafe(48)
    _write(path, {"current": kid, "keys": keys})
    log.info("rotated JWT keys in %s: current %s", path, kid)
    return kid


def _parse(text: str, source: str) -> tuple[dict[str, str], str]:
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
            keys, current = data["keys"], data["current"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f'{source}: expected {{"current": "<kid>", "keys": {{"<kid>": "<secret>"}}}} '
                "or a bare secret"
            ) from None
        if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
            raise ConfigError(f"{source}: 'keys' must map key ids to secret strings")
    else:
        # A bare secret: its kid comes from its digest so every process derives the same.
        secret = text.strip()
        current = "k-" + hashlib.sha256(secret.encode()).hexdigest()[:8]
        keys = {current: secret}
    _check(keys, current, source)
    return keys, current


def _check(keys: Mapping[str, str], current: str, source: str) -> None:
    if current not in keys:
        raise ConfigError(f"{source}: current key id {current!r} is not among {sorted(keys)}")
    short = sorted(k for k, v in keys.items() if len(v.encode()) < MIN_SECRET_BYTES)
    if short:
        raise ConfigError(
            f"{source}: keys {short} are shorter than {MIN_SECRET_BYTES} bytes; "
            "use secrets.token_urlsafe(48)"
        )


def _read_or_create(path: Path) -> tuple[dict[str, str], str]:
    try:
        if not path.exists():
            kid = secrets.token_hex(6)
            _write(path, {"current": kid, "keys": {kid: secrets.token_urlsafe(48)}}, exclusive=True)
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"{path}: JWT key file is readable by others; chmod 600 it")
        return _parse(path.read_text(), str(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read or create the JWT key file: {exc}") from None


def _write(path: Path, data: dict[str, Any], exclusive: bool = False) -> None:
    """Write 0600 through a temporary file: readers never see a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    try:
        if exclusive:
            os.link(tmp, path)  # a concurrent creator's key wins
        else:
            os.replace(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote JWT key file %s", path)


def _mtime(path: Path | None) -> tuple[int, int] | None:
    """(inode, mtime): `os.replace` gives a new inode even within one mtime tick."""
    try:
        st = path.stat() if path else None
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns) if st else None
