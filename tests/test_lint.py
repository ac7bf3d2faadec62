"""The project's own checks run in CI too: ruff on everything, mypy on the engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_is_clean():
    r = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:]


def test_mypy_on_the_engine_is_clean():
    r = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]


def test_engine_never_imports_airflow():
    offenders = [p.name for p in (ROOT / "include" / "cdp_ingest").rglob("*.py")
                 if "import airflow" in p.read_text() or "from airflow" in p.read_text()]
    assert offenders == []
