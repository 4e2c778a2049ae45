"""UDP sockets for the router's QUIC side: listeners, connected backend sockets, batched sends."""

from __future__ import annotations

import contextlib
import errno
import socket
import sys

from sniinspect.route.table import Backend

__all__ = ["bind_udp", "udp_socket_to", "send_batch", "errno_name", "USE_GSO"]


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
