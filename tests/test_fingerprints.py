"""JA3 and JA4 of the fixtures, against reference implementations written from the specs.

JA3: salesforce/ja3 README (GREASE removed, as ja3 and tshark do). JA4: FoxIO
technical_details/JA4.md (current spec). The references work from helpers.layout (our
own walk of the wire bytes), not from the library's model. The corpus test checks the
same functions against tshark and ja4-python on real captures.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from helpers import build_handshake, fixture_names, handshake_bytes, is_sslv2, layout, load, records

import clienthello

GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))
TLS_FIXTURES = [n for n in fixture_names() if not is_sslv2(load(n))]
VERSIONS = {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2"}


def _u16s(data: bytes, start: int) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(start, len(data) - 1, 2)]


def ref_ja3_string(data: bytes) -> str:
    w = layout(handshake_bytes(data))
    exts = {e.type: e.data for e in w.extensions}
    groups = _u16s(exts[10], 2) if 10 in exts else []
    formats = list(exts[11][1:]) if 11 in exts else []
    parts = [
        str(w.legacy_version),
        "-".join(str(c) for c in w.cipher_suites if c not in GREASE),
        "-".join(str(e.type) for e in w.extensions if e.type not in GREASE),
        "-".join(str(g) for g in groups if g not in GREASE),
        "-".join(str(f) for f in formats),
    ]
    return ",".join(parts)


def _alpn_chars(first: bytes | None) -> str:
    if not first:
        return "00"
    a, b = chr(first[0]), chr(first[-1])
    if a.isascii() and a.isalnum() and b.isascii() and b.isalnum():
        return a + b
    h = first.hex()
    return h[0] + h[-1]


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12] if text else "000000000000"


def ref_ja4(data: bytes, raw: bool = False) -> str:
    w = layout(handshake_bytes(data))
    exts = {e.type: e.data for e in w.extensions}
    versions = [v for v in _u16s(exts[43], 1) if v not in GREASE] if 43 in exts else []
    version = VERSIONS.get(max(versions) if versions else w.legacy_version, "00")
    sni = "d" if 0 in exts else "i"
    ciphers = [c for c in w.cipher_suites if c not in GREASE]
    types = [e.type for e in w.extensions if e.type not in GREASE]
    alpn = None
    if 16 in exts and len(exts[16]) > 2:
        alpn = exts[16][3 : 3 + exts[16][2]]
    prefix = f"t{version}{sni}{min(len(ciphers), 99):02d}{min(len(types), 99):02d}"
    prefix += _alpn_chars(alpn)
    cipher_text = ",".join(sorted(f"{c:04x}" for c in ciphers))
    ext_text = ",".join(sorted(f"{t:04x}" for t in types if t not in (0, 16)))
    sigs = [s for s in _u16s(exts[13], 2) if s not in GREASE] if 13 in exts else []
    if sigs:
        ext_text += "_" + ",".join(f"{s:04x}" for s in sigs)
    if raw:
        return f"{prefix}_{cipher_text}_{ext_text}"
    return f"{prefix}_{_sha12(cipher_text)}_{_sha12(ext_text)}"


@pytest.mark.parametrize("name", TLS_FIXTURES)
def test_ja3(name: str) -> None:
    data = load(name)
    hello = clienthello.parse(data)
    expected = ref_ja3_string(data)
    assert clienthello.ja3_string(hello) == expected
    assert clienthello.ja3(hello) == hashlib.md5(expected.encode()).hexdigest()


@pytest.mark.parametrize("name", TLS_FIXTURES)
def test_ja4(name: str) -> None:
    data = load(name)
    hello = clienthello.parse(data)
    assert clienthello.ja4(hello) == ref_ja4(data)
    assert clienthello.ja4_r(hello) == ref_ja4(data, raw=True)


def test_known_values() -> None:
    """Values that follow from how the fixtures were made (tests/data/README.md)."""
    # scapy-built TLS 1.0 hello, no extensions: tshark 4.0.17 gives the same string.
    assert clienthello.ja3_string(clienthello.parse(load("tls10-noext"))) == "769,47-53-10-5-4,,,"
    python = clienthello.parse(load("python"))
    assert clienthello.ja4(python).startswith("t13d1812h2_")  # 18 ciphers, 12 extensions
    chromium = clienthello.parse(load("chromium"))
    # 15 ciphers and 17 extensions once GREASE is dropped, ALPN h2. The whole value is
    # the one FoxIO's ja4-python gives for a Chrome of the same generation (GREASE in
    # signature_algorithms, ML-DSA schemes, 0xca34), in FoxIO-LLC/ja4
    # python/test/testdata/sigalg-grease.pcapng.json at commit 53567a24.
    assert clienthello.ja4(chromium) == "t13d1517h2_8daaf6152771_cb7bf5808d99"
    assert clienthello.ja4(clienthello.parse(load("python-nosni"))).startswith("t13i1810")


def test_grease_does_not_change_fingerprints() -> None:
    """Two hellos that differ only in GREASE values fingerprint alike."""
    a = build_handshake(ciphers=(0x0A0A, 0x1301), extensions=[(0x1A1A, b""), (0, b"")])
    b = build_handshake(ciphers=(0xFAFA, 0x1301), extensions=[(0x2A2A, b"\x00"), (0, b"")])
    ha = clienthello.parse(records(a, [len(a)]))
    hb = clienthello.parse(records(b, [len(b)]))
    assert clienthello.ja3(ha) == clienthello.ja3(hb)
    assert clienthello.ja4(ha) == clienthello.ja4(hb)


def test_ja4_transport() -> None:
    hello = clienthello.parse(load("python"))
    assert clienthello.ja4(hello, transport="quic")[0] == "q"
    assert clienthello.ja4(hello, transport="dtls")[0] == "d"
    with pytest.raises(ValueError):
        clienthello.ja4(hello, transport="udp")


def test_ja4_extension_order_does_not_matter() -> None:
    """Chromium permutes its extensions per connection; JA4 sorts, JA3 does not."""
    data = load("chromium")
    w = layout(handshake_bytes(data))
    exts = [(e.type, e.data) for e in w.extensions]
    shuffled = exts[:1] + list(reversed(exts[1:-1])) + exts[-1:]
    hs = build_handshake(
        random=w.random, session_id=w.session_id, ciphers=w.cipher_suites, extensions=shuffled
    )
    a = clienthello.parse(data)
    b = clienthello.parse(records(hs, [len(hs)]))
    assert clienthello.ja4(a) == clienthello.ja4(b)
    assert clienthello.ja3(a) != clienthello.ja3(b)


def _greased(grease: int, alpn: bytes = b"h2", sig: int = 0x0403) -> bytes:
    """A Chrome-like handshake whose every GREASE slot holds ``grease``."""
    groups = struct.pack("!HHH", 4, grease, 29)
    versions = struct.pack("!BHH", 4, grease, 0x0304)
    return build_handshake(
        ciphers=(grease, 0x1301, 0x1302),
        extensions=[
            (grease, b""),
            (0, b"\x00\x0e\x00\x00\x0bexample.com"),
            (10, groups),
            (13, struct.pack("!HH", 2, sig)),
            (16, struct.pack("!HB", len(alpn) + 1, len(alpn)) + alpn),
            (43, versions),
            (grease ^ 0x1010, b"\x00"),
        ],
    )


def test_analyzer_fingerprint_cache_follows_each_hello() -> None:
    """The analyzer caches JA3/JA4 per hello shape with GREASE values merged: every
    GREASE variant gets the library's own answers and its own GREASE values in its
    lists, and hellos that differ in anything fingerprinted are not confused."""
    from sniinspect.capture.records import hello_fields

    seen = set()
    for grease in sorted(GREASE):
        hello = clienthello.parse(_framed(_greased(grease)))
        fields = hello_fields(hello, "quic")
        assert fields["ja3"] == clienthello.ja3(hello)
        assert fields["ja4"] == clienthello.ja4(hello, transport="quic")
        assert fields["ciphers"][0] == grease and fields["extensions"][0] == grease
        assert fields["groups"][0] == grease and fields["versions"][0] == grease
        seen.add((fields["ja3"], fields["ja4"]))
    assert len(seen) == 1  # GREASE does not count in either fingerprint
    for variant in (_greased(0x0A0A, alpn=b"h3"), _greased(0x0A0A, sig=0x0804)):
        hello = clienthello.parse(_framed(variant))
        for transport in ("tcp", "quic"):
            fields = hello_fields(hello, transport)
            assert fields["ja4"] == clienthello.ja4(hello, transport=transport)
            assert fields["ja3"] == clienthello.ja3(hello)
            seen.add((fields["ja3"], fields["ja4"]))
    assert len(seen) == 5  # h3 and another signature algorithm: new JA4s, in t and q


def _framed(handshake: bytes) -> bytes:
    return records(handshake, [len(handshake)])
