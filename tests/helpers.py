"""Test helpers: load ClientHello fixtures, re-frame them into other record splits, and
pull TCP ClientHello bytes out of the public pcap corpus to match tshark's answers.

Everything here reads the wire format by hand (record headers, the handshake header)
so that the tests do not trust the library they check.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "public"
ORIGIN_EXPECTED = CORPUS / "origin-expected"

RECORD_HEADER = 5  # RFC 8446 §5.1: type(1) + legacy_record_version(2) + length(2)
HANDSHAKE_HEADER = 4  # RFC 8446 §4: msg_type(1) + length(3)
CONTENT_HANDSHAKE = 22
CLIENT_HELLO = 1
MAX_CIPHERTEXT = 2**14 + 2048  # RFC 5246 §6.2.3: the largest record a peer may send


def fixture_names() -> list[str]:
    """Names (without .bin) of every fixture in tests/data, sorted."""
    return sorted(p.stem for p in DATA.glob("*.bin"))


def load(name: str) -> bytes:
    """The bytes of tests/data/<name>.bin (name with or without the .bin suffix)."""
    path = DATA / (name if name.endswith(".bin") else name + ".bin")
    return path.read_bytes()


def is_sslv2(data: bytes) -> bool:
    """Whether ``data`` starts with an SSLv2-compatible (2-byte header) ClientHello."""
    return len(data) >= 3 and data[0] & 0x80 != 0 and data[2] == CLIENT_HELLO


@dataclass(frozen=True)
class Framing:
    """Where a record-framed ClientHello's pieces are, computed from its headers."""

    record_version: int
    records: tuple[tuple[int, int], ...]  # (offset of record header, payload length)
    handshake: bytes  # the handshake message: type + 24-bit length + body
    end: int  # offset just past the record that completes the hello

    @property
    def body_offsets(self) -> list[int]:
        """For each handshake byte, its absolute offset in the record-framed input."""
        out: list[int] = []
        for start, length in self.records:
            out.extend(range(start + RECORD_HEADER, start + RECORD_HEADER + length))
        return out[: len(self.handshake)]


def framing(data: bytes) -> Framing:
    """Walk the handshake records of a complete TLS ClientHello.

    Raises ValueError if ``data`` is not a complete record-framed ClientHello.
    """
    pos = 0
    hs = bytearray()
    records: list[tuple[int, int]] = []
    version = -1
    while True:
        if len(data) - pos < RECORD_HEADER:
            raise ValueError("incomplete record header")
        ctype, rversion, length = struct.unpack_from("!BHH", data, pos)
        if ctype != CONTENT_HANDSHAKE:
            raise ValueError(f"record type {ctype} at {pos}")
        if version < 0:
            version = rversion
        if len(data) - pos - RECORD_HEADER < length:
            raise ValueError("incomplete record")
        hs += data[pos + RECORD_HEADER : pos + RECORD_HEADER + length]
        records.append((pos, length))
        pos += RECORD_HEADER + length
        if len(hs) >= HANDSHAKE_HEADER:
            hs_len = int.from_bytes(hs[1:4], "big")
            if len(hs) >= HANDSHAKE_HEADER + hs_len:
                # Keep only this message: a record may carry more after it.
                return Framing(version, tuple(records), bytes(hs[: 4 + hs_len]), pos)


def handshake_bytes(data: bytes) -> bytes:
    """The ClientHello handshake message (type 1 + length + body) inside ``data``."""
    return framing(data).handshake


def records(handshake: bytes, sizes: Iterable[int], version: int = 0x0301) -> bytes:
    """Frame handshake bytes as TLS records whose payloads have the given sizes.

    Sizes are used in order; whatever is left after them goes into one last record.
    A size of 0 is not allowed (a zero-length handshake record is malformed).
    """
    out = bytearray()
    pos = 0
    for size in sizes:
        if size <= 0:
            raise ValueError("record payload sizes must be positive")
        if pos >= len(handshake):
            break
        chunk = handshake[pos : pos + size]
        out += struct.pack("!BHH", CONTENT_HANDSHAKE, version, len(chunk)) + chunk
        pos += len(chunk)
    while pos < len(handshake):
        chunk = handshake[pos : pos + 2**14]
        out += struct.pack("!BHH", CONTENT_HANDSHAKE, version, len(chunk)) + chunk
        pos += len(chunk)
    return bytes(out)


def reframe(data: bytes, sizes: Sequence[int]) -> bytes:
    """Re-split a record-framed ClientHello's handshake bytes into records of ``sizes``.

    The record version of the first original record is kept. The remainder after
    ``sizes`` goes into one final record.
    """
    f = framing(data)
    return records(f.handshake, sizes, f.record_version)


