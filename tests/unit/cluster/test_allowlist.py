"""The operator's allow-lists: which `module:attr` globs, MCP programs and secret references
a spec may name (cluster/allowlist.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cluster.allowlist import CodePolicy, SecretRefused, matches
from cluster.settings import load_settings

POLICY = CodePolicy(
    agent_entrypoints=("actors.examples.*", "actors.a2a_remote:A2ARemoteAgent"),
    tool_skills=("actors.examples.llm_tools:outline",),
    mcp_commands=("uvx", "/opt/mcp/*"),
    secret_env_prefix="DAFNCK_SECRET_",
    secret_env_allow=("OPENAI_API_KEY",),
)


@pytest.mark.parametrize(
    ("ref", "allowed"),
    [
        ("actors.examples.review:FileAnalyser", True),
        ("actors.examples.bench_agents.deep:fn", True),
        ("actors.a2a_remote:A2ARemoteAgent", True),
        ("actors.a2a_remote:A2ARemoteConfig", False),
        ("actors.examples_evil:fn", False),  # the dot before `*` is part of the pattern
        ("actors.examples:skill", False),
        ("Actors.Examples.review:FileAnalyser", False),  # case-sensitive on every platform
        ("subprocess:Popen", False),
        ("os:system", False),
        ("tests.fixtures.agents:echo", False),
    ],
)
def test_entrypoints_match_the_operators_globs(ref: str, allowed: bool) -> None:
    assert (POLICY.entrypoint_problem(ref) is None) is allowed
    assert matches(ref, POLICY.agent_entrypoints) is allowed


def test_a_refusal_names_the_setting_and_what_is_listed() -> None:
    problem = POLICY.entrypoint_problem("subprocess:Popen")
    assert problem is not None
    assert "'subprocess:Popen'" in problem and "agent_entrypoints" in problem
    assert "'actors.examples.*'" in problem


def test_an_allowed_modules_import_is_not_allowed_code() -> None:
    """`from subprocess import Popen` in an allowed module must not make Popen allowed."""
    everything_in_examples = CodePolicy(agent_entrypoints=("actors.examples.*",))
    assert everything_in_examples.defined_problem(subprocess.Popen, "agent_entrypoints")
    assert everything_in_examples.defined_problem(print, "agent_entrypoints")
    assert everything_in_examples.defined_problem(subprocess, "agent_entrypoints")  # a module
    from actors.examples.llm_tools import word_count

    assert everything_in_examples.defined_problem(word_count, "agent_entrypoints") is None


@pytest.mark.parametrize(
    ("command", "allowed"),
    [
        (["uvx", "mcp-server-time"], True),
        (["/opt/mcp/server", "--stdio"], True),
        (["touch", "/tmp/marker"], False),
        (["/usr/bin/uvx"], False),  # a path is not the listed name
        (["sh", "-c", "uvx"], False),
        ([], False),
    ],
)
def test_mcp_programs_must_be_listed(command: list[str], allowed: bool) -> None:
    assert (POLICY.mcp_command_problem(command) is None) is allowed


def test_no_mcp_program_is_allowed_by_default() -> None:
    problem = CodePolicy().mcp_command_problem(["python", "-m", "srv"])
    assert problem is not None and "listed: none" in problem


@pytest.mark.parametrize("name", ["LD_PRELOAD", "ld_library_path", "PYTHONPATH", "PATH",
                                  "NODE_OPTIONS", "DYLD_INSERT_LIBRARIES", "BASH_ENV"])  # fmt: skip
def test_mcp_env_may_not_change_which_code_runs(name: str) -> None:
    assert CodePolicy.mcp_env_problems({name: "x", "TZ": "UTC"}) == [
        f"{name!r} may not be set: it changes which code the program loads"
    ]


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("DAFNCK_SECRET_OPENAI", True),
        ("OPENAI_API_KEY", True),
        ("DAFNCK_SECRET_", False),  # the prefix alone names nothing
        ("ANTHROPIC_API_KEY", False),  # not listed in this policy
        ("HOME", False),
        ("RAY_AUTH_TOKEN", False),
        ("DAFNCK_JWT_SECRET", False),
        ("dafnck_secret_x", False),
    ],
)
def test_secret_variables_need_the_prefix_or_a_listing(name: str, allowed: bool) -> None:
    assert (POLICY.secret_env_problem(name) is None) is allowed


def test_an_empty_prefix_allows_only_the_listed_names() -> None:
    policy = CodePolicy(secret_env_prefix="", secret_env_allow=("OPENAI_API_KEY",))
    assert policy.secret_env_problem("OPENAI_API_KEY") is None
    assert policy.secret_env_problem("HOME") is not None


def test_a_refused_variable_is_never_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAFNCK_SECRET_K", " sk-1 \n")
    monkeypatch.setenv("HOME_TOKEN", "stolen")
    assert POLICY.read_secret_env("DAFNCK_SECRET_K") == "sk-1"
    assert POLICY.read_secret_env("DAFNCK_SECRET_UNSET") == ""
    with pytest.raises(SecretRefused) as caught:
        POLICY.read_secret_env("HOME_TOKEN")
    assert "stolen" not in str(caught.value)


@pytest.fixture
def secrets(tmp_path: Path) -> CodePolicy:
    root = tmp_path / "secrets"
    (root / "team").mkdir(parents=True)
    (root / "openai.key").write_text("sk-inside\n")
    (root / "team" / "a.key").write_text("sk-team")
    (tmp_path / "outside.key").write_text("sk-outside")
    (root / "escape.key").symlink_to(tmp_path / "outside.key")
    (root / "alias.key").symlink_to(root / "openai.key")
    (root / "up").symlink_to(tmp_path)
    return CodePolicy(secrets_dir=root)


def test_secret_files_resolve_inside_the_secrets_directory(secrets: CodePolicy) -> None:
    root = secrets.secrets_dir
    assert secrets.read_secret_file("openai.key") == "sk-inside"
    assert secrets.read_secret_file("team/a.key") == "sk-team"
    assert secrets.read_secret_file(str(root / "openai.key")) == "sk-inside"  # absolute, inside
    assert secrets.read_secret_file("alias.key") == "sk-inside"  # a symlink that stays inside


@pytest.mark.parametrize(
    "ref",
    [
        "/etc/passwd",
        "../outside.key",
        "team/../../outside.key",
        "escape.key",  # a symlink leaving the directory
        "up/outside.key",  # a symlinked directory leaving it
        ".",
        "",
        "~/.ssh/id_rsa",  # no home expansion: it is a (missing) name inside the directory
    ],
)
def test_secret_files_outside_the_directory_are_refused(secrets: CodePolicy, ref: str) -> None:
    if ref.startswith("~"):
        with pytest.raises(FileNotFoundError):
            secrets.read_secret_file(ref)
        return
    with pytest.raises(SecretRefused, match="secrets directory"):
        secrets.read_secret_file(ref)
    assert secrets.secret_file_problem(ref) is not None


def test_settings_carry_the_lists_with_safe_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AGENT_ENTRYPOINTS", "TOOL_SKILLS", "MCP_COMMANDS", "SECRETS_DIR",
                 "SECRET_ENV_PREFIX", "SECRET_ENV_ALLOW"):  # fmt: skip
        monkeypatch.delenv(f"DAFNCK_{name}", raising=False)
    policy = CodePolicy.from_settings(load_settings(state_dir=str(tmp_path)))
    assert policy.agent_entrypoints == ("actors.examples.*", "actors.a2a_remote:A2ARemoteAgent")
    assert policy.tool_skills == ("actors.examples.*",)
    assert policy.mcp_commands == ()
    assert policy.secrets_dir == tmp_path / "secrets"
    assert policy.secret_env_prefix == "DAFNCK_SECRET_"
    assert policy.secret_env_allow == ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    monkeypatch.setenv("DAFNCK_AGENT_ENTRYPOINTS", '["mine.agents.*"]')
    monkeypatch.setenv("DAFNCK_MCP_COMMANDS", '["uvx"]')
    policy = CodePolicy.from_settings(load_settings(state_dir=str(tmp_path)))
    assert policy.agent_entrypoints == ("mine.agents.*",)
    assert policy.mcp_commands == ("uvx",)
