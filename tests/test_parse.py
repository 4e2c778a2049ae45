"""clienthello.parse on real ClientHellos: field by field, whole, re-framed, and truncated.

Expected values come from how each fixture was made (tests/data/README.md) and, for
offsets and raw fields, from an independent walk of the wire layout (helpers.layout).
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import (
    fixture_names,
    framing,
    handshake_bytes,
    is_sslv2,
    layout,
    load,
    reframe,
    split_even,
)

import clienthello
from clienthello import ClientHello, NeedMoreData

GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))
LONG_NAME = ".".join(["a" * 60, "b" * 60, "c" * 60, "d" * 50]) + ".long.test"
OPENSSL_CIPHERS = 31  # OpenSSL 3.0 default list: 3 TLS 1.3 + 27 TLS 1.2 + the SCSV 0x00ff
TLS13_12_11_10 = (0x0304, 0x0303, 0x0302, 0x0301)
H2_H11 = (b"h2", b"http/1.1")
# OpenSSL 3.0's default groups: x25519, P-256, x448, P-521, P-384, ffdhe2048..8192.
OPENSSL_GROUPS = (0x1D, 0x17, 0x1E, 0x19, 0x18, 0x100, 0x101, 0x102, 0x103, 0x104)
X25519, SECP256R1, X25519MLKEM768, X25519KYBER768D00 = 0x001D, 0x0017, 0x11EC, 0x6399

# What each client is known to send (tests/data/README.md has the command lines).
# "grease" in a tuple means "a GREASE value here", the value itself is random per run.
KNOWN: dict[str, dict[str, Any]] = {
    "python": dict(
        supported_groups=OPENSSL_GROUPS,
        server_name="python.test", alpn_protocols=H2_H11, supported_versions=(0x0304, 0x0303),
        n_ciphers=18, key_share_groups=(X25519,), grease=False, ech=False, first_ext=0,
    ),
    "python-nosni": dict(
        supported_groups=OPENSSL_GROUPS,
        server_name=None, alpn_protocols=None, supported_versions=(0x0304, 0x0303),
        n_ciphers=18, key_share_groups=(X25519,), grease=False, ech=False,
    ),
    "python-longsni": dict(
        supported_groups=OPENSSL_GROUPS,
        server_name=LONG_NAME, alpn_protocols=None, supported_versions=(0x0304, 0x0303),
        n_ciphers=18, key_share_groups=(X25519,), grease=False, ech=False, first_ext=0,
    ),
    "openssl": dict(
        supported_groups=OPENSSL_GROUPS,
        server_name="openssl.test", alpn_protocols=None, supported_versions=TLS13_12_11_10,
        n_ciphers=OPENSSL_CIPHERS, key_share_groups=(X25519,), grease=False, ech=False,
        first_ext=0,
    ),
    "curl": dict(
        supported_groups=OPENSSL_GROUPS,
        server_name="curl.test", alpn_protocols=H2_H11, supported_versions=TLS13_12_11_10,
        n_ciphers=OPENSSL_CIPHERS, key_share_groups=(X25519,), grease=False, ech=False,
        first_ext=0,
    ),
    "gnutls": dict(
        supported_groups=(0x17, 0x18, 0x19, 0x1D, 0x1E, 0x100, 0x101, 0x102, 0x103, 0x104),
        server_name="gnutls.test", alpn_protocols=None, supported_versions=TLS13_12_11_10,
        n_ciphers=29, key_share_groups=(SECP256R1, X25519), grease=False, ech=False,
    ),
    "chromium": dict(
        supported_groups=("grease", X25519MLKEM768, X25519, 0x17, 0x18),
        server_name="chromium.test", alpn_protocols=H2_H11,
        supported_versions=("grease", 0x0304, 0x0303), n_ciphers=16,
        key_share_groups=("grease", X25519MLKEM768, X25519), grease=True, ech=True,
    ),
    "chrome125": dict(
        supported_groups=("grease", X25519KYBER768D00, X25519, 0x17, 0x18),
        server_name="lh3.google.com", alpn_protocols=H2_H11,
        supported_versions=("grease", 0x0304, 0x0303), n_ciphers=16,
        key_share_groups=("grease", X25519KYBER768D00, X25519), grease=True, ech=True,
    ),
    "tls10-noext": dict(
        supported_groups=None,
        server_name=None, alpn_protocols=None, supported_versions=None, n_ciphers=5,
        key_share_groups=None, grease=False, ech=False,
    ),
    "sslv2": dict(
        supported_groups=None,
        server_name=None, alpn_protocols=None, supported_versions=None, n_ciphers=26,
        key_share_groups=None, grease=False, ech=False,
    ),
}

FIXTURES = fixture_names()
TLS_FIXTURES = [n for n in FIXTURES if not is_sslv2(load(n))]


def _matches(actual: tuple[int, ...] | None, expected: tuple[Any, ...] | None) -> bool:
    if expected is None or actual is None:
        return actual is expected
    return len(actual) == len(expected) and all(
        (a in GREASE) if e == "grease" else a == e for a, e in zip(actual, expected, strict=True)
    )


def test_every_fixture_has_known_values() -> None:
    assert set(FIXTURES) == set(KNOWN), "add the new fixture's known values to KNOWN"


@pytest.mark.parametrize("name", FIXTURES)
def test_known_values(name: str) -> None:
    data = load(name)
    known = KNOWN[name]
    hello = clienthello.parse(data)
    assert hello.server_name == known["server_name"]
    if known["server_name"] is None:
        assert hello.server_name_raw is None
    else:
        assert hello.server_name_raw == (known["server_name"].encode(),)
    assert hello.server_name_problems == ()
    assert hello.alpn_protocols == known["alpn_protocols"]
    assert _matches(hello.supported_versions, known["supported_versions"])
    assert _matches(hello.key_share_groups, known["key_share_groups"])
    assert _matches(hello.supported_groups, known["supported_groups"])
    assert len(hello.cipher_suites) == known["n_ciphers"]
    assert hello.grease is known["grease"]
    assert (hello.ech is not None) is known["ech"]
    if "first_ext" in known:
        assert hello.extension_types[0] == known["first_ext"]
    assert hello.sslv2 is (name == "sslv2")


@pytest.mark.parametrize("name", TLS_FIXTURES)
def test_fields_match_wire_layout(name: str) -> None:
    """Every raw field equals the bytes found at its place by an independent walk."""
    data = load(name)
    hs = handshake_bytes(data)
    wire = layout(hs)
    hello = clienthello.parse(data)
    assert hello.raw == hs
    assert hello.legacy_version == wire.legacy_version
    assert hello.random == wire.random
    assert hello.legacy_session_id == wire.session_id
    assert hello.cipher_suites == wire.cipher_suites
    assert hello.legacy_compression_methods == wire.compression
    assert [(e.type, e.data, e.offset) for e in hello.extensions] == [
        (e.type, e.data, e.offset) for e in wire.extensions
    ]
    assert hello.extension_types == tuple(e.type for e in wire.extensions)


def test_python_field_by_field() -> None:
    """python.bin in full: every field, from the layout and from OpenSSL 3.0's defaults."""
    data = load("python")
    hs = data[5:]
    hello = clienthello.parse(data)
    assert data[:5] == b"\x16\x03\x01\x02\x00"  # one record of 512 bytes
    assert hello.raw == hs and len(hs) == 512
    assert hello.legacy_version == 0x0303
    assert hello.random == data[11:43]
    assert hello.legacy_session_id == data[44:76] and data[43] == 32  # middlebox compat
    assert hello.cipher_suites == (
        0x1302, 0x1303, 0x1301, 0xC02C, 0xC030, 0xC02B, 0xC02F, 0xCCA9, 0xCCA8,
        0xC024, 0xC028, 0xC023, 0xC027, 0x009F, 0x009E, 0x006B, 0x0067, 0x00FF,
    )
    assert hello.legacy_compression_methods == b"\x00"
    assert hello.extension_types == (0, 11, 10, 35, 16, 22, 23, 13, 43, 45, 51, 21)
    assert hello.server_name == "python.test"
    assert hello.server_name_raw == (b"python.test",)
    assert hello.server_name_problems == ()
    assert hello.extensions[0].data == b"\x00\x0e\x00\x00\x0bpython.test"
    assert hello.extensions[0].offset == 4 + 2 + 32 + 1 + 32 + 2 + 36 + 1 + 1 + 2
    assert hello.alpn_protocols == (b"h2", b"http/1.1")
    assert hello.ec_point_formats == (0, 1, 2)
    assert hello.supported_groups == (29, 23, 30, 25, 24, 256, 257, 258, 259, 260)
    assert hello.signature_algorithms == (
        0x0403, 0x0503, 0x0603, 0x0807, 0x0808, 0x0809, 0x080A, 0x080B, 0x0804, 0x0805,
        0x0806, 0x0401, 0x0501, 0x0601, 0x0303, 0x0301, 0x0302, 0x0402, 0x0502, 0x0602,
    )
    assert hello.supported_versions == (0x0304, 0x0303)
    assert hello.psk_key_exchange_modes == (1,)
    assert hello.key_share_groups == (29,)
    assert hello.has_pre_shared_key is False
    assert hello.ech is None
    assert hello.sslv2 is False
    assert hello.grease is False
    assert hello.extension(21) is not None and set(hello.extension(21).data) == {0}  # padding
    assert hello.extension(0x0A0A) is None
    # session_ticket (35), encrypt_then_mac (22), extended_master_secret (23): empty bodies
    for ext_type in (35, 22, 23):
        ext = hello.extension(ext_type)
        assert ext is not None and ext.data == b""


