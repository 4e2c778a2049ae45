"""Planning a parallel run: inputs probed and put in time order, then cut into tasks.

A task (`Task`) is what one worker analyses; `sniinspect.capture.parallel.analyze_part`
runs it. Planning reads only a few kilobytes per input and per split point:

- **Probing** (`probe`): each input's format, header bytes and the time of its first
  packet (and, for an uncompressed file, of its last one). Inputs are put in order of
  their first packet (``tcpdump -G`` and dumpcap ring-buffer names need not sort by
  time); one that cannot be read keeps its place at the front and its task reports it.
- **Chains**: a file whose first packet follows the previous file's last within the
  reassembler's idle timeout continues its flows (rotated captures), as Suricata does
  for the files of a directory; a hello straddling the two files is found.
- **Split points** in one big file: pcap has no sync marker, so `pcap_sync` looks
  for a chain of record headers that agree with each other and the file (lengths
  within the snaplen, fractions below a second, times close together); pcapng blocks
  carry their length at both ends, which `pcapng_sync` checks. Every part gets its
  file's header bytes (the pcap file header, or the pcapng section and interface
  blocks) in front of its byte range. A wrong sync cannot go unnoticed: the part
  before it walks its records from a verified start and must land on the next part's
  first byte exactly (else the worker asks for the file to be re-run whole).
- **Windows**: besides the bytes it owns (`OWN`), a task reads up to ``overlap``
  bytes before them (`LEAD`, so flows crossing the split point have their start) and
  after them (`TRAIL`, so hellos left incomplete at its end are known to stay so). It
  reports only the records whose packet lies in its own bytes; the next task, whose
  lead covers the same packets, reports the rest. A hello whose segments lie further
  apart than ``overlap`` across a split point may be misreported (documented bound).

Everything here is plain data (picklable for process pools and Dask).
"""

from __future__ import annotations

import gzip
import itertools
import os
import struct
import zlib
from dataclasses import dataclass, field

from sniinspect.capture.tcp import Limits

__all__ = [
    "LEAD",
    "OWN",
    "TRAIL",
    "Input",
    "Window",
    "Run",
    "Task",
    "Plan",
    "probe",
    "plan",
    "whole_file_task",
    "pcap_sync",
    "pcapng_sync",
]

LEAD, OWN, TRAIL = "lead", "own", "trail"

