"""Parallel runs (`sniinspect.capture.split`, `.parallel`, `.analysis`): as one process.

- ``--jobs 2`` equals ``--jobs 1`` on every capture in captures/, with files cut into
  many small parts, and on generated files whose hellos straddle every split point
  (pcap and pcapng, a pcapng file with a second section, a corrupt record mid-file);
- rotated captures: a hello split between two files is found, in one task or two;
- bad inputs among good ones: one stderr line each, exit 1, the rest analysed;
- a Dask LocalCluster (in-process, loopback) gives the same records;
- the split planner finds exactly the records' boundaries.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sniinspect.capture import split
from sniinspect.capture.analysis import analyze
from sniinspect.capture.command import pcap

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "captures"
HELLO = (CAPTURES / "hellos" / "python.bin").read_bytes()  # names python.test once
T0 = 1_700_000_000


def _captures() -> list[Path]:
    return sorted(
        p for p in CAPTURES.iterdir() if (p.parent / (p.name + ".expected.jsonl")).exists()
    )


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(pcap, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result.exit_code, result.stdout, result.stderr


def records(paths: list[Path] | Path, **kw: Any) -> tuple[list[dict[str, Any]], list[str]]:
    a = analyze([str(p) for p in ([paths] if isinstance(paths, Path) else paths)], **kw)
    return [r.to_dict() for r in a], [str(p) for p in a.problems]


# -- generated captures --------------------------------------------------------------------
def _checksum(hdr: bytes) -> int:
    s = sum(struct.unpack("!10H", hdr))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def _frame(src: int, sport: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, 443, seq & 0xFFFFFFFF, 1, 0x50, flags, 65535, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0,
        bytes([10, 9, src >> 8 & 0xFF, src & 0xFF]), bytes([192, 0, 2, 1]),
    )  # fmt: skip
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return bytes(12) + b"\x08\x00" + ip + tcp + payload


def straddling_packets(n: int, seed: int = 7) -> tuple[list[bytes], set[str]]:
    """``n`` connections whose hellos (3 segments each) overlap three at a time.

    Step i sends connection i's SYN and first segment, i-1's second and i-2's third,
    with bulk noise between: wherever a file is cut, hellos straddle the cut.
    """
    rng = random.Random(seed)
    names = {f"h{i:05d}.test"[:11].ljust(11, "x") for i in range(n)}
    ordered = sorted(names)
    hellos = [HELLO.replace(b"python.test", name.encode()) for name in ordered]
    cuts = [(0, 150), (150, 330), (330, len(HELLO))]
    frames: list[bytes] = []
    for step in range(n + 2):
        for lag in range(3):
            i = step - lag
            if not 0 <= i < n:
                continue
            if lag == 0:
                frames.append(_frame(i, 20000 + i, 1000, 0x02))
            a, b = cuts[lag]
            frames.append(_frame(i, 20000 + i, 1001 + a, 0x18, hellos[i][a:b]))
            if rng.random() < 0.5:  # noise: another host's non-TLS bytes
                frames.append(_frame(60000 + step, 40000, step, 0x18, b"GET / HTTP/1.1\r\n\r\n"))
    return frames, set(ordered)


def write_pcap(path: Path, frames: list[bytes], t0: float = T0) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for k, fr in enumerate(frames):
            sec, usec = divmod(int(t0 * 1e6) + 10 * k, 1_000_000)
            f.write(struct.pack("<IIII", sec, usec, len(fr), len(fr)) + fr)


def _pcapng_block(btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def pcapng_section(frames: list[bytes], t0: float = T0, idb_late: bool = False) -> bytes:
    shb = _pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _pcapng_block(1, struct.pack("<HHI", 1, 0, 262144))
    out = [shb, idb]
    for k, fr in enumerate(frames):
        ts = int(t0 * 1e6) + 10 * k
        iface = 1 if idb_late and k >= len(frames) // 2 else 0
        if idb_late and k == len(frames) // 2:
            out.append(idb)  # a second interface, defined mid-file
        body = struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(fr), len(fr)) + fr
        out.append(_pcapng_block(6, body))
    return b"".join(out)


def _check_same(paths: list[Path], part_size: int, overlap: int, **kw: Any) -> list[dict]:
    one, one_problems = records(paths, jobs=1)
    two, two_problems = records(paths, jobs=2, part_size=part_size, overlap=overlap, **kw)
    assert two == one  # the same records in the same (time) order, frames in their files
    assert two_problems == one_problems
    return one


# -- every capture of captures/ ------------------------------------------------------------
@pytest.mark.parametrize("path", _captures(), ids=lambda p: p.name)
def test_jobs_2_equals_jobs_1_on_every_capture(path: Path) -> None:
    # Parts of 300 bytes: every packet or two is a split point; the default overlap
    # covers these small files, so every record must come out exactly once.
    one = _check_same([path], part_size=300, overlap=split.DEFAULT_OVERLAP)
    expected = (path.parent / (path.name + ".expected.jsonl")).read_text().splitlines()
    assert len(one) == len([x for x in expected if x.strip()])


def test_cli_jobs_2_equals_jobs_1() -> None:
    files = [str(p) for p in _captures()]
    code1, out1, err1 = run("--format", "jsonl", *files)
    code2, out2, err2 = run("--format", "jsonl", "--jobs", "2", "--part-size", "400", *files)
    assert (code1, out1, err1) == (code2, out2, err2)
    assert code1 == 1 and "truncated.pcap" in err1  # truncated.pcap is cut mid-record
    assert json.loads(out1.splitlines()[0])["file"] in files  # every record names its file
    s1 = run("--summary", "--format", "json", *files)
    s2 = run("--summary", "--format", "json", "--jobs", "2", "--part-size", "400", *files)
    s3 = run("--summary", "--format", "json", "--sni", "*.test", "-j", "2", *files)
    assert s1 == s2 and json.loads(s1[1])["hellos"] == len(out1.splitlines())
    assert json.loads(s3[1])["hellos"] == sum(
        1 for x in out1.splitlines() if (json.loads(x)["sni"] or "").endswith(".test")
    )


# -- hellos straddling every split point ---------------------------------------------------
@pytest.mark.parametrize("part_size", [700, 2000, 9000])
def test_hellos_straddling_every_split_point_pcap(tmp_path: Path, part_size: int) -> None:
    frames, names = straddling_packets(60)
    path = tmp_path / "straddle.pcap"
    write_pcap(path, frames)
    p = split.plan([str(path)], workers=2, part_size=part_size, overlap=4096)
    assert len(p.tasks) >= path.stat().st_size // part_size // 2  # cut in many parts
    one = _check_same([path], part_size=part_size, overlap=4096)
    assert sorted(r["sni"] for r in one) == sorted(names)  # each once, none lost
    assert all(r["error"] is None and r["file"] == str(path) for r in one)


def test_hellos_straddling_every_split_point_pcapng(tmp_path: Path) -> None:
    frames, names = straddling_packets(40, seed=3)
    path = tmp_path / "straddle.pcapng"
    path.write_bytes(pcapng_section(frames))
    one = _check_same([path], part_size=1500, overlap=4096)
    assert sorted(r["sni"] for r in one) == sorted(names)


def test_pcapng_second_section_and_late_interface_rerun_whole(tmp_path: Path) -> None:
    """Parts cannot carry header blocks that come later: the file is analysed whole."""
    frames, names = straddling_packets(30, seed=5)
    two = tmp_path / "sections.pcapng"
    two.write_bytes(pcapng_section(frames[:80]) + pcapng_section(frames[80:], T0 + 1))
    late = tmp_path / "late-idb.pcapng"
    late.write_bytes(pcapng_section(frames, idb_late=True))
    for path in (two, late):
        one = _check_same([path], part_size=1500, overlap=4096)
        assert sorted(r["sni"] for r in one) == sorted(names)


def corrupt_pcap(path: Path, record: int) -> Path:
    """30 straddling hellos in a pcap whose record number ``record`` claims 2 GiB."""
    frames, _ = straddling_packets(30, seed=9)
    write_pcap(path, frames)
    data = bytearray(path.read_bytes())
    pos = 24 + sum(16 + len(fr) for fr in frames[: record - 1])
    struct.pack_into("<I", data, pos + 8, 0x7FFFFFFF)
    path.write_bytes(bytes(data))
    return path


def test_corrupt_record_mid_file_same_as_jobs_1(tmp_path: Path) -> None:
    path = corrupt_pcap(tmp_path / "corrupt.pcap", 51)
    one = _check_same([path], part_size=1500, overlap=4096)
    assert 0 < len(one) < 30


@pytest.mark.parametrize("order", ["in order", "reversed"])
def test_pcap_parts_out_before_a_later_part_asks_for_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """A pcap part's records go out once the parts before it are out; a corrupt record
    found later re-runs the file whole, and only what comes after them is taken from it.
    With results in order the first records are out before the corrupt part is read;
    reversed, nothing is out before (the old way). Either gives jobs=1's output."""
    from sniinspect.capture import analysis, parallel

    path = corrupt_pcap(tmp_path / "corrupt.pcap", 121)
    one, one_problems = records(path, jobs=1)
    ran: list[int] = []
    out_after: list[int] = []  # how many tasks had run when each record came out

    def run_here(self: Any, tasks: list[split.Task], client: Any) -> Any:
        for t in tasks if order == "in order" else tasks[::-1]:
            ran.append(t.index)
            yield parallel.analyze_part(t)

    monkeypatch.setattr(analysis.Analysis, "_run", run_here)
    a = analyze([str(path)], jobs=2, part_size=1500, overlap=4096)
    two = []
    for rec in a:
        out_after.append(len(ran))
        two.append(rec.to_dict())
    assert two == one and [str(p) for p in a.problems] == one_problems
    serial = analyze([str(path)], jobs=1)
    assert sum(1 for _ in serial) == len(one)
    assert a.packets == serial.packets  # the parts' packets not counted twice
    tasks = len(split.plan([str(path)], workers=2, part_size=1500, overlap=4096).tasks)
    assert len(ran) > tasks  # the whole-file run came after the parts
    if order == "in order":
        assert out_after[0] < tasks  # out before the corrupt part was read
    else:
        assert out_after[0] > tasks


