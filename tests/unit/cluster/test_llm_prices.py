"""configs/llm.yaml: prices by model (or its longest listed prefix), limits, file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import SpecInvalid
from cluster.llm.prices import DEFAULT_PATH, Limits, Prices, load_prices
from cluster.llm.usage import Usage


def test_the_shipped_config_prices_the_common_models() -> None:
    prices = load_prices(DEFAULT_PATH)
    assert prices.cost_usd("openai", "gpt-4o-mini-2024-07-18", 1_000_000, 0) == 0.15
    assert prices.cost_usd("openai", "gpt-4o", 0, 1_000_000) == 10.0
    assert prices.cost_usd("anthropic", "claude-3-5-haiku-20241022", 1_000_000, 1_000_000) == 4.8
    assert prices.cost_usd("openai", "unknown-model", 10, 10) == 0.0
    assert prices.limits_for("anthropic", "claude-opus-4-1").requests_per_minute == 50


def test_limits_come_from_the_model_then_its_provider_then_the_top(tmp_path: Path) -> None:
    path = tmp_path / "llm.yaml"
    path.write_text(
        "limits: {requests_per_minute: 7}\n"
        "providers:\n"
        "  openai:\n"
        "    limits: {tokens_per_minute: 100}\n"
        "    models:\n"
        "      fast: {input: 1, output: 2, limits: {requests_per_minute: 9}}\n"
        "      plain: {input: 1, output: 2}\n"
    )
    prices = load_prices(path)
    assert prices.limits_for("openai", "fast") == Limits(requests_per_minute=9)
    assert prices.limits_for("openai", "plain") == Limits(tokens_per_minute=100)
    assert prices.limits_for("vllm", "x") == Limits(requests_per_minute=7)


def test_a_bad_field_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "llm.yaml"
    path.write_text("providers:\n  openai:\n    models:\n      m: {input: -1, outptu: 2}\n")
    with pytest.raises(SpecInvalid) as info:
        load_prices(path)
    problems = "\n".join(info.value.problems)
    assert f"{path}:4: providers.openai.models.m.input" in problems
    assert "outptu" in problems


def test_usage_says_which_budget_it_reached() -> None:
    usage = Usage(input_tokens=900, output_tokens=200, cost_usd=0.25, calls=2)
    assert usage.over(1000, None) == "1100 of 1000 tokens"
    assert usage.over(None, 0.25) == "$0.250000 of $0.25"
    assert usage.over(5000, 1.0) is None
    assert Prices().limits.requests_per_minute == 600
