"""The QUIC and DTLS sample captures, for ``make.py``: UDP datagrams around real hellos.

QUIC packets are built and protected by `clienthello.quic` itself (`build_initial`,
`build_retry`, `crypto_frame`, `ack_frame`, `PING_FRAME`): Initials carry the real
handshake messages in ``hellos/quic-*.hs``; 0-RTT, Handshake and short-header packets
around them carry seeded random bytes behind a real header (nothing reads them).
DTLS records and handshake fragments are laid out here with ``struct`` from the real
datagrams in ``hellos/dtls12*.dgrams``. IP and UDP headers come from scapy, like the
TCP captures'. Connection IDs, tokens, packet numbers, timestamps and the random bytes
are fixed, so every file comes out the same byte for byte.

The expected records follow from the construction: the datagram after which the
connection's CRYPTO stream (QUIC) or the hello's fragments (DTLS) hold every byte of
the hello gives ``frame`` and ``ts``; the hello fields are
`sniinspect.capture.records.hello_fields` of the stored hello bytes, with the
``transport``, ``after`` and ``quic_version`` keys the analyzer gives.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sniinspect.capture import RECORD_KEYS

HERE = Path(__file__).resolve().parent
HELLOS = HERE / "hellos"
BASE_TS = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z, in nanoseconds, as in make.py
# Ethernet destination, source and type (IPv4; IPv6 patched in): make.py's MACs.
_ETHER = bytes.fromhex("020000000002020000000001")
# The bare ServerHello of make.py's FAKE_SERVER_HELLO, as a server's CRYPTO data.
SERVER_HELLO = bytes.fromhex("020000260303") + bytes(range(32)) + b"\x00\x13\x01\x00"
# A HelloRetryRequest (RFC 8446 §4.1.3: a ServerHello whose random is SHA-256 of
# "HelloRetryRequest") for TLS_AES_128_GCM_SHA256 asking for a secp256r1 key share:
# supported_versions 1.3, key_share with the selected group.
_HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
_HRR_BODY = (
    b"\x03\x03" + _HRR_RANDOM + b"\x00" + b"\x13\x01" + b"\x00"
    + bytes.fromhex("000c" "002b00020304" "003300020017")
)  # fmt: skip
HELLO_RETRY = b"\x02" + len(_HRR_BODY).to_bytes(3, "big") + _HRR_BODY

X25519_MLKEM768 = 0x11EC  # draft-kwiatkowski-tls-ecdhe-mlkem, Chrome 131+
MLKEM768_SHARE = 1216  # bytes of an X25519MLKEM768 client key share


# -- the stored hellos -------------------------------------------------------------------
def load_hs(name: str) -> bytes:
    """A bare QUIC handshake message from ``hellos/quic-<name>.hs``."""
    return (HELLOS / f"quic-{name}.hs").read_bytes()


def load_dgrams(name: str) -> list[bytes]:
    """The datagrams of ``hellos/<name>.dgrams`` (2-byte length, then the datagram)."""
    data = (HELLOS / f"{name}.dgrams").read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("!H", data, pos)
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


@dataclass
class HelloParts:
    """A ClientHello taken apart, to be edited and put back together (TLS or DTLS)."""

    legacy_version: int
    random: bytes
    session_id: bytes
    cookie: bytes | None  # DTLS only
    ciphers: list[int]
    compression: bytes
    extensions: list[tuple[int, bytes]]

    @classmethod
    def of(cls, message: bytes, dtls: bool = False) -> HelloParts:
        """Split a whole handshake message (4-byte header, or DTLS's 12 bytes)."""
        body = message[12 if dtls else 4 :]
        pos = 34
        session_id = body[pos + 1 : pos + 1 + body[pos]]
        pos += 1 + body[pos]
        cookie = None
        if dtls:
            cookie = body[pos + 1 : pos + 1 + body[pos]]
            pos += 1 + body[pos]
        (n,) = struct.unpack_from("!H", body, pos)
        ciphers = list(struct.unpack_from(f"!{n // 2}H", body, pos + 2))
        pos += 2 + n
        compression = body[pos + 1 : pos + 1 + body[pos]]
        pos += 1 + body[pos]
        (n,) = struct.unpack_from("!H", body, pos)
        pos += 2
        extensions = []
        while pos < len(body):
            etype, elen = struct.unpack_from("!HH", body, pos)
            extensions.append((etype, body[pos + 4 : pos + 4 + elen]))
            pos += 4 + elen
        return cls(
            struct.unpack_from("!H", body)[0],
            body[2:34],
            session_id,
            cookie,
            ciphers,
            compression,
            extensions,
        )

    def message(self, message_seq: int = 0) -> bytes:
        """The handshake message; with a cookie (DTLS), DTLS's 12-byte header."""
        body = struct.pack("!H", self.legacy_version) + self.random
        body += bytes([len(self.session_id)]) + self.session_id
        if self.cookie is not None:
            body += bytes([len(self.cookie)]) + self.cookie
        body += struct.pack(f"!H{len(self.ciphers)}H", 2 * len(self.ciphers), *self.ciphers)
        body += bytes([len(self.compression)]) + self.compression
        block = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in self.extensions)
        body += struct.pack("!H", len(block)) + block
        length = len(body).to_bytes(3, "big")
        if self.cookie is None:
            return b"\x01" + length + body
        return b"\x01" + length + struct.pack("!H", message_seq) + bytes(3) + length + body

    def replace(self, etype: int, data: bytes) -> None:
        self.extensions = [(t, data if t == etype else d) for t, d in self.extensions]


