"""The notebooks in notebooks/ run top to bottom against a local cluster, as a user runs them.

Each runs in its own Jupyter kernel (nbclient); the first one's `connect()` starts a Ray
head and the embedded Valkey under a temporary state directory (DAFNCK_STATE_DIR), the
others join it, and it is stopped at the end. They are committed with their
outputs cleared, so a diff shows code, not results.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.fixtures.scale_agents import stop_cluster

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
#: Notebook -> how many figures it draws.
FIGURES = {"01-quickstart.ipynb": 0, "02-workflows-and-data.ipynb": 1, "03-scaling.ipynb": 1}


@pytest.fixture(scope="module")
def cluster_env() -> Iterator[dict[str, str]]:
    state = Path(tempfile.mkdtemp(prefix="dknb"))  # short: Ray's socket paths live under it
    env = {"DAFNCK_STATE_DIR": str(state), "DAFNCK_API_PORT": "0"}
    yield env
    stop_cluster(state)
    shutil.rmtree(state, ignore_errors=True)


def test_every_notebook_is_tested_and_committed_without_outputs() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_against_a_local_cluster(
    name: str, cluster_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for key, value in cluster_env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == FIGURES[name]
