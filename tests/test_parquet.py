"""Parquet output (`sniinspect.capture.parquet`): read back with pyarrow, it is the jsonl run.

Every record key has a column type (a new key without one fails here, by name); a run in
this process writes one file, a parallel run a directory of parts (Hive ``date=``
folders on request) with the same schema in every part; without pyarrow the error
names the extra to install.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sniinspect.capture import parquet as pq_out
from sniinspect.capture.command import pcap

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "captures"
FILES = [str(p) for p in sorted(CAPTURES.glob("*.pcap"))] + [
    str(CAPTURES / "multi-interface.pcapng.gz")
]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(pcap, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result.exit_code, result.stdout, result.stderr


def test_every_record_key_has_a_column_type() -> None:
    keys = pq_out.record_keys()
    missing = [k for k in keys if k not in pq_out.COLUMN_TYPES]
    assert not missing, (
        f"record key(s) {missing} have no Parquet type: add one line each to COLUMN_TYPES "
        "in cli/capture/parquet.py"
    )
    assert set(pq_out.COLUMN_TYPES) == set(keys), "COLUMN_TYPES names keys records lack"
    _code, out, _ = run("--format", "jsonl", str(CAPTURES / "hrr.pcap"))
    assert list(json.loads(out.splitlines()[0])) == list(keys)  # the jsonl keys, in order


def _jsonl(*args: str) -> list[dict[str, Any]]:
    code, out, _ = run("--format", "jsonl", *args, *FILES)
    assert code == 1  # truncated.pcap
    return [json.loads(x) for x in out.splitlines()]


def _ts_micros(ts: str) -> dt.datetime:
    sec, frac = ts.split(".")
    micros = int(sec) * 1_000_000 + int(frac[:6])
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=micros)


def _same(rows: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(rows) == len(expected)
    for row, exp in zip(rows, expected, strict=True):
        assert set(row) >= set(exp)
        for key, value in exp.items():
            if key == "ts":
                assert row["ts"] == _ts_micros(value), (row["ts"], value)
            else:
                assert row[key] == value, (key, row[key], value)


def test_parquet_file_equals_jsonl_field_by_field(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet output is an optional extra")
    import pyarrow.parquet as pq

    out = tmp_path / "hellos.parquet"
    code, stdout, _ = run("--format", "parquet", "--output", str(out), *FILES)
    assert code == 1 and stdout == ""
    table = pq.read_table(out)
    assert table.schema.equals(pq_out.schema())
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    for name in ("alpn", "versions", "ciphers", "extensions", "groups", "sig_algs"):
        assert pa.types.is_list(table.schema.field(name).type)
    _same(table.to_pylist(), _jsonl())


def test_parquet_parts_under_jobs_equal_jsonl(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="Parquet output is an optional extra")
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    out = tmp_path / "parts"  # created
    args = ("--jobs", "2", "--part-size", "2000")
    code, _, _ = run("--format", "parquet", "-o", str(out), "--partition-by", "date", *args, *FILES)
    assert code == 1
    parts = sorted(out.rglob("*.parquet"))
    assert len(parts) > 1 and all(p.parent.name == "date=2023-11-14" for p in parts)
    schema = pq_out.schema()
    assert all(pq.read_schema(p).equals(schema) for p in parts)  # the same in every part
    rows = []
    for p in parts:  # part files are numbered in the records' order
        rows += pq.read_table(p).to_pylist()
    _same(rows, _jsonl(*args))
    dataset = ds.dataset(out, format="parquet", partitioning="hive")
    assert dataset.count_rows() == len(rows) and "date" in dataset.schema.names


def test_library_to_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="Parquet output is an optional extra")
    import pyarrow.parquet as pq

    from sniinspect.pcap import analyze

    n = analyze([str(CAPTURES / "hrr.pcap")]).to_parquet(tmp_path / "one.parquet")
    assert n == 2 and pq.read_table(tmp_path / "one.parquet").num_rows == 2
    n = analyze([str(CAPTURES / "noise.pcap")], jobs=2).to_parquet(tmp_path / "dir")
    assert n == 1 and len(list((tmp_path / "dir").glob("part-*.parquet"))) == 1


def test_without_pyarrow_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    code, _, err = run("--format", "parquet", "-o", str(tmp_path / "x.parquet"), FILES[0])
    assert code == 1 and "pip install 'sniinspect[parquet]'" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
