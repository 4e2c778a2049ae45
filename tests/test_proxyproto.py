"""Tests for sniinspect.route.proxyproto: PROXY protocol v1/v2 building and strict parsing."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sniinspect.route.proxyproto import (
    V2_SIGNATURE,
    ProxyHeaderParser,
    ProxyInfo,
    ProxyProtocolError,
    build_v1,
    build_v2,
    crc32c,
)

SIG = V2_SIGNATURE
FF6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def parse_whole(data: bytes) -> tuple[ProxyInfo | None, bytes]:
    p = ProxyHeaderParser()
    info = p.feed(data)
    return info, p.remainder


def parse_bytewise(data: bytes) -> tuple[ProxyInfo | None, bytes]:
    p = ProxyHeaderParser()
    info = None
    for i in range(len(data)):
        info = p.feed(data[i : i + 1])
    return info, p.remainder


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return SIG + struct.pack("!BBH", ver_cmd, fam, n) + body


def tlv(t: int, value: bytes) -> bytes:
    return bytes(struct.pack("!BH", t, len(value))) + value


# --------------------------------------------------------------------- exact bytes


# The four v1 examples of proxy-protocol.txt §2.1, with the lengths the spec gives.
SPEC_V1 = [
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", 56),
    (f"PROXY TCP6 {FF6} {FF6} 65535 65535\r\n".encode(), 104),
    (b"PROXY UNKNOWN\r\n", 15),
    (f"PROXY UNKNOWN {FF6} {FF6} 65535 65535\r\n".encode(), 107),
]


@pytest.mark.parametrize(("header", "length"), SPEC_V1)
def test_spec_v1_examples_parse(header: bytes, length: int) -> None:
    assert len(header) == length
    for parse in (parse_whole, parse_bytewise):
        info, rest = parse(header + b"\x16\x03\x01")
        assert info is not None
        assert info.version == 1 and info.command == "PROXY" and rest == b"\x16\x03\x01"


def test_spec_v1_examples_build() -> None:
    assert build_v1(("255.255.255.255", 65535), ("255.255.255.255", 65535)) == SPEC_V1[0][0]
    assert build_v1((FF6, 65535), (FF6, 65535)) == SPEC_V1[1][0]
    assert build_v1(("192.0.2.1", 1), ("2001:db8::1", 2)) == b"PROXY UNKNOWN\r\n"


def test_v1_fields() -> None:
    info, _ = parse_whole(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    assert info == ProxyInfo(1, "PROXY", ("192.168.0.1", 56324), ("192.168.0.11", 443))
    info, _ = parse_whole(b"PROXY TCP6 2001:DB8::1 ::1 0 65535\r\n")
    assert info is not None
    assert info.src == ("2001:db8::1", 0) and info.dst == ("::1", 65535)  # canonical form
    info, _ = parse_whole(b"PROXY UNKNOWN\r\n")
    assert info is not None and info.src is None and info.dst is None
    assert dict(info.tlvs) == {} and info.tlvs.get(0x02) is None


# Written by HAProxy 2.x with "send-proxy-v2" (172.19.0.1:42578 -> 172.19.0.3:80), as shown in
# seriousben/experiment-proxy-protocol's README; and re-checked against our local haproxy below.
HAPROXY_V2 = bytes.fromhex("0d0a0d0a000d0a515549540a 2111000c ac130001 ac130003 a652 0050")


def test_v2_known_bytes() -> None:
    assert build_v2(("172.19.0.1", 42578), ("172.19.0.3", 80)) == HAPROXY_V2
    for parse in (parse_whole, parse_bytewise):
        info, rest = parse(HAPROXY_V2 + b"GET /")
        assert info == ProxyInfo(2, "PROXY", ("172.19.0.1", 42578), ("172.19.0.3", 80))
        assert rest == b"GET /"


def test_v2_local_and_tlvs_exact() -> None:
    assert build_v2(None, None) == SIG + b"\x20\x00\x00\x00"
    got = build_v2(("::1", 1), ("::2", 2), authority="example.com", alpn=b"h2")
    expected = (
        SIG
        + b"\x21\x21"
        + struct.pack("!H", 36 + 5 + 14)
        + bytes(15)
        + b"\x01"
        + bytes(15)
        + b"\x02"
        + b"\x00\x01\x00\x02"
        + b"\x01\x00\x02h2"
        + b"\x02\x00\x0bexample.com"
    )
    assert got == expected
    info, _ = parse_whole(got)
    assert info is not None
    assert info.tlvs.get(0x02) == b"example.com" and info.authority == "example.com"
    assert info.tlvs.get(0x01) == b"h2" and info.alpn == b"h2"
    assert build_v2(("192.0.2.1", 1), ("::1", 2)) == SIG + b"\x21\x00\x00\x00"


def test_proxyinfo_is_immutable_and_hashable() -> None:
    info, _ = parse_whole(build_v2(("10.0.0.1", 5), ("10.0.0.2", 6), authority="a"))
    assert info is not None
    with pytest.raises(AttributeError):
        info.src = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        info.tlvs[0x02] = b"b"  # type: ignore[index]
    assert hash(info) == hash(
        parse_whole(build_v2(("10.0.0.1", 5), ("10.0.0.2", 6), authority="a"))[0]
    )


# --------------------------------------------------------------------- round trips

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports, st.binary(max_size=8))
def test_v1_round_trip(addrs: tuple[str, str], sport: int, dport: int, tail: bytes) -> None:
    header = build_v1((addrs[0], sport), (addrs[1], dport))
    assert len(header) <= 107
    for parse in (parse_whole, parse_bytewise):
        info, rest = parse(header + tail)
        assert info == ProxyInfo(1, "PROXY", (addrs[0], sport), (addrs[1], dport))
        assert rest == tail


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    ports,
    ports,
    st.none() | st.text(max_size=40),
    st.none() | st.binary(max_size=20),
    st.binary(max_size=8),
)
def test_v2_round_trip(
    addrs: tuple[str, str],
    sport: int,
    dport: int,
    authority: str | None,
    alpn: bytes | None,
    tail: bytes,
) -> None:
    header = build_v2((addrs[0], sport), (addrs[1], dport), authority=authority, alpn=alpn)
    for parse in (parse_whole, parse_bytewise):
        info, rest = parse(header + tail)
        assert info is not None
        assert (info.version, info.command) == (2, "PROXY")
        assert info.src == (addrs[0], sport) and info.dst == (addrs[1], dport)
        assert info.tlvs.get(0x02) == (None if authority is None else authority.encode())
        assert info.tlvs.get(0x01) == alpn
        assert rest == tail


def test_v2_local_round_trip() -> None:
    info, rest = parse_bytewise(build_v2(None, None, authority="x") + b"z")
    assert info == ProxyInfo(2, "LOCAL", None, None, info.tlvs if info else {})
    assert info is not None and info.tlvs.get(0x02) == b"x" and rest == b"z"


def test_v2_local_skips_address_block() -> None:
    # §2.2: receivers must skip the address block of a LOCAL header, never assume it is absent.
    body = bytes(12) + tlv(0x02, b"hc")
    info, _ = parse_whole(v2(0x20, 0x11, body))
    assert info is not None and info.command == "LOCAL" and info.src is None
    assert info.tlvs.get(0x02) == b"hc"


def test_v2_unspec_and_unix_use_real_endpoints() -> None:
    info, _ = parse_whole(v2(0x21, 0x00, b""))
    assert info is not None and info.command == "PROXY" and info.src is None
    info, _ = parse_whole(v2(0x21, 0x31, b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")))
    assert info is not None and info.src is None and info.dst is None


def test_feed_after_completion_and_chunking() -> None:
    p = ProxyHeaderParser()
    header = build_v1(("10.1.1.1", 1000), ("10.2.2.2", 443))
    assert p.feed(header[:10]) is None
    info = p.feed(header[10:] + b"ab")
    assert info is not None and p.info is info and p.remainder == b"ab"
    assert p.feed(b"cd") is info and p.remainder == b"abcd"
    assert p.feed(b"") is info  # EOF after the header is the stream's business


def test_noop_padding_and_crc32c() -> None:
    addr = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 1, 2)
    body = addr + tlv(0x04, b"") + tlv(0x04, b"pad") + tlv(0x03, bytes(4)) + tlv(0x02, b"n")
    header = bytearray(v2(0x21, 0x11, body))
    crc_at = 16 + 12 + 3 + 6 + 3
    header[crc_at : crc_at + 4] = crc32c(bytes(header)).to_bytes(4, "big")
    info, _ = parse_whole(bytes(header))
    assert info is not None
    assert 0x04 not in info.tlvs and info.tlvs.get(0x02) == b"n" and 0x03 in info.tlvs
    header[-1] ^= 0x01  # one bit of the authority: checksum must now fail
    with pytest.raises(ProxyProtocolError, match="CRC32C mismatch"):
        parse_whole(bytes(header))


def test_crc32c_known_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 check value


# --------------------------------------------------------------------- strictness

ADDR4 = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 1, 2)

BAD = [
    # early signature rejection
    (b"\x16\x03\x01\x02\x00", "byte 0x16", 0),
    (b"GET / HTTP/1.1\r\n", "byte 0x47", 0),
    (b"PROXZ TCP4", "byte 0x5a", 4),
    (b"proxy TCP4", "byte 0x70", 0),
    (b"\r\n\r\n\x00\r\nQUIX\n", "byte 0x58", 10),
    (b"\r\n\r\n\x01", "byte 0x01", 4),
    # v1 syntax
    (b"PROXY TCP5 1.1.1.1 2.2.2.2 1 2\r\n", "unknown v1 protocol", 6),
    (b"PROXY tcp4 1.1.1.1 2.2.2.2 1 2\r\n", "unknown v1 protocol", 6),
    (b"PROXY UNKNOWNX\r\n", "unknown v1 protocol", 6),
    (b"PROXY \r\n", "unknown v1 protocol", 6),
    (b"PROXY TCP4 1.1.1.1 2.2.2.2 1\r\n", "6 space-separated fields", 0),
    (b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2 \r\n", "6 space-separated fields", 0),
    (b"PROXY TCP4  1.1.1.1 2.2.2.2 1 2\r\n", "6 space-separated fields", 0),
    (b"PROXY TCP4 1.1.1.1  2.2.2.2 1\r\n", "invalid IPv4 address ''", 19),
    (b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\n", "LF without CR", 30),
    (b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\rX", "CR not followed by LF", 30),
    (b"PROXY TCP4 1.1.1.01 2.2.2.2 1 2\r\n", "invalid IPv4 address", 11),
    (b"PROXY TCP4 1.1.1.256 2.2.2.2 1 2\r\n", "invalid IPv4 address", 11),
    (b"PROXY TCP4 ::1 2.2.2.2 1 2\r\n", "invalid IPv4 address", 11),
    (b"PROXY TCP6 1.1.1.1 ::1 1 2\r\n", "invalid IPv6 address", 11),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "invalid IPv6 address", 11),
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "invalid IPv6 address", 11),
    (b"PROXY TCP4 1.1.1.1 2.2.2.2 65536 2\r\n", "out of range", 27),
    (b"PROXY TCP4 1.1.1.1 2.2.2.2 01 2\r\n", "invalid port", 27),
    (b"PROXY TCP4 1.1.1.1 2.2.2.2 +1 2\r\n", "invalid port", 27),
    (b"PROXY TCP4 1.1.1.1 2.2.2.2 -1 2\r\n", "invalid port", 27),
    (b"PROXY TCP4 1.1.1.1 2.2.2.2 1 \xd9\xa1\r\n", "non-ASCII", 29),
    (b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\tx\r\n", "invalid port", 29),
    (b"PROXY UNKNOWN " + b"x" * 93, "no CRLF within the first 107 bytes", 107),
    (f"PROXY UNKNOWN {FF6} {FF6} 65535 655350\r\n".encode(), "no CRLF", 107),
    # v2 fixed part
    (v2(0x11, 0x11, ADDR4), "unsupported PROXY protocol version 1", 12),
    (v2(0x31, 0x11, ADDR4), "unsupported PROXY protocol version 3", 12),
    (v2(0x22, 0x11, ADDR4), "unknown v2 command 0x2", 12),
    (v2(0x2F, 0x11, ADDR4), "unknown v2 command 0xf", 12),
    (v2(0x21, 0x13, ADDR4), "invalid v2 address family/transport 0x13", 13),
    (v2(0x21, 0x41, ADDR4), "invalid v2 address family/transport 0x41", 13),
    (v2(0x21, 0x10, ADDR4), "invalid v2 address family/transport 0x10", 13),
    (v2(0x21, 0x12, ADDR4), "datagram transport 0x12", 13),
    (v2(0x21, 0x22, bytes(36)), "datagram transport 0x22", 13),
    (v2(0x21, 0x11, ADDR4[:11]), "shorter than the 12-byte address block", 14),
    (v2(0x21, 0x21, ADDR4), "shorter than the 36-byte address block", 14),
    (v2(0x21, 0x31, bytes(100)), "shorter than the 216-byte address block", 14),
    (v2(0x20, 0x11, b""), "shorter than the 12-byte address block", 14),
    (v2(0x21, 0x11, b"", length=5000), "exceeds the 4096-byte limit", 14),
    (v2(0x21, 0x11, b"", length=0xFFFF), "exceeds the 4096-byte limit", 14),
    # v2 TLV framing
    (v2(0x21, 0x11, ADDR4 + b"\x02\x00"), "2 trailing bytes", 28),
    (v2(0x21, 0x11, ADDR4 + b"\x02"), "1 trailing bytes", 28),
    (v2(0x21, 0x11, ADDR4 + b"\x02\x00\x05abc"), "overruns the header by 2 bytes", 28),
    (v2(0x21, 0x11, ADDR4 + tlv(2, b"a") + tlv(2, b"b")), "duplicate TLV 0x02", 32),
    (v2(0x21, 0x11, ADDR4 + tlv(3, b"abc")), "CRC32C TLV is 3 bytes", 28),
    (v2(0x21, 0x11, ADDR4 + tlv(3, bytes(4))), "CRC32C mismatch", 31),
    (v2(0x21, 0x11, ADDR4 + tlv(5, bytes(129))), "UNIQUE_ID TLV is 129 bytes", 28),
    (v2(0x20, 0x00, b"\x01"), "1 trailing bytes", 16),
]


@pytest.mark.parametrize(("data", "reason", "offset"), BAD, ids=[repr(b[0][:24]) for b in BAD])
def test_strict_rejection(data: bytes, reason: str, offset: int) -> None:
    for parse in (parse_whole, parse_bytewise):
        with pytest.raises(ProxyProtocolError, match=reason.replace("+", r"\+")) as err:
            parse(data + b"\r\n" * 60)  # trailing bytes must not rescue anything
        assert err.value.offset == offset
        assert isinstance(err.value, ValueError)


def test_early_rejection_needs_one_byte() -> None:
    for first in (b"\x16", b"G", b"\x00", b"p"):
        with pytest.raises(ProxyProtocolError):
            ProxyHeaderParser().feed(first)
    # Bytes that may still become a header are not rejected.
    for prefix in (b"P", b"PROX", b"PROXY ", b"\r", b"\r\n\r\n\x00", SIG, SIG + b"\x21\x11"):
        assert ProxyHeaderParser().feed(prefix) is None


def test_v2_too_large_rejected_at_length_field() -> None:
    p = ProxyHeaderParser(max_v2_length=300)
    with pytest.raises(ProxyProtocolError, match="exceeds the 300-byte limit"):
        p.feed(v2(0x21, 0x11, b"", length=300 - 15))
    assert ProxyHeaderParser(max_v2_length=300).feed(v2(0x21, 0x11, b"", length=284)) is None
    with pytest.raises(ValueError):
        ProxyHeaderParser(max_v2_length=100)


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), authority="example.org", alpn=b"h2"),
        build_v2(None, None),
    ],
)
def test_every_proper_prefix_needs_more_and_eof_raises(header: bytes) -> None:
    for n in range(len(header)):
        p = ProxyHeaderParser()
        if n:
            assert p.feed(header[:n]) is None
        with pytest.raises(ProxyProtocolError, match="connection closed"):
            p.feed(b"")


def test_builders_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        build_v1(("not-an-ip", 1), ("1.1.1.1", 2))
    with pytest.raises(ValueError):
        build_v1(("1.1.1.1", 65536), ("1.1.1.1", 2))
    with pytest.raises(ValueError):
        build_v1(("fe80::1%lo", 1), ("::1", 2))
    with pytest.raises(ValueError):
        build_v2(("1.1.1.1", 1), None)
    with pytest.raises(ValueError):
        build_v2(("1.1.1.1", -1), ("1.1.1.1", 1))
    with pytest.raises(ValueError):
        build_v2(("1.1.1.1", 1), ("1.1.1.1", 1), alpn=bytes(70000))


# --------------------------------------------------------------------- fuzzing

VALID = [
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n",
    HAPROXY_V2,
    build_v2(("::1", 1), ("::2", 2), authority="example.com", alpn=b"h2"),
    build_v2(None, None, authority="x"),
]


def check_invariant(data: bytes, chunk: int) -> None:
    p = ProxyHeaderParser()
    try:
        for i in range(0, max(len(data), 1), chunk):
            info = p.feed(data[i : i + chunk])
            if info is not None:
                assert info.version in (1, 2) and info.command in ("PROXY", "LOCAL")
                for addr in (info.src, info.dst):
                    assert addr is None or 0 <= addr[1] <= 65535
    except ProxyProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 40))
def test_fuzz_random_bytes(data: bytes, chunk: int) -> None:
    check_invariant(data, chunk)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(VALID), st.data(), st.integers(1, 40))
def test_fuzz_mutated_headers(base: bytes, data: st.DataObject, chunk: int) -> None:
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    tail = data.draw(st.binary(max_size=40))
    check_invariant(bytes(raw[:cut]) + tail, chunk)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_v1_line_body(body: bytes) -> None:
    check_invariant(b"PROXY " + body + b"\r\n", 7)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([0x20, 0x21]),
    st.sampled_from([0x00, 0x11, 0x21, 0x31]),
    st.binary(max_size=300),
)
def test_fuzz_v2_body(ver_cmd: int, fam: int, body: bytes) -> None:
    check_invariant(v2(ver_cmd, fam, body), 13)


# --------------------------------------------------------------------- haproxy interop

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def haproxy_chain() -> Iterator[tuple[int, int, int, socket.socket]]:
    """haproxy listening on two ports, forwarding with send-proxy (v1) / send-proxy-v2 to us.

    Port a: plain listener -> backend with send-proxy.
    Port b: accept-proxy listener -> backend with send-proxy-v2 + authority, so a header we build
    goes through haproxy's parser and comes back through its builder.
    """
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy); interop test only")
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(8)
    backend.settimeout(10)
    bport = backend.getsockname()[1]
    a, b, c = free_port(), free_port(), free_port()
    cfg = f"""
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 10s
    timeout server 10s
