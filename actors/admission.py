"""Admission of an agent spec: every field naming code or a secret is checked against the
platform's allow-lists (`cluster.allowlist`) before anything is imported or started.

The supervisor checks when a spec is applied (so a refused spec starts no replica), and each
replica checks again before it imports the entrypoint or a tool. A python agent's `config`
names secrets by convention: a top-level key ending in `_env` names a secret variable (as
`actors.a2a_remote`'s `auth_env`), one ending in `_file` a secret file.
"""

from __future__ import annotations

from actors.models import AgentSpec, LLMConfig, ToolRef
from cluster.allowlist import CodePolicy
from cluster.errors import SpecInvalid


def code_problems(spec: AgentSpec, policy: CodePolicy) -> list[str]:
    """Every field of `spec` that names code or a secret the platform does not allow,
    as `field: problem`."""
    problems: list[str] = []
    if spec.kind == "python" and spec.entrypoint is not None:
        problem = policy.entrypoint_problem(spec.entrypoint)
        if problem:
            problems.append(f"entrypoint: {problem}")
        problems += _config_secret_problems(spec, policy)
    if spec.llm is not None:
        problems += llm_problems(spec.llm, policy)
    return problems


def check_code(spec: AgentSpec, policy: CodePolicy) -> None:
    """Raises: SpecInvalid listing every field `code_problems` finds."""
    problems = code_problems(spec, policy)
    if problems:
        raise SpecInvalid(f"agent {spec.agent_id!r}", problems)


def llm_problems(cfg: LLMConfig, policy: CodePolicy) -> list[str]:
    """The llm section's key reference and tools, as `llm.<field>: problem`."""
    problems: list[str] = []
    if cfg.api_key_env:
        problem = policy.secret_env_problem(cfg.api_key_env)
        if problem:
            problems.append(f"llm.api_key_env: {problem}")
    if cfg.api_key_file:
        problem = policy.secret_file_problem(cfg.api_key_file)
        if problem:
            problems.append(f"llm.api_key_file: {problem}")
    return problems + tool_problems(cfg.tools, policy)


def tool_problems(tools: list[ToolRef], policy: CodePolicy) -> list[str]:
    """Skill tools and MCP stdio servers the platform does not allow, as
    `llm.tools[i].skill: problem` (or `.mcp.command`, `.mcp.env`)."""
    problems: list[str] = []
    for i, tool in enumerate(tools):
        where = f"llm.tools[{i}]"
        if tool.skill:
            problem = policy.tool_skill_problem(tool.skill)
            if problem:
                problems.append(f"{where}.skill: {problem}")
        if tool.mcp is not None and tool.mcp.command is not None:
            problem = policy.mcp_command_problem(tool.mcp.command)
            if problem:
                problems.append(f"{where}.mcp.command: {problem}")
            problems += [f"{where}.mcp.env: {p}" for p in policy.mcp_env_problems(tool.mcp.env)]
    return problems


def _config_secret_problems(spec: AgentSpec, policy: CodePolicy) -> list[str]:
    problems = []
    for key, value in spec.config.items():
        if key.endswith("_env") and value is not None:
            problem = (
                policy.secret_env_problem(value)
                if isinstance(value, str)
                else "names a secret variable: give its name as a string"
            )
        elif key.endswith("_file") and value is not None:
            problem = (
                policy.secret_file_problem(value)
                if isinstance(value, str)
                else "names a secret file: give its path as a string"
            )
        else:
            continue
        if problem:
            problems.append(f"config.{key}: {problem}")
    return problems


__all__ = ["check_code", "code_problems", "llm_problems", "tool_problems"]
