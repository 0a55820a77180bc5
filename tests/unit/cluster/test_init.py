"""The examples ship inside the package, `configs/` holds identical copies, and
`dafnck init` writes editable ones without overwriting a user's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.client import load_agent_specs
from cluster.cli.init import EXAMPLES_DIR, FILES, example, write_examples
from cluster.errors import ConfigError
from workflows.loader import load_workflow_specs

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("relative", FILES)
def test_the_configs_copy_is_the_packaged_file(relative: str) -> None:
    packaged = (EXAMPLES_DIR / relative).read_bytes()
    assert (REPO / "configs" / relative).read_bytes() == packaged, (
        f"configs/{relative} and cluster/examples/{relative} differ: edit one, copy it over"
    )


def test_every_packaged_example_file_is_there_and_nothing_else() -> None:
    shipped = {str(p.relative_to(EXAMPLES_DIR)) for p in EXAMPLES_DIR.rglob("*.yaml")}
    assert shipped == set(FILES)


def test_the_packaged_specs_and_workflows_parse() -> None:
    assert {s.name for s in load_agent_specs(EXAMPLES_DIR / "agents/review.yaml")} == {
        "repo-lister", "file-analyser", "report-writer",
    }  # fmt: skip
    for name in ("review", "approval-demo", "llm-demo"):
        assert load_workflow_specs(EXAMPLES_DIR / "workflows" / f"{name}.yaml")


def test_init_writes_copies_and_then_refuses_to_overwrite(tmp_path: Path) -> None:
    written = write_examples(tmp_path)
    assert sorted(written) == sorted(tmp_path / "configs" / r for r in FILES)
    mine = tmp_path / "configs" / "agents" / "review.yaml"
    mine.write_text("# my edit\n")
    with pytest.raises(ConfigError, match="--force"):
        write_examples(tmp_path)
    assert mine.read_text() == "# my edit\n"
    write_examples(tmp_path, force=True)
    assert mine.read_bytes() == (EXAMPLES_DIR / "agents/review.yaml").read_bytes()


def test_the_demo_reads_the_projects_copy_when_there_is_one(tmp_path: Path) -> None:
    assert example("agents/review.yaml", tmp_path) == EXAMPLES_DIR / "agents/review.yaml"
    write_examples(tmp_path)
    assert example("agents/review.yaml", tmp_path) == tmp_path / "configs/agents/review.yaml"
    with pytest.raises(ConfigError):
        example("../../etc/passwd", tmp_path)