def server_name_ext(name: bytes) -> bytes:
    """A server_name extension body with one host_name (RFC 6066 §3)."""
    return struct.pack("!HBH", len(name) + 3, 0, len(name)) + name


def chrome_pq(chrome: bytes, seed: int = 11) -> bytes:
    """Chrome's QUIC hello as Chrome 131+ sends it: an X25519MLKEM768 key share added.

    The stored hello predates post-quantum key exchange; with the 1216-byte share
    (seeded random bytes) in front of X25519's and the group offered first, it is
    ~1.5 KB, so it needs two Initials, as Chrome's hellos do today.
    """
    parts = HelloParts.of(chrome)
    rng = random.Random(seed)
    out = []
    for etype, data in parts.extensions:
        if etype == 10:  # supported_groups
            groups = struct.pack("!H", X25519_MLKEM768) + data[2:]
            data = struct.pack("!H", len(groups)) + groups
        elif etype == 51:  # key_share
            share = rng.randbytes(MLKEM768_SHARE)
            shares = struct.pack("!HH", X25519_MLKEM768, len(share)) + share + data[2:]
            data = struct.pack("!H", len(shares)) + shares
        out.append((etype, data))
    parts.extensions = out
    return parts.message()


# -- packets -----------------------------------------------------------------------------
def long_packet(
    version: int, kind: Any, dcid: bytes, scid: bytes, size: int, rng: random.Random
) -> bytes:
    """A 0-RTT or Handshake packet: a real long header, then ``size`` random bytes.

    The random bytes stand for the protected packet number, payload and tag, which
    nobody in these captures can open.
    """
    from clienthello import quic

    first = 0xC0 | (quic.VERSIONS[version].type_bits(kind) << 4) | rng.randrange(16)
    return (
        struct.pack("!BI", first, version)
        + bytes([len(dcid)]) + dcid
        + bytes([len(scid)]) + scid
        + struct.pack("!H", 0x4000 | size)
        + rng.randbytes(size)
    )  # fmt: skip


def short_packet(dcid: bytes, size: int, rng: random.Random) -> bytes:
    """A 1-RTT packet (RFC 9000 §17.3.1): fixed bit, random low bits, DCID, random bytes."""
    return bytes([0x40 | rng.randrange(32)]) + dcid + rng.randbytes(size)


def dtls_record(seq: int, fragments: Iterable[bytes], version: int = 0xFEFF) -> bytes:
    """A DTLSPlaintext handshake record, epoch 0 (RFC 6347 §4.1), holding ``fragments``."""
    body = b"".join(fragments)
    return struct.pack("!BHHHIH", 22, version, 0, seq >> 32, seq & 0xFFFFFFFF, len(body)) + body


def dtls_fragment(message: bytes, start: int, end: int) -> bytes:
    """Bytes ``start:end`` of a DTLS handshake message's body, as one fragment (§4.2.2)."""
    return (
        message[:6]
        + start.to_bytes(3, "big")
        + (end - start).to_bytes(3, "big")
        + message[12 + start : 12 + end]
    )


def hello_verify_request(cookie: bytes) -> bytes:
    """A server's HelloVerifyRequest record (RFC 6347 §4.2.1), server_version DTLS 1.0."""
    body = b"\xfe\xff" + bytes([len(cookie)]) + cookie
    length = len(body).to_bytes(3, "big")
    return dtls_record(0, [b"\x03" + length + b"\x00\x00" + bytes(3) + length + body])


