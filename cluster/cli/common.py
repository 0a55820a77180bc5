"""What every `dafnck` command shares: the global options, the consoles, the client.

The command-group modules (`cli_cluster`, `cli_agents`, `cli_executions`) import this;
`cli.py` builds the app from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from cluster.settings import Settings, load_settings

console = Console()
err = Console(stderr=True)


class GlobalOptions:
    """`dafnck --config/--address`, set by the app's callback before any command runs."""

    config: Path | None = None
    address: str | None = None

    @classmethod
    def settings(cls) -> Settings:
        return load_settings(cls.config)


def client(missing: str = "start_head") -> Any:
    """A client of the cluster the options name (starting a local head unless told not to)."""
    from actors.client import connect

    settings = GlobalOptions.settings()
    if settings.redis_url is None and (GlobalOptions.address or settings.ray_address):
        settings = _joined_store(settings)
    return connect(GlobalOptions.address, settings, missing=missing)  # type: ignore[arg-type]


def _joined_store(settings: Settings) -> Settings:
    """On a cluster joined by address (a Ray job's driver), use the store its supervisor uses."""
    from actors.system import joined_store_url
    from cluster.ray_runtime import init_ray

    init_ray(settings, GlobalOptions.address, missing="fail")
    url = joined_store_url(settings.tenant)
    return settings.model_copy(update={"redis_url": url}) if url else settings


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=_jsonable))


def _jsonable(value: Any) -> Any:
    """Arrow tables print as their shape and first rows; anything else as its str()."""
    if hasattr(value, "to_pylist") and hasattr(value, "num_rows"):
        return {
            "arrow_table": {
                "rows": value.num_rows,
                "columns": value.column_names,
                "head": value.slice(0, 5).to_pylist(),
            }
        }
    return str(value)


__all__ = ["GlobalOptions", "client", "console", "err", "print_json"]
