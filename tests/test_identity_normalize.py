"""Identity normalisation before the profile id is derived (mapping ``identity_normalize``): unit
tests of the steps and the mapping checks, and one import through the real OpenSearch where
``Ada@Example.com`` and `` ada@example.com`` become one profile only where the mapping says so."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from cdp_ingest.errors import MappingError, RowError
from cdp_ingest.ledger import Ledger
from cdp_ingest.mapping import Mapper, Mapping, normalize_identity, profile_id_for
from cdp_ingest.pipeline import import_unit
from cdp_ingest.readers import read_batches
from cdp_ingest.store import Store, make_client

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
PROFILES = {"kind": "profile", "identity": ["email", "phone"],
            "identity_normalize": {"email": ["trim", "lower"], "phone": ["e164"]},
            "fields": {"first_name": "data.pii.firstname", "tag": "traits.tag"}}
_prefixes = itertools.count()


def test_steps():
    assert normalize_identity("  Ada@Example.COM ", ("trim", "lower"), "email") == "ada@example.com"
    assert normalize_identity("Ada@Example.COM ", ("lower",), "email") == "ada@example.com "
    assert normalize_identity(" +49 (30) 123-45.67 ", ("e164",), "phone") == "+4930123456" + "7"
    assert normalize_identity("0049 30 1234567", ("e164",), "phone") == "+49301234567"
    with pytest.raises(RowError, match="column 'phone' \\(identity\\): not an E.164 phone number"):
        normalize_identity("030 1234567", ("e164",), "phone")


def test_mapper_derives_one_profile_id_from_variants():
    m = Mapper(Mapping.from_dict(PROFILES), unit_key="u", now=NOW)
    ids = {m.map_row({"email": e, "phone": "", "first_name": "Ada", "tag": ""}, 1).doc_id
           for e in ("Ada@Example.com", " ada@example.com", "ADA@EXAMPLE.COM\t")}
    assert ids == {profile_id_for("ada@example.com")}
    # a blank e-mail (whitespace only) is empty after trim: the phone is the identity
    by_phone = m.map_row({"email": "   ", "phone": "0049 30 1234567", "first_name": "", "tag": ""}, 2)
    assert by_phone.doc_id == profile_id_for("+49301234567")
    with pytest.raises(RowError, match="E.164"):
        m.map_row({"email": "", "phone": "12-34", "first_name": "", "tag": ""}, 3)
    # events derive profile.id the same way
    ev = Mapping.from_dict({"kind": "event", "identity": ["email"], "identity_normalize": {"email": "lower"},
                            "event_type": {"value": "view"}})
    doc = Mapper(ev, unit_key="u", now=NOW).map_row({"email": "Ada@Example.com"}, 1).document
    assert doc["profile"]["id"] == profile_id_for("ada@example.com")
    # without identity_normalize the value is taken as it is (today's behaviour)
    plain = Mapper(Mapping.from_dict({**PROFILES, "identity_normalize": None}), unit_key="u", now=NOW)
    assert plain.map_row({"email": "Ada@Example.com", "phone": "", "first_name": "", "tag": ""}, 1).doc_id \
        == profile_id_for("Ada@Example.com")


def test_mapping_checks_identity_normalize():
    with pytest.raises(MappingError, match="'mail' is not an identity column"):
        Mapping.from_dict({**PROFILES, "identity_normalize": {"mail": ["lower"]}})
    with pytest.raises(MappingError, match="steps must be a list of"):
        Mapping.from_dict({**PROFILES, "identity_normalize": {"email": ["lowercase"]}})
    with pytest.raises(MappingError, match="must map identity columns"):
        Mapping.from_dict({**PROFILES, "identity_normalize": ["email"]})
    assert Mapping.from_dict(PROFILES).identity_normalize == {"email": ("trim", "lower"), "phone": ("e164",)}


@pytest.mark.parametrize("ftype", ["INTEGER", "DATETIME", "FLOAT"])
def test_mapping_checks_validate_only_on_string_fields(ftype):
    """``validate`` reads text: on another type the mapping is refused up front (map_row crashed on the first
    row with an AttributeError/TypeError before, failing the whole import)."""
    fields = {"email": {"target": "data.contact.email"}, "code": {"target": "traits.code", "type": ftype,
                                                                  "validate": "phone"}}
    with pytest.raises(MappingError, match="field 'code': validate applies to STRING fields, not " + ftype):
        Mapping.from_dict({"kind": "profile", "identity": ["email"], "fields": fields})
    fields["code"]["type"] = "STRING"
    assert Mapping.from_dict({"kind": "profile", "identity": ["email"], "fields": fields}).fields[1].validate == "phone"


@pytest.mark.services
def test_variants_of_one_email_merge_into_one_profile_in_the_store(opensearch, tmp_path):
    store = Store(make_client(opensearch.info["url"]), prefix=f"t-ident{next(_prefixes)}-", backoff=0.01)
    store.ensure_templates()
    try:
        src = tmp_path / "crm.csv"
        src.write_text("email,phone,first_name,tag\n"
                       "Ada@Example.com,,Ada,a\n"
                       " ada@example.com,,,b\n"
                       "ADA@EXAMPLE.COM ,,Augusta,c\n"
                       ",+44 20 7946 0000,Bob,d\n"
                       ",0044 20 7946-0000,,e\n"
                       ",020 7946 0000,,f\n")

        def run(mapping: dict, name: str):
            m = Mapping.from_dict(mapping, name=name)
            path = tmp_path / f"{name}.csv"
            path.write_bytes(src.read_bytes())
            return import_unit(str(path), lambda: read_batches(path),
                               lambda iid: Mapper(m, unit_key=iid, now=NOW).map_row, store=store,
                               ledger=Ledger(store), work_dir=tmp_path / "work", kind="profile", source="test")

        rep = run(PROFILES, "normalised")
        assert (rep.rows_in, rep.loaded, rep.rejected) == (6, 5, 1)  # "020 ..." has no country code
        store.refresh([store.index("profile")])
        assert store.count(store.index("profile")) == 2
        ada = store.get(store.index("profile"), profile_id_for("ada@example.com"))["_source"]
        assert ada["data"]["pii"]["firstname"] == "Augusta" and ada["traits"]["tag"] == "c"
        assert store.get(store.index("profile"), profile_id_for("+442079460000"))["_source"]["traits"]["tag"] == "e"

        plain = run({**PROFILES, "identity_normalize": None}, "plain")  # another source, values as given
        assert (plain.loaded, plain.rejected) == (6, 0)
        store.refresh([store.index("profile")])
        assert store.count(store.index("profile")) == 2 + 6  # nothing was equal as given
    finally:
        store._request("DELETE", f"/{store.prefix}*")
