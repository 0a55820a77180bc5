"""The Ray Serve application: REST, streams, gRPC and the dashboard (not built yet: see
the API issue)."""

__all__: list[str] = []
