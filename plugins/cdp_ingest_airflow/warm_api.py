"""Warm the api-server's task execution API when the server starts, not on the first task's request.

Airflow's execution API (``/execution``, what every task process calls: start, heartbeats, XComs, state) is a
Cadwyn app, and Cadwyn builds its versioned routes on the first request the app receives, synchronously,
in the server's event loop. Measured here (Airflow 3.3, 2 cores): the first task after an api-server start
waited 4.3 s on its ``PATCH .../run`` (every other request 8-20 ms), with every other request to that
server stalled meanwhile.

``WarmExecutionAPI`` is a root ASGI middleware (Airflow's ``fastapi_root_middlewares`` plugin interface):
when the server's ASGI lifespan startup completes, it sends one ``GET /execution/health`` through the app
before it passes the "startup complete" on, so the server answers its first request with the routes built.
Each api-server worker runs the lifespan, so each warms itself. Where the execution API is not mounted
(``airflow api-server --apps core``) it does nothing. The outcome is kept in the root app's
``state.cdp_execution_api_warm_up`` and logged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)

EXECUTION_PREFIX = "/execution"
HEALTH_PATH = EXECUTION_PREFIX + "/health"


class WarmExecutionAPI:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_when_warm(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self.warm(scope)
            await send(message)

        await self.app(scope, receive, send_when_warm)

    async def warm(self, lifespan: dict[str, Any]) -> None:
        root = lifespan.get("app")
        routes = getattr(root, "routes", None) or []
        if not any(getattr(r, "path", None) == EXECUTION_PREFIX for r in routes):
            return  # this server does not serve the execution API
        prefix = lifespan.get("root_path", "")
        path = prefix + HEALTH_PATH
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": prefix,
                 "query_string": b"", "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 0),
                 "server": ("127.0.0.1", 0), "state": dict(lifespan.get("state") or {})}
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        t0 = time.monotonic()
        try:
            await self.app(scope, receive, send)
        except Exception:  # a failed warm-up only leaves the first task to pay for it
            log.warning("warming the execution API (GET %s) failed", HEALTH_PATH, exc_info=True)
            status.append(0)
        outcome = {"status": status[0] if status else None, "seconds": round(time.monotonic() - t0, 2)}
        if root is not None:
            root.state.cdp_execution_api_warm_up = outcome
        if outcome["status"]:
            log.info("execution API warmed at startup: GET %s -> %s in %.2f s", HEALTH_PATH, outcome["status"],
                     outcome["seconds"])
