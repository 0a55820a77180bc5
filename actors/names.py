"""Names of the named Ray actors, in one place: every module that looks an actor up by
name imports them from here (so finding the supervisor ties no module to `actors.system`)."""

from __future__ import annotations


def supervisor_name(tenant: str) -> str:
    """The tenant's supervisor actor, in the `dafnck` namespace."""
    return f"supervisor-{tenant}"


__all__ = ["supervisor_name"]
