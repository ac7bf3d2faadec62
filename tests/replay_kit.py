"""Test helpers for historical replay: Segment archives and the local contract receiver (by PID)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devservices import free_port

ROOT = Path(__file__).resolve().parents[1]
WRITE_KEY = "wk-test-123"
SOURCE_ID = "replay-src-1"


class Receiver:
    def __init__(self, port: int, proc: subprocess.Popen):
        self.port = port
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method="POST" if data else "GET")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def control(self, **cfg) -> None:
        self._call("/_control", cfg)

    def stats(self) -> dict:
        return self._call("/_stats")

    def messages(self) -> dict[str, dict]:
        return {m["messageId"]: m for m in self._call("/_messages")["messages"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)


def start_receiver(*, noop: bool = False, write_key: str = WRITE_KEY) -> Receiver:
    port = free_port()
    cmd = [sys.executable, str(ROOT / "scripts" / "replay_receiver.py"), "--port", str(port),
           "--write-key", write_key, "--source-id", SOURCE_ID] + (["--noop"] if noop else [])
    proc = subprocess.Popen(cmd, start_new_session=True)
    r = Receiver(port, proc)
    deadline = time.monotonic() + 20
    while True:
        try:
            r._call("/health")
            return r
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                r.stop()
                raise RuntimeError("replay receiver did not start") from None
            time.sleep(0.1)


def segment_messages(n: int, *, start: datetime = datetime(2021, 3, 1, tzinfo=UTC), users: int = 50,
                     prefix: str = "orig") -> list[dict]:
    """n archived messages as Segment stores them (original messageId, sentAt, projectId)."""
    out = []
    for i in range(n):
        ts = start + timedelta(minutes=37 * i)
        kind = ("track", "track", "track", "identify", "page")[i % 5]
        m = {"type": kind, "messageId": f"{prefix}-{i}", "projectId": "p1",
             "sentAt": (ts + timedelta(seconds=2)).isoformat().replace("+00:00", "Z"),
             "timestamp": ts.isoformat().replace("+00:00", "Z"), "anonymousId": f"anon-{i % users}",
             "context": {"library": {"name": "analytics.js"}}, "integrations": {"All": True}}
        if i % 3 == 0:
            m["userId"] = f"user-{i % users}"
        if kind == "track":
            m["event"] = "Order Completed" if i % 2 else "Product Viewed"
            m["properties"] = {"price": i % 100, "sku": f"sku-{i % 17}"}
        elif kind == "identify":
            m["traits"] = {"plan": "pro"}
        else:
            m["name"] = "Home"
        out.append(m)
    return out


def write_archive(path: Path, messages: list, *, gz: bool = True, raw_lines: list[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(m) + "\n" for m in messages) + "".join(line + "\n" for line in raw_lines)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv" / "bin" / "cdp-ingest"), "replay", *args], capture_output=True,
                          text=True, timeout=timeout)


def cli_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
