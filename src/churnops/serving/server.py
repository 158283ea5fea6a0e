"""`churnops serve`: the prediction server under uvicorn, one process, event loop and keep-alive.

On SIGTERM (or Ctrl-C) readiness turns false at once, so a load balancer stops sending; uvicorn
then lets in-flight requests finish, and the app's shutdown flushes the prediction log.
"""

from __future__ import annotations

from typing import Any

from churnops.settings import Settings


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C.

    Args:
        settings: The loaded settings (`serving` section).
        host: Interface (default `serving.host`).
        port: Port (default `serving.port`).
    """
    import uvicorn

    from churnops.serving.app import create_app

    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.server.shutting_down = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host or settings.serving.host,
        port=port or settings.serving.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_keep_alive=30,
    )
    Server(config).run()
