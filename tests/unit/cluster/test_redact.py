"""Secrets a process resolved never reach a log line, its traceback, or an error message."""

from __future__ import annotations

import io
import json
import logging

from cluster import logs
from cluster.redact import MASK, redact, redact_value, register_secret

SECRET = "kx7-Qm2vZ9pL4tR8wY1u"  # shaped like no known kind of key: only the registry knows it


def test_a_registered_secret_is_masked_wherever_it_appears() -> None:
    register_secret(SECRET)
    assert redact(f"server said: bad key {SECRET}!") == f"server said: bad key {MASK}!"
    assert redact_value({"body": [f"x{SECRET}x"], "n": 1}) == {"body": [f"x{MASK}x"], "n": 1}
    assert redact("Authorization: Bearer abcdefghijklmnop").count("abcdefghijklmnop") == 0
    register_secret("short")  # too short to replace everywhere safely
    assert redact("a short note") == "a short note"


def test_log_records_and_their_tracebacks_are_redacted() -> None:
    register_secret(SECRET)
    logs.install()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.redact")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError(json.dumps({"error": f"invalid key {SECRET}"}))
        except ValueError:
            logger.exception("provider answered %s", f"401 for key {SECRET}")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "provider answered 401 for key" in text and "ValueError" in text
    assert SECRET not in text
    assert text.count(MASK) >= 2


async def test_a_task_failure_never_carries_a_registered_secret() -> None:
    from actors.agent import AgentRuntime
    from actors.models import AgentSpec, Task

    register_secret(SECRET)
    spec = AgentSpec(
        name="agent", capabilities=["test.fail"], entrypoint="tests.fixtures.agents:fail"
    )
    runtime = AgentRuntime.build(spec, "acme/agent@1.0.0/1")
    result = await runtime.run(Task(capability="test.fail", input={"message": f"key {SECRET}"}))
    assert result.error is not None and result.error.message == f"key {MASK}"
