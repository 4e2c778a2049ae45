"""clienthello.DtlsReader on real DTLS datagrams: OpenSSL captures, the public corpus,
re-fragmented and re-ordered hellos, and malformed framing.

Fixtures: tests/data/dtls/*.dgrams, written by tests/data/dtls/make_dtls_fixtures.py
(openssl s_client -> loopback relay -> openssl s_server -listen, so each holds a first
ClientHello, a HelloVerifyRequest's answer with the cookie, and what follows). The
corpus files are compared with tshark's answers (*.expected.jsonl).
"""

from __future__ import annotations

import contextlib
import json
import random
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CORPUS, build_handshake
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clienthello
from clienthello import (
    ClientHelloError,
    DtlsClientHello,
    DtlsReader,
    HelloTooLarge,
    MalformedHello,
    NotTLS,
)

DTLS_DATA = Path(__file__).resolve().parent / "data" / "dtls"
DTLS10, DTLS12, DTLS13 = 0xFEFF, 0xFEFD, 0xFEFC


def datagrams(name: str) -> list[bytes]:
    """The datagrams of tests/data/dtls/<name>.dgrams (2-byte length, datagram)*."""
    data = (DTLS_DATA / f"{name}.dgrams").read_bytes()
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 2], "big")
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


def read_all(grams: list[bytes], reader: DtlsReader | None = None) -> list[DtlsClientHello]:
    reader = reader or DtlsReader()
    found = []
    for gram in grams:
        got = reader.feed(gram)
        while got is not None:
            found.append(got)
            got = reader.next_hello()
    return found


def record(
    body: bytes, seq: int = 0, version: int = DTLS12, ctype: int = 22, epoch: int = 0
) -> bytes:
    return (
        struct.pack("!BHH", ctype, version, epoch)
        + seq.to_bytes(6, "big")
        + struct.pack("!H", len(body))
        + body
    )


def fragment(message: bytes, offset: int, length: int, message_seq: int = 0) -> bytes:
    """A DTLS handshake fragment of a message given with its 12-byte header."""
    total = int.from_bytes(message[1:4], "big")
    return (
        message[:1]
        + total.to_bytes(3, "big")
        + message_seq.to_bytes(2, "big")
        + offset.to_bytes(3, "big")
        + length.to_bytes(3, "big")
        + message[12 + offset : 12 + offset + length]
    )


def dtls_message(tls_handshake: bytes, cookie: bytes = b"", message_seq: int = 0) -> bytes:
    """A DTLS ClientHello message (12-byte header) from a TLS one, cookie inserted."""
    body = tls_handshake[4:]
    sid_end = 35 + body[34]
    body = body[:sid_end] + bytes([len(cookie)]) + cookie + body[sid_end:]
    length = len(body).to_bytes(3, "big")
    return b"\x01" + length + message_seq.to_bytes(2, "big") + b"\x00\x00\x00" + length + body


# --- the OpenSSL captures --------------------------------------------------------------

