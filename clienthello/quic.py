"""QUIC: the ClientHello in a client's Initial packets (RFC 9000, RFC 9001, RFC 9369).

Sans-I/O like `clienthello.Reader`: feed the client-to-server UDP datagrams of one
connection to an `InitialReader`, one at a time and in the order captured, and it
returns a `QuicClientHello` once the CRYPTO stream holds the whole ClientHello::

    from clienthello import quic

    reader = quic.InitialReader()
    for datagram in client_datagrams:
        if (found := reader.feed(datagram)) is not None:
            print(found.hello.server_name, hex(found.version))
            break

The reader walks the packets coalesced in each datagram (RFC 9000 §12.2) by their
Length fields, removes header protection (RFC 9001 §5.4), decodes the packet number
(RFC 9000 appendix A.3), opens the payload with the Initial keys derived from the
client's original Destination Connection ID (RFC 9001 §5.2; re-derived from the new
one after a Retry, §5.8 and RFC 9000 §17.2.5), reads the frames an Initial may hold and
puts the CRYPTO frames together whatever their order, overlap or repetition. One small
table, `VERSIONS`, says what differs between QUIC v1, v2 and the drafts: the salt, the
HKDF labels, the packet-type bits and the Retry integrity key.

The helpers a capture analyzer and a router need are public too: `is_client_initial`
(a cheap test for every UDP datagram), `pull_quic_header`, `decode_packet_number`,
`initial_secrets`, `derive_key_iv_hp`, `initial_protection`, and builders for client and
server Initials, Retry packets and the CONNECTION_CLOSE a router sends to refuse a
connection. This module, with `clienthello._quic_crypto`, is the only part of
clienthello that needs the `cryptography` package; ``import clienthello`` does not load
it.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from clienthello._errors import HelloTooLarge, MalformedHello, NotTLS
from clienthello._model import ClientHello
from clienthello._parse import parse_handshake
from clienthello._quic_build import (
    ack_frame,
    build_connection_close,
    build_initial,
    build_retry,
    connection_close_frame,
    crypto_frame,
)
from clienthello._quic_crypto import (
    SAMPLE_LENGTH,
    TAG_LENGTH,
    PacketProtection,
)
from clienthello._quic_frames import crypto_frames
from clienthello._quic_packet import (
    CRYPTO_ERROR_BASE,
    DEFAULT_MAX_CRYPTO_BYTES,
    DEFAULT_MAX_PACKETS,
    MAX_CID_LENGTH,
    MIN_INITIAL_DATAGRAM,
    PING_FRAME,
    QUIC_DRAFT_29,
    QUIC_V1,
    QUIC_V2,
    TYPE_NAMES,
    VERSIONS,
    PacketType,
    QuicHeader,
    QuicVersion,
    decode_packet_number,
    derive_key_iv_hp,
    encode_varint,
    initial_protection,
    initial_secrets,
    is_client_initial,
    is_forcing_version_negotiation,
    pull_header,
    pull_quic_header,
    retry_integrity_tag,
    version_name,
)
from clienthello._record import HANDSHAKE_CLIENT_HELLO, HANDSHAKE_HEADER, Buffer

_u32 = struct.Struct("!I").unpack_from

__all__ = [
    # reading
    "InitialReader",
    "QuicClientHello",
    "is_client_initial",
    "pull_quic_header",
    "QuicHeader",
    "PacketType",
    "decode_packet_number",
    # versions and keys
    "QuicVersion",
    "VERSIONS",
    "QUIC_V1",
    "QUIC_V2",
    "QUIC_DRAFT_29",
    "is_forcing_version_negotiation",
    "version_name",
    "initial_secrets",
    "derive_key_iv_hp",
    "initial_protection",
    "PacketProtection",
    "retry_integrity_tag",
    # building
    "build_initial",
    "build_retry",
    "build_connection_close",
    "encode_varint",
    "crypto_frame",
    "ack_frame",
    "connection_close_frame",
    "PING_FRAME",
    # limits and wire constants
    "DEFAULT_MAX_CRYPTO_BYTES",
    "DEFAULT_MAX_PACKETS",
    "MAX_CID_LENGTH",
    "MIN_INITIAL_DATAGRAM",
    "CRYPTO_ERROR_BASE",
]

# -- reading ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuicClientHello:
    """A ClientHello read from QUIC Initial packets, with the connection's facts.

    Attributes:
        hello: the ClientHello; ``hello.raw`` is the handshake message from the
            CRYPTO stream, and offsets in its errors count from that stream's start.
        version: the QUIC version of the client's first Initial packet.
        original_destination_connection_id: the DCID of the client's first Initial.
        destination_connection_id: the DCID the Initial keys came from: the original
            one, or after a Retry the one the Retry gave.
        source_connection_id: the client's SCID, from its first Initial.
        token: the token of the first Initial that carried hello bytes (``b""`` for
            none); after a Retry, the Retry's token.
        retry_seen: whether a Retry came before the hello (told by `InitialReader.retry`
            or `InitialReader.feed_server`, or seen as a new DCID with new keys).
        packets: how many Initial packets were opened, from the first to the one
            that completed the hello (before a Retry too).
        crypto_frames: how many CRYPTO frames those packets held (repeats included).
        datagrams: the indices (0-based, counting every `InitialReader.feed`) of the
            datagrams whose CRYPTO frames carried bytes of this hello, in order.
        after_hello_retry: whether this is a second hello, sent after the server's
            HelloRetryRequest (read by a reader from `InitialReader.after_hello`).
    """

    hello: ClientHello
    version: int
    original_destination_connection_id: bytes
    destination_connection_id: bytes
    source_connection_id: bytes
    token: bytes
    retry_seen: bool
    packets: int
    crypto_frames: int
    datagrams: tuple[int, ...]
    after_hello_retry: bool = False

    @property
    def token_seen(self) -> bool:
        """Whether the Initial packets that carried the hello had a token."""
        return bool(self.token)


class _CryptoStream:
    """The Initial CRYPTO stream, put together from frames in any order (RFC 9000 §19.6).

    ``starts``/``ends`` are the sorted, disjoint, non-touching ranges held. A byte
    sent twice must be the same both times (RFC 9000 §2.2); the first copy is kept.
    ``base`` is the stream offset where the hello starts (after an earlier hello);
    the positions held count from it.
    """

    __slots__ = ("base", "buf", "ends", "limit", "starts", "total")

    def __init__(self, limit: int, base: int = 0) -> None:
        self.limit = limit
        self.base = base
        self.buf = bytearray()
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.total = -1  # the ClientHello's length with its header, once known

    def add(self, offset: int, data: bytes, where: str, at: int) -> bool:
        """Merge a CRYPTO frame's data; True if it brought bytes of the hello not held.

        ``where`` names the packet (``"datagram 0 packet 0"``) for errors.
        """
        if self.base:
            if offset + len(data) <= self.base:
                return False  # the earlier hello's bytes, sent again
            if offset < self.base:
                data = data[self.base - offset :]
                offset = 0
            else:
                offset -= self.base
        end = offset + len(data)
        if self.total >= 0:
            end = min(end, self.total)  # bytes after the hello (a second hello after HRR)
        if end <= offset:
            return False
        if end > self.limit:
            raise HelloTooLarge(
                f"{where} CRYPTO frame",
                f"CRYPTO data up to offset {end} exceeds max_crypto_bytes {self.limit}",
                at,
            )
        buf, starts, ends = self.buf, self.starts, self.ends
        if len(buf) < end:
            buf.extend(bytes(end - len(buf)))
        first = bisect.bisect_left(ends, offset)  # the first range ending at or after offset
        last = bisect.bisect_right(starts, end)  # past the last range starting by end
        cursor = offset
        new = False
        for k in range(first, last):
            lo, hi = max(starts[k], offset), min(ends[k], end)
            if lo < hi and buf[lo:hi] != data[lo - offset : hi - offset]:
                raise MalformedHello(
                    f"{where} CRYPTO frame",
                    f"CRYPTO bytes {lo}..{hi} differ from an earlier frame",
                    at,
                )
            if starts[k] > cursor:
                buf[cursor : starts[k]] = data[cursor - offset : starts[k] - offset]
                new = True
            cursor = max(cursor, ends[k])
        if cursor < end:
            buf[cursor:end] = data[cursor - offset : end - offset]
            new = True
        if first < last:
            starts[first:last] = [min(offset, starts[first])]
            ends[first:last] = [max(end, ends[last - 1])]
        else:
            starts.insert(first, offset)
            ends.insert(first, end)
        if self.total < 0 and starts[0] == 0 and ends[0] >= HANDSHAKE_HEADER:
            self._read_header(f"{where} CRYPTO frame", at)
        return new

    def _read_header(self, field: str, at: int) -> None:
        buf = self.buf
        if buf[0] != HANDSHAKE_CLIENT_HELLO:
            raise NotTLS(f"CRYPTO stream starts with handshake type {buf[0]}, not ClientHello", at)
        self.total = HANDSHAKE_HEADER + ((buf[1] << 16) | (buf[2] << 8) | buf[3])
        if self.total > self.limit:
            raise HelloTooLarge(
                field,
                f"ClientHello of {self.total} bytes exceeds max_crypto_bytes {self.limit}",
                at,
            )

    @property
    def complete(self) -> bool:
        return self.total >= 0 and self.ends[0] >= self.total and self.starts[0] == 0

    def message(self) -> bytes:
        return bytes(self.buf[: self.total])

    def prefix(self) -> bytes:
        """The bytes held from offset 0 up to the first gap (``b""`` without offset 0)."""
        if not self.starts or self.starts[0] != 0:
            return b""
        end = self.ends[0] if self.total < 0 else min(self.ends[0], self.total)
        return bytes(self.buf[:end])


# The stream of every reader whose hello is read: empty, and never added to again.
_SPENT = _CryptoStream(0)


class InitialReader:
    """Reads the ClientHello from the client-to-server datagrams of one QUIC connection.

    Every datagram is walked packet by packet (coalesced packets are split by their
    Length fields). Initial packets are opened with the Initial keys and their frames
    read; 0-RTT and Handshake packets are skipped by length; bytes after the last
    packet (zero padding, a short-header packet, anything not a long header of the
    connection's version) are ignored. Until an Initial has been read, a datagram must
    start with one; afterwards a datagram holding none (a 0-RTT-only datagram, say) is
    counted against ``max_packets`` and otherwise skipped.

    After a Retry, the client sends its Initials to the DCID the Retry gave and derives
    new keys from it (RFC 9001 §5.2); the reader re-keys when told (`retry`,
    `feed_server`) or when a later Initial with a token and another DCID opens with the
    keys of that DCID. Either way the CRYPTO stream starts over, as the client's does.
    A client answered with a HelloRetryRequest sends a second hello further on in the
    same stream: `after_hello` gives a reader for it.

    Args:
        max_crypto_bytes: the highest CRYPTO stream offset to hold (and so the largest
            ClientHello); past it `feed` raises `HelloTooLarge`.
        max_packets: how many packets may be read before the hello is complete; past
            it `feed` raises `HelloTooLarge`.
    """

    __slots__ = (
        "_after_hello_retry",
        "_crypto_frames",
        "_datagrams",
        "_fed",
        "_key_dcid",
        "_largest_pn",
        "_odcid",
        "_packets",
        "_result",
        "_retry_seen",
        "_scid",
        "_seen",
        "_stream",
        "_token",
        "_version",
        "max_crypto_bytes",
        "max_packets",
    )

    def __init__(
        self,
        max_crypto_bytes: int = DEFAULT_MAX_CRYPTO_BYTES,
        max_packets: int = DEFAULT_MAX_PACKETS,
    ) -> None:
        self.max_crypto_bytes = max_crypto_bytes
        self.max_packets = max_packets
        self._stream = _CryptoStream(max_crypto_bytes)
        self._result: QuicClientHello | None = None
        self._fed = 0  # datagrams fed
        self._seen = 0  # packets looked at, to enforce max_packets
        self._packets = 0  # Initial packets opened
        self._crypto_frames = 0
        self._datagrams: list[int] = []
        self._version: int | None = None
        self._odcid: bytes | None = None
        self._scid = b""
        self._key_dcid: bytes | None = None
        self._token: bytes | None = None
        self._retry_seen = False
        self._largest_pn = -1
        self._after_hello_retry = False

    @property
    def result(self) -> QuicClientHello | None:
        """The hello with its connection facts once complete, else None."""
        return self._result

    def partial(self) -> ClientHello | None:
        """What the CRYPTO stream holds of a hello that is not complete (yet).

        The fields read whole before the first missing byte, as
        ``clienthello.parse_handshake(..., partial=True)`` gives them: ``.complete``
        False, ``.error`` and ``.missing`` say what is not there. The whole hello once
        complete; None while nothing from the start of the hello has come.
        """
        if self._result is not None:
            return self._result.hello
        prefix = self._stream.prefix()
        if len(prefix) < HANDSHAKE_HEADER:
            return None
        try:
            return parse_handshake(prefix, partial=True)
        except (NotTLS, MalformedHello):
            return None

    @property
    def after_hello_retry(self) -> bool:
        """Whether this reader reads a second hello (made by `after_hello`)."""
        return self._after_hello_retry

    @property
    def crypto_bytes(self) -> int:
        """How many bytes of CRYPTO stream the reader holds (up to the furthest offset);
        0 once the hello is read, as the stream is let go then."""
        return len(self._stream.buf)

    @property
    def version(self) -> int | None:
        """The QUIC version of the first Initial read, or None before it."""
        return self._version

    @property
    def original_destination_connection_id(self) -> bytes | None:
        """The DCID of the client's first Initial, or None before it is read."""
        return self._odcid

    def feed(self, datagram: Buffer) -> QuicClientHello | None:
        """Read one client-to-server datagram; return the hello once it is complete.

        Args:
            datagram: a UDP payload sent by the client.

        Returns:
            None while the hello is incomplete, then the `QuicClientHello` (again on
            every later call, which reads nothing more).

        Raises:
            NotTLS: no Initial has been read yet and this datagram does not start with
                a client Initial: a short header, Version Negotiation, a version
                reserved to force negotiation, an unknown version, a clear fixed bit,
                another packet type; or the CRYPTO stream is not a ClientHello.
            MalformedHello: a header, frame or the hello itself is malformed, or an
                Initial does not open with the Initial keys (reason "not decryptable
                with the Initial keys"). Fields name the datagram and packet,
                e.g. ``"datagram 0 packet 0 payload"``; ``.offset`` is into that
                datagram (into the CRYPTO stream for errors in the hello).
            HelloTooLarge: over ``max_crypto_bytes`` or ``max_packets``.
        """
        if self._result is not None:
            return self._result
        index = self._fed
        self._fed += 1
        buf = bytes(datagram)
        pos = 0
        number = 0
        first_dcid = b""
        if not buf:
            self._first_header(buf, f"datagram {index} packet 0")  # raises before an Initial
            self._count_packet(f"datagram {index}")
            return None
        while pos < len(buf):
            where = f"datagram {index} packet {number}"
            if number == 0:
                header = self._first_header(buf, where)
                if header is None:
                    self._count_packet(where)
                    return None
                first_dcid = header.destination_cid
            else:
                header = self._coalesced_header(buf, pos, where)
                if header is None:
                    break
            self._count_packet(where)
            # RFC 9000 §12.2: coalesced packets with another DCID are not this
            # connection's; 0-RTT and Handshake packets are skipped by length.
            if header.packet_type is PacketType.INITIAL and header.destination_cid == first_dcid:
                self._read_initial(buf, header, index, where)
                if self._stream.complete:
                    return self._finish()
            pos = header.end
            number += 1
        return None

    def after_hello(self) -> InitialReader:
        """A reader for the ClientHello that may follow this one: after a HelloRetryRequest.

        A client answered with a HelloRetryRequest sends a second ClientHello in its
        Initial packets, in the same CRYPTO stream after the first and under the same
        Initial keys (RFC 8446 §4.1.4, RFC 9001 §4.1), by then to the server's
        connection ID. The reader returned is fed the client's later datagrams of this
        connection and returns that hello if one comes; an Initial that holds no CRYPTO
        data (an ACK of the server's Initial, say) returns None. Its
        ``after_hello_retry`` is True. An Initial of another connection does not open
        with these keys: its `feed` raises `MalformedHello` ("not decryptable").

        Raises:
            ValueError: this reader has not returned its hello yet.
        """
        first = self._result
        if first is None:
            raise ValueError("after_hello() needs a complete first hello")
        reader = InitialReader(self.max_crypto_bytes, self.max_packets)
        reader._stream = _CryptoStream(self.max_crypto_bytes, base=len(first.hello.raw))
        reader._version = first.version
        reader._odcid = first.original_destination_connection_id
        reader._key_dcid = first.destination_connection_id
        reader._scid = first.source_connection_id
        reader._retry_seen = first.retry_seen
        reader._largest_pn = self._largest_pn
        reader._after_hello_retry = True
        return reader

    def retry(self, destination_cid: bytes) -> None:
        """Tell the reader that the server sent a Retry (RFC 9000 §17.2.5).

        The client's next Initials go to the Retry's Source Connection ID, and their
        keys are derived from it; the CRYPTO stream starts over.

        Args:
            destination_cid: the Retry packet's Source Connection ID; ignored once a hello
                has been read, and by the reader of a second hello (`after_hello`).
        """
        if self._result is not None or self._after_hello_retry:
            return
        self._key_dcid = bytes(destination_cid)
        self._retry_seen = True
        self._stream = _CryptoStream(self.max_crypto_bytes)
        self._datagrams = []
        self._token = None

    def feed_server(self, datagram: Buffer) -> bool:
        """Look at a server-to-client datagram; re-key if it is a valid Retry.

        A Retry is accepted only once a client Initial has been read, only if it is of
        the connection's version and only if its integrity tag checks out against the
        original DCID (clients discard other Retries, RFC 9001 §5.8). Anything else
        (the server's Initial, Handshake, short-header packets, garbage) is ignored.

        Args:
            datagram: a UDP payload sent by the server.

        Returns:
            True if it was a Retry and the reader re-keyed.
        """
        if (
            self._result is not None
            or self._odcid is None
            or self._retry_seen
            or self._after_hello_retry  # a Retry comes before any hello is answered
        ):
            return False
        buf = bytes(datagram)
        if len(buf) < 7 or buf[0] & 0xC0 != 0xC0 or _u32(buf, 1)[0] != self._version:
            return False
        try:
            header = pull_header(buf, 0, "retry")
        except MalformedHello:
            return False
        if header.packet_type is not PacketType.RETRY or header.destination_cid != self._scid:
            return False
        version = self._version
        assert version is not None  # set with _odcid
        tag = retry_integrity_tag(version, self._odcid, buf[: len(buf) - TAG_LENGTH])
        if tag != header.integrity_tag:
            return False
        self.retry(header.source_cid)
        return True

    def _count_packet(self, where: str) -> None:
        self._seen += 1
        if self._seen > self.max_packets:
            raise HelloTooLarge(
                where,
                f"{self._seen} packets without a complete ClientHello "
                f"(max_packets {self.max_packets})",
                0,
            )

    def _first_header(self, buf: bytes, where: str) -> QuicHeader | None:
        """The first packet's header; None to skip a datagram once an Initial was read."""
        started = self._version is not None
        n = len(buf)
        if n == 0 or not buf[0] & 0x80:
            if started:
                return None
            if n == 0:
                raise NotTLS("empty datagram", 0)
            raise NotTLS("first bit clear: not a QUIC long-header packet", 0)
        if n < 5:
            if started:
                return None
            raise MalformedHello(f"{where} header", f"{n} byte(s), a long header needs 7", 0)
        version = _u32(buf, 1)[0]
        if started:
            if version not in VERSIONS:
                return None
            return pull_header(buf, 0, where)
        if version == 0:
            raise NotTLS("QUIC version negotiation packet", 1)
        if is_forcing_version_negotiation(version):
            raise NotTLS(f"QUIC version 0x{version:08x} reserved to force version negotiation", 1)
        if version not in VERSIONS:
            raise NotTLS(f"QUIC version 0x{version:08x} unknown to this reader", 1)
        if not buf[0] & 0x40:
            raise NotTLS("QUIC fixed bit clear", 0)
        header = pull_header(buf, 0, where)
        if header.packet_type is not PacketType.INITIAL:
            assert header.packet_type is not None  # the version is known
            raise NotTLS(f"QUIC {TYPE_NAMES[header.packet_type]} packet, not an Initial", 0)
        return header

    def _coalesced_header(self, buf: bytes, pos: int, where: str) -> QuicHeader | None:
        """A later packet's header; None for trailing bytes that are not one."""
        if not buf[pos] & 0x80 or pos + 5 > len(buf):
            return None
        version = _u32(buf, pos + 1)[0]
        if version != self._version and version not in VERSIONS:
            return None
        try:
            return pull_header(buf, pos, where)
        except MalformedHello:
            return None  # trailing garbage, like trailing padding, is not a packet

    def _open(
        self, buf: bytes, header: QuicHeader, key_dcid: bytes, where: str
    ) -> tuple[int, bytes, int] | None:
        """Remove the protection: ``(packet number, payload, payload offset)`` or None."""
        assert header.version is not None and header.pn_offset is not None  # an Initial
        pn_offset = header.pn_offset
        if pn_offset + 4 + SAMPLE_LENGTH > header.end:
            raise MalformedHello(
                f"{where} length",
                f"Length {header.length} too short for the header protection sample",
                pn_offset,
            )
        protection = initial_protection(header.version, key_dcid)
        mask = protection.mask(buf[pn_offset + 4 : pn_offset + 4 + SAMPLE_LENGTH])
        first = header.first_byte ^ (mask[0] & 0x0F)
        pn_length = (first & 0x03) + 1
        truncated = int.from_bytes(buf[pn_offset : pn_offset + pn_length], "big") ^ (
            int.from_bytes(mask[1 : 1 + pn_length], "big")
        )
        pn = decode_packet_number(truncated, pn_length * 8, self._largest_pn + 1)
        associated = (
            bytes([first])
            + buf[header.start + 1 : pn_offset]
            + truncated.to_bytes(pn_length, "big")
        )
        payload_offset = pn_offset + pn_length
        payload = protection.decrypt(pn, associated, buf[payload_offset : header.end])
        if payload is None:
            return None
        return pn, payload, payload_offset

    def _read_initial(self, buf: bytes, header: QuicHeader, index: int, where: str) -> None:
        key_dcid = header.destination_cid if self._key_dcid is None else self._key_dcid
        opened = self._open(buf, header, key_dcid, where)
        if (
            opened is None
            and self._key_dcid is not None
            and not self._after_hello_retry  # keys are fixed once a hello has been read
            and header.token
            and header.destination_cid != key_dcid
        ):
            # A Retry we were not told of: its token and DCID are in this packet.
            opened = self._open(buf, header, header.destination_cid, where)
            if opened is not None:
                self.retry(header.destination_cid)
        if opened is None:
            raise MalformedHello(
                f"{where} payload", "not decryptable with the Initial keys", header.pn_offset or 0
            )
        pn, payload, payload_offset = opened
        if self._key_dcid is None:
            self._key_dcid = key_dcid
        if self._odcid is None:
            self._odcid = header.destination_cid
            self._scid = header.source_cid
        if self._version is None:
            self._version = header.version
        self._largest_pn = max(self._largest_pn, pn)
        self._packets += 1
        contributed = False
        for offset, data, at in crypto_frames(payload, payload_offset, where):
            self._crypto_frames += 1
            if self._stream.add(offset, data, where, at):
                contributed = True
        if contributed:
            if not self._datagrams or self._datagrams[-1] != index:
                self._datagrams.append(index)
            if self._token is None:
                self._token = header.token

    def _finish(self) -> QuicClientHello:
        hello = parse_handshake(self._stream.message())
        assert self._version is not None and self._odcid is not None  # an Initial was read
        assert self._key_dcid is not None
        self._result = QuicClientHello(
            hello=hello,
            version=self._version,
            original_destination_connection_id=self._odcid,
            destination_connection_id=self._key_dcid,
            source_connection_id=self._scid,
            token=self._token or b"",
            retry_seen=self._retry_seen,
            packets=self._packets,
            crypto_frames=self._crypto_frames,
            datagrams=tuple(self._datagrams),
            after_hello_retry=self._after_hello_retry,
        )
        # Nothing is read again: a reader kept after its hello (in an analyzer's table
        # of finished connections) holds the result, not ~2 KB of stream and its lists.
        self._stream = _SPENT
        self._datagrams.clear()
        return self._result
