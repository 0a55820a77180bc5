"""The `llm` agent kind: a conversation with a model, its tool-calling loop, structured
output and token streaming. (Being built for issue #4; `load_llm_agent` is the hook.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.errors import SpecInvalid

if TYPE_CHECKING:
    from actors.models import AgentSpec
    from actors.skills import Implementation


def load_llm_agent(spec: AgentSpec) -> Implementation:
    """Build the replica's implementation of an `llm` agent.

    Raises:
        SpecInvalid: the llm kind is not available yet.
    """
    raise SpecInvalid(f"agent {spec.agent_id!r}", ["kind: the llm kind is being built"])