FIXTURES = {
    "openssl-dtls12": ("dtls12.test", DTLS12, (b"coap", b"webrtc"), 1),
    "openssl-dtls12-mtu300": ("dtls.test", DTLS12, None, 2),
    "openssl-dtls10": ("dtls10.test", DTLS10, None, 1),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_openssl_hello_verify_exchange(name: str) -> None:
    """Both hellos of a HelloVerifyRequest exchange: no cookie, then the cookie."""
    server_name, version, alpn, datagrams_per_hello = FIXTURES[name]
    first, second = read_all(datagrams(name))
    assert (first.message_seq, second.message_seq) == (0, 1)
    assert first.hello.cookie == b"" and len(second.hello.cookie or b"") == 20  # OpenSSL's
    for found in (first, second):
        hello = found.hello
        assert hello.dtls and hello.complete and hello.error is None
        assert hello.server_name == server_name
        assert hello.legacy_version == version
        # OpenSSL sends its first flight in DTLS 1.0 records (RFC 6347 §4.1 allows it).
        assert found.record_version == DTLS10
        assert hello.alpn_protocols == alpn
        assert found.records == found.fragments == datagrams_per_hello
        assert len(found.datagrams) == datagrams_per_hello
        assert clienthello.ja4(hello).startswith("dd" + ("2" if version == DTLS12 else "1"))
        assert clienthello.ja4(hello, transport="tcp")[0] == "t"
    # Everything but the cookie (and the random, which OpenSSL keeps) is the same.
    assert first.hello.cipher_suites == second.hello.cipher_suites
    assert first.hello.extension_types == second.hello.extension_types
    assert first.hello.random == second.hello.random


def test_fragmented_over_datagrams_field_by_field() -> None:
    grams = datagrams("openssl-dtls12-mtu300")
    (first, second) = read_all(grams)
    assert first.datagrams == (0, 1) and second.datagrams == (2, 3)
    hello = first.hello
    raw = hello.raw
    # The message as if unfragmented: fragment_offset 0, fragment_length = length.
    assert raw[0] == 1 and raw[1:4] == raw[9:12] and raw[6:9] == b"\x00\x00\x00"
    assert int.from_bytes(raw[4:6], "big") == 0 and len(raw) == 12 + int.from_bytes(raw[1:4], "big")
    # The first datagram's single record holds the message's first fragment verbatim.
    assert grams[0][0] == 22 and grams[0][1:3] == b"\xfe\xff"
    frag_len = int.from_bytes(grams[0][22:25], "big")
    assert raw[12 : 12 + frag_len] == grams[0][25 : 25 + frag_len]
    assert hello.random == raw[14:46]
    assert hello.legacy_session_id == b""
    assert len(hello.cipher_suites) == 84
    for ext in hello.extensions:
        assert int.from_bytes(raw[ext.offset : ext.offset + 2], "big") == ext.type
    assert clienthello.parse_dtls_handshake(raw) == hello
    assert clienthello.parse_dtls_handshake(second.hello.raw) == second.hello


def test_hello_command_takes_the_fragments_as_datagrams(tmp_path: Path) -> None:
    """`sniinspect hello` given the datagrams of a fragmented hello, in any order."""
    from click.testing import CliRunner

    from sniinspect.main import cli

    grams = datagrams("openssl-dtls12-mtu300")[:2]  # the first hello, in two datagrams
    paths = []
    for i, gram in enumerate(grams):
        paths.append(tmp_path / f"dgram{i}.bin")
        paths[-1].write_bytes(gram)
    expected = read_all(grams)[0].hello
    runner = CliRunner()
    for names in ([paths[0], paths[1]], [paths[1], paths[0]]):
        result = runner.invoke(cli, ["hello", "--format", "json", *map(str, names)])
        assert result.exit_code == 0, result.output
        info = json.loads(result.output)
        assert [c["value"] for c in info["cipher_suites"]] == list(expected.cipher_suites)
        assert info["ja4"] == clienthello.ja4(expected, transport="dtls")
    alone = runner.invoke(cli, ["hello", str(paths[0])])
    assert alone.exit_code == 2 and "fragmented over further datagrams" in alone.output


def test_retransmissions_are_not_returned_twice() -> None:
    grams = datagrams("openssl-dtls12")
    reader = DtlsReader()
    assert reader.feed(grams[0]) is not None
    assert reader.feed(grams[0]) is None  # the same ClientHello again
    assert reader.feed(grams[1]) is not None
    assert reader.feed(grams[0]) is None
    assert reader.feed(grams[1]) is None
    assert [h.message_seq for h in reader.hellos] == [0, 1]


def test_later_datagrams_of_other_kinds_are_passed_over() -> None:
    """After the first hello: CCS, encrypted records, unified headers, STUN."""
    grams = datagrams("openssl-dtls12")
    reader = DtlsReader()
    assert reader.feed(grams[0]) is not None
    assert reader.feed(record(b"\x01", ctype=20)) is None  # ChangeCipherSpec
    assert reader.feed(record(b"x" * 40, ctype=23, epoch=1)) is None
    assert reader.feed(b"\x2f" + b"\x00" * 30) is None  # DTLS 1.3 unified header
    assert reader.feed(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(12)) is None  # STUN
    assert reader.feed(b"") is None
    found = reader.feed(grams[1])
    assert found is not None and found.message_seq == 1 and found.datagrams == (6,)


# --- the public corpus against tshark ---------------------------------------------------

CORPUS_DTLS = [
    "dtls-udp.notest.cap",
    "dtls2.pcap",
    "dtls_old_version.pcapng",
    "dtls_session_id_and_coockie_both.pcap",
    "tls-dtls1_0.pcap",
    "tls-dtls1_2.pcap",
    "tls-dtls13-cid.pcap",
    "tls-dtls13-wolfssl.pcap",
]


def udp_flows(path: Path) -> Iterator[tuple[tuple[bytes, int, bytes, int], int, bytes]]:
    """(client flow key, frame number, payload) for every UDP datagram of a client."""
    dpkt = pytest.importorskip("dpkt")
    servers = set()
    with path.open("rb") as fh:
        for frame, (_, buf) in enumerate(dpkt.pcap.UniversalReader(fh), 1):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) or not isinstance(
                ip.data, dpkt.udp.UDP
            ):
                continue
            udp = ip.data
            key = (bytes(ip.src), udp.sport, bytes(ip.dst), udp.dport)
            if key in servers:
                continue
            servers.add((key[2], key[3], key[0], key[1]))
            yield key, frame, bytes(udp.data)


