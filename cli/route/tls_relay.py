"""The relay of a terminated connection: TLS on the client's side, plain bytes (or TLS again)
on the backend's, through `ssl.SSLObject` over memory BIOs on the router's own sockets.

The handshake starts from the bytes the router already read (the ClientHello it peeked
at), which go into the SSLObject's incoming BIO first; after that every record is read and
written with the non-blocking helpers of `sniinspect.route.sockets`. Splice cannot move
these bytes (they are decrypted on the way), so both directions are copy loops: read what
one end has, write it to the other, pass an EOF on as a half-close (a TLS close_notify
towards a TLS end), stop at ``idle_timeout`` without a byte either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

from sniinspect.route.sockets import Timeout, os_error, send_all, wait

__all__ = ["End", "PlainEnd", "TLSEnd", "TLSRelay", "READ_SIZE"]

# Bytes read from a socket per call: four full TLS records, so bulk data costs few calls.
READ_SIZE = 1 << 16
# How long a failing handshake may take to deliver its alert before the socket closes.
ALERT_GRACE = 1.0


async def _recv(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float | None
) -> bytes:
    while True:
        try:
            return sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            pass
        if deadline is not None and loop.time() >= deadline:
            raise Timeout
        await wait(loop, sock.fileno(), False, deadline)


class End:
    """One side of the relay: something to read bytes from and write bytes to."""

    sock: socket.socket
    raw_in = 0  # bytes read from the socket (as on the wire)
    raw_out = 0  # bytes written to the socket

    async def read(self, deadline: float | None) -> bytes:
        """The next bytes, b"" at EOF. Raises Timeout, OSError, ssl.SSLError."""
        raise NotImplementedError

    async def write(self, data: bytes, timeout: float | None) -> None:
        """Write every byte. Raises OSError, Timeout."""
        raise NotImplementedError

    async def write_eof(self, timeout: float | None) -> None:
        """Tell the peer no more bytes are coming (a half-close)."""
        raise NotImplementedError


class PlainEnd(End):
    """A plain TCP (or Unix) socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.sock = sock

    async def read(self, deadline: float | None) -> bytes:
        data = await _recv(self.loop, self.sock, deadline)
        self.raw_in += len(data)
        return data

    async def write(self, data: bytes, timeout: float | None) -> None:
        await send_all(self.loop, self.sock, data, timeout)
        self.raw_out += len(data)

    async def write_eof(self, timeout: float | None) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)


class TLSEnd(End):
    """A socket carrying TLS, spoken through an `ssl.SSLObject` (server or client side).

    Writes to the socket are serialised by a lock: both directions of the relay may make
    TLS records (data one way, a KeyUpdate or alert answered the other), and the records
    must leave in the order the SSLObject made them.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ctx: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        first: bytes = b"",
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, server_hostname=server_hostname
        )
        if first:
            self.incoming.write(first)
            self.raw_in += len(first)
        self._lock = asyncio.Lock()
        self._eof_sent = False

    async def flush(self, timeout: float | None) -> None:
        """Send whatever TLS records the SSLObject has made."""
        async with self._lock:
            data = self.outgoing.read()
            if data:
                await send_all(self.loop, self.sock, data, timeout)
                self.raw_out += len(data)

    async def handshake(self, deadline: float) -> None:
        """Drive the handshake to its end; a failure's alert is sent before it raises.

        Raises:
            ssl.SSLError: the handshake failed (the peer's alert, no shared cipher, a
                certificate that does not verify, EOF).
            Timeout: the deadline passed.
            OSError: the socket failed.
        """
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self.flush(max(deadline - self.loop.time(), 0.001))
                await self._pull(deadline)
            except ssl.SSLError:
                with contextlib.suppress(OSError, Timeout):
                    await self.flush(ALERT_GRACE)
                raise
        await self.flush(max(deadline - self.loop.time(), 0.001))

    async def read(self, deadline: float | None) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                data = self.obj.read(READ_SIZE)
                if not data:  # close_notify (CPython returns b"" until we send ours)
                    return b"".join(chunks)
                chunks.append(data)
                continue
            except ssl.SSLWantReadError:
                if chunks:
                    return b"".join(chunks)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a bare FIN (a "ragged" EOF, as many clients close):
                # both end this direction once what came before has been passed on.
                return b"".join(chunks)
            if self.outgoing.pending:  # e.g. the answer to a KeyUpdate
                await self.flush(None)
            await self._pull(deadline)

    async def _pull(self, deadline: float | None) -> None:
        """Move what the client sent next into the TLS object (EOF as EOF)."""
        data = await _recv(self.loop, self.sock, deadline)
        self.raw_in += len(data)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    async def write(self, data: bytes, timeout: float | None) -> None:
        self.obj.write(data)
        await self.flush(timeout)

    async def write_eof(self, timeout: float | None) -> None:
        if self._eof_sent:
            return
        self._eof_sent = True
        # SSL_shutdown sends close_notify; reading the peer's may come later (or never).
        with contextlib.suppress(ssl.SSLError, ValueError):
            self.obj.unwrap()
        with contextlib.suppress(OSError, Timeout):
            await self.flush(timeout)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)


class TLSRelay:
    """Both directions between two ends; `run` returns when both are done (or idle too long).

    Args:
        loop: the event loop.
        client, backend: the two ends.
        idle_timeout: seconds without a byte either way before both are closed; 0 never.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, client: End, backend: End, idle_timeout: float
    ) -> None:
        self.loop = loop
        self.client = client
        self.backend = backend
        self.idle = idle_timeout
        self.last = loop.time()
        self.error: str | None = None
        self.timed_out = False

    async def run(self) -> None:
        up = self.loop.create_task(self._pump(self.client, self.backend))
        down = self.loop.create_task(self._pump(self.backend, self.client))
        try:
            await asyncio.gather(up, down)
        except Timeout:
            self.timed_out = True
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def _pump(self, src: End, dst: End) -> None:
        timeout = self.idle or None
        while True:
            try:
                data = await src.read(self.loop.time() + self.idle if self.idle else None)
            except Timeout:
                if self.loop.time() - self.last < self.idle:
                    continue  # the other direction is busy: not idle
                raise
            except (OSError, ssl.SSLError) as exc:
                # A reset or a broken record: pass on what came before, end as at EOF.
                self.error = self.error or _describe(exc)
                data = b""
            if not data:
                await dst.write_eof(timeout)
                return
            self.last = self.loop.time()
            try:
                await dst.write(data, timeout)
            except (OSError, ssl.SSLError) as exc:
                # The destination is gone: stop this direction, let the other finish
                # (an answer sent before the close still reaches the client).
                self.error = self.error or _describe(exc)
                return
            self.last = self.loop.time()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or type(exc).__name__).lower()
    return os_error(exc)
