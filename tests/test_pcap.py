"""Tests for sniinspect.capture: reassembly, hello detection, link layers and file reading.

Hellos are real bytes from captures/hellos; frames are crafted with scapy or struct.
"""

from __future__ import annotations

import gzip
import io
import itertools
import random
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clienthello
from sniinspect.capture import (
    RECORD_KEYS,
    Capture,
    CaptureError,
    FlowTable,
    HelloRecord,
    Limits,
    Problem,
    iter_records,
)

HELLOS = Path(__file__).resolve().parents[1] / "captures" / "hellos"
CLI, SRV = bytes([192, 0, 2, 10]), bytes([198, 51, 100, 20])
KEY = CLI + SRV + struct.pack("!HH", 50000, 443)
SYN, FIN, RST, ACK, PSH = 0x02, 0x01, 0x04, 0x10, 0x08


def hello(name: str = "python") -> bytes:
    return (HELLOS / f"{name}.bin").read_bytes()


def feed(
    segments: list[tuple[int, bytes]],
    *,
    syn: int | None = 1000,
    key: bytes = KEY,
    limits: Limits | None = None,
    table: FlowTable | None = None,
) -> list[HelloRecord]:
    """Feed (seq, payload) segments of one direction (after an optional SYN) and finish."""
    t = table or FlowTable("test", limits)
    frame = 0
    if syn is not None:
        frame += 1
        t.segment(key, False, syn, SYN, b"", 10**9, frame)
    for seq, data in segments:
        frame += 1
        t.segment(key, False, seq & 0xFFFFFFFF, ACK | PSH, data, 10**9 + frame, frame)
    t.finish()
    return t.out


def split(data: bytes, sizes: list[int], base: int = 1001) -> list[tuple[int, bytes]]:
    out, off = [], 0
    for n in sizes:
        out.append((base + off, data[off : off + n]))
        off += n
    if off < len(data):
        out.append((base + off, data[off:]))
    return out


def expect_python(records: list[HelloRecord], count: int = 1) -> None:
    assert [r.error for r in records] == [None] * count, records
    assert all(r.sni == "python.test" for r in records)


# -- reassembly -----------------------------------------------------------------------------
def test_one_segment_record_fields() -> None:
    (rec,) = feed([(1001, hello())])
    h = clienthello.parse(hello())
    assert (rec.src, rec.sport, rec.dst, rec.dport, rec.transport) == (
        "192.0.2.10",
        50000,
        "198.51.100.20",
        443,
        "tcp",
    )
    assert rec.sni == "python.test" and rec.alpn == ["h2", "http/1.1"]
    assert rec.ciphers == list(h.cipher_suites)
    assert rec.extensions == [e.type for e in h.extensions]
    assert rec.ja3 == clienthello.ja3(h) and rec.ja4 == clienthello.ja4(h)
    assert rec.frame == 2 and rec.ts == "1.000000002"
    assert list(rec.to_dict())[: len(RECORD_KEYS)] == list(RECORD_KEYS)


def test_record_replace_is_dataclasses_replace() -> None:
    """HelloRecord.replace (the parallel run's copy) gives what dataclasses.replace gives."""
    import dataclasses

    (rec,) = feed([(1001, hello())])
    for changes in ({}, {"frame": 7}, {"frame": 9, "file": "b.pcap", "hello": None},
                    {"error": "x (packet 3 of 4)"}):  # fmt: skip
        got, want = rec.replace(**changes), dataclasses.replace(rec, **changes)
        assert got == want and repr(got) == repr(want) and got.hello is want.hello
        assert got.to_dict() == want.to_dict()
    assert rec.frame == 2  # the original is left alone
    with pytest.raises(TypeError, match="no field sni_name"):
        rec.replace(sni_name="x")


def test_one_byte_segments() -> None:
    data = hello("openssl")
    records = feed(split(data, [1] * len(data)))
    assert [r.sni for r in records] == ["openssl.test"]
    assert records[0].frame == len(data) + 1  # completed by the last byte's segment


