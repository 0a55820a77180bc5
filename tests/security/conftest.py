"""Attacks as a tenant would make them: the e2e fixtures (Serve over HTTP, two tenants with a
key per role) and the integration fixtures (a fresh tenant with its own supervisor)."""

from tests.e2e.conftest import *  # noqa: F403
from tests.integration.conftest import *  # noqa: F403
