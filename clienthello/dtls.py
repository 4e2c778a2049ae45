"""DTLS: the ClientHellos in a client's datagrams (DTLS 1.0/1.2, RFC 6347; 1.3, RFC 9147).

Sans-I/O like `clienthello.Reader`: feed the client-to-server datagrams of one flow to a
`DtlsReader`, in the order captured, and it returns each ClientHello once its last
byte is in. It reads the 13-byte DTLSPlaintext record header (type, version, epoch,
48-bit sequence number, length; several records per datagram, none spanning two,
RFC 6347 §4.1.1) and the 12-byte handshake header (msg_type, length, message_seq,
fragment_offset, fragment_length, §4.2.2), and puts the fragments of each message_seq
together whatever their order, overlap or repetition: a byte-range merge, bounded by
``max_size``. A DTLS 1.3 ClientHello is sent the same way (RFC 9147 §5: a
DTLSPlaintext record, legacy version 0xfefd, supported_versions listing 0xfefc).

A HelloVerifyRequest (RFC 6347 §4.2.1) or HelloRetryRequest exchange makes the client
send a second ClientHello with the cookie and the next message_seq: the reader goes on
after the first and returns the second too. A retransmission that repeats a hello
already returned (same message_seq, same bytes) is not returned again.
"""

from __future__ import annotations

from dataclasses import dataclass

from clienthello._errors import (
    ClientHelloError,
    HelloTooLarge,
    MalformedHello,
    NeedMoreData,
    NotTLS,
)
from clienthello._model import ClientHello
from clienthello._parse import DTLS_HANDSHAKE_HEADER, parse_dtls_body, parse_partial_body
from clienthello._record import CONTENT_TYPE_HANDSHAKE, HANDSHAKE_CLIENT_HELLO, Buffer

__all__ = [
    "DtlsReader",
    "DtlsClientHello",
    "parse_dtls_handshake",
    "DTLS_RECORD_HEADER",
    "DTLS_HANDSHAKE_HEADER",
    "DTLS_VERSIONS",
    "DEFAULT_MAX_SIZE",
]

DTLS_RECORD_HEADER = 13  # RFC 6347 §4.1: type, version, epoch, sequence_number (48), length
# Record versions of a DTLS ClientHello: 1.0 (0xfeff), 1.2 (0xfefd), 1.3 (0xfefc; RFC
# 9147 §5.1 says 0xfefd, some stacks send 0xfefc), and OpenSSL's pre-RFC
# DTLS1_BAD_VER (0x0100), which Cisco AnyConnect still speaks.
DTLS_VERSIONS = frozenset({0xFEFF, 0xFEFD, 0xFEFC, 0x0100})
# Bytes held at once while assembling: 64 KiB is more than any ClientHello needs.
DEFAULT_MAX_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class DtlsClientHello:
    """A ClientHello found in DTLS datagrams, with where it came from.

    Attributes:
        hello: the ClientHello; ``hello.cookie`` is the cookie (``b""`` if none) and
            ``hello.raw`` the message with a 12-byte header as if sent unfragmented.
        message_seq: the handshake message_seq (0 first; 1 after a HelloVerifyRequest).
        record_version: the version field of the first record that carried it.
        records: how many records carried fragments of it (repeats included).
        fragments: how many handshake fragments of it were read (repeats included).
        datagrams: the indices (0-based, counting every `DtlsReader.feed`) of the
            datagrams that carried bytes of it, in order.
    """

    hello: ClientHello
    message_seq: int
    record_version: int
    records: int
    fragments: int
    datagrams: tuple[int, ...]


