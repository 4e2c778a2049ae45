"""parse(data, partial=True): a hello cut short or malformed gives what was read before.

Every proper prefix of every fixture (tests/data and captures/hellos) is parsed
partially and compared field by field with the full parse; malformed hellos give the
fields up to the fault and the very error the strict parse raises.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from helpers import (
    build_handshake,
    fixture_names,
    handshake_bytes,
    is_sslv2,
    layout,
    load,
    records,
    replace_extension,
    set_u16,
    split_even,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import clienthello
from clienthello import ClientHello, ClientHelloError, MalformedHello, NeedMoreData, NotTLS

CAPTURED = Path(__file__).resolve().parents[1] / "captures" / "hellos"
FIELDS = (
    "legacy_version",
    "random",
    "legacy_session_id",
    "cipher_suites",
    "legacy_compression_methods",
)
TYPED = (
    "server_name", "server_name_raw", "server_name_problems", "alpn_protocols",
    "supported_versions", "supported_groups", "signature_algorithms", "ec_point_formats",
    "key_share_groups", "psk_key_exchange_modes", "has_pre_shared_key", "ech",
)  # fmt: skip


def _samples() -> dict[str, bytes]:
    out = {n: load(n) for n in fixture_names() if not is_sslv2(load(n))}
    for path in sorted(CAPTURED.glob("*.bin")):
        data = path.read_bytes()
        with contextlib.suppress(NotTLS):  # the server's and the CCS-first files
            clienthello.parse(data)
            out[f"captures/{path.stem}"] = data
    return out


SAMPLES = _samples()


def assert_consistent(part: ClientHello, full: ClientHello) -> None:
    """Every field the partial hello read equals the full parse's."""
    assert not part.complete and part.error is not None
    for name in FIELDS:
        if name not in part.missing:
            assert getattr(part, name) == getattr(full, name), name
    n = len(part.extensions)
    assert part.extensions == full.extensions[:n]
    if "extensions" not in part.missing:
        assert n == len(full.extensions)
    seen = set(part.extension_types)
    for name, ext_type in (
        ("server_name", 0), ("alpn_protocols", 16), ("supported_versions", 43),
        ("supported_groups", 10), ("signature_algorithms", 13), ("ec_point_formats", 11),
        ("key_share_groups", 51), ("psk_key_exchange_modes", 45), ("ech", 0xFE0D),
    ):  # fmt: skip
        if ext_type in seen:
            assert getattr(part, name) == getattr(full, name), name
        else:
            assert getattr(part, name) is None, name
    assert full.raw.startswith(part.raw)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_prefix(name: str) -> None:
    data = SAMPLES[name]
    full = clienthello.parse(data)
    step = 1 if len(data) < 2048 else 3
    last_missing = len(FIELDS) + 1
    for k in range(0, len(data), step):
        part = clienthello.parse(data[:k], partial=True)
        assert isinstance(part.error, NeedMoreData)
        with pytest.raises(NeedMoreData) as info:
            clienthello.parse(data[:k])
        assert part.error.needed == info.value.needed
        assert_consistent(part, full)
        # Longer prefixes never read fewer fields.
        assert len(part.missing) <= last_missing
        last_missing = len(part.missing)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_prefix_of_reframed(name: str) -> None:
    data = split_even(SAMPLES[name], 3)
    full = clienthello.parse(data)
    for k in range(0, len(data), 7):
        assert_consistent(clienthello.parse(data[:k], partial=True), full)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_parse_handshake_prefixes(name: str) -> None:
    hs = handshake_bytes(SAMPLES[name])
    full = clienthello.parse_handshake(hs)
    for k in range(0, len(hs), 5):
        assert_consistent(clienthello.parse_handshake(hs[:k], partial=True), full)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_complete_hello_is_unchanged(name: str) -> None:
    data = SAMPLES[name]
    hello = clienthello.parse(data, partial=True)
    assert hello == clienthello.parse(data)
    assert hello.complete and hello.error is None and hello.missing == ()


def test_sni_from_a_cut_hello() -> None:
    """A hello cut after its server_name (a snaplen, a closed peer) still names it."""
    data = load("chromium")
    full = clienthello.parse(data)
    ext = next(e for e in full.extensions if e.type == 0)
    cut = data[: 5 + ext.offset + 4 + len(ext.data) + 1]
    part = clienthello.parse(cut, partial=True)
    assert part.server_name == "chromium.test"
    assert part.missing == ("extensions",)
    assert part.cipher_suites == full.cipher_suites
    with pytest.raises(NeedMoreData):
        clienthello.sni(cut)


