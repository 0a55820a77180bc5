"""Settings: environment `DAFNCK_*` over an optional YAML file over defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from cluster.contracts import TENANT
from cluster.errors import ConfigError
from cluster.netguard import OutboundAllow
from cluster.quotas import Quotas, quotas_as_json
from cluster.retention import Retention, retention_as_json

#: Ray namespace of the platform's named actors.
RAY_NAMESPACE = "dafnck"


class Settings(BaseSettings):
    """Everything a DafnckMachine process needs to find Ray and Redis.

    Precedence: constructor arguments, then `DAFNCK_*` variables, then the YAML file
    named by `DAFNCK_CONFIG` (or passed to `load_settings`), then defaults.
    """

    model_config = SettingsConfigDict(env_prefix="DAFNCK_", extra="forbid", frozen=True)

    #: A Redis/Valkey URL. Empty means: use (and start if needed) the embedded Valkey.
    redis_url: str | None = None
    #: Where the embedded Valkey keeps its AOF and where `dafnck up` records its state.
    state_dir: Path = Field(default_factory=lambda: Path.home() / ".dafnck")
    #: Every Redis key and every named agent lives under this tenant.
    tenant: str = Field(default="default", pattern=TENANT)
    #: The blob root (a path, or an s3:// or gs:// URI); empty means `<state_dir>/blobs`.
    #: Each tenant's blobs live under `<root>/<tenant>/`: `outputs/` (Arrow step outputs
    #: as Parquet), `data/` (large data objects), `backups/`.
    blob_uri: str | None = None
    #: A Ray address to join; empty starts or finds a local cluster.
    ray_address: str | None = None
    redis_connect_timeout_s: float = Field(default=2.0, gt=0)
    redis_socket_timeout_s: float = Field(default=5.0, gt=0)
    # Store security (valkey): tenant ACL users, the embedded Valkey's memory limit.
    #: Give each tenant's supervisor and replicas a Redis ACL user limited to the tenant's
    #: keys and channels (made with ACL SETUSER through `redis_url`); off for a Redis whose
    #: users are managed elsewhere: then every process uses `redis_url` itself.
    redis_tenant_acl: bool = True
    #: The embedded Valkey's maxmemory in MiB (empty: a quarter of RAM, at most 2 GiB);
    #: past it writes fail with StoreFull (HTTP 507) and nothing is evicted.
    valkey_maxmemory_mb: int | None = Field(default=None, gt=0)
    #: How often the supervisor checks replicas and replaces dead ones.
    reconcile_interval_s: float = Field(default=1.0, gt=0)
    log_level: str = "INFO"
    #: Where `dafnck up` serves the HTTP API (Ray Serve); port 0 leaves the API off.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    #: Where `dafnck up` serves gRPC; 0 (the default) leaves it off. Serve 2.60's gRPC proxy
    #: listens on every interface in plain text whatever `api_host` says: it is refused
    #: when `api_host` is not loopback; firewall the port or front it with a TLS proxy.
    grpc_port: int = Field(default=0, ge=0, le=65535)
    #: PEM certificate (chain) and private key: the HTTP API answers HTTPS; both or neither.
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    #: API rate limits in `limits` notation ("100/second"): per credential, per tenant.
    rate_per_key: str = "100/second"
    rate_per_tenant: str = "1000/second"
    # -- abuse limits (auth-abuse): logins, request bodies, the metrics scrape --
    #: Password logins per client address, and failed logins per username (`limits` rates,
    #: ";" between several), both counted before any password is hashed.
    login_rate_per_source: str = "5/second;60/minute"
    login_rate_per_user: str = "30/minute;300/hour"
    #: HTTP bodies (chunked or not) and gRPC messages (both ways) above this are refused
    #: (413 / RESOURCE_EXHAUSTED) before anything parses them.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, lt=2**31)
    #: What Prometheus sends to scrape `/metrics` (`Authorization: Bearer <it>`); unset:
    #: `/metrics` answers 403 to everyone. Tenant keys and tokens never read it.
    metrics_token: SecretStr | None = Field(default=None, min_length=16)
    # -- audit: kept per principal (one caller's flood evicts only its own entries) and by age.
    audit_max_entries_per_principal: int = Field(default=100_000, gt=0)
    audit_retention_days: float = Field(default=90, gt=0, le=3650)
    #: Where spans go: none | console | otlp-grpc | otlp-http | redis (the built-in store).
    trace_exporter: Literal["none", "console", "otlp-grpc", "otlp-http", "redis"] = "redis"
    #: The OTLP collector's endpoint; empty uses the exporter's default / OTEL_* variables.
    trace_endpoint: str | None = None
    #: How long the built-in span store keeps a trace (seconds).
    trace_retention_s: float = Field(default=86_400, gt=0)
    # -- code and secrets a spec may name (allowlist; cluster/allowlist.py) --
    #: Globs over `module:attr` a python agent's entrypoint must match.
    agent_entrypoints: list[str] = ["actors.examples.*", "actors.a2a_remote:A2ARemoteAgent"]
    #: Globs over `module:function` an llm agent's skill tools (`llm.tools[].skill`) must match.
    tool_skills: list[str] = ["actors.examples.*"]
    #: Globs a stdio MCP server's program (`command[0]`) must match; empty: stdio MCP is off.
    mcp_commands: list[str] = []
    #: Secret files (`llm.api_key_file`) resolve inside it; empty means `<state_dir>/secrets`.
    secrets_dir: Path | None = None
    #: Secret variables (`llm.api_key_env`, `config.auth_env`) start with this prefix ...
    secret_env_prefix: str = "DAFNCK_SECRET_"  # noqa: S105 - a name prefix, not a secret
    #: ... or are one of these names.
    secret_env_allow: list[str] = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]
    # -- demo agents (actors/examples/review.py): what they may read and write --
    #: The directory the review agents (repo.list, code.analyse, report.merge) stay inside;
    #: each agent's spec `config.root` / `config.output_dir` must lie within it, and it is
    #: their workspace when the spec names none. Empty: the spec's `config.root` alone,
    #: which `dafnck demo` writes. Read where the agents run (their node's DAFNCK_* env).
    workspace_root: Path | None = None
    # -- quotas --
    #: Per-tenant limits (streams, stored data, replicas, executions, fan-out, expressions).
    quotas: Annotated[Quotas, quotas_as_json] = Field(default_factory=Quotas)
    # -- retention (cluster/retention.py): how long finished data is kept, the sweep --
    #: Days finished executions, task records, messages and usage are kept; per tenant too.
    retention: Annotated[Retention, retention_as_json] = Field(default_factory=Retention)
    # -- outbound calls (cluster/netguard.py): addresses tenants' URLs may reach --
    #: CIDRs, addresses or host names (optionally `:port`) that webhooks, LLM `base_url`s,
    #: MCP and A2A urls may reach although not public (loopback, private, link-local,
    #: cloud metadata); empty: public addresses only.
    outbound_allow: OutboundAllow = []

    yaml_file: ClassVar[Path | None] = None

    @property
    def blobs(self) -> str:
        return self.blob_uri or str(self.state_dir / "blobs")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls, cls.yaml_file))


class _YamlSource(PydanticBaseSettingsSource):
    """Reads a YAML mapping with `yaml.safe_load`; unknown keys fail validation."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = _read_yaml(path) if path else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read settings file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _origin(loc: tuple[Any, ...], path: str | Path | None, overrides: dict[str, Any]) -> str:
    field = str(loc[0]) if loc else ""
    if field in overrides:
        return ""
    env = f"DAFNCK_{field.upper()}"
    if any(name.upper() == env for name in os.environ):
        return f"{env}: "
    return f"{path}: " if path else ""


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings; a bad value raises `ConfigError` naming the field and its source.

    Raises:
        ConfigError: the YAML file is unreadable or a value is invalid.
    """
    path = config_file or os.environ.get("DAFNCK_CONFIG")
    Settings.yaml_file = Path(path) if path else None
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_origin(e['loc'], path, overrides)}{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    finally:
        Settings.yaml_file = None
