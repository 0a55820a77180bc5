"""Users: argon2 password hashes (pwdlib), TOTP second factor (pyotp), lockout after failures.

Enrolment: `create_user` makes the account with no second factor; `enable_totp` (run by an
admin holding `users:manage`, or by the operator's CLI) issues a secret, kept Fernet-
encrypted with the data layer's key, and returns the otpauth:// URI once; the user's first
login with a valid code moves the factor from "pending" to "active". An admin without a
TOTP secret cannot log in at all, and nor can any user who has one but gives no valid code.

Every failed login answers the same "invalid username, password or one-time code" (the
log says which part failed) and counts against the username, whether or not it exists;
after `max_login_failures` within `lockout_s` the name is locked (RateLimited) until the
window ends, even for the right password. A code is accepted once: replays are refused.

Redis: `dafnck:<tenant>:auth:users` (hash: username -> UserRecord JSON),
`dafnck:<tenant>:auth:fails:<username>` (failure counter, expiring),
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

from cluster.data import KeyRing
from cluster.errors import Conflict, InputInvalid, NotFound, RateLimited, Unauthorized
from cluster.security_models import (
    TENANT,
    USERNAME,
    Principal,
    Role,
    SecurityConfig,
    TotpEnrolment,
    UserInfo,
    UserRecord,
)
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
    ) -> None:
        self.store = store
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
        problems = []
        if len(password) < self._config.min_password_length:
            problems.append(
                f"password must have at least {self._config.min_password_length} characters"
            )
        if len(password) > MAX_PASSWORD_CHARS:
            problems.append(f"password must have at most {MAX_PASSWORD_CHARS} characters")
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

        Raises: Unauthorized (one message for every wrong part), RateLimited (locked after
        too many failures), ConfigError (no key to read the TOTP secret), StoreUnavailable.
        """
        if not (_TENANT.match(tenant) and _NAME.match(username)):
            self._verify_password(None, password)  # same work whatever the input
            raise Unauthorized(BAD_LOGIN)
        self._refuse_if_locked(tenant, username)
        record = self._record(tenant, username)
        reason = self._failure(tenant, record, password, totp_code)
        if reason:
            self._count_failure(tenant, username)
            log.info(
                "login of %s refused: %s",
                username,
                reason,
                extra={"tenant": tenant, "reason": reason},
            )
            raise Unauthorized(BAD_LOGIN)
        assert record is not None
        self.store.redis.delete(self._key(tenant, "fails", username))
        if record.totp == "pending":
            # Only if the secret is still the one just used: a new enrolment may have raced us.
            self._update(tenant, username, {"totp": "active"}, if_secret=record.totp_secret_enc)
        return Principal(subject=username, tenant=tenant, role=record.role, kind="user")

    def _failure(
        self, tenant: str, record: UserRecord | None, password: str, code: str | None
    ) -> str:
        """Why the login fails ("" if it does not); the password is always verified."""
        if not self._verify_password(record, password) or record is None:
            return "unknown user" if record is None else "wrong password"
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

    def _refuse_if_locked(self, tenant: str, username: str) -> None:
        key = self._key(tenant, "fails", username)
        failures = int(self.store.redis.get(key) or 0)
        if failures >= self._config.max_login_failures:
            retry_s = max(int(self.store.redis.ttl(key)), 1)
            raise RateLimited(
                f"too many failed logins for {username!r}; try again in {retry_s} s", retry_s
            )

    def _count_failure(self, tenant: str, username: str) -> None:
        key = self._key(tenant, "fails", username)
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, self._config.lockout_s, nx=True)
        pipe.execute()

    def _update(
        self, tenant: str, username: str, changes: dict[str, Any], if_secret: str | None = None
    ) -> UserRecord | None:
        """Change fields of a user atomically (WATCH); None if the user is gone.

        With `if_secret`, change nothing unless the TOTP secret is still that one.
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
