"""Hello records as Parquet: one column per record key, the same schema in every file.

    >>> w = ParquetWriter("hellos.parquet")
    >>> for rec in records:
    ...     w.write(rec)
    >>> w.close()

The schema is defined once, from the record's keys (every key ``sniinspect pcap
--format jsonl`` prints, ``frame`` and ``file`` included, in that order) and
`COLUMN_TYPES`. A new record key needs one line there; `schema` refuses to run
without it, naming the key. ``ts`` becomes ``timestamp[us, tz=UTC]`` (the text's
nanoseconds are cut to microseconds), the lists of numbers ``list<int32>``.

A run in this process writes one file; a parallel run (or one asked for partitions)
writes a directory of part files, ``part-00000.parquet`` per task, under Hive-style
``date=YYYY-MM-DD`` folders with ``partition_by="date"`` (DuckDB's
``read_parquet('dir/**/*.parquet', hive_partitioning=true)``, pandas, Polars and
Spark read them as one table). pyarrow is needed only here: ``pip install
'sniinspect[parquet]'``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from collections.abc import Mapping
from typing import Any

from sniinspect.capture.records import HelloRecord

__all__ = ["COLUMN_TYPES", "PARTITIONS", "ParquetWriter", "record_keys", "schema", "require"]

# The Arrow type of each record key. Names: string, bool, int32, int64, timestamp
# (timestamp[us, tz=UTC]) and list<T>.
COLUMN_TYPES: dict[str, str] = {
    "ts": "timestamp",
    "src": "string",
    "sport": "int32",
    "dst": "string",
    "dport": "int32",
    "transport": "string",
    "sni": "string",
    "alpn": "list<string>",
    "versions": "list<int32>",
    "ciphers": "list<int32>",
    "extensions": "list<int32>",
    "groups": "list<int32>",
    "sig_algs": "list<int32>",
    "ja3": "string",
    "ja4": "string",
    "error": "string",
    "after": "string",
    "quic_version": "string",
    "legacy_version": "int32",
    "sni_problems": "list<string>",
    "sslv2": "bool",
    "frame": "int64",
    "file": "string",
}

PARTITIONS = ("date",)  # what ``partition_by`` may name
_ROW_GROUP = 65_536  # rows buffered per file before a row group is written
_EXTRA = "sniinspect[parquet]"


def require() -> Any:
    """The pyarrow module, or an ImportError saying which extra installs it."""
    try:
        import pyarrow  # type: ignore[import-untyped]  # no stubs in pyarrow 26
    except ImportError:
        raise ImportError(f"Parquet output needs pyarrow: pip install '{_EXTRA}'") from None
    return pyarrow


def record_keys() -> tuple[str, ...]:
    """Every key of a record's dict (`HelloRecord.to_dict`), in order."""
    return tuple(f.name for f in dataclasses.fields(HelloRecord) if f.name != "hello")


def _arrow_type(pa: Any, name: str) -> Any:
    if name.startswith("list<") and name.endswith(">"):
        return pa.list_(_arrow_type(pa, name[5:-1]))
    if name == "timestamp":
        return pa.timestamp("us", tz="UTC")
    simple = {"string": pa.string(), "bool": pa.bool_(), "int32": pa.int32(), "int64": pa.int64()}
    if name not in simple:
        raise ValueError(f"unknown column type {name!r} in COLUMN_TYPES")
    return simple[name]


def schema() -> Any:
    """The `pyarrow.Schema` of every file written.

    Raises:
        KeyError: a record key has no entry in `COLUMN_TYPES`.
    """
    pa = require()
    keys = record_keys()
    missing = [k for k in keys if k not in COLUMN_TYPES]
    if missing:
        raise KeyError(
            f"no Parquet column type for record key(s) {', '.join(missing)}: add them to "
            "COLUMN_TYPES in sniinspect/capture/parquet.py"
        )
    return pa.schema([pa.field(k, _arrow_type(pa, COLUMN_TYPES[k])) for k in keys])


def _micros(ts: Any) -> int | None:
    """tshark's epoch-seconds text (``"1700000000.000400000"``) as epoch microseconds."""
    if ts is None:
        return None
    sec, _, frac = str(ts).partition(".")
    return int(sec) * 1_000_000 + int((frac + "000000")[:6])


def _date(ts: Any) -> str:
    micros = _micros(ts) or 0
    return (_dt.datetime(1970, 1, 1) + _dt.timedelta(microseconds=micros)).strftime("%Y-%m-%d")


class ParquetWriter:
    """Writes records (`HelloRecord` or mappings with its keys) to Parquet.

    Args:
        path: the file, or with ``dataset`` or ``partition_by`` the directory.
        dataset: write a directory of part files (``write``'s ``part`` picks the file).
        partition_by: ``"date"`` for Hive-style ``date=YYYY-MM-DD`` folders (UTC).

    Raises:
        ImportError: pyarrow is missing (the message names the extra to install).
        ValueError: an unknown ``partition_by``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dataset: bool = False,
        partition_by: str | None = None,
    ) -> None:
        if partition_by is not None and partition_by not in PARTITIONS:
            raise ValueError(f"cannot partition by {partition_by!r}; choose from {PARTITIONS}")
        self.pa = require()
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        self.pq = pq
        self.schema = schema()
        self.keys = record_keys()
        self.path = os.fspath(path)
        self.dataset = dataset or partition_by is not None
        self.partition_by = partition_by
        self.rows = 0
        self._part = -1
        self._buffers: dict[str, list[dict[str, Any]]] = {}
        self._writers: dict[str, Any] = {}
        if self.dataset:
            os.makedirs(self.path, exist_ok=True)

    def write(self, record: Any, part: int = 0) -> None:
        """Add one record; with a dataset, ``part`` (never decreasing) names its file."""
        rec: dict[str, Any] = dict(record) if isinstance(record, Mapping) else record.to_dict()
        if part != self._part:
            self._close_writers()
            self._part = part
        key = f"date={_date(rec.get('ts'))}" if self.partition_by == "date" else ""
        buf = self._buffers.setdefault(key, [])
        buf.append(rec)
        self.rows += 1
        if len(buf) >= _ROW_GROUP:
            self._flush(key)

    def close(self) -> None:
        """Write what is buffered and the files' footers (an empty file if no rows)."""
        if self.rows == 0 and not self._writers:
            self._buffers.setdefault("", [])
        self._close_writers()

    def _file(self, key: str) -> str:
        if not self.dataset:
            return self.path
        folder = os.path.join(self.path, key) if key else self.path
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, f"part-{max(self._part, 0):05d}.parquet")

    def _flush(self, key: str) -> None:
        rows = self._buffers.pop(key, [])
        writer = self._writers.get(key)
        if writer is None:
            writer = self.pq.ParquetWriter(self._file(key), self.schema)
            self._writers[key] = writer
        if rows:
            writer.write_table(self._table(rows))

    def _close_writers(self) -> None:
        for key in list(self._buffers):
            self._flush(key)
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def _table(self, rows: list[dict[str, Any]]) -> Any:
        pa = self.pa
        arrays = []
        for name, field in zip(self.keys, self.schema, strict=False):
            if name == "ts":
                values = [_micros(r.get("ts")) for r in rows]
            else:
                values = [r.get(name) for r in rows]
            arrays.append(pa.array(values, type=field.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)
