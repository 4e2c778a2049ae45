"""clienthello.sni, the hot path: it must give parse(x).server_name on every input.

Odd names (non-ASCII, several host_names, empty, trailing dot) are evidence, not errors:
both functions keep them (STYLE.md, second decision).
"""

from __future__ import annotations

import pytest
from helpers import (
    fixture_names,
    is_sslv2,
    load,
    reframe,
    replace_extension,
    server_name_body,
    split_even,
)

import clienthello
from clienthello import ClientHelloError, NeedMoreData

FIXTURES = fixture_names()


def variants(name: str) -> dict[str, bytes]:
    data = load(name)
    out = {"whole": data, "trailing": data + b"\x17\x03\x03\x00\x10" + bytes(16)}
    if not is_sslv2(data):
        out.update(
            {
                "2 records": split_even(data, 2),
                "3 records": split_even(data, 3),
                "5 with 1-byte": reframe(data, [1, 1, 2, 1]),
                "all 1-byte": reframe(data, [1] * (len(data) - 5)),
            }
        )
    return out


@pytest.mark.parametrize("name", FIXTURES)
def test_sni_equals_parse(name: str) -> None:
    for how, data in variants(name).items():
        expected = clienthello.parse(data).server_name
        assert clienthello.sni(data) == expected, how
        assert clienthello.sni(bytearray(data)) == expected, how
        assert clienthello.sni(memoryview(data)) == expected, how


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("python", "python.test"),
        ("openssl", "openssl.test"),
        ("curl", "curl.test"),
        ("gnutls", "gnutls.test"),
        ("chromium", "chromium.test"),
        ("chrome125", "lh3.google.com"),
        ("python-nosni", None),
        ("tls10-noext", None),
        ("sslv2", None),
    ],
)
def test_sni_value(name: str, expected: str | None) -> None:
    assert clienthello.sni(load(name)) == expected


@pytest.mark.parametrize("name", FIXTURES)
def test_sni_prefixes_raise_like_parse(name: str) -> None:
    data = load(name)
    step = 1 if len(data) < 2048 else 7
    for k in range(0, len(data), step):
        with pytest.raises(NeedMoreData):
            clienthello.sni(data[:k])


ODD_NAMES = [
    # (host_names as sent, expected server_name, expected problem)
    ([b"caf\xc3\xa9.test"], "caf\u00e9.test", "non-ascii"),
    ([b"\xff\xfe.test"], "\\xff\\xfe.test", "non-ascii"),
    ([b"first.test", b"second.test"], "first.test", "multiple host_names"),
    ([b""], "", "empty"),
    ([b"dot.test."], "dot.test.", "trailing dot"),
    ([b"bad name.test"], "bad name.test", "invalid characters"),
]


@pytest.mark.parametrize(("names", "expected", "problem"), ODD_NAMES)
def test_odd_names_are_kept_and_flagged(names: list[bytes], expected: str, problem: str) -> None:
    data = replace_extension(load("python"), 0, server_name_body(*names))
    for framed in (data, split_even(data, 3), reframe(data, [1] * 200)):
        hello = clienthello.parse(framed)
        assert hello.server_name == expected
        assert hello.server_name_raw == tuple(names)
        assert problem in hello.server_name_problems
        assert clienthello.sni(framed) == expected


def test_no_host_name_entry() -> None:
    """A server_name list whose only entry has another name_type: no host_name.

    The extension is there, so the answer is not None (None means "no server_name
    extension"); the library documents "" with the "no host_name" flag.
    """
    data = replace_extension(load("python"), 0, server_name_body(b"x.test", name_type=7))
    hello = clienthello.parse(data)
    assert hello.server_name == ""
    assert hello.server_name_raw == ()
    assert "no host_name" in hello.server_name_problems
    assert clienthello.sni(data) == ""


def test_scapy_crafted_names_agree() -> None:
    """Hellos crafted with scapy: sni and parse see the same first host_name."""
    from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.record import TLS

    for names in ([b"scapy.test"], [b"a.scapy.test", b"b.scapy.test"], [b"\xc3\xa9.test"]):
        ext = TLS_Ext_ServerName(servernames=[ServerName(servername=n) for n in names])
        hello = TLSClientHello(version=0x0303, ciphers=[0x1301], ext=[ext])
        data = bytes(TLS(type=22, version=0x0301, msg=[hello]))
        parsed = clienthello.parse(data)
        assert parsed.server_name_raw == tuple(names)
        assert (
            clienthello.sni(data)
            == parsed.server_name
            == names[0].decode("utf-8", "backslashreplace")
        )


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 10, b"\x16\x02\x01"])
def test_sni_not_tls(data: bytes) -> None:
    with pytest.raises(clienthello.NotTLS):
        clienthello.sni(data)
    with pytest.raises(clienthello.NotTLS):
        clienthello.parse(data)


def test_sni_errors_are_clienthello_errors() -> None:
    data = load("python")
    bad = data[:76] + b"\x00\x23" + data[78:]  # odd cipher_suites length
    with pytest.raises(ClientHelloError) as from_sni:
        clienthello.sni(bad)
    with pytest.raises(ClientHelloError) as from_parse:
        clienthello.parse(bad)
    assert type(from_sni.value) is type(from_parse.value)
