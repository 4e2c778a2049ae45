"""The incremental reader: feed bytes as they arrive, get the ClientHello once complete."""

from __future__ import annotations

import contextlib

from clienthello._errors import HelloTooLarge, MalformedHello, NeedMoreData
from clienthello._model import ClientHello
from clienthello._parse import parse
from clienthello._record import (
    CONTENT_TYPE_HANDSHAKE,
    HANDSHAKE_CLIENT_HELLO,
    HANDSHAKE_HEADER,
    MAX_HELLO_LENGTH,
    MAX_RECORD_LENGTH,
    RECORD_HEADER,
    SSL2_HEADER,
    Buffer,
    check_prefix,
    read_handshake,
)

__all__ = ["Reader", "DEFAULT_MAX_SIZE"]

# The router's default; h11 caps its receive buffer at 16 KiB too. Chrome's
# post-quantum hellos are about 1.8 KB, so this leaves a wide margin.
DEFAULT_MAX_SIZE = 16384


class Reader:
    """Reads one ClientHello from a byte stream delivered in pieces.

    Completeness is decided from the record and handshake headers as bytes arrive,
    each header looked at once; the hello is parsed a single time, when complete.

    Example::

        reader = Reader()
        while (hello := reader.feed(await sock.recv(4096))) is None:
            pass
        backend.send(reader.buffered)

    Args:
        max_size: the most bytes (record headers included) to buffer before the
            hello is complete; past it `feed` raises `HelloTooLarge`.
    """

    __slots__ = (
        "_buf",
        "_consumed",
        "_have",
        "_head",
        "_hello",
        "_max_handshake",
        "_pos",
        "_record_end",
        "_records",
        "_taken",
        "_total",
        "max_size",
    )

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._hello: ClientHello | None = None
        self._consumed = 0
        self._pos = 0  # where the next record header starts
        self._record_end = -1  # end of the record being read, -1 between records
        self._head = bytearray()  # the first 4 handshake bytes, once seen
        self._have = 0  # handshake bytes seen so far
        self._total = -1  # handshake message length with header, once known
        self._records = 0
        self._taken = 0  # bytes of the current record's body already looked at
        # Each record adds a 5-byte header, so the message itself can be at most this,
        # and never more than any ClientHello can be (as `parse` rules).
        largest = HANDSHAKE_HEADER + MAX_HELLO_LENGTH
        self._max_handshake = max(0, min(max_size - RECORD_HEADER, largest))

    @property
    def buffered(self) -> bytes:
        """Every byte fed so far, in order (to replay to a backend)."""
        return bytes(self._buf)

    @property
    def hello(self) -> ClientHello | None:
        """The ClientHello once complete, else None."""
        return self._hello

    @property
    def consumed(self) -> int:
        """Once complete: how many bytes of the stream held the hello's records."""
        return self._consumed

    def feed(self, data: Buffer) -> ClientHello | None:
        """Add bytes received; return the ClientHello once it is complete.

        Args:
            data: the next bytes of the stream; ``b""`` means the peer closed.

        Returns:
            None while more bytes are needed, then the ClientHello (again on every
            later call; later bytes are only kept in `buffered`).

        Raises:
            NotTLS: the first bytes rule TLS out (decided as early as possible).
            MalformedHello: a header is wrong, or the peer closed mid-hello.
            HelloTooLarge: the hello needs more than ``max_size`` bytes.
        """
        if self._hello is not None:
            self._buf += data
            return self._hello
        if not data:
            reason = "peer closed mid-hello" if self._buf else "peer closed before sending"
            raise MalformedHello("record", reason, len(self._buf))
        self._buf += data
        if not self._complete():
            if len(self._buf) > self.max_size:
                raise HelloTooLarge(
                    "record",
                    f"{len(self._buf)} bytes buffered, hello still incomplete "
                    f"(limit {self.max_size})",
                    self.max_size,
                )
            return None
        if self._consumed > self.max_size:
            raise HelloTooLarge(
                "record",
                f"hello took {self._consumed} bytes of records (limit {self.max_size})",
                self.max_size,
            )
        self._hello = parse(self._buf)
        return self._hello

    def _complete(self) -> bool:
        """Look at the new bytes' headers; True once the hello's last byte is in."""
        buf = self._buf
        n = len(buf)
        if self._records == 0 and self._record_end < 0:
            check_prefix(buf[:RECORD_HEADER])
            if buf[0] & 0x80:  # SSLv2-compatible: a 2-byte header with the length
                if n < SSL2_HEADER:
                    return False
                end = SSL2_HEADER + (((buf[0] & 0x7F) << 8) | buf[1])
                self._consumed = end
                return n >= end
        while True:
            if self._record_end < 0:
                if self._pos + RECORD_HEADER > n:
                    return False
                self._start_record()
            body = self._pos + RECORD_HEADER
            seen_to = min(n, self._record_end)
            first_new = body + self._taken
            if seen_to > first_new:
                head = self._head
                if len(head) < HANDSHAKE_HEADER:
                    head += buf[first_new : min(seen_to, first_new + HANDSHAKE_HEADER - len(head))]
                    if head[0] != HANDSHAKE_CLIENT_HELLO or len(head) == HANDSHAKE_HEADER:
                        self._check_head()
                self._have += seen_to - first_new
                self._taken = seen_to - body
            if 0 <= self._total <= self._have:
                self._consumed = self._record_end
                return True
            if seen_to < self._record_end:
                return False
            self._pos = self._record_end
            self._record_end = -1

    def _start_record(self) -> None:
        buf = self._buf
        pos = self._pos
        length = (buf[pos + 3] << 8) | buf[pos + 4]
        if (
            buf[pos] != CONTENT_TYPE_HANDSHAKE
            or buf[pos + 1] != 3
            or length == 0
            or length > MAX_RECORD_LENGTH
        ):
            self._raise_precise()
        self._record_end = pos + RECORD_HEADER + length
        self._taken = 0
        self._records += 1

    def _check_head(self) -> None:
        head = self._head
        if head[0] != HANDSHAKE_CLIENT_HELLO:
            self._raise_precise()
        self._total = HANDSHAKE_HEADER + ((head[1] << 16) | (head[2] << 8) | head[3])
        if self._total > self._max_handshake:
            self._raise_precise()

    def _raise_precise(self) -> None:
        """Raise the error the record layer gives for the bytes buffered so far.

        The incremental checks above only decide *that* something is wrong; the
        one-shot record reader says what, with the field and offset.
        """
        with contextlib.suppress(NeedMoreData):
            read_handshake(self._buf, self._max_handshake)
        raise MalformedHello("record", "inconsistent record framing", self._pos)
