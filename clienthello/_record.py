"""The record layer: find the ClientHello handshake message in TLS records (or SSLv2).

A ClientHello may be split across any number of handshake records, down to one byte
each (RFC 8446 §5.1). This module checks the record headers, joins the fragments and
remembers where each fragment came from, so that an error found later in the joined
handshake bytes can be reported at its offset in the caller's bytes.
"""

from __future__ import annotations

import struct
from typing import TypeAlias

from clienthello._errors import HelloTooLarge, MalformedHello, NeedMoreData, NotTLS

__all__ = [
    "Buffer",
    "Handshake",
    "MAX_RECORD_LENGTH",
    "MAX_HELLO_LENGTH",
    "read_handshake",
]

Buffer: TypeAlias = "bytes | bytearray | memoryview"

CONTENT_TYPE_HANDSHAKE = 22  # RFC 8446 §5.1
HANDSHAKE_CLIENT_HELLO = 1  # RFC 8446 §4
RECORD_HEADER = 5
HANDSHAKE_HEADER = 4
# RFC 5246 §6.2.3: the largest record a TLS 1.2 peer may send (TLSCiphertext, 2^14 + 2048).
# A handshake record needs no more than 2^14 (§6.2.1); we accept the wider bound, as
# OpenSSL does, and call anything longer malformed.
MAX_RECORD_LENGTH = 2**14 + 2048
# The longest ClientHello body the RFC 8446 §4.1.2 vectors allow: legacy_version 2,
# random 32, legacy_session_id 1+32, cipher_suites 2+65534, legacy_compression_methods
# 1+255, extensions 2+65535. A declared length above it cannot be a ClientHello.
MAX_HELLO_LENGTH = 2 + 32 + 1 + 32 + 2 + 65534 + 1 + 255 + 2 + 65535
# SSLv2 CLIENT-HELLO (RFC 5246 appendix E.2): msg_type, version, three lengths.
SSL2_HEADER = 2
SSL2_MIN_BODY = 9


# content type, version major, (version minor), length
_record_header = struct.Struct("!BBxH").unpack_from


class Handshake:
    """The joined handshake message and the map back to the caller's offsets.

    Attributes:
        data: the handshake message (4-byte header + body), or for SSLv2 the
            CLIENT-HELLO message without its 2-byte record header.
        end: offset in the caller's bytes just past the record that completed it.
        sslv2: whether it came in an SSLv2-compatible record.
    """

    __slots__ = ("_spans", "data", "end", "sslv2")

    def __init__(
        self, data: bytes, end: int, spans: list[tuple[int, int]], sslv2: bool = False
    ) -> None:
        self.data = data
        self.end = end
        self.sslv2 = sslv2
        self._spans = spans  # (offset in data, offset in the caller's bytes)

    def caller_offset(self, offset: int) -> int:
        """Map an offset into ``data`` to the caller's bytes."""
        base_data, base_caller = self._spans[0]
        for start, caller in self._spans:
            if start > offset:
                break
            base_data, base_caller = start, caller
        return base_caller + (offset - base_data)


def check_prefix(data: Buffer) -> None:
    """Raise NotTLS if the first bytes of a stream already rule out a ClientHello."""
    n = len(data)
    if n >= 1:
        first = data[0]
        if first & 0x80:
            _check_sslv2_prefix(data)
        elif first != CONTENT_TYPE_HANDSHAKE:
            raise NotTLS(f"record type {first}, not handshake (22)", 0)
        elif n >= 2 and data[1] != 3:
            raise NotTLS(f"record version major {data[1]}, not 3", 1)


def _check_sslv2_prefix(data: Buffer) -> None:
    n = len(data)
    if n >= 2:
        length = ((data[0] & 0x7F) << 8) | data[1]
        if length < SSL2_MIN_BODY:
            raise NotTLS(f"SSLv2 record length {length} too short for a CLIENT-HELLO", 0)
    if n >= 3 and data[2] != HANDSHAKE_CLIENT_HELLO:
        raise NotTLS(f"SSLv2 message type {data[2]}, not CLIENT-HELLO (1)", 2)
    if n >= 4 and data[3] not in (0, 3):
        raise NotTLS(f"SSLv2 version major {data[3]}, not 0 or 3", 3)
    if n >= 5 and data[3] == 0 and data[4] != 2:
        raise NotTLS(f"SSLv2 version 0x00{data[4]:02x}, not 0x0002", 4)


