"""QUIC transport parameters and JA4's ``q``, on real QUIC ClientHellos.

Fixtures (tests/data/quic/*.hs, bare handshake messages taken from decrypted Initial
packets' CRYPTO frames): ``aioquic-1.7.2.hs`` from aioquic 1.7.2's client
(``QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="quic.test",
max_datagram_frame_size=65536)``); ``chrome-ja4-quic.hs`` (frame 1),
and ``curl-8.1.2.hs`` from the public corpus files ja4-quic.pcap (suricata-verify,
MIT) and quic-curl-8.1.2-dev-http3-www-google-de.pcap (Zeek, BSD-3-Clause).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from helpers import build_handshake, load, records
from hypothesis import given, settings
from hypothesis import strategies as st

import clienthello
from clienthello import ClientHelloError, MalformedHello, TransportParameter

QUIC_DATA = Path(__file__).resolve().parent / "data" / "quic"


def quic_hello(name: str) -> clienthello.ClientHello:
    return clienthello.parse_handshake((QUIC_DATA / f"{name}.hs").read_bytes())


def varint(value: int) -> bytes:
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def param(pid: int, value: bytes) -> bytes:
    return varint(pid) + varint(len(value)) + value


def hello_with(body: bytes, ext_type: int = 0x39) -> clienthello.ClientHello:
    return clienthello.parse_handshake(build_handshake(extensions=[(0, b""), (ext_type, body)]))


def test_aioquic_field_by_field() -> None:
    hello = quic_hello("aioquic-1.7.2")
    params = hello.quic_transport_parameters
    assert params is not None
    decoded = {p.name: p.decoded for p in params}
    assert decoded == {
        "max_idle_timeout": 60000,
        "initial_max_data": 1048576,
        "initial_max_stream_data_bidi_local": 1048576,
        "initial_max_stream_data_bidi_remote": 1048576,
        "initial_max_stream_data_uni": 1048576,
        "initial_max_streams_bidi": 128,
        "initial_max_streams_uni": 128,
        "ack_delay_exponent": 3,
        "max_ack_delay": 25,
        "active_connection_id_limit": 8,
        "initial_source_connection_id": params[10].value,
        "version_information": (1, 1, 0x6B3343CF),  # chosen v1; v1 and v2 available
        "max_datagram_frame_size": 65536,
    }
    assert len(params[10].value) == 8
    assert hello.max_idle_timeout == 60000
    assert hello.quic_transport_parameter(0x20) == params[-1]
    assert hello.quic_transport_parameter(0x2AB2) is None
    # Offsets point at each parameter's id within raw.
    ext = hello.extension(0x39)
    assert ext is not None
    assert params[0].offset == ext.offset + 4
    for p in params:
        assert hello.raw[p.offset : p.offset + len(varint(p.id))] == varint(p.id)
    assert clienthello.ja4(hello, transport="quic") == "q13d0307h3_55b375c5d22e_1cecd519fee8"


def test_chrome_grease_and_unknown_ids_kept() -> None:
    hello = quic_hello("chrome-ja4-quic")
    params = hello.quic_transport_parameters
    assert params is not None
    names = [p.name for p in params]
    assert "GREASE" in names and "unknown (0x4752)" in names
    grease = next(p for p in params if p.name == "GREASE")
    assert (grease.id - 27) % 31 == 0
    assert grease.decoded == grease.value
    # Suricata's value for every Chrome hello in ja4-quic.pcap (its suricata-verify test).
    assert clienthello.ja4(hello, transport="quic") == "q13d0310h3_55b375c5d22e_cd85d2d88918"
    assert clienthello.ja4(hello) == "t" + clienthello.ja4(hello, transport="quic")[1:]


def test_draft_code_point() -> None:
    # Old Chrome and curl builds sent the parameters under the draft code point 0xffa5.
    final = quic_hello("aioquic-1.7.2")
    ext = final.extension(0x39)
    assert ext is not None
    raw = final.raw[: ext.offset] + b"\xff\xa5" + final.raw[ext.offset + 2 :]
    hello = clienthello.parse_handshake(raw)
    assert hello.extension(0x39) is None and hello.extension(0xFFA5) is not None
    assert hello.max_idle_timeout == final.max_idle_timeout == 60000
    assert hello.quic_transport_parameters == final.quic_transport_parameters


def test_curl() -> None:
    hello = quic_hello("curl-8.1.2")
    assert hello.server_name == "www.google.de"
    assert hello.max_idle_timeout == 5000
    assert clienthello.ja4(hello, transport="quic").startswith("q13d0308h3_")


def test_absent_and_empty() -> None:
    assert clienthello.parse(load("python")).quic_transport_parameters is None
    assert clienthello.parse(load("python")).max_idle_timeout is None
    assert hello_with(b"").quic_transport_parameters == ()


def test_0x39_wins_over_the_draft() -> None:
    hs = build_handshake(extensions=[(0xFFA5, param(1, varint(5))), (0x39, param(1, varint(7)))])
    assert clienthello.parse_handshake(hs).max_idle_timeout == 7


@pytest.mark.parametrize(
    ("pid", "value", "decoded"),
    [
        (0x01, varint(1 << 40), 1 << 40),  # an 8-byte varint
        (0x0C, b"", True),
        (0x2AB2, b"", True),
        (0x02, bytes(range(16)), bytes(range(16))),
        (0x00, b"\x01" * 20, b"\x01" * 20),
        (0x11, bytes.fromhex("0000000100000001"), (1, 1)),
        (0x0D, bytes(4) + b"\x01\xbb" + bytes(16) + b"\x01\xbb" + b"\x04abcd" + bytes(16),
         clienthello.PreferredAddress(bytes(4), 443, bytes(16), 443, b"abcd", bytes(16))),
        (0x7F, b"\xff", b"\xff"),  # unknown, kept as bytes
    ],
)  # fmt: skip
def test_decoded_values(pid: int, value: bytes, decoded: object) -> None:
    hello = hello_with(param(pid, value))
    params = hello.quic_transport_parameters
    assert params is not None
    assert params == (TransportParameter(pid, value, params[0].offset),)
    assert params[0].decoded == decoded


@pytest.mark.parametrize(
    ("pid", "value", "reason"),
    [
        (0x01, b"", "empty integer value"),
        (0x01, varint(5) + b"\x00", "1 trailing bytes"),
        (0x01, b"\x80\x00", "4-byte varint, 2 bytes left"),
        (0x0C, b"\x00", "1 bytes in a zero-length flag"),
        (0x02, bytes(15), "15 bytes, not 16"),
        (0x0F, bytes(21), "connection ID of 21 bytes exceeds 20"),
        (0x11, bytes(6), "length 6 is not a multiple of 4"),
        (0x0D, bytes(30), "30 bytes, the lengths add up to 41"),
    ],
)
def test_bad_values(pid: int, value: bytes, reason: str) -> None:
    hello = hello_with(param(pid, value))
    params = hello.quic_transport_parameters
    assert params is not None
    with pytest.raises(MalformedHello) as info:
        params[0].decoded  # noqa: B018
    assert info.value.reason == reason
    assert info.value.field.startswith("quic_transport_parameters ")
    assert info.value.offset == params[0].offset


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x40", "2-byte varint, 1 bytes left"),  # id cut short
        (b"\x01", "varint missing"),  # no length
        (b"\x01\x05\x00", "length 5 overruns its block (1 bytes left)"),
        (param(1, varint(3)) + b"\x01", "varint missing"),
    ],
)
def test_bad_framing(body: bytes, reason: str) -> None:
    hello = hello_with(body)  # the strict parse does not look inside: decoding is lazy
    with pytest.raises(MalformedHello) as info:
        hello.quic_transport_parameters  # noqa: B018
    err = info.value
    assert err.reason == reason
    assert err.field.startswith("extensions[1] quic_transport_parameters parameter[")
    ext = hello.extension(0x39)
    assert ext is not None and ext.offset + 4 <= err.offset <= ext.offset + 4 + len(body)


def test_draft_field_name() -> None:
    with pytest.raises(MalformedHello) as info:
        hello_with(b"\x40", ext_type=0xFFA5).quic_transport_parameters  # noqa: B018
    assert info.value.field == "extensions[1] quic_transport_parameters_draft parameter[0]"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bodies_raise_only_malformed(body: bytes) -> None:
    hello = clienthello.parse(records(h := build_handshake(extensions=[(0x39, body)]), [len(h)]))
    with contextlib.suppress(MalformedHello):
        for p in hello.quic_transport_parameters or ():
            with contextlib.suppress(MalformedHello):
                p.decoded  # noqa: B018
            assert isinstance(p.name, str)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_bit_flipped_quic_hellos(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["aioquic-1.7.2", "chrome-ja4-quic", "curl-8.1.2"]))
    raw = bytearray((QUIC_DATA / f"{name}.hs").read_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    with contextlib.suppress(ClientHelloError):
        hello = clienthello.parse_handshake(bytes(raw))
        for p in hello.quic_transport_parameters or ():
            with contextlib.suppress(MalformedHello):
                p.decoded  # noqa: B018
