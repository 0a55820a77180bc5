#!/bin/sh
# Install DafnckMachine from its wheel into one Python: the image's (configs/docker/Dockerfile)
# or a virtualenv's (tests/chaos/test_wheel.py runs this very script, so the recipe is tested).
#
#   configs/docker/install.sh WHEEL [EXTRAS]      e.g. install.sh dafnck_machine-0.1.0-py3-none-any.whl all
#
# PYTHON names the interpreter (default: python). EXTRAS is empty (Python agents, workflows
# and the API), llm, a2a or all. Ray itself comes with the wheel's own pin (ray[serve]==2.60.*),
# which the rayproject/ray:2.60.x image already satisfies.
set -eu
wheel="$1"
extras="${2:-}"
python="${PYTHON:-python}"
target="$wheel"
if [ -n "$extras" ]; then
    target="$wheel[$extras]"
fi
"$python" -m pip install --no-cache-dir --disable-pip-version-check "$target"
# The install is usable: the packages import and the CLI runs.
"$python" -c "import actors, cluster, serve, workflows, cluster.cli.main"
"$(dirname "$("$python" -c 'import sys; print(sys.executable)')")/dafnck" --help >/dev/null
echo "DafnckMachine installed: $("$python" -m pip show dafnck-machine | grep '^Version')"