@pytest.mark.parametrize("seed", range(6))
def test_out_of_order_retransmit_overlap(seed: int) -> None:
    data = hello("chromium")
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), 7))
    segs = split(data, [b - a for a, b in itertools.pairwise([0, *cuts])])
    rng.shuffle(segs)
    segs.insert(3, segs[1])  # a retransmission
    segs.append((1001 + 100, data[100:900]))  # an overlap across several segments
    records = feed(segs)
    assert [(r.sni, r.error) for r in records] == [("chromium.test", None)]


def test_overlap_with_different_bytes_keeps_first() -> None:
    data = hello()
    bad = bytearray(data[200:400])
    bad[0:50] = b"\xff" * 50  # a "retransmission" that disagrees with what came first
    records = feed([(1001, data[:300]), (1201, bytes(bad)), (1301, data[300:])])
    expect_python(records)


def test_overlapping_segment_fills_gap_and_drains_pending() -> None:
    data = hello()
    t = FlowTable("t")
    t.segment(KEY, False, 1, ACK | PSH, data[:100], 1, 1)
    t.segment(KEY, False, 201, ACK | PSH, data[200:], 1, 2)  # ahead: held
    t.segment(KEY, False, 51, ACK | PSH, data[50:250], 1, 3)  # overlaps both, fills the gap
    expect_python(t.out)  # completed by packet 3, without waiting for another segment
    assert t.out[0].frame == 3


def test_sequence_wraparound() -> None:
    data = hello()
    isn = 0xFFFFFF00
    records = feed(split(data, [100, 100, 100], base=isn + 1), syn=isn)
    expect_python(records)


def test_missing_syn_starts_at_first_seq() -> None:
    records = feed(split(hello(), [200, 200]), syn=None)
    expect_python(records)


def test_missing_syn_lower_seq_later() -> None:
    # The capture starts after the first segment of the hello was sent; it shows up later
    # (out of order): the stream is rebuilt from the lower sequence number.
    segs = split(hello(), [100, 150])
    records = feed([segs[1], segs[2], segs[0]], syn=None)
    expect_python(records)


def test_hello_retry_request_second_hello() -> None:
    h1, h2 = hello("hrr-client1"), hello("hrr-client2")
    assert h2[0] == 20  # ChangeCipherSpec first (RFC 8446 D.4)
    records = feed(split(h1 + h2, [len(h1), 3, 300]))
    assert len(records) == 2 and all(r.error is None for r in records)
    assert records[0].sni == records[1].sni == "hrr.test"
    assert records[0].hello != records[1].hello  # key share differs