_PCAP_MAGICS: dict[bytes, tuple[str, int]] = {
    b"\xa1\xb2\xc3\xd4": (">", 1000),  # (byte order, ns per tick): microseconds
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\x3c\x4d": (">", 1),  # nanoseconds
    b"\x4d\x3c\xb2\xa1": ("<", 1),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"
_PACKET_BLOCKS = (2, 3, 6)  # obsolete Packet, Simple Packet, Enhanced Packet Block
_MAX_HEAD = 1 << 20  # pcapng blocks before the first packet that a part may carry
_SYNC_WINDOW = 1 << 21  # bytes searched for a record boundary
_SYNC_CHAIN = 8  # consecutive records that must agree (pcap)
_SYNC_BLOCKS = 4  # consecutive blocks whose two length fields must agree (pcapng)
_MAX_RECORD = 0x4000000  # 64 MiB, as the readers in files.py: beyond is corruption
_DAY_NS = 86_400 * 10**9

# Default bytes read before and after a task's own bytes; a hello whose segments are
# further apart than this across a split point is the documented limit. At 1 Gbit/s
# 8 MiB is ~70 ms of traffic, several round trips for one client.
DEFAULT_OVERLAP = 8 << 20
# Smallest part a file is cut into unless asked otherwise: below it the overlap
# windows and task start-up cost more than the parallelism gains.
MIN_PART = 32 << 20


@dataclass(frozen=True, slots=True)
class Input:
    """One input as probed: where its records start and when its packets were taken.

    ``kind`` is ``pcap`` or ``pcapng`` (may be split), ``gzip`` or ``whole`` (read
    whole, from the start), ``stream`` (standard input) or ``bad`` (unreadable: its
    task reports why).
    Times are epoch nanoseconds; ``last_ts`` is known for uncompressed files only.
    """

    index: int
    path: str
    kind: str
    size: int = 0
    head: bytes = b""
    data_start: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    order: str = "<"
    ns_per_tick: int = 1000
    snaplen: int = 0

    @property
    def splittable(self) -> bool:
        return self.kind in ("pcap", "pcapng")


@dataclass(frozen=True, slots=True)
class Window:
    """A byte range of one input that a task reads, and whether its records are its own.

    ``start`` None means the input as a whole, opened by path (gzip, a whole file);
    otherwise the bytes ``[start, stop)`` with ``head`` (the file's header bytes) in
    front. ``from_start`` is True when the window's first packet is the file's first,
    so its frame numbers are the file's; a later part's are fixed by the caller.
    """

    input: int
    path: str
    role: str
    start: int | None = None
    stop: int | None = None
    head: bytes = b""
    kind: str = "pcap"
    from_start: bool = True
    end_of_file: bool = True


@dataclass(frozen=True, slots=True)
class Run:
    """Windows read in turn through one reassembler (flows carry from one to the next)."""

    windows: tuple[Window, ...]


@dataclass(frozen=True, slots=True)
class Task:
    """The unit of parallel work: runs of windows, with the bounds to analyse them."""

    index: int
    runs: tuple[Run, ...]
    limits: Limits = field(default_factory=Limits)
    overlap: int = DEFAULT_OVERLAP


@dataclass(frozen=True, slots=True)
class Plan:
    """Inputs in time order (``order``: indexes into ``inputs``) and the tasks covering them."""

    inputs: tuple[Input, ...]
    order: tuple[int, ...]
    chained: frozenset[int]  # inputs whose flows continue from the input before them
    tasks: tuple[Task, ...]
    split: frozenset[int]  # inputs cut into parts over several tasks
    total_bytes: int


# -- probing ---------------------------------------------------------------------------------
def _pread(f: object, at: int, n: int) -> bytes:
    f.seek(at)  # type: ignore[attr-defined]
    data: bytes = f.read(n)  # type: ignore[attr-defined]
    return data


def probe(index: int, path: str) -> Input:
    """Read an input's header and the times of its first and last packets."""
    if path == "-":
        return Input(index, path, "stream")
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            magic = f.read(4)
            if magic[:2] == _GZIP_MAGIC:
                return _probe_gzip(index, path, size, f)
            if magic in _PCAP_MAGICS:
                return _probe_pcap(index, path, size, f, magic)
            if magic == _PCAPNG_SHB:
                return _probe_pcapng(index, path, size, f)
    except (OSError, struct.error, ValueError):
        pass
    return Input(index, path, "bad")


def _probe_pcap(index: int, path: str, size: int, f: object, magic: bytes) -> Input:
    order, ns = _PCAP_MAGICS[magic]
    hdr = _pread(f, 0, 24)
    if len(hdr) < 24:
        return Input(index, path, "bad")
    snaplen = struct.unpack_from(order + "I", hdr, 16)[0]
    first = _pread(f, 24, 16)
    first_ts = None
    if len(first) == 16:
        s, frac = struct.unpack_from(order + "II", first)
        first_ts = s * 10**9 + frac * ns
    info = Input(index, path, "pcap", size, hdr, 24, first_ts, None, order, ns, snaplen)
    last_ts = None
    if first_ts is not None:
        at = pcap_sync(f, info, max(24, size - (256 << 10)))
        if at is not None:
            last_ts = _pcap_last_ts(f, info, at)
    return Input(index, path, "pcap", size, hdr, 24, first_ts, last_ts, order, ns, snaplen)


def _pcap_last_ts(f: object, info: Input, at: int) -> int | None:
    data = _pread(f, at, info.size - at)
    unpack = struct.Struct(info.order + "IIII").unpack_from
    pos, last = 0, None
    while pos + 16 <= len(data):
        s, frac, incl, _orig = unpack(data, pos)
        if pos + 16 + incl > len(data):
            break
        last = s * 10**9 + frac * info.ns_per_tick
        pos += 16 + incl
    return last


def _pcapng_lead(head: bytes, order: str) -> tuple[int, int | None, list[tuple[int, int, int]]]:
    """Where a pcapng file's first packet block starts, that packet's time (ns), and the
    clocks of the interfaces described before it.

    Walks the blocks before it (section header, interface descriptions); stops at a
    block that does not fit in ``head``.
    """
    pos = 0
    ifaces: list[tuple[int, int, int]] = []
    while pos + 12 <= len(head):
        btype, blen = struct.unpack_from(order + "II", head, pos)
        if blen < 12 or blen % 4 or pos + blen > len(head):
            break
        if btype in _PACKET_BLOCKS:
            if btype in (2, 6):
                return pos, _pcapng_ts(head, pos, btype, order, ifaces), ifaces
            break
        if btype == 1:
            ifaces.append(_idb_clock(head[pos : pos + blen], order))
        pos += blen
    return pos, None, ifaces


def _probe_pcapng(index: int, path: str, size: int, f: object) -> Input:
    head = _pread(f, 0, min(size, _MAX_HEAD + 65536))
    bom = head[8:12]
    if bom == b"\x4d\x3c\x2b\x1a":
        order = "<"
    elif bom == b"\x1a\x2b\x3c\x4d":
        order = ">"
    else:
        return Input(index, path, "bad")
    pos, first_ts, ifaces = _pcapng_lead(head, order)
    if pos > _MAX_HEAD:  # too many blocks before the first packet to copy into each part
        return Input(index, path, "whole", size, first_ts=first_ts)
    info = Input(index, path, "pcapng", size, head[:pos], pos, first_ts, None, order)
    last_ts = None
    if first_ts is not None:
        at = pcapng_sync(f, info, max(pos, size - (256 << 10)))
        if at is not None:
            data = _pread(f, at, size - at)
            p = 0
            while p + 12 <= len(data):
                btype, blen = struct.unpack_from(order + "II", data, p)
                if blen < 12 or p + blen > len(data):
                    break
                if btype in (2, 6):
                    last_ts = _pcapng_ts(data, p, btype, order, ifaces) or last_ts
                p += blen
    return Input(index, path, "pcapng", size, head[:pos], pos, first_ts, last_ts, order)


def _idb_clock(block: bytes, order: str) -> tuple[int, int, int]:
    """(numerator, denominator, offset ns) turning an interface's ticks into nanoseconds."""
    num, den, toff = 10**9, 10**6, 0
    pos = 16
    while pos + 4 <= len(block) - 4:
        code, length = struct.unpack_from(order + "HH", block, pos)
        if code == 0:
            break
        data = block[pos + 4 : pos + 4 + length]
        if code == 9 and data:  # if_tsresol
            v = data[0]
            den = (2 ** (v & 0x7F)) if v & 0x80 else 10 ** (v & 0x7F)
        elif code == 14 and len(data) >= 8:  # if_tsoffset, seconds
            toff = struct.unpack(order + "q", data[:8])[0] * 10**9
        pos += 4 + (length + 3) // 4 * 4
    return num, den, toff


def _pcapng_ts(
    data: bytes, pos: int, btype: int, order: str, ifaces: list[tuple[int, int, int]]
) -> int | None:
    if pos + 20 > len(data):
        return None
    if btype == 6:
        iface, hi, lo = struct.unpack_from(order + "III", data, pos + 8)
    else:
        iface, hi, lo = struct.unpack_from(order + "HxxII", data, pos + 8)
    num, den, toff = ifaces[iface] if iface < len(ifaces) else (10**9, 10**6, 0)
    ts: int = ((hi << 32) | lo) * num // den + toff
    return ts


def _probe_gzip(index: int, path: str, size: int, f: object) -> Input:
    f.seek(0)  # type: ignore[attr-defined]
    try:
        with gzip.GzipFile(fileobj=f, mode="rb") as z:  # type: ignore[call-overload]
            head: bytes = z.read(1 << 16)
    except (OSError, EOFError, zlib.error):
        return Input(index, path, "bad")
    first_ts = None
    if head[:4] in _PCAP_MAGICS and len(head) >= 40:
        order, ns = _PCAP_MAGICS[head[:4]]
        s, frac = struct.unpack_from(order + "II", head, 24)
        first_ts = s * 10**9 + frac * ns
    elif head[:4] == _PCAPNG_SHB and len(head) >= 12:
        order = "<" if head[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        first_ts = _pcapng_lead(head, order)[1]
    else:
        return Input(index, path, "bad")
    return Input(index, path, "gzip", size, first_ts=first_ts)


# -- finding record boundaries ---------------------------------------------------------------
def pcap_sync(f: object, info: Input, at: int) -> int | None:
    """The first pcap record boundary at or after ``at``, or None if none is found.

    A candidate offset must start ``_SYNC_CHAIN`` consecutive record headers (or all
    the records up to the end of the file) that each look right: captured length within
    the snaplen (at least 256 KiB) and at most the original length, a fraction below one
    second, a time within a day of the file's first packet and of the record before.
    """
    data = _pread(f, at, _SYNC_WINDOW)
    unpack = struct.Struct(info.order + "IIII").unpack_from
    max_cap = max(info.snaplen, 0x40000)
    max_frac = 10**9 // info.ns_per_tick
    first = (info.first_ts or 0) // 10**9
    n = len(data)
    for p in range(max(0, n - 15)):
        pos, prev, ok = p, None, 0
        while ok < _SYNC_CHAIN:
            if at + pos == info.size:  # a chain reaching the end of the file exactly
                ok = _SYNC_CHAIN
                break
            if pos + 16 > n:
                break
            s, frac, incl, orig = unpack(data, pos)
            if (
                incl > max_cap
                or incl > orig
                or orig > _MAX_RECORD
                or frac >= max_frac
                or s + 86_400 < first
                or (prev is not None and abs(s - prev) > 86_400)
            ):
                break
            prev = s
            pos += 16 + incl
            ok += 1
        if ok >= _SYNC_CHAIN or (ok >= 3 and pos + 16 > n):
            return at + p
    return None


def pcapng_sync(f: object, info: Input, at: int) -> int | None:
    """The first pcapng block boundary at or after ``at`` (4-aligned), or None.

    A block states its length at its start and again at its end; ``_SYNC_BLOCKS``
    blocks in a row (or all up to the end of the file) must agree.
    """
    at += -(at - info.data_start) % 4
    data = _pread(f, at, _SYNC_WINDOW)
    u32 = struct.Struct(info.order + "I").unpack_from
    n = len(data)
    for p in range(0, max(0, n - 11), 4):
        pos, ok = p, 0
        while ok < _SYNC_BLOCKS:
            if at + pos == info.size:
                ok = _SYNC_BLOCKS
                break
            if pos + 12 > n:
                break
            blen = u32(data, pos + 4)[0]
            if blen < 12 or blen % 4 or blen > _MAX_RECORD:
                break
            if pos + blen > n:  # runs past what we read: trust the blocks checked before it
                if at + pos + blen <= info.size and ok >= 2:
                    ok = _SYNC_BLOCKS
                break
            if u32(data, pos + blen - 4)[0] != blen:
                break
            pos += blen
            ok += 1
        if ok >= _SYNC_BLOCKS:
            return at + p
    return None


def _sync(f: object, info: Input, at: int) -> int | None:
    return (pcap_sync if info.kind == "pcap" else pcapng_sync)(f, info, at)


# -- planning --------------------------------------------------------------------------------
def plan(
    paths: list[str],
    *,
    workers: int = 1,
    part_size: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    limits: Limits | None = None,
) -> Plan:
    """Probe ``paths`` and cut them into tasks for ``workers`` processes.

    Args:
        paths: the inputs as given (``"-"`` for standard input: then nothing is
            sorted or split, and the plan is one task).
        workers: how many tasks may run at once; 1 plans one task of whole files.
        part_size: bytes of input per task (default: the total spread over
            ``2 * workers`` tasks, at least `MIN_PART`); files over 1.5 parts are cut.
        overlap: bytes read before and after a task's own (see the module docstring).
        limits: the reassembler's bounds (its idle timeout decides the chains).
    """
    limits = limits or Limits()
    inputs = tuple(probe(i, p) for i, p in enumerate(paths))
    streaming = any(i.kind == "stream" for i in inputs)
    if streaming:
        order = tuple(range(len(inputs)))
    else:
        # Unreadable inputs first (their error is said at once), then by first packet.
        order = tuple(
            sorted(
                range(len(inputs)),
                key=lambda i: (inputs[i].first_ts is not None, inputs[i].first_ts or 0),
            )
        )
    chained: set[int] = set()
    idle = int(limits.idle_timeout * 1e9)
    for a, b in itertools.pairwise(order):
        prev, cur = inputs[a], inputs[b]
        if streaming or prev.first_ts is None or cur.first_ts is None:
            continue
        end = prev.last_ts if prev.last_ts is not None else prev.first_ts
        if 0 <= cur.first_ts - end <= idle:
            chained.add(b)
    total = sum(i.size for i in inputs)
    if workers <= 1 or streaming:
        runs: list[Run] = []
        run: list[Window] = []
        for i in order:
            if run and i not in chained:
                runs.append(Run(tuple(run)))
                run = []
            run.append(_whole(inputs[i], OWN))
        if run:
            runs.append(Run(tuple(run)))
        task = Task(0, tuple(runs), limits, overlap)
        return Plan(inputs, order, frozenset(chained), (task,), frozenset(), total)
    if part_size is None:
        part_size = max(MIN_PART, -(-total // (2 * workers)))
    pieces = _pieces(inputs, order, part_size)
    tasks = _group(inputs, order, chained, pieces, part_size, limits, overlap)
    split = frozenset(p[0] for p in pieces if p[1] is not None)
    return Plan(inputs, order, frozenset(chained), tasks, split, total)


# A piece of the chain a task owns: (input index, start, stop) with start/stop None for
# the whole input.
_Piece = tuple[int, "int | None", "int | None"]


def _pieces(inputs: tuple[Input, ...], order: tuple[int, ...], part_size: int) -> list[_Piece]:
    out: list[_Piece] = []
    for i in order:
        info = inputs[i]
        if not info.splittable or info.size <= part_size * 3 // 2:
            out.append((i, None, None))
            continue
        bounds = [info.data_start]
        with open(info.path, "rb") as f:
            at = info.data_start + part_size
            while at < info.size - part_size // 2:
                b = _sync(f, info, at)
                if b is None or b <= bounds[-1] or b >= info.size:
                    break
                bounds.append(b)
                at = b + part_size
        if len(bounds) == 1:
            out.append((i, None, None))
            continue
        bounds.append(info.size)
        out.extend((i, s, e) for s, e in itertools.pairwise(bounds))
    return out


def _whole(info: Input, role: str) -> Window:
    return Window(info.index, info.path, role, kind=info.kind)


def _part(info: Input, role: str, start: int, stop: int) -> Window:
    return Window(
        info.index,
        info.path,
        role,
        start,
        stop,
        info.head,
        info.kind,
        from_start=start == info.data_start,
        end_of_file=stop >= info.size,
    )


def _group(
    inputs: tuple[Input, ...],
    order: tuple[int, ...],
    chained: set[int],
    pieces: list[_Piece],
    part_size: int,
    limits: Limits,
    overlap: int,
) -> tuple[Task, ...]:
    """Consecutive pieces into tasks of about ``part_size`` bytes, with their context."""

    def size(p: _Piece) -> int:
        i, s, e = p
        return inputs[i].size if s is None else (e or 0) - s

    # Each piece goes to the part_size slot its middle byte falls in, so that files of
    # about half a part pair up however their sizes round (a cut by a running total
    # left one file alone whenever two came to a byte over part_size).
    groups: list[list[_Piece]] = []
    cur: list[_Piece] = []
    cur_slot = done = 0
    for p in pieces:
        slot = (done + size(p) // 2) // part_size
        if cur and (p[1] is not None or cur[-1][1] is not None or slot != cur_slot):
            groups.append(cur)
            cur = []
        if not cur:
            cur_slot = slot
        cur.append(p)
        done += size(p)
    if cur:
        groups.append(cur)
    index = {p: n for n, p in enumerate(pieces)}
    tasks = []
    for t, group in enumerate(groups):
        runs: list[list[Window]] = []
        for k, p in enumerate(group):
            n = index[p]
            continues = n > 0 and _continues(pieces[n - 1], p, chained)
            if k == 0 or not continues:
                runs.append([])
                if continues:
                    at = p[1] if p[1] is not None else inputs[p[0]].data_start
                    runs[-1].extend(_lead(inputs, order, chained, p[0], at, overlap))
            i, s, e = p
            runs[-1].append(
                _whole(inputs[i], OWN) if s is None else _part(inputs[i], OWN, s, e or 0)
            )
            last = k == len(group) - 1 and n + 1 < len(pieces)
            if last and _continues(p, pieces[n + 1], chained):
                runs[-1].extend(_trail(inputs, order, chained, *pieces[n + 1][:2]))
        tasks.append(Task(t, tuple(Run(tuple(r)) for r in runs), limits, overlap))
    return tuple(tasks)


def _continues(a: _Piece, b: _Piece, chained: set[int]) -> bool:
    """Whether piece ``b`` carries on the flows of the piece ``a`` before it.

    Pieces come in chain order, so two of different files are the end of one and the
    start of the next.
    """
    return a[0] == b[0] or b[0] in chained


def _lead(
    inputs: tuple[Input, ...],
    order: tuple[int, ...],
    chained: set[int] | frozenset[int],
    i: int,
    at: int,
    overlap: int,
) -> list[Window]:
    """Up to ``overlap`` bytes before offset ``at`` of input ``i``, as context.

    Goes back into the inputs before ``i`` while they are chained to it; stops at a
    compressed file (its end cannot be reached without reading it all).
    """
    out: list[Window] = []
    left = overlap
    while left > 0:
        info = inputs[i]
        if not info.splittable or at <= info.data_start:
            pass
        else:
            want = max(info.data_start, at - left)
            start = want
            if want > info.data_start:
                with open(info.path, "rb") as f:
                    start = _sync(f, info, want) or at
            if start < at:
                out.insert(0, _part(info, LEAD, start, at))
                left -= at - start
        pos = order.index(i)
        if pos == 0 or i not in chained or left <= 0:
            break
        i = order[pos - 1]
        at = inputs[i].size
    return out


def _trail(
    inputs: tuple[Input, ...],
    order: tuple[int, ...],
    chained: set[int] | frozenset[int],
    i: int,
    at: int | None,
) -> list[Window]:
    """The bytes after offset ``at`` of input ``i`` (None: from its start), as context.

    The rest of the file, then the files chained after it; the task reads them only
    until ``overlap`` bytes or until nothing it owns can change (`parallel`).
    """
    out: list[Window] = []
    while True:
        info = inputs[i]
        if at is None or at <= info.data_start:  # the file from its first byte
            out.append(Window(i, info.path, TRAIL, 0, info.size, b"", info.kind, True, True))
        elif at < info.size:
            out.append(_part(info, TRAIL, at, info.size))
        pos = order.index(i) + 1
        if pos >= len(order) or order[pos] not in chained or len(out) >= 4:
            return out
        i, at = order[pos], None


def whole_file_task(p: Plan, input_index: int, index: int) -> Task:
    """A task reading one input whole, with its neighbours in the chain as context.

    Used when a split file turns out not to split cleanly (a pcapng file with a second
    section, or a damaged record between two parts): it is then analysed as one piece.
    """
    proto = p.tasks[0]
    info = p.inputs[input_index]
    pos = p.order.index(input_index)
    windows: list[Window] = []
    if pos > 0 and input_index in p.chained:
        prev = p.order[pos - 1]
        windows += _lead(p.inputs, p.order, p.chained, prev, p.inputs[prev].size, proto.overlap)
    windows.append(_whole(info, OWN))
    if pos + 1 < len(p.order) and p.order[pos + 1] in p.chained:
        windows += _trail(p.inputs, p.order, p.chained, p.order[pos + 1], None)
    return Task(index, (Run(tuple(windows)),), proto.limits, proto.overlap)
