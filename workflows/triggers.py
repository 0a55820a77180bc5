"""Trigger rules: when a step runs, given how the steps it needs ended (Airflow's and
Argo's vocabulary).

Each upstream step (its `needs`, explicit or read by its expressions) ended as

- *succeeded*;
- *continued*: it failed under `on_error: continue`;
- *failed*: it was cancelled (a failure without `on_error: continue` fails the execution);
- *skipped*: its `when` was false, or its own trigger rule was not met.

| rule                    | runs when                                             | fires         |
|-------------------------|-------------------------------------------------------|---------------|
| `all_succeeded` default | every upstream succeeded or continued                 | when all end  |
| `one_succeeded`         | at least one succeeded                                | at the first  |
| `none_failed`           | none failed or continued (skipped ones are fine)      | when all end  |
| `all_done`              | whatever they did                                     | when all end  |
| `one_done`              | at least one succeeded, failed or continued           | at the first  |

The default lets a step after an `on_error: continue` failure run, as Argo's `continueOn`
does; `none_failed` tells the failure apart.

A rule that is not met skips the step, with the reason in its `step.skipped` event, and
a skip counts as *skipped* for the steps after it. A step without upstream steps runs
(`one_*` rules need at least one: validation refuses them on a step with no needs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from workflows.execution import StepStatus

TriggerRule = Literal["all_succeeded", "one_succeeded", "none_failed", "all_done", "one_done"]
#: Rules that fire at the first upstream step that meets them, without waiting for the rest.
EARLY = frozenset({"one_succeeded", "one_done"})

_FAILED = (StepStatus.FAILED, StepStatus.CANCELLED)


def outcome(status: StepStatus, tolerated: bool) -> str:
    """`succeeded`, `continued`, `failed`, `skipped`, or `pending` (not done yet)."""
    if status == StepStatus.SUCCEEDED:
        return "succeeded"
    if status == StepStatus.FAILED and tolerated:
        return "continued"
    if status in _FAILED:
        return "failed"
    return "skipped" if status == StepStatus.SKIPPED else "pending"


def decide(rule: TriggerRule, upstream: Mapping[str, str]) -> tuple[bool | None, str]:
    """Whether the step runs (True), is skipped (False) or waits (None), and why not.

    `upstream` maps each needed step to its `outcome`.
    """
    ended = {k: v for k, v in upstream.items() if v != "pending"}
    waiting = len(ended) < len(upstream)
    succeeded = [k for k, v in ended.items() if v == "succeeded"]
    failed = [k for k, v in ended.items() if v in ("failed", "continued")]
    if rule == "one_succeeded" and succeeded:
        return True, ""
    if rule == "one_done" and (succeeded or failed):
        return True, ""
    if waiting:
        return None, ""
    if not upstream or rule == "all_done":
        return True, ""
    if rule == "all_succeeded":
        others = [f"{k!r} {v}" for k, v in ended.items() if v not in ("succeeded", "continued")]
        return (True, "") if not others else (False, _why(rule, others))
    if rule == "none_failed":
        return (
            (True, "")
            if not failed
            else (False, _why(rule, [f"{k!r} {upstream[k]}" for k in failed]))
        )
    return False, _why(rule, [f"{k!r} {v}" for k, v in ended.items()])


def _why(rule: str, what: list[str]) -> str:
    return f"trigger_rule {rule} not met: {', '.join(sorted(what))}"


__all__ = ["EARLY", "TriggerRule", "decide", "outcome"]