listen v1
    bind 127.0.0.1:{a}
    server s 127.0.0.1:{bport} send-proxy
listen v2
    bind 127.0.0.1:{b} accept-proxy
    server s 127.0.0.1:{bport} send-proxy-v2 proxy-v2-options authority
listen v2plain
    bind 127.0.0.1:{c}
    server s 127.0.0.1:{bport} send-proxy-v2
"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "haproxy.cfg"
        path.write_text(cfg)
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", c), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.skip(f"haproxy did not start: {proc.stderr.read()!r}"[:300])  # type: ignore[union-attr]
                    time.sleep(0.05)
            # That probe connection reached the backend: accept and drop it.
            backend.accept()[0].close()
            yield a, b, c, backend
        finally:
            proc.kill()
            proc.wait()
            backend.close()


def read_header(backend: socket.socket, payload: bytes) -> tuple[ProxyInfo, bytes]:
    conn, _ = backend.accept()
    with conn:
        conn.settimeout(10)
        p = ProxyHeaderParser()
        info = None
        while info is None or len(p.remainder) < len(payload):
            chunk = conn.recv(4096)
            info = p.feed(chunk)
        return info, p.remainder


def test_haproxy_interop(haproxy_chain: tuple[int, int, int, socket.socket]) -> None:
    a, b, c, backend = haproxy_chain
    # haproxy's v1 builder -> our parser
    with socket.create_connection(("127.0.0.1", a)) as client:
        client.sendall(b"hello")
        info, rest = read_header(backend, b"hello")
        assert info.version == 1 and info.src == client.getsockname() and rest == b"hello"
        assert info.dst == ("127.0.0.1", a)
    # haproxy's v2 builder -> our parser
    with socket.create_connection(("127.0.0.1", c)) as client:
        client.sendall(b"hi")
        info, rest = read_header(backend, b"hi")
        assert info.version == 2 and info.command == "PROXY"
        assert info.src == client.getsockname() and info.dst == ("127.0.0.1", c)
    # our v2 builder -> haproxy's parser -> haproxy's v2 builder -> our parser
    with socket.create_connection(("127.0.0.1", b)) as client:
        header = build_v2(("203.0.113.7", 4242), ("198.51.100.1", 443), authority="svc.example")
        client.sendall(header + b"payload")
        info, rest = read_header(backend, b"payload")
        assert info.src == ("203.0.113.7", 4242) and info.dst == ("198.51.100.1", 443)
        assert info.tlvs.get(0x02) == b"svc.example" and rest == b"payload"
    # our v1 builder -> haproxy's parser (accept-proxy takes both versions)
    with socket.create_connection(("127.0.0.1", b)) as client:
        client.sendall(build_v1(("2001:db8::7", 1), ("2001:db8::1", 443)) + b"x")
        info, rest = read_header(backend, b"x")
        assert info.src == ("2001:db8::7", 1) and info.dst == ("2001:db8::1", 443)