def split_even(data: bytes, n: int) -> bytes:
    """Re-frame into ``n`` records of (nearly) equal size."""
    hs = handshake_bytes(data)
    base, extra = divmod(len(hs), n)
    return reframe(data, [base + (1 if i < extra else 0) for i in range(n)])


@dataclass(frozen=True)
class WireExtension:
    """One extension as found by ``layout``: offsets are into the handshake message."""

    type: int
    offset: int  # of the 2-byte type field
    data: bytes

    @property
    def length_offset(self) -> int:
        return self.offset + 2

    @property
    def data_offset(self) -> int:
        return self.offset + 4


@dataclass(frozen=True)
class Layout:
    """Offsets of a ClientHello's fields within its handshake message (RFC 8446 §4.1.2).

    Computed here by hand, independently of the library under test.
    """

    legacy_version: int
    random: bytes
    session_id_len_offset: int
    session_id: bytes
    cipher_suites_len_offset: int
    cipher_suites: tuple[int, ...]
    compression_len_offset: int
    compression: bytes
    extensions_len_offset: int | None
    extensions: tuple[WireExtension, ...]

    def ext(self, ext_type: int) -> WireExtension:
        return next(e for e in self.extensions if e.type == ext_type)


def layout(hs: bytes) -> Layout:
    """Walk a well-formed ClientHello handshake message (type + 24-bit length + body)."""
    if hs[0] != CLIENT_HELLO:
        raise ValueError("not a ClientHello")
    end = 4 + int.from_bytes(hs[1:4], "big")
    pos = 4
    version = int.from_bytes(hs[pos : pos + 2], "big")
    random = hs[pos + 2 : pos + 34]
    pos += 34
    sid_off = pos
    sid = hs[pos + 1 : pos + 1 + hs[pos]]
    pos += 1 + hs[pos]
    cs_off = pos
    n = int.from_bytes(hs[pos : pos + 2], "big")
    suites = struct.unpack_from(f"!{n // 2}H", hs, pos + 2)
    pos += 2 + n
    comp_off = pos
    comp = hs[pos + 1 : pos + 1 + hs[pos]]
    pos += 1 + hs[pos]
    if pos == end:
        return Layout(version, random, sid_off, sid, cs_off, suites, comp_off, comp, None, ())
    ext_off = pos
    ext_end = pos + 2 + int.from_bytes(hs[pos : pos + 2], "big")
    pos += 2
    exts = []
    while pos < ext_end:
        etype, elen = struct.unpack_from("!HH", hs, pos)
        exts.append(WireExtension(etype, pos, hs[pos + 4 : pos + 4 + elen]))
        pos += 4 + elen
    if pos != end:
        raise ValueError("extensions do not end the hello")
    return Layout(
        version, random, sid_off, sid, cs_off, suites, comp_off, comp, ext_off, tuple(exts)
    )


# ---------------------------------------------------------------------------
# Reading a ClientHello off a socket (used by make_fixtures.py's capture server).


def hello_length(buf: bytes) -> int | None:
    """Bytes of ``buf`` that make up a complete ClientHello, or None if not complete yet.

    Handles record-framed TLS (records of type 22 until the handshake length is met)
    and the SSLv2-compatible 2-byte header.
    """
    if not buf:
        return None
    if buf[0] & 0x80:
        if len(buf) < 2:
            return None
        n = 2 + (((buf[0] & 0x7F) << 8) | buf[1])
        return n if len(buf) >= n else None
    try:
        return framing(buf).end
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# Pulling ClientHellos out of pcap / pcapng captures with dpkt.


FlowKey = tuple[str, int, str, int]  # (src, sport, dst, dport)


@dataclass
class _Flow:
    isn: int | None = None
    segments: list[tuple[int, bytes]] = field(default_factory=list)


def _ip_layer(dpkt: Any, datalink: int, buf: bytes) -> Any:
    """The IPv4/IPv6 packet inside a link-layer frame, or None."""
    if datalink == dpkt.pcap.DLT_EN10MB:
        pkt = dpkt.ethernet.Ethernet(buf).data
    elif datalink in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
        pkt = dpkt.loopback.Loopback(buf).data
    elif datalink == dpkt.pcap.DLT_LINUX_SLL:
        pkt = dpkt.sll.SLL(buf).data
    elif datalink == dpkt.pcap.DLT_LINUX_SLL2:
        pkt = dpkt.sll2.SLL2(buf).data
    elif datalink in (dpkt.pcap.DLT_RAW, 12, 14):
        pkt = dpkt.ip6.IP6(buf) if buf and buf[0] >> 4 == 6 else dpkt.ip.IP(buf)
    elif datalink == dpkt.pcap.DLT_PPP:
        pkt = dpkt.ppp.PPP(buf).data
    else:
        return None
    return pkt if isinstance(pkt, dpkt.ip.IP | dpkt.ip6.IP6) else None


