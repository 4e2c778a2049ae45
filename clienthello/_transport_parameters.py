"""QUIC transport parameters (RFC 9000 §18) as a ClientHello carries them: split and decoded.

The quic_transport_parameters extension (0x39, RFC 9001 §8.2; 0xffa5 in the drafts that
old Chrome and curl still send alongside it) is a run of (id, length, value) with id and
length as QUIC variable-length integers (RFC 9000 §16). `split_transport_parameters`
cuts the run into `TransportParameter` tuples in wire order, and
`TransportParameter.decoded` reads the value of the well-known ones. The model calls
these lazily, on first access, so that `parse` pays nothing for a hello without QUIC.
"""

from __future__ import annotations

from typing import NamedTuple

from clienthello._errors import MalformedHello

__all__ = [
    "TransportParameter",
    "PreferredAddress",
    "TRANSPORT_PARAMETER_NAMES",
    "read_varint",
    "split_transport_parameters",
]

# RFC 9000 §18.2, RFC 9368 §3 (version_information), RFC 9221 §3
# (max_datagram_frame_size), RFC 9287 §3 (grease_quic_bit).
TRANSPORT_PARAMETER_NAMES: dict[int, str] = {
    0x00: "original_destination_connection_id",
    0x01: "max_idle_timeout",
    0x02: "stateless_reset_token",
    0x03: "max_udp_payload_size",
    0x04: "initial_max_data",
    0x05: "initial_max_stream_data_bidi_local",
    0x06: "initial_max_stream_data_bidi_remote",
    0x07: "initial_max_stream_data_uni",
    0x08: "initial_max_streams_bidi",
    0x09: "initial_max_streams_uni",
    0x0A: "ack_delay_exponent",
    0x0B: "max_ack_delay",
    0x0C: "disable_active_migration",
    0x0D: "preferred_address",
    0x0E: "active_connection_id_limit",
    0x0F: "initial_source_connection_id",
    0x10: "retry_source_connection_id",
    0x11: "version_information",
    0x20: "max_datagram_frame_size",
    0x2AB2: "grease_quic_bit",
}
# The parameters whose value is one varint (RFC 9000 §18.2 "This is an integer value").
_INTEGER_PARAMETERS = frozenset(
    {0x01, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0E, 0x20}
)
# Connection IDs are at most 20 bytes in QUIC version 1 (RFC 9000 §17.2).
_CONNECTION_ID_PARAMETERS = frozenset({0x00, 0x0F, 0x10})
_MAX_CONNECTION_ID = 20
_FLAG_PARAMETERS = frozenset({0x0C, 0x2AB2})  # zero-length: presence is the value
_STATELESS_RESET_TOKEN = 16  # RFC 9000 §10.3


class PreferredAddress(NamedTuple):
    """The preferred_address value (RFC 9000 §18.2); a server sends it, a client must not."""

    ipv4_address: bytes
    ipv4_port: int
    ipv6_address: bytes
    ipv6_port: int
    connection_id: bytes
    stateless_reset_token: bytes


