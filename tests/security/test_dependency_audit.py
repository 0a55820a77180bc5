"""The installed packages against PyPI's advisories (pip-audit), counted honestly: where no
advisory data can be reached the test is skipped and says so, never passed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PIP_AUDIT = Path(sys.executable).with_name("pip-audit")


def _audit() -> list[dict[str, object]]:
    binary = str(PIP_AUDIT) if PIP_AUDIT.exists() else shutil.which("pip-audit")
    if binary is None:
        pytest.skip("pip-audit is not installed")
    run = subprocess.run(
        [binary, "--skip-editable", "--progress-spinner", "off", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pip-audit gave no report (exit {run.returncode}): {run.stderr[-500:]}")
    return list(report["dependencies"])


def test_no_installed_package_has_a_known_vulnerability() -> None:
    deps = _audit()
    audited = [d for d in deps if "skip_reason" not in d]
    if not audited:
        pytest.skip(
            f"NOT AUDITED: pip-audit reached no advisory data for any of {len(deps)} packages "
            "(the advisory service is unreachable from here)"
        )
    vulnerable = {f"{d['name']} {d['version']}": d["vulns"] for d in audited if d.get("vulns")}
    assert not vulnerable, f"known vulnerabilities: {json.dumps(vulnerable, indent=1)[:3000]}"
    unaudited = len(deps) - len(audited)
    if unaudited:
        print(f"pip-audit: {len(audited)} packages audited, {unaudited} could not be")