# -- rotated captures ----------------------------------------------------------------------
def test_rotated_files_hello_split_between_them(tmp_path: Path) -> None:
    frames, names = straddling_packets(20, seed=11)
    half = len(frames) // 2
    # Named against their time order: the planner sorts by first packet.
    later, earlier = tmp_path / "a-second.pcap", tmp_path / "b-first.pcap"
    write_pcap(earlier, frames[:half])
    write_pcap(later, frames[half:], T0 + half * 10e-6)
    files = [later, earlier]
    one, _ = records(files, jobs=1)
    assert sorted(r["sni"] for r in one) == sorted(names)
    assert [r["file"] for r in one] == sorted((r["file"] for r in one), reverse=True)
    straddlers = [r for r in one if r["file"] == str(later) and r["frame"] < 6]
    assert straddlers, "a hello straddles the two files"
    for part_size, overlap in ((1 << 20, 4096), (1500, 4096), (1500, 1 << 20)):
        two, _ = records(files, jobs=2, part_size=part_size, overlap=overlap)
        assert two == one
    # Files that do not follow each other in time are not joined.
    write_pcap(later, frames[half:], T0 + 3600)
    apart, _ = records(files, jobs=1)
    assert sum(r["error"] is None for r in apart) < len(names)
    assert any((r["error"] or "").startswith("capture ended") for r in apart)


