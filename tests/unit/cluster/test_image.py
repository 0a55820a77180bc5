"""The image the cluster configs run is the one configs/docker/Dockerfile builds: its tag is
the package version, its base the Ray version the package pins, its install step the
script CI runs against the wheel."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
IMAGE = f"dafnck-machine:{PROJECT['version']}"


def images(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            yield from images(value)
    elif isinstance(node, list):
        for item in node:
            yield from images(item)


def test_every_kuberay_pod_and_the_ray_up_nodes_run_the_versioned_image() -> None:
    found = {
        path.name: set(images(yaml.safe_load(path.read_text())))
        for path in sorted((REPO / "configs" / "kuberay").glob("*.yaml"))
    }
    assert found == {
        name: {IMAGE} for name in ("raycluster.yaml", "rayjob.yaml", "rayservice.yaml")
    }
    ray_up = yaml.safe_load((REPO / "configs" / "cluster" / "ray-cluster.yaml").read_text())
    assert ray_up["docker"]["image"] == IMAGE


def test_the_dockerfile_builds_on_the_pinned_ray_and_installs_with_the_tested_script() -> None:
    dockerfile = (REPO / "configs" / "docker" / "Dockerfile").read_text()
    (pin,) = [d for d in PROJECT["dependencies"] if d.startswith("ray[serve]")]
    ray_minor = re.fullmatch(r"ray\[serve\]==(\d+\.\d+)\.\*", pin)
    assert ray_minor, pin
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", dockerfile, re.M)
    assert base and re.fullmatch(
        rf"rayproject/ray:{re.escape(ray_minor[1])}\.\d+-py311", base[1]
    ), base
    assert "sh /tmp/dafnck-install.sh" in dockerfile
    assert "COPY configs/docker/install.sh /tmp/dafnck-install.sh" in dockerfile
    assert f"-t {IMAGE} " in dockerfile  # the build command it documents
