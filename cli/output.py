"""Writing hello records: an aligned table for people, JSON Lines, JSON and CSV for programs.

One `RecordWriter` serves every command that prints ClientHello records (``pcap``,
``live``, and anything else producing dicts with the `sniinspect.capture.RECORD_KEYS`):

    >>> w = RecordWriter(sys.stdout, "table")
    >>> for rec in records:
    ...     w.write(rec)
    >>> w.close()

The table is fitted to the terminal: columns shrink (long values end in "…") and the
least useful ones are dropped when the terminal is narrow. When ``streaming`` is set
(standard input, live capture) rows are printed and flushed one by one with widths
chosen up front; otherwise rows are collected so the columns fit their contents.
Machine formats always stream, one record per line, flushed.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

__all__ = [
    "FORMATS",
    "RecordWriter",
    "as_dict",
    "render_table",
    "summarize",
    "Summary",
    "write_summary",
    "tls_version_label",
]

FORMATS: tuple[str, ...] = ("table", "jsonl", "json", "csv")

# The machine-readable keys, in order (tshark's oracle names, see sniinspect.capture).
_KEYS: tuple[str, ...] = (
    "ts", "src", "sport", "dst", "dport", "transport", "sni", "alpn", "versions",
    "ciphers", "extensions", "groups", "sig_algs", "ja3", "ja4", "error",
    "after", "quic_version",
)  # fmt: skip
_CSV_EXTRA: tuple[str, ...] = ("legacy_version", "sni_problems", "frame", "file")

_ELLIPSIS = "…"

# Table columns: (key, header, minimum width, drop order: lower is dropped first; 0 = never).
_COLUMNS: tuple[tuple[str, str, int, int], ...] = (
    ("time", "TIME (UTC)", 19, 9),
    ("client", "CLIENT", 21, 0),
    ("server", "SERVER", 21, 8),
    ("proto", "PROTO", 4, 5),
    ("sni", "SNI", 16, 0),
    ("alpn", "ALPN", 4, 3),
    ("tls", "TLS", 3, 4),
    ("ja4", "JA4", 10, 2),
    ("note", "NOTE", 11, 1),
    ("error", "ERROR", 24, 1),
)
# What gives way, in order, when the record table is wider than the terminal: the
# server name stays readable longest; JA4 and ALPN go before addresses are clipped.
_FIT_STEPS: tuple[tuple[str, str], ...] = (
    ("shrink", "time"), ("shrink", "error"), ("shrink", "note"), ("shrink", "ja4"),
    ("drop", "ja4"),
    ("shrink", "alpn"), ("drop", "alpn"), ("shrink", "addresses"),
    ("drop", "tls"), ("drop", "time"), ("shrink", "sni"), ("drop", "server"),
)  # fmt: skip
# Rows collected to size the table's columns before the rest are streamed.
_TABLE_SAMPLE = 1000
# Widths used when rows stream (they cannot be measured first).
_STREAM_WIDTHS = {
    "time": 26, "client": 21, "server": 21, "proto": 5, "sni": 32, "alpn": 10, "tls": 4,
    "ja4": 36, "note": 24, "error": 30,
}  # fmt: skip
# The NOTE column: why a client sent its hello again (the record's ``after``).
_AFTER_NOTES = {
    "retry": "after Retry",
    "hello_verify_request": "after HelloVerifyRequest",
    "hello_retry_request": "after HelloRetryRequest",
}

_VERSION_LABELS = {0x0002: "SSL2", 0x0300: "SSL3", 0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2",
                   0x0304: "1.3", 0x0100: "D0.9", 0xFEFF: "D1.0", 0xFEFD: "D1.2",
                   0xFEFC: "D1.3"}  # fmt: skip


def _version_rank(version: int) -> int:
    """Order versions by protocol: DTLS counts down (0xfeff 1.0 < 0xfefd 1.2 < 0xfefc 1.3)."""
    return 0x03FF - (version & 0xFF) if version >> 8 == 0xFE else version


def as_dict(record: Any) -> dict[str, Any]:
    """A record (a `HelloRecord` or a mapping) as a plain dict."""
    if isinstance(record, Mapping):
        return dict(record)
    to_dict = getattr(record, "to_dict", None)
    if to_dict is None:
        raise TypeError(f"cannot format {type(record).__name__} as a record")
    return to_dict()  # type: ignore[no-any-return]


def tls_version_label(rec: Mapping[str, Any]) -> str:
    """The highest (D)TLS version a hello offers: supported_versions, else legacy_version."""
    versions = [v for v in rec.get("versions") or () if (v & 0x0F0F) != 0x0A0A]
    best = max(versions, key=_version_rank) if versions else rec.get("legacy_version")
    if best is None:
        return ""
    if best in _VERSION_LABELS:
        return _VERSION_LABELS[best]
    if best >> 8 == 0x7F:  # TLS 1.3 drafts, 0x7f00 + draft number
        return f"1.3d{best & 0xFF}"
    return f"0x{best:04x}"


def _endpoint(addr: Any, port: Any) -> str:
    if addr is None:
        return ""
    addr = str(addr)
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _time(ts: Any) -> str:
    if ts is None:
        return ""
    text = str(ts)
    sec, _, frac = text.partition(".")
    try:
        when = _dt.datetime.fromtimestamp(int(sec), tz=_dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return text
    return when.strftime("%Y-%m-%d %H:%M:%S") + (f".{frac[:6]}" if frac else "")


def _row(rec: Mapping[str, Any]) -> dict[str, str]:
    sni = rec.get("sni")
    problems = rec.get("sni_problems") or []
    sni_text = "" if sni is None else (sni if sni else '""')
    if problems:
        sni_text += f" ({', '.join(problems)})"
    transport = str(rec.get("transport") or "")
    quic_version = rec.get("quic_version")
    if quic_version and quic_version != "v1":
        transport += f"-{quic_version}"  # "quic-v2", "quic-draft-29"
    after = rec.get("after")
    return {
        "time": _time(rec.get("ts")),
        "client": _endpoint(rec.get("src"), rec.get("sport")),
        "server": _endpoint(rec.get("dst"), rec.get("dport")),
        "proto": transport,
        "note": _AFTER_NOTES.get(after, after) if after else "",
        "sni": sni_text if sni is not None or problems else ("-" if not rec.get("error") else ""),
        "alpn": ",".join(rec.get("alpn") or ()),
        "tls": "" if rec.get("error") else tls_version_label(rec),
        "ja4": rec.get("ja4") or "",
        "error": rec.get("error") or "",
    }


def _clip(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    return text[: width - 1] + _ELLIPSIS


def _fit(
    columns: Sequence[tuple[str, str, int, int]], widths: dict[str, int], total: int
) -> tuple[list[tuple[str, str, int, int]], dict[str, int]]:
    """Shrink, then drop, columns until the row (with 2-space gaps) fits ``total``.

    Follows `_FIT_STEPS` (for the record table) and then, for any table, drops the
    columns with the lowest non-zero drop order and shrinks the rest to their minimum.
    """
    cols = list(columns)
    widths = dict(widths)
    mins = {c[0]: min(c[2], widths[c[0]]) for c in cols}

    def used() -> int:
        return sum(widths[c[0]] for c in cols) + 2 * (len(cols) - 1)

    def step(action: str, key: str) -> None:
        present = [c for c in cols if c[0] == key]
        if not present:
            return
        if action == "drop":
            cols.remove(present[0])
        else:
            widths[key] = max(mins[key], widths[key] - (used() - total))

    def shrink_addresses() -> None:
        # Client and server give way together: always clip the wider of the two.
        pair = [k for k in ("client", "server") if any(c[0] == k for c in cols)]
        while pair and used() > total:
            key = max(pair, key=lambda k: widths[k] - mins[k])
            if widths[key] <= mins[key]:
                break
            widths[key] -= 1

    for action, key in _FIT_STEPS:
        if used() <= total:
            return cols, widths
        if key == "addresses":
            shrink_addresses()
        elif key == "time" and action == "shrink":
            widths[key] = mins[key]  # whole seconds rather than a clipped fraction
        else:
            step(action, key)
    for c in sorted(cols, key=lambda c: c[2]):
        if used() <= total:
            break
        step("shrink", c[0])
    while used() > total and any(c[3] for c in cols):
        cols.remove(min((c for c in cols if c[3]), key=lambda c: c[3]))
    return cols, widths


def render_table(
    rows: Sequence[Mapping[str, str]],
    columns: Sequence[tuple[str, str, int, int]],
    width: int,
) -> list[str]:
    """Lines of an aligned table of ``rows`` fitted to ``width`` characters.

    Columns empty in every row are left out; the last column is not padded.
    """
    cols, widths = _layout(rows, columns, width)
    return [_line({c[0]: c[1] for c in cols}, cols, widths)] + [
        _line(r, cols, widths) for r in rows
    ]


def _layout(
    rows: Sequence[Mapping[str, str]],
    columns: Sequence[tuple[str, str, int, int]],
    width: int,
    always: tuple[str, ...] = (),
) -> tuple[list[tuple[str, str, int, int]], dict[str, int]]:
    """Columns and widths fitting ``rows``; the ``always`` columns are kept even if empty."""
    present = [c for c in columns if c[0] in always or any(r.get(c[0]) for r in rows)]
    present = present or list(columns[:1])
    widths = {
        c[0]: max([len(c[1]), c[2] if c[0] in always else 0] + [len(r.get(c[0], "")) for r in rows])
        for c in present
    }
    return _fit(present, widths, width)


def _line(
    values: Mapping[str, str], cols: Sequence[tuple[str, str, int, int]], widths: Mapping[str, int]
) -> str:
    parts = []
    for key, _header, _min, _drop in cols:
        text, width = values.get(key, ""), widths[key]
        # A time loses digits of its fraction, not an ellipsis's worth of its seconds.
        text = text[:width] if key == "time" and width >= 19 else _clip(text, width)
        parts.append(text.ljust(width))
    return "  ".join(parts).rstrip()


class RecordWriter:
    """Writes records to a text stream in one of `FORMATS`.

    Args:
        out: the text stream (stdout).
        fmt: ``table`` (default for people), ``jsonl``, ``json`` or ``csv``.
        width: the table's width; default: the terminal's (80 when not a terminal
            is not assumed: a pipe gets the table's natural width, unclipped).
        streaming: print table rows as they come (fixed widths) instead of at close,
            and flush after every record (input read as it arrives, e.g. ``live``);
            otherwise the stream's own buffering holds lines until `close`.
    """

    def __init__(
        self,
        out: TextIO,
        fmt: str = "table",
        *,
        width: int | None = None,
        streaming: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        self.out = out
        self.fmt = fmt
        self.streaming = streaming
        self.count = 0
        if width is None:
            isatty = getattr(out, "isatty", lambda: False)
            width = shutil.get_terminal_size((80, 24)).columns if isatty() else 10_000
        self.width = width
        self._rows: list[dict[str, str]] = []
        self._csv: Any = None
        self._stream_cols: list[tuple[str, str, int, int]] | None = None
        self._stream_widths: dict[str, int] = {}

    def write(self, record: Any) -> None:
        """Write (or, for a non-streaming table, collect) one record."""
        rec = as_dict(record)
        self.count += 1
        if self.fmt == "jsonl":
            # A HelloRecord's dict is in _KEYS order already; a mapping is put in it.
            line = _dumps(_ordered(rec) if isinstance(record, Mapping) else rec)
            self.out.write(line + "\n")
            if self.streaming:
                self.out.flush()
        elif self.fmt == "json":
            self.out.write(("[\n" if self.count == 1 else ",\n") + _dumps(_ordered(rec)))
            if self.streaming:
                self.out.flush()
        elif self.fmt == "csv":
            if self._csv is None:
                self._csv = csv.writer(self.out, lineterminator="\n")
                self._csv.writerow(_KEYS + _CSV_EXTRA)
            self._csv.writerow([_csv_cell(rec.get(k)) for k in _KEYS + _CSV_EXTRA])
            if self.streaming:
                self.out.flush()
        elif self.streaming:
            if self._stream_cols is None:
                widths = {c[0]: max(_STREAM_WIDTHS[c[0]], len(c[1])) for c in _COLUMNS}
                self._stream_cols, self._stream_widths = _fit(_COLUMNS, widths, self.width)
                header = {c[0]: c[1] for c in self._stream_cols}
                self.out.write(_line(header, self._stream_cols, self._stream_widths) + "\n")
            self.out.write(_line(_row(rec), self._stream_cols, self._stream_widths) + "\n")
            self.out.flush()
        else:
            self._rows.append(_row(rec))
            if len(self._rows) >= _TABLE_SAMPLE:
                # Enough to size the columns: print these and stream the rest, so a
                # capture with millions of hellos does not pile rows up in memory.
                cols, widths = _layout(self._rows, _COLUMNS, self.width, always=("error",))
                self._stream_cols, self._stream_widths = cols, widths
                self.out.write(_line({c[0]: c[1] for c in cols}, cols, widths) + "\n")
                for row in self._rows:
                    self.out.write(_line(row, cols, widths) + "\n")
                self.out.flush()
                self._rows = []
                self.streaming = True

    def close(self) -> None:
        """Finish the output (closing bracket, buffered table)."""
        if self.fmt == "json":
            self.out.write("[]\n" if self.count == 0 else "\n]\n")
        elif self.fmt == "csv" and self._csv is None:
            csv.writer(self.out, lineterminator="\n").writerow(_KEYS + _CSV_EXTRA)
        elif self.fmt == "table" and not self.streaming and self._rows:
            for line in render_table(self._rows, _COLUMNS, self.width):
                self.out.write(line + "\n")
        self.out.flush()


_dumps = json.JSONEncoder().encode  # json.dumps with its defaults, without the per-call checks


def _ordered(rec: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: rec.get(k) for k in _KEYS}
    out.update((k, v) for k, v in rec.items() if k not in out and k != "hello")
    return out


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Summary:
    """Counts of hellos per SNI, per client and per transport, kept as records stream by.

    Memory grows with the number of distinct names and clients, not of records.
    """

    def __init__(self) -> None:
        self.total = 0
        self.errors = 0
        self.per_transport: Counter[str] = Counter()
        self.per_sni: Counter[str | None] = Counter()
        self.per_client: Counter[str] = Counter()
        self.sni_clients: defaultdict[str | None, set[str]] = defaultdict(set)
        self.client_snis: defaultdict[str, set[str | None]] = defaultdict(set)

    def add(self, record: Any) -> None:
        rec = record if isinstance(record, Mapping) else as_dict(record)
        self.total += 1
        if rec.get("error"):
            self.errors += 1
        sni, client = rec.get("sni"), str(rec.get("src"))
        self.per_transport[str(rec.get("transport") or "tcp")] += 1
        self.per_sni[sni] += 1
        self.per_client[client] += 1
        self.sni_clients[sni].add(client)
        self.client_snis[client].add(sni)

    def result(self) -> dict[str, Any]:
        """See `summarize`."""

        def order(item: tuple[Any, int]) -> tuple[int, str]:
            return (-item[1], "" if item[0] is None else str(item[0]))

        return {
            "hellos": self.total,
            "errors": self.errors,
            "transports": dict(sorted(self.per_transport.items(), key=order)),
            "sni": [
                {"sni": s, "hellos": n, "clients": len(self.sni_clients[s])}
                for s, n in sorted(self.per_sni.items(), key=order)
            ],
            "clients": [
                {"client": c, "hellos": n, "snis": len(self.client_snis[c])}
                for c, n in sorted(self.per_client.items(), key=order)
            ],
        }


def summarize(records: Iterable[Any]) -> dict[str, Any]:
    """Counts of hellos per SNI and per client address.

    Returns:
        ``{"hellos": n, "errors": n, "transports": {"tcp": n, "quic": n, "dtls": n},
        "sni": [{"sni", "hellos", "clients"}...], "clients": [{"client", "hellos",
        "snis"}...]}``, most frequent first. A hello without SNI counts under ``null``.
    """
    acc = Summary()
    for record in records:
        acc.add(record)
    return acc.result()


def write_summary(
    out: TextIO, summary: Mapping[str, Any], fmt: str, width: int | None = None
) -> None:
    """Print a `summarize` result as two tables (people) or one JSON document."""
    if fmt in ("json", "jsonl"):
        out.write(json.dumps(summary, indent=2 if fmt == "json" else None) + "\n")
        return
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["kind", "name", "hellos", "distinct"])
        for item in summary["sni"]:
            w.writerow(["sni", item["sni"] or "", item["hellos"], item["clients"]])
        for item in summary["clients"]:
            w.writerow(["client", item["client"], item["hellos"], item["snis"]])
        for name, count in summary.get("transports", {}).items():
            w.writerow(["transport", name, count, ""])
        return
    if width is None:
        isatty = getattr(out, "isatty", lambda: False)
        width = shutil.get_terminal_size((80, 24)).columns if isatty() else 10_000
    cols = (("name", "SNI", 12, 0), ("hellos", "HELLOS", 6, 0), ("other", "CLIENTS", 7, 0))
    rows = [
        {"name": "(none)" if i["sni"] is None else i["sni"] or '""', "hellos": str(i["hellos"]),
         "other": str(i["clients"])}
        for i in summary["sni"]
    ]  # fmt: skip
    lines = render_table(rows, cols, width) if rows else []
    cols = (("name", "CLIENT", 12, 0), ("hellos", "HELLOS", 6, 0), ("other", "SNIS", 4, 0))
    rows = [
        {"name": i["client"], "hellos": str(i["hellos"]), "other": str(i["snis"])}
        for i in summary["clients"]
    ]
    if rows:
        lines += ["", *render_table(rows, cols, width)]
    per = ", ".join(f"{n} {t}" for t, n in summary.get("transports", {}).items())
    total = f"{summary['hellos']} hellos" + (f" ({per})" if per else "")
    lines += ["", f"{total}, {summary['errors']} unparseable"]
    out.write("\n".join(lines) + "\n")