# -- datagrams and expected records ------------------------------------------------------
class Flow:
    """A client and a server exchanging UDP datagrams, appended to a shared frame list."""

    def __init__(
        self,
        frames: list[tuple[int, bytes]],
        client: str,
        server: str,
        cport: int,
        sport: int,
        clock: list[int] | None = None,
    ) -> None:
        self.frames = frames
        self.client, self.server, self.cport, self.sport = client, server, cport, sport
        self.v6 = ":" in client
        self.clock = clock if clock is not None else [BASE_TS]

    def send(self, payload: bytes, from_client: bool = True, dt_us: int = 150) -> int:
        """Append one datagram; return its frame number (1-based)."""
        from scapy.layers.inet import IP, UDP
        from scapy.layers.inet6 import IPv6

        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        sp, dp = (self.cport, self.sport) if from_client else (self.sport, self.cport)
        if self.v6:
            l3 = bytes(IPv6(src=src, dst=dst, hlim=64) / UDP(sport=sp, dport=dp) / payload)
        else:
            ip_id = len(self.frames) + 1
            l3 = bytes(
                IP(src=src, dst=dst, id=ip_id, ttl=64, flags="DF")
                / UDP(sport=sp, dport=dp)
                / payload
            )
        self.clock[0] += dt_us * 1000
        ether = _ETHER + (b"\x86\xdd" if self.v6 else b"\x08\x00")
        self.frames.append((self.clock[0], ether + l3))
        return len(self.frames)

    def record(
        self,
        frame: int,
        hello: Any,
        transport: str,
        after: str | None = None,
        quic_version: str | None = None,
    ) -> dict[str, Any]:
        """The expected record of ``hello`` (a parsed ClientHello), completed by ``frame``."""
        from sniinspect.capture import hello_fields

        sec, ns = divmod(self.frames[frame - 1][0], 10**9)
        rec: dict[str, Any] = {
            "ts": f"{sec}.{ns:09d}",
            "src": self.client,
            "sport": self.cport,
            "dst": self.server,
            "dport": self.sport,
            "transport": transport,
        }
        fields = hello_fields(hello, transport)
        fields.update(after=after, quic_version=quic_version)
        rec.update({k: fields[k] for k in RECORD_KEYS if k in fields})
        rec["frame"] = frame
        return rec


def completed_at(spans: list[tuple[int, int, int]], total: int) -> int:
    """The first frame after which ``(frame, start, end)`` spans cover ``[0, total)``."""
    have: list[tuple[int, int]] = []
    for frame, start, end in sorted(spans, key=lambda s: s[0]):
        have.append((start, end))
        reach = 0
        for a, b in sorted(have):
            if a > reach:
                break
            reach = max(reach, b)
        if reach >= total:
            return frame
    raise ValueError("hello never completes")


# -- QUIC ----------------------------------------------------------------------------------
def _quic_handshake_reply(
    flow: Flow,
    version: int,
    odcid: bytes,
    cscid: bytes,
    server_cid: bytes,
    rng: random.Random,
    client_pn: int = 1,
    server_offset: int = 0,
) -> None:
    """The server's first flight (Initial + Handshake), the client's ACK, some 1-RTT bulk.

    ``client_pn``: the packet number of the client's ACK; ``server_offset``: where the
    ServerHello starts in the server's CRYPTO stream (after a HelloRetryRequest).
    """
    from clienthello import quic

    server_initial = quic.build_initial(
        version,
        cscid,
        server_cid,
        [quic.ack_frame(client_pn - 1), quic.crypto_frame(server_offset, SERVER_HELLO)],
        packet_number=1 if server_offset else 0,  # after the HelloRetryRequest's Initial
        original_destination_cid=odcid,
        is_client=False,
        pad_to=0,
    )
    handshake = long_packet(version, quic.PacketType.HANDSHAKE, cscid, server_cid, 900, rng)
    flow.send(server_initial + handshake, from_client=False, dt_us=9000)
    client_ack = quic.build_initial(
        version,
        server_cid,
        cscid,
        [quic.ack_frame(0)],
        packet_number=client_pn,
        original_destination_cid=odcid,
        pad_to=0,
    )
    client_hs = long_packet(version, quic.PacketType.HANDSHAKE, server_cid, cscid, 60, rng)
    flow.send(client_ack + client_hs + bytes(1200 - len(client_ack) - len(client_hs)))
    for i in range(4):
        flow.send(short_packet(server_cid, 40 + 17 * i, rng))
        flow.send(short_packet(cscid, 1200, rng), from_client=False)


