"""QUIC packets without decryption: versions, Initial keys, headers, varints (RFC 9000/9001/9369).

What differs between versions is one table, `VERSIONS`; everything here reads or derives
bytes and needs no connection state. `clienthello.quic` re-exports the public names.
"""

from __future__ import annotations

import enum
import functools
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from clienthello._errors import MalformedHello
from clienthello._quic_crypto import (
    HASH_LENGTH,
    IV_LENGTH,
    KEY_LENGTH,
    SAMPLE_LENGTH,
    TAG_LENGTH,
    PacketProtection,
    aead_tag,
    hkdf_expand_label,
    hkdf_expand_labels,
    hkdf_extract,
)
from clienthello._record import Buffer

QUIC_V1 = 0x00000001  # RFC 9000 §15
QUIC_V2 = 0x6B3343CF  # RFC 9369 §3.1
QUIC_DRAFT_29 = 0xFF00001D  # draft-ietf-quic-transport-29; drafts are 0xff0000NN

MAX_CID_LENGTH = 20  # RFC 9000 §17.2: a v1 connection ID is at most 20 bytes
# RFC 9000 §14.1: a client pads every datagram carrying an Initial to 1200 bytes.
MIN_INITIAL_DATAGRAM = 1200
# RFC 9000 §20.1: CRYPTO_ERROR is 0x100 plus the TLS alert (0x170: unrecognized_name).
CRYPTO_ERROR_BASE = 0x100
# A ClientHello with a post-quantum key share is under 2 KB; 64 KiB leaves a wide margin
# and is what `clienthello.dtls` allows too.
DEFAULT_MAX_CRYPTO_BYTES = 64 * 1024
# Chrome sends its hello in 1 to 3 Initials; 32 packets without a complete hello is an
# attack or a capture of something else, not a slow client.
DEFAULT_MAX_PACKETS = 32

# Frame types allowed in an Initial packet (RFC 9000 §12.4, table 3).
FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CONNECTION_CLOSE = 0x1C

PING_FRAME = bytes([FRAME_PING])

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
_u64 = struct.Struct("!Q").unpack_from
NON_ZERO = re.compile(rb"[^\x00]")
_MAX_VARINT = (1 << 62) - 1  # RFC 9000 §16


class PacketType(enum.IntEnum):
    """What a packet is, whatever bits its version uses to say so (v1 numbering)."""

    INITIAL = 0
    ZERO_RTT = 1
    HANDSHAKE = 2
    RETRY = 3
    VERSION_NEGOTIATION = 4
    ONE_RTT = 5


_V1_TYPES = (PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE, PacketType.RETRY)
# RFC 9369 §3.2: v2 rotates the long-header type bits by one.
_V2_TYPES = (PacketType.RETRY, PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE)
TYPE_NAMES = {
    PacketType.INITIAL: "Initial",
    PacketType.ZERO_RTT: "0-RTT",
    PacketType.HANDSHAKE: "Handshake",
    PacketType.RETRY: "Retry",
    PacketType.VERSION_NEGOTIATION: "Version Negotiation",
    PacketType.ONE_RTT: "1-RTT",
}


@dataclass(frozen=True, slots=True)
class QuicVersion:
    """What one QUIC version changes in Initial and Retry packets.

    Attributes:
        number: the 32-bit version, e.g. 0x00000001.
        name: for people, e.g. ``"QUIC v1"``.
        initial_salt: the HKDF-Extract salt of the Initial secret (RFC 9001 §5.2).
        key_label, iv_label, hp_label: the HKDF-Expand-Label labels of the packet
            protection key, IV and header protection key (RFC 9001 §5.1).
        packet_types: the packet type of each value of the two long-header type bits.
        retry_key, retry_nonce: the Retry Integrity Tag's AEAD key and nonce (§5.8).
    """

    number: int
    name: str
    initial_salt: bytes
    key_label: bytes
    iv_label: bytes
    hp_label: bytes
    packet_types: tuple[PacketType, PacketType, PacketType, PacketType]
    retry_key: bytes
    retry_nonce: bytes

    def type_bits(self, packet_type: PacketType) -> int:
        """The two long-header type bits of ``packet_type`` in this version."""
        return self.packet_types.index(packet_type)


