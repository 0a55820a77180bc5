"""The example agents and workflows that ship inside the package, and `dafnck init`.

The files under `cluster/examples/` are the source; the repository's `configs/` holds the
same files (a test keeps them identical) where users of a checkout edit them. Installed
from the wheel, `dafnck demo` reads a project's `configs/...` copy when it has one (what
`dafnck init` writes), else the packaged file.
"""

from __future__ import annotations

from pathlib import Path

from cluster.errors import ConfigError

#: The packaged examples, by their path under a project's `configs/`.
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
FILES = (
    "agents/review.yaml",
    "agents/llm/repo-guide.yaml",
    "workflows/review.yaml",
    "workflows/approval-demo.yaml",
    "workflows/llm-demo.yaml",
    "llm.yaml",
)


def example(relative: str, project: Path = Path(".")) -> Path:
    """`<project>/configs/<relative>` when it exists (the user's copy), else the packaged one.

    Raises:
        ConfigError: `relative` is not one of the shipped examples.
    """
    if relative not in FILES:
        raise ConfigError(f"no example {relative!r}; the examples are {list(FILES)}")
    local = project / "configs" / relative
    return local if local.is_file() else EXAMPLES_DIR / relative


def write_examples(directory: Path, *, force: bool = False) -> list[Path]:
    """Copy the examples into `<directory>/configs/`; returns the files written.

    Raises:
        ConfigError: a file is already there (and `force` is off); nothing is written.
    """
    targets = {relative: directory / "configs" / relative for relative in FILES}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing and not force:
        raise ConfigError(
            f"{', '.join(existing)} already exist(s); `dafnck init --force` overwrites them"
        )
    for relative, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((EXAMPLES_DIR / relative).read_bytes())
    return list(targets.values())