@pytest.mark.parametrize(
    "prefix",
    [
        b"EHLO client.example\r\nSTARTTLS\r\n",
        b"CONNECT python.test:443 HTTP/1.1\r\nHost: python.test:443\r\n\r\n",
        b"\x05\x01\x00\x05\x01\x00\x03\x0bpython.test\x01\xbb",  # SOCKS5 greeting + CONNECT
    ],
    ids=["starttls", "http-connect", "socks5"],
)
def test_hello_after_other_protocol(prefix: bytes) -> None:
    data = prefix + hello()
    expect_python(feed(split(data, [len(prefix) // 2, 20, 7])))


def test_not_tls_gives_up_after_bounded_scan() -> None:
    rng = random.Random(1)
    noise = bytes(rng.randrange(32, 127) for _ in range(40_000))
    t = FlowTable("t", Limits(max_scan=4096))
    out = feed(split(noise + hello(), [1000] * 45), table=t)
    assert out == []  # the hello is past the scan limit: not looked for
    assert KEY in t.done or KEY not in t.flows


def test_tls_application_data_stops_immediately() -> None:
    t = FlowTable("t")
    t.segment(KEY, False, 5000, ACK | PSH, b"\x17\x03\x03\x00\x10" + bytes(16), 1, 1)
    assert KEY in t.done and KEY not in t.flows


def test_server_direction_is_not_a_client_hello() -> None:
    server_hello = bytes.fromhex("160303002a020000260303") + bytes(32) + b"\x00\x13\x01\x00"
    assert feed([(1001, server_hello)]) == []


def test_sslv2_hello() -> None:
    data = (
        bytes.fromhex("80" + "22" + "01" + "0301" + "0009" + "0000" + "0010")
        + bytes([0x00, 0x00, 0x2F, 0x00, 0x00, 0x35, 0x01, 0x00, 0x80])
        + bytes(range(16))
    )
    (rec,) = feed([(1001, data)])
    assert rec.error is None and rec.sslv2 and rec.ja3 is None and rec.sni is None


def test_malformed_hello_reported_with_reason() -> None:
    data = bytearray(hello())
    data[43] ^= 0x01  # session id length byte 0x20 -> 0x21: fields no longer line up
    (rec,) = feed([(1001, bytes(data))])
    assert rec.error and rec.sni is None and rec.ciphers == []


def test_incomplete_hello_reported_at_end() -> None:
    (rec,) = feed([(1001, hello()[:300])])
    assert rec.error is not None and rec.error.startswith("capture ended before the hello")


def test_rst_reports_incomplete_hello_and_evicts() -> None:
    t = FlowTable("t")
    t.segment(KEY, False, 1, ACK | PSH, hello()[:100], 1, 1)
    t.segment(KEY, False, 101, RST, b"", 2, 2)
    assert KEY not in t.flows and KEY not in t.done
    assert t.out and t.out[0].error and t.out[0].error.startswith("connection closed")


def test_fin_evicts_done_flow() -> None:
    t = FlowTable("t")
    data = hello() + b"\x17\x03\x03\x00\x01\x00"  # the hello, then application data
    t.segment(KEY, False, 1, ACK | PSH, data, 1, 1)
    assert KEY in t.done and KEY not in t.flows
    t.segment(KEY, False, 1 + len(data), FIN | ACK, b"", 2, 2)
    assert KEY not in t.done and KEY not in t.flows


def test_port_reuse_new_syn_restarts() -> None:
    t = FlowTable("t")
    feed([(1001, hello())], table=t)
    feed([(90001, hello("openssl"))], syn=90000, table=t)
    assert [r.sni for r in t.out] == ["python.test", "openssl.test"]


def test_idle_flows_expire() -> None:
    t = FlowTable("t", Limits(idle_timeout=10))
    t.segment(KEY, False, 1, ACK | PSH, hello()[:100], 0, 1)
    other = CLI + SRV + struct.pack("!HH", 50001, 443)
    for i in range(70_000):  # sweeps run every 65536 segments
        t.segment(other, False, 1 + i, ACK, b"", 20 * 10**9, i + 2)
    assert KEY not in t.flows
    assert t.out[0].error and "idle" in t.out[0].error


def test_bounded_memory_many_flows() -> None:
    limits = Limits(max_flows=1000, max_held=1 << 20)
    t = FlowTable("t", limits)
    part = hello("chromium")[:1500]
    for i in range(5000):
        key = CLI + SRV + struct.pack("!HH", 10000 + i, 443)
        t.segment(key, False, 1, ACK | PSH, part, i, i + 1)
        assert len(t.flows) <= 1000 and t.held <= (1 << 20) + len(part) * 2
    assert len(t.out) >= 4000  # evicted flows are reported as incomplete hellos


def test_done_table_bounded() -> None:
    t = FlowTable("t", Limits(max_done=1000))
    for i in range(5000):
        key = CLI + SRV + struct.pack("!HH", 10000 + i, 443)
        t.segment(key, False, 1, ACK | PSH, b"\x17\x03\x03\x00\x01\x00", i, i + 1)
    assert len(t.done) <= 1000


def test_per_flow_byte_cap() -> None:
    t = FlowTable("t", Limits(max_flow_bytes=1000))
    records = feed(split(hello("chromium"), [500] * 4), table=t)
    assert len(records) == 1 and records[0].error and "cap" in records[0].error


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_split_and_order_finds_the_hello(data: st.DataObject) -> None:
    raw = hello("chromium")
    cuts = data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=12, unique=True))
    segs = split(raw, [b - a for a, b in itertools.pairwise([0, *sorted(cuts)])])
    order = data.draw(st.permutations(range(len(segs))))
    dup = data.draw(st.lists(st.integers(0, len(segs) - 1), max_size=3))
    seq = [segs[i] for i in order] + [segs[i] for i in dup]
    syn = data.draw(st.sampled_from([1000, None]))  # None: the capture missed the SYN
    records = feed(seq, syn=syn)
    assert [(r.sni, r.error) for r in records] == [("chromium.test", None)]


# -- link layers and IP ---------------------------------------------------------------------
def _l3(v6: bool = False, ext: bool = False, sport: int = 50000) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
    from scapy.packet import Raw

    tcp = TCP(sport=sport, dport=443, seq=1, flags="PA") / Raw(hello())
    if not v6:
        return bytes(IP(src="192.0.2.10", dst="198.51.100.20") / tcp)
    ip = IPv6(src="2001:db8::10", dst="2001:db8::20")
    if ext:
        return bytes(ip / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / tcp)
    return bytes(ip / tcp)


def _frames() -> list[tuple[str, int, bytes, str]]:
    from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether

    v4, v6 = _l3(), _l3(v6=True)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    return [
        ("ethernet", 1, bytes(eth)[:12] + b"\x08\x00" + v4, "192.0.2.10"),
        ("ethernet-v6-ext", 1, bytes(eth)[:12] + b"\x86\xdd" + _l3(True, True), "2001:db8::10"),
        ("vlan", 1, bytes(eth / Dot1Q(vlan=5, type=0x0800)) + v4, "192.0.2.10"),
        ("qinq", 1, bytes(eth / Dot1AD(vlan=7) / Dot1Q(vlan=5, type=0x86DD)) + v6, "2001:db8::10"),
        ("sll", 113, bytes(CookedLinux(proto=0x0800)) + v4, "192.0.2.10"),
        ("sll2", 276, bytes(CookedLinuxV2(proto=0x86DD)) + v6, "2001:db8::10"),
        ("null-le", 0, struct.pack("<I", 2) + v4, "192.0.2.10"),
        ("null-be-v6", 0, struct.pack(">I", 30) + v6, "2001:db8::10"),
        ("loop", 108, struct.pack(">I", 2) + v4, "192.0.2.10"),
        ("raw101", 101, v6, "2001:db8::10"),
        ("raw12", 12, v4, "192.0.2.10"),
        ("raw14", 14, v4, "192.0.2.10"),
        ("ipv4", 228, v4, "192.0.2.10"),
        ("ipv6", 229, v6, "2001:db8::10"),
        ("ppp", 9, b"\xff\x03\x00\x21" + v4, "192.0.2.10"),
        ("ppp-v6", 9, b"\x00\x57" + v6, "2001:db8::10"),
    ]


@pytest.mark.parametrize("case", _frames(), ids=lambda c: c[0])
def test_link_types(case: tuple[str, int, bytes, str]) -> None:
    _name, linktype, frame, src = case
    t = FlowTable("t")
    t.packet(linktype, frame, 5 * 10**9, 1)
    t.finish()
    assert [(r.sni, r.src, r.sport) for r in t.out] == [("python.test", src, 50000)]


def test_ip_fragments_and_non_tcp_ignored() -> None:
    from scapy.layers.inet import IP, UDP

    t = FlowTable("t")
    frag = bytearray(_l3())
    frag[6] |= 0x20  # more fragments
    t.packet(228, bytes(frag), 1, 1)
    t.packet(228, bytes(IP() / UDP() / hello()), 1, 2)
    t.packet(228, b"\x45\x00", 1, 3)  # far too short
    t.packet(229, b"", 1, 4)
    t.finish()
    assert t.out == []


def test_ipv4_total_length_zero_tso() -> None:
    frame = bytearray(_l3())
    frame[2:4] = b"\x00\x00"  # as captured on a host doing TCP segmentation offload
    t = FlowTable("t")
    t.packet(228, bytes(frame), 1, 1)
    assert [r.sni for r in t.out] == ["python.test"]


def test_unsupported_link_type_reported_once() -> None:
    t = FlowTable("t")
    t.packet(147, b"x" * 100, 1, 1)
    t.packet(147, b"x" * 100, 1, 2)
    assert len(t.problems) == 1 and "147" in t.problems[0].message


# -- file formats ---------------------------------------------------------------------------
def _pcap(
    frames: list[bytes],
    *,
    order: str = "<",
    nsec: bool = False,
    linktype: int = 228,
    ts: int = 1_700_000_000_123_456_789,
) -> bytes:
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for f in frames:
        sec, ns = divmod(ts, 10**9)
        out += struct.pack(order + "IIII", sec, ns if nsec else ns // 1000, len(f), len(f)) + f
    return out


@pytest.mark.parametrize(
    ("order", "nsec", "ts"),
    [
        ("<", False, "1700000000.123456000"),
        (">", False, "1700000000.123456000"),
        ("<", True, "1700000000.123456789"),
        (">", True, "1700000000.123456789"),
    ],
)
def test_pcap_byte_orders_and_resolutions(order: str, nsec: bool, ts: str) -> None:
    data = _pcap([_l3()], order=order, nsec=nsec)
    (rec,) = list(Capture(io.BytesIO(data)))
    assert rec.sni == "python.test" and rec.ts == ts


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"
    path.write_bytes(gzip.compress(_pcap([_l3()])))
    assert [r.sni for r in iter_records(path)] == ["python.test"]


def test_non_seekable_stream() -> None:
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            n = min(len(b), 7, len(self.data))  # tiny reads, as from a pipe
            b[:n] = self.data[:n]
            self.data = self.data[n:]
            return n

    stream = io.BufferedReader(Pipe(_pcap([_l3(), _l3(v6=True)], linktype=101)), buffer_size=64)
    assert [r.sni for r in Capture(stream)] == ["python.test", "python.test"]


def test_truncated_file_reports_and_keeps_earlier_packets() -> None:
    other = bytearray(_l3())
    other[21] = 0x51  # another source port
    data = _pcap([_l3(), bytes(other)])
    cap = Capture(io.BytesIO(data[:-50]))
    assert [r.sni for r in cap] == ["python.test"]
    assert len(cap.problems) == 1 and cap.problems[0].fatal and cap.problems[0].frame == 2


def test_snaplen_truncation_is_a_warning_and_an_error_record() -> None:
    cut = _l3()[:200]
    cap = Capture(io.BytesIO(_pcap([cut])))
    (rec,) = list(cap)
    assert rec.error and "snaplen" in rec.error
    assert cap.problems and not any(p.fatal for p in cap.problems)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"hello world, not a capture",
        gzip.compress(b"garbage inside gzip"),
        b"\x1f\x8b\x08\x00 not really gzip",
        b"\xd4\xc3\xb2\xa1\x02\x00",
    ],
    ids=["empty", "one-byte", "text", "gzip-garbage", "bad-gzip", "short-header"],
)
def test_garbage_raises_capture_error(data: bytes) -> None:
    with pytest.raises(CaptureError):
        list(Capture(io.BytesIO(data)))


def test_gzip_cut_short_keeps_what_was_read(tmp_path: Path) -> None:
    other = bytearray(_l3())
    other[21] = 0x51  # another source port
    data = gzip.compress(_pcap([_l3()] + [bytes(other)] * 200))
    cap = Capture(io.BytesIO(data[: len(data) // 2]))
    assert [r.sport for r in cap] == [50000, 50001]  # the rest are copies of a done flow
    assert cap.problems and cap.problems[0].fatal and "gzip" in cap.problems[0].message


def test_bad_pcapng_section_after_packets_keeps_them() -> None:
    good = _pcap([_l3()], linktype=101)
    assert list(Capture(io.BytesIO(good)))
    shb = (
        struct.pack("<II", 0x0A0D0D0A, 28) + b"\x11\x22\x33\x44" + bytes(12) + struct.pack("<I", 28)
    )  # a Section Header Block with a bad byte-order magic
    blocks = _pcapng_one(_l3()) + shb
    cap = Capture(io.BytesIO(blocks))
    assert [r.sni for r in cap] == ["python.test"]
    assert cap.problems and cap.problems[0].fatal and "byte-order" in cap.problems[0].message


def _pcapng_one(l3: bytes) -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    return (
        block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        + block(1, struct.pack("<HHI", 101, 0, 0))
        + block(6, struct.pack("<IIIII", 0, 0, 1, len(l3), len(l3)) + l3)
    )


def test_corrupt_record_length_is_truncation() -> None:
    data = bytearray(_pcap([_l3(), _l3()]))
    struct.pack_into("<I", data, 24 + 8, 0x7FFFFFFF)  # first record's caplen
    cap = Capture(io.BytesIO(bytes(data)))
    assert list(cap) == []
    assert cap.problems and cap.problems[0].fatal


def test_pcapng_multi_interface_and_sections() -> None:
    def block(btype: int, body: bytes, o: str) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        return (
            struct.pack(o + "II", btype, len(body) + 12)
            + body
            + struct.pack(o + "I", len(body) + 12)
        )

    out = b""
    for sport, o in ((50000, "<"), (50001, ">")):  # two sections, one per byte order
        out += block(0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, -1), o)
        out += block(1, struct.pack(o + "HHI", 1, 0, 0), o)  # Ethernet, default usec
        tsresol = struct.pack(o + "HH", 9, 1) + b"\x09\x00\x00\x00" + struct.pack(o + "HH", 0, 0)
        out += block(1, struct.pack(o + "HHI", 229, 0, 0) + tsresol, o)  # raw IPv6, ns
        eth = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + _l3(sport=sport)
        ts = 1_700_000_000_000_001
        out += block(
            6, struct.pack(o + "IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(eth), len(eth)) + eth, o
        )
        v6 = _l3(v6=True, sport=sport)
        ts = 1_700_000_000_000_000_007
        out += block(
            6, struct.pack(o + "IIIII", 1, ts >> 32, ts & 0xFFFFFFFF, len(v6), len(v6)) + v6, o
        )
    recs = list(Capture(io.BytesIO(out)))
    assert [(r.src, r.ts) for r in recs] == [
        ("192.0.2.10", "1700000000.000001000"),
        ("2001:db8::10", "1700000000.000000007"),
    ] * 2


def test_iter_records_problems_list_and_raise(tmp_path: Path) -> None:
    good = tmp_path / "good.pcap"
    good.write_bytes(_pcap([_l3()]))
    problems: list[Problem] = []
    recs = list(iter_records([tmp_path / "missing.pcap", good], problems=problems))
    assert [r.sni for r in recs] == ["python.test"] and len(problems) == 1
    with pytest.raises(CaptureError):
        list(iter_records(tmp_path / "missing.pcap"))


def test_old_flat_name_still_imports(tmp_path: Path) -> None:
    """`sniinspect.pcap` (before the engine became `sniinspect.capture`) re-exports it."""
    from sniinspect.pcap import Capture as OldCapture
    from sniinspect.pcap import HelloRecord as OldHelloRecord
    from sniinspect.pcap import iter_records as old_iter_records

    assert OldCapture is Capture and OldHelloRecord is HelloRecord
    good = tmp_path / "good.pcap"
    good.write_bytes(_pcap([_l3()]))
    assert [r.sni for r in old_iter_records(good)] == ["python.test"]


def test_benchmark_generator_small(tmp_path: Path) -> None:
    """benchmarks/pcap.py's capture (small): every generated name found, bulk skipped."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_pcap", Path(__file__).resolve().parents[1] / "benchmarks" / "pcap.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up there
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules[spec.name]
    path = tmp_path / "bench.pcap"
    names, count = bench.generate(path, 20_000, 60)
    cap = Capture(path)
    found = {r.sni for r in cap}
    assert found == names and len(names) == 60
    assert cap.packets == count >= 20_000 and not cap.problems
    assert len(cap.table.flows) == 0  # everything finished or flushed


_SAMPLES = [
    gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    for p in sorted((Path(__file__).resolve().parents[1] / "captures").glob("*.pcap*"))
    if not p.name.endswith(".jsonl")
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sample=st.sampled_from(_SAMPLES),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=20),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_mutated_captures_never_crash(
    sample: bytes, flips: list[tuple[int, int]], cut: int | None
) -> None:
    """Any bytes: records and problems, or one CaptureError; never another exception."""
    data = bytearray(sample)
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    try:
        for rec in Capture(io.BytesIO(bytes(data))):
            rec.to_dict()
    except CaptureError:
        pass
