"""The data key: Fernet keys that encrypt sensitive fields at rest, kept outside the store.

The keys come from `DAFNCK_DATA_KEY` (comma-separated: the first encrypts, all decrypt, for
rotation), else from a key file made 0600 on first use. Data objects and user secrets
(`cluster.auth.users`) are encrypted with it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from cluster.errors import ConfigError

log = logging.getLogger(__name__)

#: Fernet keys, comma-separated (the first encrypts; all decrypt, for rotation).
KEY_ENV = "DAFNCK_DATA_KEY"


class KeyRing:
    """Fernet keys from `DAFNCK_DATA_KEY`, else from a key file made 0600 on first use."""

    def __init__(self, key_file: Path | None) -> None:
        self.key_file = key_file
        self._fernet: MultiFernet | None = None
        self._source = ""

    def _load(self) -> MultiFernet:
        if self._fernet is not None:
            return self._fernet
        env = os.environ.get(KEY_ENV, "").strip()
        if env:
            keys, self._source = env.split(","), f"${KEY_ENV}"
        elif self.key_file is not None:
            keys, self._source = _read_or_create_key(self.key_file), str(self.key_file)
        else:
            raise ConfigError(
                f"sensitive fields need an encryption key: set {KEY_ENV} or give DataManager a key_file"
            )
        try:
            self._fernet = MultiFernet([Fernet(k.strip()) for k in keys if k.strip()])
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"{self._source}: not a Fernet key ({exc}); make one with Fernet.generate_key()"
            ) from None
        return self._fernet

    def encrypt(self, value: Any) -> str:
        """Raises: ConfigError (no usable key)."""
        return self._load().encrypt(json.dumps(value).encode()).decode()

    def decrypt(self, token: str, what: str) -> Any:
        """Raises: ConfigError (no usable key, or the value was encrypted with another key)."""
        fernet = self._load()
        try:
            return json.loads(fernet.decrypt(token.encode()))
        except InvalidToken:
            raise ConfigError(
                f"{what} cannot be decrypted with the key from {self._source}: it was encrypted "
                f"with another key; set {KEY_ENV} to that key (comma-separate new and old keys to rotate)"
            ) from None


def _read_or_create_key(path: Path) -> list[str]:
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(Fernet.generate_key() + b"\n")
            try:
                os.link(tmp, path)  # atomic: a concurrent creator's key wins, never a torn file
                log.info("created the data encryption key file %s", path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        if path.stat().st_mode & 0o077:
            log.warning("data key file %s is readable by others; chmod 600 it", path)
        return path.read_text().split()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read or create the data key file: {exc}") from None


__all__ = ["KEY_ENV", "KeyRing"]