def _version(
    number: int,
    name: str,
    salt: str,
    label_prefix: bytes,
    types: tuple[PacketType, PacketType, PacketType, PacketType],
    retry: tuple[str, str],
) -> QuicVersion:
    return QuicVersion(
        number, name, bytes.fromhex(salt),
        label_prefix + b" key", label_prefix + b" iv", label_prefix + b" hp",
        types, bytes.fromhex(retry[0]), bytes.fromhex(retry[1]),
    )  # fmt: skip


# Salts and Retry (key, nonce): RFC 9001 §5.2 and §5.8 (v1, and drafts 33 and 34),
# RFC 9369 §3.3 (v2), draft-ietf-quic-tls-29 §5.2 and §5.8 (drafts 29 to 32) and
# draft-ietf-quic-tls-27 (drafts 27 and 28, still in 2020-era captures).
_V1_SALT = "38762cf7f55934b34d179ae6a4c80cadccbb7f0a"
_V1_RETRY = ("be0c690b9f66575a1d766b54e368c84e", "461599d35d632bf2239825bb")
_V2_SALT = "0dede3def700a6db819381be6e269dcbf9bd2ed9"
_V2_RETRY = ("8fb4b01b56ac48e260fbcbcead7ccc92", "d86969bc2d7c6d9990efb04a")
_DRAFT29_SALT = "afbfec289993d24c9e9786f19c6111e04390a899"
_DRAFT29_RETRY = ("ccce187ed09a09d05728155a6cb96be1", "e54930f97f2136f0530a8c1c")
_DRAFT27_SALT = "c3eef712c72ebb5a11a7d2432bb46365bef9f502"
_DRAFT27_RETRY = ("4d32ecdb2a2133c841e4043df27d4430", "4d1611d05513a552c587d575")
_DRAFT = 0xFF000000  # draft N is version 0xff0000NN

VERSIONS: Mapping[int, QuicVersion] = MappingProxyType({
    spec.number: spec
    for spec in (
        _version(QUIC_V1, "QUIC v1", _V1_SALT, b"quic", _V1_TYPES, _V1_RETRY),
        _version(QUIC_V2, "QUIC v2", _V2_SALT, b"quicv2", _V2_TYPES, _V2_RETRY),
        *(_version(_DRAFT + n, f"draft-{n}", _V1_SALT, b"quic", _V1_TYPES, _V1_RETRY)
          for n in (33, 34)),
        *(_version(_DRAFT + n, f"draft-{n}", _DRAFT29_SALT, b"quic", _V1_TYPES, _DRAFT29_RETRY)
          for n in (29, 30, 31, 32)),
        *(_version(_DRAFT + n, f"draft-{n}", _DRAFT27_SALT, b"quic", _V1_TYPES, _DRAFT27_RETRY)
          for n in (27, 28)),
    )
})  # fmt: skip
"""Every version whose Initial packets this module can read, by version number."""


def is_forcing_version_negotiation(version: int) -> bool:
    """True for the versions reserved to force version negotiation (0x?a?a?a?a, RFC 9000 §15)."""
    return version & 0x0F0F0F0F == 0x0A0A0A0A


def version_name(version: int) -> str:
    """A QUIC version as people name it: ``"v1"``, ``"v2"``, ``"draft-29"``; else its hex number."""
    spec = VERSIONS.get(version)
    return f"0x{version:08x}" if spec is None else spec.name.removeprefix("QUIC ")


def version_spec(version: int) -> QuicVersion:
    try:
        return VERSIONS[version]
    except KeyError:
        raise ValueError(f"QUIC version 0x{version:08x} has no known Initial keys") from None


# -- keys ---------------------------------------------------------------------------


