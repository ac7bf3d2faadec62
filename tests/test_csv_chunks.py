"""The CSV chunk planner (cdp_ingest.chunks) against the reader it has to agree with: every chunk read on
its own gives exactly the rows, row numbers and bad-row descriptions that reading the whole file gives."""

from __future__ import annotations

import gzip
import hashlib
import random
from pathlib import Path

import pytest

from cdp_ingest.chunks import DEFAULT_CHUNK_MB, Chunk, chunk_batches, chunk_bytes_from, plan_csv
from cdp_ingest.ledger import SourceUnit
from cdp_ingest.readers import read_batches


def rows_of(batches) -> list[tuple[int, tuple, str | None]]:
    out = []
    for sb in batches:
        for i, row in enumerate(sb.batch.to_pylist()):
            out.append((sb.first_row + i, tuple(row.values()), sb.bad_rows.get(i)))
    return out


def read_in_chunks(path: Path, chunk_bytes: int, block_size: int = 1 << 20):
    plan = plan_csv(path, chunk_bytes, block_size=block_size)
    assert plan.chunks[0].start == 0 and plan.chunks[-1].end == path.stat().st_size
    assert [c.start for c in plan.chunks[1:]] == [c.end for c in plan.chunks[:-1]], "chunks must tile the file"
    assert [c.index for c in plan.chunks] == list(range(len(plan.chunks)))
    rows = []
    for c in plan.chunks:
        got = rows_of(chunk_batches(path, c.to_dict(), header_end=plan.header_end, batch_rows=3))
        if plan.rows >= 0:
            assert len(got) == c.rows and (c.rows > 0 or len(plan.chunks) == 1), c
            assert not got or got[0][0] == c.first_row, c
        rows += got
    return plan, rows


TRICKY = (
    'id,name,note\r\n'
    '1,"Smith, Ann","line one\r\nline two"\r\n'
    '2,"say ""hi""",plain\r\n'
    '\r\n'                                   # a blank line: not a row
    '3,"",""\r\n'
    '4,"""quoted""\n,and a newline",x\r\n'   # doubled quotes next to a quoted newline
    '5,too,many,fields\r\n'                  # a bad row: kept in place, described with its file row number
    '6,last,"no trailing newline"'
)


@pytest.mark.parametrize("chunk_bytes", [1, 7, 30, 64, 10_000])
@pytest.mark.parametrize("block_size", [4, 11, 1 << 20])
def test_chunks_of_a_tricky_file_hold_every_row_once_with_its_file_row_number(tmp_path, chunk_bytes, block_size):
    path = tmp_path / "tricky.csv"
    path.write_bytes(TRICKY.encode())
    whole = rows_of(read_batches(path, batch_rows=3))
    plan, rows = read_in_chunks(path, chunk_bytes, block_size)
    assert rows == whole
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[1][1] == ("2", 'say "hi"', "plain") and rows[3][1] == ("4", '"quoted"\n,and a newline', "x")
    assert rows[4][2] == "row 5: expected 3 fields, found 4"
    if chunk_bytes < path.stat().st_size:
        assert plan.rows == 6 and plan.header_end == len("id,name,note\r\n")
    else:  # a file no bigger than one chunk is not scanned at all
        assert (plan.rows, plan.header_end, plan.chunks) == (-1, 0, [Chunk(0, 0, path.stat().st_size, 1, -1)])
    if chunk_bytes == 1:  # smaller than any row: one row per chunk, never a cut inside a quoted value
        assert [(c.first_row, c.rows) for c in plan.chunks] == [(i, 1) for i in range(1, 7)]
    # the plan fingerprints the file in the same pass (the ledger's unit)
    assert plan.unit == SourceUnit.from_file(str(path))
    assert plan.unit.checksum == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_bare_cr_line_ends_blank_lines_bom_and_a_trailing_newline(tmp_path):
    path = tmp_path / "cr.csv"
    path.write_bytes(b"\n\xef\xbb\xbfa,b\r1,\"x\ry\"\r\r2,3\r\n3,\xff\r")
    whole = rows_of(read_batches(path))
    for chunk_bytes in (1, 5, 100):
        plan, rows = read_in_chunks(path, chunk_bytes, block_size=3)
        assert rows == whole and [r[0] for r in rows] == [1, 2, 3]
    assert whole[0][1] == ("1", "x\ry") and "invalid UTF-8" in whole[2][2]


