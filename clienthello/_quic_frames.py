"""The frames of a QUIC Initial packet's payload: CRYPTO frames out, the rest checked.

RFC 9000 §12.4 allows PADDING, PING, ACK, CRYPTO and CONNECTION_CLOSE in an Initial;
`crypto_frames` reads each, returns the CRYPTO frames' offsets and data, and refuses
any other frame type. Errors name the datagram, packet and frame, and their offsets
are into the datagram.
"""

from __future__ import annotations

from clienthello._errors import MalformedHello
from clienthello._quic_packet import (
    FRAME_ACK,
    FRAME_ACK_ECN,
    FRAME_CONNECTION_CLOSE,
    FRAME_CRYPTO,
    FRAME_PADDING,
    FRAME_PING,
    NON_ZERO,
    read_varint,
)

__all__ = ["crypto_frames"]


def crypto_frames(payload: bytes, base: int, where: str) -> list[tuple[int, bytes, int]]:
    """The CRYPTO frames of an Initial's payload: ``(offset, data, datagram offset)``.

    PADDING, PING, ACK and CONNECTION_CLOSE are read and skipped; any other frame
    type may not be in an Initial (RFC 9000 §12.4) and is a `MalformedHello`.
    ``base`` is the payload's offset in the datagram, for error offsets.
    """
    found: list[tuple[int, bytes, int]] = []
    n = len(payload)
    # Where the trailing zeros start (one C call): PADDING from there on, most of a
    # client's first Initial, is skipped without scanning it.
    zeros_from = len(payload.rstrip(b"\x00"))
    pos = 0
    number = 0
    while pos < n:
        frame_type = payload[pos]
        if frame_type == FRAME_PADDING:
            if pos >= zeros_from:
                break
            match = NON_ZERO.search(payload, pos)
            pos = n if match is None else match.start()
            continue
        start = pos
        pos += 1
        number += 1
        if frame_type == FRAME_CRYPTO:
            offset, pos = _varint(payload, pos, n, where, number - 1, "offset")
            length, pos = _varint(payload, pos, n, where, number - 1, "length")
            if length > n - pos:
                _check_fits(length, pos, n, f"{where} frame {number - 1} CRYPTO data", base)
            found.append((offset, payload[pos : pos + length], base + start))
            pos += length
        elif frame_type == FRAME_PING:
            pass
        else:
            field = f"{where} frame {number - 1}"
            pos = _other_frame(payload, pos, n, field, frame_type, base, start)
    return found


def _varint(
    payload: bytes, pos: int, n: int, where: str, number: int, name: str
) -> tuple[int, int]:
    """A CRYPTO frame's offset or length: `read_varint`, with the 1- and 2-byte forms
    (almost all of them) read here and the error's field name built only on error."""
    if pos < n:
        first = payload[pos]
        if first < 0x40:
            return first, pos + 1
        if first < 0x80 and pos + 2 <= n:
            return ((first & 0x3F) << 8) | payload[pos + 1], pos + 2
    return read_varint(payload, pos, n, f"{where} frame {number} CRYPTO {name}")


def _other_frame(
    payload: bytes, pos: int, n: int, field: str, frame_type: int, base: int, start: int
) -> int:
    """Skip an ACK or CONNECTION_CLOSE frame after its type; refuse any other frame."""
    if frame_type in (FRAME_ACK, FRAME_ACK_ECN):
        return _skip_ack(payload, pos, n, field, frame_type == FRAME_ACK_ECN, base)
    if frame_type == FRAME_CONNECTION_CLOSE:
        _, pos = read_varint(payload, pos, n, f"{field} CONNECTION_CLOSE error_code")
        _, pos = read_varint(payload, pos, n, f"{field} CONNECTION_CLOSE frame_type")
        length, pos = read_varint(payload, pos, n, f"{field} CONNECTION_CLOSE reason_length")
        _check_fits(length, pos, n, f"{field} CONNECTION_CLOSE reason_phrase", base)
        return pos + length
    raise MalformedHello(
        field, f"frame type 0x{frame_type:02x} not allowed in an Initial", base + start
    )


def _check_fits(length: int, pos: int, n: int, field: str, base: int) -> None:
    """A frame's ``length`` bytes from ``pos`` must fit in the ``n``-byte payload."""
    if length > n - pos:
        raise MalformedHello(
            field, f"length {length} overruns the packet ({n - pos} bytes left)", base + pos
        )


def _skip_ack(payload: bytes, pos: int, n: int, field: str, ecn: bool, base: int) -> int:
    """Skip an ACK frame's fields after its type (RFC 9000 §19.3)."""
    try:
        for name in ("largest_acknowledged", "ack_delay"):
            _, pos = read_varint(payload, pos, n, f"{field} ACK {name}")
        count, pos = read_varint(payload, pos, n, f"{field} ACK range_count")
        _, pos = read_varint(payload, pos, n, f"{field} ACK first_ack_range")
        # Each range is two varints of at least one byte: a count that cannot fit is
        # rejected before looping, so a 2**62 count costs nothing.
        if count > (n - pos) // 2:
            raise MalformedHello(
                f"{field} ACK range_count",
                f"{count} ranges cannot fit in {n - pos} bytes",
                pos,
            )
        for _ in range(count):
            _, pos = read_varint(payload, pos, n, f"{field} ACK gap")
            _, pos = read_varint(payload, pos, n, f"{field} ACK ack_range_length")
        if ecn:
            for name in ("ect0_count", "ect1_count", "ecn_ce_count"):
                _, pos = read_varint(payload, pos, n, f"{field} ACK {name}")
    except MalformedHello as err:
        raise err.moved(base + err.offset) from None
    return pos
