"""Settings: `DAFNCK_*` environment over the YAML file over defaults; bad values name the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.errors import ConfigError
from cluster.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own DAFNCK_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("DAFNCK_"):
            monkeypatch.delenv(name)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings()
    assert settings.tenant == "default"
    assert settings.redis_url is None
    assert settings.state_dir == Path.home() / ".dafnck"
    assert settings.reconcile_interval_s == 1.0


def test_yaml_file_overrides_defaults(tmp_path: Path) -> None:
    config = write(
        tmp_path / "dafnck.yaml", "tenant: acme\nreconcile_interval_s: 3\nlog_level: DEBUG\n"
    )
    settings = load_settings(config)
    assert (settings.tenant, settings.reconcile_interval_s, settings.log_level) == (
        "acme",
        3.0,
        "DEBUG",
    )
    assert settings.redis_connect_timeout_s == 2.0  # not in the file: the default


def test_environment_overrides_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "dafnck.yaml", "tenant: acme\nlog_level: DEBUG\n")
    monkeypatch.setenv("DAFNCK_TENANT", "from-env")
    settings = load_settings(config)
    assert settings.tenant == "from-env"
    assert settings.log_level == "DEBUG"  # the file still supplies what the environment doesn't


def test_dafnck_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "dafnck.yaml", "tenant: acme\n")
    monkeypatch.setenv("DAFNCK_CONFIG", str(config))
    assert load_settings().tenant == "acme"


def test_explicit_arguments_override_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "dafnck.yaml", "tenant: acme\n")
    monkeypatch.setenv("DAFNCK_TENANT", "from-env")
    assert load_settings(config, tenant="explicit").tenant == "explicit"


def test_loading_a_file_does_not_stick_to_later_settings(tmp_path: Path) -> None:
    load_settings(write(tmp_path / "dafnck.yaml", "tenant: acme\n"))
    assert Settings().tenant == "default"
    assert load_settings().tenant == "default"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("reconcile_interval_s: -1\n", "reconcile_interval_s"),
        ("tenant: Not A Tenant\n", "tenant"),
        ("redis_connect_timeout_s: soon\n", "redis_connect_timeout_s"),
        ("no_such_setting: 1\n", "no_such_setting"),
    ],
)
def test_bad_yaml_value_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    config = write(tmp_path / "dafnck.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert str(config) in str(caught.value)
    assert f"{field}:" in str(caught.value)


def test_every_bad_value_is_reported_together(tmp_path: Path) -> None:
    config = write(tmp_path / "dafnck.yaml", "reconcile_interval_s: 0\ntenant: UPPER\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "reconcile_interval_s:" in str(caught.value)
    assert "tenant:" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("- a\n- b\n", "expected a mapping"), ("tenant: [\n", "not valid YAML")],
)
def test_unusable_yaml_file_is_a_config_error(tmp_path: Path, text: str, expected: str) -> None:
    config = write(tmp_path / "dafnck.yaml", text)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_settings(config)
    assert str(config) in str(caught.value)


def test_missing_settings_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read settings file") as caught:
        load_settings(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(caught.value)


def test_bad_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAFNCK_REDIS_CONNECT_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError, match="redis_connect_timeout_s"):
        load_settings()


def test_bad_environment_value_is_not_blamed_on_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "dafnck.yaml", "tenant: acme\n")
    monkeypatch.setenv("DAFNCK_REDIS_CONNECT_TIMEOUT_S", "soon")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "DAFNCK_REDIS_CONNECT_TIMEOUT_S" in str(caught.value)
    assert str(config) not in str(caught.value)
