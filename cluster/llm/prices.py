"""What LLM models cost and how fast they may be called: `configs/llm.yaml` as `Prices`.

Read once per process (the path in `DAFNCK_LLM_CONFIG`, else the repository's
`configs/llm.yaml`), validated with every bad field named as `file:line`.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from pydantic import Field

from cluster.contracts import Contract
from cluster.errors import SpecInvalid
from cluster.yamlfile import parse_models

log = logging.getLogger(__name__)

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "configs" / "llm.yaml"
#: Unset limits mean "no limit"; the platform's own defaults when no file says otherwise.
_DEFAULT_RPM = 600
_DEFAULT_TPM = 1_000_000


class Limits(Contract):
    """Requests and tokens per minute of one token bucket; None leaves it unlimited."""

    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)


class ModelPrice(Contract):
    """USD per million input and output tokens, and limits that override the provider's."""

    input: float = Field(default=0.0, ge=0)
    output: float = Field(default=0.0, ge=0)
    limits: Limits | None = None


class ProviderPrices(Contract):
    limits: Limits | None = None
    models: dict[str, ModelPrice] = {}


class Prices(Contract):
    """Prices and rate limits of every provider's models (the whole of `configs/llm.yaml`)."""

    limits: Limits = Limits(requests_per_minute=_DEFAULT_RPM, tokens_per_minute=_DEFAULT_TPM)
    providers: dict[str, ProviderPrices] = {}

    def model(self, provider: str, model: str) -> ModelPrice | None:
        """The entry for `model`: its exact name, else the longest listed name it begins with."""
        models = self.providers.get(provider, ProviderPrices()).models
        if model in models:
            return models[model]
        prefixes = [name for name in models if model.startswith(name)]
        return models[max(prefixes, key=len)] if prefixes else None

    def cost_usd(self, provider: str, model: str, input_tokens: int, output_tokens: int) -> float:
        """What the tokens cost; 0 for a model not listed (its tokens are still counted)."""
        price = self.model(provider, model)
        if price is None:
            _unpriced(provider, model)
            return 0.0
        return (input_tokens * price.input + output_tokens * price.output) / 1_000_000

    def limits_for(self, provider: str, model: str) -> Limits:
        """The model's limits, else its provider's, else the top-level ones."""
        price = self.model(provider, model)
        if price is not None and price.limits is not None:
            return price.limits
        provider_limits = self.providers.get(provider, ProviderPrices()).limits
        return provider_limits if provider_limits is not None else self.limits


@functools.lru_cache(maxsize=64)
def _unpriced(provider: str, model: str) -> None:
    log.warning(
        "no price for %s model %r in the LLM config; counting its cost as 0", provider, model
    )


def load_prices(path: Path | str | None = None) -> Prices:
    """Read and validate a prices file (default: `DAFNCK_LLM_CONFIG` or `configs/llm.yaml`).

    Raises:
        SpecInvalid: the file is missing or invalid; each problem names `file:line: field`.
    """
    chosen = Path(path or os.environ.get("DAFNCK_LLM_CONFIG") or DEFAULT_PATH)
    parsed = parse_models(chosen, Prices)
    if len(parsed) != 1:
        raise SpecInvalid(str(chosen), [f"expected one YAML document, found {len(parsed)}"])
    return parsed[0][0]


@functools.lru_cache(maxsize=1)
def default_prices() -> Prices:
    """`load_prices()` once per process: every LLM task of a replica shares it."""
    return load_prices()


__all__ = [
    "DEFAULT_PATH",
    "Limits",
    "ModelPrice",
    "Prices",
    "ProviderPrices",
    "default_prices",
    "load_prices",
]