def tcp_streams(path: Path) -> dict[FlowKey, bytes]:
    """Every TCP direction in a capture, reassembled by sequence number.

    Segments are ordered by sequence number relative to the SYN (or the first
    segment seen); retransmitted and overlapping bytes are taken once.
    """
    import dpkt

    flows: dict[FlowKey, _Flow] = {}
    with path.open("rb") as fh:
        reader = dpkt.pcap.UniversalReader(fh)
        datalink = reader.datalink()
        for _ts, buf in reader:
            try:
                ip = _ip_layer(dpkt, datalink, buf)
            except (dpkt.dpkt.UnpackError, struct.error, ValueError):
                continue
            if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
                continue
            tcp = ip.data
            src = str(ipaddress.ip_address(ip.src))
            dst = str(ipaddress.ip_address(ip.dst))
            flow = flows.setdefault((src, tcp.sport, dst, tcp.dport), _Flow())
            if tcp.flags & dpkt.tcp.TH_SYN:
                flow.isn = tcp.seq
            if tcp.data:
                flow.segments.append((tcp.seq, bytes(tcp.data)))
    out: dict[FlowKey, bytes] = {}
    for key, flow in flows.items():
        if not flow.segments:
            continue
        base = (flow.isn + 1) if flow.isn is not None else flow.segments[0][0]
        ordered = sorted(((seq - base) % 2**32, data) for seq, data in flow.segments)
        stream = bytearray()
        for rel, data in ordered:
            if rel >= 2**31:  # before the base: a stray segment from another life
                continue
            if rel > len(stream):  # a hole (lost segment): keep the offsets honest
                stream += b"\0" * (rel - len(stream))
            stream += data[len(stream) - rel :] if rel + len(data) > len(stream) else b""
        out[key] = bytes(stream)
    return out


def _tls_hello_at(stream: bytes, i: int) -> int | None:
    """End of a complete record-framed ClientHello starting at ``i``, else None."""
    if len(stream) - i < 11:
        return None
    if stream[i] != CONTENT_HANDSHAKE or stream[i + 1] != 3 or stream[i + 2] > 4:
        return None
    rlen = int.from_bytes(stream[i + 3 : i + 5], "big")
    if rlen == 0 or rlen > MAX_CIPHERTEXT:
        return None
    if stream[i + 5] != CLIENT_HELLO or stream[i + 9] != 3:  # msg_type, legacy_version major
        return None
    try:
        f = framing(stream[i:])
    except ValueError:
        return None
    return i + f.end


def _sslv2_hello_at(stream: bytes, i: int) -> int | None:
    """End of an SSLv2-compatible CLIENT-HELLO starting at ``i``, else None."""
    if len(stream) - i < 11 or not stream[i] & 0x80 or stream[i + 2] != CLIENT_HELLO:
        return None
    if (stream[i + 3], stream[i + 4]) not in ((0, 2), (3, 0), (3, 1), (3, 2), (3, 3)):
        return None
    n = 2 + (((stream[i] & 0x7F) << 8) | stream[i + 1])
    return i + n if len(stream) - i >= n else None


def hellos_in_stream(stream: bytes) -> Iterator[bytes]:
    """Every ClientHello in one reassembled TCP direction, found by content.

    TLS hellos are found anywhere (after SOCKS, HTTP CONNECT, STARTTLS, or a second
    hello after HelloRetryRequest); an SSLv2-compatible hello only at the stream start,
    where a client sends it.
    """
    end = _sslv2_hello_at(stream, 0)
    if end is not None:
        yield stream[:end]
        i = end
    else:
        i = 0
    while True:
        i = stream.find(b"\x16\x03", i)
        if i < 0:
            return
        end = _tls_hello_at(stream, i)
        if end is None:
            i += 1
            continue
        yield stream[i:end]
        i = end


@dataclass(frozen=True)
class CorpusHello:
    """One TCP ClientHello of the corpus: tshark's answer and the bytes we extracted."""

    file: str
    index: int  # line number in the .expected.jsonl
    expected: dict[str, Any]
    data: bytes | None  # None: the extractor found no hello to pair with this line

    @property
    def id(self) -> str:
        return f"{self.file}#{self.index}"


def corpus_files() -> list[Path]:
    """The corpus captures that have an .expected.jsonl, sorted by name."""
    suffix = ".expected.jsonl"
    return sorted(p.with_name(p.name.removesuffix(suffix)) for p in CORPUS.glob("*" + suffix))


