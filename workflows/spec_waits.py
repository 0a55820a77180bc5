"""The contracts of steps that wait instead of dispatching, a durable timer (`sleep`) and
an external signal (`wait`), which `workflows.waits` runs; and of a step that loops
(`repeat`), which `workflows.loops` runs."""

from __future__ import annotations

import datetime
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cluster.contracts import Contract

#: A signal's name, as it appears in `POST /v1/executions/{id}/signals/{name}`.
SIGNAL = r"^[a-z][a-z0-9_.-]{0,62}$"


class Sleep(Contract):
    """Wait `seconds` from when the step first started, or until the time `until`.

    The wake-up time is stored with the step, so a supervisor restart (or `dafnck down`
    and `up`) resumes the same timer. `until` is ISO 8601 with a time zone, or a
    `${{ }}` template giving one.
    """

    seconds: float | None = Field(default=None, ge=0, le=366 * 86400)
    until: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Sleep:
        if (self.seconds is None) == (self.until is None):
            raise ValueError("sleep takes either seconds or until")
        if self.until is not None and "${{" not in self.until:
            parse_time(self.until)
        return self


def parse_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time with a zone. Raises: ValueError."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time like 2026-01-31T09:00:00Z") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; add one, e.g. Z or +02:00")
    return moment.timestamp()


class Wait(Contract):
    """Wait for an external signal: its payload becomes the step's output.

    With several names (a deferred choice) the first signal to arrive wins and the output
    is `{"signal": NAME, "payload": ...}`. A signal sent before the step waits is kept
    until a step takes it. `timeout_s` counts from when the step first started; then
    `on_timeout` fails the step or skips it.
    """

    signal: str | list[str]
    timeout_s: float | None = Field(default=None, gt=0)
    on_timeout: Literal["fail", "skip"] = "fail"

    @field_validator("signal")
    @classmethod
    def _names(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names:
            raise ValueError("name at least one signal")
        bad = [n for n in names if not re.match(SIGNAL, n)]
        if bad:
            raise ValueError(f"signal names {bad!r} must be lowercase words like 'approved'")
        return value

    @property
    def names(self) -> list[str]:
        return [self.signal] if isinstance(self.signal, str) else list(self.signal)


class Repeat(Contract):
    """Run the step again until `until` holds, at most `max_iterations` times (a
    structured loop). `until` is a bare CEL condition that also sees `output` (this
    iteration's output) and `iteration` (0, 1, ...); `with` sees `iteration` and `output`
    (the previous iteration's, null at first). The step's output is the last iteration's;
    when `until` never holds the step fails with RepeatExhausted."""

    until: str = Field(min_length=1)
    max_iterations: int = Field(ge=1, le=1000)


#: Names a `repeat` step's expressions see besides `inputs` and `steps`.
REPEAT_NAMES = frozenset({"iteration", "output"})

__all__ = ["REPEAT_NAMES", "SIGNAL", "Repeat", "Sleep", "Wait", "parse_time"]
