"""A remote A2A agent as our capability: skills from the config (instance skills), the
message/part mapping, and real calls to an a2a-sdk server on a free port (no Ray)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from a2a.helpers import new_data_part, new_message, new_text_part

from actors.a2a_wire import input_parts, message_input, output_parts, parts_output
from actors.kinds import build_skills
from actors.models import AgentSpec
from cluster.errors import SpecInvalid, TaskFailed
from tests.fixtures.a2a_server import Reverser, a2a_server

REMOTE = "actors.a2a_remote:A2ARemoteAgent"


def spec(*capabilities: str, **config: Any) -> AgentSpec:
    return AgentSpec(
        name="remote", capabilities=list(capabilities), entrypoint=REMOTE, config=config
    )


def test_text_is_a_prompt_data_is_the_input_and_whole_numbers_stay_ints() -> None:
    message = new_message([new_text_part("hello"), new_data_part({"n": 3, "x": 0.5})])
    assert message_input(message) == {"prompt": "hello", "n": 3, "x": 0.5}
    assert isinstance(message_input(message)["n"], int)
    assert [p.HasField("text") for p in input_parts({"prompt": "hi"})] == [True]
    assert [p.HasField("data") for p in input_parts({"prompt": "hi", "k": 1})] == [True]
    assert parts_output(output_parts("done")) == "done"
    assert parts_output(output_parts({"rows": [1, 2], "ok": True})) == {"rows": [1, 2], "ok": True}
    assert parts_output([]) is None


def test_one_capability_needs_no_mapping_several_map_to_remote_skills() -> None:
    single = build_skills(spec("text.reverse", url="http://127.0.0.1:1"))
    assert list(single) == ["text.reverse"]
    assert single["text.reverse"].info.input_schema["additionalProperties"] is True
    mapped = build_skills(
        spec("text.a", "text.b", url="http://127.0.0.1:1", skills={"text.a": "a", "text.b": "b"})
    )
    assert set(mapped) == {"text.a", "text.b"}
    with pytest.raises(SpecInvalid, match="must name its capability"):
        build_skills(spec("text.a", "text.b", url="http://127.0.0.1:1"))
    with pytest.raises(SpecInvalid, match=r"no skill serves 'text\.b'"):
        build_skills(spec("text.a", "text.b", url="http://127.0.0.1:1", skills={"text.a": "a"}))


def test_bad_config_and_missing_credential_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAFNCK_TEST_A2A_TOKEN", raising=False)
    with pytest.raises(SpecInvalid, match="DAFNCK_TEST_A2A_TOKEN"):
        build_skills(spec("text.x", url="http://h", auth_env="DAFNCK_TEST_A2A_TOKEN"))
    with pytest.raises(SpecInvalid, match="url"):
        build_skills(spec("text.x", url="ftp://h"))


def test_tasks_reach_a_real_a2a_server_with_the_credential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAFNCK_TEST_A2A_TOKEN", "s3cret")
    remote = Reverser()
    with a2a_server(remote, token="s3cret") as url:
        config = {"url": url, "auth_env": "DAFNCK_TEST_A2A_TOKEN", "skills": {"text.rev": "rev"}}
        forward = build_skills(spec("text.rev", **config))["text.rev"]

        async def calls() -> tuple[Any, Any]:
            return await forward({"prompt": "abc"}), await forward({"rows": [1, 2]})

        text, data = asyncio.run(calls())
        assert text == "cba"
        assert data["got"]["parts"] == [{"data": {"rows": [1.0, 2.0]}}]
        assert [m["metadata"] for m in remote.seen] == [{"skill": "rev"}] * 2
        with pytest.raises(TaskFailed, match="task failed: asked to fail"):
            asyncio.run(forward({"prompt": "fail"}))
        monkeypatch.setenv("DAFNCK_TEST_A2A_TOKEN", "wrong")
        refused = build_skills(spec("text.rev", **config))["text.rev"]
        with pytest.raises(TaskFailed, match="401") as caught:
            asyncio.run(refused({"prompt": "abc"}))
        assert caught.value.retryable and caught.value.error_type == "A2AUnavailable"