def _version_name(version: int) -> str:
    from clienthello import quic

    return quic.VERSIONS[version].name.removeprefix("QUIC ")


def quic_captures() -> dict[str, tuple[list[tuple[int, bytes]], list[dict[str, Any]]]]:
    """Every QUIC capture: name -> (``(ts, Ethernet frame)`` list, expected records)."""
    from clienthello import parse_handshake, quic

    out: dict[str, tuple[list[tuple[int, bytes]], list[dict[str, Any]]]] = {}
    aioquic, curl, chrome = load_hs("aioquic"), load_hs("curl"), load_hs("chrome")
    cscid = bytes.fromhex("c1c1c1c1c1c1c1c1")
    server_cid = bytes.fromhex("5e5e5e5e5e5e5e5e")

    def single(name: str, version: int, hello: bytes, odcid: bytes, cport: int, seed: int) -> None:
        """One connection, the whole hello in the first Initial."""
        frames: list[tuple[int, bytes]] = []
        rng = random.Random(seed)
        flow = Flow(frames, "192.0.2.10", "198.51.100.30", cport, 443)
        n = flow.send(quic.build_initial(version, odcid, cscid, [quic.crypto_frame(0, hello)]))
        _quic_handshake_reply(flow, version, odcid, cscid, server_cid, rng)
        rec = flow.record(n, parse_handshake(hello), "quic", quic_version=_version_name(version))
        out[name] = (frames, [rec])

    # 1. QUIC v1: aioquic's hello in one Initial.
    single("quic-v1.pcap", quic.QUIC_V1, aioquic, bytes.fromhex("0001020304050607"), 51001, 1)
    # 2. QUIC v2 (RFC 9369: other salt, labels and packet-type bits): curl's hello.
    single("quic-v2.pcap", quic.QUIC_V2, curl, bytes.fromhex("1011121314151617"), 51002, 2)

    # 3. Chrome's post-quantum hello over 3 Initials: small CRYPTO frames shuffled across
    #    and within the packets, PINGs and PADDING between them, one range sent twice.
    frames: list[tuple[int, bytes]] = []
    rng = random.Random(3)
    flow = Flow(frames, "192.0.2.10", "198.51.100.31", 51003, 443)
    hello = chrome_pq(chrome)
    cuts = sorted(rng.sample(range(40, len(hello) - 40), 11))
    pieces = [(a, hello[a:b]) for a, b in zip([0, *cuts], [*cuts, len(hello)], strict=True)]
    pieces.append((cuts[3] - 25, hello[cuts[3] - 25 : cuts[3] + 30]))  # overlaps two pieces
    rng.shuffle(pieces)
    odcid = bytes.fromhex("2021222324252627")
    spans = []
    for pn in range(3):
        mine = pieces[pn::3]
        payload: list[bytes] = []
        for off, data in mine:
            payload += [quic.PING_FRAME, bytes(rng.randrange(1, 6)), quic.crypto_frame(off, data)]
        n = flow.send(
            quic.build_initial(quic.QUIC_V1, odcid, cscid, payload, packet_number=pn), dt_us=40
        )
        spans += [(n, off, off + len(data)) for off, data in mine]
    _quic_handshake_reply(flow, quic.QUIC_V1, odcid, cscid, server_cid, rng)
    out["quic-chaos.pcap"] = (
        frames,
        [flow.record(completed_at(spans, len(hello)), parse_handshake(hello), "quic",
                     quic_version="v1")],
    )  # fmt: skip

    # 4. Coalesced Initial + 0-RTT in one datagram, then a 0-RTT-only datagram: curl.
    frames = []
    rng = random.Random(4)
    flow = Flow(frames, "192.0.2.10", "198.51.100.32", 51004, 443)
    odcid = bytes.fromhex("3031323334353637")
    zero_rtt = long_packet(quic.QUIC_V1, quic.PacketType.ZERO_RTT, odcid, cscid, 300, rng)
    initial = quic.build_initial(
        quic.QUIC_V1, odcid, cscid, [quic.crypto_frame(0, curl)], pad_to=1200 - len(zero_rtt)
    )
    n = flow.send(initial + zero_rtt)
    flow.send(long_packet(quic.QUIC_V1, quic.PacketType.ZERO_RTT, odcid, cscid, 1100, rng))
    _quic_handshake_reply(flow, quic.QUIC_V1, odcid, cscid, server_cid, rng)
    out["quic-0rtt.pcap"] = (
        frames, [flow.record(n, parse_handshake(curl), "quic", quic_version="v1")]
    )  # fmt: skip

    # 5. Retry: the client's Initial, the server's Retry (new connection ID, a token),
    #    the client's second Initial to that ID with the token, keys from that ID.
    frames = []
    rng = random.Random(5)
    flow = Flow(frames, "192.0.2.10", "198.51.100.33", 51005, 443)
    odcid = bytes.fromhex("4041424344454647")
    retry_cid = bytes.fromhex("7e7e7e7e7e7e7e7e7e7e7e7e")
    token = b"retry-token:" + bytes(range(20))
    first = flow.send(
        quic.build_initial(quic.QUIC_V1, odcid, cscid, [quic.crypto_frame(0, aioquic)])
    )
    flow.send(quic.build_retry(quic.QUIC_V1, odcid, cscid, retry_cid, token), from_client=False)
    second = flow.send(
        quic.build_initial(
            quic.QUIC_V1, retry_cid, cscid, [quic.crypto_frame(0, aioquic)],
            token=token, packet_number=1,
        )
    )  # fmt: skip
    _quic_handshake_reply(flow, quic.QUIC_V1, retry_cid, cscid, server_cid, rng)
    h = parse_handshake(aioquic)
    out["quic-retry.pcap"] = (
        frames,
        [
            flow.record(first, h, "quic", quic_version="v1"),
            flow.record(second, h, "quic", after="retry", quic_version="v1"),
        ],
    )

    # 6. 4-tuple reuse (IPv6): two connections from the same client address and port,
    #    each with its own original DCID, as Chromium opens them.
    frames = []
    rng = random.Random(6)
    flow = Flow(frames, "2001:db8::10", "2001:db8:1::30", 51006, 443)
    recs = []
    for i, name in enumerate((b"www.blogger.com", b"www.youtube.com")):
        parts = HelloParts.of(chrome)
        parts.replace(0, server_name_ext(name))
        hello = parts.message()
        odcid = bytes([0x50 + i]) * 8
        scid = bytes([0xC0 + i]) * 8
        n = flow.send(quic.build_initial(quic.QUIC_V1, odcid, scid, [quic.crypto_frame(0, hello)]))
        _quic_handshake_reply(flow, quic.QUIC_V1, odcid, scid, bytes([0x60 + i]) * 8, rng)
        recs.append(flow.record(n, parse_handshake(hello), "quic", quic_version="v1"))
    out["quic-reuse.pcap"] = (frames, recs)

    # 7. HelloRetryRequest: curl's hello (X25519 key share), the server's Initial with a
    #    HelloRetryRequest asking for secp256r1, then the client's second hello, with a
    #    P-256 key share, further on in the same CRYPTO stream under the same keys, to
    #    the server's connection ID, in two Initials (second half first).
    frames = []
    rng = random.Random(7)
    flow = Flow(frames, "192.0.2.10", "198.51.100.34", 51007, 443)
    odcid = bytes.fromhex("7071727374757677")
    first = flow.send(quic.build_initial(quic.QUIC_V1, odcid, cscid, [quic.crypto_frame(0, curl)]))
    hrr = quic.build_initial(
        quic.QUIC_V1, cscid, server_cid, [quic.ack_frame(0), quic.crypto_frame(0, HELLO_RETRY)],
        original_destination_cid=odcid, is_client=False, pad_to=0,
    )  # fmt: skip
    flow.send(hrr, from_client=False, dt_us=9000)
    parts = HelloParts.of(curl)
    parts.replace(51, struct.pack("!HHH", 69, 0x0017, 65) + b"\x04" + rng.randbytes(64))
    second_hello = parts.message()
    cut = len(second_hello) // 2
    base = len(curl)
    halves = [(base + cut, second_hello[cut:]), (base, second_hello[:cut])]
    for pn, (off, data) in enumerate(halves, start=1):
        frames_of = [quic.ack_frame(0), quic.crypto_frame(off, data)] if pn == 1 else [
            quic.PING_FRAME, quic.crypto_frame(off, data)
        ]  # fmt: skip
        second = flow.send(
            quic.build_initial(
                quic.QUIC_V1, server_cid, cscid, frames_of, packet_number=pn,
                original_destination_cid=odcid,
            ),
            dt_us=40,
        )  # fmt: skip
    _quic_handshake_reply(
        flow, quic.QUIC_V1, odcid, cscid, server_cid, rng, client_pn=3,
        server_offset=len(HELLO_RETRY),
    )  # fmt: skip
    out["quic-hrr.pcap"] = (
        frames,
        [
            flow.record(first, parse_handshake(curl), "quic", quic_version="v1"),
            flow.record(
                second, parse_handshake(second_hello), "quic", after="hello_retry_request",
                quic_version="v1",
            ),
        ],
    )  # fmt: skip
    return out


