"""How A2A messages map to task inputs and task outputs to A2A parts, both ways.

A text part is a prompt (`{"prompt": text}`), a data part holding an object is the input
itself; an output string is a text part, anything else a data part. Protobuf's `Value`
keeps every number as a double, so whole numbers are read back as integers.
"""

from __future__ import annotations

import json
from typing import Any

from a2a.helpers import get_data_parts, get_text_parts, new_data_part, new_text_part
from a2a.types.a2a_pb2 import Message, Part

#: Message metadata naming the skill (capability) wanted, for agents that have several.
SKILL_KEY = "skill"


def narrowed(value: Any) -> Any:
    """`value` with floats that hold whole numbers turned back into ints, recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: narrowed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [narrowed(v) for v in value]
    return value


def message_input(message: Message) -> dict[str, Any]:
    """The task input a message carries: its data objects merged, its text as `prompt`."""
    data: dict[str, Any] = {}
    for value in get_data_parts(message.parts):
        if isinstance(value, dict):
            data.update(narrowed(value))
        else:
            data["data"] = narrowed(value)
    texts = get_text_parts(message.parts)
    if texts:
        data["prompt"] = "\n".join(texts)
    return data


def input_parts(data: dict[str, Any]) -> list[Part]:
    """The parts of a message carrying `data`: a text part for a lone prompt, else data."""
    if set(data) == {"prompt"} and isinstance(data["prompt"], str):
        return [new_text_part(data["prompt"])]
    return [new_data_part(_jsonable(data))]


def output_parts(output: Any) -> list[Part]:
    """The parts of an artifact carrying a task's output."""
    if isinstance(output, str):
        return [new_text_part(output)]
    return [new_data_part(_jsonable(output))]


def parts_output(parts: list[Part]) -> Any:
    """A task output from parts: one part's value, or the list of them all."""
    values: list[Any] = [p.text for p in parts if p.HasField("text")]
    values += [narrowed(v) for v in get_data_parts(parts)]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy (what protobuf's `Value` can hold); unknown objects become strings."""
    return json.loads(json.dumps(value, default=str))
