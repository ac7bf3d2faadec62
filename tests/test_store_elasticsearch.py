"""The same store, through an Airflow `elasticsearch` connection, against a real Elasticsearch 7.17."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cdp_ingest import sample
from cdp_ingest.ledger import Ledger
from cdp_ingest.mapping import Mapper, Mapping, profile_id_for
from cdp_ingest.pipeline import import_unit
from cdp_ingest.readers import read_batches
from cdp_ingest.store import CLAIMED_META, PAUSE_META
from cdp_ingest_airflow.connections import store_from_connection

pytestmark = pytest.mark.services
MAPPINGS = Path(__file__).resolve().parents[1] / "include" / "cdp_ingest" / "mappings"
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def test_elasticsearch_connection_imports_profiles_and_events(elasticsearch, tmp_path):
    store = store_from_connection("cdp_elasticsearch", prefix="t-es-")
    assert store.flavor == "elasticsearch"
    store.ensure_templates()
    info = store._request("GET", "/")
    assert info["version"]["number"] == elasticsearch.info["version"]

    def run(kind: str, path: Path, **kw):
        m = Mapping.load(MAPPINGS / f"demo-{kind}.yaml")
        return import_unit(str(path), lambda: read_batches(path), lambda iid: Mapper(m, unit_key=iid, now=NOW).map_row,
                           store=store, ledger=Ledger(store), work_dir=tmp_path / "work", kind=m.kind,
                           source="test", **kw)

    profiles = tmp_path / "profiles.csv"
    pexp = sample.write_profiles(profiles, 300)
    events = tmp_path / "events.csv"
    eexp = sample.write_events(events, 2000, profiles=300, sessions=50)
    rp = run("profiles", profiles)
    re_ = run("events", events, stage=False)
    assert (rp.loaded, rp.rejected) == (pexp.good, pexp.bad)
    assert (re_.loaded, re_.rejected, re_.duplicates) == (eexp.good, eexp.bad, eexp.duplicates)
    assert store.count("t-es-profile") == pexp.good
    assert store.count("t-es-event-*") == eexp.good
    doc = store.get("t-es-profile", profile_id_for(sample.email(1)))["_source"]
    assert doc["data"]["pii"]["firstname"] == "Grace"
    # free-form bags are stored but not indexed on Elasticsearch (no flat_object there)
    mapping = store._request("GET", "/t-es-event-2025-11/_mapping")
    assert mapping["t-es-event-2025-11"]["mappings"]["properties"]["properties"] == {"type": "object",
                                                                                     "enabled": False}
    # the two months the load created: the template's refresh setting, no lease, marked as claimed
    settings = store._request("GET", "/t-es-event-*/_settings", params={"flat_settings": "true"})
    assert sorted(settings) == ["t-es-event-2025-11", "t-es-event-2025-12"]
    assert all("index.refresh_interval" not in v["settings"] for v in settings.values())
    metas = store._request("GET", "/t-es-event-*/_mapping")
    assert all(v["mappings"]["_meta"] == {PAUSE_META: {"until": 0}, CLAIMED_META: True} for v in metas.values())
    assert run("events", events).status == "skipped"
    # a corrected re-import in overwrite mode: each id's claim held while it is written, then given back
    ro = run("events", events, force=True, write_mode="overwrite")
    # every row replaces a stored copy (a repeated id's later row replaces the earlier one: last write wins)
    assert (ro.loaded, ro.updated, ro.rejected, ro.duplicates) == (0, eexp.good + eexp.duplicates, eexp.bad, 0)
    store.refresh(["t-es-event-*", store.index("claims")])
    assert store.count("t-es-event-*") == eexp.good == store.count(store.index("claims"))
    claims = store._request("POST", f"/{store.index('claims')}/_search", body={"size": 10_000})["hits"]["hits"]
    assert len(claims) == eexp.good and not [c for c in claims if "w" in c["_source"]]  # (the field is not indexed)
    assert {c["_source"]["i"] for c in claims} == {ro.import_id}
    store._request("DELETE", "/t-es-*")
