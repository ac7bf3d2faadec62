"""The validate step checks the staged file itself: readable, the stage schema, exactly the accepted
rows, and the reject ratio. Each check is tripped with a tampered staged file or a ratio over the limit."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cdp_ingest import sample
from cdp_ingest.mapping import Mapper, Mapping
from cdp_ingest.pipeline import STAGE_SCHEMA, transform_unit
from cdp_ingest.readers import read_batches
from cdp_ingest_airflow.operators import validate_stage

MAPPINGS = Path(__file__).resolve().parents[1] / "include" / "cdp_ingest" / "mappings"
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


@pytest.fixture
def staged(tmp_path) -> dict:
    src = tmp_path / "events.csv"
    exp = sample.write_events(src, 600, profiles=20, sessions=10)
    m = Mapping.load(MAPPINGS / "demo-events.yaml")
    t = transform_unit(read_batches(src), Mapper(m, unit_key="u", now=NOW).map_row, prefix="v-", import_id="imp",
                       staged_path=tmp_path / "w" / "staged.parquet", error_path=tmp_path / "w" / "errors.csv",
                       flush_rows=100)
    assert (t.rows_in, t.rejected) == (600, exp.bad)
    return {**t.to_dict(), "status": "staged", "path": str(src), "kind": "event"}


def test_a_good_stage_passes_and_a_skipped_unit_is_not_checked(staged):
    assert validate_stage(staged) == staged
    assert validate_stage({"status": "skipped", "path": "x", "rows_in": 0}) == {"status": "skipped", "path": "x",
                                                                                  "rows_in": 0}


def test_staged_file_with_rows_missing_or_added(staged):
    table = pq.read_table(staged["staged"])
    pq.write_table(table.slice(0, table.num_rows - 7), staged["staged"])  # a lost row group's worth
    with pytest.raises(ValueError, match=rf"holds {table.num_rows - 7} rows, but the transform accepted "
                                         rf"{staged['accepted']}"):
        validate_stage(staged)
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), staged["staged"])
    with pytest.raises(ValueError, match="holds .* rows, but the transform accepted"):
        validate_stage(staged)


def test_staged_file_with_another_schema(staged):
    table = pq.read_table(staged["staged"])
    pq.write_table(table.drop_columns(["orig"]), staged["staged"])
    with pytest.raises(ValueError, match=r"does not have the stage schema \(found ref: int64, .*body: binary\)"):
        validate_stage(staged)
    as_text = table.set_column(4, pa.field("body", pa.string()), table.column("body").cast(pa.string()))
    pq.write_table(as_text, staged["staged"])
    with pytest.raises(ValueError, match="does not have the stage schema .*body: string"):
        validate_stage(staged)
    pq.write_table(table.cast(STAGE_SCHEMA), staged["staged"])  # the same schema again (no metadata): fine
    assert validate_stage(staged)["accepted"] == table.num_rows


def test_staged_file_missing_or_not_parquet(staged):
    data = Path(staged["staged"]).read_bytes()
    Path(staged["staged"]).write_bytes(data[: len(data) // 2])  # truncated: no footer
    with pytest.raises(ValueError, match="the staged file .* cannot be read"):
        validate_stage(staged)
    Path(staged["staged"]).unlink()
    with pytest.raises(ValueError, match="the staged file .* cannot be read"):
        validate_stage(staged)
    with pytest.raises(ValueError, match="named no staged file"):
        validate_stage({**staged, "staged": None})


def test_counts_and_reject_ratio(staged):
    with pytest.raises(ValueError, match=r"rows_in=601 != accepted"):
        validate_stage({**staged, "rows_in": 601})
    ratio = staged["rejected"] / staged["rows_in"]  # 3 of 600 rows are bad in the sample
    assert validate_stage(staged, max_reject_ratio=ratio) == staged  # at the limit: accepted
    with pytest.raises(ValueError, match=rf"{staged['rejected']} of 600 rows rejected, above the 0% limit"):
        validate_stage(staged, max_reject_ratio=ratio / 2)
