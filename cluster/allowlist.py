"""What code a spec may run and which secrets it may name: the platform operator's lists.

Tenants send data, never code (DESIGN.md, "Trust boundary"). A spec names code by
`module:attr` (a python agent's entrypoint, an llm agent's skill tools) or by a program (an
MCP stdio server's `command[0]`); each must match a glob the operator listed in settings,
checked before anything is imported or started. A spec names secrets by reference only: a
file inside `secrets_dir`, or an environment variable that starts with `secret_env_prefix`
or is listed in `secret_env_allow`.

Settings live with the platform (environment, YAML file); no tenant can change them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from cluster.settings import Settings

#: Variables that change which code an allowed program loads (the dynamic linker's, the
#: interpreters' and the program lookup itself): never set by a spec.
_CODE_ENV = ("LD_*", "DYLD_*", "PYTHON*", "NODE_OPTIONS", "NODE_PATH", "PATH", "PERL5*",
             "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "BASH_ENV", "ENV")  # fmt: skip


#: The settings that list code: python agents' entrypoints, llm agents' skill tools.
CodeSetting = Literal["agent_entrypoints", "tool_skills"]


class SecretRefused(ValueError):
    """A secret reference outside the secrets directory or the allowed variables."""


def matches(value: str, patterns: Iterable[str]) -> bool:
    """Whether `value` matches one of the globs (`*`, `?`, `[..]`; case-sensitive)."""
    return any(fnmatchcase(value, pattern) for pattern in patterns)


@dataclass(frozen=True)
class CodePolicy:
    """The operator's allow-lists, as one value the supervisor and replicas check against."""

    agent_entrypoints: tuple[str, ...] = ()
    tool_skills: tuple[str, ...] = ()
    mcp_commands: tuple[str, ...] = ()
    secrets_dir: Path = Path("/nonexistent")
    secret_env_prefix: str = ""
    secret_env_allow: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> CodePolicy:
        return cls(
            agent_entrypoints=tuple(settings.agent_entrypoints),
            tool_skills=tuple(settings.tool_skills),
            mcp_commands=tuple(settings.mcp_commands),
            secrets_dir=settings.secrets_dir or settings.state_dir / "secrets",
            secret_env_prefix=settings.secret_env_prefix,
            secret_env_allow=tuple(settings.secret_env_allow),
        )

    # -- code ------------------------------------------------------------------------

    def entrypoint_problem(self, entrypoint: str) -> str | None:
        """Why a python agent may not load `module:attr` (None: it may)."""
        return self.code_problem(entrypoint, "agent_entrypoints")

    def tool_skill_problem(self, skill: str) -> str | None:
        """Why an llm agent may not call the python function `module:function`."""
        return self.code_problem(skill, "tool_skills")

    def code_problem(self, ref: str, setting: CodeSetting) -> str | None:
        """Why `module:attr` does not match the allow-list `setting` (None: it does)."""
        patterns: tuple[str, ...] = getattr(self, setting)
        if matches(ref, patterns):
            return None
        listed = ", ".join(map(repr, patterns)) or "none"
        return (
            f"{ref!r} is not in the platform's {setting} allow-list (listed: {listed}); "
            "code that runs on the cluster is installed and listed by the platform's operator"
        )

    def defined_problem(self, target: Any, setting: CodeSetting) -> str | None:
        """Why an imported object may not run: it must be defined where `setting` allows
        too, so an allowed module's imports (`from subprocess import Popen`) stay out of reach."""
        module = getattr(target, "__module__", None)
        name = getattr(target, "__qualname__", None)
        if not isinstance(module, str) or not isinstance(name, str):
            return "names neither a function nor a class"
        if matches(f"{module}:{name}", getattr(self, setting)):
            return None
        return f"is {module}:{name}, which is not in the platform's {setting} allow-list"

    def mcp_command_problem(self, command: list[str]) -> str | None:
        """Why an MCP stdio server may not run `command` (its program is `command[0]`)."""
        if not command:
            return "is empty"
        if matches(command[0], self.mcp_commands):
            return None
        listed = ", ".join(map(repr, self.mcp_commands)) or "none"
        return (
            f"program {command[0]!r} is not in the platform's mcp_commands allow-list "
            f"(listed: {listed}); an MCP server over HTTP (url) needs no listing"
        )

    @staticmethod
    def mcp_env_problems(env: Mapping[str, str]) -> list[str]:
        """Variables a spec may not set for an MCP server: they change what code it loads."""
        return [
            f"{name!r} may not be set: it changes which code the program loads"
            for name in env
            if matches(name.upper(), _CODE_ENV)
        ]

    # -- secrets ---------------------------------------------------------------------

    def secret_env_problem(self, name: str) -> str | None:
        """Why the variable `name` may not be read as a secret (None: it may)."""
        prefix = self.secret_env_prefix
        if (prefix and name.startswith(prefix) and name != prefix) or name in self.secret_env_allow:
            return None
        allowed = [f"{prefix}*"] if prefix else []
        allowed += list(self.secret_env_allow)
        return (
            f"variable {name!r} may not be read as a secret: use one named "
            f"{' or '.join(map(repr, allowed)) or '(none allowed)'}"
        )

    def secret_file(self, ref: str) -> Path:
        """The secret file `ref` names: relative to `secrets_dir`, or absolute inside it;
        `..` and symlinks that leave the directory are refused.

        Raises:
            SecretRefused: naming the reference and the directory.
        """
        root = self.secrets_dir.resolve()
        where = f"it must be a file inside the secrets directory {str(root)!r}"
        if not ref or "\x00" in ref:
            raise SecretRefused(f"an empty path is refused: {where}")
        path = Path(ref)
        if ".." in path.parts:
            raise SecretRefused(f"{ref!r} contains '..': {where}")
        resolved = (path if path.is_absolute() else root / path).resolve()
        if resolved == root or not resolved.is_relative_to(root):
            raise SecretRefused(f"{ref!r} is outside the secrets directory: {where}")
        return resolved

    def secret_file_problem(self, ref: str) -> str | None:
        try:
            self.secret_file(ref)
        except SecretRefused as exc:
            return str(exc)
        return None

    def read_secret_file(self, ref: str) -> str:
        """The stripped content of the secret file `ref` ('' when empty).

        Raises:
            SecretRefused: outside the secrets directory; OSError: cannot be read.
        """
        return self.secret_file(ref).read_text().strip()

    def read_secret_env(self, name: str) -> str:
        """The stripped value of the secret variable `name` ('' when unset).

        Raises:
            SecretRefused: the name is neither prefixed nor listed.
        """
        problem = self.secret_env_problem(name)
        if problem:
            raise SecretRefused(problem)
        return os.environ.get(name, "").strip()


def policy_for(settings: Settings | None) -> CodePolicy:
    """The policy of `settings`, else of this process's settings (`DAFNCK_*`, its file)."""
    if settings is None:
        from cluster.settings import load_settings

        settings = load_settings()
    return CodePolicy.from_settings(settings)


__all__ = ["CodePolicy", "CodeSetting", "SecretRefused", "matches", "policy_for"]
