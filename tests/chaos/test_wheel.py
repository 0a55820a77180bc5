"""The wheel is the product: built from the checkout, installed into a clean virtualenv by
the image's own install script (configs/docker/install.sh), it runs `dafnck up`, `dafnck
init`, `dafnck demo` and `dafnck down` from an empty directory, with no agent SDK installed.

The wheel's dependencies are not fetched again: exactly the distributions its metadata
asks for (without extras, with what those ask for in turn) are made visible to the new
virtualenv from the checkout's own (a `.pth` file naming a directory of links to them), so
pip finds them satisfied and installs the wheel alone, in seconds rather than minutes. A
package the code imports but the wheel does not declare is still missing there, as the
SDKs of the extras are. The cluster gets its own state directory and ports, separate from
the test session's Ray."""

from __future__ import annotations

import email.parser
import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cluster.valkey import free_port

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 900


def run(args: list[str], timeout: float, **kwargs: object) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, (
        f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return str(done.stdout)


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's own Requires-Dist lines."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(archive.read(name).decode())
    return meta.get_all("Requires-Dist") or []


def closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions `requirements` (no extras) need, transitively."""
    found: dict[str, metadata.Distribution] = {}
    extras: dict[str, set[str]] = {}
    todo = [(Requirement(r), {""}) for r in requirements]
    while todo:
        requirement, active = todo.pop()
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": e}) for e in active):
            continue
        key = canonicalize_name(requirement.name)
        wanted = {""} | set(requirement.extras)
        if wanted <= extras.get(key, set()):
            continue
        extras.setdefault(key, set()).update(wanted)
        dist = found.setdefault(key, metadata.distribution(requirement.name))
        todo += [(Requirement(r), extras[key]) for r in dist.requires or []]
    return list(found.values())


def link_dependencies(wheel: Path, target: Path) -> None:
    """Links in `target` to what the wheel's dependencies installed here (and to pip)."""
    site = Path(sysconfig.get_paths()["purelib"])
    target.mkdir()
    tops = {"pip"}
    for dist in closure(wheel_requirements(wheel)):
        tops |= {Path(f).parts[0] for f in dist.files or []}
    for top in sorted(tops):
        if top not in ("..", "__pycache__") and not top.endswith(".pth") and (site / top).exists():
            (target / top).symlink_to(site / top)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with only the wheel (no extras) and what it depends on."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"  # a copy: building leaves build/ behind, never in the checkout
    for package in ("actors", "cluster", "serve", "workflows"):
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(work / "dist"), str(source)], timeout=300)  # fmt: skip
    (wheel,) = (work / "dist").glob("dafnck_machine-*.whl")
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", "--without-pip", str(work / "venv")], timeout=300)
    link_dependencies(wheel, work / "dependencies")
    (site,) = (work / "venv" / "lib").glob("python3*/site-packages")
    (site / "_dependencies.pth").write_text(f"{work / 'dependencies'}\n")
    python = work / "venv" / "bin" / "python"
    env = {**os.environ, "PYTHON": str(python)}
    env.pop("PYTHONPATH", None)
    run(["sh", str(REPO / "configs" / "docker" / "install.sh"), str(wheel)],
        timeout=INSTALL_TIMEOUT_S, env=env)  # fmt: skip
    return work / "venv"


@pytest.fixture
def project(venv: Path, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    state = Path(tempfile.mkdtemp(prefix="dkwh"))  # short: Ray's socket paths live under it
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DAFNCK_", "RAY_ADDRESS"))},
        "DAFNCK_STATE_DIR": str(state),
        "DAFNCK_API_PORT": str(free_port()),
        "DAFNCK_GRPC_PORT": "0",
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
    }
    env.pop("PYTHONPATH", None)
    yield empty, env
    subprocess.run([str(venv / "bin" / "dafnck"), "down"], env=env, cwd=empty,
                   capture_output=True, timeout=180)  # fmt: skip
    shutil.rmtree(state, ignore_errors=True)


def test_the_installed_wheel_runs_the_demo_from_an_empty_directory(
    venv: Path, project: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = project
    dafnck = str(venv / "bin" / "dafnck")
    python = str(venv / "bin" / "python")
    # The wheel's code, not the checkout's: nothing of the repository is importable here.
    where = run([python, "-c", "import cluster; print(cluster.__file__)"], 60, env=env, cwd=cwd)
    assert where.startswith(str(venv)), where
    sdks = run([python, "-c", "from cluster.extras import missing; print(missing('llm'), missing('a2a'))"],
               60, env=env, cwd=cwd)  # fmt: skip
    assert sdks.strip() == "['openai', 'anthropic', 'mcp'] ['a2a']"
    (cwd / "hello.py").write_text("def greet(name):\n    return f'hello {name}'\n")

    run([dafnck, "up", "--num-cpus", "2"], 400, env=env, cwd=cwd)
    run([dafnck, "demo"], 400, env=env, cwd=cwd)
    report = (cwd / "reports" / "review.md").read_text()
    assert report.startswith("# Code review of") and "hello.py" in report

    run([dafnck, "init"], 60, env=env, cwd=cwd)
    assert (cwd / "configs" / "agents" / "review.yaml").read_bytes() == (
        REPO / "configs" / "agents" / "review.yaml"
    ).read_bytes()
    run([dafnck, "down"], 180, env=env, cwd=cwd)
