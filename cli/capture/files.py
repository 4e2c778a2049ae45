"""Capture files: pcap and pcapng, plain or gzip, from a path, a file object or stdin.

Reads pcap (both byte orders, micro- and nanosecond) and pcapng (several sections,
interfaces and link types), plain or gzip-compressed (detected by magic), from a path,
a binary file object or ``"-"`` (standard input, streamed), and hands each frame to a
`sniinspect.capture.tcp.FlowTable`. A pcap file's header is read with ``struct``, a
pcapng Interface Description Block with dpkt's header class; the records themselves
are walked here with ``struct`` over large chunks because dpkt's iterators cannot
serve this tool: ``dpkt.pcap.Reader`` returns a short buffer without a word when a file
is cut mid-record and float timestamps,
``dpkt.pcapng.Reader`` knows only the first interface (so a multi-interface file's
other link types would be misdecoded), and building one header object per record
costs more than all our per-packet work.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from sniinspect.capture.packets import LINKTYPE_ETHERNET, SKIP_UDP
from sniinspect.capture.records import CaptureError, HelloRecord, Problem
from sniinspect.capture.tcp import FlowTable, Limits

__all__ = ["Capture", "iter_records"]

_PCAP_MAGICS: dict[bytes, tuple[str, int]] = {
    b"\xa1\xb2\xc3\xd4": (">", 1000),  # big-endian, microseconds
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\x3c\x4d": (">", 1),  # nanoseconds
    b"\x4d\x3c\xb2\xa1": ("<", 1),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"

_CHUNK = 1 << 20  # bytes per read; large enough that per-chunk work is negligible

# The fast paths' `SKIP_UDP`: they do not look at ports, so a GTP-U header (0x30-0x3f),
# whose inner packet `PacketDecoder` decodes, is kept too.
_SKIP_UDP: tuple[bool, ...] = tuple(skip and b >> 4 != 3 for b, skip in enumerate(SKIP_UDP))


def _open(source: str | os.PathLike[str] | IO[bytes]) -> tuple[IO[bytes], str, bool]:
    """(file object, display name, whether we opened it)."""
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if name == "-":
            return sys.stdin.buffer, "-", False
        try:
            # Unbuffered: the pcap reader reads large chunks straight into its buffer.
            return open(name, "rb", buffering=0), name, True  # closed in Capture.__iter__
        except OSError as exc:
            raise CaptureError(f"{name}: {exc.strerror or exc}") from None
    return source, getattr(source, "name", "<stream>"), False


def _read1(f: Any, n: int) -> bytes:
    r = getattr(f, "read1", None)
    data: bytes = r(n) if r is not None else f.read(n)
    return data


def _readinto(f: Any, view: memoryview) -> int:
    """Read what is at hand (as `_read1`: at most one read of the source) into ``view``.

    A raw stream (a file opened unbuffered, our wrappers) reads straight into it. A
    buffered one is read with ``read1`` and copied: CPython 3.11's
    ``BufferedReader.readinto1`` makes a second read of the source after handing over
    what it had buffered, and on a pipe (tcpdump -w - | ...) that read waits.
    """
    readinto = getattr(f, "readinto", None)
    if readinto is not None and not isinstance(f, io.BufferedIOBase):
        got: int | None = readinto(view)
        return got or 0
    data = _read1(f, len(view))
    view[: len(data)] = data
    return len(data)


class Capture:
    """A capture file as an iterator of `HelloRecord`, with its problems kept.

    Args:
        source: a path, ``"-"`` for standard input, or a binary file object.
        limits: reassembly bounds, see `Limits`.
        progress: called as ``progress(bytes_read, total_or_None)`` once per chunk read.
        table: the reassembler to feed (default: a new one); pass one `FlowTable` to
            several captures in turn to carry flows from one file into the next.
        frame_base: the number of the packet before this input's first (its packets
            are numbered from ``frame_base + 1``).
        finish: end the flows at the end of this input (report incomplete hellos and
            the table's problems); False leaves them in ``table`` for the next input.

    Iterating yields records as soon as the packet completing them is read (so a pipe
    from ``tcpdump -w -`` shows hellos live). Opening problems raise `CaptureError`
    from the iteration; a file cut mid-record or a corrupt gzip stream adds a fatal
    `Problem` to ``problems`` and ends the iteration after the flows are flushed.
    ``packets`` is the number of the last frame read (``frame_base`` plus the count).
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        *,
        limits: Limits | None = None,
        progress: Callable[[int, int | None], None] | None = None,
        name: str | None = None,
        table: FlowTable | None = None,
        frame_base: int = 0,
        finish: bool = True,
    ) -> None:
        self.source = source
        self.limits = limits or Limits()
        self.progress = progress
        if name is None:
            if isinstance(source, (str, os.PathLike)):
                name = os.fspath(source)
            else:
                name = str(getattr(source, "name", "<stream>"))
        self.name: str = name
        self.problems: list[Problem] = []
        self.frame_base = frame_base
        self.packets = frame_base
        self.finish = finish
        self.table = table if table is not None else FlowTable(self.name, self.limits)
        self._raw: IO[bytes] | None = None
        self._total: int | None = None

    def __iter__(self) -> Iterator[HelloRecord]:
        f, _name, owned = _open(self.source)
        self._raw = f
        try:
            try:
                self._total = os.fstat(f.fileno()).st_size if f is not sys.stdin.buffer else None
            except (OSError, AttributeError, io.UnsupportedOperation):
                self._total = None
            yield from self._iter_open(f)
        finally:
            if owned:
                f.close()

    def _pos(self) -> int:
        try:
            return self._raw.tell() if self._raw is not None else 0
        except (OSError, ValueError):
            return 0

    def _iter_open(self, f: IO[bytes]) -> Iterator[HelloRecord]:
        try:
            head, stream = _peek(f, 4)
            if head[:2] == _GZIP_MAGIC:
                head, stream = _peek(gzip.GzipFile(fileobj=stream, mode="rb"), 4)
        except (OSError, EOFError, zlib.error) as exc:
            raise CaptureError(f"{self.name}: cannot read: {exc}") from None
        if len(head) < 4:
            raise CaptureError(f"{self.name}: empty or too short to be a capture file")
        table = self.table
        try:
            if head in _PCAP_MAGICS:
                yield from self._pcap(stream, head)
            elif head == _PCAPNG_MAGIC:
                yield from self._pcapng(stream)
            else:
                raise CaptureError(
                    f"{self.name}: not a pcap or pcapng file (starts with {head.hex()})"
                )
        except CaptureError as exc:
            if self.packets == self.frame_base:
                raise
            # Broken past the first packets (e.g. a bad block in a later pcapng section):
            # keep what was read, as for a truncated file.
            message = str(exc).removeprefix(f"{self.name}: ")
            self.problems.append(Problem(self.name, message, True, self.packets + 1))
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self.problems.append(Problem(self.name, f"corrupt or truncated gzip data: {exc}"))
        except OSError as exc:
            self.problems.append(Problem(self.name, f"read error: {exc}"))
        if self.finish:
            table.finish()
            self.problems[:0] = [p for p in table.problems]
            if table.snaplen_truncated > 1:
                self.problems.append(
                    Problem(
                        self.name,
                        f"{table.snaplen_truncated} packets cut short by the "
                        "capture's snaplen; hellos in them may be incomplete",
                        False,
                    )
                )
        yield from self._flush()

    def _flush(self) -> Iterator[HelloRecord]:
        out = self.table.out
        if out:
            self.table.out = []
            yield from out

    def _truncated(self, what: str) -> None:
        self.problems.append(
            Problem(
                self.name,
                f"file cut short in the middle of {what}; analysed the packets before it",
                True,
                self.packets + 1,
            )
        )

    def _fill(self, f: Any, buf: bytearray, have: int) -> tuple[bytearray, int]:
        """Read the next chunk of ``f`` into ``buf`` after its first ``have`` bytes.

        Returns the buffer (a larger one when ``have`` filled it: a record or block
        longer than a chunk) and the number of bytes read, 0 at the end of ``f``.
        Reports progress, once per chunk read. Reading into one buffer instead of
        joining new ``bytes`` chunks saves a copy and a fresh allocation per chunk:
        0.10 s instead of 0.18-0.23 s to walk the 251 MiB QUIC capture of
        ``benchmarks/pcap.py``.
        """
        if have == len(buf):
            buf = buf + bytes(len(buf))
        with memoryview(buf) as whole, whole[have:] as view:
            got = _readinto(f, view)
        if self.progress is not None:
            self.progress(self._pos(), self._total)
        return buf, got

    # -- pcap ------------------------------------------------------------------------
    # The pcap and pcapng record loops stay two. Merged into one loop that calls a
    # per-format step for each record, they read the benchmarks/pcap.py capture (300,000
    # packets; engine CPU seconds, best of 7, medians in brackets) 2-5% slower: pcap 0.607
    # -> 0.636 (0.650 -> 0.674), the same packets as pcapng 0.706 -> 0.718 (0.716 -> 0.742).
    # What they share is per chunk, not per packet: `_fill`.
    def _pcap(self, f: Any, magic: bytes) -> Iterator[HelloRecord]:
        order, ns_per_tick = _PCAP_MAGICS[magic]
        hdr = _read_exact(f, 24)
        if len(hdr) < 24:
            raise CaptureError(f"{self.name}: pcap file header cut short")
        # magic, version, thiszone, sigfigs, snaplen, then the link type (pcap-savefile);
        # the link type's upper bits carry FCS information.
        linktype = struct.unpack_from(order + "I", hdr, 20)[0] & 0x0FFFFFFF
        unpack = struct.Struct(order + "IIII").unpack_from
        # One unpack for the record length and every byte the fast path looks at, read
        # as if the frame were Ethernet/IPv4/TCP: ethertype + IP version/IHL, IP total
        # length (2 bytes), protocol, the 12-byte flow key (addresses, ports), TCP data
        # offset and flags. Cheaper than indexing the buffer eight times per packet.
        peek = struct.Struct(order + "8xI4x12x3sxBB5xB2x12s8xBB").unpack_from
        table = self.table
        done = table.done
        slow = table.packet
        eth = linktype == LINKTYPE_ETHERNET
        buf = bytearray(_CHUNK)
        have = 0  # bytes at the front of buf kept from the last chunk (a record's start)
        frame = self.frame_base
        while True:
            buf, got = self._fill(f, buf, have)
            if not got:
                if have:
                    self._truncated("a packet record")
                break
            pos, end = 0, have + got
            while pos + 16 <= end:
                if pos + 64 <= end:
                    caplen, ether_ip, len_hi, len_lo, proto, key, doff, flags = peek(buf, pos)
                else:
                    caplen = unpack(buf, pos)[2]
                    ether_ip = b""
                start = pos + 16
                stop = start + caplen
                if stop > end:
                    if caplen > 0x4000000:  # 64 MiB: a corrupt header, not a packet
                        self.packets = frame
                        self._truncated(f"a packet record (length {caplen})")
                        return
                    break
                frame += 1
                pos = stop
                # Fast path, for Ethernet/IPv4 (no options)/TCP without SYN, FIN or RST:
                # skip a finished direction's packet, or a pure ACK (no payload); for
                # UDP, skip a datagram that cannot start a hello (see _SKIP_UDP).
                if (
                    eth
                    and caplen >= 48
                    and ether_ip == b"\x08\x00\x45"
                    and (
                        (
                            proto == 6
                            and not flags & 7
                            and (key in done or (len_hi << 8 | len_lo) == 20 + (doff >> 4) * 4)
                        )
                        # The UDP payload's first byte, read only for UDP so that TCP
                        # pays nothing (an extra peek field cost TCP captures 3%).
                        or (proto == 17 and _SKIP_UDP[buf[start + 42]])
                    )
                ):
                    continue
                ts_s, ts_f = unpack(buf, start - 16)[:2]
                slow(
                    linktype,
                    bytes(buf[start:stop]),  # buf is overwritten by the next chunk
                    ts_s * 1_000_000_000 + ts_f * ns_per_tick,
                    frame,
                )
                if table.out:
                    self.packets = frame
                    yield from self._flush()
            self.packets = frame
            have = end - pos
            buf[:have] = buf[pos:end]

    # -- pcapng ----------------------------------------------------------------------
    def _pcapng(self, f: Any) -> Iterator[HelloRecord]:
        import dpkt.pcapng  # type: ignore[import-untyped]

        table = self.table
        done = table.done
        slow = table.packet
        order = "<"
        # per interface: (linktype, numerator, denominator, offset_ns) of ts -> ns
        ifaces: list[tuple[int, int, int, int]] = []
        buf = bytearray(_CHUNK)
        have = 0  # bytes at the front of buf kept from the last chunk (a block's start)
        frame = self.frame_base
        epb = struct.Struct("<IIIII")
        # As in _pcap: one unpack for an Enhanced Packet Block's header and the bytes
        # the fast path reads from an Ethernet/IPv4/TCP frame.
        peek_fmt = "IIIIII4x12x3sxBB5xB2x12s8xBB"
        peek = struct.Struct("<" + peek_fmt).unpack_from
        ether_ifaces: set[int] = set()  # ids of the interfaces whose link type is Ethernet
        while True:
            buf, got = self._fill(f, buf, have)
            if not got:
                if have:
                    self._truncated("a pcapng block")
                break
            pos, end = 0, have + got
            while pos + 12 <= end:
                if pos + 76 <= end:
                    (bt, blen, iface, _hi, _lo, caplen, ether_ip, len_hi, len_lo, proto, key,
                     doff, flags) = peek(buf, pos)  # fmt: skip
                    if (
                        bt == 6
                        and caplen >= 48
                        and 28 + caplen <= blen
                        and pos + blen <= end
                        and iface in ether_ifaces
                        and ether_ip == b"\x08\x00\x45"
                        and (
                            (
                                proto == 6
                                and not flags & 7
                                and (key in done or (len_hi << 8 | len_lo) == 20 + (doff >> 4) * 4)
                            )
                            or (proto == 17 and _SKIP_UDP[buf[pos + 70]])
                        )
                    ):
                        frame += 1
                        pos += blen
                        continue
                btype = bytes(buf[pos : pos + 4])
                if btype == _PCAPNG_MAGIC:  # Section Header Block: byte order may change
                    bom = buf[pos + 8 : pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        order = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        order = ">"
                    else:
                        raise CaptureError(f"{self.name}: bad pcapng byte-order magic")
                    epb = struct.Struct(order + "IIIII")
                    peek = struct.Struct(order + peek_fmt).unpack_from
                    ifaces = []
                    ether_ifaces = set()
                blen = struct.unpack_from(order + "I", buf, pos + 4)[0]
                if blen < 12 or blen % 4:
                    self.packets = frame
                    self._truncated(f"a pcapng block (bad length {blen})")
                    return
                stop = pos + blen
                if stop > end:
                    if blen > 0x4000000:
                        self.packets = frame
                        self._truncated(f"a pcapng block (length {blen})")
                        return
                    break
                bt = struct.unpack_from(order + "I", buf, pos)[0]
                if bt == 6:  # Enhanced Packet Block
                    _t, _l, iface, ts_hi, ts_lo = epb.unpack_from(buf, pos)
                    caplen = struct.unpack_from(order + "I", buf, pos + 20)[0]
                    start = pos + 28
                    frame += 1
                    if iface >= len(ifaces) or start + caplen > stop:
                        self.problems.append(
                            Problem(
                                self.name,
                                "packet block with a bad interface or length",
                                True,
                                frame,
                            )
                        )
                        pos = stop
                        continue
                    lt, num, den, toff = ifaces[iface]
                    pend = start + caplen
                    ticks = (ts_hi << 32) | ts_lo
                    slow(lt, bytes(buf[start:pend]), ticks * num // den + toff, frame)
                elif bt == 3:  # Simple Packet Block: interface 0, no timestamp
                    frame += 1
                    if ifaces:
                        wire = struct.unpack_from(order + "I", buf, pos + 8)[0]
                        start = pos + 12
                        pend = min(start + wire, stop - 4)
                        slow(ifaces[0][0], bytes(buf[start:pend]), 0, frame)
                elif bt == 2:  # obsolete Packet Block
                    frame += 1
                    iface, ts_hi, ts_lo, caplen = struct.unpack_from(order + "HxxIII", buf, pos + 8)
                    start = pos + 28
                    if iface < len(ifaces) and start + caplen <= stop:
                        lt, num, den, toff = ifaces[iface]
                        slow(
                            lt,
                            bytes(buf[start : start + caplen]),
                            ((ts_hi << 32) | ts_lo) * num // den + toff,
                            frame,
                        )
                elif bt == 1:  # Interface Description Block
                    cls = (
                        dpkt.pcapng.InterfaceDescriptionBlockLE
                        if order == "<"
                        else dpkt.pcapng.InterfaceDescriptionBlock
                    )
                    try:
                        idb = cls(bytes(buf[pos:stop]))
                    except (dpkt.UnpackError, struct.error, ValueError) as exc:
                        raise CaptureError(
                            f"{self.name}: bad pcapng interface block: {exc}"
                        ) from None
                    num, den, toff = 1_000_000_000, 1_000_000, 0
                    for opt in getattr(idb, "opts", []):
                        if opt.code == 9 and opt.data:  # if_tsresol
                            v = opt.data[0]
                            den = (2 ** (v & 0x7F)) if v & 0x80 else 10 ** (v & 0x7F)
                        elif opt.code == 14 and len(opt.data) >= 8:  # if_tsoffset, seconds
                            toff = struct.unpack(order + "q", opt.data[:8])[0] * 1_000_000_000
                    ifaces.append((idb.linktype, num, den, toff))
                    if idb.linktype == LINKTYPE_ETHERNET:
                        ether_ifaces.add(len(ifaces) - 1)
                pos = stop
                if table.out:
                    self.packets = frame
                    yield from self._flush()
            self.packets = frame
            have = end - pos
            buf[:have] = buf[pos:end]


def _read_exact(f: Any, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


class _Prefixed(io.RawIOBase):
    """A stream with some bytes already read put back in front (for unseekable input)."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read1(self, n: int = -1) -> bytes:
        if self._head:
            out, self._head = self._head, b""
            return out
        return _read1(self._rest, n if n > 0 else _CHUNK)

    def readinto(self, view: Any) -> int:
        if self._head:
            n = min(len(view), len(self._head))
            view[:n], self._head = self._head[:n], self._head[n:]
            return n
        return _readinto(self._rest, view)

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0 or n >= len(self._head):
                out, self._head = self._head, b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._rest.read(n)  # type: ignore[no-any-return]


def _peek(f: Any, n: int) -> tuple[bytes, Any]:
    """Read the first ``n`` bytes and return them with a stream that still starts at 0."""
    head = _read_exact(f, n)
    return head, _Prefixed(head, f)


def iter_records(
    sources: str | os.PathLike[str] | IO[bytes] | Iterable[str | os.PathLike[str] | IO[bytes]],
    *,
    limits: Limits | None = None,
    problems: list[Problem] | None = None,
) -> Iterator[HelloRecord]:
    """Yield a `HelloRecord` for every ClientHello (TCP, QUIC, DTLS) in one or more captures.

    Args:
        sources: a path, ``"-"``, a binary file object, or an iterable of those.
        limits: reassembly bounds (see `Limits`).
        problems: if given, every `Problem` found is appended here and reading goes on
            with the next input; if None, the first fatal problem raises `CaptureError`
            (after the records read so far were yielded).

    Raises:
        CaptureError: an input cannot be read (only when ``problems`` is None).
    """
    if isinstance(sources, (str, os.PathLike)) or hasattr(sources, "read"):
        items: list[Any] = [sources]
    else:
        items = list(sources)
    for src in items:
        cap = Capture(src, limits=limits)
        try:
            yield from cap
        except CaptureError as exc:
            if problems is None:
                raise
            problems.append(Problem(cap.name, str(exc).removeprefix(cap.name + ": ")))
            continue
        if problems is not None:
            problems.extend(cap.problems)
        else:
            fatal = [p for p in cap.problems if p.fatal]
            if fatal:
                raise CaptureError(str(fatal[0]))
