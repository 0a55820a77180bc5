"""Users: argon2 password hashes (pwdlib), TOTP second factor (pyotp), disable, delete, new
passwords, and the token version that makes a user's tokens stop working at once.

Enrolment: `create_user` makes the account with no second factor; `enable_totp` (run by an
admin holding `users:manage`, or by the operator's CLI) issues a secret, kept Fernet-
encrypted with the data layer's key, and returns the otpauth:// URI once; the user's first
login with a valid code moves the factor from "pending" to "active". An admin without a
TOTP secret cannot log in at all, and nor can any user who has one but gives no valid code.

Every failed login answers the same "invalid username, password or one-time code" (the
log says which part failed), a disabled user's too. How often one may try is not decided
here: `cluster.auth.limits.LoginLimits` admits a login before any hashing (per address, per
username, and a growing delay per (username, address)), so no one can lock a user out. A
code is accepted once: replays are refused.

Each user record has a `token_version`, written into the `ver` claim of the tokens its logins
mint; a new password, disabling or enabling bumps it, and `check_token` (on every use of a
user's token, read through the auth cache of `cluster.auth.keys`) refuses a token whose user
is gone, disabled or a version behind; each of those changes returns once every listening
process has dropped its cached copy.

Redis: `dafnck:<tenant>:auth:users` (hash: username -> UserRecord JSON),
`dafnck:<tenant>:auth:otp:<username>:<time step>` (used codes, expiring).
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from typing import Any

import pyotp
import redis
from pwdlib import PasswordHash
from pydantic import ValidationError

from cluster.auth.keys import auth_cache
from cluster.auth.models import (
    TENANT,
    USERNAME,
    Principal,
    Role,
    SecurityConfig,
    TotpEnrolment,
    UserInfo,
    UserRecord,
)
from cluster.cache import CacheManager
from cluster.data.keyring import KeyRing
from cluster.errors import Conflict, InputInvalid, NotFound, Unauthorized
from cluster.store import Store, unavailable_as_error

log = logging.getLogger(__name__)

BAD_LOGIN = "invalid username, password or one-time code"
MAX_PASSWORD_CHARS = 1024
_NAME = re.compile(USERNAME)
_TENANT = re.compile(TENANT)


class Users:
    """Accounts of every tenant on one Redis; passwords and codes are checked here only."""

    def __init__(
        self,
        store: Store,
        secrets: KeyRing,
        config: SecurityConfig | None = None,
        hasher: PasswordHash | None = None,
        cache: CacheManager | None = None,
    ) -> None:
        self.store = store
        self.cache = cache or auth_cache(store)
        self._secrets = secrets
        self._config = config or SecurityConfig()
        self._hasher = hasher or PasswordHash.recommended()
        self._dummy_hash: str | None = None

    def _key(self, tenant: str, *parts: str) -> str:
        return self.store.for_tenant(tenant).key("auth", *parts)

    @unavailable_as_error
    def create_user(self, tenant: str, username: str, password: str, role: Role | str) -> UserInfo:
        """Make an account; admins must then get a TOTP secret (`enable_totp`) to log in.

        Raises: InputInvalid (bad tenant, name, role or a too short/long password),
        Conflict (the name is taken in this tenant), StoreUnavailable.
        """
        problems = self._password_problems(password)
        try:
            info = UserInfo(username=username, tenant=tenant, role=role, created_at=time.time())  # type: ignore[arg-type]
        except ValidationError as exc:
            problems += [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        if problems:
            raise InputInvalid(f"user {username!r}", problems)
        record = UserRecord(**info.model_dump(), password_hash=self._hasher.hash(password))
        if not self.store.redis.hsetnx(
            self._key(tenant, "users"), username, record.model_dump_json()
        ):
            raise Conflict(f"user {username!r} already exists in tenant {tenant!r}")
        log.info("created user %s (%s)", username, info.role, extra={"tenant": tenant})
        return info

    def _password_problems(self, password: str) -> list[str]:
        if len(password) < self._config.min_password_length:
            return [f"password must have at least {self._config.min_password_length} characters"]
        if len(password) > MAX_PASSWORD_CHARS:
            return [f"password must have at most {MAX_PASSWORD_CHARS} characters"]
        return []

    @unavailable_as_error
    def set_password(self, tenant: str, username: str, password: str) -> UserInfo:
        """Give the user a new password; every token it holds stops working.

        Raises: InputInvalid (too short/long), NotFound, StoreUnavailable.
        """
        problems = self._password_problems(password)
        if problems:
            raise InputInvalid(f"user {username!r}", problems)
        changes = {"password_hash": self._hasher.hash(password)}
        info = self._bump(tenant, username, changes)
        log.info("new password for %s; its tokens are void", username, extra={"tenant": tenant})
        return info

    @unavailable_as_error
    def set_disabled(self, tenant: str, username: str, disabled: bool) -> UserInfo:
        """Disable a user (no login, its tokens refused at once) or enable it again (the
        tokens it held before stay void). Raises: NotFound, StoreUnavailable."""
        info = self._bump(tenant, username, {"disabled": disabled})
        log.info("%s user %s", "disabled" if disabled else "enabled", username,
                 extra={"tenant": tenant})  # fmt: skip
        return info

    @unavailable_as_error
    def delete_user(self, tenant: str, username: str) -> None:
        """Remove the account; its tokens are refused at once. Raises: NotFound, StoreUnavailable."""
        if not self.store.redis.hdel(self._key(tenant, "users"), username):
            raise NotFound(f"user {username!r} not found in tenant {tenant!r}")
        self.cache.invalidate(f"user:{tenant}:{username}")
        log.info("deleted user %s", username, extra={"tenant": tenant})

    @unavailable_as_error
    def list_users(self, tenant: str) -> list[UserInfo]:
        """The tenant's users, by name (never a hash or a secret). Raises: StoreUnavailable."""
        raw = self.store.redis.hgetall(self._key(tenant, "users"))
        records = (UserRecord.model_validate_json(value) for value in raw.values())
        infos = [UserInfo.model_validate(r.model_dump()) for r in records]
        return sorted(infos, key=lambda info: info.username)

    @unavailable_as_error
    def check_token(self, tenant: str, username: str, version: int | None) -> None:
        """Refuse a user's token if the user is gone, disabled, or has a newer token version.

        Raises: Unauthorized, StoreUnavailable.
        """

        def load() -> dict[str, Any] | None:
            record = self._record(tenant, username)
            if record is None:
                return None
            return {"disabled": record.disabled, "version": record.token_version}

        key = f"user:{tenant}:{username}"
        state = self.cache.fetch(key, load) if _TENANT.match(tenant) else None
        _check_state(username, state, version)

    def check_token_cached(self, tenant: str, username: str, version: int | None) -> bool:
        """`check_token` from this process's cache alone (no I/O): True if the token passes,
        False if the user is not cached (then `check_token` fills it). Raises: Unauthorized."""
        found, state = self.cache.peek(f"user:{tenant}:{username}")
        if found:
            _check_state(username, state, version)
        return found

    def _bump(self, tenant: str, username: str, changes: dict[str, Any]) -> UserInfo:
        """Apply `changes` and bump the token version in one atomic update. Raises: NotFound."""
        record = self._update(tenant, username, changes, bump=True)
        self.cache.invalidate(f"user:{tenant}:{username}")
        if record is None:
            raise NotFound(f"user {username!r} not found in tenant {tenant!r}")
        return UserInfo.model_validate(record.model_dump())

    @unavailable_as_error
    def get_user(self, tenant: str, username: str) -> UserInfo:
        """Raises: NotFound, StoreUnavailable."""
        record = self._record(tenant, username)
        if record is None:
            raise NotFound(f"user {username!r} not found in tenant {tenant!r}")
        return UserInfo.model_validate(record.model_dump())

    @unavailable_as_error
    def enable_totp(self, tenant: str, username: str) -> TotpEnrolment:
        """Issue a new TOTP secret (replacing any old one); the first login with a code activates it.

        Raises: NotFound, ConfigError (no data encryption key), StoreUnavailable.
        """
        secret = pyotp.random_base32()
        encrypted = self._secrets.encrypt(secret)
        if (
            self._update(tenant, username, {"totp": "pending", "totp_secret_enc": encrypted})
            is None
        ):
            raise NotFound(f"user {username!r} not found in tenant {tenant!r}")
        log.info("issued a TOTP secret to %s", username, extra={"tenant": tenant})
        uri = pyotp.TOTP(secret).provisioning_uri(
            name=f"{username}@{tenant}", issuer_name=self._config.totp_issuer
        )
        return TotpEnrolment(secret=secret, provisioning_uri=uri)

    @unavailable_as_error
    def login(
        self, tenant: str, username: str, password: str, totp_code: str | None = None
    ) -> Principal:
        """The user's principal if the password and (when required) the one-time code match.

        Raises: Unauthorized (one message for every wrong part, and for a disabled user),
        ConfigError (no key to read the TOTP secret), StoreUnavailable.
        """
        if not (_TENANT.match(tenant) and _NAME.match(username)):
            self._verify_password(None, password)  # same work whatever the input
            raise Unauthorized(BAD_LOGIN)
        record = self._record(tenant, username)
        reason = self._failure(tenant, record, password, totp_code)
        if reason:
            log.info(
                "login of %s refused: %s",
                username,
                reason,
                extra={"tenant": tenant, "reason": reason},
            )
            raise Unauthorized(BAD_LOGIN)
        assert record is not None
        if record.totp == "pending":
            # Only if the secret is still the one just used: a new enrolment may have raced us.
            self._update(tenant, username, {"totp": "active"}, if_secret=record.totp_secret_enc)
        return Principal(
            subject=username,
            tenant=tenant,
            role=record.role,
            kind="user",
            token_version=record.token_version,
        )

    def _failure(
        self, tenant: str, record: UserRecord | None, password: str, code: str | None
    ) -> str:
        """Why the login fails ("" if it does not); the password is always verified."""
        if not self._verify_password(record, password) or record is None:
            return "unknown user" if record is None else "wrong password"
        if record.disabled:
            return "user disabled"
        if record.totp_secret_enc is None:
            return (
                "admin without a TOTP secret: run enable_totp" if record.role is Role.ADMIN else ""
            )
        if not code:
            return "one-time code missing"
        return "" if self._code_ok(tenant, record, code) else "wrong or reused one-time code"

    def _verify_password(self, record: UserRecord | None, password: str) -> bool:
        if record is None or len(password) > MAX_PASSWORD_CHARS:
            # Verify against a fixed hash so an unknown name costs as long as a known one.
            if self._dummy_hash is None:
                self._dummy_hash = self._hasher.hash("not a password of anyone")
            self._hasher.verify(password[:MAX_PASSWORD_CHARS], self._dummy_hash)
            return False
        return self._hasher.verify(password, record.password_hash)

    def _code_ok(self, tenant: str, record: UserRecord, code: str) -> bool:
        assert record.totp_secret_enc is not None
        secret = self._secrets.decrypt(
            record.totp_secret_enc, f"TOTP secret of {record.username!r}"
        )
        totp = pyotp.TOTP(secret)
        step = int(time.time()) // totp.interval
        for counter in (step - 1, step, step + 1):  # one step of clock drift either way
            if hmac.compare_digest(totp.generate_otp(counter), code.strip()):
                used = self._key(tenant, "otp", record.username, str(counter))
                return bool(self.store.redis.set(used, "1", nx=True, ex=totp.interval * 4))
        return False

    def _update(
        self,
        tenant: str,
        username: str,
        changes: dict[str, Any],
        if_secret: str | None = None,
        bump: bool = False,
    ) -> UserRecord | None:
        """Change fields of a user atomically (WATCH); None if the user is gone.

        With `if_secret`, change nothing unless the TOTP secret is still that one; with
        `bump`, also add one to the token version.
        """
        key = self._key(tenant, "users")
        with self.store.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.hget(key, username)
                    if raw is None:
                        return None
                    record = UserRecord.model_validate_json(raw)
                    if if_secret is not None and record.totp_secret_enc != if_secret:
                        return record
                    if bump:
                        changes = {**changes, "token_version": record.token_version + 1}
                    record = record.model_copy(update=changes)
                    pipe.multi()
                    pipe.hset(key, username, record.model_dump_json())
                    pipe.execute()
                    return record
                except redis.WatchError:
                    continue

    def _record(self, tenant: str, username: str) -> UserRecord | None:
        raw = self.store.redis.hget(self._key(tenant, "users"), username)
        return UserRecord.model_validate_json(raw) if raw else None


def _check_state(username: str, state: dict[str, Any] | None, version: int | None) -> None:
    """Refuse a token given what the cache holds of its user. Raises: Unauthorized."""
    if state is None:
        raise Unauthorized(f"user {username!r} behind this token no longer exists")
    if state["disabled"]:
        raise Unauthorized(f"user {username!r} behind this token is disabled")
    if (version or 0) != state["version"]:
        raise Unauthorized(
            "this token was revoked (new password or the user was disabled); log in again"
        )