class TransportParameter(NamedTuple):
    """One QUIC transport parameter as sent.

    Attributes:
        id: the parameter id (GREASE ids, 31 * N + 27, and unknown ids kept).
        value: the value bytes, without the id and length varints.
        offset: position of the id within ``ClientHello.raw``.
    """

    id: int
    value: bytes
    offset: int = 0

    @property
    def name(self) -> str:
        """The RFC name, ``"GREASE"`` for a reserved id, else ``"unknown (0x..)"``."""
        name = TRANSPORT_PARAMETER_NAMES.get(self.id)
        if name is not None:
            return name
        if self.id >= 27 and (self.id - 27) % 31 == 0:  # RFC 9000 §18.1
            return "GREASE"
        return f"unknown (0x{self.id:x})"

    @property
    def decoded(self) -> int | bool | bytes | tuple[int, ...] | PreferredAddress:
        """The value read by the parameter's type.

        Integers (max_idle_timeout in ms, initial_max_data, ...) give an int;
        disable_active_migration and grease_quic_bit give True; connection IDs and
        stateless_reset_token give bytes; version_information gives the chosen
        version then the available ones; preferred_address a `PreferredAddress`;
        GREASE and unknown parameters their bytes unchanged.

        Raises:
            MalformedHello: the value does not have its type's shape (an integer
                that is not exactly one varint, a flag with a body, ...); the
                offset is that of the parameter in ``ClientHello.raw``.
        """
        pid, value = self.id, self.value
        start = self.offset  # errors point at the parameter, its id varint
        field = f"quic_transport_parameters {self.name}"
        if pid in _INTEGER_PARAMETERS:
            if not value:
                raise MalformedHello(field, "empty integer value", start)
            number, size = read_varint(value, 0, len(value), field, start)
            if size != len(value):
                raise MalformedHello(field, f"{len(value) - size} trailing bytes", start)
            return number
        if pid in _FLAG_PARAMETERS:
            if value:
                raise MalformedHello(field, f"{len(value)} bytes in a zero-length flag", start)
            return True
        if pid in _CONNECTION_ID_PARAMETERS:
            if len(value) > _MAX_CONNECTION_ID:
                raise MalformedHello(
                    field, f"connection ID of {len(value)} bytes exceeds 20", start
                )
            return value
        if pid == 0x02:
            if len(value) != _STATELESS_RESET_TOKEN:
                raise MalformedHello(field, f"{len(value)} bytes, not 16", start)
            return value
        if pid == 0x11:  # RFC 9368 §3: chosen version, then the available versions
            if not value or len(value) % 4:
                raise MalformedHello(field, f"length {len(value)} is not a multiple of 4", start)
            return tuple(int.from_bytes(value[i : i + 4], "big") for i in range(0, len(value), 4))
        if pid == 0x0D:
            return _preferred_address(value, field, start)
        return value


def _preferred_address(value: bytes, field: str, start: int) -> PreferredAddress:
    # IPv4 (4) + port (2) + IPv6 (16) + port (2) + CID length (1), CID, token (16)
    if len(value) < 25:
        raise MalformedHello(field, f"{len(value)} bytes, at least 41 needed", start)
    cid_len = value[24]
    if cid_len > _MAX_CONNECTION_ID:
        raise MalformedHello(field, f"connection ID of {cid_len} bytes exceeds 20", start)
    need = 25 + cid_len + _STATELESS_RESET_TOKEN
    if len(value) != need:
        raise MalformedHello(field, f"{len(value)} bytes, the lengths add up to {need}", start)
    return PreferredAddress(
        value[0:4],
        int.from_bytes(value[4:6], "big"),
        value[6:22],
        int.from_bytes(value[22:24], "big"),
        value[25 : 25 + cid_len],
        value[25 + cid_len :],
    )


def read_varint(buf: bytes, pos: int, end: int, field: str, base: int = 0) -> tuple[int, int]:
    """Read a QUIC variable-length integer (RFC 9000 §16) at ``pos``.

    Args:
        buf, pos, end: the bytes, where the integer starts, where its block ends.
        field: the field name for an error.
        base: the error's offset is ``base`` plus where the varint starts.

    Returns:
        (value, size in bytes: 1, 2, 4 or 8, from the top two bits of the first byte).

    Raises:
        MalformedHello: the integer runs past ``end``.
    """
    if pos >= end:
        raise MalformedHello(field, "varint missing", base + pos)
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > end:
        raise MalformedHello(field, f"{size}-byte varint, {end - pos} bytes left", base + pos)
    value = first & 0x3F
    for i in range(pos + 1, pos + size):
        value = (value << 8) | buf[i]
    return value, size


def split_transport_parameters(
    raw: bytes, start: int, end: int, field: str
) -> tuple[TransportParameter, ...]:
    """Cut ``raw[start:end]`` (an extension body) into its parameters, in wire order.

    Raises:
        MalformedHello: an id or length varint is cut short, or a value overruns the
            extension; ``field`` names the extension, offsets are into ``raw``.
    """
    params: list[TransportParameter] = []
    pos = start
    while pos < end:
        where = f"{field} parameter[{len(params)}]"
        pid, size = read_varint(raw, pos, end, where)
        length, lsize = read_varint(raw, pos + size, end, where)
        body = pos + size + lsize
        if body + length > end:
            raise MalformedHello(
                where,
                f"length {length} overruns its block ({end - body} bytes left)",
                pos + size,
            )
        params.append(TransportParameter(pid, raw[body : body + length], pos))
        pos = body + length
    return tuple(params)
