"""Malformed ClientHellos: one table of (mutation, exception, field, offset).

Every mutation starts from python.bin (a real 517-byte hello: one record, 12 extensions)
and breaks exactly one thing; the other lengths are recomputed so only that fault
remains. The expected offset is computed from the wire layout (helpers.layout), never
taken from the library: it points at the length field that lies, or at the first byte
that should not be there. Handshake-level faults are checked both in one record and
spread over 1-byte records, where the offset must map back into the caller's bytes.
Odd server names are in the table too, as the cases that must NOT raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from helpers import (
    handshake_bytes,
    layout,
    load,
    records,
    server_name_body,
    set_u8,
    set_u16,
    set_u24,
)

import clienthello
from clienthello import ClientHelloError, HelloTooLarge, MalformedHello, NotTLS

BASE = load("python")
HS = handshake_bytes(BASE)
W = layout(HS)
RECORD_VERSION = 0x0301


def _fix_length(hs: bytes) -> bytes:
    """Recompute the 24-bit handshake length after a change in size."""
    return set_u24(hs, 1, len(hs) - 4)


def _splice(hs: bytes, start: int, end: int, new: bytes) -> bytes:
    return _fix_length(hs[:start] + new + hs[end:])


def _ext_index(ext_type: int) -> int:
    return [e.type for e in W.extensions].index(ext_type)


def _with_ext_body(ext_type: int, body: bytes) -> bytes:
    """HS with one extension body replaced (its own length and the block's recomputed)."""
    e = W.ext(ext_type)
    hs = HS[: e.length_offset] + len(body).to_bytes(2, "big") + body
    hs += HS[e.data_offset + len(e.data) :]
    assert W.extensions_len_offset is not None
    old = int.from_bytes(HS[W.extensions_len_offset : W.extensions_len_offset + 2], "big")
    hs = set_u16(hs, W.extensions_len_offset, old + len(body) - len(e.data))
    return _fix_length(hs)


# ---- handshake-level mutations: (new handshake bytes, offset of the fault in them)


def odd_cipher_suites_length() -> tuple[bytes, int]:
    o = W.cipher_suites_len_offset
    n = 2 * len(W.cipher_suites)
    return _splice(HS, o, o + 2 + n, (n - 1).to_bytes(2, "big") + HS[o + 2 : o + 1 + n]), o


def session_id_over_32() -> tuple[bytes, int]:
    o = W.session_id_len_offset
    return _splice(HS, o, o + 33, bytes([33]) + W.session_id + b"\x00"), o


def cipher_suites_overrun_handshake() -> tuple[bytes, int]:
    """The handshake length ends the message inside cipher_suites."""
    o = W.cipher_suites_len_offset
    return set_u24(HS[: o + 10], 1, o + 10 - 4), o


def extension_overruns_block() -> tuple[bytes, int]:
    last = W.extensions[-1]
    return set_u16(HS, last.length_offset, len(last.data) + 1), last.length_offset


def first_extension_length_ffff() -> tuple[bytes, int]:
    first = W.extensions[0]
    return set_u16(HS, first.length_offset, 0xFFFF), first.length_offset


def extensions_block_overruns_handshake() -> tuple[bytes, int]:
    o = W.extensions_len_offset
    assert o is not None
    old = int.from_bytes(HS[o : o + 2], "big")
    return set_u16(HS, o, old + 2), o


def trailing_bytes_in_supported_groups() -> tuple[bytes, int]:
    e = W.ext(10)
    hs = _with_ext_body(10, e.data + b"\x00\x17")
    return hs, e.data_offset + len(e.data)


def trailing_bytes_after_extensions() -> tuple[bytes, int]:
    return _fix_length(HS + b"\x00\x00"), len(HS)


def server_name_list_overruns_extension() -> tuple[bytes, int]:
    e = W.ext(0)
    return set_u16(HS, e.data_offset, len(e.data) - 2 + 1), e.data_offset


def host_name_overruns_list() -> tuple[bytes, int]:
    e = W.ext(0)
    o = e.data_offset + 3  # list length (2) + name_type (1)
    return set_u16(HS, o, int.from_bytes(HS[o : o + 2], "big") + 5), o


def alpn_name_overruns_list() -> tuple[bytes, int]:
    e = W.ext(16)  # 00 0c 02 'h2' 08 'http/1.1'
    o = e.data_offset + 2 + 3  # the length byte of "http/1.1"
    return set_u8(HS, o, 9), o


def odd_supported_versions_length() -> tuple[bytes, int]:
    e = W.ext(43)  # 04 0304 0303 -> 03 0304 03: the extension length stays consistent
    return _with_ext_body(43, b"\x03\x03\x04\x03"), e.data_offset


def key_share_entry_overruns() -> tuple[bytes, int]:
    e = W.ext(51)  # list len (2), group (2), key len (2) + 32
    o = e.data_offset + 4
    return set_u16(HS, o, 33), o


def handshake_type_server_hello() -> tuple[bytes, int]:
    return set_u8(HS, 0, 2), 0


def handshake_length_16mb() -> tuple[bytes, int]:
    return set_u24(HS, 1, 0xFFFFFF), 1


def non_ascii_host_name() -> tuple[bytes, int]:
    return _with_ext_body(0, server_name_body(b"\xc3\xa9t\xc3\xa9.test")), -1


def duplicate_host_names() -> tuple[bytes, int]:
    return _with_ext_body(0, server_name_body(b"python.test", b"other.test")), -1


@dataclass(frozen=True)
class Case:
    mutate: Callable[[], tuple[bytes, int]]
    error: type[ClientHelloError] | None  # None: parses, and is flagged
    field: str | None  # a substring the error's .field must contain (None: not checked)
    flag: str | None = None  # for odd names: the expected server_name_problems entry


CASES = [
    Case(odd_cipher_suites_length, MalformedHello, "cipher_suites"),
    Case(session_id_over_32, MalformedHello, "session_id"),
    Case(cipher_suites_overrun_handshake, MalformedHello, "cipher_suites"),
    Case(extension_overruns_block, MalformedHello, f"extensions[{len(W.extensions) - 1}]"),
    Case(first_extension_length_ffff, MalformedHello, "extensions[0]"),
    Case(extensions_block_overruns_handshake, MalformedHello, "extensions"),
    Case(trailing_bytes_in_supported_groups, MalformedHello, "supported_groups"),
    Case(trailing_bytes_after_extensions, MalformedHello, None),
    Case(server_name_list_overruns_extension, MalformedHello, "server_name"),
    Case(host_name_overruns_list, MalformedHello, "server_name"),
    Case(alpn_name_overruns_list, MalformedHello, f"extensions[{_ext_index(16)}]"),
    Case(odd_supported_versions_length, MalformedHello, "supported_versions"),
    Case(key_share_entry_overruns, MalformedHello, "key_share"),
    Case(handshake_type_server_hello, NotTLS, None),
    Case(handshake_length_16mb, HelloTooLarge, "handshake.length"),
    Case(non_ascii_host_name, None, None, flag="non-ascii"),
    Case(duplicate_host_names, None, None, flag="multiple host_names"),
]

FRAMINGS: dict[str, Callable[[bytes], bytes]] = {
    "1 record": lambda hs: records(hs, [len(hs)], RECORD_VERSION),
    "3 records": lambda hs: records(hs, [7, 200], RECORD_VERSION),
    "1-byte records": lambda hs: records(hs, [1] * len(hs), RECORD_VERSION),
}


SNI_END = W.ext(0).data_offset + len(W.ext(0).data)  # in HS; python.bin's SNI is first


def _check_error(
    data: bytes,
    error: type[ClientHelloError],
    field: str | None,
    offset: int,
    after_sni: bool = False,
) -> None:
    """parse raises exactly this; so does sni, unless the fault lies after server_name.

    sni() is documented to check every field up to the server_name extension and to
    stop there (the hot path); past it, it may return the name, and then must return
    the right one.
    """
    if after_sni:
        try:
            name = clienthello.sni(data)
        except error:
            pass
        else:
            assert name == "python.test"
    for func in (clienthello.parse,) if after_sni else (clienthello.parse, clienthello.sni):
        with pytest.raises(error) as info:
            func(data)
        exc = info.value
        assert type(exc) is error, (func.__name__, exc)
        assert exc.offset == offset, (func.__name__, str(exc))
        if isinstance(exc, MalformedHello):
            assert isinstance(exc, ValueError)
            if field is not None:
                assert field in exc.field, (func.__name__, str(exc))
            assert str(exc) == f"{exc.reason} in {exc.field} at offset {exc.offset}"


@pytest.mark.parametrize("how", list(FRAMINGS))
@pytest.mark.parametrize("case", CASES, ids=[c.mutate.__name__ for c in CASES])
def test_malformed_handshake(case: Case, how: str) -> None:
    hs, hs_offset = case.mutate()
    data = FRAMINGS[how](hs)
    if case.error is None:
        hello = clienthello.parse(data)
        assert case.flag in hello.server_name_problems
        assert clienthello.sni(data) == hello.server_name
        assert hello.server_name is not None
        return
    # The fault's position in the caller's bytes: walk our own record framing.
    offsets = _body_offsets(data, len(hs))
    _check_error(data, case.error, case.field, offsets[hs_offset], hs_offset >= SNI_END)


def _body_offsets(data: bytes, n: int) -> list[int]:
    """Absolute offset of each handshake byte in a record-framed buffer."""
    out: list[int] = []
    pos = 0
    while len(out) < n and pos + 5 <= len(data):
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        out.extend(range(pos + 5, pos + 5 + length))
        pos += 5 + length
    return out[:n]


# ---- record-level mutations: (record-framed bytes, absolute offset of the fault)


def zero_length_first_record() -> tuple[bytes, int]:
    return b"\x16\x03\x01\x00\x00" + BASE, 3


def zero_length_middle_record() -> tuple[bytes, int]:
    first = records(HS[:100], [100], RECORD_VERSION)
    rest = records(HS[100:], [len(HS) - 100], RECORD_VERSION)
    return first + b"\x16\x03\x01\x00\x00" + rest, len(first) + 3


def record_over_max_length() -> tuple[bytes, int]:
    return set_u16(BASE, 3, 2**14 + 2048 + 1), 3


def record_over_max_length_header_only() -> tuple[bytes, int]:
    return b"\x16\x03\x01" + (2**14 + 2048 + 1).to_bytes(2, "big"), 3


def application_data_inside_fragmented_hello() -> tuple[bytes, int]:
    data = records(HS, [100], RECORD_VERSION)
    return set_u8(data, 105, 23), 105


def handshake_length_16mb_header_only() -> tuple[bytes, int]:
    return b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", 6


def second_record_version_not_3() -> tuple[bytes, int]:
    data = records(HS, [100], RECORD_VERSION)
    return set_u8(data, 106, 0x7F), 106


RECORD_CASES = [
    (zero_length_first_record, MalformedHello, "record[0].length"),
    (zero_length_middle_record, MalformedHello, "record[1].length"),
    (record_over_max_length, MalformedHello, "record[0].length"),
    (record_over_max_length_header_only, MalformedHello, "record[0].length"),
    (application_data_inside_fragmented_hello, MalformedHello, "record[1].type"),
    (second_record_version_not_3, MalformedHello, "record[1]"),
    (handshake_length_16mb_header_only, HelloTooLarge, "handshake.length"),
]


@pytest.mark.parametrize(
    ("mutate", "error", "field"), RECORD_CASES, ids=[c[0].__name__ for c in RECORD_CASES]
)
def test_malformed_records(
    mutate: Callable[[], tuple[bytes, int]], error: type[ClientHelloError], field: str
) -> None:
    data, offset = mutate()
    _check_error(data, error, field, offset)


@pytest.mark.parametrize(
    ("mutate", "error", "field"), RECORD_CASES, ids=[c[0].__name__ for c in RECORD_CASES]
)
def test_reader_refuses_malformed_records(
    mutate: Callable[[], tuple[bytes, int]], error: type[ClientHelloError], field: str
) -> None:
    data, _ = mutate()
    r = clienthello.Reader()
    with pytest.raises(error):
        for i in range(len(data)):
            r.feed(data[i : i + 1])


@pytest.mark.parametrize("case", [c for c in CASES if c.error], ids=lambda c: c.mutate.__name__)
def test_reader_refuses_malformed_handshake(case: Case) -> None:
    hs, _ = case.mutate()
    data = records(hs, [len(hs)], RECORD_VERSION)
    assert case.error is not None
    with pytest.raises(case.error):
        clienthello.Reader().feed(data)


@pytest.mark.parametrize("case", [c for c in CASES if c.error], ids=lambda c: c.mutate.__name__)
def test_parse_handshake_offsets(case: Case) -> None:
    """From a bare handshake message the offset counts from its first byte."""
    hs, hs_offset = case.mutate()
    assert case.error is not None
    with pytest.raises(case.error) as info:
        clienthello.parse_handshake(hs)
    assert info.value.offset == hs_offset, str(info.value)