def test_nothing_read() -> None:
    part = clienthello.parse(b"", partial=True)
    assert part.missing == (*FIELDS, "extensions") and part.legacy_version == 0
    assert part.random == b"" and part.cipher_suites == () and part.extensions == ()
    assert part.server_name is None
    assert "complete=False" in repr(part)


def test_not_tls_still_raises() -> None:
    with pytest.raises(NotTLS):
        clienthello.parse(b"GET / HTTP/1.1\r\n", partial=True)
    with pytest.raises(NotTLS):
        clienthello.parse_handshake(b"\x02\x00\x00\x00", partial=True)


def _python_hs() -> bytes:
    return handshake_bytes(load("python"))


def _odd_ciphers() -> bytes:
    hs = _python_hs()
    cs = 4 + 2 + 32 + 1 + hs[38]
    return set_u16(hs, cs, int.from_bytes(hs[cs : cs + 2], "big") - 1)


def _bad_groups() -> bytes:
    return handshake_bytes(replace_extension(load("python"), 10, b"\x00\x05\x00\x1d\x00"))


def _session_id_too_long() -> bytes:
    hs = _python_hs()
    return hs[:38] + b"\x21" + hs[39:]


def _trailing() -> bytes:
    hs = build_handshake(extensions=[(0, b"")]) + b"\x00"
    return hs[:1] + (len(hs) - 4).to_bytes(3, "big") + hs[4:]


MALFORMED = [
    # (handshake bytes, fields still missing, extension types read)
    (_odd_ciphers(), ("cipher_suites", "legacy_compression_methods", "extensions"), ()),
    (_session_id_too_long(), (*FIELDS[2:], "extensions"), ()),
    (_bad_groups(), ("extensions",), (0, 11)),
    (_trailing(), (), (0,)),
]


@pytest.mark.parametrize(("hs", "missing", "types"), MALFORMED)
def test_malformed_fields_up_to_the_fault(
    hs: bytes, missing: tuple[str, ...], types: tuple[int, ...]
) -> None:
    data = records(hs, [len(hs)])
    with pytest.raises(MalformedHello) as info:
        clienthello.parse(data)
    part = clienthello.parse(data, partial=True)
    err = part.error
    assert isinstance(err, MalformedHello)
    assert (type(err), err.field, err.reason, err.offset) == (
        type(info.value), info.value.field, info.value.reason, info.value.offset,
    )  # fmt: skip
    assert part.missing == missing
    assert part.extension_types == types
    w = layout(_python_hs()) if hs[4:38] == _python_hs()[4:38] else None
    if w is not None:
        assert part.legacy_version == w.legacy_version and part.random == w.random
    # The same through parse_handshake.
    assert clienthello.parse_handshake(hs, partial=True).missing == missing


def test_bad_record_mid_hello() -> None:
    """A record of another type in the middle: the handshake bytes before it are read."""
    data = split_even(load("python"), 2)
    second = 5 + int.from_bytes(data[3:5], "big")
    broken = data[:second] + b"\x17" + data[second + 1 :]
    part = clienthello.parse(broken, partial=True)
    assert isinstance(part.error, MalformedHello) and part.error.field == "record[1].type"
    full = clienthello.parse(data)
    assert_consistent(part, full)
    assert part.server_name == "python.test"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.binary(max_size=64), st.integers(0, 2000))
def test_random_tails(name: str, tail: bytes, cut: int) -> None:
    data = SAMPLES[name]
    data = data[: min(cut, len(data))] + tail
    try:
        part = clienthello.parse(data, partial=True)
    except NotTLS:
        return
    try:
        strict = clienthello.parse(data)
    except (NeedMoreData, MalformedHello) as err:
        assert not part.complete and type(part.error) is type(err)
    else:
        assert part == strict and part.complete


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_bit_flips(data: st.DataObject) -> None:
    raw = bytearray(SAMPLES[data.draw(st.sampled_from(sorted(SAMPLES)))])
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    with contextlib.suppress(NotTLS):
        part = clienthello.parse(bytes(raw), partial=True)
        assert isinstance(part, ClientHello)
        assert part.complete == (part.error is None)
        if part.error is not None:
            assert isinstance(part.error, ClientHelloError)