def test_rotated_files_pair_up_into_equal_tasks(tmp_path: Path) -> None:
    """Eight files of about half a part each make four tasks of two, even when two
    files come to a few bytes over the part size (they once made five, two of them a
    file alone, and two workers then waited on the fifth)."""
    frames, _ = straddling_packets(40, seed=5)
    per = len(frames) // 8
    paths = []
    for i in range(8):
        path = tmp_path / f"ring-{i}.pcap"
        write_pcap(path, frames[i * per : (i + 1) * per], T0 + i * per * 10e-6)
        paths.append(str(path))
    sizes = [Path(p).stat().st_size for p in paths]
    pair = min(a + b for a, b in zip(sizes[::2], sizes[1::2], strict=True))
    p = split.plan(paths, workers=2, part_size=pair - 1)
    owned = [[w.path for r in t.runs for w in r.windows if w.role == "own"] for t in p.tasks]
    assert owned == [paths[i : i + 2] for i in range(0, 8, 2)]


# -- bad inputs ----------------------------------------------------------------------------
def test_bad_files_among_good_ones(tmp_path: Path) -> None:
    random_bytes = tmp_path / "random.pcap"
    random_bytes.write_bytes(random.Random(1).randbytes(5000))
    cut = tmp_path / "cut.pcap"
    frames, _ = straddling_packets(10)
    write_pcap(cut, frames)
    cut.write_bytes(cut.read_bytes()[:-7])  # cut mid-record
    good = [CAPTURES / "hrr.pcap", CAPTURES / "multi-interface.pcapng.gz"]
    args = [str(tmp_path / "missing.pcap"), str(random_bytes), str(cut), *map(str, good)]
    code1, out1, _err1 = run("--format", "jsonl", *args)
    code, out, err = run("--format", "jsonl", "--jobs", "2", "--part-size", "600", *args)
    assert code == code1 == 1 and out == out1
    lines = err.splitlines()
    assert len(lines) == 3 and "Traceback" not in err
    assert "missing.pcap" in lines[0] and "No such file" in lines[0]
    assert "random.pcap" in lines[1] and "not a pcap" in lines[1]
    assert "cut.pcap" in lines[2] and "cut short" in lines[2]
    got = {json.loads(x)["file"] for x in out.splitlines()}
    assert got == {str(cut), *map(str, good)}