def test_chromium_field_by_field() -> None:
    """Chromium: GREASE kept in place, ECH GREASE outer, post-quantum key share."""
    data = load("chromium")
    wire = layout(handshake_bytes(data))
    hello = clienthello.parse(data)
    assert hello.cipher_suites[0] in GREASE
    assert hello.cipher_suites[1:] == (
        0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8,
        0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035,
    )
    types = hello.extension_types
    assert types[0] in GREASE and types[-1] in GREASE  # Chromium's first and last GREASE
    assert sorted(t for t in types if t not in GREASE) == sorted(
        [0, 5, 10, 11, 13, 16, 18, 23, 27, 35, 43, 45, 51, 0x44CD, 0xCA34, 0xFE0D, 0xFF01]
    )
    assert _matches(hello.supported_groups, ("grease", X25519MLKEM768, X25519, 23, 24))
    assert hello.psk_key_exchange_modes == (1,)
    assert hello.ec_point_formats == (0,)
    # GREASE, then ML-DSA-44/65/87 (0x0904-0x0906), then the classic schemes.
    assert _matches(hello.signature_algorithms, (
        "grease", 0x0904, 0x0905, 0x0906,
        0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
    ))
    ech_ext = wire.ext(0xFE0D).data
    assert hello.ech is not None
    assert hello.ech.type == 0  # outer
    assert (hello.ech.kdf_id, hello.ech.aead_id) == (
        int.from_bytes(ech_ext[1:3], "big"), int.from_bytes(ech_ext[3:5], "big"),
    )
    assert hello.ech.config_id == ech_ext[5]
    enc_len = int.from_bytes(ech_ext[6:8], "big")
    assert hello.ech.enc_length == enc_len == 32
    assert hello.ech.payload_length == int.from_bytes(ech_ext[8 + enc_len : 10 + enc_len], "big")
    assert len(hello.raw) == len(data) - 5 > 1800


