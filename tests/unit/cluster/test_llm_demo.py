"""The LLM demo says what it needs before starting anything, and takes the model asked for."""

from __future__ import annotations

import pytest

from cluster.cli.llm_demo import check_model_configured, demo_specs
from cluster.errors import ConfigError


def test_without_a_key_or_an_endpoint_the_demo_says_what_to_set() -> None:
    with pytest.raises(ConfigError) as caught:
        check_model_configured({"HOME": "/root"})
    assert "OPENAI_API_KEY" in str(caught.value) and "OPENAI_BASE_URL" in str(caught.value)
    check_model_configured({"OPENAI_BASE_URL": "http://127.0.0.1:11434/v1"})
    check_model_configured({"OPENAI_API_KEY": "sk-x"})


def test_the_demo_agents_are_the_lister_and_the_guide_on_the_model_asked_for() -> None:
    specs = {s.name: s for s in demo_specs("llama3.2")}
    assert set(specs) == {"repo-lister", "repo-guide"}
    guide = specs["repo-guide"].llm
    assert guide is not None and guide.model == "llama3.2" and guide.output_schema is not None
    assert demo_specs(None)[1].llm.model == "gpt-4o-mini"  # type: ignore[union-attr]
