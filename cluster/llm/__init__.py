"""What LLM calls cost and how fast they may go: model prices, provider rate limits, usage.

`prices` reads configs/llm.yaml, `limits` paces calls per provider and model, and `usage`
keeps the token and cost ledger and the per-workflow budget. It stands on the ground floor
and on nothing above it; the LLM agents in actors/ use it.
"""
