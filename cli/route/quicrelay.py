"""The backend side of a relaying QUIC session: each datagram read goes on to the client.

A session talks to its backend through connected UDP sockets (a new one after a client
rebind, so that the backend validates the new path). Each socket has one reader, which
suits the loop (`reads_per_wakeup`):

- `SingleReadRelay` with uvloop: one ``recv`` per readiness event, sent on at once. The
  loop's turn is C, so a datagram costs one ``recv`` and one send, and no read ends in
  EAGAIN: the readiness event says a datagram is there;
- `PollingRelay` with the standard loop, whose turn is Python and costs more than a
  failed read: a batch of reads per wake-up, ended by EAGAIN, sent as one UDP GSO send
  where they are of one size.

Neither reads the clock: the proxy's sweep sees a session's activity in its counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Protocol

from sniinspect.route.quicsession import Session
from sniinspect.route.udp import errno_name, send_batch

__all__ = [
    "BackendRelay", "SingleReadRelay", "PollingRelay", "relay_backend", "reads_per_wakeup",
    "READ_BATCH", "MAX_DATAGRAM",
]  # fmt: skip

# Datagrams read per readiness event on the standard loop, so one busy socket cannot
# starve the others.
READ_BATCH = 64
MAX_DATAGRAM = 65535

# Hooks into the proxy: the connection IDs of a long-header datagram; a datagram dropped
# (the reason, for the metrics); a read error (True if it closed the session's sockets).
Learn = Callable[[Session, bytes], None]
Drop = Callable[[str], None]
OnError = Callable[[Session, OSError], bool]


def reads_per_wakeup(loop: asyncio.AbstractEventLoop) -> int:
    """How many datagrams a reader takes from its socket per readiness event.

    One with uvloop: relaying HTTP/3 downloads, the router's CPU per GB went from 21.73
    to 19.52 s (1.41x nginx's to 1.28x, medians of four rounds in turn) against uvloop's
    datagram transport on backend sockets and a batch on listeners, both read until
    EAGAIN; `benchmarks/udp_relay.py` gives 17.1-17.6 against 18.6-19.3 us per datagram.
    `READ_BATCH` with the standard loop.
    """
    return 1 if type(loop).__module__.startswith("uvloop") else READ_BATCH


def relay_backend(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    session: Session,
    learn: Learn,
    drop: Drop,
    on_error: OnError,
) -> BackendRelay:
    """Start relaying what the backend sends on ``sock`` to the session's client."""
    if reads_per_wakeup(loop) == 1:
        return SingleReadRelay(loop, sock, session, learn, drop, on_error)
    return PollingRelay(loop, sock, session, learn, drop, on_error)


class BackendRelay(Protocol):
    """What the proxy holds of either reader: the socket, and how to stop."""

    sock: socket.socket

    def close(self) -> None:
        """Stop reading and close the socket."""


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


class SingleReadRelay(PollingRelay):
    """A backend socket read with ``add_reader``: one datagram per readiness event.

    Its own `_readable` rather than `PollingRelay`'s with a batch of one: no list, sum
    or batch send per datagram on the path every relayed datagram takes.
    """

    def _readable(self) -> None:
        session = self.session
        try:
            data = self.sock.recv(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.on_error(session, exc)
            return
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