# -- DTLS ----------------------------------------------------------------------------------
def dtls_captures() -> dict[str, tuple[list[tuple[int, bytes]], list[dict[str, Any]]]]:
    """Every DTLS capture: name -> (``(ts, Ethernet frame)`` list, expected records)."""
    from clienthello.dtls import DtlsReader, parse_dtls_handshake

    out: dict[str, tuple[list[tuple[int, bytes]], list[dict[str, Any]]]] = {}

    # 7. A fragmented hello: OpenSSL's 84-cipher hello (-mtu 300) cut into five fragments
    #    plus one overlapping two others, in six records, in four datagrams sent out of
    #    order.
    mtu300 = load_dgrams("dtls12-mtu300")
    reader = DtlsReader()
    first = next(f for d in mtu300 if (f := reader.feed(d)) is not None)
    message = first.hello.raw
    body_len = len(message) - 12
    frames: list[tuple[int, bytes]] = []
    flow = Flow(frames, "192.0.2.10", "198.51.100.40", 51007, 4433)
    cut = [0, 70, 140, 200, 260, body_len]
    frag = [(cut[i], cut[i + 1]) for i in range(5)]
    datagrams = [[frag[2]], [frag[4], frag[0]], [(120, 180)], [frag[3], frag[1]]]
    spans, seq = [], 0
    for dgram in datagrams:
        records = []
        for a, b in dgram:
            records.append(dtls_record(seq, [dtls_fragment(message, a, b)]))
            seq += 1
        n = flow.send(b"".join(records))
        spans += [(n, a, b) for a, b in dgram]
    hello = parse_dtls_handshake(message)
    out["dtls-fragmented.pcap"] = (
        frames,
        [flow.record(completed_at(spans, body_len), hello, "dtls")],
    )

    # 8. HelloVerifyRequest: OpenSSL's first hello, the server's cookie, the second hello.
    d12 = load_dgrams("dtls12")
    reader = DtlsReader()
    h1, h2 = reader.feed(d12[0]), reader.feed(d12[1])
    assert h1 is not None and h2 is not None  # the stored datagrams, not input
    frames = []
    flow = Flow(frames, "192.0.2.10", "198.51.100.41", 51008, 5684)
    a = flow.send(d12[0])
    flow.send(hello_verify_request(h2.hello.cookie or b""), from_client=False)
    b = flow.send(d12[1])
    out["dtls-hvr.pcap"] = (
        frames,
        [
            flow.record(a, h1.hello, "dtls"),
            flow.record(b, h2.hello, "dtls", after="hello_verify_request"),
        ],
    )

    # 9. DTLS 1.3 (RFC 9147): OpenSSL's DTLS 1.2 hello made a 1.3 one: TLS 1.3 cipher
    #    suites first, supported_versions [DTLS 1.3, DTLS 1.2], psk_key_exchange_modes,
    #    an X25519 key share; legacy_version and the record version stay 0xfefd. IPv6.
    parts = HelloParts.of(h1.hello.raw, dtls=True)
    parts.ciphers = [0x1301, 0x1302, 0x1303, *parts.ciphers]
    parts.replace(0, server_name_ext(b"dtls13.test"))
    key = random.Random(9).randbytes(32)
    parts.extensions += [
        (43, bytes.fromhex("04fefcfefd")),
        (45, b"\x01\x01"),
        (51, struct.pack("!HHH", 36, 29, 32) + key),
    ]
    message = parts.message()
    frames = []
    flow = Flow(frames, "2001:db8::10", "2001:db8:1::42", 51009, 4433)
    n = flow.send(dtls_record(0, [message], version=0xFEFD))
    out["dtls13.pcap"] = (frames, [flow.record(n, parse_dtls_handshake(message), "dtls")])
    return out


def captures() -> dict[str, tuple[list[tuple[int, bytes]], list[dict[str, Any]]]]:
    """Every UDP capture of the folder: name -> (frames, expected records)."""
    return {**quic_captures(), **dtls_captures()}
