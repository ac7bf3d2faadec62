"""Streaming readers (SPEC §2-§5, §7): real small files in tmp_path, plus one slow memory-bound test."""

from __future__ import annotations

import gzip
import io
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from cdp_ingest.errors import FileLevelError
from cdp_ingest.readers import (
    EMPTY_FILE_MESSAGE,
    JsonChunk,
    SourceBatch,
    count_rows,
    detect_format,
    open_source,
    read_batches,
    read_csv_header,
    read_json_lines,
)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def read_all(source, fmt=None, **kw) -> list[SourceBatch]:
    return list(read_batches(source, fmt, **kw))


def rows_by_number(batches: list[SourceBatch]) -> dict[int, dict]:
    """Data-row number -> row dict, asserting numbering is contiguous from 1."""
    out: dict[int, dict] = {}
    expected = 1
    for b in batches:
        assert b.first_row == expected
        for i, row in enumerate(b.batch.to_pylist()):
            out[b.first_row + i] = row
        expected += b.batch.num_rows
    return out


def bad_by_number(batches: list[SourceBatch]) -> dict[int, str]:
    return {b.first_row + i: d for b in batches for i, d in b.bad_rows.items()}


# --------------------------------------------------------------------------- detect_format


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("data.csv", "csv"),
        ("DATA.CSV.GZ", "csv"),
        ("s3://bucket/dt=2024-01-01/part-0.parquet", "parquet"),
        ("gs://b/x.parquet.gz", "parquet"),
        ("events.json", "jsonl"),
        ("events.jsonl.gz", "jsonl"),
        ("https://host/archive.ndjson?sig=abc", "jsonl"),
    ],
)
def test_detect_format(name, fmt):
    assert detect_format(name) == fmt


@pytest.mark.parametrize("name", ["data.txt", "data.gz", "noext", "data.csv.zip"])
def test_detect_format_unsupported(name):
    with pytest.raises(FileLevelError) as ei:
        detect_format(name)
    assert ei.value.code == "unreadable"


# --------------------------------------------------------------------------- CSV header


def test_bom_is_stripped_from_first_header_name(tmp_path):
    path = write(tmp_path / "bom.csv", b"\xef\xbb\xbfidentity,name\r\n1,Ann\r\n")
    assert read_csv_header(path) == ["identity", "name"]
    (batch,) = read_all(path)
    assert batch.batch.schema.names == ["identity", "name"]
    assert batch.batch.to_pylist() == [{"identity": "1", "name": "Ann"}]


def test_quoted_header_name_after_bom(tmp_path):
    path = write(tmp_path / "q.csv", b'\xef\xbb\xbf"first\nname",b\n1,2\n')
    assert read_csv_header(path) == ["first\nname", "b"]


@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n\r\n", b"\xef\xbb\xbf", b",,\n", b" , \n1,2\n"])
def test_empty_file_or_header_without_names(tmp_path, data):
    path = write(tmp_path / "empty.csv", data)
    with pytest.raises(FileLevelError) as ei:
        read_all(path)
    assert ei.value.code == "unreadable"
    assert ei.value.message == EMPTY_FILE_MESSAGE


def test_duplicate_header_names(tmp_path):
    path = write(tmp_path / "dup.csv", b"id,email,id,phone,email\n1,a,1,p,b\n")
    with pytest.raises(FileLevelError) as ei:
        read_all(path)
    assert ei.value.code == "unreadable"
    assert "duplicate" in ei.value.message
    assert "'id'" in ei.value.message and "'email'" in ei.value.message
    assert "'phone'" not in ei.value.message


def test_empty_header_name(tmp_path):
    path = write(tmp_path / "hole.csv", b"id,,name\n1,2,3\n")
    with pytest.raises(FileLevelError) as ei:
        read_csv_header(path)
    assert ei.value.code == "unreadable"
    assert "empty column names at position(s) 2" in ei.value.message


def test_header_only_file_yields_nothing(tmp_path):
    path = write(tmp_path / "h.csv", b"a,b\n")
    assert read_all(path) == []
    assert count_rows(path) == 0


# --------------------------------------------------------------------------- CSV rows


def test_quoted_newline_and_embedded_quotes(tmp_path):
    path = write(tmp_path / "q.csv", b'id,note\n1,"line one\nline two"\n2,"say ""hi"", ok"\n3,\n')
    rows = rows_by_number(read_all(path))
    assert rows == {
        1: {"id": "1", "note": "line one\nline two"},
        2: {"id": "2", "note": 'say "hi", ok'},
        3: {"id": "3", "note": ""},  # empty cell is "", never null
    }