def test_sslv2_fields() -> None:
    """The SSLv2-compatible hello: 3-byte cipher specs, challenge as random, no extensions."""
    data = load("sslv2")
    hello = clienthello.parse(data)
    assert hello.sslv2 is True
    assert hello.legacy_version == 0x0301
    cs_len, sid_len, ch_len = (int.from_bytes(data[i : i + 2], "big") for i in (5, 7, 9))
    specs = data[11 : 11 + cs_len]
    assert hello.cipher_suites == tuple(
        int.from_bytes(specs[i : i + 3], "big") for i in range(0, cs_len, 3)
    )
    assert hello.cipher_suites[:3] == (0x010080, 0x030080, 0x0700C0)
    assert hello.legacy_session_id == data[11 + cs_len : 11 + cs_len + sid_len]
    challenge = data[11 + cs_len + sid_len : 11 + cs_len + sid_len + ch_len]
    assert len(challenge) == 16
    # RFC 5246 E.2: the challenge is the right-aligned end of a 32-byte random.
    assert hello.random == bytes(32 - ch_len) + challenge
    assert hello.extensions == ()
    assert hello.server_name is None and hello.alpn_protocols is None


def test_tls10_without_extensions() -> None:
    data = load("tls10-noext")
    hello = clienthello.parse(data)
    assert hello.legacy_version == 0x0301
    assert hello.random == bytes.fromhex("4a000000") + bytes(range(28))
    assert hello.cipher_suites == (0x002F, 0x0035, 0x000A, 0x0005, 0x0004)
    assert hello.legacy_compression_methods == b"\x00"
    assert hello.extensions == ()
    for attr in (
        "server_name", "alpn_protocols", "supported_versions", "supported_groups",
        "signature_algorithms", "ec_point_formats", "key_share_groups",
        "psk_key_exchange_modes", "ech",
    ):
        assert getattr(hello, attr) is None, attr


def test_empty_extensions_block_is_not_absent() -> None:
    """A present but empty extensions block gives () too, and parses."""
    hs = bytearray(handshake_bytes(load("tls10-noext")))
    hs += b"\x00\x00"
    hs[1:4] = (len(hs) - 4).to_bytes(3, "big")
    hello = clienthello.parse(b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs)
    assert hello.extensions == ()


# --- the same hello however it is framed ------------------------------------------


