"""Columnar mapping of partition rows (SPEC §3) — the event documents ``PartitionMapper.map_row`` makes,
built for a whole batch with Arrow compute instead of one Python dict per row and map.

``PartitionBatchMapper.map_batch`` returns a ``fastmap.FastBatch``: for every row it can reproduce
exactly, the monthly index, the id, the staged body (byte for byte what ``map_row`` +
``pipeline.mapped_to_stage_row`` give) and the source row as JSON (byte for byte ``orjson.dumps(row)``,
the staged ``orig``). Every other row — any check of ``map_row`` that fails or cannot be decided here
(a value with surrounding whitespace, a control character, a null map value, two map keys equal once
lowercased, a non-canonical insert_id, a row the reader flagged) — is left to ``map_row``, which
maps it or rejects it with its usual message. So the output is the same with or without this module;
``CDP_ROW_MAPPING=1`` switches it off. Distinct event keys and identities go through Python once per
batch (``event_name``, ``profile_id_for``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import orjson
import pyarrow.compute as pc

from cdp_ingest.arrow import pa
from cdp_ingest.fastmap import FastBatch, _ProfileIds, json_strings, value_bytes
from cdp_ingest.partitions import (
    COLUMNS,
    MAP_COLUMNS,
    MAX_EVENT_KEY,
    MAX_IDENTITY,
    MAX_TS,
    METRIC_SCALE,
    MIN_TS,
    REQUIRED_IDENTIFIERS,
    REQUIRED_PLATFORM,
    PartitionMapper,
    event_name,
)

_TS = pa.timestamp("ms", tz="UTC")  # what partitions.normalize_batch leaves
_STR_MAP = pa.map_(pa.string(), pa.string())
_TYPES = {"ts": _TS, "event_key": pa.string(), "insert_id": pa.string(), "metric_value": pa.string(),
          **dict.fromkeys(MAP_COLUMNS, _STR_MAP)}
_CANONICAL = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# Profile ids of recent identities, kept across batches (identities repeat within a day's file); bounded
# (~5 MB), so the cache does not grow with the file.
PROFILE_ID_CACHE = 20_000
_SLOT = re.compile(r'"@@cdp_slot_(\w+)@@"')
_NULL_TEXT = pa.scalar("null", pa.string())


def _np(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow mask as NumPy, null = False."""
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def _lit(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(JSON string literals — null stays null —, rows whose value orjson would write the same way:
    no control character; null counts as fine, the caller decides what a null means). The bytes are
    scanned once with NumPy; the regex kernels run only for an array that has such characters."""
    data, offsets = value_bytes(values)
    used = data[offsets[0]:offsets[-1]]
    if (used < 0x20).any():
        lit, clean = json_strings(values)
        return lit, _np(pc.or_kleene(clean, pc.is_null(values)))
    if ((used == 0x22) | (used == 0x5C)).any():
        values = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')
    return _join('"', values, '"'), np.ones(len(values), bool)


def _plain(values: pa.Array) -> np.ndarray:
    """Rows whose value ``str.strip()`` leaves as it is, for sure: non-empty, first and last byte
    printable ASCII. Null = False."""
    data, offsets = value_bytes(values)
    start, end = offsets[:-1], offsets[1:]
    ok = end > start
    if not ok.any():
        return ok
    first = data[np.where(ok, start, 0)] if len(data) else np.zeros(len(start), np.uint8)
    last = data[np.where(ok, end - 1, 0)] if len(data) else first
    ok &= (first >= 0x21) & (first <= 0x7E) & (last >= 0x21) & (last <= 0x7E)
    if values.null_count:
        ok &= ~_np(pc.is_null(values))
    return ok


_HEX = np.zeros(256, bool)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = True


def _canonical_uuid(values: pa.Array) -> np.ndarray:
    """Rows holding a canonical (lowercase, hyphenated) UUID. Null = False."""
    data, offsets = value_bytes(values)
    n = len(values)
    if not n or (np.diff(offsets) != 36).any():
        return _np(pc.match_substring_regex(values, _CANONICAL))
    chars = data[offsets[0]:offsets[-1]].reshape(n, 36)
    dashes = chars[:, [8, 13, 18, 23]] == 0x2D
    digits = _HEX[np.delete(chars, [8, 13, 18, 23], axis=1)]
    ok = dashes.all(axis=1) & digits.all(axis=1)
    if values.null_count:
        ok &= ~_np(pc.is_null(values))
    return ok


def _join(*parts: Any) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _per_row(flags: np.ndarray, rowid: np.ndarray, n: int) -> np.ndarray:
    """Rows with at least one flagged map entry."""
    return np.bincount(rowid[flags], minlength=n) > 0 if flags.any() else np.zeros(n, bool)


class _Map:
    """One map<string,string> column of a batch: the JSON ``map_row`` writes for it (keys lowercased,
    as an object), the JSON ``orjson.dumps(row)`` writes for it (a list of [key, value] pairs), the
    lowercased map for lookups, and the rows whose entries this module cannot reproduce."""

    def __init__(self, arr: pa.Array):
        n = len(arr)
        offsets = arr.offsets.to_numpy()
        start, end = int(offsets[0]), int(offsets[-1])
        rel = pa.array(offsets - start, pa.int32())
        keys, items = arr.keys.slice(start, end - start), arr.items.slice(start, end - start)
        rowid = np.repeat(np.arange(n), np.diff(offsets))
        lower = pc.utf8_lower(keys)
        klit, kok = _lit(lower)
        olit, ook = _lit(keys)
        vlit, vok = _lit(items)
        bad = ~(kok & ook & vok) | _np(pc.is_null(items))  # a null value is dropped by map_row: left to it
        if len(lower):
            codes = pc.dictionary_encode(lower).indices.to_numpy().astype(np.int64)
            combined = rowid.astype(np.int64) * (int(codes.max()) + 1) + codes
            uniq, counts = np.unique(combined, return_counts=True)
            if (counts > 1).any():  # two keys equal once lowercased: map_row merges or rejects them
                dup = np.isin(combined, uniq[counts > 1])
                bad |= dup
        self.unclean = _per_row(bad, rowid, n)
        pairs = pa.ListArray.from_arrays(rel, pc.binary_join_element_wise(klit, vlit, ":"))
        self.object = _join("{", pc.binary_join(pairs, ","), "}")
        orig = pa.ListArray.from_arrays(rel, _join("[", olit, ",", vlit, "]"))
        self.orig = pc.if_else(pc.is_null(arr), _NULL_TEXT, _join("[", pc.binary_join(orig, ","), "]"))
        self.n, self.rowid, self.lower_keys, self.items = n, rowid, lower, items
        self.is_null = _np(pc.is_null(arr))

    def get(self, key: str) -> pa.Array:
        """The value of ``key`` (lowercased) in each row, first occurrence; null where absent."""
        hits = np.flatnonzero(_np(pc.equal(self.lower_keys, key)))
        rows, first = np.unique(self.rowid[hits], return_index=True)
        where = np.full(self.n, -1, np.int64)
        where[rows] = hits[first]
        return pc.take(self.items, pa.array(where, mask=where < 0))


class PartitionBatchMapper(_ProfileIds):
    """The columnar twin of one ``PartitionMapper`` (same source id and import time)."""

    kind = "event"
    cache_size = PROFILE_ID_CACHE

    def __init__(self, mapper: PartitionMapper):
        self.mapper = mapper
        self._templates: dict[str, tuple[list[str], list[str]]] = {}
        self._names: dict[str, tuple[bool, str, str]] = {}  # raw event_key -> (ok, type JSON, name JSON)
        self._profile_ids: dict[str, str] = {}  # identity -> profile id

    @classmethod
    def compile(cls, row_fn: Any) -> PartitionBatchMapper | None:
        owner = getattr(row_fn, "__self__", None)
        if type(owner) is not PartitionMapper or getattr(row_fn, "__func__", None) is not PartitionMapper.map_row:
            return None
        return cls(owner)

    def _template(self, import_id: str) -> tuple[list[str], list[str]]:
        """The staged body around its per-row values: the skeleton with the slots ``map_row`` fills, in
        the order it fills them, serialised once and cut at the slots."""
        if import_id not in self._templates:
            doc = orjson.loads(self.mapper._skeleton)
            slot = "@@cdp_slot_{}@@".format
            doc["id"], doc["type"], doc["name"] = slot("id"), slot("type"), slot("name")
            doc["metadata"]["time"]["create"] = slot("create")
            doc["source"] = {"id": self.mapper.source_id}
            doc["profile"] = {"id": slot("profile")}
            for key in ("session", "device", "os", "app", "properties", "context", "data"):
                doc[key] = slot(key)
            doc["metadata"]["aux"]["cdp"] = {"import_id": import_id, "row": slot("row")}
            pieces = _SLOT.split(orjson.dumps(doc).decode())
            self._templates[import_id] = (pieces[0::2], pieces[1::2])
        return self._templates[import_id]

    def _event_key(self, raw: str) -> tuple[bool, str, str]:
        got = self._names.get(raw)
        if got is None:
            key = raw.strip()
            ok = bool(key) and len(key) <= MAX_EVENT_KEY
            got = self._names[raw] = (ok, orjson.dumps(key).decode(), orjson.dumps(event_name(key)).decode()
                                      if ok else "")
        return got

    def map_batch(self, batch: pa.RecordBatch, first_row: int, prefix: str, import_id: str,
                  bad: dict[int, str]) -> FastBatch | None:
        names = batch.schema.names
        if sorted(names) != sorted(COLUMNS) or any(batch.schema.field(c).type != t for c, t in _TYPES.items()):
            return None  # another layout (identifiers as JSON text, UUID insert_ids ...): row by row
        n = batch.num_rows
        col = dict(zip(names, batch.columns, strict=True))
        unclean = np.zeros(n, bool)
        if bad:
            unclean[list(bad)] = True
        maps = {c: _Map(col[c]) for c in MAP_COLUMNS}
        for m in maps.values():
            unclean |= m.unclean
        ids, platform = maps["identifiers"], maps["platform_properties"]
        unclean |= ids.is_null

        got = {k: ids.get(k) for k in (*REQUIRED_IDENTIFIERS, "user_id", "session_id")}
        got.update({k: platform.get(k) for k in (*REQUIRED_PLATFORM, "osversion", "devicemodel", "devicevendor")})
        for k in (*REQUIRED_IDENTIFIERS, *REQUIRED_PLATFORM):  # present and non-empty once stripped
            unclean |= ~_plain(got[k])
        # identity = user_id (stripped) or id (stripped): decided here when no strip can change it
        uid = got["user_id"]
        unclean |= ~(_np(pc.is_null(uid)) | _plain(uid))
        identity = pc.coalesce(uid, got["id"])
        unclean |= _np(pc.greater_equal(pc.utf8_length(identity), MAX_IDENTITY))
        sid = got["session_id"]
        no_session = _np(pc.or_kleene(pc.is_null(sid), pc.equal(sid, "")))
        unclean |= ~(no_session | _plain(sid))

        ts = col["ts"]
        unclean |= ~_np(pc.and_(pc.greater_equal(ts, pa.scalar(MIN_TS, _TS)), pc.less(ts, pa.scalar(MAX_TS, _TS))))
        eid = col["insert_id"]
        unclean |= ~_canonical_uuid(eid)
        key = col["event_key"]
        unclean |= _np(pc.is_null(key))
        if unclean.all():
            return FastBatch([False] * n, [], [], [])

        # distinct event keys and identities through Python, once each
        enc = pc.dictionary_encode(key)
        looked = [self._event_key(k) if k is not None else (False, "", "") for k in enc.dictionary.to_pylist()]
        unclean |= ~np.array([ok for ok, _, _ in looked] or [True])[_np_indices(enc.indices)]
        type_lit = pc.take(pa.array([t for _, t, _ in looked], pa.string()), enc.indices)
        name_lit = pc.take(pa.array([nm for _, _, nm in looked], pa.string()), enc.indices)
        pids = pc.binary_join_element_wise('"', self._profile_id_array(
            pc.if_else(pa.array(unclean), pa.scalar(None, pa.string()), identity)), '"', "")

        def lit(values: pa.Array) -> pa.Array:
            text, ok = _lit(values)
            nonlocal unclean
            unclean |= ~ok
            return text

        def optional(prefix_text: str, values: pa.Array) -> pa.Array:
            return pc.if_else(pc.is_null(values), "", _join(prefix_text, lit(values)))

        create = pc.strftime(ts, format="%Y-%m-%dT%H:%M:%S")  # milliseconds: "...:SS.mmm"
        values = {
            "id": _join('"', eid, '"'),
            "type": type_lit,
            "name": name_lit,
            "create": _join('"', create, '"'),
            "profile": pids,
            "session": pc.if_else(pa.array(no_session), _NULL_TEXT,
                                  _join('{"id":', lit(sid), ',"start":null,"duration":0,"tz":"utc"}')),
            "device": _join('{"id":', lit(got["device_id"]), optional(',"model":', got["devicemodel"]),
                            optional(',"brand":', got["devicevendor"]), "}"),
            "os": _join('{"name":', lit(got["osname"]), optional(',"version":', got["osversion"]), "}"),
            "app": _join('{"version":', lit(got["appversion"]), "}"),
            "properties": maps["event_properties"].object,
            "context": _join('{"identifiers":', ids.object, ',"user_properties":',
                             maps["user_properties"].object, ',"platform":', platform.object, "}"),
            "data": _join('{"metric_value":', pc.fill_null(lit(col["metric_value"]),
                                                             '"0.' + "0" * METRIC_SCALE + '"'), "}"),
            "row": pa.array(np.arange(first_row, first_row + n).astype(str), pa.string()),
        }
        literals, slots = self._template(import_id)
        parts: list[Any] = [literals[0]]
        for name, literal in zip(slots, literals[1:], strict=True):
            parts += [values[name], literal]
        bodies = pc.cast(_join(*parts), pa.binary())
        index = _join(prefix + "event-", pc.utf8_slice_codeunits(create, 0, 7))

        # the source row as orjson.dumps(row) writes it (the staged "orig")
        ms_zero = pc.equal(pc.utf8_slice_codeunits(create, 20, 23), "000")
        ts_orig = pc.if_else(ms_zero, _join('"', pc.utf8_slice_codeunits(create, 0, 19), '+00:00"'),
                             _join('"', create, '000+00:00"'))
        origs = {"ts": ts_orig, **{c: maps[c].orig for c in MAP_COLUMNS}}
        for c in ("event_key", "insert_id", "metric_value"):
            origs[c] = pc.fill_null(lit(col[c]), _NULL_TEXT)
        row_parts: list[Any] = []
        for c in names:
            row_parts += [("," if row_parts else "{") + orjson.dumps(c).decode() + ":", origs[c]]
        orig = pc.cast(_join(*row_parts, "}"), pa.binary())

        ok = (~unclean).tolist()
        return FastBatch(ok, index, eid, bodies, orig)


def _np_indices(indices: pa.Array) -> np.ndarray:
    """Dictionary indices as NumPy (a null key has a null index: point it at entry 0, it is unclean)."""
    return pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)