def initial_secrets(version: int, destination_cid: bytes) -> tuple[bytes, bytes]:
    """The client and server Initial secrets of a connection (RFC 9001 §5.2).

    Args:
        version: a version in `VERSIONS`.
        destination_cid: the Destination Connection ID of the client's first Initial
            (or the one a Retry gave it).

    Returns:
        ``(client_initial_secret, server_initial_secret)``, 32 bytes each.

    Raises:
        ValueError: the version is not in `VERSIONS`.
    """
    initial_secret = hkdf_extract(version_spec(version).initial_salt, destination_cid)
    return (
        hkdf_expand_label(initial_secret, b"client in", b"", HASH_LENGTH),
        hkdf_expand_label(initial_secret, b"server in", b"", HASH_LENGTH),
    )


def derive_key_iv_hp(version: int, secret: bytes) -> tuple[bytes, bytes, bytes]:
    """The AEAD key, IV and header protection key from a traffic secret (RFC 9001 §5.1).

    Args:
        version: a version in `VERSIONS` (v2 uses other labels, RFC 9369 §3.3.2).
        secret: e.g. a secret from `initial_secrets`.

    Returns:
        ``(key, iv, hp)``: 16, 12 and 16 bytes (AES-128-GCM, the Initial cipher suite).

    Raises:
        ValueError: the version is not in `VERSIONS`.
    """
    spec = version_spec(version)
    key, iv, hp = hkdf_expand_labels(
        secret,
        ((spec.key_label, KEY_LENGTH), (spec.iv_label, IV_LENGTH), (spec.hp_label, KEY_LENGTH)),
    )
    return key, iv, hp


@functools.lru_cache(maxsize=1024)
def initial_protection(
    version: int, destination_cid: bytes, is_client: bool = True
) -> PacketProtection:
    """The ciphers that protect one side's Initial packets, cached per connection.

    Args:
        version: a version in `VERSIONS`.
        destination_cid: the client's original Destination Connection ID (or the one
            its Retry gave it): both sides derive their keys from it.
        is_client: the client's keys (True) or the server's.

    Raises:
        ValueError: the version is not in `VERSIONS`.
    """
    initial_secret = hkdf_extract(version_spec(version).initial_salt, destination_cid)
    label = b"client in" if is_client else b"server in"
    secret = hkdf_expand_label(initial_secret, label, b"", HASH_LENGTH)
    return PacketProtection(*derive_key_iv_hp(version, secret))


def retry_integrity_tag(version: int, original_destination_cid: bytes, retry: bytes) -> bytes:
    """The Retry Integrity Tag of a Retry packet (RFC 9001 §5.8; RFC 9369 §3.3.3).

    Args:
        version: a version in `VERSIONS`.
        original_destination_cid: the Destination Connection ID of the client's Initial.
        retry: the Retry packet without its last 16 bytes (the tag).

    Raises:
        ValueError: the version is not in `VERSIONS`, or the CID is over 255 bytes.
    """
    spec = version_spec(version)
    if len(original_destination_cid) > 255:
        raise ValueError("original_destination_cid is over 255 bytes")
    pseudo = bytes([len(original_destination_cid)]) + original_destination_cid + retry
    return aead_tag(spec.retry_key, spec.retry_nonce, pseudo)


# -- headers ------------------------------------------------------------------------


def read_varint(buf: bytes, pos: int, end: int, field: str) -> tuple[int, int]:
    """A variable-length integer (RFC 9000 §16) at ``pos``: ``(value, next position)``."""
    if pos >= end:
        raise MalformedHello(field, "missing", pos)
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > end:
        raise MalformedHello(
            field, f"{size}-byte variable-length integer with {end - pos} byte(s) left", pos
        )
    if size == 1:
        return first, pos + 1
    if size == 2:
        return _u16(buf, pos)[0] & 0x3FFF, pos + 2
    if size == 4:
        return _u32(buf, pos)[0] & 0x3FFFFFFF, pos + 4
    return _u64(buf, pos)[0] & _MAX_VARINT, pos + 8


def encode_varint(value: int) -> bytes:
    """A variable-length integer in its shortest form (RFC 9000 §16).

    Raises:
        ValueError: ``value`` is negative or over 2**62 - 1.
    """
    if 0 <= value < 0x40:
        return bytes([value])
    if 0 <= value < 0x4000:
        return struct.pack("!H", value | 0x4000)
    if 0 <= value < 0x40000000:
        return struct.pack("!I", value | 0x80000000)
    if 0 <= value <= _MAX_VARINT:
        return struct.pack("!Q", value | 0xC000000000000000)
    raise ValueError(f"{value} cannot be a QUIC variable-length integer")