def parse_dtls_handshake(data: Buffer) -> ClientHello:
    """Parse a whole DTLS ClientHello handshake message (12-byte header, then the body).

    For callers that did the reassembly themselves: the header must say
    fragment_offset 0 and fragment_length equal to length. Bytes after the message
    are ignored.

    Raises:
        NotTLS: the message type is not ClientHello.
        MalformedHello: the header is short or says a fragment, or a field is wrong;
            ``.offset`` is into ``data``.
    """
    n = len(data)
    if n >= 1 and data[0] != HANDSHAKE_CLIENT_HELLO:
        raise NotTLS(f"handshake type {data[0]}, not ClientHello (1)", 0)
    if n < DTLS_HANDSHAKE_HEADER:
        raise MalformedHello("handshake", f"{n} bytes, the header needs 12", 0)
    length = _u24(data, 1)
    if _u24(data, 6) != 0 or _u24(data, 9) != length:
        raise MalformedHello("handshake.fragment_offset", "a fragment, not a whole message", 6)
    if n < DTLS_HANDSHAKE_HEADER + length:
        raise MalformedHello(
            "handshake.length", f"length {length} overruns the {n - 12} bytes given", 1
        )
    return parse_dtls_body(bytes(data[: DTLS_HANDSHAKE_HEADER + length]))


def _u24(data: Buffer, pos: int) -> int:
    return (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]


class _Message:
    """One ClientHello (one message_seq) being put together from fragments."""

    __slots__ = (
        "body",
        "datagrams",
        "fragments",
        "have",
        "length",
        "message_seq",
        "record_version",
        "records",
        "sources",
    )

    def __init__(self, message_seq: int, length: int, record_version: int) -> None:
        self.message_seq = message_seq
        self.length = length
        self.record_version = record_version
        self.body = bytearray(length)
        self.have: list[tuple[int, int]] = []  # merged [start, end) ranges held, sorted
        self.records = 0
        self.fragments = 0
        self.datagrams: list[int] = []
        # (start, end in the body, datagram index, offset of `start` in that datagram),
        # to point an error in the finished message back at the datagram it came from.
        self.sources: list[tuple[int, int, int, int]] = []

    def add(self, start: int, fragment: bytes) -> str | None:
        """Merge a fragment at ``start``; the reason if it contradicts bytes held."""
        end = start + len(fragment)
        body = self.body
        for a, b in self.have:
            lo, hi = max(a, start), min(b, end)
            if lo < hi and body[lo:hi] != fragment[lo - start : hi - start]:
                return f"bytes {lo}..{hi} differ from an earlier fragment"
        body[start:end] = fragment
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self.have, (start, end)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.have = merged
        return None

    @property
    def complete(self) -> bool:
        return self.have == [(0, self.length)]

    def raw(self) -> bytes:
        length = self.length.to_bytes(3, "big")
        header = b"\x01" + length + self.message_seq.to_bytes(2, "big") + b"\x00\x00\x00" + length
        return header + bytes(self.body)

    def locate(self, offset: int) -> tuple[int, int]:
        """(datagram index, offset in it) of a byte of `raw`, for an error message.

        A byte of the 12-byte header maps into the header of the fragment at offset 0.
        """
        body_offset = offset - DTLS_HANDSHAKE_HEADER
        for start, end, datagram, at in self.sources:
            if body_offset < 0 and start == 0:
                return datagram, at + body_offset
            if start <= body_offset < end:
                return datagram, at + body_offset - start
        return self.sources[0][2], self.sources[0][3]


