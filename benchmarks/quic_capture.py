"""The QUIC half of ``benchmarks/pcap.py``: a QUIC-heavy capture, and Initials decoded per second.

    python benchmarks/pcap.py                       # TCP, then QUIC (300,000 datagrams)
    python benchmarks/pcap.py --quic-only --quic 1000000

The capture is written with ``struct`` (Ethernet/IPv4/UDP, UDP checksum 0) into the
benchmark's temporary folder. ``connections`` QUIC connections on UDP 443, interleaved
(up to 200 open at once), from three client shapes whose hellos are the real ones in
``captures/hellos`` with the server name rewritten to a unique one of the same length:

- aioquic-like (1 in 3): the whole hello in one Initial; 8-byte connection IDs; every
  tenth connection QUIC v2.
- Chrome-like (1 in 3): Chrome's hello with an X25519MLKEM768 key share (1.5 KB, see
  ``captures/make_udp.py: chrome_pq``) cut into small CRYPTO frames, shuffled over 2
  Initials (or 3, one connection in three), PING and PADDING frames between them; an
  empty client connection ID, as Chromium sends.
- curl-like (1 in 3): ngtcp2's hello in one Initial, 18-byte connection IDs; one in
  four with a 0-RTT packet coalesced after the Initial.

Each connection then gets the server's Initial (ACK + CRYPTO, protected with the
server's Initial keys) coalesced with a Handshake packet, the client's Handshake
packet, and bulk 1-RTT traffic: short-header packets with the right DCID and random
bytes (two 1200-byte server packets per 40-byte client one). DNS queries to port 53 are
noise (one in fifty). Initials are protected with `clienthello.quic.build_initial`.

Timed in the same run, each in its own process: ``sniinspect pcap --format jsonl`` and
``tshark -Y tls.handshake.type==1 -T fields`` (tshark decrypts the Initials itself); the
SNI multisets must be equal to each other and to the generated names. And, in this
process: client Initial datagrams decoded per second by `clienthello.quic.InitialReader`
(header, header protection, AES-GCM, frames, ClientHello parse) beside aioquic's own
``pull_quic_header`` + ``CryptoPair.setup_initial`` + ``decrypt_packet`` (header and
decryption only), and beside that plus aioquic's ``pull_client_hello`` on the CRYPTO
frame.
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "captures"))
import make_udp  # noqa: E402  (captures/make_udp.py: the stored hellos, chrome_pq)

from clienthello import quic  # noqa: E402

TSHARK_FIELDS = [
    "frame.time_epoch",
    "ip.src",
    "udp.srcport",
    "ip.dst",
    "udp.dstport",
    "tls.handshake.extensions_server_name",
    "tls.handshake.extensions_alpn_str",
    "tls.handshake.ciphersuite",
    "tls.handshake.ja3",
]
SNI_COLUMN = 5

_ETH = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_REC = struct.Struct("<IIII")


class UdpWriter:
    """Ethernet/IPv4/UDP datagrams as a little-endian microsecond pcap."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.count = 0
        self.ts = 1_700_000_000_000_000  # microseconds
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))

    def udp(self, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> None:
        total = 28 + len(payload)
        hdr = _IP.pack(0x45, 0, total, 0, 0x4000, 64, 17, 0, src, dst)
        s = sum(struct.unpack("!10H", hdr))
        s = (s >> 16) + (s & 0xFFFF)
        s += s >> 16
        hdr = hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:]
        frame = _ETH + hdr + _UDP.pack(sport, dport, 8 + len(payload), 0) + payload
        self.ts += 5
        sec, usec = divmod(self.ts, 1_000_000)
        self.f.write(_REC.pack(sec, usec, len(frame), len(frame)) + frame)
        self.count += 1


class _Conn:
    """One connection in its bulk phase."""

    __slots__ = ("cli", "client_cid", "cport", "left", "server_cid", "srv")

    def __init__(
        self, cli: bytes, srv: bytes, cport: int, client_cid: bytes, server_cid: bytes, left: int
    ) -> None:
        self.cli, self.srv, self.cport = cli, srv, cport
        self.client_cid, self.server_cid, self.left = client_cid, server_cid, left


def _named(template: bytes, old: bytes, new: bytes) -> bytes:
    if len(old) != len(new) or template.count(old) != 1:
        raise ValueError(f"cannot put {new!r} in place of {old!r}")
    return template.replace(old, new)


