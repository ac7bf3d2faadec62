"""Deterministic sample data for the demo, the tests and the benchmarks.

``write_profiles``, ``write_sessions`` and ``write_events`` write CSVs that fit the bundled demo
mappings (``mappings/demo-*.yaml``), with a known share of bad rows and duplicates so that every
run exercises the error file and the accounting. Each returns the expected counts.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Linus"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton"]
COUNTRIES = ["PL", "DE", "FR", "US", "BR", "JP", "IN", "ZA"]
EVENTS = ["page-view", "product-view", "add-to-cart", "purchase", "search"]
BASE_TS = 1_761_955_200  # 2025-11-01T00:00:00Z: events span two months to exercise monthly indices


@dataclass
class Expected:
    rows: int
    bad: int
    duplicates: int

    @property
    def good(self) -> int:
        return self.rows - self.bad - self.duplicates


def email(i: int) -> str:
    return f"customer{i}@example.com"


def write_profiles(path: str | Path, n: int, *, bad_every: int = 50, seed: int = 7) -> Expected:
    rnd = random.Random(seed)
    bad = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["email", "first_name", "last_name", "phone", "birthday", "loyalty_points", "newsletter",
                    "country", "segment"])
        for i in range(n):
            mail = email(i)
            points = str(rnd.randint(0, 5000))
            if bad_every and i % bad_every == bad_every - 1:
                bad += 1
                if (i // bad_every) % 2:
                    mail = f"not-an-email-{i}"
                else:
                    points = "lots"
            w.writerow([mail, FIRST[i % len(FIRST)], LAST[i % len(LAST)], f"+4930{1000000 + i}",
                        f"19{60 + i % 40}-0{1 + i % 9}-1{i % 10}", points, rnd.choice(["Y", "N", "true", "0"]),
                        COUNTRIES[i % len(COUNTRIES)], rnd.choice(["gold", "silver", "new"])])
    return Expected(n, bad, 0)


def write_sessions(path: str | Path, n: int, *, profiles: int, bad_every: int = 40, seed: int = 11) -> Expected:
    rnd = random.Random(seed)
    bad = 0
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["session_id", "email", "started_at", "channel", "device", "os", "browser", "utm_source",
                    "utm_campaign"])
        for i in range(n):
            started = f"2025-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z"
            if bad_every and i % bad_every == bad_every - 1:
                bad += 1
                started = "yesterday-ish"
            w.writerow([f"s-{i:08d}", email(rnd.randrange(profiles)), started, "web",
                        rnd.choice(["mobile", "desktop", "tablet"]), rnd.choice(["Android", "iOS", "Linux"]),
                        rnd.choice(["Chrome", "Firefox", "Safari"]), rnd.choice(["google", "newsletter", ""]),
                        rnd.choice(["black-friday", "spring", ""])])
    return Expected(n, bad, 0)


def write_events(path: str | Path, n: int, *, profiles: int, sessions: int, bad_every: int = 200,
                 dup_every: int = 100, seed: int = 13) -> Expected:
    """Events over 2025-11 and 2025-12; every ``dup_every``-th row repeats an earlier insert_id."""
    rnd = random.Random(seed)
    bad = dups = 0
    span = 61 * 86400
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write("insert_id,ts,event,email,session_id,page,product_id,price,quantity,referrer\n")
        for i in range(n):
            insert_id = f"e-{i:010d}"
            event = EVENTS[i % len(EVENTS)]
            price = f"{rnd.randint(100, 99999) / 100:.2f}"
            if dup_every and i % dup_every == dup_every - 1:
                dups += 1
                insert_id = f"e-{i - 1:010d}"
            elif bad_every and i % bad_every == bad_every // 2:
                bad += 1
                if (i // bad_every) % 2:
                    event = ""
                else:
                    price = "free"
            fh.write(f"{insert_id},{BASE_TS + (i * 7919) % span},{event},{email(rnd.randrange(profiles))},"
                     f"s-{rnd.randrange(sessions):08d},/p/{i % 500},sku-{i % 1000},{price},{1 + i % 5},"
                     f"{rnd.choice(['google', 'direct', 'mail'])}\n")
    return Expected(n, bad, dups)


# ---- Segment archives (historical replay, SPEC §5) ------------------------------------------------------
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


def write_segment_archive(path: Path, messages: list, *, gz: bool = True,
                          raw_lines: tuple[str, ...] | list[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(m) + "\n" for m in messages) + "".join(line + "\n" for line in raw_lines)
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