@dataclass(frozen=True, slots=True)
class QuicHeader:
    """A QUIC packet header as sent, header protection still on (RFC 9000 §17).

    Attributes:
        start: where the packet starts in the datagram.
        first_byte: the first byte as sent (its low bits are still protected).
        is_long_header: the header form bit.
        version: the version (0 for Version Negotiation); None for a short header.
        packet_type: what the packet is; None for a long header of a version not in
            `VERSIONS`, whose type bits mean nothing known.
        destination_cid, source_cid: the connection IDs (``source_cid`` is ``b""``
            for a short header, whose DCID length the caller has to know).
        token: the Initial's token, the Retry's token; ``b""`` otherwise.
        length: the Length field (packet number and payload), for Initial, 0-RTT and
            Handshake packets; else None.
        pn_offset: where the (protected) packet number starts; None if the packet
            has none (Retry, Version Negotiation, unknown versions).
        end: where the packet ends in the datagram (the datagram's end unless the
            header has a Length field).
        supported_versions: the versions a Version Negotiation packet lists.
        integrity_tag: a Retry packet's last 16 bytes.
    """

    start: int
    first_byte: int
    is_long_header: bool
    version: int | None
    packet_type: PacketType | None
    destination_cid: bytes
    source_cid: bytes
    token: bytes
    length: int | None
    pn_offset: int | None
    end: int
    supported_versions: tuple[int, ...] = ()
    integrity_tag: bytes = b""

    @property
    def fixed_bit(self) -> bool:
        """The fixed bit (0x40), which every QUIC v1/v2 packet but VN sets."""
        return bool(self.first_byte & 0x40)


def pull_quic_header(datagram: Buffer, offset: int = 0, short_cid_length: int = 0) -> QuicHeader:
    """Read the header of the packet at ``offset`` of a datagram, without decrypting.

    Args:
        datagram: a UDP payload.
        offset: where the packet starts (after earlier coalesced packets).
        short_cid_length: the DCID length to assume for a short header (the header
            does not say it).

    Returns:
        The header; ``end`` is where the next coalesced packet would start.

    Raises:
        MalformedHello: the header is truncated, a connection ID is longer than 20
            bytes in a known version, or the Length field overruns the datagram.
            ``.offset`` is into ``datagram``.
    """
    return pull_header(bytes(datagram), offset, "packet", short_cid_length)


