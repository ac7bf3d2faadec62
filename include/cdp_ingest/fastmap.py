"""Columnar event, session and profile mapping: a whole CSV batch mapped and serialised with Arrow compute.

``Mapper.map_row`` interprets the mapping field by field for every row and builds a dict that
orjson serialises; at ~16 µs per row that Python work was the engine's largest share of CPU, taken
from the OpenSearch node it shares the machine with. ``EventBatchMapper`` compiles an event
mapping once into a JSON template and fills it for a whole batch with Arrow kernels
(validation by regular expressions and casts, escaping, element-wise concatenation), so a clean
row costs no per-row interpretation at all.

It only takes what it can reproduce exactly; everything else goes to ``map_row``:
- mappings: kind ``event`` or ``session`` with ``time.format`` ``epoch``, ``epoch_ms``, ``iso`` or a strftime
  pattern ``strftime_regex`` reads (numeric fields, English month and weekday names, ``%z``), ``derived``
  templates of plain ``{column}`` fields, defaults (constants, objects and lists too), targets under the
  free-form bags only (properties, traits, context, ...) or a plain ``metadata`` value (``metadata.channel``),
  no target inside another, and the targets under any one new object listed together (so keys keep the
  order ``map_row`` gives them). Otherwise ``compile`` returns None.
  ``validate`` fields (e-mail/phone: Arrow regexes), ``DATETIME`` fields (``_datetime_literal``) and
  ``identity_normalize`` (once per distinct value) are taken.
- rows: any cell the fast path cannot prove clean (a time that is not epoch seconds (a fraction: up to 6
  digits, before 2242), whole epoch milliseconds before 2242, ISO 8601 in a form Arrow reads like
  ``datetime.fromisoformat`` or the zero-padded form of the strftime pattern, in range;
  an id with surrounding whitespace or non-ASCII, a typed value not in its plain form, a ``$D_`` cell, a
  control character, a required cell that is empty, a too-long identity, a reader error) sends that row
  alone through ``map_row``, which maps it or rejects it with its usual message.
The documents are byte for byte what ``map_row`` + ``pipeline.mapped_to_stage_row`` produce (tests
compare both paths on the same rows).

``ProfileBatchMapper`` does the same for profile mappings (see its docstring): the operations
``map_row`` gives, byte for byte, plus the whole document a new profile gets, which the store's merge
writes as it is when the profile is not stored yet (tests/test_fastmap_profiles.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection
from datetime import date
from typing import Any

import numpy as np
import orjson
import pyarrow.compute as pc

from cdp_ingest.arrow import pa
from cdp_ingest.coerce import FALSE_WORDS, INT32_MAX, INT32_MIN, MAX_EPOCH, TRUE_WORDS
from cdp_ingest.documents import NOW_MARK, SKELETONS, deterministic_id
from cdp_ingest.errors import RowError
from cdp_ingest.mapping import _IDENTITY_PREFIX, PHONE_STRIP_CHARS, Mapper, _safe_key

# Event and session skeleton keys that are empty objects no later step of map_row touches.
FREE_ROOTS = frozenset({"properties", "traits", "context", "device", "os", "app", "utm", "hit", "data", "aux",
                        "request", "config"})
SESSION_ROOTS = frozenset({"properties", "traits", "context", "device", "os", "app", "utm", "aux"})
_NEEDS_ESCAPE = r'["\\]'
_CONTROL = r"[\x00-\x1f]"
_INT_RE = r"^-?[0-9]{1,18}$"
_FLOAT_RE = r"^-?[0-9]{1,15}(\.[0-9]{1,15})?$"
_EPOCH_RE = r"^[0-9]{1,11}$"
_ID_RE = r"^[!-~]([ -~]{0,510}[!-~])?$"  # printable ASCII, no surrounding space, 1..512 characters
_MARK = "@@cdp-slot-%d@@"
_SLOT_RE = re.compile(r'"@@cdp-slot-(\d+)@@"')
_NULL = pa.scalar(None, pa.string())
PROFILE_ID_CACHE = 200_000


def value_bytes(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(the UTF-8 bytes of a string array's values, its offsets into them), without copying."""
    offsets = np.frombuffer(values.buffers()[1], np.int32)[values.offset:values.offset + len(values) + 1]
    data = values.buffers()[2]
    return (np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)), offsets


def _matches(arr: pa.Array, regex: str, lo: int, hi: int, max_len: int) -> pa.Array:
    """``pc.match_substring_regex(arr, regex)`` for a ``regex`` that accepts every value of 1..``max_len``
    bytes, each in ``lo..hi``: when all non-empty values are such, the answer is "not empty", found with
    NumPy (the usual batch: digits, ids); otherwise the regex runs (~0.07 µs per value each)."""
    if isinstance(arr, pa.Array) and arr.type == pa.string() and not arr.null_count and len(arr):
        data, offsets = value_bytes(arr)
        used = data[offsets[0]:offsets[-1]]
        sizes = np.diff(offsets)
        if (not len(used) or int(used.min()) >= lo and int(used.max()) <= hi) and int(sizes.max()) <= max_len:
            return pa.array(sizes > 0)
    return pc.match_substring_regex(arr, regex)