class DtlsReader:
    """Reads the ClientHellos of one DTLS flow from the client's datagrams.

    Example::

        reader = DtlsReader()
        for datagram in client_to_server:
            if (found := reader.feed(datagram)) is not None:
                print(found.message_seq, found.hello.server_name, found.hello.cookie)

    Until the first ClientHello is complete, every datagram must start with a DTLS
    handshake record (else `NotTLS`: demultiplex STUN/RTP first, RFC 7983). After
    it, records of other types or epochs (ChangeCipherSpec, encrypted records, DTLS
    1.3's unified headers) and other handshake messages are passed over.

    Args:
        max_size: the most handshake bytes held at once for hellos being assembled;
            past it (or for a hello declaring more) `feed` raises `HelloTooLarge`.
    """

    __slots__ = ("_datagram", "_held", "_messages", "_pending", "_reported", "hellos", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size
        self.hellos: list[DtlsClientHello] = []  # every hello returned so far, in order
        self._datagram = -1  # index of the datagram being read
        self._messages: dict[int, _Message] = {}  # message_seq -> assembly
        self._reported: dict[int, set[bytes]] = {}  # message_seq -> raw messages returned
        self._pending: list[DtlsClientHello] = []
        self._held = 0

    def feed(self, datagram: Buffer) -> DtlsClientHello | None:
        """Read one datagram; return a ClientHello it completes, else None.

        Args:
            datagram: one UDP payload from the client, as captured.

        Returns:
            The ClientHello this datagram completed, or None. Should one datagram
            complete two (different message_seq), the second comes from
            `next_hello` or the next `feed`.

        Raises:
            NotTLS: before the first hello, a datagram does not start with a DTLS
                handshake record, or the first handshake message is not a ClientHello.
            MalformedHello: a record or fragment header is wrong, fragments of one
                message disagree, or the hello itself is malformed. ``.field``
                starts with ``datagram[i]`` and ``.offset`` is into that datagram.
            HelloTooLarge: more than ``max_size`` bytes would be held.
        """
        self._datagram += 1
        data = bytes(datagram)
        if data:
            self._read_datagram(data)
        return self.next_hello()

    def partial(self) -> ClientHello | None:
        """What the earliest unfinished ClientHello holds: the fields read whole before its
        first missing byte (``.complete`` False; ``.error`` and ``.missing`` say what is
        not there), as ``clienthello.parse(..., partial=True)`` does for TLS. None when
        no hello is being put together or its first bytes have not come.
        """
        if not self._messages:
            return None
        message = self._messages[min(self._messages)]
        if not message.have or message.have[0][0] != 0:
            return None
        held = message.have[0][1]
        raw = message.raw()[: DTLS_HANDSHAKE_HEADER + held]
        cut = NeedMoreData(message.length - held)
        try:
            return parse_partial_body(raw, DTLS_HANDSHAKE_HEADER, cut, dtls=True)
        except ClientHelloError:
            return None

    def next_hello(self) -> DtlsClientHello | None:
        """A hello completed but not yet returned (only when a datagram completed two)."""
        return self._pending.pop(0) if self._pending else None

    def _read_datagram(self, data: bytes) -> None:
        index = self._datagram
        strict = not self.hellos and not self._pending
        n = len(data)
        pos = 0
        record = 0
        while pos < n:
            first = data[pos]
            if strict and record == 0:
                self._check_first_record(data)
            # Past the first hello, a byte that is no DTLS content type (20 to 26) ends
            # the datagram: DTLS 1.3 ciphertext with a unified header (RFC 9147 §4,
            # 0b001xxxxx) may omit its length, and STUN or RTP sharing the flow (RFC
            # 7983) is not DTLS at all.
            if not 20 <= first <= 26:
                if strict:
                    raise MalformedHello(
                        f"datagram[{index}] record[{record}].type",
                        f"record type {first}, not a DTLS content type",
                        pos,
                    )
                return
            where = f"datagram[{index}] record[{record}]"
            if pos + DTLS_RECORD_HEADER > n:
                raise MalformedHello(
                    where, f"{n - pos} bytes left, a header needs {DTLS_RECORD_HEADER}", pos
                )
            version = (data[pos + 1] << 8) | data[pos + 2]
            epoch = (data[pos + 3] << 8) | data[pos + 4]
            length = (data[pos + 11] << 8) | data[pos + 12]
            body = pos + DTLS_RECORD_HEADER
            if body + length > n:
                raise MalformedHello(
                    f"{where}.length",
                    f"length {length} overruns the datagram ({n - body} bytes left)",
                    pos + 11,
                )
            if first == CONTENT_TYPE_HANDSHAKE and epoch == 0:
                if length == 0:
                    raise MalformedHello(
                        f"{where}.length", "zero-length handshake record", pos + 11
                    )
                if version not in DTLS_VERSIONS:
                    raise MalformedHello(
                        f"{where}.version", f"version 0x{version:04x}, not DTLS", pos + 1
                    )
                self._read_record(data, body, body + length, version, where, strict and record == 0)
            pos = body + length
            record += 1

    def _check_first_record(self, data: bytes) -> None:
        if data[0] != CONTENT_TYPE_HANDSHAKE:
            raise NotTLS(f"record type {data[0]}, not handshake (22)", 0)
        if len(data) >= 3:
            version = (data[1] << 8) | data[2]
            if version not in DTLS_VERSIONS:
                raise NotTLS(f"record version 0x{version:04x}, not DTLS", 1)

    def _read_record(
        self, data: bytes, pos: int, end: int, version: int, where: str, first: bool
    ) -> None:
        """Read the handshake fragments of one record (one or more, RFC 6347 §4.2.3)."""
        fragment = 0
        counted: set[int] = set()
        while pos < end:
            field = f"{where} fragment[{fragment}]"
            if pos + DTLS_HANDSHAKE_HEADER > end:
                raise MalformedHello(
                    field, f"{end - pos} bytes left, a handshake header needs 12", pos
                )
            msg_type = data[pos]
            length = _u24(data, pos + 1)
            message_seq = (data[pos + 4] << 8) | data[pos + 5]
            offset = _u24(data, pos + 6)
            frag_len = _u24(data, pos + 9)
            body = pos + DTLS_HANDSHAKE_HEADER
            if body + frag_len > end:
                raise MalformedHello(
                    f"{field}.fragment_length",
                    f"length {frag_len} overruns the record ({end - body} bytes left)",
                    pos + 9,
                )
            if offset + frag_len > length:
                raise MalformedHello(
                    f"{field}.fragment_offset",
                    f"fragment {offset}+{frag_len} runs past the message length {length}",
                    pos + 6,
                )
            if first and fragment == 0 and msg_type != HANDSHAKE_CLIENT_HELLO:
                raise NotTLS(f"handshake type {msg_type}, not ClientHello (1)", pos)
            if msg_type == HANDSHAKE_CLIENT_HELLO:
                self._add_fragment(
                    data, pos, message_seq, length, offset, frag_len, version, field,
                    message_seq not in counted,
                )  # fmt: skip
                counted.add(message_seq)
            pos = body + frag_len
            fragment += 1

    def _add_fragment(
        self,
        data: bytes,
        pos: int,
        message_seq: int,
        length: int,
        offset: int,
        frag_len: int,
        version: int,
        field: str,
        new_record: bool,
    ) -> None:
        message = self._messages.get(message_seq)
        if message is None:
            if self._held + length > self.max_size:
                raise HelloTooLarge(
                    f"{field}.length",
                    f"message length {length} would hold {self._held + length} bytes "
                    f"(limit {self.max_size})",
                    pos + 1,
                )
            message = self._messages[message_seq] = _Message(message_seq, length, version)
            self._held += length
        elif message.length != length:
            raise MalformedHello(
                f"{field}.length",
                f"length {length}, an earlier fragment of message {message_seq} "
                f"said {message.length}",
                pos + 1,
            )
        body = pos + DTLS_HANDSHAKE_HEADER
        conflict = message.add(offset, data[body : body + frag_len])
        if conflict is not None:
            raise MalformedHello(field, conflict, body)
        message.fragments += 1
        message.records += new_record
        if not message.datagrams or message.datagrams[-1] != self._datagram:
            message.datagrams.append(self._datagram)
        message.sources.append((offset, offset + frag_len, self._datagram, body))
        if message.complete:
            self._finish(message)

    def _finish(self, message: _Message) -> None:
        del self._messages[message.message_seq]
        self._held -= message.length
        raw = message.raw()
        seen = self._reported.setdefault(message.message_seq, set())
        key = bytes(message.body)
        if key in seen:
            return  # a retransmission of a hello already returned
        try:
            hello = parse_dtls_body(raw)
        except MalformedHello as err:
            datagram, offset = message.locate(err.offset)
            raise type(err)(f"datagram[{datagram}] {err.field}", err.reason, offset) from None
        # Keeping whole messages to recognise retransmissions is bounded like the
        # assembly: they count towards max_size for as long as the reader lives.
        self._held += len(key)
        if self._held > self.max_size:
            raise HelloTooLarge(
                "handshake",
                f"hellos returned so far hold {self._held} bytes (limit {self.max_size})",
                0,
            )
        seen.add(key)
        found = DtlsClientHello(
            hello,
            message.message_seq,
            message.record_version,
            message.records,
            message.fragments,
            tuple(message.datagrams),
        )
        self.hellos.append(found)
        self._pending.append(found)