def expected_lines(capture: Path) -> list[dict[str, Any]]:
    """tshark's answers for one capture, one dict per ClientHello."""
    path = capture.with_name(capture.name + ".expected.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def corpus_hellos(capture: Path) -> list[CorpusHello]:
    """The TCP ClientHellos of one capture, each paired with its expected line.

    Lines are matched to extracted hellos by (src, sport, dst, dport), in order.
    UDP (QUIC, DTLS) lines are not included; see ``udp_lines``.
    """
    lines = expected_lines(capture)
    tcp = [(i, x) for i, x in enumerate(lines) if x["transport"] == "tcp"]
    if not tcp:
        return []
    streams = tcp_streams(capture)
    found: dict[FlowKey, list[bytes]] = {k: list(hellos_in_stream(s)) for k, s in streams.items()}
    taken: dict[FlowKey, int] = {}
    out: list[CorpusHello] = []
    for i, line in tcp:
        key = (line["src"], int(line["sport"]), line["dst"], int(line["dport"]))
        n = taken.get(key, 0)
        hellos = found.get(key, [])
        data = hellos[n] if n < len(hellos) else None
        taken[key] = n + 1
        out.append(CorpusHello(capture.name, i, line, data))
    return out


def udp_lines(capture: Path) -> list[dict[str, Any]]:
    """Expected lines for UDP hellos (QUIC/DTLS): out of scope, only counted."""
    return [x for x in expected_lines(capture) if x["transport"] != "tcp"]


def tshark_alpn(protocols: Sequence[bytes]) -> list[str]:
    """ALPN protocol names the way tshark renders them: UTF-8, else backslash escapes.

    tshark (epan tvb_format_text / format_text) prints printable ASCII as is and
    other bytes as ``\\xhh``; this mirrors Python's ``backslashreplace``.
    """
    return [p.decode("utf-8", "backslashreplace") for p in protocols]


# ---------------------------------------------------------------------------
# Building ClientHellos (for odd names and malformed inputs).


def build_handshake(
    *,
    version: int = 0x0303,
    random: bytes = bytes(32),
    session_id: bytes = b"",
    ciphers: Sequence[int] = (0x1301, 0x1302),
    compression: bytes = b"\x00",
    extensions: Sequence[tuple[int, bytes]] | None = (),
) -> bytes:
    """A ClientHello handshake message from its fields; ``extensions=None`` omits the block."""
    body = bytearray(version.to_bytes(2, "big") + random)
    body += bytes([len(session_id)]) + session_id
    body += struct.pack(f"!H{len(ciphers)}H", 2 * len(ciphers), *ciphers)
    body += bytes([len(compression)]) + compression
    if extensions is not None:
        block = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in extensions)
        body += struct.pack("!H", len(block)) + block
    return bytes([CLIENT_HELLO]) + len(body).to_bytes(3, "big") + body


def with_extensions(data: bytes, extensions: Sequence[tuple[int, bytes]]) -> bytes:
    """``data`` (record-framed) with its extensions replaced, every length recomputed."""
    f = framing(data)
    w = layout(f.handshake)
    hs = build_handshake(
        version=w.legacy_version,
        random=w.random,
        session_id=w.session_id,
        ciphers=w.cipher_suites,
        compression=w.compression,
        extensions=extensions,
    )
    return records(hs, [len(hs)], f.record_version)


def replace_extension(data: bytes, ext_type: int, body: bytes) -> bytes:
    """``data`` with the body of the extension ``ext_type`` replaced."""
    w = layout(handshake_bytes(data))
    return with_extensions(
        data, [(e.type, body if e.type == ext_type else e.data) for e in w.extensions]
    )


def server_name_body(*names: bytes, name_type: int = 0) -> bytes:
    """A server_name extension body (RFC 6066 §3) listing ``names``."""
    entries = b"".join(struct.pack("!BH", name_type, len(n)) + n for n in names)
    return struct.pack("!H", len(entries)) + entries


def set_u8(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + bytes([value]) + data[offset + 1 :]


def set_u16(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + value.to_bytes(2, "big") + data[offset + 2 :]


def set_u24(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + value.to_bytes(3, "big") + data[offset + 3 :]


def self_signed_cert(folder: Path, *names: str) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for ``names`` (made by `openssl req`).

    Returns:
        (certificate path, private key path), both PEM, inside ``folder``.
    """
    import subprocess

    cert, key = folder / "cert.pem", folder / "key.pem"
    san = ",".join(f"DNS:{name}" for name in names)
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key
