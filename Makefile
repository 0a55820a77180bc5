# The README's two commands: `make run` (the demo) and `make test` (the whole suite).
# Both set up everything they need: a virtualenv with the packages, and for tests the tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bandit security browser unit integration chaos down image clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The demo: start DafnckMachine on the embedded defaults and review this repository.
run: $(STAMP)
	$(BIN)/dafnck up
	$(BIN)/dafnck demo . --output reports/review.md

## Stop what `make run` started (the Valkey AOF stays under ~/.dafnck).
down: $(STAMP)
	$(BIN)/dafnck down

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check cluster workflows actors serve

typecheck: $(STAMP)
	$(BIN)/mypy

## Static security checks of our code (skips justified in pyproject.toml).
bandit: $(STAMP)
	$(BIN)/bandit -q -c pyproject.toml -r cluster workflows actors serve

## bandit, then pip-audit of the installed packages against PyPI's advisories. The audit is a
## test (tests/security/test_dependency_audit.py) so that where no advisory data can be
## reached it is reported as skipped, with the reason, and never counted as passed.
security: bandit
	$(BIN)/pytest -q -rs -p no:cacheprovider tests/security/test_dependency_audit.py

## The dashboard tests' browser: Debian's chromium when installed (.ci/run installs it),
## else Playwright's own build of Chromium (downloaded once into ~/.cache/ms-playwright).
browser: $(STAMP)
	command -v chromium >/dev/null 2>&1 || $(BIN)/playwright install chromium

## Everything CI runs: lint, type check, bandit, then the tests (the dependency audit among them).
test: lint typecheck bandit browser
	$(BIN)/pytest tests

## The fast loop: the cores without Ray (under a minute).
unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

## Real Ray and Valkey, then HTTP through Serve, then the attacks a tenant would try, then
## the notebooks run top to bottom.
integration: $(STAMP)
	$(BIN)/pytest -q tests/integration tests/e2e tests/security tests/notebooks

## Clusters of their own: `dafnck up`/`down` in subprocesses, several nodes, killed parts,
## the wheel in a clean virtualenv. `unit`, `integration` and `chaos` together are `tests`
## (tests/unit/test_make_targets.py checks that no directory is left out).
chaos: $(STAMP)
	$(BIN)/pytest -q tests/chaos

## The image the KubeRay manifests and configs/cluster/ray-cluster.yaml run (needs Docker).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	docker build -f configs/docker/Dockerfile -t dafnck-machine:$(VERSION) .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache reports test-artifacts
