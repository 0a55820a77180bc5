"""Pool autoscaling: how many replicas a pool should have, from its in-flight load.

`PoolAutoscaler` is a plain core (a clock is passed in, so it is tested without Ray or
sleeping). Like Ray Serve's autoscaler it wants `ceil(load / target)` replicas within
`min..max`, and only acts when that want has lasted the upscale or downscale delay; a
pool with `idle_to_zero_s` stops its last replica after that long without load and
wakes (to one replica, at once) when a task asks for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from actors.models import AgentSpec, Autoscaling, Replicas

Clock = Callable[[], float]


@dataclass(frozen=True)
class Decision:
    """A change of a pool's size and why, for the event bus and the logs."""

    current: int
    desired: int
    in_flight: int
    waiting: int
    reason: str

    def as_event_data(self) -> dict[str, int | str]:
        return {
            "from": self.current,
            "to": self.desired,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "reason": self.reason,
        }


class PoolAutoscaler:
    """Decides one pool's desired replicas; keep one per pool, call `decide` each reconcile."""

    def __init__(self, policy: Autoscaling, replicas: Replicas, clock: Clock = time.monotonic):
        self.policy = policy
        self.replicas = replicas
        self._clock = clock
        self._last_busy = clock()
        #: Since when the load has wanted more (or fewer) replicas than the pool has.
        self._up_since: float | None = None
        self._down_since: float | None = None

    @classmethod
    def for_spec(cls, spec: AgentSpec, clock: Clock = time.monotonic) -> PoolAutoscaler | None:
        """An autoscaler for the spec's policy, or None when the spec has none."""
        if spec.autoscaling is None:
            return None
        return cls(spec.autoscaling, spec.replicas, clock)

    def wanted(self, in_flight: int, waiting: int = 0) -> int:
        """Replicas the load asks for now, before delays: within min..max, zero only when
        the pool may scale to zero and has been idle for `idle_to_zero_s`."""
        load = in_flight + waiting
        now = self._clock()
        if load > 0:
            self._last_busy = now
        want = math.ceil(load / self.policy.target_inflight_per_replica)
        floor = self.replicas.min
        idle_to_zero = self.policy.idle_to_zero_s
        if floor == 0 and (idle_to_zero is None or now - self._last_busy < idle_to_zero):
            floor = 1  # keep one replica until the pool has been idle long enough
        return max(floor, min(want, self.replicas.max))

    def decide(self, current: int, in_flight: int, waiting: int = 0) -> Decision | None:
        """The pool's new size when the load has wanted it long enough, else None.

        `in_flight` is what the replicas report running; `waiting` counts callers waiting
        for a replica of a pool scaled to zero (they wake it without delay). Going to zero
        needs no downscale delay: `idle_to_zero_s` of idleness already was one.
        """
        want = self.wanted(in_flight, waiting)
        now = self._clock()
        if want == current:
            self._up_since = self._down_since = None
            return None
        if want > current:
            self._down_since = None
            if self._up_since is None:
                self._up_since = now
            waking = current == 0 and waiting > 0
            if waking or now - self._up_since >= self.policy.upscale_delay_s:
                self._up_since = None
                reason = "wake" if waking else "load"
                return Decision(current, want, in_flight, waiting, reason)
            return None
        self._up_since = None
        if self._down_since is None:
            self._down_since = now
        if want == 0 or now - self._down_since >= self.policy.downscale_delay_s:
            self._down_since = None
            reason = "idle" if want == 0 else "load"
            return Decision(current, want, in_flight, waiting, reason)
        return None


def resource_bundle(spec: AgentSpec) -> dict[str, float]:
    """What one replica reserves, in Ray's resource names (for `request_resources`)."""
    res = spec.resources
    bundle = {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.custom}
    if res.memory_mb:
        bundle["memory"] = float(res.memory_mb * 1024 * 1024)
    return {k: v for k, v in bundle.items() if v}
