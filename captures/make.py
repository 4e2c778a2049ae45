"""Build the sample captures in this folder, and their expected records, byte for byte.

    python captures/make.py            # rewrite every capture and .expected.jsonl
    python captures/make.py --check    # exit 1 if any file would change

Packets are crafted with scapy (Ether/IP/IPv6/TCP/Dot1Q/CookedLinux layers) around
real ClientHello bytes stored in ``captures/hellos/`` (see README.md for where each
came from), with fixed addresses, ports, sequence numbers, timestamps and shuffles,
so running this again reproduces every file exactly. The capture files themselves
are written by the small pcap/pcapng writers below, because the samples need
variants scapy's ``wrpcap`` does not make (big-endian, nanosecond, several
interfaces with different link types, gzip with a fixed mtime, a file cut
mid-record, a short snaplen).

The expected records are derived from how each capture was built: which hello went
over which connection, and which packet completes it; the hello fields come from
``clienthello.parse`` of the stored bytes and ``sniinspect.capture.hello_fields``. An
``error`` value in an expected record is a prefix of the message the engine must give.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import make_udp  # the QUIC and DTLS captures (beside this file)

from sniinspect.capture import RECORD_KEYS

HERE = Path(__file__).resolve().parent
HELLOS = HERE / "hellos"
BASE_TS = 1_700_000_000 * 10**9  # 2023-11-14T22:13:20Z, in nanoseconds
CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def load(name: str) -> bytes:
    return (HELLOS / f"{name}.bin").read_bytes()


def reframe(hello: bytes, parts: int) -> bytes:
    """The same handshake message carried in ``parts`` TLS records instead of one."""
    version, body = hello[1:3], hello[5:]
    step = -(-len(body) // parts)
    out = b""
    for i in range(0, len(body), step):
        chunk = body[i : i + step]
        out += b"\x16" + version + struct.pack(">H", len(chunk)) + chunk
    return out


@dataclass
class Frame:
    ts: int  # ns
    l3: bytes  # IP packet
    v6: bool
    # (connection id, client-direction stream start offset, end offset) or None
    span: tuple[int, int, int] | None = None


@dataclass
class Conn:
    """A TCP connection whose packets are appended to a shared frame list."""

    frames: list[Frame]
    cid: int
    client: str
    server: str
    cport: int
    sport: int
    v6: bool = False
    cseq: int = 1_000_000
    sseq: int = 7_000_000
    clock: list[int] = field(default_factory=lambda: [BASE_TS])
    coff: int = 0  # client stream bytes sent so far
    soff: int = 0

    def _ip(self, from_client: bool) -> Any:
        from scapy.layers.inet import IP
        from scapy.layers.inet6 import IPv6

        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        if self.v6:
            return IPv6(src=src, dst=dst, hlim=64)
        return IP(src=src, dst=dst, id=self.cid, ttl=64, flags="DF")

    def _tcp(self, from_client: bool, seq: int, flags: str) -> Any:
        from scapy.layers.inet import TCP

        sp, dp = (self.cport, self.sport) if from_client else (self.sport, self.cport)
        ack = (self.sseq + self.soff + 1) if from_client else (self.cseq + self.coff + 1)
        return TCP(
            sport=sp,
            dport=dp,
            seq=seq & 0xFFFFFFFF,
            ack=ack & 0xFFFFFFFF,
            flags=flags,
            window=65535,
            options=[],
        )

    def _add(self, pkt: Any, span: tuple[int, int, int] | None = None, dt_us: int = 100) -> None:
        self.clock[0] += dt_us * 1000
        self.frames.append(Frame(self.clock[0], bytes(pkt), self.v6, span))

    def handshake(self) -> Conn:
        self._add(self._ip(True) / self._tcp(True, self.cseq, "S"))
        self._add(self._ip(False) / self._tcp(False, self.sseq, "SA"))
        self._add(self._ip(True) / self._tcp(True, self.cseq + 1, "A"))
        return self

    def client_send(
        self, data: bytes, at: int | None = None, flags: str = "PA", dt_us: int = 100
    ) -> None:
        """Send ``data`` at client stream offset ``at`` (default: next)."""
        from scapy.packet import Raw

        off = self.coff if at is None else at
        pkt = self._ip(True) / self._tcp(True, self.cseq + 1 + off, flags) / Raw(data)
        self._add(pkt, (self.cid, off, off + len(data)), dt_us)
        self.coff = max(self.coff, off + len(data))

    def server_send(self, data: bytes) -> None:
        from scapy.packet import Raw

        pkt = self._ip(False) / self._tcp(False, self.sseq + 1 + self.soff, "PA") / Raw(data)
        self._add(pkt)
        self.soff += len(data)

    def close(self) -> None:
        self._add(self._ip(True) / self._tcp(True, self.cseq + 1 + self.coff, "FA"))
        self._add(self._ip(False) / self._tcp(False, self.sseq + 1 + self.soff, "FA"))
        self.coff += 1
        self.soff += 1
        self._add(self._ip(True) / self._tcp(True, self.cseq + 1 + self.coff, "A"))


# -- link layers ------------------------------------------------------------------------
def ether(f: Frame) -> bytes:
    from scapy.layers.l2 import Ether

    return bytes(Ether(src=CLIENT_MAC, dst=SERVER_MAC, type=0x86DD if f.v6 else 0x0800)) + f.l3


def qinq(f: Frame) -> bytes:
    from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

    et = 0x86DD if f.v6 else 0x0800
    hdr = Ether(src=CLIENT_MAC, dst=SERVER_MAC) / Dot1AD(vlan=100) / Dot1Q(vlan=42, type=et)
    return bytes(hdr) + f.l3


def sll(f: Frame) -> bytes:
    from scapy.layers.l2 import CookedLinux

    hdr = CookedLinux(
        pkttype=4,
        lladdrtype=1,
        lladdrlen=6,
        src=b"\x02\x00\x00\x00\x00\x01\x00\x00",
        proto=0x86DD if f.v6 else 0x0800,
    )
    return bytes(hdr) + f.l3


def sll2(f: Frame) -> bytes:
    from scapy.layers.l2 import CookedLinuxV2

    hdr = CookedLinuxV2(
        proto=0x86DD if f.v6 else 0x0800,
        ifindex=2,
        lladdrtype=1,
        pkttype=4,
        lladdrlen=6,
        src=b"\x02\x00\x00\x00\x00\x01\x00\x00",
    )
    return bytes(hdr) + f.l3


def raw(f: Frame) -> bytes:
    return f.l3


# -- file writers -----------------------------------------------------------------------
def pcap_bytes(
    records: list[tuple[int, bytes]],
    linktype: int,
    *,
    big_endian: bool = False,
    nsec: bool = False,
    snaplen: int = 262144,
) -> bytes:
    o = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = io.BytesIO()
    out.write(struct.pack(o + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
    for ts, data in records:
        sec, ns = divmod(ts, 10**9)
        frac = ns if nsec else ns // 1000
        cap = data[:snaplen]
        out.write(struct.pack(o + "IIII", sec, frac, len(cap), len(data)) + cap)
    return out.getvalue()


def pcapng_bytes(records: list[tuple[int, int, bytes]], linktypes: list[int]) -> bytes:
    """Little-endian pcapng: one section, an interface per link type (ns resolution)."""

    def block(btype: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for lt in linktypes:
        opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)  # if_tsresol = 1e-9
        out += block(1, struct.pack("<HHI", lt, 0, 262144) + opts)
    for iface, ts, data in records:
        out += block(
            6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data
        )
    return out


# -- expected records -------------------------------------------------------------------
def hello_record(frames: list[Frame], conn: Conn, hello: bytes, end: int) -> dict[str, Any]:
    """The expected record of ``hello``, which ends at client stream offset ``end``."""
    import clienthello
    from sniinspect.capture import hello_fields

    have: list[tuple[int, int]] = []
    for number, f in enumerate(frames, 1):
        if f.span is None or f.span[0] != conn.cid:
            continue
        have.append(f.span[1:])
        reach = 0
        for a, b in sorted(have):
            if a > reach:
                break
            reach = max(reach, b)
        if reach >= end:
            rec = _connection_fields(conn, f.ts)
            fields = hello_fields(clienthello.parse(hello))
            rec.update({k: fields[k] for k in EXPECTED_KEYS if k in fields})
            rec["frame"] = number
            return rec
    raise ValueError("hello never completes")


def _connection_fields(conn: Conn, ts: int) -> dict[str, Any]:
    """The keys every record starts with: time and the connection's two ends."""
    sec, ns = divmod(ts, 10**9)
    return {
        "ts": f"{sec}.{ns:09d}",
        "src": conn.client,
        "sport": conn.cport,
        "dst": conn.server,
        "dport": conn.sport,
        "transport": "tcp",
    }


