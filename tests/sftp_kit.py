"""Helpers for the SFTP import tests: one isolated client account per test against the real services.

Each ``Account`` has its own SFTP folder, index prefix, client email and DAG (``sftp_import_<name>``),
uploads with the real OpenSSH ``sftp`` client (key auth, host key checked against the harness's
known_hosts) and reads back what the client would see: emails in the SMTP sink's Maildir, webhook
posts, files in the folder, plus the store and the activity log.
"""

from __future__ import annotations

import json
import mailbox
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

import yaml

from cdp_ingest.store import Store, make_client

ROOT = Path(__file__).resolve().parents[1]
FAST = {  # test timings: no settling, short waits, the sensor pokes in-process every second
    "settle_seconds": 0,
    "data_file_grace_seconds": 3,
    "poke_interval": 1,
    "sensor_timeout": 8,
    "sensor_mode": "poke",
}


def sftp_command(sftp_info: dict, port: int) -> list[str]:
    return ["sftp", "-b", "-", "-P", str(port), "-i", sftp_info["private_key"], "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"UserKnownHostsFile={sftp_info['known_hosts']}", f"{sftp_info['login']}@127.0.0.1"]


def sftp_batch(sftp_info: dict, port: int, commands: list[str]) -> str:
    r = subprocess.run(sftp_command(sftp_info, port), input="\n".join(commands) + "\n", text=True,
                       capture_output=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"sftp failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


def manifest_bytes(file_name: str, kind: str, email: str, columns: dict | None = None) -> bytes:
    doc: dict[str, Any] = {"fileName": file_name, "type": kind, "clientEmail": email}
    if columns is not None:
        doc["columns"] = columns
    return json.dumps(doc, indent=2).encode()


@dataclass
class Account:
    name: str
    prefix: str
    client_email: str
    contact_email: str
    sftp_info: dict
    sftp_port: int
    opensearch_url: str
    maildir: str
    inbox: str
    work: Path
    settings: dict = field(default_factory=dict)

    @property
    def dag_id(self) -> str:
        return f"sftp_import_{self.name}"

    @property
    def folder(self) -> Path:
        """The account folder on the SFTP server's disk (for assertions only; uploads go over SFTP)."""
        return Path(self.sftp_info["landing"]) / self.name

    @property
    def store(self) -> Store:
        return Store(make_client(self.opensearch_url), prefix=self.prefix)

    # ---- client side -------------------------------------------------------------------------------
    def write(self, name: str, content: str | bytes) -> Path:
        p = self.work / "outbox" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return p

    def upload(self, *names: str, gap: float = 0.0) -> None:
        """``put`` each file of the outbox, in this order, with the real sftp client. ``gap`` seconds
        between files give distinct upload times (SFTP times have one-second resolution)."""
        for i, name in enumerate(names):
            if i and gap:
                time.sleep(gap)
            sftp_batch(self.sftp_info, self.sftp_port,
                       [f"-mkdir {self.name}", f"cd {self.name}", f"lcd {self.work / 'outbox'}", f"put {name}"])

    def emails(self, to: str | None = None) -> list[Message]:
        box = mailbox.Maildir(self.maildir, create=False)
        wanted = {to} if to else {self.client_email, self.contact_email}
        # Maildir keys start "<seconds>.M<microseconds>P<pid>": delivery order
        keys = sorted(box.keys(), key=lambda k: (int(k.split(".")[0]), int(k.split(".")[1][1:].split("P")[0])))
        return [m for m in (box[k] for k in keys) if m["To"] in wanted]

    def subjects(self, to: str | None = None) -> list[str]:
        return [" ".join(str(m["Subject"]).split()) for m in self.emails(to)]

    def hooks(self, event: str | None = None) -> list[dict]:
        out = []
        for p in sorted(Path(self.inbox).glob("*.json")):
            rec = json.loads(p.read_text())
            body = rec["body"]
            if body.get("account") == self.name or body.get("dag_id") == self.dag_id:
                if event is None or body.get("event") == event:
                    out.append(body)
        return out

    def activity(self) -> list[dict]:
        st = self.store
        st.refresh([f"{self.prefix}sftp-activity"])
        resp = st._request("POST", f"/{self.prefix}sftp-activity/_search", body={"size": 100},
                           ok_statuses=(404,))
        return [h["_source"] for h in (resp or {}).get("hits", {}).get("hits", [])]

    def entry(self, manifest: str) -> dict:
        found = [e for e in self.activity() if e.get("manifest") == manifest]
        assert len(found) == 1, found
        return found[0]

    def remote_files(self) -> list[str]:
        base = self.folder
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    # ---- Airflow side --------------------------------------------------------------------------------
    def dag(self):
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert not bag.import_errors, bag.import_errors
        return bag.dags[self.dag_id]

    def run(self, logical_date: datetime | None = None, **kwargs: Any):
        """One DAG run with ``dag.test()``; returns the DagRun.

        The deadline alerts are taken off the DAG first: Airflow 3.3.2's ``dag.test()`` evaluates a
        successful run's ``dag.deadline`` as if it held the ids of synced DeadlineAlert rows, but its
        round-tripped DAG holds the alert definitions, so the run crashes in
        ``DeadlineAlertModel.get_by_id`` ('dict' object has no attribute 'hex'). Deadlines are not
        evaluated by ``dag.test()`` anyway; test_sftp_notifiers.py covers them.
        """
        dag = self.dag()
        dag.deadline = None
        return dag.test(logical_date=logical_date or datetime.now(UTC), **kwargs)


def make_account(tmp_path: Path, monkeypatch, *, opensearch, sftp_server, smtp_sink, webhook,
                 connection_extra: dict | None = None, **settings: Any) -> Account:
    tag = uuid.uuid4().hex[:8]
    name = f"acct_{tag}"
    prefix = f"t-sftp-{tag}-"
    acc = Account(name=name, prefix=prefix, client_email=f"client-{tag}@example.com",
                  contact_email=f"ops-{tag}@example.com", sftp_info=sftp_server.info, sftp_port=sftp_server.port,
                  opensearch_url=opensearch.info["url"], maildir=smtp_sink.info["maildir"],
                  inbox=webhook.info["inbox"], work=tmp_path, settings={**FAST, **settings})
    config = tmp_path / "sftp_accounts.yaml"
    config.write_text(yaml.safe_dump({"accounts": {name: {"folder": name, "contact_email": acc.contact_email,
                                                          **acc.settings}}}))
    monkeypatch.setenv("CDP_SFTP_ACCOUNTS", str(config))
    monkeypatch.setenv("CDP_STAGING_DIR", str(tmp_path / "staging"))
    conn = json.loads(os.environ["AIRFLOW_CONN_CDP_OPENSEARCH"])
    conn["extra"] = {**conn.get("extra", {}), "index_prefix": prefix, **(connection_extra or {})}
    monkeypatch.setenv("AIRFLOW_CONN_CDP_OPENSEARCH", json.dumps(conn))
    sftp_batch(sftp_server.info, sftp_server.port, [f"-mkdir {name}"])
    return acc
