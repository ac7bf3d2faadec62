"""The activity log plugin (SPEC §2, §7): served by Airflow's own api-server app, behind Airflow auth."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sftp_kit import make_account, manifest_bytes

pytestmark = [pytest.mark.services, pytest.mark.airflow]


@pytest.fixture
def imported(tmp_path, monkeypatch, opensearch, sftp_server, smtp_sink, webhook, airflow_db):
    """One import with a rejected row, plus a data file still waiting for its manifest."""
    acc = make_account(tmp_path, monkeypatch, opensearch=opensearch, sftp_server=sftp_server, smtp_sink=smtp_sink,
                       webhook=webhook)
    acc.write("orders.csv", "identity,evtName,total\nc1,Order Placed,10\n,Order Placed,11\n")
    acc.write("orders.manifest", manifest_bytes("orders.csv", "event", acc.client_email))
    acc.write("later.csv", "identity,evtName\nc9,Login\n")
    acc.upload("orders.csv", "orders.manifest", "later.csv")
    assert acc.run(datetime(2026, 2, 10, tzinfo=UTC)).state == "success"
    return acc


@pytest.fixture
def client():
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app("core")) as c:
        yield c


def token(role: str | None) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=f"u-{role}", role=role))


def test_every_route_requires_airflow_auth(imported, client):
    entry_id = imported.entry("orders.manifest")["id"]
    routes = ["/cdp-activity/", "/cdp-activity/api/activity", f"/cdp-activity/api/activity/{entry_id}/error-file"]
    for route in routes:
        assert client.get(route).status_code == 401, route  # no credentials
        bad = client.get(route, headers={"Authorization": "Bearer not-a-jwt"})
        assert bad.status_code == 403, route  # invalid token
        no_role = client.get(route, headers={"Authorization": f"Bearer {token(None)}"})
        assert no_role.status_code == 403, route  # authenticated, but may not read DAG runs


def test_activity_page_and_json_list_files_with_counts_and_error_file(imported, client):
    acc = imported
    viewer = {"Authorization": f"Bearer {token('viewer')}"}
    resp = client.get("/cdp-activity/api/activity", params={"account": acc.name}, headers=viewer)
    assert resp.status_code == 200
    rows = {r["file_name"]: r for r in resp.json()["entries"]}
    done = rows["orders.csv"]
    assert (done["status"], done["manifest"], done["rows_in"], done["loaded"], done["rejected"],
            done["duplicates"]) == ("done", "orders.manifest", 2, 1, 1, 0)
    assert done["error_file"] == f"{acc.name}/errors/orders.errors.csv"
    assert done["picked_up_at"] and done["finished_at"] and done["seconds"] > 0
    assert "client_email" not in done and acc.client_email not in resp.text
    assert rows["later.csv"]["status"] == "waiting_for_manifest"

    assert client.get("/cdp-activity/api/activity", params={"status": "bogus"}, headers=viewer).status_code == 400
    only_done = client.get("/cdp-activity/api/activity", params={"account": acc.name, "status": "done"},
                           headers=viewer).json()["entries"]
    assert [r["file_name"] for r in only_done] == ["orders.csv"]

    csv_resp = client.get(f"/cdp-activity/api/activity/{done['id']}/error-file", headers=viewer)
    assert csv_resp.status_code == 200
    assert csv_resp.content == (acc.folder / "errors" / "orders.errors.csv").read_bytes()
    assert b"Failure Description" in csv_resp.content

    # the page, as the Airflow UI's iframe requests it: with the session cookie
    client.cookies.set("_token", token("viewer"))
    page = client.get("/cdp-activity/", params={"account": acc.name})
    client.cookies.clear()
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "orders.manifest" in page.text and "waiting for manifest" in page.text
    assert f'href="/cdp-activity/api/activity/{done["id"]}/error-file"' in page.text


def test_plugin_is_loaded_with_its_nav_entry(airflow_db, client):
    admin = {"Authorization": f"Bearer {token('admin')}"}
    plugins = client.get("/api/v2/plugins", headers=admin).json()["plugins"]
    mine = next(p for p in plugins if p["name"] == "cdp_activity_log")
    assert [a["url_prefix"] for a in mine["fastapi_apps"]] == ["/cdp-activity"]
    [view] = mine["external_views"]
    assert (view["href"], view["destination"], view["url_route"]) == ("/cdp-activity/", "nav", "cdp-activity")
    errors = client.get("/api/v2/plugins/importErrors", headers=admin).json()
    assert errors["total_entries"] == 0, errors
