"""Random time cells for the columnar mappings' tests: ISO 8601 forms Arrow and ``datetime.fromisoformat``
read alike and ones they do not (a date past its month's end, a 7-digit fraction, a zone after a date
alone, a leap second, lower-case ``z``, other separators), epoch seconds in and out of range, and text."""

from __future__ import annotations

import random

DATES = ["2025-11-01", "2025-12-31", "2026-01-01", "1970-01-01", "1969-12-31", "2999-12-31", "3000-01-01",
         "2024-02-29", "2025-02-29", "2025-04-31", "2025-13-01", "2025-00-10", "0000-01-01", "0001-01-01",
         "0999-12-31", "1000-01-01", "9999-12-31", "1960-01-10"]
TIMES = ["", "T10:00:00", " 10:00:00", "T00:00:00", "T23:59:59", "T24:00:00", "T23:59:60", "T10:00", "t10:00:00",
         "X10:00:00", "T1:00:00"]
FRACTIONS = ["", ".5", ".123456", ".000000", ".0", ".1234567", ",5", "."]
ZONES = ["", "Z", "z", "+00:00", "-00:00", "+01:30", "-05:00", "+23:59", "-23:59", "+24:00", "+0100", "+01",
         "+01:00:30", " UTC"]
EPOCHS = ["0", "1", "1761955200", "1764547199", "1764547200", "32503680000", "32503680001", "1761955200.5",
          "99999999999", "999999999999", "-1", "\uff11\uff12\uff13", "1761955200 "]
OTHERS = ["", " ", "$D_1761955200", "$D_86400", "x", "\u00a02025-11-01T10:00:00", "2025-11-01T10:00:00Z ",
          "\u0662\u0660\u0662\u0665-11-01", "20251101T100000", "2025-W44-1", "2025-305"]


def time_cell(rnd: random.Random, clean_share: float = 0.4) -> str:
    """A time cell: an epoch (10 %), other text (5 %), an ISO form both read in range (``clean_share``), or
    an ISO-like one from every form, odd ones included."""
    shape = rnd.random()
    if shape < 0.1:
        return rnd.choice(EPOCHS)
    if shape < 0.15:
        return rnd.choice(OTHERS)
    clean = shape < 0.15 + clean_share
    date = rnd.choice(DATES[:4] if clean else DATES)
    time = rnd.choice(TIMES[:5] if clean else TIMES)
    fraction = rnd.choice(FRACTIONS[:5] if clean else FRACTIONS) if time else ""
    zone = rnd.choice(ZONES[:9] if clean and time else ZONES)
    return date + time + fraction + zone


# Cells at the edges of what the columnar path takes: the event window (1970..3000 in UTC) to the
# microsecond, the DATETIME window (years 1000..9998), zones that cross them, and look-alikes.
EDGES = ["3000-01-01T00:00:00", "3000-01-01T00:00:00.5", "3000-01-01T00:59:00+01:00", "2999-12-31T23:59:59.999999",
         "1970-01-01T00:00:00", "1970-01-01", "1970-01-01T00:30:00+01:00", "1969-12-31T23:30:00-01:00",
         "2025-11-01T00:30:00+01:00", "2025-11-01T10:00:00z", "2025-11-01Z", "2025-11-01+01:00", "2025-11-01 10:00",
         "0999-12-31T23:59:59", "1000-01-01T00:00:00", "1000-01-01T00:00:00+00:01", "0999-12-31T23:59:00-00:01",
         "9998-12-31T23:59:59.999999", "9999-01-01T00:00:00", "9998-12-31T23:59:00-00:01", "9999-12-31T23:59:59",
         "32503680000", "32503680001", "0", "00", "01761955200", "2025-11-01T10:00:00.000001",
         "1969-12-31T23:59:59.999999"]


def epoch_ms_cell(rnd: random.Random) -> str:
    """Epoch milliseconds: mostly whole and before 2**33 s (where ``float(ms) / 1000`` is exact to the
    microsecond), and at that bound, past it up to year 3000 and beyond, fractional, signed or padded."""
    shape = rnd.random()
    bound = 2**33 * 1000
    if shape < 0.6:
        return str(rnd.randrange(0, bound))
    if shape < 0.7:
        return str(bound + rnd.randrange(-3, 3))
    if shape < 0.8:
        return str(rnd.randrange(bound, 32503680000000 + 5))
    return rnd.choice(["0", "32503680000000", "32503679999999", "32503680000001", "1761955200123.5", "-1",
                       " 1761955200123", "01761955200123", "1e12", "", "$D_1761955200", "99999999999999"])
