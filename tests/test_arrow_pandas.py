"""``cdp_ingest.arrow``: the engine's transforms never import pandas (pyarrow would, ~35 MB per task
process, only to ask whether an input is a pandas object), and pandas still works when asked for.

Each check runs in a fresh interpreter: the test process itself may already hold pandas. No services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from test_partition_engine import event, write

from cdp_ingest import sample

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    from datetime import UTC, datetime
    from pathlib import Path
    from cdp_ingest.mapping import Mapper, Mapping
    from cdp_ingest.partitions import PartitionMapper, read_partition_file
    from cdp_ingest.pipeline import transform_unit
    from cdp_ingest.readers import read_batches
    import pyarrow as pa
    import pyarrow.compute as pc

    base = Path(sys.argv[1])
    mappings = Path(sys.argv[2])
    now = datetime(2026, 11, 23, tzinfo=UTC)
    out = {}
    for kind in ("events", "profiles"):  # the columnar CSV mappers (fastmap)
        mapper = Mapper(Mapping.load(mappings / f"demo-{kind}.yaml"), unit_key="u", now=now)
        r = transform_unit(read_batches(str(base / f"{kind}.csv")), mapper.map_row, prefix="t-", import_id="i",
                           staged_path=base / kind / "staged.parquet", error_path=base / kind / "errors.csv")
        out[kind] = [r.accepted, r.rejected]
    pm = PartitionMapper(source_id="s", now=now)  # the columnar partition mapper
    r = transform_unit(read_partition_file(str(base / "part.parquet")), pm.map_row, prefix="t-", import_id="i",
                       staged_path=base / "part" / "staged.parquet", error_path=base / "part" / "errors.csv")
    out["partition"] = [r.accepted, r.rejected]
    out["untyped"] = pc.if_else(pa.array([True, False]), "a", "b").to_pylist()  # inference, scalars
    out["pandas_after_engine"] = "pandas" in sys.modules
    df = pa.table({"a": [1, None]}).to_pandas()  # an explicit conversion still gets pandas
    out["to_pandas"] = [type(df).__name__, "pandas" in sys.modules, pa.Table.from_pandas(df).num_rows]
    print(json.dumps(out))
""")


def run(tmp_path: Path, **env: str) -> dict:
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(ROOT / "include" / "cdp_ingest" / "mappings")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "include"), **env})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def inputs(tmp_path: Path) -> None:
    sample.write_profiles(tmp_path / "profiles.csv", 300)
    sample.write_events(tmp_path / "events.csv", 2000, profiles=300, sessions=100)
    write(tmp_path / "part.parquet", [event(i) for i in range(500)] + [event(900, event_key="")])


def test_engine_transforms_do_not_import_pandas(tmp_path):
    inputs(tmp_path)
    out = run(tmp_path, CDP_ARROW_PANDAS="")
    assert out["events"][0] > 1900 and out["events"][1] > 0  # the sample has bad rows: both paths ran
    assert out["profiles"][0] > 280 and out["profiles"][1] > 0
    assert out["partition"] == [500, 1]
    assert out["untyped"] == ["a", "b"]
    assert out["pandas_after_engine"] is False
    assert out["to_pandas"] == ["DataFrame", True, 2]


def test_opt_out_leaves_pyarrow_alone(tmp_path):
    inputs(tmp_path)
    out = run(tmp_path, CDP_ARROW_PANDAS="1")
    assert out["partition"] == [500, 1]
    assert out["pandas_after_engine"] is True  # pyarrow's own probe imported it