def reframings(data: bytes) -> dict[str, bytes]:
    """The fixture re-split over 2, 3 and 5 records, with 1-byte records among them."""
    n = len(handshake_bytes(data))
    return {
        "2 records": split_even(data, 2),
        "3 records": split_even(data, 3),
        "5 records": split_even(data, 5),
        "1-byte header records": reframe(data, [1, 1, 1, 1]),  # the 4-byte header alone
        "5 with 1-byte": reframe(data, [1, 3, 1, n // 2]),
        "1-byte last": reframe(data, [n - 1]),
        "all 1-byte": reframe(data, [1] * n),
    }


@pytest.mark.parametrize("name", TLS_FIXTURES)
def test_reframed_is_the_same_hello(name: str) -> None:
    data = load(name)
    whole = clienthello.parse(data)
    for how, framed in reframings(data).items():
        assert framed != data
        assert clienthello.parse(framed) == whole, how
        assert clienthello.parse(bytearray(framed)) == whole, how
        assert clienthello.parse(memoryview(framed)) == whole, how


@pytest.mark.parametrize("name", FIXTURES)
def test_buffer_types_and_trailing_bytes(name: str) -> None:
    data = load(name)
    whole = clienthello.parse(data)
    assert isinstance(whole, ClientHello)
    assert clienthello.parse(bytearray(data)) == whole
    assert clienthello.parse(memoryview(data)) == whole
    # Bytes after the hello (the next record, garbage) are ignored.
    assert clienthello.parse(data + b"\x14\x03\x03\x00\x01\x01") == whole
    assert clienthello.parse(data + b"\xff" * 100) == whole


def test_fragmented_header_counts() -> None:
    """helpers.reframe is itself right: the records it builds are what was asked."""
    data = load("python")
    f = framing(reframe(data, [1, 3, 1, 10]))
    assert [n for _, n in f.records] == [1, 3, 1, 10, 512 - 15]


def _prefix_step(n: int) -> int:
    return 1 if n < 2048 else 7


@pytest.mark.parametrize("name", FIXTURES)
def test_every_prefix_needs_more_data(name: str) -> None:
    data = load(name)
    for k in range(0, len(data), _prefix_step(len(data))):
        with pytest.raises(NeedMoreData) as info:
            clienthello.parse(data[:k])
        # .needed is a lower bound of what is really missing.
        assert 1 <= info.value.needed <= len(data) - k, k


@pytest.mark.parametrize("name", TLS_FIXTURES)
def test_every_prefix_of_reframed_needs_more_data(name: str) -> None:
    data = load(name)
    for how, framed in reframings(data).items():
        if how == "all 1-byte":
            continue  # 6x the size; the 5-record forms cover the record boundaries
        step = _prefix_step(len(framed))
        for k in range(0, len(framed), step):
            with pytest.raises(NeedMoreData) as info:
                clienthello.parse(framed[:k])
            assert 1 <= info.value.needed <= len(framed) - k, (how, k)


@pytest.mark.parametrize("name", FIXTURES)
def test_parse_handshake_agrees(name: str) -> None:
    data = load(name)
    if is_sslv2(data):
        pytest.skip("an SSLv2 CLIENT-HELLO has no TLS handshake header")
    hs = handshake_bytes(data)
    assert clienthello.parse_handshake(hs) == clienthello.parse(data)
    for k in range(0, len(hs), _prefix_step(len(hs))):
        with pytest.raises(NeedMoreData):
            clienthello.parse_handshake(hs[:k])


@pytest.mark.parametrize("name", FIXTURES)
def test_display_names_and_fingerprints_work(name: str) -> None:
    hello = clienthello.parse(load(name))
    for c in hello.cipher_suites:
        assert clienthello.cipher_suite_name(c)
    for t in hello.extension_types:
        assert clienthello.extension_name(t)
    assert clienthello.cipher_suite_name(0x1301) == "TLS_AES_128_GCM_SHA256"
    assert clienthello.extension_name(0) == "server_name"
    assert clienthello.group_name(29) == "x25519"
    assert len(clienthello.ja3(hello)) == 32
    assert clienthello.ja4(hello).startswith("t")


@pytest.mark.parametrize(
    ("name", "version"),
    [("python", 0x0304), ("chromium", 0x0304), ("openssl", 0x0304), ("tls10-noext", 0x0301),
     ("sslv2", 0x0301)],
)
def test_max_version(name: str, version: int) -> None:
    assert clienthello.parse(load(name)).max_version == version


def test_hello_is_frozen() -> None:
    import dataclasses

    hello = clienthello.parse(load("python"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        hello.server_name = "other.test"  # type: ignore[misc]
    assert hash(hello.extensions[0]) == hash(hello.extensions[0])
