"""UDP sockets for the router's QUIC side: listeners, connected backend sockets, batched sends."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import sys
from collections.abc import Callable
from typing import Any

from sniinspect.route.table import Backend

__all__ = [
    "bind_udp", "udp_socket_to", "send_batch", "errno_name", "USE_GSO", "TransportReader",
    "reads_by_transport",
]  # fmt: skip


def reads_by_transport(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether `TransportReader` beats a Python read loop on this event loop: uvloop's."""
    # uvloop reads in C: no Python recv per datagram, and no BlockingIOError raised and
    # caught in Python to end each batch (it costs more than a read). Relaying HTTP/3
    # downloads, the router's CPU per GB went from 23.8-24.6 to 22.4-23.9 s (medians 24.3
    # and 22.9; benchmarks/quic.py, four runs each, in turn). The standard loop's
    # transport reads one datagram per wake-up: add_reader with a batch loop serves it.
    return type(loop).__module__.startswith("uvloop")


class TransportReader(asyncio.DatagramProtocol):
    """Reads a UDP socket through the loop's datagram transport: one call per datagram.

    The transport owns the socket once made: `close` aborts it, and it closes the socket.

    Args:
        loop: the running loop.
        sock: a bound, non-blocking UDP socket.
        on_datagram: called with each datagram read.
        on_error: called with each error a read gives (an ICMP error queued on the socket).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_datagram: Callable[[bytes], None],
        on_error: Callable[[OSError], object],
    ) -> None:
        self.sock = sock
        self.on_datagram = on_datagram
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
        if not self.closed:
            self.on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        if not self.closed and isinstance(exc, OSError):
            self.on_error(exc)

    def close(self) -> None:
        """Stop reading and close the socket (now, or as soon as the transport is made)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


def send_batch(sock: socket.socket, batch: list[bytes], addr: tuple[str, int]) -> None:
    """Send datagrams to one address: runs of equal size as one UDP GSO send (Linux).

    A bulk download arrives as many full-sized datagrams per wake-up; with UDP_SEGMENT
    the kernel cuts one buffer into them, one system call instead of one per datagram.
    """
    if not USE_GSO or len(batch) == 1:
        for data in batch:
            sock.sendto(data, addr)
        return
    i, n = 0, len(batch)
    while i < n:
        size = len(batch[i])
        j = i + 1
        # A GSO send: segments of one size, the last may be shorter; 64 at most.
        while j < n and j - i < _GSO_MAX_SEGMENTS and len(batch[j - 1]) == size:
            if len(batch[j]) > size or (j - i + 1) * size > _GSO_MAX_BYTES:
                break
            j += 1
        if j - i == 1:
            sock.sendto(batch[i], addr)
        else:
            sock.sendmsg(
                [b"".join(batch[i:j])], [(_SOL_UDP, _UDP_SEGMENT, size.to_bytes(2, "little"))], 0,
                addr,
            )  # fmt: skip
        i = j


def _gso_works() -> bool:
    """Whether this kernel takes UDP_SEGMENT (Linux 4.18+)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(_SOL_UDP, _UDP_SEGMENT, 1200)
    except OSError:
        return False
    return True


_SOL_UDP = getattr(socket, "SOL_UDP", 17)
_UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
_GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS in the kernel
_GSO_MAX_BYTES = 65000  # one UDP datagram's payload at most
USE_GSO = _gso_works()


def bind_udp(host: str, port: int, reuse_port: bool) -> tuple[socket.socket, tuple[str, int]]:
    """A non-blocking UDP socket bound to host:port; with it, the address as bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise OSError(exc.errno, f"cannot listen on {address} (udp): {exc.strerror}") from None
    bound = sock.getsockname()
    return sock, (bound[0], bound[1])


def udp_socket_to(backend: Backend) -> socket.socket:
    """A non-blocking UDP socket connected to the backend (so only its answers come in)."""
    infos = socket.getaddrinfo(backend.host, backend.port, type=socket.SOCK_DGRAM)
    last: OSError = OSError(errno.EHOSTUNREACH, "no address")
    for family, _, _, _, address in infos:
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last


def errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc))
