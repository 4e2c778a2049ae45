"""clienthello.Reader: incremental feeding gives the hello parse gives, at the right byte.

Every fixture is fed whole, one byte at a time, and re-framed; every proper prefix
leaves the reader waiting (None); `buffered` and `consumed` say what was read.
"""

from __future__ import annotations

import random

import pytest
from helpers import fixture_names, is_sslv2, load, reframe, split_even

import clienthello
from clienthello import HelloTooLarge, MalformedHello, NotTLS, Reader

FIXTURES = fixture_names()


def framings(name: str) -> dict[str, bytes]:
    data = load(name)
    out = {"whole": data}
    if not is_sslv2(data):
        n = len(data) - 5
        out.update(
            {
                "2 records": split_even(data, 2),
                "3 records": split_even(data, 3),
                "5 with 1-byte": reframe(data, [1, 3, 1, n // 2]),
                "all 1-byte": reframe(data, [1] * n),
            }
        )
    return out


@pytest.mark.parametrize("name", FIXTURES)
def test_feed_whole(name: str) -> None:
    for how, data in framings(name).items():
        r = Reader()
        hello = r.feed(data)
        assert hello == clienthello.parse(data), how
        assert r.buffered == data
        assert r.consumed == len(data)


@pytest.mark.parametrize("name", FIXTURES)
def test_feed_one_byte_at_a_time(name: str) -> None:
    for how, data in framings(name).items():
        r = Reader()
        expected = clienthello.parse(data)
        for i in range(len(data) - 1):
            assert r.feed(data[i : i + 1]) is None, (how, i)
        assert r.feed(data[-1:]) == expected, how
        assert r.buffered == data
        assert r.consumed == len(data)


@pytest.mark.parametrize("name", FIXTURES)
def test_every_prefix_returns_none(name: str) -> None:
    data = load(name)
    step = 1 if len(data) < 2048 else 7
    for k in range(1, len(data), step):
        r = Reader()
        assert r.feed(data[:k]) is None, k
        assert r.buffered == data[:k]


@pytest.mark.parametrize("name", FIXTURES)
def test_random_chunks(name: str) -> None:
    rng = random.Random(name)
    for how, data in framings(name).items():
        expected = clienthello.parse(data)
        for _ in range(5):
            r = Reader()
            pos, result = 0, None
            while pos < len(data):
                size = rng.choice([1, 2, 3, 5, 8, 64, 300, 4096])
                result = r.feed(memoryview(data)[pos : pos + size])
                pos += size
                if pos < len(data):
                    assert result is None, (how, pos)
            assert result == expected, how


@pytest.mark.parametrize("name", FIXTURES)
def test_bytes_after_hello(name: str) -> None:
    """The chunk that completes the hello may carry more; consumed marks the end."""
    data = load(name)
    extra = b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x05hello"
    r = Reader()
    assert r.feed(data[:10]) is None
    hello = r.feed(data[10:] + extra)
    assert hello == clienthello.parse(data)
    assert r.consumed == len(data)
    assert r.buffered == data + extra


def test_buffered_is_a_copy() -> None:
    data = bytearray(load("python"))
    r = Reader()
    r.feed(data[:100])
    chunk = bytearray(data[100:200])
    r.feed(chunk)
    chunk[:] = bytes(100)
    assert r.buffered == bytes(data[:200])


@pytest.mark.parametrize(
    "first",
    [b"G", b"GET / HTTP/1.1\r\n", b"\x00", b"SSH-2.0-OpenSSH_9.2\r\n", b"\x17", b"\x16\x02"],
)
def test_not_tls_is_seen_early(first: bytes) -> None:
    r = Reader()
    with pytest.raises(NotTLS):
        for i in range(len(first)):
            r.feed(first[i : i + 1])


def test_not_a_client_hello() -> None:
    """A handshake record carrying a ServerHello (type 2) is not a ClientHello."""
    data = bytearray(load("python"))
    data[5] = 2
    r = Reader()
    with pytest.raises(NotTLS):
        r.feed(bytes(data[:6]))


@pytest.mark.parametrize("name", ["python", "chromium", "sslv2"])
def test_peer_closed_mid_hello(name: str) -> None:
    data = load(name)
    for k in (1, 5, 6, len(data) // 2, len(data) - 1):
        r = Reader()
        assert r.feed(data[:k]) is None
        with pytest.raises(MalformedHello):
            r.feed(b"")


def test_declared_size_over_limit_is_refused_early() -> None:
    """A handshake declared longer than max_size is refused once its header is in."""
    data = load("chromium")  # 1980-byte handshake
    r = Reader(max_size=1024)
    with pytest.raises(HelloTooLarge):
        for i in range(9):  # record header (5) + handshake header (4)
            r.feed(data[i : i + 1])


def test_declared_size_no_hello_can_have_is_refused_under_any_limit() -> None:
    """A length over the largest possible ClientHello fails at once, as in parse.

    A large max_size must not turn it into a wait for bytes that, at EOF,
    would end as "peer closed mid-hello" while parse says HelloTooLarge.
    """
    data = bytearray(load("python"))
    data[6:9] = (196_657).to_bytes(3, "big")  # the handshake length, past 131,396
    with pytest.raises(HelloTooLarge) as one_shot:
        clienthello.parse(bytes(data))
    r = Reader(max_size=1 << 20)
    with pytest.raises(HelloTooLarge) as fed:
        for i in range(9):  # record header (5) + handshake header (4)
            r.feed(data[i : i + 1])
    assert fed.value.field == one_shot.value.field


def test_buffered_size_over_limit() -> None:
    """1-byte records make a 512-byte hello 3 KB on the wire: over a 1 KiB limit."""
    data = reframe(load("python"), [1] * 512)
    r = Reader(max_size=1024)
    with pytest.raises(HelloTooLarge):
        r.feed(data)
    r = Reader(max_size=1024)
    with pytest.raises(HelloTooLarge):
        for i in range(len(data)):
            r.feed(data[i : i + 1])


def test_default_limit_takes_the_big_fixtures() -> None:
    for name in ("chromium", "chrome125"):
        data = load(name)
        assert Reader().feed(data) == clienthello.parse(data)
        many = reframe(data, [200] * 20)
        assert Reader().feed(many) == clienthello.parse(data)


def test_malformed_framing_raises_from_feed() -> None:
    data = load("python")
    zero = b"\x16\x03\x01\x00\x00" + data
    r = Reader()
    with pytest.raises(MalformedHello):
        for i in range(len(zero)):
            r.feed(zero[i : i + 1])


def test_feeding_after_completion() -> None:
    """Once complete, feed returns the same hello again and only records the bytes."""
    data = load("python")
    r = Reader()
    hello = r.feed(data)
    assert hello is not None
    assert r.feed(b"\x17\x03\x03\x00\x01x") is hello
    assert r.buffered == data + b"\x17\x03\x03\x00\x01x"
    assert r.consumed == len(data)
