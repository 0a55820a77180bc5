"""`dafnck auth` writes credentials the API accepts."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from cluster.cli.auth import auth_app
from cluster.settings import Settings


@pytest.fixture
def env(e2e_settings: Settings) -> dict[str, str]:
    return {
        "DAFNCK_REDIS_URL": str(e2e_settings.redis_url),
        "DAFNCK_STATE_DIR": str(e2e_settings.state_dir),
        "DAFNCK_TENANT": "clitenant",
    }


def test_keys_create_ls_revoke_through_the_api(http: httpx.Client, env: dict[str, str]) -> None:
    runner = CliRunner()
    made = runner.invoke(
        auth_app, ["keys", "create", "--role", "admin", "--name", "boot", "--json"], env=env
    )
    assert made.exit_code == 0, made.output
    key = json.loads(made.output)
    headers = {"Authorization": f"Bearer {key['secret']}"}
    assert http.get("/v1/keys", headers=headers).status_code == 200
    listed = runner.invoke(auth_app, ["keys", "ls"], env=env)
    assert key["key_id"] in listed.output and key["secret"] not in listed.output
    revoked = runner.invoke(auth_app, ["keys", "revoke", key["key_id"]], env=env)
    assert revoked.exit_code == 0, revoked.output
    assert http.get("/v1/keys", headers=headers).status_code == 401


def test_users_create_prompts_for_the_password(env: dict[str, str]) -> None:
    runner = CliRunner()
    pw = "a long passphrase\n"
    made = runner.invoke(
        auth_app, ["users", "create", "ada", "--role", "admin"], input=pw * 2, env=env
    )
    assert made.exit_code == 0, made.output
    assert "a long passphrase" not in made.output
    totp = runner.invoke(auth_app, ["users", "totp", "ada"], env=env)
    assert totp.exit_code == 0 and "otpauth://" in totp.output
