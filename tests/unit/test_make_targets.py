"""`make unit`, `make integration` and `make chaos` together run every test directory, and
each runs something: a directory added later is not silently left out of the fast loop's
companions, and a target never passes by collecting nothing."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("unit", "integration", "chaos")


def target_paths(makefile: str, target: str) -> list[str]:
    """The test paths the target's pytest command names."""
    match = re.search(rf"^{target}:.*\n\t\$\(BIN\)/pytest (.+)$", makefile, re.MULTILINE)
    assert match, f"no pytest command under the make target {target!r}"
    return [word for word in match.group(1).split() if word.startswith("tests")]


def test_the_make_targets_cover_every_test_directory_once() -> None:
    makefile = (REPO / "Makefile").read_text()
    named = [path for target in TARGETS for path in target_paths(makefile, target)]
    with_tests = sorted(
        str(d.relative_to(REPO))
        for d in (REPO / "tests").iterdir()
        if d.is_dir() and any(d.rglob("test_*.py"))
    )
    assert sorted(named) == with_tests, "a test directory is in no make target, or in two"


def test_each_target_names_directories_that_hold_tests() -> None:
    makefile = (REPO / "Makefile").read_text()
    for target in TARGETS:
        for path in target_paths(makefile, target):
            assert any((REPO / path).rglob("test_*.py")), f"make {target}: {path} has no tests"


def test_make_test_runs_the_whole_tests_directory() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test:.*\n\t\$\(BIN\)/pytest tests$", makefile, re.MULTILINE)
