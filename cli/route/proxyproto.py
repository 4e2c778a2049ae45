"""PROXY protocol v1 and v2: building headers and strictly parsing them, sans-I/O.

The wire format is HAProxy's ``proxy-protocol.txt`` (https://www.haproxy.org/download/2.9/doc/
proxy-protocol.txt). The router uses :func:`build_v1` / :func:`build_v2` to tell a backend who
the client is, and :class:`ProxyHeaderParser` on a listener with ``accept_proxy`` to read the
header a front load balancer sends. Nothing here touches a socket: the caller feeds bytes and
writes bytes (h11 style), so every rule below is testable with plain byte strings.

Parsing is strict, because the header decides which client address the rest of the system
believes in:

* v1: ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` with exactly one space between
  fields, no leading zeros, ports 0..65535, addresses valid for the family (no IPv6 zone id),
  at most 107 bytes including CRLF. ``PROXY UNKNOWN`` may carry anything up to CRLF (the
  spec says the receiver ignores it).
* v2: 12-byte signature, version 2, command LOCAL or PROXY, one of the seven address family
  and transport combinations the spec defines (datagram ones rejected: this is a stream
  proxy), an address block that fits in the declared length, TLVs that consume the rest
  exactly, a PP2_TYPE_CRC32C checksum verified when present, and a total size cap.
* Input that is neither version is rejected on the first byte that rules both out, so a
  client that speaks TLS directly to an ``accept_proxy`` listener fails at once instead of
  waiting for a timeout.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

__all__ = [
    "ProxyProtocolError",
    "ProxyInfo",
    "ProxyHeaderParser",
    "SSLInfo",
    "build_v1",
    "build_v2",
    "crc32c",
    "V2_SIGNATURE",
    "V2_DEFAULT_MAX_LENGTH",
    "V1_MAX_LENGTH",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_UNIQUE_ID",
    "PP2_TYPE_SSL",
    "PP2_TYPE_NETNS",
    "PP2_CLIENT_SSL",
    "PP2_CLIENT_CERT_CONN",
    "PP2_CLIENT_CERT_SESS",
    "PP2_SUBTYPE_SSL_VERSION",
    "PP2_SUBTYPE_SSL_CN",
    "PP2_SUBTYPE_SSL_CIPHER",
    "PP2_SUBTYPE_SSL_SIG_ALG",
    "PP2_SUBTYPE_SSL_KEY_ALG",
]

V1_PREFIX: Final = b"PROXY "
# proxy-protocol.txt §2.1: the worst case "PROXY UNKNOWN <two IPv6> <two ports>" + CRLF.
V1_MAX_LENGTH: Final = 107
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"  # §2.2, 12 bytes
V2_FIXED_LENGTH: Final = 16  # signature + ver_cmd + fam + 16-bit length
# §2.2 says a receiver that reads the whole header at once needs 536 bytes for the largest
# address block (AF_UNIX, 216 bytes) plus room for TLVs. 4 KiB leaves room for every TLV a
# real load balancer sends (ALPN, authority, unique id, SSL info, AWS/GCP/Azure ids) while a
# hostile front cannot make us buffer the 64 KiB the length field allows.
V2_DEFAULT_MAX_LENGTH: Final = 4096

_CMD_LOCAL: Final = 0x0
_CMD_PROXY: Final = 0x1

# §2.2 "the following 8 combinations", minus UNSPEC duplicates: value -> address block size.
_FAM_UNSPEC: Final = 0x00
_FAM_TCP4: Final = 0x11
_FAM_UDP4: Final = 0x12
_FAM_TCP6: Final = 0x21
_FAM_UDP6: Final = 0x22
_FAM_UNIX_STREAM: Final = 0x31
_FAM_UNIX_DGRAM: Final = 0x32
_ADDRESS_SIZE: Final[Mapping[int, int]] = {
    _FAM_UNSPEC: 0,
    _FAM_TCP4: 12,
    _FAM_UDP4: 12,
    _FAM_TCP6: 36,
    _FAM_UDP6: 36,
    _FAM_UNIX_STREAM: 216,
    _FAM_UNIX_DGRAM: 216,
}
_DATAGRAM: Final = frozenset({_FAM_UDP4, _FAM_UDP6, _FAM_UNIX_DGRAM})

PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_TYPE_NETNS: Final = 0x30
# §2.2.5 PP2_TYPE_SSL: client flags (u8), verify result (u32), then sub-TLVs.
PP2_CLIENT_SSL: Final = 0x01
PP2_CLIENT_CERT_CONN: Final = 0x02
PP2_CLIENT_CERT_SESS: Final = 0x04
PP2_SUBTYPE_SSL_VERSION: Final = 0x21
PP2_SUBTYPE_SSL_CN: Final = 0x22
PP2_SUBTYPE_SSL_CIPHER: Final = 0x23
PP2_SUBTYPE_SSL_SIG_ALG: Final = 0x24
PP2_SUBTYPE_SSL_KEY_ALG: Final = 0x25
_SSL_SUBTYPES: Final = {
    PP2_SUBTYPE_SSL_VERSION: "version",
    PP2_SUBTYPE_SSL_CN: "client_cn",
    PP2_SUBTYPE_SSL_CIPHER: "cipher",
    PP2_SUBTYPE_SSL_SIG_ALG: "sig_alg",
    PP2_SUBTYPE_SSL_KEY_ALG: "key_alg",
}
_UNIQUE_ID_MAX: Final = 128  # §2.2.5 "up to 128 bytes"

_MAX_PORT: Final = 65535


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol v1 or v2 header (or the peer closed mid-header).

    Attributes:
        reason: what is wrong, in words.
        offset: byte offset into the header where the problem was found.
    """

    def __init__(self, reason: str, offset: int = 0) -> None:
        super().__init__(f"{reason} at offset {offset}")
        self.reason = reason
        self.offset = offset