def test_wrong_field_count_rows_are_accounted_in_place(tmp_path):
    lines = [b"a,b,c,d,e"]
    for n in range(1, 21):
        if n == 5:
            lines.append(b"5,x,x,x,x,extra1,extra2")  # 7 fields
        elif n == 12:
            lines.append(b"12,only,three")
        elif n == 20:
            lines.append(b"20")
        else:
            lines.append(b"%d,b,c,d,e" % n)
    path = write(tmp_path / "fields.csv", b"\n".join(lines) + b"\n")

    batches = read_all(path, batch_rows=3, block_size=64)
    rows = rows_by_number(batches)
    assert sum(b.batch.num_rows for b in batches) == 20 == count_rows(path)
    assert all(b.batch.num_rows <= 3 for b in batches)
    assert [rows[n]["a"] for n in range(1, 21)] == [str(n) for n in range(1, 21)]
    assert bad_by_number(batches) == {
        5: "row 5: expected 5 fields, found 7",
        12: "row 12: expected 5 fields, found 3",
        20: "row 20: expected 5 fields, found 1",
    }
    # surplus fields are kept (joined into the last column), missing ones are ""
    assert rows[5] == {"a": "5", "b": "x", "c": "x", "d": "x", "e": "x,extra1,extra2"}
    assert rows[12] == {"a": "12", "b": "only", "c": "three", "d": "", "e": ""}


def test_every_row_bad(tmp_path):
    path = write(tmp_path / "bad.csv", b"a,b\n1\n2\n3,3,3\n")
    batches = read_all(path)
    assert sum(b.batch.num_rows for b in batches) == 3
    assert sorted(bad_by_number(batches)) == [1, 2, 3]


def test_unterminated_quote_at_end_is_a_bad_row(tmp_path):
    path = write(tmp_path / "u.csv", b'a,b\n1,2\n"3,4\n')
    batches = read_all(path)
    assert rows_by_number(batches)[1] == {"a": "1", "b": "2"}
    assert bad_by_number(batches) == {2: "row 2: expected 2 fields, found 1"}


def test_invalid_utf8_is_reported_per_row(tmp_path):
    data = b"id,name,city\n1,Ann,Oslo\n2,B\xffb,Rome\n3,Cy,Paris\n4,\xc3,\xe9\n"
    path = write(tmp_path / "enc.csv", data)
    batches = read_all(path)
    rows = rows_by_number(batches)
    assert len(rows) == 4
    assert rows[1] == {"id": "1", "name": "Ann", "city": "Oslo"}
    assert rows[3] == {"id": "3", "name": "Cy", "city": "Paris"}
    assert rows[2]["name"] == "B\ufffdb" and rows[2]["city"] == "Rome"
    assert bad_by_number(batches) == {
        2: "column 'name': invalid UTF-8",
        4: "column 'name': invalid UTF-8; column 'city': invalid UTF-8",
    }
    for b in batches:
        assert b.batch.schema.types == [pa.string()] * 3


def test_invalid_utf8_in_wrong_field_count_row(tmp_path):
    path = write(tmp_path / "both.csv", b"a,b,c\n1,2,3\n4,\xff\n")
    batches = read_all(path)
    assert bad_by_number(batches) == {2: "row 2: expected 3 fields, found 2; invalid UTF-8"}
    assert rows_by_number(batches)[2] == {"a": "4", "b": "\ufffd", "c": ""}


def test_latin1(tmp_path):
    path = write(tmp_path / "l1.csv", "nom;ville\nZoë;Besançon\n".encode("latin-1"))
    assert read_csv_header(path, encoding="latin-1", delimiter=";") == ["nom", "ville"]
    batches = read_all(path, encoding="latin-1", delimiter=";")
    assert rows_by_number(batches) == {1: {"nom": "Zoë", "ville": "Besançon"}}
    assert bad_by_number(batches) == {}


def test_latin1_bytes_read_as_utf8_are_row_errors(tmp_path):
    path = write(tmp_path / "l1.csv", "nom,ville\nAnn,Oslo\nZoë,Besançon\n".encode("latin-1"))
    batches = read_all(path)
    assert bad_by_number(batches) == {2: "column 'nom': invalid UTF-8; column 'ville': invalid UTF-8"}