def _shuffled_initials(
    rng: random.Random, hello: bytes, packets: int, dcid: bytes, scid: bytes
) -> list[bytes]:
    """``hello`` in 3 to 4 CRYPTO frames per packet, shuffled over ``packets`` Initials."""
    cuts = sorted(rng.sample(range(1, len(hello)), 3 * packets - 1))
    pieces = list(zip([0, *cuts], [*cuts, len(hello)], strict=True))
    rng.shuffle(pieces)
    out = []
    for pn in range(packets):
        frames: list[bytes] = []
        for a, b in pieces[pn::packets]:
            frames += [
                quic.PING_FRAME,
                bytes(rng.randrange(1, 4)),
                quic.crypto_frame(a, hello[a:b]),
            ]
        out.append(quic.build_initial(quic.QUIC_V1, dcid, scid, frames, packet_number=pn))
    return out


def generate(
    path: Path, datagrams: int, connections: int, seed: int = 2
) -> tuple[Counter[str], int]:
    """Write the QUIC capture (at least ``datagrams`` long); return (server names, count)."""
    rng = random.Random(seed)
    aioquic = make_udp.load_hs("aioquic")
    chrome = make_udp.chrome_pq(make_udp.load_hs("chrome"))
    curl = make_udp.load_hs("curl")
    pool = rng.randbytes(1 << 16)  # bulk payloads are slices of this

    def blob(n: int) -> bytes:
        at = rng.randrange(len(pool) - n)
        return pool[at : at + n]

    names: Counter[str] = Counter()
    per_conn = max(6, (datagrams - 5 * connections) // max(connections, 1))
    with open(path, "wb") as f:
        w = UdpWriter(f)
        active: list[_Conn] = []
        started = 0
        tick = 0
        while w.count < datagrams or started < connections:
            while len(active) < 200 and started < connections:
                started += 1
                i = started
                cli = bytes([10, 5, i >> 8 & 0xFF, i & 0xFF])
                srv = bytes([192, 0, 2, 1 + i % 250])
                # tshark 4.0 gives no UDP port from 60002 up to another dissector (some
                # lower ones, e.g. 23272 or 24576, would take the datagram from QUIC).
                cport = 60002 + i % 5500
                version = quic.QUIC_V1
                server_cid = rng.randbytes(8)
                if i % 3 == 0:  # aioquic-like
                    name = f"q{i:05d}.io".encode()
                    hello = _named(aioquic, b"quic.test", name)
                    dcid, scid = rng.randbytes(8), rng.randbytes(8)
                    version = quic.QUIC_V2 if i % 10 == 0 else quic.QUIC_V1
                    firsts = [
                        quic.build_initial(version, dcid, scid, [quic.crypto_frame(0, hello)])
                    ]
                elif i % 3 == 1:  # Chrome-like
                    name = f"www.c{i:06d}.com".encode()
                    hello = _named(chrome, b"www.blogger.com", name)
                    dcid, scid = rng.randbytes(8), b""
                    firsts = _shuffled_initials(rng, hello, 3 if i % 9 == 1 else 2, dcid, scid)
                else:  # curl-like
                    name = f"u{i:07d}.test".encode()
                    hello = _named(curl, b"www.google.de", name)
                    dcid, scid = rng.randbytes(18), rng.randbytes(18)
                    zero_rtt = b""
                    if i % 4 == 2:
                        zero_rtt = make_udp.long_packet(
                            version, quic.PacketType.ZERO_RTT, dcid, scid, 200, rng
                        )
                    initial = quic.build_initial(
                        version, dcid, scid, [quic.crypto_frame(0, hello)],
                        pad_to=1200 - len(zero_rtt),
                    )  # fmt: skip
                    firsts = [initial + zero_rtt]
                names[name.decode()] += 1
                for datagram in firsts:
                    w.udp(cli, srv, cport, 443, datagram)
                server_initial = quic.build_initial(
                    version, scid, server_cid,
                    [quic.ack_frame(len(firsts) - 1), quic.crypto_frame(0, make_udp.SERVER_HELLO)],
                    original_destination_cid=dcid, is_client=False, pad_to=0,
                )  # fmt: skip
                hs = make_udp.long_packet(
                    version, quic.PacketType.HANDSHAKE, scid, server_cid, 1000, rng
                )
                w.udp(srv, cli, 443, cport, server_initial + hs)
                w.udp(cli, srv, cport, 443, make_udp.long_packet(
                    version, quic.PacketType.HANDSHAKE, server_cid, scid, 80, rng
                ))  # fmt: skip
                active.append(_Conn(cli, srv, cport, scid, server_cid, per_conn))
            if not active:  # every connection finished: top up on a long-lived one
                cid = b"\x77" * 8
                while w.count < datagrams:
                    w.udp(b"\xc0\x00\x02\x01", b"\x0a\x06\x00\x01", 443, 60000,
                          bytes([0x40 | rng.randrange(32)]) + cid + blob(1200))  # fmt: skip
                break
            k = rng.randrange(len(active))
            c = active[k]
            for _ in range(2):
                w.udp(c.srv, c.cli, 443, c.cport,
                      bytes([0x40 | rng.randrange(32)]) + c.client_cid + blob(1200))  # fmt: skip
            w.udp(c.cli, c.srv, c.cport, 443,
                  bytes([0x40 | rng.randrange(32)]) + c.server_cid + blob(40))  # fmt: skip
            c.left -= 3
            if c.left <= 0:
                del active[k]
            tick += 1
            if tick % 50 == 0:  # a DNS query
                q = (
                    struct.pack("!HHHHHH", tick & 0xFFFF, 0x0100, 1, 0, 0, 0)
                    + b"\x07example\x03com\x00\x00\x01\x00\x01"
                )
                w.udp(b"\x0a\x05\xff\x63", b"\x0a\x00\x00\x35", 40000 + tick % 1000, 53, q)
        return names, w.count


# -- Initials decoded per second -----------------------------------------------------------
def first_initials(count: int, seed: int = 3) -> list[bytes]:
    """``count`` client first-Initial datagrams, each with its own DCID (no key cache hits)."""
    rng = random.Random(seed)
    hellos = [make_udp.load_hs(n) for n in ("aioquic", "curl", "chrome")]
    return [
        quic.build_initial(
            quic.QUIC_V1, rng.randbytes(8), rng.randbytes(8), [quic.crypto_frame(0, hellos[i % 3])]
        )
        for i in range(count)
    ]


def _ours(datagrams: list[bytes]) -> int:
    found = 0
    for d in datagrams:
        if quic.InitialReader().feed(d) is not None:
            found += 1
    return found


def _aioquic(datagrams: list[bytes], hello: bool) -> int:
    from aioquic.buffer import Buffer
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import pull_quic_header
    from aioquic.tls import pull_client_hello

    found = 0
    for d in datagrams:
        buf = Buffer(data=d)
        header = pull_quic_header(buf, host_cid_length=8)
        pair = CryptoPair()
        pair.setup_initial(header.destination_cid, is_client=False, version=header.version)
        end = buf.tell() + header.packet_length  # Length covers the pn, payload and tag
        _plain, payload, _pn = pair.decrypt_packet(d[:end], buf.tell(), 0)
        if not hello:
            found += 1
            continue
        frames = Buffer(data=payload)  # our Initials start with the CRYPTO frame
        frames.pull_uint_var()  # type
        frames.pull_uint_var()  # offset
        data = frames.pull_bytes(frames.pull_uint_var())
        pull_client_hello(Buffer(data=data))
        found += 1
    return found


def decode_rates(count: int = 3000, rounds: int = 3) -> list[tuple[str, float]]:
    """(label, datagrams per second) of each decoder, best of ``rounds`` passes.

    Every datagram has its own DCID and a pass is longer than `initial_protection`'s
    1024-entry cache, so every decode derives its keys, as aioquic's does.
    """
    datagrams = first_initials(count)
    runs: list[tuple[str, Callable[[list[bytes]], int]]] = [
        ("clienthello.quic.InitialReader().feed (header, HP, AES-GCM, frames, hello)", _ours),
        ("aioquic pull_quic_header + setup_initial + decrypt_packet",
         lambda d: _aioquic(d, hello=False)),
        ("aioquic, the same + tls.pull_client_hello", lambda d: _aioquic(d, hello=True)),
    ]  # fmt: skip
    out = []
    for label, fn in runs:
        best = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            if fn(datagrams) != count:
                raise SystemExit(f"{label}: did not decode every datagram")
            best = min(best, time.perf_counter() - t0)
        out.append((label, count / best))
    return out


# -- the section of benchmarks/pcap.py -----------------------------------------------------
def _cpu(stderr: str) -> float:
    """User + system seconds from the ``CPU=<user> <sys>`` line `timed` leaves in stderr."""
    user, system = stderr.strip().splitlines()[-1].removeprefix("CPU=").split()
    return float(user) + float(system)


def run(
    tmp: Path,
    ours_cmd: list[str],
    tshark: str,
    timed_rounds: Callable[
        [dict[str, tuple[list[str], Path]], int], dict[str, list[tuple[float, int, str]]]
    ],
    datagrams: int,
    connections: int,
    jobs: int = 2,
    rounds: int = 3,
) -> tuple[str, bool]:
    """Generate, time both tools, decode Initials; (the Markdown section, SNIs equal)."""
    cap = tmp / "quic.pcap"
    t0 = time.perf_counter()
    names, n = generate(cap, datagrams, connections)
    gen_s = time.perf_counter() - t0
    size = cap.stat().st_size
    print(f"generated {n} QUIC-capture datagrams, {sum(names.values())} hellos, "
          f"{size >> 20} MiB in {gen_s:.1f} s", file=sys.stderr)  # fmt: skip

    # The capture's 251 MiB were just written: let the kernel write them back now, not
    # while the first tool is timed (writeback takes CPU from it on a small machine).
    os.sync()
    pcap = ["pcap"] if len(ours_cmd) == 1 else []
    fields = [a for f in TSHARK_FIELDS for a in ("-e", f)]
    commands = {
        "ours": ([*ours_cmd, *pcap, "--format", "jsonl", str(cap)], tmp / "q.jsonl"),
        # The same with --jobs: worker processes over parts of the one file.
        "jobs": (
            [*ours_cmd, *pcap, "--format", "jsonl", "--jobs", str(jobs), str(cap)],
            tmp / "qj.jsonl",
        ),
        "tshark": (
            [tshark, "-n", "-r", str(cap), "-Y", "tls.handshake.type==1", "-T", "fields", *fields],
            tmp / "q.tsv",
        ),
    }
    runs = timed_rounds(commands, rounds)  # each tool's runs, fastest first
    ours_s, ours_rss, ours_err = runs["ours"][0]
    par_s, par_rss, par_err = runs["jobs"][0]
    ts_s, ts_rss, ts_err = runs["tshark"][0]
    recs: list[dict[str, Any]] = [
        json.loads(line) for line in (tmp / "q.jsonl").read_text().splitlines()
    ]
    ours = Counter(r["sni"] for r in recs if r.get("transport") == "quic")
    par_recs = (tmp / "qj.jsonl").read_text().splitlines()
    par_equal = sorted(par_recs) == sorted((tmp / "q.jsonl").read_text().splitlines())
    errors = sum(1 for r in recs if r.get("error"))
    theirs = Counter(
        line.split("\t")[SNI_COLUMN] for line in (tmp / "q.tsv").read_text().splitlines() if line
    )
    rates = decode_rates()
    equal = ours == theirs and par_equal
    lines = [
        f"Capture: {n:,} UDP datagrams, {size / 2**20:.0f} MiB, {sum(names.values()):,} QUIC "
        f"connections (a third each aioquic-, Chrome- and curl-like; the Chrome hellos "
        f"over 2-3 Initials with shuffled CRYPTO frames), 1-RTT bulk, DNS noise, generated by "
        f"`benchmarks/quic_capture.py`.",
        "",
        f"Each tool run {rounds} times in turn; its fastest run is shown, with the range "
        "of its runs' times.",
        "",
        "| tool | time (s) | all runs (s) | datagrams/s | vs tshark | CPU (s) "
        "| vs tshark (CPU) | peak RSS (MiB) | QUIC hellos found |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ts_cpu = _cpu(ts_err)
    for name, label, secs, cpu, rss, found in (
        ("ours", "sniinspect pcap --format jsonl", ours_s, _cpu(ours_err), ours_rss,
         sum(ours.values())),
        ("jobs", f"sniinspect pcap --format jsonl --jobs {jobs}", par_s, _cpu(par_err), par_rss,
         len(par_recs)),
        ("tshark", "tshark -Y tls.handshake.type==1 -T fields", ts_s, ts_cpu, ts_rss,
         sum(theirs.values())),
    ):  # fmt: skip
        times = f"{runs[name][0][0]:.2f}-{runs[name][-1][0]:.2f}"
        lines.append(
            f"| {label} | {secs:.2f} | {times} | {n / secs:,.0f} "
            f"| {ts_s / secs:.1f}x | {cpu:.2f} | {ts_cpu / cpu:.1f}x | {rss} | {found:,} |"
        )
    lines += [
        "",
        f"SNI multiset equal to tshark's: {'yes' if equal else 'NO'} "
        f"({sum((ours & theirs).values()):,} common, {sum((ours - theirs).values())} only ours, "
        f"{sum((theirs - ours).values())} only tshark's); all generated names found: "
        f"{'yes' if ours == names else 'NO'}; records with an error: {errors}; "
        f"`--jobs {jobs}` gave the same records: {'yes' if par_equal else 'NO'}. "
        "tshark has no way to use a second core; the CPU columns compare the work done, "
        "and for `--jobs` the peak RSS is the largest single process's.",
        "",
        "| Initial datagrams decoded (one process, best of 3 passes over 3,000) | per second |",
        "|---|---:|",
        *(f"| {label} | {rate:,.0f} |" for label, rate in rates),
        "",
        f"Load average {os.getloadavg()[0]:.1f} at the end.",
    ]
    return "\n".join(lines) + "\n", equal
