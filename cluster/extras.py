"""Optional extras: the SDKs only some agents need, installed with `dafnck-machine[...]`.

`pip install dafnck-machine` runs Python agents, workflows, the API and the dashboard.
LLM agents need `[llm]` (openai, anthropic, mcp), A2A agents and the API's A2A endpoint
`[a2a]` (a2a-sdk); `[all]` is both. A spec that needs a missing one fails naming the
`pip install` to run.
"""

from __future__ import annotations

import importlib.util

#: The extra that provides each optional top-level module.
EXTRA_OF_MODULE = {
    "openai": "llm",
    "anthropic": "llm",
    "mcp": "llm",
    "httpx2": "llm",
    "a2a": "a2a",
}
#: The modules an extra must provide for its agents to load.
MODULES_OF_EXTRA = {
    "llm": ("openai", "anthropic", "mcp"),
    "a2a": ("a2a",),
}


def pip_install(extra: str) -> str:
    """The command that installs `extra`."""
    return f"pip install 'dafnck-machine[{extra}]'"


def missing(extra: str) -> list[str]:
    """The modules of `extra` this interpreter cannot import."""
    return [m for m in MODULES_OF_EXTRA[extra] if importlib.util.find_spec(m) is None]


def problem(extra: str, what: str) -> str | None:
    """Why `what` cannot run here for want of `extra` (None when it is installed)."""
    absent = missing(extra)
    if not absent:
        return None
    return (
        f"{what} needs the [{extra}] extra ({', '.join(absent)} not installed): "
        f"run `{pip_install(extra)}`"
    )


def hint(exc: ImportError) -> str:
    """The install command for the extra that provides the module `exc` failed to import."""
    top = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    return f" (it is in the [{extra}] extra: run `{pip_install(extra)}`)" if extra else ""