def test_cp1252_undefined_byte_is_a_row_error(tmp_path):
    path = write(tmp_path / "w.csv", b"a,b\n\x80uro,1\nx\x81,2\n")
    batches = read_all(path, encoding="cp1252")
    rows = rows_by_number(batches)
    assert rows[1]["a"] == "\u20acuro"
    assert rows[2]["a"] == "x\ufffd"
    assert bad_by_number(batches) == {2: "column 'a': invalid cp1252"}


def test_header_not_decodable(tmp_path):
    path = write(tmp_path / "h.csv", b"n\xffme,b\n1,2\n")
    with pytest.raises(FileLevelError, match="header row is not valid UTF-8"):
        read_all(path)


def test_crlf_and_delimiter(tmp_path):
    path = write(tmp_path / "t.csv", b"a\tb\r\n1\t2\r\n\r\n3\t4\r\n")
    batches = read_all(path, delimiter="\t")
    assert rows_by_number(batches) == {1: {"a": "1", "b": "2"}, 2: {"a": "3", "b": "4"}}


def test_columns_subset(tmp_path):
    path = write(tmp_path / "c.csv", b"a,b,c\n1,2,3\n4,5\n")
    batches = read_all(path, columns=["c", "a"])
    assert batches[0].batch.schema.names == ["c", "a"]
    assert rows_by_number(batches) == {1: {"c": "3", "a": "1"}, 2: {"c": "", "a": "4"}}
    assert bad_by_number(batches) == {2: "row 2: expected 3 fields, found 2"}
    with pytest.raises(FileLevelError, match="'zz'"):
        read_all(path, columns=["a", "zz"])


def test_first_row_numbering_across_batches_and_blocks(tmp_path):
    body = b"".join(b'%d,"name %d\nsecond line",x\n' % (n, n) for n in range(1, 501))
    path = write(tmp_path / "n.csv", b"id,name,z\n" + body)
    batches = read_all(path, batch_rows=7, block_size=256)
    assert len(batches) > 70
    assert all(1 <= b.batch.num_rows <= 7 for b in batches)
    rows = rows_by_number(batches)
    assert len(rows) == 500
    assert all(rows[n]["id"] == str(n) and rows[n]["name"] == f"name {n}\nsecond line" for n in rows)


def test_chunking_matches_pyarrow_on_awkward_quoting(tmp_path):
    """Cutting the file into blocks ourselves must give exactly what pyarrow gives for the whole file."""
    rnd = random.Random(7)
    pieces = [
        "plain",
        '"quoted, with comma"',
        '"multi\nline"',
        '"esc ""q"""',
        'mid"quote',
        '"ab"cd',
        "",
        '"\r\n"',
    ]
    lines = ["a,b,c"]
    for _ in range(400):
        lines.append(",".join(rnd.choice(pieces) for _ in range(3)))
    path = write(tmp_path / "awk.csv", ("\n".join(lines) + "\n").encode())
    expected = pa_csv.read_csv(
        path,
        read_options=pa_csv.ReadOptions(block_size=1 << 20),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys("abc", pa.string())),
    ).to_pylist()
    for block_size in (16, 100, 4096):
        batches = read_all(path, block_size=block_size, batch_rows=50)
        assert bad_by_number(batches) == {}
        assert list(rows_by_number(batches).values()) == expected


def test_row_longer_than_limit(tmp_path, monkeypatch):
    import cdp_ingest.readers as readers

    monkeypatch.setattr(readers, "MAX_CSV_ROW_BYTES", 1000)
    path = write(tmp_path / "long.csv", b'a,b\n1,2\n"never closed,' + b"x" * 5000 + b"\n3,4\n")
    with pytest.raises(FileLevelError, match="longer than 1000 bytes") as ei:
        read_all(path, block_size=100)
    assert ei.value.code == "unreadable"


def test_gzip_csv_by_suffix_and_by_magic(tmp_path):
    data = gzip.compress(b"a,b\n1,2\n3,4\n")
    for name in ("x.csv.gz", "x.csv"):  # the second is gzipped without saying so
        path = write(tmp_path / name, data)
        assert rows_by_number(read_all(path)) == {1: {"a": "1", "b": "2"}, 2: {"a": "3", "b": "4"}}


def test_truncated_gzip_is_unreadable(tmp_path):
    path = write(tmp_path / "t.csv.gz", gzip.compress(b"a,b\n" + b"1,2\n" * 10000)[:-20])
    with pytest.raises(FileLevelError) as ei:
        read_all(path)
    assert ei.value.code == "unreadable"