EXPECTED_KEYS = (*RECORD_KEYS, "frame")


def error_record(frames: list[Frame], conn: Conn, number: int, error: str) -> dict[str, Any]:
    return {
        **_connection_fields(conn, frames[number - 1].ts),
        "sni": None,
        "alpn": [],
        "versions": [],
        "ciphers": [],
        "extensions": [],
        "groups": [],
        "sig_algs": [],
        "ja3": None,
        "ja4": None,
        "error": error,
        "frame": number,
    }


FAKE_SERVER_HELLO = bytes.fromhex("160303002a020000260303") + bytes(range(32)) + b"\x00\x13\x01\x00"
APP_DATA = b"\x17\x03\x03\x00\x20" + bytes(range(100, 132))


# -- the samples ------------------------------------------------------------------------
def build() -> dict[str, bytes]:
    """Every file of the folder (name -> bytes)."""
    files: dict[str, bytes] = {}

    def emit(
        name: str,
        frames: list[Frame],
        expected: list[dict[str, Any]],
        link: Callable[[Frame], bytes] = ether,
        linktype: int = 1,
        **kw: Any,
    ) -> None:
        files[name] = pcap_bytes([(f.ts, link(f)) for f in frames], linktype, **kw)
        files[name + ".expected.jsonl"] = "".join(json.dumps(r) + "\n" for r in expected).encode()

    def simple(
        hello: bytes, pieces: list[bytes] | None = None, **ckw: Any
    ) -> tuple[list[Frame], Conn]:
        frames: list[Frame] = []
        c = Conn(
            frames,
            1,
            ckw.pop("client", "192.0.2.10"),
            ckw.pop("server", "198.51.100.20"),
            ckw.pop("cport", 50000),
            ckw.pop("sport", 443),
            **ckw,
        ).handshake()
        for p in pieces or [hello]:
            c.client_send(p)
        c.server_send(FAKE_SERVER_HELLO)
        c.client_send(APP_DATA)
        c.close()
        return frames, c

    python, chromium, openssl = load("python"), load("chromium"), load("openssl")

    # 1. One segment.
    frames, c = simple(python)
    emit("one-segment.pcap", frames, [hello_record(frames, c, python, len(python))])

    # 2. Three segments (Chromium's ~2 KB hello), big-endian nanosecond pcap.
    third = -(-len(chromium) // 3)
    pieces = [chromium[i : i + third] for i in range(0, len(chromium), third)]
    frames, c = simple(chromium, pieces, cport=50001)
    emit(
        "three-segments.pcap",
        frames,
        [hello_record(frames, c, chromium, len(chromium))],
        big_endian=True,
        nsec=True,
    )

    # 3. Five TLS records, in two segments.
    five = reframe(python, 5)
    frames, c = simple(five, [five[:300], five[300:]], cport=50002)
    emit("five-records.pcap", frames, [hello_record(frames, c, five, len(five))])

    # 4. One byte per segment.
    frames, c = simple(openssl, [openssl[i : i + 1] for i in range(len(openssl))], cport=50003)
    emit("one-byte-segments.pcap", frames, [hello_record(frames, c, openssl, len(openssl))])

    # 5. Out of order, retransmitted and overlapping segments.
    frames = []
    c = Conn(frames, 1, "192.0.2.10", "198.51.100.20", 50004, 443).handshake()
    cuts = [0, 300, 700, 1000, 1400, 1700, len(chromium)]
    segs = [(cuts[i], chromium[cuts[i] : cuts[i + 1]]) for i in range(len(cuts) - 1)]
    order = list(range(len(segs)))
    random.Random(5).shuffle(order)
    for i in order:
        off, data = segs[i]
        c.client_send(data, at=off)
        if i == order[1]:  # retransmit the second segment sent
            c.client_send(data, at=off)
    c.client_send(chromium[250:450], at=250)  # overlaps segments 0 and 1
    c.coff = len(chromium)
    c.server_send(FAKE_SERVER_HELLO)
    c.client_send(APP_DATA)
    c.close()
    emit("out-of-order.pcap", frames, [hello_record(frames, c, chromium, len(chromium))])

    # 6. No SNI.
    nosni = load("python-nosni")
    frames, c = simple(nosni, cport=50005)
    emit("no-sni.pcap", frames, [hello_record(frames, c, nosni, len(nosni))])

    # 7. IPv6 (with a destination-options extension header before TCP).
    curl = load("curl")
    frames, c = simple(curl, client="2001:db8::10", server="2001:db8:1::20", cport=50006, v6=True)
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

    for f in frames:
        p = IPv6(f.l3)
        payload = p.payload
        p.remove_payload()
        p.nh = 60
        p.plen = None
        f.l3 = bytes(p / IPv6ExtHdrDestOpt(nh=6) / payload)
    emit("ipv6.pcap", frames, [hello_record(frames, c, curl, len(curl))])

    # 8. QinQ VLAN tags (802.1ad outer 100, 802.1Q inner 42).
    frames, c = simple(python, cport=50007)
    emit("vlan.pcap", frames, [hello_record(frames, c, python, len(python))], link=qinq)

    # 9. Linux cooked capture (SLL, e.g. tcpdump -i any).
    frames, c = simple(openssl, cport=50008)
    emit(
        "sll.pcap", frames, [hello_record(frames, c, openssl, len(openssl))], link=sll, linktype=113
    )

    # 10. Truncated file: two connections, the file cut inside the second hello's packet.
    frames = []
    clock = [BASE_TS]
    a = Conn(frames, 1, "192.0.2.10", "198.51.100.20", 50009, 443, clock=clock).handshake()
    a.client_send(python)
    b = Conn(frames, 2, "192.0.2.11", "198.51.100.21", 50010, 443, clock=clock).handshake()
    b.client_send(openssl)
    whole = pcap_bytes([(f.ts, ether(f)) for f in frames], 1)
    files["truncated.pcap"] = whole[: len(whole) - 100]
    files["truncated.pcap.expected.jsonl"] = (
        json.dumps(hello_record(frames, a, python, len(python))) + "\n"
    ).encode()

    # 11. HelloRetryRequest: hello, HRR, ChangeCipherSpec + second hello on one connection.
    h1, hrr, h2 = load("hrr-client1"), load("hrr-server1"), load("hrr-client2")
    frames = []
    c = Conn(frames, 1, "192.0.2.10", "198.51.100.20", 50011, 443).handshake()
    c.client_send(h1)
    c.server_send(hrr)
    c.client_send(h2)
    c.close()
    emit(
        "hrr.pcap",
        frames,
        [
            hello_record(frames, c, h1, len(h1)),
            hello_record(frames, c, h2[6:], len(h1) + len(h2)),
        ],
    )

    # 12. SMTP STARTTLS on port 25: the hello follows a plaintext conversation.
    frames = []
    c = Conn(frames, 1, "192.0.2.10", "198.51.100.25", 50012, 25).handshake()
    c.server_send(b"220 mail.example.net ESMTP\r\n")
    c.client_send(b"EHLO client.example.org\r\n")
    c.server_send(b"250-mail.example.net\r\n250-STARTTLS\r\n250 SIZE 10240000\r\n")
    c.client_send(b"STARTTLS\r\n")
    c.server_send(b"220 2.0.0 Ready to start TLS\r\n")
    start = c.coff
    c.client_send(python)
    c.close()
    emit("starttls.pcap", frames, [hello_record(frames, c, python, start + len(python))])

    # 13. Non-TLS noise around one hello on an unusual port (found by content).
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.l2 import ARP, Ether

    frames = []
    clock = [BASE_TS]
    rng = random.Random(13)
    http = Conn(frames, 1, "192.0.2.10", "198.51.100.80", 50013, 80, clock=clock).handshake()
    http.client_send(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
    http.server_send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    junk = Conn(frames, 2, "192.0.2.10", "198.51.100.30", 50014, 443, clock=clock).handshake()
    for _ in range(3):
        junk.client_send(bytes(rng.randrange(256) for _ in range(700)))
    frames.append(
        Frame(
            clock[0] + 1000,
            bytes(
                IP(src="192.0.2.10", dst="192.0.2.53", id=9)
                / UDP(sport=5353, dport=53)
                / (b"\x12\x34\x01\x00\x00\x01" + bytes(6))
            ),
            False,
        )
    )
    frames.append(
        Frame(
            clock[0] + 2000,
            bytes(IP(src="192.0.2.10", dst="198.51.100.1", id=10) / ICMP(id=1, seq=1)),
            False,
        )
    )
    clock[0] += 3000
    tls = Conn(frames, 3, "192.0.2.10", "198.51.100.40", 50015, 8443, clock=clock).handshake()
    tls.client_send(python)
    http.close()
    junk.close()
    tls.close()
    arp = bytes(
        Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff")
        / ARP(hwsrc=CLIENT_MAC, psrc="192.0.2.10", pdst="192.0.2.1")
    )
    recs = [(f.ts, ether(f)) for f in frames]
    recs.insert(0, (BASE_TS, arp))
    files["noise.pcap"] = pcap_bytes(recs, 1)
    exp = hello_record(frames, tls, python, len(python))
    exp["frame"] += 1  # the ARP frame comes first
    files["noise.pcap.expected.jsonl"] = (json.dumps(exp) + "\n").encode()

    # 14. Snaplen 200: the hello's packet is cut, so the hello is reported as an error.
    frames, c = simple(python, cport=50016)
    emit(
        "snaplen.pcap",
        frames,
        [
            error_record(
                frames,
                c,
                len(frames) - 2,  # the client's FIN
                "capture ended before the hello completed",
            )
        ],
        snaplen=200,
    )

    # 15. pcapng, gzip: two interfaces with different link types (Ethernet and SLL2).
    frames = []
    clock = [BASE_TS]
    a = Conn(frames, 1, "192.0.2.10", "198.51.100.20", 50017, 443, clock=clock).handshake()
    a.client_send(python)
    n_a = len(frames)
    b = Conn(
        frames, 2, "2001:db8::10", "2001:db8:1::20", 50018, 443, v6=True, clock=clock
    ).handshake()
    b.client_send(chromium[:1000])
    b.client_send(chromium[1000:])
    blocks = [
        (0 if i < n_a else 1, f.ts, (ether if i < n_a else sll2)(f)) for i, f in enumerate(frames)
    ]
    files["multi-interface.pcapng.gz"] = gzip.compress(pcapng_bytes(blocks, [1, 276]), mtime=0)
    files["multi-interface.pcapng.gz.expected.jsonl"] = "".join(
        json.dumps(r) + "\n"
        for r in [
            hello_record(frames, a, python, len(python)),
            hello_record(frames, b, chromium, len(chromium)),
        ]
    ).encode()

    # 16-24. QUIC and DTLS over UDP (make_udp.py).
    for name, (recs, expected) in make_udp.captures().items():
        files[name] = pcap_bytes(recs, 1)
        files[name + ".expected.jsonl"] = "".join(json.dumps(r) + "\n" for r in expected).encode()
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    ap.add_argument("--out", type=Path, default=HERE, help="folder to write (default: here)")
    args = ap.parse_args(argv)
    files = build()
    changed = []
    for name, data in sorted(files.items()):
        path = args.out / name
        if not path.exists() or path.read_bytes() != data:
            changed.append(name)
            if not args.check:
                path.write_bytes(data)
    for name in changed:
        print(("differs: " if args.check else "wrote: ") + name)
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