def test_usage_errors() -> None:
    one = str(CAPTURES / "hrr.pcap")
    assert run("--jobs", "2", "-")[0] == 2
    assert run("--format", "parquet", one)[0] == 2  # needs --output
    assert run("--partition-by", "date", one)[0] == 2
    assert run("--jobs", "-1", one)[0] == 2


def test_progress_one_bar_and_totals() -> None:
    files = [str(CAPTURES / "hrr.pcap"), str(CAPTURES / "noise.pcap")]
    code, out, err = run("--progress", "--jobs", "2", "--part-size", "300", *files)
    assert code == 0 and "2 files [" in err and "%" in err  # one bar for all inputs
    assert "packets" in err.splitlines()[-1] and "3 hellos" in err.splitlines()[-1]
    assert "[" not in out


# -- the planner ---------------------------------------------------------------------------
def test_sync_finds_record_boundaries(tmp_path: Path) -> None:
    frames, _ = straddling_packets(30)
    path = tmp_path / "x.pcap"
    write_pcap(path, frames)
    starts, pos = set(), 24
    for fr in frames:
        starts.add(pos)
        pos += 16 + len(fr)
    info = split.probe(0, str(path))
    assert info.first_ts == T0 * 10**9 and info.last_ts == T0 * 10**9 + 10_000 * (len(frames) - 1)
    with open(path, "rb") as f:
        for at in range(24, pos - 200, 37):
            b = split.pcap_sync(f, info, at)
            assert b in starts and b >= at and not any(at <= s < b for s in starts)
    ng = tmp_path / "x.pcapng"
    ng.write_bytes(pcapng_section(frames))
    info = split.probe(0, str(ng))
    with open(ng, "rb") as f:
        blocks, p = set(), info.data_start
        data = ng.read_bytes()
        while p < len(data):
            blocks.add(p)
            p += struct.unpack_from("<I", data, p + 4)[0]
        for at in range(info.data_start, len(data) - 200, 41):
            b = split.pcapng_sync(f, info, at)
            assert b in blocks and not any(at <= s < b for s in blocks)


# -- Dask ----------------------------------------------------------------------------------
def test_dask_local_cluster_equals_local_run(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="Dask is an optional extra")
    frames, names = straddling_packets(30)
    path = tmp_path / "straddle.pcap"
    write_pcap(path, frames)
    files = [path, CAPTURES / "hrr.pcap", CAPTURES / "multi-interface.pcapng.gz"]
    one, _ = records(files, jobs=1)
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,  # worker threads in this process, talking over loopback TCP
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    )
    try:
        with distributed.Client(cluster) as client:
            got, _ = records(files, dask=client, part_size=2000, overlap=4096)
    finally:
        cluster.close()
    assert got == one
    assert {r["sni"] for r in got} >= names