def _summary(hello: clienthello.ClientHello) -> tuple[object, ...]:
    return (hello.server_name, hello.cipher_suites, hello.extension_types, clienthello.ja3(hello))


@pytest.mark.parametrize("name", CORPUS_DTLS)
def test_corpus_agrees_with_tshark(name: str) -> None:
    """Every hello tshark shows is one we return (tshark shows each retransmission and,
    for a fragmented hello, each fragment: lines without ciphers are those), and we
    return nothing it does not show."""
    path = CORPUS / name
    if not path.exists():
        pytest.skip("public corpus not present")
    readers: dict[object, DtlsReader] = {}
    ours = []
    for key, _, payload in udp_flows(path):
        reader = readers.setdefault(key, DtlsReader())
        try:
            found = reader.feed(payload)
        except NotTLS:
            continue  # another protocol on UDP: tshark shows nothing for it either
        if found is not None:
            ours.append(found)
    lines = [json.loads(line) for line in (CORPUS / f"{name}.expected.jsonl").open()]
    theirs = {
        (e["sni"], tuple(e["ciphers"]), tuple(e["extensions"]), e["ja3"])
        for e in lines
        if e["ciphers"]
    }
    assert {_summary(f.hello) for f in ours} == theirs
    for found in ours:
        assert found.hello.dtls
        expected_d = {DTLS10: "d1", DTLS12: "d2", DTLS13: "d3"}.get(found.hello.max_version, "00")
        assert clienthello.ja4(found.hello)[:3] == "d" + expected_d


def test_dtls13_corpus_versions() -> None:
    path = CORPUS / "tls-dtls13-wolfssl.pcap"
    if not path.exists():
        pytest.skip("public corpus not present")
    reader = DtlsReader()
    for _, _, payload in udp_flows(path):
        found = reader.feed(payload)
        if found is not None:
            break
    assert found is not None
    hello = found.hello
    assert hello.legacy_version == DTLS12 and hello.supported_versions == (DTLS13,)
    assert hello.max_version == DTLS13
    assert clienthello.ja4(hello).startswith("dd3i2705")


# --- version order and JA4 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("versions", "code"),
    [((DTLS13, DTLS12), "d3"), ((DTLS12, DTLS13), "d3"), ((DTLS12, DTLS10), "d2"),
     ((DTLS10,), "d1"), ((0x0A0A, DTLS12), "d2")],
)  # fmt: skip
def test_dtls_versions_rank_by_protocol(versions: tuple[int, ...], code: str) -> None:
    sv = bytes([2 * len(versions)]) + b"".join(v.to_bytes(2, "big") for v in versions)
    message = dtls_message(build_handshake(version=DTLS12, extensions=[(43, sv)]))
    hello = clienthello.parse_dtls_handshake(message)
    assert clienthello.ja4(hello)[:3] == "d" + code
    assert clienthello.ja4_r(hello)[:3] == "d" + code