def read_handshake(data: Buffer, max_size: int = MAX_HELLO_LENGTH + 4) -> Handshake:
    """Find and join the ClientHello handshake message at the start of ``data``.

    Args:
        data: TLS records from the first record header.
        max_size: the largest handshake message (header included) accepted.

    Raises:
        NeedMoreData: the records end before the handshake message does.
        NotTLS: the first record is not a TLS handshake record, or the first handshake
            message is not a ClientHello.
        MalformedHello: a record header is wrong (zero or excessive length, another
            content type in the middle of the message).
        HelloTooLarge: the declared handshake length is over ``max_size``.
    """
    n = len(data)
    if n < RECORD_HEADER:
        check_prefix(data)
        if n >= 1 and data[0] & 0x80:
            return _read_sslv2(data)
        raise NeedMoreData(RECORD_HEADER - n)
    if data[0] & 0x80:
        return _read_sslv2(data)
    check_prefix(data)

    parts: list[bytes] = []
    spans: list[tuple[int, int]] = []
    have = 0
    total = -1  # handshake message length, header included, once known
    pos = 0
    index = 0
    while True:
        if pos + RECORD_HEADER > n:
            needed = pos + RECORD_HEADER - n
            if total >= 0:
                needed = max(needed, total - have + RECORD_HEADER - (n - pos))
            raise NeedMoreData(needed)
        ctype, major, length = _record_header(data, pos)
        if (
            ctype != CONTENT_TYPE_HANDSHAKE
            or major != 3
            or length == 0
            or length > MAX_RECORD_LENGTH
        ):
            raise _bad_record(ctype, major, length, pos, index)
        body = pos + RECORD_HEADER
        stop = min(n, body + length)
        spans.append((have, body))
        parts.append(bytes(data[body:stop]))
        have += stop - body
        if index == 0 and have and data[body] != HANDSHAKE_CLIENT_HELLO:
            raise NotTLS(f"handshake type {data[body]}, not ClientHello (1)", body)
        if total < 0 and have >= HANDSHAKE_HEADER:
            head = b"".join(parts)[:HANDSHAKE_HEADER] if len(parts) > 1 else parts[0]
            total = _check_handshake_header(head, spans, max_size)
        if total >= 0 and have >= total:
            joined = parts[0] if len(parts) == 1 else b"".join(parts)
            return Handshake(joined[:total], body + length, spans)
        if stop < body + length:
            record_rest = body + length - stop
            needed = record_rest
            if total >= 0 and total - have > record_rest:
                needed = total - have + RECORD_HEADER
            elif total < 0 and have < HANDSHAKE_HEADER:
                needed = max(record_rest, HANDSHAKE_HEADER - have)
            raise NeedMoreData(needed)
        pos = body + length
        index += 1


def _bad_record(ctype: int, major: int, length: int, pos: int, index: int) -> MalformedHello:
    """The error for a record header that cannot continue a handshake message."""
    if ctype != CONTENT_TYPE_HANDSHAKE:
        return MalformedHello(
            f"record[{index}].type",
            f"record type {ctype} inside a fragmented handshake message",
            pos,
        )
    if major != 3:
        return MalformedHello(
            f"record[{index}].legacy_record_version", f"version major {major}, not 3", pos + 1
        )
    if length == 0:
        return MalformedHello(f"record[{index}].length", "zero-length handshake record", pos + 3)
    return MalformedHello(
        f"record[{index}].length",
        f"record length {length} exceeds {MAX_RECORD_LENGTH}",
        pos + 3,
    )


def _check_handshake_header(head: bytes, spans: list[tuple[int, int]], max_size: int) -> int:
    """Check the 4-byte handshake header; return the message length, header included."""
    msg_type = head[0]
    if msg_type != HANDSHAKE_CLIENT_HELLO:
        raise NotTLS(f"handshake type {msg_type}, not ClientHello (1)", spans[0][1])
    length = (head[1] << 16) | (head[2] << 8) | head[3]
    total = HANDSHAKE_HEADER + length
    if total > max_size or length > MAX_HELLO_LENGTH:
        offset = Handshake(b"", 0, spans).caller_offset(1)
        limit = min(max_size - HANDSHAKE_HEADER, MAX_HELLO_LENGTH)
        raise HelloTooLarge(
            "handshake.length",
            f"declared length {length} exceeds the limit of {limit}",
            offset,
        )
    return total


def _read_sslv2(data: Buffer) -> Handshake:
    """An SSLv2-compatible CLIENT-HELLO record (RFC 5246 appendix E.2)."""
    _check_sslv2_prefix(data)
    n = len(data)
    if n < SSL2_HEADER:
        raise NeedMoreData(SSL2_HEADER - n)
    length = ((data[0] & 0x7F) << 8) | data[1]
    end = SSL2_HEADER + length
    if n < end:
        raise NeedMoreData(end - n)
    return Handshake(bytes(data[SSL2_HEADER:end]), end, [(0, SSL2_HEADER)], sslv2=True)
