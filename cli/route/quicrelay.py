"""The backend side of a relaying QUIC session: each datagram read goes on to the client.

A session talks to its backend through connected UDP sockets (a new one after a client
rebind, so that the backend validates the new path). Each socket has one reader:

- `TransportRelay` with uvloop: the loop's datagram transport reads in C and calls
  `datagram_received` once per datagram, which counts it and sends it on in that one
  Python frame;
- `PollingRelay` with the standard loop, whose transport reads one datagram per
  wake-up: `add_reader` and a batch of reads, sent as one UDP GSO send where they are of
  one size.

Neither reads the clock: the proxy's sweep sees a session's activity in its counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, Protocol

from sniinspect.route.quicsession import Session
from sniinspect.route.udp import errno_name, send_batch

__all__ = [
    "BackendRelay", "TransportRelay", "PollingRelay", "relay_backend", "READ_BATCH", "MAX_DATAGRAM",
]  # fmt: skip

# Datagrams read per readiness event, so one busy socket cannot starve the others.
READ_BATCH = 64
MAX_DATAGRAM = 65535

# Hooks into the proxy: the connection IDs of a long-header datagram; a datagram dropped
# (the reason, for the metrics); a read error (True if it closed the session's sockets).
Learn = Callable[[Session, bytes], None]
Drop = Callable[[str], None]
OnError = Callable[[Session, OSError], bool]


def relay_backend(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    session: Session,
    learn: Learn,
    drop: Drop,
    on_error: OnError,
) -> BackendRelay:
    """Start relaying what the backend sends on ``sock`` to the session's client.

    The reader suits the loop: uvloop's transport reads in C, with no Python ``recv``
    per datagram nor a BlockingIOError raised and caught to end each batch. Relaying
    HTTP/3 downloads, the router's CPU per GB went from 23.8-24.6 to 22.4-23.9 s
    (benchmarks/quic.py, four runs each, in turn).
    """
    if type(loop).__module__.startswith("uvloop"):
        return TransportRelay(loop, sock, session, learn, drop, on_error)
    return PollingRelay(loop, sock, session, learn, drop, on_error)


class BackendRelay(Protocol):
    """What the proxy holds of either reader: the socket, and how to stop."""

    sock: socket.socket

    def close(self) -> None:
        """Stop reading and close the socket."""


class TransportRelay(asyncio.DatagramProtocol):
    """A backend socket read by the loop's datagram transport: one call per datagram.

    The transport owns the socket once made: `close` aborts it, and it closes the socket.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        session: Session,
        learn: Learn,
        drop: Drop,
        on_error: OnError,
    ) -> None:
        self.sock = sock
        self.session = session
        self.learn = learn
        self.drop = drop
        self.on_error = on_error
        self.transport: Any = None
        self.closed = False
        made = loop.create_task(loop.create_datagram_endpoint(lambda: self, sock=sock))
        made.add_done_callback(self._made)

    def _made(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            self.closed = True
            self.sock.close()  # no transport took it

    def connection_made(self, transport: Any) -> None:
        # uvloop's UDPTransport is no asyncio.DatagramTransport subclass; both abort().
        if self.closed:
            transport.abort()
        else:
            self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.closed:
            return
        session = self.session
        if data and data[0] & 0x80:
            self.learn(session, data)
        session.datagrams_out += 1
        session.record.bytes_to_client += len(data)
        try:
            session.listener.sock.sendto(data, session.client)
        except (BlockingIOError, InterruptedError):
            self.drop("client_busy")  # UDP: a full buffer loses the datagram
        except OSError as exc:
            session.record.error = session.record.error or errno_name(exc)

    def error_received(self, exc: Exception) -> None:
        if not self.closed and isinstance(exc, OSError):
            self.on_error(self.session, exc)

    def close(self) -> None:
        """Stop reading and close the socket (now, or as soon as the transport is made)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class PollingRelay:
    """A backend socket read with ``add_reader``: up to `READ_BATCH` datagrams per wake-up."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        session: Session,
        learn: Learn,
        drop: Drop,
        on_error: OnError,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.session = session
        self.learn = learn
        self.drop = drop
        self.on_error = on_error
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        session = self.session
        batch: list[bytes] = []
        recv = self.sock.recv
        for _ in range(READ_BATCH):
            try:
                data = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if self.on_error(session, exc):
                    return
                break
            if data and data[0] & 0x80:
                self.learn(session, data)
            batch.append(data)
        if not batch:
            return
        rec = session.record
        session.datagrams_out += len(batch)
        rec.bytes_to_client += sum(map(len, batch))
        try:
            send_batch(session.listener.sock, batch, session.client)
        except (BlockingIOError, InterruptedError):
            self.drop("client_busy")
        except OSError as exc:
            rec.error = rec.error or errno_name(exc)

    def close(self) -> None:
        """Stop reading and close the socket."""
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