def json_strings(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(JSON string literals as orjson writes them, mask of the values that needed no control escape;
    null = not clean). A string array's bytes are scanned once with NumPy (~50x faster than the regex
    kernels, which run only when the bytes hold a control character or for other array types)."""
    if isinstance(arr, pa.Array) and arr.type == pa.string():
        data, offsets = value_bytes(arr)
        used = data[offsets[0]:offsets[-1]]
        control = bool((used < 0x20).any())
        escape = bool(((used == 0x22) | (used == 0x5C)).any())
    else:
        control = escape = True
    clean = pc.invert(pc.match_substring_regex(arr, _CONTROL)) if control else pc.is_valid(arr)
    if escape and pc.any(pc.match_substring_regex(arr, _NEEDS_ESCAPE)).as_py():
        arr = pc.replace_substring(pc.replace_substring(arr, "\\", "\\\\"), '"', '\\"')
    return pc.binary_join_element_wise('"', arr, '"', ""), clean


def _mapped(values: list, fn) -> pa.Array:
    """Apply a Python function to the distinct values of a column only (event types, identities)."""
    enc = pc.dictionary_encode(values)
    return pc.take(pa.array([fn(v) for v in enc.dictionary.to_pylist()], pa.string()), enc.indices)


def _leaf_literal(leaf: tuple[str, Any], col: dict[str, pa.Array], need: Callable[[pa.Array], None],
                  strings: Callable[[pa.Array], pa.Array], n: int) -> Any:
    """A mapped value as JSON text for a whole batch (array or scalar), or None = key absent in every row.
    ``need(mask)`` marks the rows it cannot reproduce; ``strings`` makes JSON string literals."""
    what, x = leaf
    if what == "const":  # a default: map_row sets it even when it is None (null)
        return orjson.dumps(x, default=str).decode()
    if what == "unmapped":
        text = col[x]
        return pc.if_else(pc.equal(text, ""), _NULL, strings(text))
    rule = x
    text = col[rule.column]
    empty = pc.equal(text, "")
    if rule.required and rule.default is None:
        need(pc.invert(empty))
    dflt = orjson.dumps(rule.default, default=str).decode() if rule.default is not None else None
    need(pc.invert(pc.starts_with(text, "$D_")))
    if rule.type == "STRING":
        lit = strings(text)
    elif rule.type in ("INTEGER", "LONG"):
        good = _matches(text, _INT_RE, 0x30, 0x39, 18)
        num = pc.cast(pc.if_else(good, text, "0"), pa.int64())
        if rule.type == "INTEGER":
            good = pc.and_(good, pc.and_(pc.greater_equal(num, INT32_MIN), pc.less_equal(num, INT32_MAX)))
        need(pc.or_(empty, good))
        lit = pc.cast(num, pa.string())
    elif rule.type == "FLOAT":
        good = pc.match_substring_regex(text, _FLOAT_RE)
        need(pc.or_(empty, good))
        nums = pc.cast(pc.if_else(good, text, "0"), pa.float64()).to_pylist()
        lit = pa.array(orjson.dumps(nums).decode()[1:-1].split(","), pa.string()) if n else pa.array(
            [], pa.string())
    else:  # BOOLEAN
        def word(v: str) -> str | None:
            t = v.strip().lower()
            return "true" if t in TRUE_WORDS else "false" if t in FALSE_WORDS else None
        lit = _mapped(text, word)
        need(pc.or_(empty, pc.is_valid(lit)))
    return pc.if_else(empty, pa.scalar(dflt, pa.string()), lit)


# RE2 twins of mapping.EMAIL_RE / PHONE_RE that accept a subset of what those accept (printable ASCII only: no
# space, no control character, no Unicode digit or space, no trailing newline), so a value they pass is one
# map_row passes with the same value; what they do not pass goes to map_row, which accepts or rejects it.
_CHECKS = {"email": r"^[!-?A-~]+@[!-?A-~]+\.[!-?A-~]+$",  # [^@\s] within printable ASCII: 0x21-0x7e but "@"
           "phone": r"^\+[1-9][0-9]{7,14}$"}
_PHONE_STRIP_RE = "[" + "".join("\\" + c if c in "-]\\^" else c for c in PHONE_STRIP_CHARS) + "]"


def _validated_literal(rule: Any, col: dict[str, pa.Array], need: Callable[[pa.Array], None],
                       strings: Callable[[pa.Array], pa.Array], n: int) -> Any:
    """A STRING field with ``validate: email`` or ``phone`` as ``_leaf_literal`` makes it (``Mapper._value``),
    of the value a phone has once ``PHONE_STRIP_CHARS`` are gone; a non-empty cell whose value the ASCII
    check does not pass (invalid, or outside printable ASCII) is left to map_row."""
    text = col[rule.column]
    value = pc.replace_substring_regex(text, _PHONE_STRIP_RE, "") if rule.validate == "phone" else text
    need(pc.or_(pc.equal(text, ""), pc.match_substring_regex(value, _CHECKS[rule.validate])))
    return _leaf_literal(("col", rule), {rule.column: value}, need, strings, n)


def _python_texts(mapper: Mapper, rule: Any, values: list) -> list[str | None]:
    """The mapper's own ``_value`` of each cell as JSON text: "null" = key absent, None = rejected."""
    def one(text: str) -> str | None:
        try:
            v = mapper._value(rule, text)
        except RowError:
            return None
        return "null" if v is None else orjson.dumps(v, default=str).decode()
    return [one(v) for v in values]


# ISO 8601 the way datetime.fromisoformat reads it, narrowed to what Arrow parses the same: a date that may be
# past its month's end (checked apart), a time to the second with up to 6 fraction digits, an optional zone
# (after a time only: checked apart).
_ISO_RE = (r"^(?P<local>[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
           r"(?:[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?)?)"
           r"(?P<zone>Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?$")
_MICROS = 1_000_000
_EXACT_MS = 2**33 * 1000  # epoch milliseconds below this: map_row's float(ms) / 1000 rounds to ms * 1000 µs
_EPOCH_DAY0 = "1970-01-01"


# strftime directives the columnar path reads, as the zero-padded text strptime's own pattern takes first (so a
# cell this matches, strptime reads as the same fields); any other directive leaves the mapping to map_row.
_STRF_DIGITS = {"Y": "[0-9]{4}", "m": "0[1-9]|1[0-2]", "d": "0[1-9]|[12][0-9]|3[01]", "H": "[01][0-9]|2[0-3]",
                "I": "0[1-9]|1[0-2]", "M": "[0-5][0-9]", "S": "[0-5][0-9]", "f": "[0-9]{1,6}", "p": "[AaPp][Mm]",
                "y": "[0-9]{2}", "z": "Z|[+-][0-9]{2}:?[0-5][0-9]"}
