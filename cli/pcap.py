"""The pcap engine: capture files in, one `HelloRecord` per TLS ClientHello out.

    >>> from sniinspect.pcap import iter_records
    >>> for rec in iter_records("capture.pcapng.gz"):
    ...     print(rec.ts, rec.src, rec.sni, rec.ja4)

What this module owns:

- **Reading** pcap (both byte orders, micro- and nanosecond) and pcapng (several
  sections, interfaces and link types), plain or gzip-compressed (detected by magic),
  from a path, a binary file object or ``"-"`` (standard input, streamed). The file
  headers are decoded with dpkt's header classes; the records themselves are walked
  here with ``struct`` over large chunks because dpkt's iterators cannot serve this
  tool: ``dpkt.pcap.Reader`` returns a short buffer without a word when a file is cut
  mid-record and float timestamps, ``dpkt.pcapng.Reader`` knows only the first
  interface (so a multi-interface file's other link types would be misdecoded), and
  building one header object per record costs more than all our per-packet work.
- **Decoding** link layers (Ethernet with 802.1Q/QinQ, Linux SLL/SLL2, BSD NULL/LOOP,
  raw IPv4/IPv6, PPP), IPv4 and IPv6 with extension headers, and TCP.
- **Reassembling** each TCP connection per direction (out of order, retransmitted,
  overlapping, missing SYN) into ordered stream bytes, locating ClientHellos by content
  (so TLS after STARTTLS, HTTP CONNECT or SOCKS5 is found) and feeding them to
  `clienthello.Reader`. Where segments overlap, the bytes seen first win. Without a SYN
  a stream starts at the first segment seen; a later segment with a lower sequence
  number (up to ``max_scan`` bytes before) is put in front while nothing has been
  decided yet. A stream is read as: TLS records from its first byte (an SSLv2
  CLIENT-HELLO is recognised only there), else searched (at most ``max_scan`` bytes) for
  a handshake record header starting a ClientHello. After a hello, ChangeCipherSpec
  records are skipped and a further ClientHello (after a HelloRetryRequest) is read;
  any other record ends the direction.
- **Bounding memory**: a direction stops being buffered once it has shown its hellos or
  that it is not TLS; bytes per direction, out-of-order segments, flows and total held
  bytes are capped, idle flows expire, FIN/RST evict. Directions that are finished are
  remembered by a 4-tuple key so their bulk data costs one dict lookup per packet.

Time, limits and addresses are parameters (see `Limits`); nothing here prints.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import ipaddress
import os
import re
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import clienthello
from clienthello import ClientHello, MalformedHello, NotTLS

__all__ = [
    "HelloRecord",
    "Problem",
    "CaptureError",
    "Limits",
    "RECORD_KEYS",
    "iter_records",
    "Capture",
    "FlowTable",
    "hello_fields",
    "format_ts",
    "LINKTYPE_ETHERNET",
]

# The record keys shared with ../shared/corpus/public/*.expected.jsonl (tshark's oracle).
RECORD_KEYS: tuple[str, ...] = (
    "ts", "src", "sport", "dst", "dport", "transport", "sni", "alpn", "versions",
    "ciphers", "extensions", "groups", "sig_algs", "ja3", "ja4", "error",
)  # fmt: skip

# Link-layer header types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW_OPENBSD = 12  # DLT_RAW on OpenBSD
LINKTYPE_RAW_BSD = 14  # DLT_RAW on BSD/OS
LINKTYPE_PPP_HDLC = 50
LINKTYPE_PPP_ETHER = 51  # PPPoE session payload starts with the PPPoE header
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = frozenset((0x8100, 0x88A8, 0x9100))  # 802.1Q, 802.1ad (QinQ), legacy QinQ
_ETH_PPPOE_SESSION = 0x8864
_NULL_IPV6_FAMILIES = frozenset((10, 24, 28, 30))  # AF_INET6 on Linux, NetBSD, FreeBSD, macOS

_TCP = 6
# IPv6 extension headers whose length is (hdr_ext_len + 1) * 8 (RFC 8200 §4).
_IPV6_EXT_GENERIC = frozenset((0, 43, 60, 135, 139, 140))
_IPV6_FRAGMENT = 44
_IPV6_AH = 51  # length is (payload_len + 2) * 4 (RFC 4302 §2.2)

_FIN, _SYN, _RST = 0x01, 0x02, 0x04

# A TLS handshake record that starts a ClientHello: content type 22, version 3.x, a
# record length that fits RFC 8446 §5.2 (<= 2^14 + 2048), handshake type 1.
_HELLO_PATTERN = re.compile(rb"\x16\x03[\x00-\x04][\x00-\x48][\x00-\xff]\x01", re.DOTALL)

_PCAP_MAGICS: dict[bytes, tuple[str, int]] = {
    b"\xa1\xb2\xc3\xd4": (">", 1000),  # big-endian, microseconds
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\x3c\x4d": (">", 1),  # nanoseconds
    b"\x4d\x3c\xb2\xa1": ("<", 1),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_GZIP_MAGIC = b"\x1f\x8b"

_CHUNK = 1 << 20  # bytes per read; large enough that per-chunk work is negligible


class CaptureError(Exception):
    """A capture file that cannot be read at all (missing, not a capture, bad header)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong in an input: ``fatal`` problems mean some of it was unreadable.

    Attributes:
        file: the input's name (``"-"`` for standard input).
        message: one line, for a person.
        fatal: True when bytes of the input could not be read (exit status 1), False
            for a warning (e.g. packets cut by the capture's snaplen).
        frame: the 1-based packet number concerned, if any.
    """

    file: str
    message: str
    fatal: bool = True
    frame: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}: packet {self.frame}: " if self.frame else f"{self.file}: "
        return where + self.message


@dataclass(frozen=True, slots=True)
class Limits:
    """Memory and time bounds of the reassembler (all per input file).

    Attributes:
        max_hello: largest ClientHello accepted (`clienthello.Reader` ``max_size``).
        max_scan: bytes of non-TLS data searched for a hello at the start of a
            direction (STARTTLS, HTTP CONNECT, SOCKS5 all fit) before giving up.
        max_flow_bytes: stream bytes examined per direction, all hellos included.
        max_hellos: ClientHellos looked for per direction (2 cover HelloRetryRequest).
        max_pending: out-of-order segments held per direction.
        max_flows: directions being reassembled at once; the oldest are evicted.
        max_done: finished directions remembered for the fast path.
        max_held: bytes held across all directions (pending segments, partial
            hellos); past it the oldest directions are evicted.
        idle_timeout: seconds of capture time after which a quiet direction expires.
    """

    max_hello: int = 65536
    max_scan: int = 16384
    max_flow_bytes: int = 262144
    max_hellos: int = 4
    max_pending: int = 256
    max_flows: int = 50_000
    max_done: int = 200_000
    max_held: int = 48 << 20
    idle_timeout: float = 300.0


@dataclass(frozen=True, slots=True)
class HelloRecord:
    """One ClientHello seen in a capture (or one that could not be parsed).

    The first sixteen fields are `RECORD_KEYS`, with tshark's conventions: ``ts`` is
    epoch seconds as a string with nine decimals, lists are empty (never null) when
    the extension is absent, ``alpn`` is UTF-8 with backslash escapes, ``ja3`` is null
    for an SSLv2 hello. ``error`` is None for a parsed hello, else the reason; then the
    hello fields are empty.

    ``frame`` is the packet (1-based, per file) that completed the hello, ``file`` the
    input's name, ``hello`` the parsed `clienthello.ClientHello` (not serialised).
    """

    ts: str
    src: str
    sport: int
    dst: str
    dport: int
    transport: str
    sni: str | None
    alpn: list[str]
    versions: list[int]
    ciphers: list[int]
    extensions: list[int]
    groups: list[int]
    sig_algs: list[int]
    ja3: str | None
    ja4: str | None
    error: str | None
    legacy_version: int | None = None
    sni_problems: list[str] = field(default_factory=list)
    sslv2: bool = False
    frame: int = 0
    file: str = ""
    hello: ClientHello | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data: `RECORD_KEYS` first, then the extras."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name != "hello":
                out[f.name] = getattr(self, f.name)
        return out


def format_ts(ts_ns: int) -> str:
    """Epoch nanoseconds as tshark's ``frame.time_epoch``: ``"1675707151.805776000"``."""
    sec, ns = divmod(ts_ns, 1_000_000_000)
    return f"{sec}.{ns:09d}"


def _alpn_text(proto: bytes) -> str:
    return proto.decode("utf-8", "backslashreplace")


def hello_fields(hello: ClientHello) -> dict[str, Any]:
    """The record fields derived from a parsed hello (shared with other commands)."""
    try:
        ja3: str | None = None if hello.sslv2 else clienthello.ja3(hello)
    except (ValueError, KeyError):  # a fingerprint the library refuses for this hello
        ja3 = None
    try:
        ja4: str | None = clienthello.ja4(hello, transport="tcp")
    except (ValueError, KeyError):
        ja4 = None
    return {
        "sni": hello.server_name,
        "alpn": [_alpn_text(p) for p in hello.alpn_protocols or ()],
        "versions": list(hello.supported_versions or ()),
        "ciphers": list(hello.cipher_suites),
        "extensions": [e.type for e in hello.extensions],
        "groups": list(hello.supported_groups or ()),
        "sig_algs": list(hello.signature_algorithms or ()),
        "ja3": ja3,
        "ja4": ja4,
        "error": None,
        "legacy_version": hello.legacy_version,
        "sni_problems": list(hello.server_name_problems),
        "sslv2": hello.sslv2,
    }


_EMPTY_FIELDS: dict[str, Any] = {
    "sni": None, "alpn": [], "versions": [], "ciphers": [], "extensions": [], "groups": [],
    "sig_algs": [], "ja3": None, "ja4": None,
}  # fmt: skip


# ---------------------------------------------------------------------------------------
# TCP reassembly and hello detection
# ---------------------------------------------------------------------------------------

# What a direction is doing with the bytes it receives.
_EXPECT = 0  # at a TLS record boundary: skip ChangeCipherSpec, start a hello, or stop
_SCAN = 1  # searching non-TLS bytes for a hello record header
_HELLO = 2  # feeding a clienthello.Reader


class _Flow:
    """One direction of one TCP connection, from its first byte to its last hello."""

    __slots__ = (
        "buf",
        "delivered",
        "fin",
        "first_frame",
        "head",
        "hellos",
        "key",
        "last_frame",
        "last_ts",
        "mode",
        "next_seq",
        "origin",
        "pending",
        "pending_bytes",
        "reader",
        "reader_bytes",
        "scan_from",
        "scanned",
        "skip",
        "syn",
        "truncated_frame",
        "v6",
    )  # fmt: skip

    def __init__(self, key: bytes, v6: bool, next_seq: int, syn: bool, ts: int, frame: int):
        self.key = key
        self.v6 = v6
        self.syn = syn
        self.next_seq = next_seq
        self.pending: dict[int, bytes] = {}
        self.pending_bytes = 0
        self.mode = _EXPECT
        self.buf = bytearray()
        self.scan_from = 0
        self.scanned = 0
        self.skip = 0
        self.reader: clienthello.Reader | None = None
        self.reader_bytes = 0
        self.origin = "start"  # where the current hello was found: start|after|scan
        self.delivered = 0
        # Without a SYN the stream starts at the first segment seen; keep its first bytes
        # so that a segment arriving later with a lower seq can still be put in front.
        self.head: bytearray | None = None if syn else bytearray()
        self.hellos = 0
        self.last_ts = ts
        self.fin = False
        self.truncated_frame = 0
        self.first_frame = frame
        self.last_frame = frame

    @property
    def held(self) -> int:
        return self.pending_bytes + self.reader_bytes + len(self.buf) + len(self.head or b"")


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _seq_diff(a: int, b: int) -> int:
    """a - b in TCP sequence space (RFC 793 modular arithmetic), signed."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d & 0x80000000 else d


class FlowTable:
    """Reassembles TCP directions and turns their bytes into `HelloRecord`s.

    Sans-I/O: `packet` takes one link-layer frame with its time and number and returns
    the records it completed; `finish` flushes what is left at the end of the input.
    ``done`` maps the key of every finished direction (``src ip + dst ip + ports`` as
    bytes, exactly the 12 bytes at IPv4 offset 12 when the header has no options) so a
    reader loop can skip their packets before decoding them.
    """

    def __init__(self, file: str = "", limits: Limits | None = None) -> None:
        self.file = file
        self.limits = limits or Limits()
        self.flows: dict[bytes, _Flow] = {}
        self.done: dict[bytes, None] = {}
        self.out: list[HelloRecord] = []
        self.problems: list[Problem] = []
        self.snaplen_truncated = 0
        self.unsupported_linktypes: set[int] = set()
        self.held = 0
        self._now = 0
        self._sweep_at = 0
        self._sweeps = 0
        self._ts = 0
        self._frame = 0

    # -- link layer, IP, TCP ---------------------------------------------------------
    def packet(self, linktype: int, data: bytes | memoryview, ts_ns: int, frame: int) -> None:
        """Decode one frame (any supported link type) and feed its TCP payload.

        Completed records are appended to ``self.out``; problems to ``self.problems``.
        """
        off, ethertype = self._link(linktype, data)
        if off < 0:
            return
        n = len(data)
        if ethertype == _ETH_IPV4:
            if off + 20 > n:
                return self._short(frame)
            b0 = data[off]
            if b0 >> 4 != 4:
                return
            ihl = (b0 & 0x0F) * 4
            total = (data[off + 2] << 8) | data[off + 3]
            if total == 0:  # TCP segmentation offload on the capturing host: length not set
                total = n - off
            if data[off + 9] != _TCP or ihl < 20 or total < ihl:
                return
            if (data[off + 6] & 0x3F) or data[off + 7]:  # MF set or fragment offset != 0
                return
            end = off + total
            src = bytes(data[off + 12 : off + 16])
            dst = bytes(data[off + 16 : off + 20])
            tcp = off + ihl
            v6 = False
        elif ethertype == _ETH_IPV6:
            if off + 40 > n:
                return self._short(frame)
            if data[off] >> 4 != 6:
                return
            plen = (data[off + 4] << 8) | data[off + 5]
            nxt = data[off + 6]
            end = off + 40 + plen if plen else n  # 0 = jumbogram: trust the capture
            src = bytes(data[off + 8 : off + 24])
            dst = bytes(data[off + 24 : off + 40])
            tcp = off + 40
            for _ in range(8):  # bounded walk over extension headers
                if nxt == _TCP:
                    break
                if tcp + 8 > n:
                    return self._short(frame)
                if nxt in _IPV6_EXT_GENERIC:
                    nxt, tcp = data[tcp], tcp + (data[tcp + 1] + 1) * 8
                elif nxt == _IPV6_FRAGMENT:
                    if ((data[tcp + 2] << 8) | data[tcp + 3]) & 0xFFF9:  # offset or M flag
                        return
                    nxt, tcp = data[tcp], tcp + 8
                elif nxt == _IPV6_AH:
                    nxt, tcp = data[tcp], tcp + (data[tcp + 1] + 2) * 4
                else:
                    return
            if nxt != _TCP:
                return
            v6 = True
        else:
            return
        if tcp + 20 > n:
            return self._short(frame)
        doff = (data[tcp + 12] >> 4) * 4
        if doff < 20:
            return
        cut = end > n
        if cut:
            self._short(frame)
            end = n
        key = src + dst + bytes(data[tcp : tcp + 4])
        seq = int.from_bytes(data[tcp + 4 : tcp + 8], "big")
        flags = data[tcp + 13]
        payload = bytes(data[tcp + doff : end]) if end > tcp + doff else b""
        self.segment(key, v6, seq, flags, payload, ts_ns, frame, truncated=cut)

    def _short(self, frame: int) -> None:
        self.snaplen_truncated += 1
        if self.snaplen_truncated == 1:
            self.problems.append(
                Problem(self.file, "packet cut short by the capture's snaplen", False, frame)
            )

    def _link(self, linktype: int, data: bytes | memoryview) -> tuple[int, int]:
        """(offset of the IP header, ethertype) or (-1, 0) for frames to skip."""
        n = len(data)
        if linktype == LINKTYPE_ETHERNET:
            if n < 14:
                return -1, 0
            off, et = 14, (data[12] << 8) | data[13]
            while et in _ETH_VLAN and off + 4 <= n:
                et = (data[off + 2] << 8) | data[off + 3]
                off += 4
            if et == _ETH_PPPOE_SESSION and off + 8 <= n:
                return self._ppp_proto(data, off + 6)
            return (off, et) if et in (_ETH_IPV4, _ETH_IPV6) else (-1, 0)
        if linktype == LINKTYPE_LINUX_SLL:
            return (16, (data[14] << 8) | data[15]) if n >= 16 else (-1, 0)
        if linktype == LINKTYPE_LINUX_SLL2:
            return (20, (data[0] << 8) | data[1]) if n >= 20 else (-1, 0)
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if n < 4:
                return -1, 0
            fam = int.from_bytes(data[0:4], "big")
            if linktype == LINKTYPE_NULL and fam > 0xFFFF:  # host byte order: little endian
                fam = int.from_bytes(data[0:4], "little")
            if fam == 2:
                return 4, _ETH_IPV4
            return (4, _ETH_IPV6) if fam in _NULL_IPV6_FAMILIES else (-1, 0)
        if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_OPENBSD, LINKTYPE_RAW_BSD):
            if n < 1:
                return -1, 0
            v = data[0] >> 4
            return (0, _ETH_IPV4) if v == 4 else (0, _ETH_IPV6) if v == 6 else (-1, 0)
        if linktype == LINKTYPE_IPV4:
            return 0, _ETH_IPV4
        if linktype == LINKTYPE_IPV6:
            return 0, _ETH_IPV6
        if linktype in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):
            off = 2 if n >= 2 and data[0] == 0xFF and data[1] == 0x03 else 0
            return self._ppp_proto(data, off)
        if linktype == LINKTYPE_PPP_ETHER:
            return self._ppp_proto(data, 6)
        if linktype not in self.unsupported_linktypes:
            self.unsupported_linktypes.add(linktype)
            self.problems.append(
                Problem(
                    self.file, f"link type {linktype} not supported; its packets skipped", False
                )
            )
        return -1, 0

    @staticmethod
    def _ppp_proto(data: bytes | memoryview, off: int) -> tuple[int, int]:
        if off + 1 > len(data):
            return -1, 0
        if data[off] & 1:  # protocol field compressed to one byte (RFC 1661 §6.5)
            proto, off = data[off], off + 1
        elif off + 2 <= len(data):
            proto, off = (data[off] << 8) | data[off + 1], off + 2
        else:
            return -1, 0
        if proto == 0x21:
            return off, _ETH_IPV4
        return (off, _ETH_IPV6) if proto == 0x57 else (-1, 0)

    # -- reassembly ------------------------------------------------------------------
    def segment(
        self,
        key: bytes,
        v6: bool,
        seq: int,
        flags: int,
        payload: bytes,
        ts_ns: int,
        frame: int,
        truncated: bool = False,
    ) -> None:
        """Feed one TCP segment of the direction ``key`` (src ip, dst ip, ports)."""
        self._ts, self._frame = ts_ns, frame
        if ts_ns > self._now:
            self._now = ts_ns
        self._sweeps += 1
        if self._sweeps >= self._sweep_at:  # expire idle flows now and then (amortised)
            self._sweep_at = self._sweeps + 65536
            self._sweep()
        fl = self.flows.get(key)
        if flags & _SYN:
            if key in self.done:
                del self.done[key]
            if (
                fl is not None
                and fl.syn
                and _seq_diff(seq + 1, fl.next_seq) <= 0
                and fl.delivered == 0
            ):
                pass  # a retransmitted SYN
            else:
                if fl is not None:
                    self._close(fl, "connection reused before the hello completed")
                fl = self._new_flow(key, v6, (seq + 1) & 0xFFFFFFFF, True, ts_ns, frame)
            seq = (seq + 1) & 0xFFFFFFFF  # payload on a SYN (TCP Fast Open) follows the ISN
        elif fl is None:
            if key in self.done:
                if flags & (_FIN | _RST):
                    del self.done[key]
                return
            if not payload:
                return
            fl = self._new_flow(key, v6, seq, False, ts_ns, frame)
        fl.last_ts = ts_ns
        if payload or flags & (_SYN | _FIN | _RST):  # not pure ACKs: readers may skip those
            fl.last_frame = frame
        if payload:
            if truncated:
                fl.truncated_frame = frame
            self._insert(fl, seq, payload)
            current = self.flows.get(key)  # rebuilt (rebase), or finished by this segment
            if current is None:
                if flags & (_FIN | _RST):
                    self.done.pop(key, None)
                return
            fl = current
        if flags & _RST or (flags & _FIN and not fl.pending):
            self._close(fl, "connection closed before the hello completed")
        elif flags & _FIN:
            fl.fin = True
        elif fl.fin and not fl.pending:
            self._close(fl, "connection closed before the hello completed")
        if self.held > self.limits.max_held:
            self._evict_for_memory()

    def _new_flow(self, key: bytes, v6: bool, seq: int, syn: bool, ts: int, frame: int) -> _Flow:
        fl = _Flow(key, v6, seq, syn, ts, frame)
        self.flows[key] = fl
        if len(self.flows) > self.limits.max_flows:
            oldest = next(iter(self.flows))
            self._close(self.flows[oldest], "flow evicted (too many flows)")
        return fl

    def _insert(self, fl: _Flow, seq: int, payload: bytes) -> None:
        d = _seq_diff(seq, fl.next_seq)
        if d < 0 and fl.head is not None and fl.hellos == 0 and fl.delivered == len(fl.head):
            before = -_seq_diff(seq, (fl.next_seq - fl.delivered) & 0xFFFFFFFF)
            if 0 < before <= self.limits.max_scan:  # starts before the first byte we saw
                fl = self._rebase(fl, seq)
                d = 0
        if d == 0:
            self._deliver(fl, payload)
        elif d < 0:
            if -d >= len(payload):
                return  # a retransmission (or a segment from before a missed SYN)
            self._deliver(fl, payload[-d:])  # overlaps what we have: only the new tail
        else:
            if d > self.limits.max_flow_bytes:
                return  # beyond anything this direction will examine
            old = fl.pending.get(seq)
            if len(fl.pending) >= self.limits.max_pending and old is None:
                return
            if old is None or len(old) < len(payload):
                fl.pending[seq] = payload
                grow = len(payload) - (len(old) if old else 0)
                fl.pending_bytes += grow
                self.held += grow
            return
        self._drain(fl)

    def _drain(self, fl: _Flow) -> None:
        progress = True
        while fl.pending and progress and fl.key in self.flows:
            progress = False
            for s in list(fl.pending):
                d = _seq_diff(s, fl.next_seq)
                if d > 0:
                    continue
                p = fl.pending.pop(s)
                fl.pending_bytes -= len(p)
                self.held -= len(p)
                if -d < len(p):
                    self._deliver(fl, p[-d:])
                    progress = True
                    break

    def _rebase(self, fl: _Flow, seq: int) -> _Flow:
        """A segment older than the first one seen (no SYN): restart the stream from it."""
        head = bytes(fl.head or b"")
        old_seq = (fl.next_seq - len(head)) & 0xFFFFFFFF
        self.held -= fl.held
        new = _Flow(fl.key, fl.v6, seq, False, fl.last_ts, fl.first_frame)
        new.truncated_frame = fl.truncated_frame
        new.last_frame = fl.last_frame
        new.pending = dict(fl.pending)
        new.pending_bytes = fl.pending_bytes
        if head:
            new.pending[old_seq] = head
            new.pending_bytes += len(head)
        self.flows[fl.key] = new
        self.held += new.held
        return new

    def _deliver(self, fl: _Flow, data: bytes) -> None:
        """New in-order stream bytes for ``fl``."""
        fl.next_seq = (fl.next_seq + len(data)) & 0xFFFFFFFF
        if fl.key not in self.flows:
            return
        room = self.limits.max_flow_bytes - fl.delivered
        if room <= 0:
            return self._finish_flow(fl, "hello not complete within the per-flow byte cap")
        data = data[:room]
        fl.delivered += len(data)
        if fl.head is not None:
            if fl.delivered <= self.limits.max_scan:
                fl.head += data
                self.held += len(data)
            else:
                self.held -= len(fl.head)
                fl.head = None
        if fl.mode == _HELLO:
            self._feed(fl, data)
        else:
            self.held += len(data)
            fl.buf += data
        self._run(fl)

    def _feed(self, fl: _Flow, data: bytes) -> None:
        reader = fl.reader
        assert reader is not None  # internal invariant, not input
        try:
            hello = reader.feed(data)
        except (NotTLS, MalformedHello) as exc:
            fl.reader = None
            self.held -= fl.reader_bytes
            fl.reader_bytes = 0
            if fl.origin == "scan":  # the pattern matched by chance: keep searching
                fl.mode = _SCAN
                fl.buf = bytearray(reader.buffered)
                fl.scan_from = 1
                self.held += len(fl.buf)
                return
            if isinstance(exc, NotTLS) and fl.origin == "start":
                fl.mode = _SCAN
                fl.buf = bytearray(reader.buffered)
                fl.scan_from = 1
                self.held += len(fl.buf)
                return
            self._emit(fl, None, str(exc))
            return self._finish_flow(fl, None)
        self.held += len(data)
        fl.reader_bytes += len(data)
        if hello is None:
            return
        self._emit(fl, hello, None)
        rest = reader.buffered[reader.consumed :]
        fl.reader = None
        self.held -= fl.reader_bytes
        fl.reader_bytes = 0
        fl.hellos += 1
        if fl.hellos >= self.limits.max_hellos:
            return self._finish_flow(fl, None)
        fl.mode = _EXPECT
        fl.buf = bytearray(rest)
        self.held += len(rest)

    def _start_hello(self, fl: _Flow, origin: str) -> None:
        data = bytes(fl.buf)
        self.held -= len(fl.buf)
        fl.buf = bytearray()
        fl.mode = _HELLO
        fl.origin = origin
        fl.reader = clienthello.Reader(max_size=self.limits.max_hello)
        self._feed(fl, data)

    def _run(self, fl: _Flow) -> None:
        """Advance the hello state machine over ``fl.buf`` as far as it goes."""
        while fl.key in self.flows:
            buf = fl.buf
            if fl.mode == _EXPECT:
                if fl.skip:
                    n = min(fl.skip, len(buf))
                    del buf[:n]
                    self.held -= n
                    fl.skip -= n
                    if fl.skip:
                        return
                at_start = fl.hellos == 0
                if len(buf) < 6:
                    if not buf or not at_start:
                        return
                    # Too short to judge as TLS, but may already rule it out.
                    if buf[0] != 0x16 and not buf[0] & 0x80 and buf[0] not in (20, 21, 23):
                        fl.mode = _SCAN
                        continue
                    return
                b0, b1 = buf[0], buf[1]
                if b0 == 0x16 and b1 == 3 and buf[5] == 1:
                    self._start_hello(fl, "start" if at_start else "after")
                    continue
                if at_start and b0 & 0x80 and buf[2] == 1:  # SSLv2 CLIENT-HELLO record
                    self._start_hello(fl, "start")
                    continue
                if b1 == 3 and b0 in (20, 21, 22, 23):
                    if b0 == 20:  # ChangeCipherSpec (sent before a second hello, RFC 8446 D.4)
                        fl.skip = 5 + ((buf[3] << 8) | buf[4])
                        continue
                    return self._finish_flow(fl, None)  # TLS, but past the hellos
                if not at_start:
                    return self._finish_flow(fl, None)
                fl.mode = _SCAN
                fl.scan_from = 1
                continue
            if fl.mode == _SCAN:
                m = _HELLO_PATTERN.search(buf, fl.scan_from)
                if m is not None:
                    i = m.start()
                    fl.scanned += i
                    del buf[:i]
                    self.held -= i
                    self._start_hello(fl, "scan")
                    continue
                keep = min(len(buf), 5)  # a header may straddle the next segment
                drop = len(buf) - keep
                fl.scanned += drop
                del buf[:drop]
                self.held -= drop
                fl.scan_from = 0
                if fl.scanned > self.limits.max_scan:
                    return self._finish_flow(fl, None)
                return
            return  # _HELLO: fed as bytes arrive

    # -- ends of flows -----------------------------------------------------------------
    def _emit(
        self, fl: _Flow, hello: ClientHello | None, error: str | None, at_end: bool = False
    ) -> None:
        key = fl.key
        # A hello completes with the current packet; one left incomplete is dated by the
        # flow's last packet (FIN, RST, data), as pure ACKs may never reach us.
        frame, ts = (fl.last_frame, fl.last_ts) if at_end else (self._frame, self._ts)
        alen = 16 if fl.v6 else 4
        src, dst = _addr(key[:alen]), _addr(key[alen : 2 * alen])
        sport = (key[2 * alen] << 8) | key[2 * alen + 1]
        dport = (key[2 * alen + 2] << 8) | key[2 * alen + 3]
        fields = hello_fields(hello) if hello is not None else dict(_EMPTY_FIELDS, error=error)
        self.out.append(
            HelloRecord(
                ts=format_ts(ts),
                src=src,
                sport=sport,
                dst=dst,
                dport=dport,
                transport="tcp",
                frame=frame,
                file=self.file,
                hello=hello,
                **fields,
            )
        )

    def _finish_flow(self, fl: _Flow, incomplete: str | None) -> None:
        """Stop looking at ``fl``: remember it as done; report a hello left half-read."""
        if fl.mode == _HELLO and fl.reader is not None and incomplete:
            try:
                hello = fl.reader.feed(b"")
            except (NotTLS, MalformedHello) as exc:
                reason = str(exc)
                if fl.truncated_frame:
                    reason += f" (packet {fl.truncated_frame} was cut by the snaplen)"
                elif fl.pending:
                    reason += " (segments missing from the capture)"
                if fl.origin != "scan":
                    self._emit(fl, None, f"{incomplete}: {reason}", at_end=True)
            else:
                if hello is not None:
                    self._emit(fl, hello, None, at_end=True)
        self.held -= fl.held
        fl.reader = None
        fl.reader_bytes = fl.pending_bytes = 0
        fl.pending = {}
        fl.buf = bytearray()
        fl.head = None
        fl.mode = _EXPECT
        if self.flows.pop(fl.key, None) is not None:
            self.done[fl.key] = None
            if len(self.done) > self.limits.max_done:
                for k in list(self.done)[: len(self.done) // 2]:
                    del self.done[k]

    def _close(self, fl: _Flow, why: str) -> None:
        self._finish_flow(fl, why)
        self.done.pop(fl.key, None)

    def _sweep(self) -> None:
        horizon = self._now - int(self.limits.idle_timeout * 1e9)
        for fl in [f for f in self.flows.values() if f.last_ts < horizon]:
            self._close(fl, "flow idle, hello never completed")

    def _evict_for_memory(self) -> None:
        for fl in list(self.flows.values()):
            if self.held <= self.limits.max_held * 3 // 4:
                break
            self._close(fl, "flow evicted (memory cap)")

    def finish(self) -> None:
        """End of input: report every hello still incomplete."""
        for fl in list(self.flows.values()):
            self._close(fl, "capture ended before the hello completed")


# ---------------------------------------------------------------------------------------
# Capture files
# ---------------------------------------------------------------------------------------


def _open(source: str | os.PathLike[str] | IO[bytes]) -> tuple[IO[bytes], str, bool]:
    """(file object, display name, whether we opened it)."""
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if name == "-":
            return sys.stdin.buffer, "-", False
        try:
            return open(name, "rb"), name, True  # closed in Capture.__iter__
        except OSError as exc:
            raise CaptureError(f"{name}: {exc.strerror or exc}") from None
    return source, getattr(source, "name", "<stream>"), False


def _read1(f: Any, n: int) -> bytes:
    r = getattr(f, "read1", None)
    data: bytes = r(n) if r is not None else f.read(n)
    return data


class Capture:
    """A capture file as an iterator of `HelloRecord`, with its problems kept.

    Args:
        source: a path, ``"-"`` for standard input, or a binary file object.
        limits: reassembly bounds, see `Limits`.
        progress: called as ``progress(bytes_read, total_or_None)`` once per chunk read.

    Iterating yields records as soon as the packet completing them is read (so a pipe
    from ``tcpdump -w -`` shows hellos live). Opening problems raise `CaptureError`
    from the iteration; a file cut mid-record or a corrupt gzip stream adds a fatal
    `Problem` to ``problems`` and ends the iteration after the flows are flushed.
    ``packets`` counts the frames read.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | IO[bytes],
        *,
        limits: Limits | None = None,
        progress: Callable[[int, int | None], None] | None = None,
        name: str | None = None,
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
        self.packets = 0
        self.table = FlowTable(self.name, self.limits)
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
            if self.packets == 0:
                raise
            # Broken past the first packets (e.g. a bad block in a later pcapng section):
            # keep what was read, as for a truncated file.
            message = str(exc).removeprefix(f"{self.name}: ")
            self.problems.append(Problem(self.name, message, True, self.packets + 1))
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self.problems.append(Problem(self.name, f"corrupt or truncated gzip data: {exc}"))
        except OSError as exc:
            self.problems.append(Problem(self.name, f"read error: {exc}"))
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

    # -- pcap ------------------------------------------------------------------------
    def _pcap(self, f: Any, magic: bytes) -> Iterator[HelloRecord]:
        import dpkt.pcap  # type: ignore[import-untyped]

        order, ns_per_tick = _PCAP_MAGICS[magic]
        hdr = _read_exact(f, 24)
        if len(hdr) < 24:
            raise CaptureError(f"{self.name}: pcap file header cut short")
        fh = (dpkt.pcap.FileHdr if order == ">" else dpkt.pcap.LEFileHdr)(hdr)
        linktype = fh.linktype & 0x0FFFFFFF  # the upper bits carry FCS info (pcap-savefile)
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
        progress = self.progress
        buf = b""
        pos = 0
        frame = 0
        eof = False
        while True:
            chunk = _read1(f, _CHUNK)
            if chunk:
                buf = buf[pos:] + chunk if pos < len(buf) else chunk
            else:
                eof = True
                buf = buf[pos:]
            pos = 0
            end = len(buf)
            if progress is not None:
                progress(self._pos(), self._total)
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
                # skip a finished direction's packet, or a pure ACK (no payload).
                if (
                    eth
                    and caplen >= 48
                    and ether_ip == b"\x08\x00\x45"
                    and proto == 6
                    and not flags & 7
                    and (key in done or (len_hi << 8 | len_lo) == 20 + (doff >> 4) * 4)
                ):
                    continue
                ts_s, ts_f = unpack(buf, start - 16)[:2]
                slow(linktype, buf[start:stop], ts_s * 1_000_000_000 + ts_f * ns_per_tick, frame)
                if table.out:
                    self.packets = frame
                    yield from self._flush()
            self.packets = frame
            if eof:
                if pos < end:
                    self._truncated("a packet record")
                return

    # -- pcapng ----------------------------------------------------------------------
    def _pcapng(self, f: Any) -> Iterator[HelloRecord]:
        import dpkt.pcapng  # type: ignore[import-untyped]

        table = self.table
        done = table.done
        slow = table.packet
        progress = self.progress
        order = "<"
        # per interface: (linktype, numerator, denominator, offset_ns) of ts -> ns
        ifaces: list[tuple[int, int, int, int]] = []
        buf = b""
        pos = 0
        frame = 0
        eof = False
        epb = struct.Struct("<IIIII")
        # As in _pcap: one unpack for an Enhanced Packet Block's header and the bytes
        # the fast path reads from an Ethernet/IPv4/TCP frame.
        peek_fmt = "IIIIII4x12x3sxBB5xB2x12s8xBB"
        peek = struct.Struct("<" + peek_fmt).unpack_from
        ether_ifaces: set[int] = set()  # ids of the interfaces whose link type is Ethernet
        while True:
            chunk = _read1(f, _CHUNK)
            if chunk:
                buf = buf[pos:] + chunk if pos < len(buf) else chunk
            else:
                eof = True
                buf = buf[pos:]
            pos = 0
            end = len(buf)
            if progress is not None:
                progress(self._pos(), self._total)
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
                        and proto == 6
                        and not flags & 7
                        and (key in done or (len_hi << 8 | len_lo) == 20 + (doff >> 4) * 4)
                    ):
                        frame += 1
                        pos += blen
                        continue
                btype = buf[pos : pos + 4]
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
                    slow(lt, buf[start:pend], ticks * num // den + toff, frame)
                elif bt == 3:  # Simple Packet Block: interface 0, no timestamp
                    frame += 1
                    if ifaces:
                        wire = struct.unpack_from(order + "I", buf, pos + 8)[0]
                        start = pos + 12
                        pend = min(start + wire, stop - 4)
                        slow(ifaces[0][0], buf[start:pend], 0, frame)
                elif bt == 2:  # obsolete Packet Block
                    frame += 1
                    iface, ts_hi, ts_lo, caplen = struct.unpack_from(order + "HxxIII", buf, pos + 8)
                    start = pos + 28
                    if iface < len(ifaces) and start + caplen <= stop:
                        lt, num, den, toff = ifaces[iface]
                        slow(
                            lt,
                            buf[start : start + caplen],
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
                        idb = cls(buf[pos:stop])
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
            if eof:
                if pos < end:
                    self._truncated("a pcapng block")
                return


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
    """Yield a `HelloRecord` for every TCP ClientHello in one or more captures.

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
