"""The review demo's agents stay in their workspace: the path checks, the read limits, the
report's fixed place, and the `workspace_root` setting bounding a spec's root."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from actors.examples.review import FileAnalyser, RepoLister, ReportWriter, review_specs
from actors.examples.workspace import MAX_READ_BYTES, FileRefused, Workspace, write_report
from actors.models import AgentSpec
from cluster.errors import InputInvalid


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """`ws/` with code, a link escaping it, and `outside/` beside it."""
    ws = tmp_path / "ws"
    (ws / "pkg").mkdir(parents=True)
    (ws / "pkg" / "a.py").write_text("def f(x):\n    if x:\n        return 1\n    return 2\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.py").write_text("KEY = 1\n")
    (ws / "escape").symlink_to(tmp_path / "outside")
    (ws / "pkg" / "linked.py").symlink_to(tmp_path / "outside" / "secret.py")
    return ws


def refused(call: object, *args: object) -> str:
    with pytest.raises(InputInvalid) as caught:
        call(*args)  # type: ignore[operator]
    return str(caught.value)


def test_inside_takes_relative_and_absolute_paths_in_the_workspace(tree: Path) -> None:
    ws = Workspace(tree)
    assert ws.inside("pkg/a.py", "p") == tree / "pkg" / "a.py"
    assert ws.inside(str(tree / "pkg" / "a.py"), "p") == tree / "pkg" / "a.py"
    assert ws.inside(".", "p") == tree


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/etc/passwd", "outside the workspace"),
        ("/dev/zero", "outside the workspace"),
        ("/", "outside the workspace"),
        ("../outside/secret.py", "'..'"),
        ("pkg/../../outside/secret.py", "'..'"),
        ("escape/secret.py", "symbolic link"),
        ("pkg/linked.py", "symbolic link"),
        ("pkg/a.py\x00", "NUL"),
    ],
)
def test_inside_refuses_escapes(tree: Path, path: str, problem: str) -> None:
    message = refused(Workspace(tree).inside, path, "paths[0]")
    assert "paths[0]" in message and problem in message


def test_a_sibling_with_the_workspace_as_prefix_is_outside(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws2").mkdir()
    assert "outside" in refused(Workspace(tmp_path / "ws").inside, str(tmp_path / "ws2"), "root")


def test_reads_take_regular_files_within_the_limit_only(tree: Path) -> None:
    ws = Workspace(tree, max_bytes=64)
    assert ws.read_text(tree / "pkg" / "a.py").startswith("def f")
    big = tree / "big.py"
    with big.open("wb") as f:
        f.truncate(10 * 1024**3)  # sparse: 10 GiB on paper, nothing on disk
    with pytest.raises(FileRefused, match="read limit"):
        ws.read_text(big)
    os.mkfifo(tree / "pipe.py")  # opening it for reading would block without O_NONBLOCK
    with pytest.raises(FileRefused, match="not a regular file"):
        ws.read_text(tree / "pipe.py")


def test_a_link_planted_after_the_check_is_not_followed(tree: Path) -> None:
    ws = Workspace(tree)
    checked = ws.inside("pkg/b.py", "p")
    checked.symlink_to("/dev/zero")  # the race: the check passed, then the link appeared
    with pytest.raises(OSError):
        ws.read_text(checked)


def test_dev_zero_is_refused_without_reading_it(tmp_path: Path) -> None:
    (tmp_path / "dev").symlink_to("/dev")  # even reached through the workspace's own parent
    ws = Workspace(Path("/dev"), max_bytes=MAX_READ_BYTES)
    tracemalloc.start()
    with pytest.raises(FileRefused, match="not a regular file"):
        ws.read_text(Path("/dev/zero"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < MAX_READ_BYTES


def test_the_report_is_written_only_at_its_name_and_never_through_a_link(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert write_report(out, "review.md", "# r\n").read_text() == "# r\n"
    target = tmp_path / "victim.pth"
    (out / "review.md").unlink()
    (out / "review.md").symlink_to(target)
    assert "symbolic link" in refused(write_report, out, "review.md", "import os\n")
    assert not target.exists()
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "linked").symlink_to(real)
    assert "symbolic link" in refused(write_report, tmp_path / "linked", "review.md", "x")
    assert not (real / "review.md").exists()


def test_the_agents_refuse_task_paths_outside_their_workspace(tree: Path) -> None:
    lister = RepoLister(str(tree))
    assert lister.list_files(".")["files"] == [str(tree / "pkg" / "a.py")]  # no link listed
    assert "outside" in refused(lister.list_files, "/")
    assert "symbolic link" in refused(lister.list_files, "escape")
    analyser = FileAnalyser(str(tree))
    assert analyser.analyse(["pkg/a.py"])["files"].num_rows == 1
    assert "paths[1]" in refused(analyser.analyse, ["pkg/a.py", "/etc/passwd"])
    assert analyser.files_seen == 1  # the refused task measured nothing


def test_report_merge_takes_no_output_path_and_writes_its_spec_name(tree: Path) -> None:
    writer = ReportWriter(str(tree))
    done = writer.merge(str(tree), [], [], top=3)
    assert done["report"] == str(tree / "reports" / "review.md")
    assert (tree / "reports" / "review.md").read_text().startswith("# Code review of")
    with pytest.raises(TypeError):
        writer.merge(str(tree), [], [], output="/tmp/x.pth")  # type: ignore[call-arg]


@pytest.mark.parametrize("name", ["x.pth", "../review.md", "a/b.md", ".md", "review.md\n"])
def test_a_report_name_that_is_not_a_plain_markdown_name_is_refused(tree: Path, name: str) -> None:
    with pytest.raises(ValueError, match="report_name"):
        ReportWriter(str(tree), report_name=name)


def test_the_setting_bounds_the_specs_root_and_is_the_default(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAFNCK_WORKSPACE_ROOT", str(tree))
    assert RepoLister().workspace.root == tree  # no root in the spec: the setting
    assert RepoLister(str(tree / "pkg")).workspace.root == tree / "pkg"
    with pytest.raises(ValueError, match="outside the workspace_root"):
        RepoLister(str(tmp_path / "outside"))
    with pytest.raises(ValueError, match="outside the workspace_root"):
        ReportWriter(str(tree), output_dir=str(tmp_path / "elsewhere"))
    assert not (tmp_path / "elsewhere").exists()  # refused before it was created
    monkeypatch.delenv("DAFNCK_WORKSPACE_ROOT")
    with pytest.raises(ValueError, match="no workspace"):
        FileAnalyser()
    with pytest.raises(ValueError, match="absolute"):
        RepoLister("relative/dir")


def test_review_specs_confine_each_demo_agent(tree: Path) -> None:
    specs = [
        AgentSpec(name=n, capabilities=[c], entrypoint=f"actors.examples.review:{e}")
        for n, c, e in [
            ("repo-lister", "repo.list", "RepoLister"),
            ("report-writer", "report.merge", "ReportWriter"),
        ]
    ]
    lister, writer = review_specs(specs, tree / "pkg" / "..", tree / "out" / "r.md")
    assert lister.config == {"root": str(tree)}
    assert writer.config == {
        "root": str(tree),
        "output_dir": str(tree / "out"),
        "report_name": "r.md",
    }


def test_the_llm_demos_outline_tool_reads_no_link_and_stays_in_the_setting(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actors.examples.llm_tools import outline

    assert outline(str(tree / "pkg" / "a.py"))["items"] == ["def f"]
    assert "symbolic link" in refused(outline, str(tree / "pkg" / "linked.py"))
    assert "'..'" in refused(outline, str(tree / "pkg" / ".." / "pkg" / "a.py"))
    monkeypatch.setenv("DAFNCK_WORKSPACE_ROOT", str(tree))
    assert "outside" in refused(outline, str(tmp_path / "outside" / "secret.py"))
