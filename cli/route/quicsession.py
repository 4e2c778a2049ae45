"""One QUIC connection through the router, as the router knows it without its keys."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field
from typing import Any

from clienthello import ClientHello, ClientHelloError
from sniinspect.route.observe import ConnectionLog
from sniinspect.route.table import Backend

__all__ = ["Listener", "Session", "HELLO", "RELAYING", "CLOSED", "idle_timeout"]

# A session's state: collecting the hello, relaying, or refused (swallowing retransmits).
HELLO, RELAYING, CLOSED = 0, 1, 2


@dataclass(eq=False)
class Listener:
    """One UDP socket clients send to, and its sessions by client address."""

    host: str
    port: int
    sock: socket.socket
    address: tuple[str, int]
    sessions: dict[tuple[str, int], Session] = field(default_factory=dict)


class Session:
    """One QUIC connection through the router."""

    __slots__ = (
        "backend",
        "backend_socks",
        "cids",
        "client",
        "closed_at",
        "datagrams_in",
        "datagrams_out",
        "deadline",
        "held",
        "idle",
        "last",
        "listener",
        "original_dcid",
        "pending_key",
        "reader",
        "rebinds",
        "record",
        "retry_cid",
        "seen",
        "state",
        "version",
    )

    def __init__(
        self,
        listener: Listener,
        client: tuple[str, int],
        original_dcid: bytes,
        record: ConnectionLog,
        reader: Any,
        now: float,
        hello_timeout: float,
    ) -> None:
        self.listener = listener
        self.client = client
        self.original_dcid = original_dcid
        self.record = record
        self.reader = reader
        self.state = HELLO
        self.held: list[bytes] = []
        self.backend: Backend | None = None
        self.backend_socks: list[socket.socket] = []  # the newest one is in use
        self.cids: set[bytes] = {original_dcid}
        self.retry_cid: bytes | None = None
        self.version = 0
        self.last = now  # when the sweep last saw the counters move
        self.seen = 0  # datagrams_in + datagrams_out then
        self.deadline = now + hello_timeout
        self.idle = 0.0
        self.closed_at = 0.0
        self.pending_key: str | None = None
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.rebinds = 0


def idle_timeout(configured: float, hello: ClientHello) -> float:
    """A session's idle timeout: never shorter than the client's max_idle_timeout."""
    client_ms = None
    with contextlib.suppress(ClientHelloError):  # a malformed parameter states nothing
        client_ms = hello.max_idle_timeout
    return max(configured, (client_ms or 0) / 1000)