def test_missing_file_is_no_data_file(tmp_path):
    with pytest.raises(FileLevelError) as ei:
        read_all(tmp_path / "nope.csv")
    assert ei.value.code == "no_data_file"


def test_reads_from_open_file_object_and_leaves_it_open(tmp_path):
    path = write(tmp_path / "f.csv", b"a,b\n1,2\n")
    with open(path, "rb") as f:
        batches = read_all(f, "csv")
        assert not f.closed
    assert rows_by_number(batches) == {1: {"a": "1", "b": "2"}}


class _NonSeekable(io.RawIOBase):
    """A pipe-like stream (no seek), like an HTTP body or an SFTP stream."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        chunk = self._data.read(min(len(b), 5))  # short reads on purpose
        b[: len(chunk)] = chunk
        return len(chunk)


def test_non_seekable_gzip_stream_and_jsonl():
    stream = _NonSeekable(gzip.compress(b"a,b\n1,2\n"))
    assert rows_by_number(read_all(stream, "csv")) == {1: {"a": "1", "b": "2"}}
    assert not stream.closed
    chunks = list(read_json_lines(_NonSeekable(gzip.compress(b'{"x": 1}\n{"x": 2}\n'))))
    assert [c.records for c in chunks] == [[{"x": 1}, {"x": 2}]]


def test_fsspec_urls(tmp_path):
    path = write(tmp_path / "u.csv", b"a\n1\n")
    assert rows_by_number(read_all(path.as_uri())) == {1: {"a": "1"}}
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/cdp-readers-test/x.csv.gz", gzip.compress(b"a\n2\n"))
    try:
        assert rows_by_number(read_all("memory://cdp-readers-test/x.csv.gz")) == {1: {"a": "2"}}
        with open_source("memory://cdp-readers-test/x.csv.gz") as f:
            assert f.read() == b"a\n2\n"
    finally:
        fs.rm("/cdp-readers-test", recursive=True)


# --------------------------------------------------------------------------- Parquet


def test_parquet_batches_and_columns(tmp_path):
    table = pa.table({"insert_id": [f"id-{n}" for n in range(25)], "n": list(range(25)), "v": [1.5] * 25})
    path = tmp_path / "p.parquet"
    pq.write_table(table, path, row_group_size=8)
    batches = read_all(path, batch_rows=10)
    assert [b.first_row for b in batches][0] == 1
    assert all(b.batch.num_rows <= 10 and b.bad_rows == {} for b in batches)
    assert sum(b.batch.num_rows for b in batches) == 25 == count_rows(path)
    assert [b.first_row for b in batches] == [
        1 + sum(x.batch.num_rows for x in batches[:i]) for i in range(len(batches))
    ]
    assert pa.Table.from_batches([b.batch for b in batches]).equals(table)  # types as stored
    sub = read_all(path, columns=["n"])
    assert sub[0].batch.schema.names == ["n"]
    with pytest.raises(FileLevelError, match="'missing'"):
        read_all(path, columns=["missing"])


def test_parquet_from_gzip_and_open_file(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), path)
    gz = write(tmp_path / "p.parquet.gz", gzip.compress(path.read_bytes()))
    assert [r["a"] for b in read_all(gz) for r in b.batch.to_pylist()] == [1, 2, 3]
    with open(path, "rb") as f:
        assert sum(b.batch.num_rows for b in read_all(f, "parquet")) == 3
        assert not f.closed


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_parquet_is_unreadable(tmp_path, damage):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"a": list(range(1000))}), good)
    data = b"not parquet at all" if damage == "garbage" else good.read_bytes()[:-100]
    path = write(tmp_path / "bad.parquet", data)
    with pytest.raises(FileLevelError) as ei:
        read_all(path)
    assert ei.value.code == "unreadable"
    assert "Parquet" in ei.value.message


# --------------------------------------------------------------------------- JSON lines


def test_json_lines_bad_lines_and_numbering(tmp_path):
    lines = [
        '{"type": "track", "event": "A"}',
        "{not json",
        "[1, 2]",
        '{"type": "identify"}',
        "",
        '{"type": "page"}',
    ]
    path = write(tmp_path / "e.jsonl", ("\n".join(lines) + "\n").encode())
    chunks = list(read_json_lines(path))
    assert all(isinstance(c, JsonChunk) for c in chunks)
    # the blank line 5 ends a chunk, so records[i] is always line first_row + i
    assert [(c.first_row, len(c.records)) for c in chunks] == [(1, 4), (6, 1)]
    first = chunks[0]
    assert first.records[0] == {"type": "track", "event": "A"}
    assert first.records[1] is None and first.records[2] is None
    assert first.raw[1] == "{not json"
    assert first.bad_rows[1].startswith("line 2: invalid JSON: ")
    assert first.bad_rows[2] == "line 3: not a JSON object"
    assert set(first.bad_rows) == {1, 2}
    assert count_rows(path) == 5


def test_json_lines_chunking_gzip_and_crlf(tmp_path):
    body = "\r\n".join(json.dumps({"n": n}) for n in range(1, 26)) + "\r\n"
    path = write(tmp_path / "e.ndjson.gz", gzip.compress(b"\xef\xbb\xbf" + body.encode()))
    chunks = list(read_json_lines(path, chunk_rows=10))
    assert [(c.first_row, len(c.records)) for c in chunks] == [(1, 10), (11, 10), (21, 5)]
    assert [r["n"] for c in chunks for r in c.records] == list(range(1, 26))
    assert all(c.bad_rows == {} for c in chunks)
    assert chunks[0].raw[0] == '{"n": 1}'


def test_json_line_nested_deeper_than_can_be_written_is_a_bad_line(tmp_path):
    """orjson reads 1024 levels but writes 254: a deeper record crashed the dataset sync that writes it back
    (raw or mapped) with a TypeError. It is a bad line now; the lines around it are read, and a record
    with many brackets that is not that deep is kept."""
    deep, shallow = "[" * 300 + "]" * 300, json.dumps([[1], [2]] * 200)
    path = write(tmp_path / "d.jsonl", f'{{"a": 1}}\n{{"p": {deep}}}\n{{"p": {shallow}}}\n'.encode())
    (chunk,) = read_json_lines(path)
    assert chunk.records[0] == {"a": 1} and chunk.records[1] is None and len(chunk.records[2]["p"]) == 400
    assert chunk.bad_rows == {1: "line 2: nested deeper than 254 levels"}


def test_json_line_invalid_utf8(tmp_path):
    path = write(tmp_path / "e.jsonl", b'{"a": "ok"}\n{"a": "\xff"}\n')
    (chunk,) = read_json_lines(path)
    assert chunk.records[0] == {"a": "ok"} and chunk.records[1] is None
    assert chunk.bad_rows[1].startswith("line 2: invalid JSON")
    assert "\ufffd" in chunk.raw[1]


def test_json_line_too_long(tmp_path, monkeypatch):
    import cdp_ingest.readers as readers

    monkeypatch.setattr(readers, "MAX_JSON_LINE_BYTES", 100)
    path = write(tmp_path / "e.jsonl", b'{"a": 1}\n{"big": "' + b"x" * 1000 + b'"}\n{"a": 3}\n')
    (chunk,) = read_json_lines(path)
    assert chunk.records == [{"a": 1}, None, {"a": 3}]
    assert chunk.bad_rows == {1: "line 2: line longer than 100 bytes"}


# --------------------------------------------------------------------------- bounded memory

_MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys
    from cdp_ingest.readers import read_batches
    import pyarrow.compute  # noqa: F401  (imported before the baseline: it is not per-file memory)

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = bad = 0
    for b in read_batches(sys.argv[1]):
        rows += b.batch.num_rows
        bad += len(b.bad_rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(rows, bad, (peak - baseline) * 1024)
    """
)


@pytest.mark.slow
def test_csv_streaming_memory_is_bounded(tmp_path):
    path = tmp_path / "big.csv"
    row = b'%d,John Smith,john.smith@example.com,+15551234567,"quoted, with comma",42.5,true\n'
    block = b"".join(row % n for n in range(40_000))  # ~3.3 MB
    repeats = (300 << 20) // len(block) + 1
    with open(path, "wb") as f:
        f.write(b"id,name,email,phone,note,amount,flag\n")
        for _ in range(repeats):
            f.write(block)
    assert path.stat().st_size >= 300 << 20

    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    rows, bad, growth = (int(x) for x in out)
    assert rows == 40_000 * repeats
    assert bad == 0
    assert growth < 200 << 20, f"peak RSS grew by {growth >> 20} MB while streaming a 300 MB file"