def test_ja4_empty_lists_hash_to_zeros() -> None:
    message = dtls_message(build_handshake(version=DTLS10, ciphers=(), extensions=None))
    hello = clienthello.parse_dtls_handshake(message)
    assert clienthello.ja4(hello) == "dd1i000000_000000000000_000000000000"
    assert clienthello.ja4_r(hello) == "dd1i000000__"


# --- any fragmentation, any order -------------------------------------------------------


def reference_message() -> bytes:
    (first, _) = read_all(datagrams("openssl-dtls12-mtu300"))
    return first.hello.raw


def shuffled_datagrams(message: bytes, rng: random.Random, version: int = DTLS12) -> list[bytes]:
    """The message cut into overlapping fragments, packed into records and datagrams,
    in a random order, some repeated."""
    length = len(message) - 12
    pieces = []
    pos = 0
    while pos < length:
        size = rng.randint(1, 120)
        start = max(0, pos - rng.randint(0, 10))  # overlap the previous piece a little
        pieces.append(fragment(message, start, min(size, length - start)))
        pos = start + min(size, length - start)
    pieces += rng.sample(pieces, k=min(3, len(pieces)))  # retransmitted fragments
    rng.shuffle(pieces)
    grams: list[bytes] = []
    seq = 0
    while pieces:
        gram = b""
        for _ in range(rng.randint(1, 3)):
            if not pieces:
                break
            # Sometimes two fragments in one record (RFC 6347 §4.2.3 allows it).
            body = pieces.pop()
            if pieces and rng.random() < 0.3:
                body += pieces.pop()
            gram += record(body, seq, version)
            seq += 1
        grams.append(gram)
    return grams


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32))
def test_any_fragmentation_and_order_gives_the_same_hello(seed: int) -> None:
    message = reference_message()
    expected = clienthello.parse_dtls_handshake(message)
    grams = shuffled_datagrams(message, random.Random(seed))
    # The reader's first-record checks want a ClientHello fragment first; shuffle keeps it.
    found = read_all(grams)
    assert len(found) == 1
    assert found[0].hello == expected
    assert found[0].fragments >= 1 and found[0].datagrams


# --- errors -----------------------------------------------------------------------------


def test_not_dtls_is_refused_at_once() -> None:
    grams = datagrams("openssl-dtls12")
    with pytest.raises(NotTLS):
        DtlsReader().feed(b"\x17" + grams[0][1:])  # application data
    with pytest.raises(NotTLS):
        DtlsReader().feed(b"\x16\x03\x01" + grams[0][3:])  # a TLS record
    with pytest.raises(NotTLS):
        DtlsReader().feed(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12))  # STUN
    server_hello = grams[0][:13] + b"\x02" + grams[0][14:]
    with pytest.raises(NotTLS):
        DtlsReader().feed(server_hello)
    with pytest.raises(NotTLS):
        DtlsReader().feed(b"\x17")


def _message() -> bytes:
    return dtls_message(build_handshake(version=DTLS12, extensions=[(0, b"")]))


def set_len(frag: bytes, length: int) -> bytes:
    return frag[:1] + length.to_bytes(3, "big") + frag[4:]


def flip(frag: bytes, at: int) -> bytes:
    return frag[:at] + bytes([frag[at] ^ 0xFF]) + frag[at + 1 :]


def cookie_overrun(message: bytes) -> bytes:
    cookie_at = 12 + 34 + 1 + message[12 + 34]
    return message[:cookie_at] + b"\xf0" + message[cookie_at + 1 :]


