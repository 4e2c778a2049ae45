"""The parallel part of ``benchmarks/pcap.py``: ``--jobs 1`` against N, Parquet against jsonl.

    python benchmarks/pcap.py --parallel                 # 1M packets, --jobs 1 and 2
    python benchmarks/pcap.py --parallel --packets 300000 --jobs 4

Uses the benchmark's generated capture (``pcap.generate``) of ``--packets`` packets, and
the same packets rotated into 8 files of consecutive records (as ``tcpdump -C``), so
hellos straddle the files. Timed in one run, each command in its own process (wall
clock, best of 3 after the files were written and read once; peak RSS from
``/usr/bin/time -f %M``, the largest process of the tree: the parent or one worker):

- ``sniinspect pcap --format jsonl`` with ``--jobs 1`` and ``--jobs N`` on the 8 files
  and on the one big file; the outputs must be identical;
- the Parquet writer against the jsonl writer, in this process, over the records of
  the run repeated to 200,000 rows (writing only: no capture is read);
- ``--format parquet -o DIR --jobs N`` end to end on the big file.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROWS = 200_000  # records written by each writer in the writer comparison
REPEAT = 3  # runs of each command; the best is kept


def rotate(big: Path, n: int, folder: Path) -> list[Path]:
    """Cut a pcap into ``n`` files of consecutive records (its 24-byte header on each)."""
    data = big.read_bytes()
    header, pos, offsets = data[:24], 24, [24]
    while pos + 16 <= len(data):
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
        offsets.append(pos)
    step = len(data) // n
    cuts = [24]
    for off in offsets:
        if off >= step * len(cuts) and len(cuts) < n:
            cuts.append(off)
    cuts.append(len(data))
    out = []
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        # Named against their time order, as ring buffers wrap: the tool sorts by time.
        path = folder / f"ring-{(i * 5) % n:02d}.pcap"
        path.write_bytes(header + data[a:b])
        out.append(path)
    return out


def _writers(records: list[dict[str, Any]], tmp: Path) -> tuple[float, float, int, int]:
    """(jsonl s, parquet s, jsonl bytes, parquet bytes) writing ROWS records."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sniinspect.capture.parquet import ParquetWriter
    from sniinspect.output import RecordWriter

    rows = (records * (ROWS // max(1, len(records)) + 1))[:ROWS]
    t0 = time.perf_counter()
    with open(tmp / "w.jsonl", "w") as f:
        w = RecordWriter(f, "jsonl")
        for r in rows:
            w.write(r)
        w.close()
    t1 = time.perf_counter()
    pw = ParquetWriter(tmp / "w.parquet")
    for r in rows:
        pw.write(r)
    pw.close()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, (tmp / "w.jsonl").stat().st_size, (tmp / "w.parquet").stat().st_size


def _best(
    timed: Callable[[list[str], Path], tuple[float, int, str]], cmd: list[str], out: Path
) -> tuple[float, int]:
    """(best wall seconds, its peak RSS) of ``REPEAT`` runs: the machine may be shared."""
    runs = [timed(cmd, out)[:2] for _ in range(REPEAT)]
    return min(runs)


def run(
    tmp: Path,
    ours_cmd: list[str],
    timed: Callable[[list[str], Path], tuple[float, int, str]],
    generate: Callable[[Path, int, int], tuple[set[str], int]],
    packets: int,
    hellos: int,
    jobs: int,
) -> tuple[str, bool]:
    """The Markdown section, and whether every ``--jobs N`` output equals ``--jobs 1``'s."""
    cmd = [*ours_cmd, *(["pcap"] if len(ours_cmd) == 1 else [])]
    big = tmp / "big.pcap"
    names, n = generate(big, packets, hellos)
    ring = tmp / "ring"
    ring.mkdir()
    files = rotate(big, 8, ring)
    size = big.stat().st_size
    os.sync()  # the files written, so that writing back does not slow the runs timed
    rows, ok = [], True
    for label, inputs in (("8 rotated files", files), ("one file", [big])):
        out1, outn = tmp / "j1.jsonl", tmp / "jn.jsonl"
        s1, rss1 = _best(timed, [*cmd, "--format", "jsonl", *map(str, inputs)], out1)
        sn, rssn = _best(
            timed, [*cmd, "--format", "jsonl", "--jobs", str(jobs), *map(str, inputs)], outn
        )
        same = out1.read_bytes() == outn.read_bytes()
        found = {json.loads(x)["sni"] for x in out1.read_text().splitlines()}
        ok &= same and found == names
        rows.append(
            f"| {label} | {s1:.2f} | {sn:.2f} | {s1 / sn:.2f}x | {n / sn:,.0f} | {rss1} | {rssn} "
            f"| {'yes' if same else 'NO'} | {len(found):,} of {len(names):,} |"
        )
    records = [json.loads(x) for x in (tmp / "j1.jsonl").read_text().splitlines()]
    js, ps, jb, pb = _writers(records, tmp)
    pq_s, pq_rss, _ = timed(
        [*cmd, "--format", "parquet", "-o", str(tmp / "parts"), "--jobs", str(jobs), str(big)],
        tmp / "pq.out",
    )
    lines = [
        f"Capture: {n:,} packets, {size / 2**20:.0f} MiB, {len(names):,} ClientHellos "
        f"(`pcap.generate`); the same packets rotated into 8 files.",
        "",
        f"| input | --jobs 1 (s) | --jobs {jobs} (s) | speed-up | packets/s, {jobs} jobs "
        "| peak RSS 1 (MiB) | peak RSS per process, "
        f"{jobs} jobs (MiB) | same output | SNIs found |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
        *rows,
        "",
        f"Writers, in one process, {ROWS:,} records: jsonl {js:.2f} s ({ROWS / js:,.0f}/s, "
        f"{jb / 2**20:.0f} MiB), Parquet {ps:.2f} s ({ROWS / ps:,.0f}/s, {pb / 2**20:.1f} MiB). "
        f"End to end `--format parquet -o DIR --jobs {jobs}` on the one file: {pq_s:.2f} s, "
        f"peak RSS {pq_rss} MiB.",
        "",
        f"Machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end.",
        f"Command: `python benchmarks/pcap.py --parallel --packets {packets} --jobs {jobs}`",
    ]
    shutil.rmtree(ring, ignore_errors=True)
    return "\n".join(lines) + "\n", ok