def test_random_files_agree_with_the_whole_file_reader(tmp_path):
    rnd = random.Random(4180)
    cells = ["a", "", " ", "x y", '"q""uo"', '"multi\nline"', '"cr\r\nlf"', '""', '"a,b"', "123", '"\n"']
    for trial in range(60):
        nl = rnd.choice(["\n", "\r\n", "\r"])
        lines = ["h1,h2,h3"]
        for _ in range(rnd.randint(0, 25)):
            width = 3 if rnd.random() > 0.05 else rnd.choice([2, 4])
            lines.append("" if rnd.random() < 0.08 else ",".join(rnd.choice(cells) for _ in range(width)))
        text = nl.join(lines) + (nl if rnd.random() < 0.6 else "")
        path = tmp_path / f"r{trial}.csv"
        path.write_bytes(text.encode())
        whole = rows_of(read_batches(path, batch_rows=3))
        for chunk_bytes in (1, 13, 40):
            plan, rows = read_in_chunks(path, chunk_bytes, block_size=rnd.choice([5, 17, 1 << 20]))
            assert rows == whole, (text, chunk_bytes)
            assert plan.rows == len(whole) or len(text) <= chunk_bytes


def test_quotes_outside_rfc_4180_places_and_gzip_are_read_as_one_chunk(tmp_path):
    stray = tmp_path / "stray.csv"
    stray.write_text('sku,title\n1,TV 55" screen\n2,"ok"\n3,x\n')  # a literal quote to the reader
    plan, rows = read_in_chunks(stray, 1)
    assert len(plan.chunks) == 1 and "RFC 4180" in (plan.note or "")
    assert [r[1][1] for r in rows] == ['TV 55" screen', "ok", "x"]
    gz = tmp_path / "data.csv.gz"
    gz.write_bytes(gzip.compress(b"a,b\n1,2\n3,4\n"))
    plan = plan_csv(gz, 1)
    assert [(c.start, c.end) for c in plan.chunks] == [(0, gz.stat().st_size)] and plan.note == "gzipped"
    assert rows_of(chunk_batches(gz, plan.chunks[0], header_end=plan.header_end)) == [
        (1, ("1", "2"), None), (2, ("3", "4"), None)]


def test_an_unterminated_quote_stays_in_the_last_chunk(tmp_path):
    path = tmp_path / "open.csv"
    path.write_text('a,b\n1,2\n3,"never closed\n4,5\n6,7\n')
    whole = rows_of(read_batches(path))
    plan, rows = read_in_chunks(path, 1)
    assert rows == whole and len(rows) == 2 and plan.chunks[-1].first_row == 2 and "unterminated" in rows[1][2]


def test_header_only_and_empty_files_are_one_chunk(tmp_path):
    for text in ("a,b\n", "a,b", ""):
        path = tmp_path / "h.csv"
        path.write_text(text)
        plan = plan_csv(path, 1)
        assert [(c.start, c.end, c.first_row) for c in plan.chunks] == [(0, len(text), 1)]


def test_chunk_size_setting(monkeypatch):
    monkeypatch.delenv("CDP_CSV_CHUNK_MB", raising=False)
    assert chunk_bytes_from(None) == DEFAULT_CHUNK_MB << 20
    assert chunk_bytes_from(64) == 64 << 20
    assert chunk_bytes_from("0.001") == 1048
    monkeypatch.setenv("CDP_CSV_CHUNK_MB", "2")
    assert chunk_bytes_from(64) == 2 << 20
    with pytest.raises(ValueError):
        chunk_bytes_from(-1) if monkeypatch.delenv("CDP_CSV_CHUNK_MB") is None else None
    assert Chunk(**Chunk(1, 10, 20, 3, 2).to_dict()) == Chunk(1, 10, 20, 3, 2)


def test_coarsen_joins_neighbouring_chunks_and_fit_map_length_keeps_within_the_limit(tmp_path):
    from cdp_ingest.chunks import coarsen, fit_map_length

    path = tmp_path / "tricky.csv"
    path.write_bytes(TRICKY.encode())
    plan = plan_csv(path, 1)
    assert len(plan.chunks) == 6
    whole = rows_of(read_batches(path, batch_rows=3))
    for n in (1, 2, 4, 6, 9):
        joined = coarsen(plan.chunks, n)
        assert len(joined) == min(n, 6) if n != 4 else len(joined) <= 4
        assert [c.index for c in joined] == list(range(len(joined)))
        assert [c.start for c in joined[1:]] == [c.end for c in joined[:-1]] and joined[-1].end == plan.chunks[-1].end
        rows = [r for c in joined for r in rows_of(chunk_batches(path, c, header_end=plan.header_end, batch_rows=3))]
        assert rows == whole and sum(c.rows for c in joined) == 6
    assert fit_map_length([3, 2, 1], 1024) == [3, 2, 1]
    assert fit_map_length([900, 300, 1], 1024) == [723, 300, 1]
    assert fit_map_length([600, 600, 600, 5], 1024) == [339, 339, 339, 5]
    with pytest.raises(ValueError):
        fit_map_length([1] * 5, 4)
