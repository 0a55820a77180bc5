"""Agent spec files: every problem reported as `file:line: field`, directories in name order,
duplicates named with both places."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.client import load_agent_specs
from cluster.errors import SpecInvalid

GOOD = """\
name: {name}
version: {version}
capabilities: [test.echo]
entrypoint: tests.fixtures.agents:echo
"""

BAD = """\
# two broken agents in one file
name: Bad_Name
capabilities: [test.echo]
entrypoint: tests.fixtures.agents:echo
replicas:
  min: 3
  max: 1
---
name: second
capabilities: []
entrypoint: no-colon-here
max_concurrency: 0
colour: blue
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def problems_of(path: Path) -> tuple[str, ...]:
    with pytest.raises(SpecInvalid) as caught:
        load_agent_specs(path)
    return caught.value.problems


def test_every_problem_of_every_spec_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    file = write(tmp_path / "agents.yaml", BAD)
    problems = problems_of(file)
    where = {p.split(": ", 2)[0] + ": " + p.split(": ", 2)[1] for p in problems}
    assert where == {
        f"{file}:2: name",
        f"{file}:6: replicas",
        f"{file}:10: capabilities",
        f"{file}:11: entrypoint",
        f"{file}:12: max_concurrency",
        f"{file}:13: colour",
    }
    assert len(problems) == 6
    assert any("min (3) must not exceed max (1)" in p for p in problems)


def test_missing_required_field_points_at_the_document(tmp_path: Path) -> None:
    file = write(tmp_path / "agents.yaml", "name: ok\n---\n\nname: nocaps\nentrypoint: m:f\n")
    problems = problems_of(file)
    assert f"{file}:1: capabilities: Field required" in problems
    assert f"{file}:1: entrypoint: Field required" in problems
    assert f"{file}:4: capabilities: Field required" in problems


def test_directory_is_read_in_name_order(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", GOOD.format(name="bravo", version="1.0.0"))
    write(tmp_path / "a.yml", GOOD.format(name="alpha", version="1.0.0"))
    write(
        tmp_path / "c.yaml",
        GOOD.format(name="charlie", version="1.0.0")
        + "---\n"
        + GOOD.format(name="charlie", version="2.0.0"),
    )
    write(tmp_path / "README.md", "not a spec: [")
    specs = load_agent_specs(tmp_path)
    assert [s.agent_id for s in specs] == [
        "alpha@1.0.0",
        "bravo@1.0.0",
        "charlie@1.0.0",
        "charlie@2.0.0",
    ]


def test_problems_in_several_files_of_a_directory_are_reported_together(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "name: a\ncapabilities: [Not Valid]\nentrypoint: m:f\n")
    b = write(tmp_path / "b.yaml", "name: b\ncapabilities: [x.y]\nentrypoint: m:f\ntimeout_s: -1\n")
    problems = problems_of(tmp_path)
    assert [p.split(": ")[0] for p in problems] == [f"{a}:2", f"{b}:4"]


def test_duplicate_agent_ids_are_reported_with_both_places(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", GOOD.format(name="echo", version="1.0.0"))
    b = write(
        tmp_path / "b.yaml",
        GOOD.format(name="other", version="1.0.0")
        + "---\n"
        + GOOD.format(name="echo", version="1.0.0"),
    )
    assert problems_of(tmp_path) == (f"{b}:6: 'echo@1.0.0' is also defined at {a}:1",)


def test_same_name_in_two_versions_is_not_a_duplicate(tmp_path: Path) -> None:
    file = write(
        tmp_path / "a.yaml",
        GOOD.format(name="echo", version="1.0.0")
        + "---\n"
        + GOOD.format(name="echo", version="2.0.0"),
    )
    assert [s.version for s in load_agent_specs(file)] == ["1.0.0", "2.0.0"]


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", GOOD.format(name="fine", version="1.0.0"))
    bad = write(tmp_path / "b.yaml", "name: x\ncapabilities: [a.b\nentrypoint: m:f\n")
    (problem,) = problems_of(tmp_path)
    assert problem.startswith(f"{bad}:")
    assert "not valid YAML" in problem


def test_missing_path_is_reported(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nope.yaml") == ("no such file or directory",)


def test_the_shipped_review_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[3]
    specs = load_agent_specs(root / "configs" / "agents" / "review.yaml")
    assert [s.name for s in specs] == ["repo-lister", "file-analyser", "report-writer"]
    assert [c for s in specs for c in s.capabilities] == [
        "repo.list",
        "code.analyse",
        "report.merge",
    ]