# Names strptime reads in any case, where its locale's are these (C and English locales): months (%b %B; their
# number is the place in the list) and weekdays (%a %A; read, and ignored once the date is known, as strptime does).
_STRF_NAMES = {"b": ("a_month", ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]),
               "B": ("f_month", ["january", "february", "march", "april", "may", "june", "july", "august",
                                 "september", "october", "november", "december"]),
               "a": ("a_weekday", ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
               "A": ("f_weekday", ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"])}
_STRF_ONE_DIGIT = {"m": "[1-9]", "d": "[1-9]", "H": "[0-9]", "I": "[1-9]", "M": "[0-9]", "S": "[0-9]"}  # its last try
_EPOCH_FRACTION_RE = r"^[0-9]{1,10}\.[0-9]{1,6}$"
_EXACT_S = 2**33  # fractional epoch seconds below this: map_row's float() is within half a microsecond


def strftime_regex(fmt: str) -> str | None:
    """A regular expression (RE2) with a named group per directive of the strftime pattern ``fmt`` that matches
    the cells ``datetime.strptime(cell, fmt)`` reads as those fields — None unless ``fmt`` has a year (``%Y``
    or ``%y``), a month (``%m``, ``%b`` or ``%B``) and ``%d``, each directive once from ``%Y %y %m %b %B %d %H
    %I %p %M %S %f %z %a %A`` (``%f`` with ``%S``; ``%f`` and ``%z`` not followed by a digit; ``%I`` or
    ``%H``, not both; names and ``%p`` only where strptime's are the English ones, as in the C and English
    locales), and no surrounding whitespace (``parse_time`` strips the cell) or leading ``$D_``.

    strptime tries each field's zero-padded form first (``1[0-2]|0[1-9]|[1-9]`` for ``%m``), so on a cell
    that is the padded form it takes that. A field followed by text that does not start with a digit (or by
    the end) may also be one digit (``1/2/2025 3:04``): only one reading of the cell then matches, the one
    strptime finds. ``%y`` is two digits (69..99: 19xx, else 20xx), names (``%b %B %a %A %p``) are read in
    any case, ``%z`` is ``Z`` or ``±HH[:]MM`` (strptime also reads seconds: those cells go to map_row).
    Literal text is matched exactly (strptime is looser: any run of whitespace, any case), a subset of what
    it reads. Every other cell goes to map_row."""
    if fmt != fmt.strip() or fmt.startswith("$D_"):
        return None
    tokens = re.findall(r"%.|%$|[^%]+", fmt)
    seen: list[str] = []
    out = ["^"]
    for i, tok in enumerate(tokens):
        if tok.startswith("%"):
            d = tok[1:]
            if (d not in _STRF_DIGITS and d not in _STRF_NAMES) or d in seen:
                return None
            # followed by the end or by text that does not start with a digit: its digits end there
            after = tokens[i + 1] if i + 1 < len(tokens) else ""
            ends = not after or (after[1:] in _STRF_NAMES or after[1:] in ("p", "z") if after.startswith("%")
                                 else not after[0].isdigit())
            if d in ("f", "z") and not ends:  # (strptime would read more digits into it where they follow)
                return None
            seen.append(d)
            if d in _STRF_NAMES:
                out.append(f"(?P<{d}>(?i:{'|'.join(_STRF_NAMES[d][1])}))")
                continue
            one = f"|{_STRF_ONE_DIGIT[d]}" if ends and d in _STRF_ONE_DIGIT else ""
            out.append(f"(?P<{d}>{_STRF_DIGITS[d]}{one})")
        else:
            out.extend(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}" for c in tok)
    have = set(seen)
    if len(have & {"Y", "y"}) != 1 or len(have & {"m", "b", "B"}) != 1 or "d" not in have or \
            ("f" in have and "S" not in have) or {"H", "I"} <= have:
        return None
    if have & {"p", *_STRF_NAMES}:
        import _strptime  # the locale's words strptime reads (any case)

        words = _strptime._TimeRE_cache.locale_time
        if "p" in have and words.am_pm != ["am", "pm"]:
            return None
        for d in have & set(_STRF_NAMES):
            attr, names = _STRF_NAMES[d]
            if [w for w in getattr(words, attr) if w] != names:
                return None
    return "".join(out) + "$"


def _strftime_iso(text: pa.Array, regex: str) -> pa.Array:
    """The ISO 8601 text (``YYYY-MM-DDTHH:MM:SS[.f][zone]``) of cells ``regex`` (strftime_regex) matches, null
    for the others."""
    parts = pc.extract_regex(text, regex)
    names = {parts.type.field(i).name for i in range(parts.type.num_fields)}

    def part(name: str, default: str) -> Any:  # (a field of one digit padded)
        if name not in names:
            return default
        field = pc.struct_field(parts, name)
        return field if name == "Y" else pc.utf8_lpad(field, 2, "0")
    year = part("Y", "")
    if "y" in names:  # strptime: 69..99 are 19xx, 00..68 20xx
        yy = pc.struct_field(parts, "y")
        year = pc.binary_join_element_wise(pc.if_else(pc.less_equal(yy, "68"), "20", "19"), yy, "")
    month = part("m", "")
    for d in ("b", "B"):
        if d in names:  # the name's place in the year (any case)
            place = pc.index_in(pc.utf8_lower(pc.struct_field(parts, d)), value_set=pa.array(_STRF_NAMES[d][1]))
            month = pc.utf8_lpad(pc.cast(pc.add(place, 1), pa.string()), 2, "0")
    hour = part("H", "00")
    if "I" in names:  # strptime: 12 is 0 unless PM; PM adds 12 (no %p: AM)
        clock = pc.cast(pc.struct_field(parts, "I"), pa.int64())
        hour = pc.if_else(pc.equal(clock, 12), 0, clock)
        if "p" in names:
            hour = pc.if_else(pc.equal(pc.utf8_lower(pc.struct_field(parts, "p")), "pm"), pc.add(hour, 12), hour)
        hour = pc.utf8_lpad(pc.cast(hour, pa.string()), 2, "0")
    iso = pc.binary_join_element_wise(year, "-", month, "-", part("d", ""), "T", hour,
                                      ":", part("M", "00"), ":", part("S", "00"), "")
    if "f" in names:
        iso = pc.binary_join_element_wise(iso, ".", pc.struct_field(parts, "f"), "")
    if "z" in names:  # Z, or ±HH:MM (the colon put in where the cell has none)
        zone = pc.struct_field(parts, "z")
        zone = pc.if_else(pc.equal(pc.utf8_length(zone), 5), pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(zone, 0, 3), pc.utf8_slice_codeunits(zone, 3, 5), ":"), zone)
        iso = pc.binary_join_element_wise(iso, zone, "")
    return iso


def _real_date(text: str) -> str | None:
    try:
        date.fromisoformat(text)
    except ValueError:
        return None
    return text


def _utc_micros(text: pa.Array, lo: int, hi: int) -> tuple[pa.Array, pa.Array]:
    """(which cells are ISO 8601 text ``parse_time(.., "iso")`` reads as the same UTC instant within [lo, hi]
    microseconds of the epoch, that instant per row (0 where not))."""
    parts = pc.extract_regex(text, _ISO_RE)
    local = pc.fill_null(pc.struct_field(parts, "local"), _EPOCH_DAY0)
    zone = pc.fill_null(pc.struct_field(parts, "zone"), "")
    real = _mapped(pc.utf8_slice_codeunits(local, 0, 10), _real_date)  # not 02-30: Arrow's cast would fail
    ok = pc.and_(pc.is_valid(parts), pc.is_valid(real))
    # a date alone takes no zone: fromisoformat reads "2025-11-01+01:00" as 01:00 (any separator before a time)
    ok = pc.and_(ok, pc.or_(pc.greater(pc.utf8_length(local), 10), pc.equal(zone, "")))
    local = pc.if_else(ok, local, _EPOCH_DAY0)
    micros = pc.cast(pc.cast(local, pa.timestamp("us")), pa.int64())
    has = pc.greater(pc.utf8_length(zone), 1)  # "+hh:mm" / "-hh:mm" (not "" or "Z")
    hours = pc.cast(pc.if_else(has, pc.utf8_slice_codeunits(zone, 1, 3), "0"), pa.int64())
    minutes = pc.cast(pc.if_else(has, pc.utf8_slice_codeunits(zone, 4, 6), "0"), pa.int64())
    offset = pc.multiply(pc.add(pc.multiply(hours, 3600), pc.multiply(minutes, 60)), _MICROS)
    micros = pc.if_else(pc.starts_with(zone, "-"), pc.add(micros, offset), pc.subtract(micros, offset))
    ok = pc.and_(ok, pc.and_(pc.greater_equal(micros, lo), pc.less_equal(micros, hi)))
    return ok, pc.if_else(ok, micros, 0)


def _stamps(micros: pa.Array) -> pa.Array:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` of UTC instants in microseconds (years 1000..9999)."""
    return pc.cast(pc.cast(micros, pa.timestamp("us")), pa.string())


# DATETIME cells taken in Arrow: years 1000..9998 in UTC (Arrow writes a 4-digit year there; out of datetime's
# range no offset can reach), and whole epoch seconds; anything else goes to the mapper's _value.
_DATETIME_LO = -30610224000 * _MICROS  # 1000-01-01
_DATETIME_HI = 253370764800 * _MICROS  # 9999-01-01


def _datetime_literal(mapper: Mapper, rule: Any, col: dict[str, pa.Array],
                      need: Callable[[pa.Array], None]) -> pa.Array:
    """A ``DATETIME`` field as ``_value`` writes it (``datetime.isoformat()`` in UTC: ``+00:00``, the
    fraction only when not zero), made once per distinct cell: whole epoch seconds and ISO 8601 text in
    Arrow, every other cell (empty, ``$D_``, a fractional epoch, other ISO forms, bad text) through
    ``_python_texts``; a cell ``_value`` rejects leaves its row to map_row."""
    enc = pc.dictionary_encode(col[rule.column])
    text = enc.dictionary
    epoch = pc.fill_null(pc.match_substring_regex(text, _EPOCH_RE), False)
    secs = pc.cast(pc.if_else(epoch, text, "0"), pa.int64())
    epoch = pc.and_(epoch, pc.less_equal(secs, MAX_EPOCH))
    iso, micros = _utc_micros(text, _DATETIME_LO, _DATETIME_HI)
    slow = pc.invert(pc.or_(epoch, iso))
    micros = pc.if_else(epoch, pc.multiply(secs, _MICROS), micros)
    stamp = pc.replace_substring_regex(_stamps(micros), r"\.000000$", "")
    lit = pc.binary_join_element_wise('"', pc.utf8_replace_slice(stamp, 10, 11, "T"), '+00:00"', "")
    if pc.any(slow).as_py():
        lit = pc.replace_with_mask(lit, slow, pa.array(_python_texts(mapper, rule, text.filter(slow).to_pylist()),
                                                       pa.string()))
    lit = pc.take(lit, enc.indices)
    need(pc.is_valid(lit))
    return pc.if_else(pc.equal(lit, "null"), _NULL, lit)


def _derived_parts(template: str) -> list[tuple[str, str | None]] | None:
    """A ``derived`` template as (literal text, column or None) pieces, or None when it uses more than plain
    ``{column}`` fields (attribute/index lookups, conversions, format specs: map_row's)."""
    import string

    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conv in string.Formatter().parse(template):
        if name is not None and (spec or conv or not re.fullmatch(r"[^.\[\]{}!:]+", name or "")):
            return None
        parts.append((literal, name))
    return parts


def _derived_templates(derived: dict[str, str]) -> dict[str, list[tuple[str, str | None]]] | None:
    """Every ``derived`` template's pieces (target -> ``_derived_parts``), or None if one is not plain."""
    out = {}
    for target, template in derived.items():
        parts = _derived_parts(template)
        if parts is None:
            return None
        out[target] = parts
    return out


def _derived_literal(parts: list[tuple[str, str | None]], col: dict[str, pa.Array],
                     strings: Callable[[pa.Array], pa.Array]) -> Any:
    """``template.format_map(_Blank(row)).strip()`` as JSON text (a column not in the header is empty)."""
    args: list[Any] = []
    for literal, name in parts:
        if literal:
            args.append(literal)
        if name is not None:
            args.append(col[name] if name in col else "")
    if not any(isinstance(a, pa.Array) for a in args):
        return orjson.dumps("".join(args).strip()).decode()
    text = pc.binary_join_element_wise(*args, "") if len(args) > 1 else args[0]
    return strings(_mapped(text, str.strip))


def _identities(m: Any, col: dict[str, pa.Array], need: Callable[[pa.Array], None]) -> pa.Array:
    """The value each row's profile id comes from (``Mapper._identity``; null: none), rows whose value
    ``identity_normalize`` rejects marked for map_row (which says why)."""
    if not m.identity_normalize:
        return pc.coalesce(*[pc.if_else(pc.equal(col[c], ""), _NULL, col[c]) for c in m.identity])
    from cdp_ingest.mapping import normalize_identity

    def norm(column: str) -> pa.Array:
        steps = m.identity_normalize.get(column)

        def one(v: str) -> str | None:
            if not v:
                return None
            if not steps:
                return v
            try:
                return normalize_identity(v, steps, column) or None
            except RowError:
                return "\x00"  # rejects the row (map_row says why)
        return _mapped(col[column], one)
    ident = pc.coalesce(*[norm(c) for c in m.identity])
    need(pc.fill_null(pc.not_equal(ident, "\x00"), True))  # (null: no identity, which is not an error here)
    return ident


def _field_literal(mapper: Mapper, leaf: tuple[str, Any], col: dict[str, pa.Array],
                   need: Callable[[pa.Array], None], strings: Callable[[pa.Array], pa.Array], n: int) -> Any:
    """A mapped field (``("col", rule)``) or unmapped column as JSON text, whatever its type and check."""
    what, rule = leaf
    if what == "col":
        if rule.type == "DATETIME":
            return _datetime_literal(mapper, rule, col, need)
        if rule.validate:  # email or phone, on a STRING field (Mapping refuses others)
            return _validated_literal(rule, col, need, strings, n)
    return _leaf_literal(leaf, col, need, strings, n)


class FastBatch:
    """A mapped batch: ``ok[i]`` says row i was mapped here; ``indices``, ``ids``, ``bodies`` hold its index,
    id and body, and ``origs`` the source rows as JSON when the mapper makes them (else None: made lazily).
    Each comes as a list or an Arrow array; ``column`` gives it as Arrow (a staged file is written from
    them without a Python object per row), the attributes as a list (made once, on first use)."""

    __slots__ = ("ok", "_columns")
    TYPES = {"indices": pa.string(), "ids": pa.string(), "bodies": pa.binary(), "origs": pa.binary()}

    def __init__(self, ok: list[bool], indices: list[str] | pa.Array, ids: list[str] | pa.Array,
                 bodies: list[bytes] | pa.Array, origs: list[bytes] | pa.Array | None = None):
        self.ok = ok
        self._columns: dict[str, Any] = {"indices": indices, "ids": ids, "bodies": bodies, "origs": origs}

    def _list(self, name: str) -> Any:
        v = self._columns[name]
        if isinstance(v, pa.Array | pa.ChunkedArray):
            v = self._columns[name] = v.to_pylist()
        return v

    def column(self, name: str) -> pa.Array | None:
        v = self._columns[name]
        if isinstance(v, pa.ChunkedArray):
            v = v.combine_chunks()
        if v is None or isinstance(v, pa.Array):
            return v if v is None or v.type == self.TYPES[name] else v.cast(self.TYPES[name])
        return pa.array(v, self.TYPES[name])

    indices = property(lambda self: self._list("indices"))
    ids = property(lambda self: self._list("ids"))
    bodies = property(lambda self: self._list("bodies"))
    origs = property(lambda self: self._list("origs"))


class _Node:
    def __init__(self) -> None:
        self.children: dict[str, _Node | tuple[str, Any]] = {}  # key -> node, or ("col"|"unmapped"|"const", x)


def _in_order(paths: list[tuple[str, ...]], skeleton: dict) -> bool:
    """Whether ``map_row``'s dict building gives the key order a tree of ``paths`` gives: no path twice, no
    target inside another, and the targets under each object that is not already in ``skeleton`` listed
    together (an object is created where its first present value is set). Under an object of the
    skeleton every prefix must be an object there too (``set_path`` would replace another value)."""
    if len(set(paths)) != len(paths):
        return False
    for p in paths:
        node: Any = skeleton
        for n in range(1, len(p)):
            pre = p[:n]
            if pre in paths:  # a target inside another
                return False
            if isinstance(node, dict) and p[n - 1] in node:
                node = node[p[n - 1]]
                if not isinstance(node, dict):
                    return False
                continue
            node = None  # a new object: its targets must be listed together
            at = [j for j, q in enumerate(paths) if q[:n] == pre]
            if at != list(range(at[0], at[-1] + 1)):
                return False
    return True


def _grow(seq: list[tuple[tuple[str, ...], tuple[str, Any]]]) -> dict[str, _Node]:
    """The target paths as trees (root key -> node), leaves in the order given."""
    roots: dict[str, _Node] = {}
    for path, leaf in seq:
        node = roots.setdefault(path[0], _Node())
        for key in path[1:-1]:
            nxt = node.children.setdefault(key, _Node())
            assert isinstance(nxt, _Node)
            node = nxt
        node.children[path[-1]] = leaf
    return roots


class _Template:
    """A document whose per-row values are slots (``slot(value)`` puts one in); ``pieces`` cuts its JSON into
    constant text and those values, for ``pc.binary_join_element_wise``."""

    def __init__(self) -> None:
        self.slots: list[Any] = []

    def slot(self, x: Any) -> str:
        self.slots.append(x)
        return _MARK % (len(self.slots) - 1)

    def pieces(self, doc: dict) -> list[Any]:
        """(A slot may hold a list of pieces: they are spliced in, adjacent texts merged.)"""
        parts = _SLOT_RE.split(orjson.dumps(doc).decode())  # constant text, slot number, constant text, ...
        out: list[Any] = []
        for k, x in enumerate(parts):
            v = self.slots[int(x)] if k % 2 else x
            for p in v if isinstance(v, list) else [v]:
                if isinstance(p, str) and out and isinstance(out[-1], str):
                    out[-1] += p
                else:
                    out.append(p)
        return out

    def bodies(self, doc: dict) -> pa.Array:
        return pc.cast(pc.binary_join_element_wise(*self.pieces(doc), ""), pa.binary())


class _Clean:
    """Which rows of a batch the columnar path can still reproduce exactly (``ok``)."""

    def __init__(self, n: int):
        self.ok = pa.array([True] * n)

    def need(self, mask: pa.Array) -> None:
        self.ok = pc.and_(self.ok, pc.fill_null(mask, False))

    def done(self, skip: Collection[int] = ()) -> list[bool]:
        """``ok`` as a list, with the rows in ``skip`` (the reader's bad rows) not ok either."""
        ok = self.ok.to_pylist()
        for i in skip:
            if 0 <= i < len(ok):
                ok[i] = False
        return ok

    def strings(self, arr: pa.Array) -> pa.Array:
        """JSON string literals of ``arr``; rows with a control character are no longer clean."""
        lit, clean = json_strings(arr)
        self.need(clean)
        return lit


def _bag_values(node: _Node, value: Callable[[tuple[str, Any]], Any]) -> list[tuple[str, Any]]:
    """(key, value) of each child of ``node`` present in some row: a leaf's JSON text (constant text or per-row
    array, null = absent), or a child node's own list. ``value`` is called once per leaf. (Module level, not a
    closure of ``map_batch``: a closure calling itself is a reference cycle that held each batch's columns
    until a garbage collection, ~130 MB per million rows.)"""
    out: list[tuple[str, Any]] = []
    for key, child in node.children.items():
        v = _bag_values(child, value) if isinstance(child, _Node) else value(child)
        if v is not None and not (isinstance(v, list) and not v):
            out.append((key, v))
    return out


def _bag_pieces(values: list[tuple[str, Any]]) -> list[Any] | None:
    """``"k":v,...`` as constant text and arrays to be joined, when no value is null in any row (every key in
    every row); None otherwise. Put in a ``_Template`` slot, they are joined into the document in its one
    ``binary_join_element_wise`` (which merges adjacent texts): the values are copied once, not once per level."""
    pieces: list[Any] = []
    for k, (key, v) in enumerate(values):
        pieces.append(("," if k else "") + orjson.dumps(key).decode() + ":")
        if isinstance(v, list):
            inner = _bag_pieces(v)
            if inner is None:
                return None
            pieces += ["{", *inner, "}"]
        elif isinstance(v, str) or isinstance(v, pa.Array) and not v.null_count:
            pieces.append(v)
        else:
            return None
    return pieces


def _bag_json(values: list[tuple[str, Any]]) -> Any:
    """``"k":v,...`` of the keys present (per row: an array; or constant text), or None when none is."""
    parts = []
    for key, v in values:
        if isinstance(v, list):
            v = _bag_json(v)
            if v is None:
                continue
            v = "{" + v + "}" if isinstance(v, str) else pc.if_else(
                pc.equal(v, ""), _NULL, pc.binary_join_element_wise("{", v, "}", ""))
        parts.append(pc.binary_join_element_wise(orjson.dumps(key).decode() + ":", v, ""))
    if not parts:
        return None
    arrays = [p for p in parts if isinstance(p, pa.Array)]
    if not arrays:  # constants only
        return ",".join(p.as_py() if isinstance(p, pa.Scalar) else p for p in parts)
    # (pyarrow drops a row whose inputs are all null in "skip" mode: a leading "" keeps every row)
    joined = pc.binary_join_element_wise("", *parts, ",", null_handling="skip")
    return pc.utf8_slice_codeunits(joined, 1)


def _render_json(skel: dict | None, node: _Node, value: Callable[[tuple[str, Any]], Any]) -> Any:
    """The object at ``node`` of a new profile: ``skel`` (the skeleton's) with the values set into it, as JSON
    text or per-row array; None/null = absent. (Module level: see ``_bag_json``.)"""
    parts: list[Any] = []
    for key, sv in (skel or {}).items():
        kj = orjson.dumps(key).decode() + ":"
        child = node.children.get(key)
        const = kj + orjson.dumps(sv).decode()
        if child is None:
            parts.append(const)
            continue
        v = _render_json(sv, child, value) if isinstance(child, _Node) else value(child)
        if v is None:
            parts.append(const)
        elif isinstance(v, str):
            parts.append(kj + v)
        else:
            parts.append(pc.coalesce(pc.binary_join_element_wise(kj, v, ""), pa.scalar(const)))
    for key, child in node.children.items():
        if skel is not None and key in skel:
            continue
        v = _render_json(None, child, value) if isinstance(child, _Node) else value(child)
        if v is None:
            continue
        kj = orjson.dumps(key).decode() + ":"
        parts.append(kj + v if isinstance(v, str) else pc.binary_join_element_wise(kj, v, ""))
    if not parts:
        return None if skel is None else "{}"
    if not any(isinstance(p, pa.Array) for p in parts):
        return "{" + ",".join(parts) + "}"
    joined = pc.binary_join_element_wise("", *parts, ",", null_handling="skip")
    inner = pc.utf8_slice_codeunits(joined, 1)
    whole = pc.if_else(pc.equal(inner, ""), _NULL, pc.binary_join_element_wise("{", inner, "}", ""))
    # a skeleton object is always there (empty, or with what the rows set); a new one only with a value
    return whole if skel is None else pc.coalesce(whole, pa.scalar(orjson.dumps(skel).decode()))


_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_UUID_DIGITS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])  # the hex digits' places


def profile_ids_for(identities: list[str]) -> list[str]:
    """``mapping.profile_id_for`` of each identity: one SHA-1 per value, the UUID's version and variant
    bits and its text made for all of them at once with NumPy (8,192 e-mails: 0.84 vs 1.27 µs per id)."""
    if not identities:
        return []
    sha1 = hashlib.sha1
    digests = b"".join([sha1(_IDENTITY_PREFIX + v.encode(), usedforsecurity=False).digest() for v in identities])
    raw = np.frombuffer(digests, np.uint8).reshape(-1, 20)[:, :16].copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x50  # version 5
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    text = np.full((len(identities), 36), ord("-"), np.uint8)
    text[:, _UUID_DIGITS[0::2]] = _HEX[raw >> 4]
    text[:, _UUID_DIGITS[1::2]] = _HEX[raw & 15]
    joined = text.tobytes().decode("ascii")
    return [joined[k:k + 36] for k in range(0, len(joined), 36)]


class _ProfileIds:
    """``mapping.profile_id_for`` with a larger cache of its own (files often hold more identities than
    that one keeps)."""

    _profile_ids: dict[str, str]
    cache_size = PROFILE_ID_CACHE

    def _profile_ids_of(self, identities: list[str]) -> list[str]:
        """The profile id of each identity ("" for ""): the cached ones looked up, the others made together."""
        get = self._profile_ids.get
        pids = [get(v) or "" for v in identities]
        if "" in pids:
            missing = list(dict.fromkeys(v for v, p in zip(identities, pids, strict=True) if not p and v))
            made = dict(zip(missing, profile_ids_for(missing), strict=True))
            if len(self._profile_ids) + len(made) > self.cache_size:
                self._profile_ids.clear()
            self._profile_ids.update(made)
            pids = [p or made.get(v, "") for v, p in zip(identities, pids, strict=True)]
        return pids

    def _profile_id_array(self, identities: pa.Array) -> pa.Array:
        """The profile id of every value (null as ""), made once per distinct value."""
        enc = pc.dictionary_encode(pc.fill_null(identities, ""))
        return pc.take(pa.array(self._profile_ids_of(enc.dictionary.to_pylist()), pa.string()), enc.indices)


class EventBatchMapper(_ProfileIds):
    """Maps whole batches for one event or session ``Mapper`` (see module doc); ``compile`` it per mapping.
    A session's document is the event's without type, name, source or session; its time goes to
    ``metadata.time`` (insert, timestamp, weekday), taken here from 1 s to 2**53 µs after the epoch (year
    2255) or in whole seconds."""

    def __init__(self, mapper: Mapper, derived: dict[str, list[tuple[str, str | None]]] | None = None):
        self.mapper = mapper
        self.kind = mapper.m.kind
        self.roots = FREE_ROOTS if self.kind == "event" else SESSION_ROOTS
        self.derived = derived or {}  # target -> [(literal text, column or None)]
        self._plans: dict[tuple[str, ...], Any] = {}
        self._profile_ids: dict[str, str] = {}
        self.strftime = strftime_regex(mapper.m.time_format) or ""  # ("": epoch, epoch_ms or iso)

    @classmethod
    def compile(cls, mapper: Mapper) -> EventBatchMapper | None:
        m = mapper.m
        if m.kind not in ("event", "session") or (m.time_format not in ("epoch", "epoch_ms", "iso")
                                                   and strftime_regex(m.time_format) is None):
            return None
        if m.kind == "event" and not m.time_column:  # (map_row's own time for all: sessions only)
            return None
        if m.kind == "event" and not m.event_type_column and not (
                isinstance(m.event_type_value, str) and m.event_type_value.strip()):
            return None
        derived = _derived_templates(m.derived)
        return cls(mapper, derived) if derived is not None else None

    # ---- the plan for one header ----------------------------------------------------------------------
    def _plan(self, names: tuple[str, ...]) -> Any:
        if names in self._plans:
            return self._plans[names]
        m = self.mapper.m
        seq: list[tuple[tuple[str, ...], tuple[str, Any]]] = []
        for rule in m.fields:
            if rule.column not in names:
                self._plans[names] = None  # map_row reads a missing column as empty: leave it the rules
                return None
            seq.append((tuple(rule.target.split(".")), ("col", rule)))
        if m.unmapped != "ignore":
            mapped = m.source_columns()
            seq.extend((tuple(f"{m.unmapped}.{_safe_key(c)}".split(".")), ("unmapped", c))
                       for c in names if c not in mapped)
        seq.extend((tuple(t.split(".")), ("derived", t)) for t in m.derived)
        seq.extend((tuple(t.split(".")), ("const", v)) for t, v in m.defaults.items())
        for c in (m.id_column, m.time_column, m.event_type_column, m.session_column, *m.identity):
            if c and c not in names:
                self._plans[names] = None
                return None
        plan = self._tree(seq)
        self._plans[names] = plan
        return plan

    def _tree(self, seq: list[tuple[tuple[str, ...], tuple[str, Any]]]) -> dict[str, _Node] | None:
        paths = [p for p, _ in seq]
        meta = SKELETONS[self.kind]["metadata"]
        for p in paths:  # under a free-form bag, or a plain value of metadata map_row does not set itself
            if len(p) < 2 or p[0] not in self.roots and not (
                    p[0] == "metadata" and len(p) == 2 and p[1] in meta and not isinstance(meta[p[1]], dict)
                    and p[1] != "profile_less"):
                return None
        return _grow(seq) if _in_order(paths, SKELETONS[self.kind]) else None

    @staticmethod
    def _fill(doc: dict, plan: dict[str, _Node], value: Callable[[tuple[str, Any]], Any],
              slot: Callable[[Any], str]) -> None:
        """The mapped values into ``doc`` (a skeleton): each free-form bag as one object, and each
        ``metadata`` value in its place (the skeleton's value where a row has none)."""
        for root, node in plan.items():
            if root == "metadata":
                for key, leaf in node.children.items():
                    assert not isinstance(leaf, _Node)
                    v = value(leaf)
                    if v is not None:  # (a row without one keeps the skeleton's value)
                        here = pa.scalar(orjson.dumps(doc["metadata"][key]).decode())
                        doc["metadata"][key] = slot(v if isinstance(v, str) else pc.coalesce(v, here))
                continue
            values = _bag_values(node, value)
            pieces = _bag_pieces(values)
            if pieces is not None:  # every key in every row: its pieces go into the document's join
                doc[root] = slot(["{", *pieces, "}"])
                continue
            content = _bag_json(values)
            doc[root] = slot("{}" if content is None else
                             pc.binary_join_element_wise("{", content, "}", "") if not isinstance(content, str)
                             else "{" + content + "}")

    # ---- one batch ----------------------------------------------------------------------------------
    def map_batch(self, batch: pa.RecordBatch, first_row: int, prefix: str, import_id: str,
                  skip: Collection[int] = ()) -> FastBatch | None:
        """Map ``batch`` (string columns); rows in ``skip`` and rows not provably clean get ok=False."""
        names = tuple(batch.schema.names)
        if not all(pa.types.is_string(t) for t in batch.schema.types):
            return None
        plan = self._plan(names)
        if plan is None:
            return None
        mp = self.mapper
        m = mp.m
        n = batch.num_rows
        col = {name: batch.column(i) for i, name in enumerate(names)}
        rows_ok = _Clean(n)
        need, strings = rows_ok.need, rows_ok.strings

        # id, time, type, identity, session
        if m.id_column:
            ids_arr = col[m.id_column]
            need(_matches(ids_arr, _ID_RE, 0x21, 0x7E, 512))
        else:
            ids_arr = pa.array([deterministic_id(mp.unit_key, first_row + i) for i in range(n)], pa.string())
        id_json = strings(ids_arr)
        micros = self._micros(col[m.time_column], need) if m.time_column else None  # (a session: now)
        if self.kind == "session":
            return self._sessions(batch, first_row, prefix, import_id, skip, plan, col, rows_ok, ids_arr, id_json,
                                  micros)
        assert micros is not None  # (compile: an event mapping has a time column)
        stamp = _stamps(micros)  # "2025-11-01 00:00:00.000000" (strftime: 40x slower)
        created = pc.binary_join_element_wise('"', pc.utf8_replace_slice(stamp, 10, 11, "T"), '"', "")
        index = pc.binary_join_element_wise(f"{prefix}event-", pc.utf8_slice_codeunits(stamp, 0, 7), "")
        if m.event_type_column:
            etext = col[m.event_type_column]
            stripped = _mapped(etext, lambda v: v.strip() or None)
            need(pc.is_valid(stripped))
            stripped = pc.fill_null(stripped, "x")
            etype = strings(stripped)
            names_of = mp._event_names
            ename = strings(_mapped(stripped, lambda v: names_of.get(v) or names_of.setdefault(
                v, v.replace("-", " ").replace("_", " ").capitalize())))
        else:
            etype = orjson.dumps(m.event_type_value).decode()
            v = m.event_type_value or ""
            ename = orjson.dumps(v.replace("-", " ").replace("_", " ").capitalize()).decode()
        profile: Any = self._profile_json(col, need)
        profile_less: Any = "true" if profile is None else pc.if_else(pc.is_null(profile), "true", "false")
        profile = "null" if profile is None else pc.fill_null(profile, "null")
        session: Any = "null"
        if m.session_column:
            scol = col[m.session_column]
            session = pc.if_else(pc.equal(scol, ""), "null", pc.binary_join_element_wise(
                '{"id":', strings(scol), ',"start":null,"duration":0,"tz":"utc"}', ""))
        rows = pc.cast(pa.array(range(first_row, first_row + n), pa.int64()), pa.string())

        # the template: the skeleton as map_row + mapped_to_stage_row leave it, with slots
        tpl = _Template()
        slot = tpl.slot
        doc = orjson.loads(orjson.dumps(SKELETONS["event"]))
        doc["id"] = slot(id_json)
        doc["metadata"]["time"]["insert"] = mp._now_iso
        self._fill(doc, plan, self._values(col, rows_ok, n), slot)
        doc["type"] = slot(etype)
        doc["name"] = slot(ename)
        doc["metadata"]["time"]["create"] = slot(created)
        doc["source"] = {"id": m.source_id}
        doc["profile"] = slot(profile)
        doc["metadata"]["profile_less"] = slot(profile_less)
        doc["session"] = slot(session)
        doc["metadata"]["aux"]["cdp"] = {"import_id": import_id, "row": slot(rows)}
        return FastBatch(rows_ok.done(skip), index, ids_arr, tpl.bodies(doc))

    def _micros(self, tcol: pa.Array, need: Callable[[pa.Array], None]) -> pa.Array:
        """Each row's time in microseconds since the epoch (UTC), as ``parse_time`` reads it in the mapping's
        format; a cell it cannot prove the same, or out of 1970..3000, is marked for map_row (0 here)."""
        fmt = self.mapper.m.time_format
        if fmt == "epoch":
            tgood = _matches(tcol, _EPOCH_RE, 0x30, 0x39, 11)
            secs = pc.cast(pc.if_else(tgood, tcol, "0"), pa.int64())
            whole = pc.and_(tgood, pc.less_equal(secs, MAX_EPOCH))
            micros = pc.multiply(pc.if_else(whole, secs, 0), _MICROS)
            if pc.all(whole, skip_nulls=False).as_py():  # (the usual batch: no second regex pass over it)
                return micros
            frac = pc.match_substring_regex(tcol, _EPOCH_FRACTION_RE)  # "1761955200.5": up to 6 digits, < 2**33 s
            if not pc.any(frac).as_py():
                need(whole)
                return micros
            split = pc.split_pattern(pc.if_else(frac, tcol, "0.0"), ".")
            fsecs = pc.cast(pc.list_element(split, 0), pa.int64())
            digits = pc.list_element(split, 1)
            fmicros = pc.cast(pc.utf8_rpad(digits, 6, "0"), pa.int64())
            frac = pc.and_(frac, pc.less(fsecs, _EXACT_S))
            need(pc.or_(whole, frac))
            return pc.if_else(frac, pc.add(pc.multiply(fsecs, _MICROS), fmicros), micros)
        if fmt == "epoch_ms":  # whole ms before 2**33 s (year 2242), where map_row's float(ms) / 1000 is
            tgood = pc.match_substring_regex(tcol, r"^[0-9]{1,13}$")  # exactly ms * 1000 µs
            ms = pc.cast(pc.if_else(tgood, tcol, "0"), pa.int64())
            tgood = pc.and_(tgood, pc.less(ms, _EXACT_MS))
            need(tgood)
            return pc.multiply(pc.if_else(tgood, ms, 0), 1000)
        if fmt != "iso":  # a strftime pattern compile took: its cells as ISO 8601 text
            tcol = _strftime_iso(tcol, self.strftime)
        tgood, micros = _utc_micros(tcol, 0, MAX_EPOCH * _MICROS)  # ISO 8601 (other forms and zones: map_row)
        need(tgood)
        return micros

    def _profile_json(self, col: dict[str, pa.Array], need: Callable[[pa.Array], None]) -> pa.Array | None:
        """``{"id":"<profile id>"}`` per row, null for a row without an identity (None: the mapping has none)."""
        m = self.mapper.m
        if not m.identity:
            return None
        ident = _identities(m, col, need)
        need(pc.or_kleene(pc.is_null(ident), pc.less(pc.utf8_length(ident), 1024)))  # (or_: null if one is)
        pid = self._profile_id_array(ident)
        return pc.if_else(pc.is_null(ident), _NULL, pc.binary_join_element_wise('{"id":"', pid, '"}', ""))

    def _values(self, col: dict[str, pa.Array], rows_ok: _Clean, n: int) -> Callable[[tuple[str, Any]], Any]:
        """A mapped value (leaf) as JSON text, an array or a constant; None = key absent in every row."""
        mp, need, strings = self.mapper, rows_ok.need, rows_ok.strings

        def value(leaf: tuple[str, Any]) -> Any:
            if leaf[0] == "derived":
                return _derived_literal(self.derived[leaf[1]], col, strings)
            return _field_literal(mp, leaf, col, need, strings, n)
        return value

    def _sessions(self, batch: pa.RecordBatch, first_row: int, prefix: str, import_id: str, skip: Collection[int],
                  plan: dict[str, _Node], col: dict[str, pa.Array], rows_ok: _Clean, ids_arr: pa.Array,
                  id_json: pa.Array, micros: pa.Array | None) -> FastBatch:
        """``map_batch`` for a session mapping, from the id and the time columns on (see the class doc)."""
        mp = self.mapper
        n = batch.num_rows
        need = rows_ok.need
        profile = self._profile_json(col, need)
        rows = pc.cast(pa.array(range(first_row, first_row + n), pa.int64()), pa.string())
        tpl = _Template()
        slot = tpl.slot
        doc = orjson.loads(orjson.dumps(SKELETONS["session"]))
        doc["id"] = slot(id_json)
        self._fill(doc, plan, self._values(col, rows_ok, n), slot)
        doc["profile"] = slot('{"id":null}' if profile is None else pc.fill_null(profile, '{"id":null}'))
        times = doc["metadata"]["time"]
        if micros is not None:  # timestamp() as orjson writes that float: "<seconds>.0" for whole seconds
            secs = pc.divide(micros, _MICROS)  # (integers: truncated; micros >= 0)
            whole = pc.equal(pc.multiply(secs, _MICROS), micros)
            stamp = pc.binary_join_element_wise(pc.cast(secs, pa.string()), ".0", "")
            # else micros / 10**6, the correctly rounded double of both (exact below 2**53 µs), written the
            # shortest way that reads back, as orjson does (it writes 1e-6 below 1e-4 s: not taken)
            frac = pc.and_(pc.invert(whole), pc.and_(pc.greater_equal(micros, _MICROS), pc.less(micros, 2**53)))
            if pc.any(frac).as_py():
                exact = pc.cast(pc.if_else(frac, micros, 0), pa.float64())
                stamp = pc.if_else(frac, pc.cast(pc.divide(exact, float(_MICROS)), pa.string()), stamp)
            need(pc.or_(whole, frac))
            times["timestamp"] = slot(stamp)
            times["weekday"] = slot(pc.cast(pc.day_of_week(pc.cast(micros, pa.timestamp("us"))), pa.string()))
            times["insert"] = slot(pc.binary_join_element_wise(
                '"', pc.utf8_replace_slice(_stamps(micros), 10, 11, "T"), '"', ""))
        else:  # map_row's own time, the same for every row
            times["timestamp"] = mp.now.timestamp()
            times["weekday"] = mp.now.weekday()
            times["insert"] = mp.now.replace(tzinfo=None).isoformat(timespec="microseconds")
        doc["metadata"]["aux"]["cdp"] = {"import_id": import_id, "row": slot(rows)}
        return FastBatch(rows_ok.done(skip), [f"{prefix}session"] * n, ids_arr, tpl.bodies(doc))


# ---- profiles -------------------------------------------------------------------------------------------
# A profile row is staged as {"ops": [...]} (pipeline.mapped_to_stage_row). A row mapped here is staged as
# {"new": <the whole document a new profile gets from this row alone>, "ops": [...]}: the merge writes
# "new" as it is when the profile is not stored yet and no other row of its chunk touches it, and applies
# the operations otherwise. Its insert/update times are NOW_MARK until the merge fills them in.
NEW_HEAD = b'{"new":'
OPS_CUT = b',"ops":['


def split_profile_body(body: bytes) -> tuple[bytes | None, bytes]:
    """(new document or None, operations JSON) of a staged profile body. The operations come last and
    hold no object keys, so the last ``,"ops":[`` is theirs."""
    if not body.startswith(NEW_HEAD):
        return None, body
    cut = body.rfind(OPS_CUT)
    return body[len(NEW_HEAD):cut], body[cut + len(OPS_CUT) - 1:-1]


class ProfileBatchMapper(_ProfileIds):
    """Maps whole batches for one profile ``Mapper``: the profile id, the operations ``map_row`` gives
    and the document a new profile gets, for every clean row (see ``split_profile_body``).

    Takes: kind ``profile``; any field types, ``validate`` and ``DATETIME`` fields (email and phone checks
    of printable-ASCII text with Arrow regexes; DATETIME cells as in ``_datetime_literal``), ``derived``
    templates of plain ``{column}``
    fields, ``identity_normalize``; defaults (objects and lists too). Targets must not sit inside
    another target or under a skeleton value that is not an object, and the targets under a new object
    must be listed together (key order). Rows are left to ``map_row`` as in ``EventBatchMapper``."""

    kind = "profile"

    def __init__(self, mapper: Mapper, derived: dict[str, list[tuple[str, str | None]]]):
        self.mapper = mapper
        self.derived = derived  # target -> [(literal text, column or None)]
        self._plans: dict[tuple[str, ...], Any] = {}
        self._profile_ids: dict[str, str] = {}

    @classmethod
    def compile(cls, mapper: Mapper) -> ProfileBatchMapper | None:
        m = mapper.m
        if m.kind != "profile":
            return None
        derived = _derived_templates(m.derived)
        return cls(mapper, derived) if derived is not None else None

    def _plan(self, names: tuple[str, ...]) -> Any:
        if names in self._plans:
            return self._plans[names]
        m = self.mapper.m
        seq: list[tuple[tuple[str, ...], tuple[str, Any]]] = []
        plan = None
        if all(r.column in names for r in m.fields) and all(c in names for c in m.identity):
            seq = [(tuple(r.target.split(".")), ("col", r)) for r in m.fields]
            if m.unmapped != "ignore":
                mapped = m.source_columns()
                seq.extend((tuple(f"{m.unmapped}.{_safe_key(c)}".split(".")), ("unmapped", c))
                           for c in names if c not in mapped)
            seq.extend((tuple(t.split(".")), ("derived", t)) for t in m.derived)
            seq.extend((tuple(t.split(".")), ("const", v)) for t, v in m.defaults.items())
            plan = self._tree(seq)
        self._plans[names] = plan if plan is None else (seq, plan)
        return self._plans[names]

    @staticmethod
    def _tree(seq: list[tuple[tuple[str, ...], tuple[str, Any]]]) -> dict[str, _Node] | None:
        paths = [p for p, _ in seq]  # a root as a target (``active``: the new document's value) goes row by row
        return _grow(seq) if all(len(p) > 1 for p in paths) and _in_order(paths, SKELETONS["profile"]) else None

    def map_batch(self, batch: pa.RecordBatch, first_row: int, prefix: str, import_id: str,
                  skip: Collection[int] = ()) -> FastBatch | None:
        names = tuple(batch.schema.names)
        if not all(pa.types.is_string(t) for t in batch.schema.types):
            return None
        planned = self._plan(names)
        if planned is None:
            return None
        seq, tree = planned
        mp = self.mapper
        m = mp.m
        n = batch.num_rows
        col = {name: batch.column(i) for i, name in enumerate(names)}
        rows_ok = _Clean(n)
        need, strings = rows_ok.need, rows_ok.strings

        cache: dict[int, Any] = {}

        def value(leaf: tuple[str, Any]) -> Any:
            key = id(leaf)
            if key not in cache:
                what, x = leaf
                if what == "derived":
                    cache[key] = _derived_literal(self.derived[x], col, strings)
                else:
                    cache[key] = _field_literal(mp, leaf, col, need, strings, n)
            return cache[key]

        # the identity and the profile id
        ident = _identities(m, col, need)
        need(pc.is_valid(ident))
        need(pc.less(pc.utf8_length(ident), 1024))
        ids_arr = self._profile_id_array(ident)

        # the operations, in map_row's order
        elements = []
        for path, leaf in seq:
            v = value(leaf)
            if v is None:
                continue
            head = '["$set",' + orjson.dumps(".".join(path)).decode() + ","
            elements.append(head + v + "]" if isinstance(v, str) else pc.binary_join_element_wise(head, v, "]", ""))
        if elements:
            joined = pc.binary_join_element_wise("", *elements, ",", null_handling="skip")
            ops: Any = pc.binary_join_element_wise("[", pc.utf8_slice_codeunits(joined, 1), "]", "")
        else:
            ops = "[]"

        # the new document: the skeleton with the values set into it
        tpl = _Template()
        slot = tpl.slot
        doc = orjson.loads(orjson.dumps(SKELETONS["profile"]))
        id_json = strings(ids_arr)
        doc["id"] = slot(id_json)
        doc["ids"] = slot(pc.binary_join_element_wise("[", id_json, "]", ""))
        doc["metadata"]["time"]["insert"] = doc["metadata"]["time"]["update"] = slot(NOW_MARK.decode())
        doc["metadata"]["aux"]["cdp"] = {"import_id": import_id,
                                         "row": slot(pc.cast(pa.array(range(first_row, first_row + n), pa.int64()),
                                                             pa.string()))}
        for root, node in tree.items():
            doc[root] = slot(_render_json(doc[root], node, value))
        pieces = [NEW_HEAD.decode(), *tpl.pieces(doc), OPS_CUT.decode()[:-1], ops, "}"]
        bodies = pc.cast(pc.binary_join_element_wise(*pieces, ""), pa.binary())
        return FastBatch(rows_ok.done(skip), [f"{prefix}profile"] * n, ids_arr, bodies)
