"""Test helpers for historical replay: Segment archives and the local contract receiver (by PID)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from replay_receiver import Receiver, start_receiver  # noqa: F401 - re-exported for the tests

from cdp_ingest.sample import segment_messages  # noqa: F401 - re-exported for the tests
from cdp_ingest.sample import write_segment_archive as write_archive  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
WRITE_KEY = "replay-write-key"
SOURCE_ID = "replay-source"


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "cdp-ingest"), "replay", *args], capture_output=True,
                          text=True, timeout=timeout)


def cli_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
