"""QUIC packets built, not read: client and server Initials, Retry, CONNECTION_CLOSE.

For tests, capture generators and the router, which refuses a client with a server
Initial carrying CONNECTION_CLOSE (the Initial keys are public). `clienthello.quic`
re-exports these names.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from clienthello._quic_crypto import (
    SAMPLE_LENGTH,
    TAG_LENGTH,
)
from clienthello._quic_packet import (
    FRAME_ACK,
    FRAME_ACK_ECN,
    FRAME_CONNECTION_CLOSE,
    FRAME_CRYPTO,
    MAX_CID_LENGTH,
    MIN_INITIAL_DATAGRAM,
    PacketType,
    encode_varint,
    initial_protection,
    retry_integrity_tag,
    version_spec,
)

# -- building -----------------------------------------------------------------------


def crypto_frame(offset: int, data: bytes) -> bytes:
    """A CRYPTO frame (RFC 9000 §19.6) carrying ``data`` at stream ``offset``."""
    return bytes([FRAME_CRYPTO]) + encode_varint(offset) + encode_varint(len(data)) + data


def ack_frame(
    largest: int,
    delay: int = 0,
    first_range: int = 0,
    ranges: Iterable[tuple[int, int]] = (),
    ecn: tuple[int, int, int] | None = None,
) -> bytes:
    """An ACK frame (RFC 9000 §19.3); with ``ecn`` counts, type 0x03.

    Args:
        largest: Largest Acknowledged.
        delay: ACK Delay.
        first_range: First ACK Range.
        ranges: further (Gap, ACK Range Length) pairs.
        ecn: (ECT0, ECT1, ECN-CE) counts, or None for a plain ACK.
    """
    pairs = list(ranges)
    out = bytes([FRAME_ACK if ecn is None else FRAME_ACK_ECN])
    out += encode_varint(largest) + encode_varint(delay) + encode_varint(len(pairs))
    out += encode_varint(first_range)
    for gap, length in pairs:
        out += encode_varint(gap) + encode_varint(length)
    if ecn is not None:
        out += b"".join(encode_varint(count) for count in ecn)
    return out


def connection_close_frame(error_code: int, frame_type: int = 0, reason: bytes = b"") -> bytes:
    """A transport CONNECTION_CLOSE frame, type 0x1c (RFC 9000 §19.19)."""
    return (
        bytes([FRAME_CONNECTION_CLOSE])
        + encode_varint(error_code)
        + encode_varint(frame_type)
        + encode_varint(len(reason))
        + reason
    )


def build_initial(
    version: int,
    destination_cid: bytes,
    source_cid: bytes,
    frames: Iterable[bytes],
    *,
    token: bytes = b"",
    packet_number: int = 0,
    packet_number_length: int = 4,
    original_destination_cid: bytes | None = None,
    is_client: bool = True,
    pad_to: int = MIN_INITIAL_DATAGRAM,
) -> bytes:
    """Build one protected Initial packet (RFC 9000 §17.2.2, RFC 9001 §5).

    Args:
        version: a version in `VERSIONS`.
        destination_cid, source_cid: the packet's connection IDs.
        frames: encoded frames (`crypto_frame`, `PING_FRAME`, `ack_frame`, ...),
            concatenated into the payload in this order.
        token: the token (a server's Initial has none).
        packet_number: the full packet number.
        packet_number_length: how many bytes of it to send (1 to 4).
        original_destination_cid: the DCID the keys come from (the client's first
            DCID, or the Retry's); by default ``destination_cid``.
        is_client: protect with the client's keys (True) or the server's.
        pad_to: append PADDING until the packet is this long (1200 for a client's
            datagram, RFC 9000 §14.1; 0 for none).

    Returns:
        The protected packet, ready to send or to coalesce with others.

    Raises:
        ValueError: the version is unknown or an argument is out of range.
    """
    spec = version_spec(version)
    if not 1 <= packet_number_length <= 4 or not 0 <= packet_number < 1 << 62:
        raise ValueError("packet number out of range")
    if len(destination_cid) > MAX_CID_LENGTH or len(source_cid) > MAX_CID_LENGTH:
        raise ValueError("connection IDs are at most 20 bytes")
    payload = b"".join(frames)
    pn_length = packet_number_length
    first = 0xC0 | (spec.type_bits(PacketType.INITIAL) << 4) | (pn_length - 1)
    head = (
        struct.pack("!BI", first, version)
        + bytes([len(destination_cid)]) + destination_cid
        + bytes([len(source_cid)]) + source_cid
        + encode_varint(len(token)) + token
    )  # fmt: skip
    # Length is always sent as 2 bytes (4 beyond 16383), so the size is known up front.
    length_size = 2 if pn_length + len(payload) + TAG_LENGTH + pad_to < 0x4000 else 4
    size = len(head) + length_size + pn_length + len(payload) + TAG_LENGTH
    padding = max(pad_to - size, 4 - pn_length - len(payload), 0)  # room for the sample
    payload += bytes(padding)
    length = pn_length + len(payload) + TAG_LENGTH
    if length >= 1 << 30:
        raise ValueError("Initial payload too large")
    length_field = (
        struct.pack("!H", length | 0x4000)
        if length_size == 2
        else struct.pack("!I", length | 0x80000000)
    )
    truncated = packet_number & ((1 << (8 * pn_length)) - 1)
    pn_bytes = truncated.to_bytes(pn_length, "big")
    header = head + length_field + pn_bytes
    key_dcid = destination_cid if original_destination_cid is None else original_destination_cid
    protection = initial_protection(version, bytes(key_dcid), is_client)
    ciphertext = protection.encrypt(packet_number, header, payload)
    sample_at = 4 - pn_length
    mask = protection.mask(ciphertext[sample_at : sample_at + SAMPLE_LENGTH])
    protected_pn = (truncated ^ int.from_bytes(mask[1 : 1 + pn_length], "big")).to_bytes(
        pn_length, "big"
    )
    return (
        bytes([first ^ (mask[0] & 0x0F)])
        + header[1 : len(header) - pn_length]
        + protected_pn
        + ciphertext
    )


def build_retry(
    version: int,
    original_destination_cid: bytes,
    destination_cid: bytes,
    source_cid: bytes,
    token: bytes,
    unused_bits: int = 0x0F,
) -> bytes:
    """Build a Retry packet with its integrity tag (RFC 9000 §17.2.5, RFC 9001 §5.8).

    Args:
        version: a version in `VERSIONS`.
        original_destination_cid: the DCID of the client's Initial (for the tag).
        destination_cid: the client's Source Connection ID.
        source_cid: the connection ID the client is to use from now on (its new
            DCID, from which the new Initial keys come).
        token: the address validation token the client must send back.
        unused_bits: the low four bits of the first byte (random on the wire; 0xf
            reproduces the RFC 9001 and RFC 9369 examples).

    Raises:
        ValueError: the version is unknown or a connection ID is over 20 bytes.
    """
    spec = version_spec(version)
    if len(destination_cid) > MAX_CID_LENGTH or len(source_cid) > MAX_CID_LENGTH:
        raise ValueError("connection IDs are at most 20 bytes")
    first = 0xC0 | (spec.type_bits(PacketType.RETRY) << 4) | (unused_bits & 0x0F)
    packet = (
        struct.pack("!BI", first, version)
        + bytes([len(destination_cid)]) + destination_cid
        + bytes([len(source_cid)]) + source_cid
        + token
    )  # fmt: skip
    return packet + retry_integrity_tag(version, original_destination_cid, packet)


def build_connection_close(
    version: int,
    original_destination_cid: bytes,
    client_source_cid: bytes,
    server_source_cid: bytes,
    error_code: int,
    reason: bytes = b"",
    *,
    packet_number: int = 0,
    frame_type: int = FRAME_CRYPTO,
) -> bytes:
    """A server Initial datagram that closes the connection (RFC 9000 §10.2.3).

    What a router sends to refuse a client before any handshake: the server's
    Initial keys, one CONNECTION_CLOSE frame (type 0x1c). For a TLS alert use
    ``CRYPTO_ERROR_BASE + alert``, e.g. 0x170 for unrecognized_name (RFC 9001 §4.8).

    Args:
        version: the client's version (in `VERSIONS`).
        original_destination_cid: the DCID of the client's first Initial.
        client_source_cid: the client's SCID (this packet's DCID).
        server_source_cid: the server's connection ID (this packet's SCID).
        error_code: the transport error code.
        reason: the reason phrase.
        packet_number: the server's Initial packet number.
        frame_type: the frame type that caused the error (CRYPTO by default).

    Raises:
        ValueError: the version is unknown or an argument is out of range.
    """
    return build_initial(
        version,
        client_source_cid,
        server_source_cid,
        [connection_close_frame(error_code, frame_type, reason)],
        packet_number=packet_number,
        original_destination_cid=original_destination_cid,
        is_client=False,
        pad_to=0,
    )