_EMPTY_TLVS: Final[Mapping[int, bytes]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SSLInfo:
    """PP2_TYPE_SSL: the client's TLS connection to the proxy (§2.2.5).

    Attributes:
        client: flags: PP2_CLIENT_SSL (TLS was used), PP2_CLIENT_CERT_CONN / _SESS (the
            client presented a certificate on this connection / in this session).
        verify: 0 when the client presented a certificate and it was verified, else non-zero.
        version, cipher: the TLS version and cipher negotiated ("TLSv1.3", "TLS_AES_...").
        client_cn: the common name of the verified client certificate's subject.
        sig_alg, key_alg: the server certificate's signature and key algorithms.
    """

    client: int = PP2_CLIENT_SSL
    verify: int = 1
    version: str | None = None
    cipher: str | None = None
    client_cn: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None

    @property
    def client_verified(self) -> bool:
        """Whether a client certificate was presented and verified."""
        return bool(self.client & PP2_CLIENT_CERT_CONN) and self.verify == 0

    def encode(self) -> bytes:
        """The value of a PP2_TYPE_SSL TLV (without its type and length)."""
        out = struct.pack("!BI", self.client, self.verify)
        for subtype, attr in _SSL_SUBTYPES.items():
            value = getattr(self, attr)
            if value is not None:
                out += _tlv(subtype, value.encode("utf-8"))
        return out

    @classmethod
    def decode(cls, value: bytes, offset: int = 0) -> SSLInfo:
        """Parse a PP2_TYPE_SSL value; unknown sub-TLVs are skipped.

        Raises:
            ProxyProtocolError: the value or a sub-TLV is cut short (``offset`` is added
                to the positions reported).
        """
        if len(value) < 5:
            raise ProxyProtocolError(f"SSL TLV is {len(value)} bytes, at least 5 needed", offset)
        client, verify = struct.unpack_from("!BI", value)
        fields: dict[str, str] = {}
        pos = 5
        while pos < len(value):
            if len(value) - pos < 3:
                raise ProxyProtocolError("SSL sub-TLV header cut short", offset + pos)
            subtype, length = struct.unpack_from("!BH", value, pos)
            if pos + 3 + length > len(value):
                raise ProxyProtocolError(
                    f"SSL sub-TLV 0x{subtype:02x} overruns the SSL TLV", offset + pos
                )
            attr = _SSL_SUBTYPES.get(subtype)
            if attr is not None:
                fields[attr] = value[pos + 3 : pos + 3 + length].decode("utf-8", "replace")
            pos += 3 + length
        return cls(client, verify, **fields)


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """One decoded PROXY header.

    Attributes:
        version: 1 or 2.
        command: "PROXY" (addresses describe the real client) or "LOCAL" (v2 only: the front
            opened the connection itself, e.g. a health check; use the real endpoints).
        src, dst: (address, port) of the client and of the address it connected to, or None
            for LOCAL, v1 UNKNOWN and v2 AF_UNSPEC/AF_UNIX (use the real endpoints).
        tlvs: v2 type -> value, read-only; empty for v1. NOOP padding is dropped, CRC32C kept
            (it has been verified).
    """

    version: int
    command: str
    src: tuple[str, int] | None
    dst: tuple[str, int] | None
    tlvs: Mapping[int, bytes] = field(default_factory=lambda: _EMPTY_TLVS)

    def __post_init__(self) -> None:
        if not isinstance(self.tlvs, MappingProxyType):  # a caller's dict: freeze a copy
            object.__setattr__(self, "tlvs", MappingProxyType(dict(self.tlvs)))

    def __hash__(self) -> int:  # a mappingproxy is unhashable; hash its sorted items instead
        return hash(
            (self.version, self.command, self.src, self.dst, tuple(sorted(self.tlvs.items())))
        )

    @property
    def authority(self) -> str | None:
        """PP2_TYPE_AUTHORITY (the SNI the front saw) decoded as UTF-8, or None."""
        value = self.tlvs.get(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def alpn(self) -> bytes | None:
        """PP2_TYPE_ALPN (the negotiated application protocol), or None."""
        return self.tlvs.get(PP2_TYPE_ALPN)

    @property
    def ssl(self) -> SSLInfo | None:
        """PP2_TYPE_SSL decoded (checked when the header was parsed), or None."""
        value = self.tlvs.get(PP2_TYPE_SSL)
        return None if value is None else SSLInfo.decode(value)


# --------------------------------------------------------------------------- building


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"not an IP address: {address!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise ValueError(f"IPv6 zone ids cannot be carried in a PROXY header: {address!r}")
    return ip


def _port(port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= _MAX_PORT:
        raise ValueError(f"port out of range 0..65535: {port!r}")
    return port


def build_v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """Build a PROXY protocol v1 (text) header.

    Args:
        src: (address, port) of the client.
        dst: (address, port) the client connected to.

    Returns:
        ``b"PROXY TCP4 ...\\r\\n"`` or ``b"PROXY TCP6 ...\\r\\n"``; ``b"PROXY UNKNOWN\\r\\n"`` when
        the two addresses are of different families (the spec has no mixed form).

    Raises:
        ValueError: an address is not an IP address, or a port is out of range.
    """
    src_ip, dst_ip = _ip(src[0]), _ip(dst[0])
    sport, dport = _port(src[1]), _port(dst[1])
    if src_ip.version != dst_ip.version:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP4" if src_ip.version == 4 else "TCP6"
    return f"PROXY {proto} {src_ip} {dst_ip} {sport} {dport}\r\n".encode("ascii")


def _tlv(tlv_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV 0x{tlv_type:02x} value is {len(value)} bytes, the maximum is 65535")
    return struct.pack("!BH", tlv_type, len(value)) + value


def build_v2(
    src: tuple[str, int] | None,
    dst: tuple[str, int] | None,
    *,
    authority: str | None = None,
    alpn: bytes | None = None,
    ssl: SSLInfo | None = None,
) -> bytes:
    """Build a PROXY protocol v2 (binary) header.

    Args:
        src: (address, port) of the client, or None together with ``dst`` for a LOCAL header.
        dst: (address, port) the client connected to, or None.
        authority: the server name the client asked for (SNI), sent as PP2_TYPE_AUTHORITY (UTF-8).
        alpn: the application protocol, sent as PP2_TYPE_ALPN.
        ssl: how the client's TLS ended at the proxy, sent as PP2_TYPE_SSL with its
            sub-TLVs (version, cipher, client certificate CN, algorithms).

    Returns:
        The header: command PROXY with TCP over IPv4/IPv6, or LOCAL with AF_UNSPEC when both
        addresses are None. Mixed address families give PROXY with AF_UNSPEC and no address
        block, the v2 equivalent of v1's UNKNOWN (the receiver then uses the real endpoints).

    Raises:
        ValueError: only one of src/dst is None, a bad address or port, or TLVs too large.
    """
    if (src is None) != (dst is None):
        raise ValueError("src and dst must both be addresses, or both None for LOCAL")
    if src is None or dst is None:
        ver_cmd, fam, addresses = 0x20 | _CMD_LOCAL, _FAM_UNSPEC, b""
    else:
        src_ip, dst_ip = _ip(src[0]), _ip(dst[0])
        ports = struct.pack("!HH", _port(src[1]), _port(dst[1]))
        ver_cmd = 0x20 | _CMD_PROXY
        if src_ip.version != dst_ip.version:
            fam, addresses = _FAM_UNSPEC, b""
        else:
            fam = _FAM_TCP4 if src_ip.version == 4 else _FAM_TCP6
            addresses = src_ip.packed + dst_ip.packed + ports
    tlvs = b""
    if alpn is not None:
        tlvs += _tlv(PP2_TYPE_ALPN, bytes(alpn))
    if authority is not None:
        tlvs += _tlv(PP2_TYPE_AUTHORITY, authority.encode("utf-8"))
    if ssl is not None:
        tlvs += _tlv(PP2_TYPE_SSL, ssl.encode())
    length = len(addresses) + len(tlvs)
    if length > 0xFFFF:
        raise ValueError(f"PROXY v2 header body is {length} bytes, the maximum is 65535")
    return V2_SIGNATURE + struct.pack("!BBH", ver_cmd, fam, length) + addresses + tlvs


# --------------------------------------------------------------------------- CRC32C


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) as PP2_TYPE_CRC32C uses it (RFC 3720 §B.4)."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --------------------------------------------------------------------------- parsing


def _v1_port(text: str, offset: int) -> int:
    # int() would accept "+1", " 1", "1_000" and non-ASCII digits; the spec wants plain decimal.
    if (
        not (text.isascii() and text.isdigit())
        or len(text) > 5
        or (len(text) > 1 and text[0] == "0")
    ):
        raise ProxyProtocolError(f"invalid port {text!r}", offset)
    port = int(text)
    if port > _MAX_PORT:
        raise ProxyProtocolError(f"port {port} out of range 0..65535", offset)
    return port


def _v1_address(text: str, version: int, offset: int) -> str:
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address
        if version == 4:
            ip = ipaddress.IPv4Address(text)  # rejects leading zeros ("octal confusion", §2.1)
        else:
            if "%" in text:  # ipaddress accepts zone ids; they mean nothing to the receiver
                raise ValueError(text)
            ip = ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyProtocolError(f"invalid IPv{version} address {text!r}", offset) from None
    return str(ip)


def _parse_v1(line: bytes) -> ProxyInfo:
    """Parse one complete v1 line, CRLF included."""
    body = line[:-2]
    if body == b"PROXY UNKNOWN" or body.startswith(b"PROXY UNKNOWN "):
        # §2.1: "the receiver must ignore anything presented before the CRLF".
        return ProxyInfo(version=1, command="PROXY", src=None, dst=None)
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProxyProtocolError("non-ASCII byte in v1 header", exc.start) from None
    parts = text.split(" ")
    proto = parts[1] if len(parts) > 1 else ""
    if proto not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"unknown v1 protocol {proto!r}", len(V1_PREFIX))
    if len(parts) != 6:
        raise ProxyProtocolError(
            f"v1 {proto} header needs 6 space-separated fields, got {len(parts)}", 0
        )
    version = 4 if proto == "TCP4" else 6
    offsets = []
    pos = 0
    for part in parts:
        offsets.append(pos)
        pos += len(part) + 1
    src = _v1_address(parts[2], version, offsets[2])
    dst = _v1_address(parts[3], version, offsets[3])
    sport = _v1_port(parts[4], offsets[4])
    dport = _v1_port(parts[5], offsets[5])
    return ProxyInfo(version=1, command="PROXY", src=(src, sport), dst=(dst, dport))


def _parse_tlvs(header: bytes, start: int) -> Mapping[int, bytes]:
    tlvs: dict[int, bytes] = {}
    pos, end = start, len(header)
    crc_at: int | None = None
    while pos < end:
        if end - pos < 3:
            raise ProxyProtocolError(f"{end - pos} trailing bytes, too short for a TLV header", pos)
        tlv_type, length = struct.unpack_from("!BH", header, pos)
        if pos + 3 + length > end:
            raise ProxyProtocolError(
                f"TLV 0x{tlv_type:02x} length {length} overruns the header by "
                f"{pos + 3 + length - end} bytes",
                pos,
            )
        value = header[pos + 3 : pos + 3 + length]
        if tlv_type == PP2_TYPE_NOOP:
            pass  # padding, may repeat
        elif tlv_type in tlvs:
            # Two AUTHORITY values would make "which name did the client ask for" ambiguous.
            raise ProxyProtocolError(f"duplicate TLV 0x{tlv_type:02x}", pos)
        else:
            if tlv_type == PP2_TYPE_CRC32C:
                if length != 4:
                    raise ProxyProtocolError(f"CRC32C TLV is {length} bytes, expected 4", pos)
                crc_at = pos + 3
            elif tlv_type == PP2_TYPE_UNIQUE_ID and length > _UNIQUE_ID_MAX:
                raise ProxyProtocolError(
                    f"UNIQUE_ID TLV is {length} bytes, the maximum is {_UNIQUE_ID_MAX}", pos
                )
            elif tlv_type == PP2_TYPE_SSL:
                SSLInfo.decode(header[pos + 3 : pos + 3 + length], pos + 3)  # strict: check now
            tlvs[tlv_type] = value
        pos += 3 + length
    if crc_at is not None:
        # §2.2.3: checksum over the whole header with the checksum field itself zeroed.
        expected = int.from_bytes(header[crc_at : crc_at + 4], "big")
        actual = crc32c(header[:crc_at] + b"\x00\x00\x00\x00" + header[crc_at + 4 :])
        if actual != expected:
            raise ProxyProtocolError(
                f"CRC32C mismatch: header says 0x{expected:08x}, computed 0x{actual:08x}",
                crc_at,
            )
    return MappingProxyType(tlvs) if tlvs else _EMPTY_TLVS


def _check_v2_fixed(header: bytes, max_length: int) -> int:
    """Validate whatever of bytes 12..15 has arrived; return the total length once known, else 0."""
    if len(header) > 12:
        ver_cmd = header[12]
        if ver_cmd >> 4 != 2:
            raise ProxyProtocolError(f"unsupported PROXY protocol version {ver_cmd >> 4}", 12)
        if ver_cmd & 0x0F not in (_CMD_LOCAL, _CMD_PROXY):
            raise ProxyProtocolError(f"unknown v2 command 0x{ver_cmd & 0x0F:x}", 12)
    if len(header) > 13:
        fam = header[13]
        if fam not in _ADDRESS_SIZE:
            raise ProxyProtocolError(f"invalid v2 address family/transport 0x{fam:02x}", 13)
        if header[12] & 0x0F == _CMD_PROXY and fam in _DATAGRAM:
            raise ProxyProtocolError(
                f"datagram transport 0x{fam:02x} announced on a stream connection", 13
            )
    if len(header) < V2_FIXED_LENGTH:
        return 0
    fam = header[13]
    length = int.from_bytes(header[14:16], "big")
    if length < _ADDRESS_SIZE[fam]:
        raise ProxyProtocolError(
            f"v2 length {length} is shorter than the {_ADDRESS_SIZE[fam]}-byte address block "
            f"of family 0x{fam:02x}",
            14,
        )
    total = V2_FIXED_LENGTH + length
    if total > max_length:
        raise ProxyProtocolError(
            f"v2 header of {total} bytes exceeds the {max_length}-byte limit", 14
        )
    return total


def _parse_v2(header: bytes) -> ProxyInfo:
    """Parse one complete v2 header whose fixed part `_check_v2_fixed` accepted."""
    ver_cmd, fam = header[12], header[13]
    start = V2_FIXED_LENGTH + _ADDRESS_SIZE[fam]
    tlvs = _parse_tlvs(header, start)
    src: tuple[str, int] | None = None
    dst: tuple[str, int] | None = None
    command = "LOCAL" if ver_cmd & 0x0F == _CMD_LOCAL else "PROXY"
    if command == "PROXY" and fam in (_FAM_TCP4, _FAM_TCP6):
        size = 4 if fam == _FAM_TCP4 else 16
        base = V2_FIXED_LENGTH
        raw_src = header[base : base + size]
        raw_dst = header[base + size : base + 2 * size]
        sport, dport = struct.unpack_from("!HH", header, base + 2 * size)
        src = (str(ipaddress.ip_address(raw_src)), sport)
        dst = (str(ipaddress.ip_address(raw_dst)), dport)
    # LOCAL: §2.2 says the receiver uses the real endpoints and skips the address block.
    # AF_UNSPEC / AF_UNIX stream: nothing a TCP peer address can express; use the real ones.
    return ProxyInfo(version=2, command=command, src=src, dst=dst, tlvs=tlvs)


class ProxyHeaderParser:
    """Incremental PROXY protocol v1/v2 parser (h11 style: feed bytes, get a result or None).

    Example::

        p = ProxyHeaderParser()
        while (info := p.feed(await reader.read(4096))) is None:
            pass
        client = info.src or writer.get_extra_info("peername")
        first_bytes_of_stream = p.remainder

    Args:
        max_v2_length: cap on the whole v2 header (fixed part + addresses + TLVs), checked as
            soon as the length field arrives. Must be at least 232 (16 + the AF_UNIX block).
    """

    def __init__(self, *, max_v2_length: int = V2_DEFAULT_MAX_LENGTH) -> None:
        if max_v2_length < V2_FIXED_LENGTH + 216:
            raise ValueError("max_v2_length must be at least 232 bytes")
        self._max_v2 = max_v2_length
        self._buf = bytearray()
        self._version = 0  # 0 = undecided, 1 or 2 once the signature matched
        self._need = 0  # v2: total header length once known
        self._info: ProxyInfo | None = None
        self._remainder = b""

    @property
    def info(self) -> ProxyInfo | None:
        """The decoded header once complete, else None."""
        return self._info

    @property
    def remainder(self) -> bytes:
        """Bytes fed after the end of the header: the start of the proxied stream."""
        return self._remainder

    def feed(self, data: bytes | bytearray | memoryview) -> ProxyInfo | None:
        """Feed bytes from the connection.

        Args:
            data: the next chunk; ``b""`` means the peer closed its side.

        Returns:
            The ProxyInfo once the header is complete (and on every later call; later bytes
            are appended to :attr:`remainder`), or None while more bytes are needed.

        Raises:
            ProxyProtocolError: the bytes cannot be a valid header, or EOF came mid-header.
        """
        if self._info is not None:
            self._remainder += bytes(data)
            return self._info
        if not data:
            raise ProxyProtocolError(
                "connection closed before the PROXY header was complete", len(self._buf)
            )
        old = len(self._buf)
        self._buf += data
        if self._version == 0:
            self._decide_version()
            if self._version == 0:
                return None
            old = 0
        if self._version == 1:
            return self._feed_v1(old)
        return self._feed_v2()

    def _decide_version(self) -> None:
        buf = self._buf
        signature = V1_PREFIX if buf[0] == V1_PREFIX[0] else V2_SIGNATURE
        n = min(len(buf), len(signature))
        for i in range(n):
            if buf[i] != signature[i]:
                raise ProxyProtocolError(f"not a PROXY protocol header (byte 0x{buf[i]:02x})", i)
        if n == len(signature):
            self._version = 1 if signature is V1_PREFIX else 2

    def _feed_v1(self, scan_from: int) -> ProxyInfo | None:
        buf = self._buf
        # A bare LF or a CR not followed by LF can never become a valid line: fail now.
        start = max(scan_from - 1, 0)
        lf = buf.find(b"\n", start, V1_MAX_LENGTH)
        cr = buf.find(b"\r", start, V1_MAX_LENGTH)
        if cr != -1 and cr + 1 < len(buf) and buf[cr + 1] != 0x0A:
            raise ProxyProtocolError("CR not followed by LF in v1 header", cr)
        if lf == -1:
            if len(buf) >= V1_MAX_LENGTH:
                raise ProxyProtocolError(
                    f"no CRLF within the first {V1_MAX_LENGTH} bytes of a v1 header",
                    V1_MAX_LENGTH,
                )
            return None
        if lf == 0 or buf[lf - 1] != 0x0D:
            raise ProxyProtocolError("LF without CR in v1 header", lf)
        end = lf + 1
        info = _parse_v1(bytes(buf[:end]))
        return self._finish(info, end)

    def _feed_v2(self) -> ProxyInfo | None:
        buf = self._buf
        if self._need == 0:
            self._need = _check_v2_fixed(bytes(buf[:V2_FIXED_LENGTH]), self._max_v2)
            if self._need == 0:
                return None
        if len(buf) < self._need:
            return None
        info = _parse_v2(bytes(buf[: self._need]))
        return self._finish(info, self._need)

    def _finish(self, info: ProxyInfo, end: int) -> ProxyInfo:
        self._remainder = bytes(self._buf[end:])
        self._buf = bytearray()
        self._info = info
        return info
