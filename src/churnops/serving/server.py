"""`churnops serve`: the prediction server under uvicorn, one process, event loop and keep-alive.

On SIGTERM (or Ctrl-C) readiness turns false at once, so a load balancer stops sending; after
`serving.drain_seconds` (0 by default) uvicorn stops taking connections, lets in-flight requests
finish, and the app's shutdown flushes the prediction log.
"""

from __future__ import annotations

import threading
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

    draining: list[threading.Timer] = []

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.server.shutting_down = True  # readiness is false from here on
            drain = settings.serving.drain_seconds
            if drain > 0 and not draining:  # answer a little longer, then stop; a second signal stops now
                timer = threading.Timer(drain, super().handle_exit, (sig, frame))
                timer.daemon = True
                draining.append(timer)
                timer.start()
                return
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