MALFORMED = [
    # (datagrams, field, offset)
    ([record(_message())[:-1]], "datagram[0] record[0].length", 11),
    ([record(_message())[:10]], "datagram[0] record[0]", 0),
    ([record(b"")], "datagram[0] record[0].length", 11),
    ([record(_message()[:8])], "datagram[0] record[0] fragment[0]", 13),
    ([record(_message()[:9] + b"\xff\xff\xff" + _message()[12:])],
     "datagram[0] record[0] fragment[0].fragment_length", 22),
    ([record(fragment(_message(), 0, 20)[:6] + b"\x00\x00\x40" + fragment(_message(), 0, 20)[9:])],
     "datagram[0] record[0] fragment[0].fragment_offset", 19),
    ([record(fragment(_message(), 0, 20)), record(set_len(fragment(_message(), 20, 10), 999))],
     "datagram[1] record[0] fragment[0].length", 14),
    ([record(fragment(_message(), 0, 20)), record(flip(fragment(_message(), 10, 20), 14))],
     "datagram[1] record[0] fragment[0]", 25),
    ([record(_message(), version=0x0303)], None, 1),  # NotTLS: checked apart
    ([record(cookie_overrun(_message()))], "datagram[0] cookie", None),
]  # fmt: skip


@pytest.mark.parametrize(("grams", "field", "offset"), MALFORMED)
def test_malformed(grams: list[bytes], field: str | None, offset: int | None) -> None:
    reader = DtlsReader()
    if field is None:
        with pytest.raises(NotTLS):
            for gram in grams:
                reader.feed(gram)
        return
    with pytest.raises(MalformedHello) as info:
        for gram in grams:
            reader.feed(gram)
    err = info.value
    assert err.field == field
    if offset is not None:
        assert err.offset == offset
    assert str(err) == f"{err.reason} in {err.field} at offset {err.offset}"


def test_body_error_points_into_its_datagram() -> None:
    message = cookie_overrun(_message())
    gram = record(message)
    with pytest.raises(MalformedHello) as info:
        DtlsReader().feed(gram)
    # The cookie length byte sits at the same place in the message and the record body.
    assert info.value.offset == 13 + 12 + 34 + 1 + message[12 + 34]


def test_too_large() -> None:
    message = reference_message()
    with pytest.raises(HelloTooLarge):
        DtlsReader(max_size=100).feed(record(fragment(message, 0, 50)))
    declared = b"\x01\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x10" + bytes(16)
    with pytest.raises(HelloTooLarge):
        DtlsReader().feed(record(declared))
    # Many message_seq values, each started and never finished, hit the bound too.
    reader = DtlsReader(max_size=4096)
    with pytest.raises(HelloTooLarge):
        for seq in range(100):
            reader.feed(record(fragment(message, 0, 10, message_seq=seq)))


# --- only library errors, whatever the input --------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=4))
def test_random_datagrams_raise_only_library_errors(grams: list[bytes]) -> None:
    reader = DtlsReader()
    try:
        for gram in grams:
            reader.feed(gram)
    except ClientHelloError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_bit_flips_raise_only_library_errors(data: st.DataObject) -> None:
    grams = datagrams(data.draw(st.sampled_from(sorted(FIXTURES))))
    index = data.draw(st.integers(0, len(grams) - 1))
    gram = bytearray(grams[index])
    for _ in range(data.draw(st.integers(1, 4))):
        gram[data.draw(st.integers(0, len(gram) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    grams[index] = bytes(gram)
    reader = DtlsReader()
    try:
        for found in read_all(grams, reader):
            assert found.hello.dtls
    except ClientHelloError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_parse_dtls_handshake_raises_only_library_errors(data: bytes) -> None:
    with contextlib.suppress(ClientHelloError):
        clienthello.parse_dtls_handshake(b"\x01" + data)


def test_partial_hello_before_the_last_fragment() -> None:
    grams = datagrams("openssl-dtls12-mtu300")
    (first, _second) = read_all(grams)
    reader = DtlsReader()
    assert reader.partial() is None
    assert reader.feed(grams[0]) is None  # the first of two fragments
    partial = reader.partial()
    assert partial is not None and not partial.complete
    assert partial.cookie == b"" and partial.random == first.hello.random
    assert partial.cipher_suites == first.hello.cipher_suites  # all 84 in the first fragment
    assert partial.missing  # what the second fragment would have brought
