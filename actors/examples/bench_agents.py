"""The skills `dafnck bench` deploys: as small as a skill can be, in a module that imports
nothing else, so a bench replica's start time and memory are the platform's own."""

from __future__ import annotations


async def noop(n: int = 0) -> int:
    """Nothing but the round trip."""
    return n


async def step(n: int = 0) -> int:
    """Add one, so a chain's output proves every step ran."""
    return n + 1


async def wait_io(ms: float = 20) -> float:
    """Wait on "I/O" (a sleep): throughput then measures orchestration, not this machine's CPUs."""
    import asyncio

    await asyncio.sleep(ms / 1000)
    return ms
