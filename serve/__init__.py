"""The Ray Serve application: REST, live streams (SSE, WebSocket), A2A, gRPC and the web
dashboard, over the supervisor's gateway (`actors.gateway`)."""

__all__: list[str] = []
