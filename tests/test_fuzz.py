"""Property tests (hypothesis): no input breaks the parser, and its three entry points agree.

The invariant (STYLE.md §2, h11's fuzz/afl-server.py): every input either parses or
raises a ClientHelloError; never IndexError, struct.error, UnicodeDecodeError,
RecursionError or AssertionError. Where parse and sni both succeed they give the same
name, and Reader.feed, whatever the chunking, gives what parse gives.
"""

from __future__ import annotations

import itertools

from helpers import fixture_names, is_sslv2, load, reframe
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import clienthello
from clienthello import ClientHello, ClientHelloError, NeedMoreData

FIXTURES = {name: load(name) for name in fixture_names()}
TLS_FIXTURES = sorted(n for n, d in FIXTURES.items() if not is_sslv2(d))
FUZZ = settings(
    deadline=None,
    max_examples=1000,
    derandomize=True,  # the same examples on every run: CI stays reproducible
    database=None,  # so no .hypothesis/ folder is left in the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
READER_LIMIT = 1 << 20  # above any declared length parse accepts, so both judge alike


def outcome(data: bytes) -> ClientHello | ClientHelloError:
    """parse(data), or the ClientHelloError it raised; anything else propagates."""
    try:
        hello = clienthello.parse(data)
    except ClientHelloError as exc:
        return exc
    assert isinstance(hello, ClientHello)
    return hello


def check(data: bytes) -> ClientHello | ClientHelloError:
    """The invariant for one input: parse and sni keep it, and agree."""
    result = outcome(data)
    try:
        name = clienthello.sni(data)
    except ClientHelloError as exc:
        if isinstance(result, ClientHello):
            # sni may stop at server_name (fields after it are parse's business),
            # but it must not fail on a hello that parses.
            raise AssertionError(f"sni raised {exc!r} on a hello parse accepts") from exc
    else:
        if isinstance(result, ClientHello):
            assert name == result.server_name
    return result


def feed_in_chunks(data: bytes, cuts: list[int]) -> ClientHello | ClientHelloError | None:
    """Reader.feed over ``data`` split at ``cuts``, then EOF if still incomplete."""
    reader = clienthello.Reader(max_size=READER_LIMIT)
    bounds = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    try:
        for a, b in itertools.pairwise(bounds):
            if a == b:
                continue
            hello = reader.feed(data[a:b])
            if hello is not None:
                assert reader.buffered == data[:b]
                # consumed ends the record that completed the hello; that record may
                # declare bytes not yet fed (the hello is complete before it is).
                assert reader.consumed > 0
                return hello
        return reader.feed(b"")  # peer closed: must raise, the hello is incomplete
    except ClientHelloError as exc:
        return exc


def assert_reader_agrees(data: bytes, cuts: list[int]) -> None:
    expected = outcome(data)
    got = feed_in_chunks(data, cuts)
    if isinstance(expected, ClientHello):
        assert got == expected
    elif isinstance(expected, NeedMoreData):
        assert isinstance(got, clienthello.MalformedHello), got  # closed mid-hello
    else:
        assert type(got) is type(expected), (got, expected)


fixture = st.sampled_from(sorted(FIXTURES))


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.binary(min_size=5, max_size=600))
def test_random_bytes_behind_a_handshake_record_header(data: bytes) -> None:
    check(b"\x16\x03\x01" + data)
    check(b"\x16\x03\x01" + len(data).to_bytes(2, "big") + b"\x01" + data)


@FUZZ
@given(fixture, st.integers(min_value=0), st.binary(max_size=300))
def test_fixture_prefix_plus_random(name: str, cut: int, tail: bytes) -> None:
    data = FIXTURES[name]
    check(data[: cut % (len(data) + 1)] + tail)


@FUZZ
@given(fixture, st.lists(st.integers(min_value=0), min_size=1, max_size=8))
def test_bit_flips(name: str, bits: list[int]) -> None:
    data = bytearray(FIXTURES[name])
    for bit in bits:
        pos = bit % (len(data) * 8)
        data[pos // 8] ^= 1 << (pos % 8)
    check(bytes(data))


@FUZZ
@given(fixture, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_byte_overwrites(name: str, where: int, value: int) -> None:
    data = bytearray(FIXTURES[name])
    data[where % len(data)] = value
    check(bytes(data))


@FUZZ
@given(fixture, st.integers(min_value=0))
def test_truncated(name: str, cut: int) -> None:
    data = FIXTURES[name]
    k = cut % len(data)
    result = check(data[:k])
    assert isinstance(result, NeedMoreData)


@FUZZ
@given(st.sampled_from(TLS_FIXTURES), st.lists(st.integers(1, 600), max_size=12))
def test_random_reframing(name: str, sizes: list[int]) -> None:
    data = FIXTURES[name]
    framed = reframe(data, sizes)
    result = check(framed)
    assert result == clienthello.parse(data)


@FUZZ
@given(
    st.sampled_from(TLS_FIXTURES),
    st.lists(st.integers(1, 300), max_size=8),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_reader_chunks_agree_on_reframed(name: str, sizes: list[int], cuts: list[int]) -> None:
    framed = reframe(FIXTURES[name], sizes)
    assert_reader_agrees(framed, cuts)


@FUZZ
@given(
    fixture,
    st.lists(st.integers(min_value=0), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0), max_size=20),
)
# A flipped bit makes the declared length 196,657: more than any hello can be. parse
# refused it; a Reader with a 1 MiB limit waited for the bytes and, at EOF, said
# "peer closed mid-hello". It now refuses it at once, as parse does.
@example("tls10-noext", [512, 137438953473], [])
def test_reader_chunks_agree_on_damaged(name: str, bits: list[int], cuts: list[int]) -> None:
    data = bytearray(FIXTURES[name])
    for bit in bits:
        pos = bit % (len(data) * 8)
        data[pos // 8] ^= 1 << (pos % 8)
    check(bytes(data))
    assert_reader_agrees(bytes(data), cuts)


@FUZZ
@given(st.binary(max_size=64), st.lists(st.integers(min_value=0), max_size=10))
def test_reader_on_random_bytes(data: bytes, cuts: list[int]) -> None:
    if data:
        assert_reader_agrees(data, cuts)
