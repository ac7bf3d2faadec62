"""The api-server builds its task execution API's routes at startup (the ``WarmExecutionAPI`` root
middleware of our plugin), in Airflow's own api-server app in process: without it Cadwyn builds them on the
first request, which the first task after a start waited 4.3 s for."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.airflow]


def _execution_app(app):
    from starlette.routing import Mount

    [mount] = [r for r in app.routes if isinstance(r, Mount) and r.path == "/execution"]
    return mount.app


def _without_warm_up(app):
    from cdp_ingest_airflow.warm_api import WarmExecutionAPI

    app.user_middleware = [m for m in app.user_middleware if m.cls is not WarmExecutionAPI]
    return app


def test_the_execution_api_is_built_when_the_server_starts(airflow_db, caplog):
    import logging

    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    from cdp_ingest_airflow.warm_api import WarmExecutionAPI

    caplog.set_level(logging.INFO, logger="cdp_ingest_airflow.warm_api")
    app = create_app("all")
    assert any(m.cls is WarmExecutionAPI for m in app.user_middleware), "the plugin's middleware is not installed"
    execution = _execution_app(app)
    assert execution._cadwyn_initialized is False  # Cadwyn's own flag: nothing built before the start
    with TestClient(app) as client:
        assert execution._cadwyn_initialized is True  # built by the startup, before any request
        assert app.state.cdp_execution_api_warm_up["status"] == 200
        assert client.get("/execution/health").json() == {"status": "healthy"}
    assert any(r.name == "cdp_ingest_airflow.warm_api" and r.levelno == logging.INFO
               and "execution API warmed at startup: GET /execution/health -> 200" in r.getMessage()
               for r in caplog.records)


def test_without_the_middleware_the_first_request_builds_it(airflow_db):
    """What the middleware changes: Airflow alone leaves the routes to the first request."""
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    app = _without_warm_up(create_app("all"))
    execution = _execution_app(app)
    with TestClient(app) as client:
        assert execution._cadwyn_initialized is False
        assert not hasattr(app.state, "cdp_execution_api_warm_up")
        assert client.get("/execution/health").status_code == 200
        assert execution._cadwyn_initialized is True


def test_a_server_without_the_execution_api_sends_nothing(airflow_db):
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    app = create_app("core")
    with TestClient(app) as client:
        assert not hasattr(app.state, "cdp_execution_api_warm_up")
        assert client.get("/api/v2/monitor/health").status_code == 200
