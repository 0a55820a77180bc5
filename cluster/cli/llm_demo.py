"""The second demo: a python agent lists a repository's files, an LLM agent reads outlines
of some of them through a tool and names the files a newcomer should read first.

It needs a model: `OPENAI_API_KEY` (api.openai.com) or `OPENAI_BASE_URL` (any
OpenAI-compatible endpoint). Without either it says so before starting anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cluster.cli.progress import watch
from cluster.errors import ConfigError, TaskFailed

AGENTS = Path("configs/agents/llm/repo-guide.yaml")
LISTER = Path("configs/agents/review.yaml")
WORKFLOW = Path("configs/workflows/llm-demo.yaml")
NEEDS = (
    "the LLM demo needs a model: export OPENAI_API_KEY (for api.openai.com) or "
    "OPENAI_BASE_URL (any OpenAI-compatible endpoint, e.g. Ollama's "
    "http://localhost:11434/v1 with --model llama3.2) before `dafnck up`, then run "
    "`dafnck demo --llm` again"
)


def check_model_configured(environ: dict[str, str] | None = None) -> None:
    """Raises: ConfigError saying what to set when neither variable is set."""
    env = os.environ if environ is None else environ
    if not (env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL")):
        raise ConfigError(NEEDS)


def demo_specs(model: str | None, root: Path = Path(".")) -> list[Any]:
    """`repo-lister` from the review demo (confined to `root`) and the LLM guide, its model
    set if asked."""
    from actors.client import load_agent_specs
    from actors.examples.review import review_specs

    lister = review_specs([s for s in load_agent_specs(LISTER) if s.name == "repo-lister"], root)
    specs = []
    for spec in load_agent_specs(AGENTS):
        if model and spec.llm is not None:
            spec = spec.model_copy(update={"llm": spec.llm.model_copy(update={"model": model})})
        specs.append(spec)
    return lister + specs


def run_llm_demo(
    connect: Callable[[], Any], root: Path, model: str | None, console: Console
) -> dict[str, Any]:
    """Check a model is configured, apply the agents, run the workflow, show the picks.

    Raises:
        ConfigError: no model configured; SpecInvalid: the agent cannot start (its key
        is not where the agent runs); TaskFailed: the execution did not succeed.
    """
    check_model_configured()
    client = connect()
    for record in client.agents.apply(demo_specs(model or os.environ.get("OPENAI_MODEL"), root)):
        console.print(f"agent {record.agent_id}: {', '.join(record.spec.capabilities)}")
    (definition,) = client.workflows.define(WORKFLOW)
    execution = client.workflows.run(definition["name"], {"root": str(root.resolve())}, wait=False)
    done = watch(client.workflows, execution, console)
    if done.status.value != "succeeded":
        raise TaskFailed(
            f"execution {done.id} {done.status.value}: {done.error.message if done.error else ''}"
        )
    table = Table("file", "why", title="read these first")
    for pick in done.outputs["picks"]:
        table.add_row(str(pick["path"]), str(pick["why"]))
    console.print(table)
    usage = done.outputs["usage"]
    console.print(
        f"tokens: {usage.get('input_tokens')} in, {usage.get('output_tokens')} out; "
        f"cost ${usage.get('cost_usd', 0):.4f}"
    )
    return dict(done.outputs)