def pull_header(buf: bytes, start: int, where: str, short_cid_length: int = 0) -> QuicHeader:
    n = len(buf)
    if start >= n:
        raise MalformedHello(f"{where} header", "no bytes left for a packet", start)
    first = buf[start]
    if not first & 0x80:
        dcid_end = start + 1 + short_cid_length
        if dcid_end > n:
            raise MalformedHello(f"{where} destination_cid", "truncated", start + 1)
        return QuicHeader(
            start, first, False, None, PacketType.ONE_RTT, buf[start + 1 : dcid_end], b"", b"",
            None, dcid_end, n,
        )  # fmt: skip
    if start + 6 > n:
        raise MalformedHello(
            f"{where} header", f"{n - start} byte(s), a long header needs at least 7", start
        )
    version = _u32(buf, start + 1)[0]
    spec = VERSIONS.get(version)
    pos = start + 5
    cids = []
    for name in ("destination_cid", "source_cid"):
        if pos >= n:
            raise MalformedHello(f"{where} {name}", "length missing", pos)
        cid_length = buf[pos]
        if spec is not None and cid_length > MAX_CID_LENGTH:
            raise MalformedHello(f"{where} {name}", f"length {cid_length} exceeds 20", pos)
        if pos + 1 + cid_length > n:
            raise MalformedHello(
                f"{where} {name}",
                f"length {cid_length} overruns the datagram ({n - pos - 1} bytes left)",
                pos,
            )
        cids.append(buf[pos + 1 : pos + 1 + cid_length])
        pos += 1 + cid_length
    dcid, scid = cids
    if version == 0:
        count = (n - pos) // 4
        if (n - pos) % 4:
            raise MalformedHello(
                f"{where} supported_versions", f"{n - pos} bytes, not a multiple of 4", pos
            )
        versions = struct.unpack_from(f"!{count}I", buf, pos)
        return QuicHeader(
            start, first, True, 0, PacketType.VERSION_NEGOTIATION, dcid, scid, b"", None, None,
            n, versions,
        )  # fmt: skip
    if spec is None:
        return QuicHeader(start, first, True, version, None, dcid, scid, b"", None, None, n)
    packet_type = spec.packet_types[(first >> 4) & 3]
    if packet_type is PacketType.RETRY:
        if n - pos < TAG_LENGTH:
            raise MalformedHello(
                f"{where} retry_integrity_tag", f"{n - pos} byte(s) left, 16 needed", pos
            )
        return QuicHeader(
            start, first, True, version, packet_type, dcid, scid, buf[pos : n - TAG_LENGTH],
            None, None, n, (), buf[n - TAG_LENGTH :],
        )  # fmt: skip
    token = b""
    if packet_type is PacketType.INITIAL:
        token_length, pos = read_varint(buf, pos, n, f"{where} token_length")
        if token_length > n - pos:
            raise MalformedHello(
                f"{where} token",
                f"length {token_length} overruns the datagram ({n - pos} bytes left)",
                pos,
            )
        token = buf[pos : pos + token_length]
        pos += token_length
    length, pos = read_varint(buf, pos, n, f"{where} length")
    if length > n - pos:
        raise MalformedHello(
            f"{where} length", f"Length {length} overruns the datagram ({n - pos} bytes left)", pos
        )
    return QuicHeader(
        start, first, True, version, packet_type, dcid, scid, token, length, pos, pos + length
    )


def is_client_initial(datagram: Buffer) -> bool:
    """Whether a UDP payload starts with a QUIC Initial packet of a known version.

    Cheap enough for every datagram of a capture (under a microsecond): no decryption
    and no copies; it checks the long header and fixed bits, the version (in `VERSIONS`), the type
    bits, connection IDs of at most 20 bytes, and a token and Length that fit in the
    datagram with room for the header protection sample. A server's Initial passes
    too: the direction is the caller's to know (the header cannot tell).
    """
    n = len(datagram)
    if n < 7 or datagram[0] & 0xC0 != 0xC0:
        return False
    spec = VERSIONS.get(_u32(datagram, 1)[0])
    if spec is None or spec.packet_types[(datagram[0] >> 4) & 3] is not PacketType.INITIAL:
        return False
    dcid_length = datagram[5]
    pos = 6 + dcid_length
    if dcid_length > MAX_CID_LENGTH or pos >= n:
        return False
    scid_length = datagram[pos]
    pos += 1 + scid_length
    if scid_length > MAX_CID_LENGTH:
        return False
    for is_length in (False, True):
        if pos >= n:
            return False
        size = 1 << (datagram[pos] >> 6)
        if pos + size > n:
            return False
        value = datagram[pos] & 0x3F
        for i in range(pos + 1, pos + size):
            value = (value << 8) | datagram[i]
        pos += size
        if is_length:
            # 4 bytes are taken as the packet number for the sample (RFC 9001 §5.4.2).
            return 4 + SAMPLE_LENGTH <= value <= n - pos
        pos += value
    return False  # not reached: the loop returns on its second round


def decode_packet_number(truncated: int, num_bits: int, expected: int) -> int:
    """The full packet number from its truncated encoding (RFC 9000 appendix A.3).

    Args:
        truncated: the packet number as sent, header protection removed.
        num_bits: how many bits were sent (8, 16, 24 or 32).
        expected: the largest packet number received so far plus one (0 at first).
    """
    window = 1 << num_bits
    half_window = window // 2
    candidate = (expected & ~(window - 1)) | truncated
    if candidate <= expected - half_window and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + half_window and candidate >= window:
        return candidate - window
    return candidate
