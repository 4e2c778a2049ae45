"""Non-blocking socket waits for the router: read, write and dial with deadlines; address text.

Everything here works on raw non-blocking sockets with ``loop.add_reader`` and
``add_writer`` rather than streams, so the relay can later hand the same sockets to
the kernel (splice). A deadline that passes raises `Timeout`.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
from typing import Any

from sniinspect.route.table import Backend

__all__ = [
    "Timeout",
    "start_connect",
    "wait",
    "recv",
    "send_all",
    "dial",
    "plain_ip",
    "is_v4",
    "as_v6",
    "fmt_addr",
    "split_addr",
    "local_address",
    "os_error",
]


_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)


class Timeout(Exception):
    """A deadline passed while waiting on a socket."""


async def wait(
    loop: asyncio.AbstractEventLoop, fd: int, write: bool, deadline: float | None
) -> None:
    """Wait until ``fd`` is readable (or writable); raise `Timeout` at ``deadline``."""
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    def expired() -> None:
        if not fut.done():
            fut.set_exception(Timeout())

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    timer = loop.call_at(deadline, expired) if deadline is not None else None
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()


async def recv(loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float) -> bytes:
    while True:
        try:
            return sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            pass
        if loop.time() >= deadline:
            raise Timeout
        await wait(loop, sock.fileno(), False, deadline)


async def send_all(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, timeout: float | None
) -> None:
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view)
        except (BlockingIOError, InterruptedError):
            deadline = loop.time() + timeout if timeout else None
            await wait(loop, sock.fileno(), True, deadline)
            continue
        view = view[n:]


def start_connect(family: int, address: Any) -> tuple[socket.socket, int]:
    """A non-blocking stream socket with its connect begun, and connect_ex's errno.

    Non-blocking from creation (SOCK_NONBLOCK, no separate ioctl), TCP_NODELAY on TCP.
    The errno is 0 or EINPROGRESS for a connect under way; any other is a failure, and
    the caller closes the socket.

    Raises:
        OSError: the socket could not be made (out of descriptors, say).
    """
    sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK)
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, sock.connect_ex(address)
    except BaseException:
        sock.close()
        raise


async def dial(loop: asyncio.AbstractEventLoop, backend: Backend, timeout: float) -> socket.socket:
    deadline = loop.time() + timeout
    if backend.path is not None:
        targets: list[tuple[int, Any]] = [(socket.AF_UNIX, backend.path)]
    else:
        fam = _ip_family(backend.host)
        if fam is not None:
            targets = [(fam, (backend.host, backend.port))]
        else:
            infos = await loop.getaddrinfo(backend.host, backend.port, type=socket.SOCK_STREAM)
            targets = [(info[0], info[4]) for info in infos]
    last: Exception = OSError(errno.EHOSTUNREACH, "no address")
    for family, address in targets:
        sock, err = start_connect(family, address)
        try:
            if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                await wait(loop, sock.fileno(), True, deadline)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            return sock
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, (OSError, Timeout)):
                raise
            last = exc
    raise last


@functools.lru_cache(maxsize=1024)
def _ip_family(host: str) -> int | None:
    """AF_INET/AF_INET6 for an IP literal, None for a name to resolve."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def plain_ip(host: str) -> str:
    """``::ffff:1.2.3.4`` -> ``1.2.3.4``: an IPv4 client on a dual-stack socket."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def is_v4(host: str) -> bool:
    return ":" not in host


def as_v6(host: str) -> str:
    return f"::ffff:{host}" if is_v4(host) else host


def fmt_addr(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_addr(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def local_address(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return plain_ip(name[0]), name[1]


def os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__
