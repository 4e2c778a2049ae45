"""Live capture: frames from a network interface into the same `HelloRecord`s as files give.

`open_interface` opens a listening socket (scapy's ``conf.L2listen``, or for ``any`` on
Linux an AF_PACKET socket of our own); `iter_live` reads frames from it through a
`sniinspect.capture.tcp.FlowTable` and yields each record as soon as the packet that
completes it arrives. Needs root (or CAP_NET_RAW) and the optional dependency scapy.
"""

from __future__ import annotations

import select
import sys
import time
from collections.abc import Iterator
from typing import Any

from sniinspect.capture.records import CaptureError, HelloRecord
from sniinspect.capture.tcp import FlowTable, Limits

__all__ = ["open_interface", "iter_live"]


class _AnySocket:
    """``-i any`` on Linux: one AF_PACKET datagram socket for every interface.

    scapy's sniffer has no "any" pseudo-interface; libpcap's is a cooked socket that
    strips the link layer, and so is this one: frames start at the IP header and the
    capture filter is compiled for raw IP.
    """

    ETH_P_ALL = 0x0003
    PACKET_OUTGOING = 4

    def __init__(self, bpf: str | None) -> None:
        import socket

        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(self.ETH_P_ALL))
        if bpf:
            from scapy.arch.common import compile_filter
            from scapy.data import DLT_RAW
            from scapy.libs.structures import sock_fprog

            prog = compile_filter(bpf, linktype=DLT_RAW)
            so_attach_filter = 26  # <asm-generic/socket.h>
            self.sock.setsockopt(
                socket.SOL_SOCKET, so_attach_filter, sock_fprog(prog.bf_len, prog.bf_insns)
            )
            # Packets queued before the filter was attached did not go through it.
            self.sock.setblocking(False)
            try:
                while self.sock.recv(65535):
                    pass
            except BlockingIOError:
                pass
            self.sock.setblocking(True)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_raw(self) -> tuple[int | None, bytes, float | None]:
        data, addr = self.sock.recvfrom(65535)
        ifname, proto, pkttype = addr[0], addr[1], addr[2]
        if pkttype == self.PACKET_OUTGOING and ifname == "lo":
            return None, b"", None  # loopback shows each packet twice; keep the incoming copy
        linktype = {0x0800: 228, 0x86DD: 229}.get(proto)
        return linktype, data if linktype else b"", None

    def close(self) -> None:
        self.sock.close()


def _linktype_of(cls: Any) -> int:
    """The DLT of frames a scapy socket hands out as ``cls`` (or a DLT already)."""
    from scapy.config import conf

    if isinstance(cls, int):
        return cls

    num = conf.l2types.layer2num.get(cls)
    if num is not None:
        return int(num)
    name = getattr(cls, "__name__", "")
    return {"IP": 228, "IPv6": 229, "CookedLinux": 113, "CookedLinuxV2": 276}.get(name, 1)


def open_interface(interface: str, bpf: str | None) -> Any:
    """Open a socket listening on ``interface`` through the capture filter ``bpf``.

    Args:
        interface: an interface name, or ``any`` (all interfaces; Linux).
        bpf: a capture filter in tcpdump syntax, or None for every packet.

    Returns:
        The socket (scapy's ``SuperSocket`` interface: ``recv_raw``, ``fileno``,
        ``close``); the caller closes it.

    Raises:
        CaptureError: scapy is not installed, permission is denied, the interface is
            unknown or the filter does not compile.
    """
    try:
        import scapy.arch  # sets conf.L2listen for this platform
        import scapy.layers.l2  # noqa: F401 - registers the link types
        from scapy.config import conf
        from scapy.error import Scapy_Exception
    except ImportError:
        raise CaptureError("live capture needs scapy: pip install 'sniinspect[live]'") from None
    conf.verb = 0
    try:
        if interface == "any" and sys.platform.startswith("linux"):
            sock: Any = _AnySocket(bpf)
        else:
            sock = conf.L2listen(iface=interface, filter=bpf)
    except PermissionError:
        raise CaptureError(
            f"cannot capture on {interface}: permission denied (run as root or with CAP_NET_RAW)"
        ) from None
    except (OSError, ValueError, Scapy_Exception) as exc:  # no such interface, bad filter
        raise CaptureError(f"cannot capture on {interface}: {exc}") from None

    # Frames queued between opening the socket and attaching the filter skipped it:
    # drop them (bounded) before saying we listen, as libpcap does.
    for _ in range(100_000):
        if not select.select([sock], [], [], 0)[0]:
            break
        sock.recv_raw()
    return sock


def iter_live(
    sock: Any, name: str, *, deadline: float | None = None, limits: Limits | None = None
) -> Iterator[HelloRecord]:
    """Yield a `HelloRecord` for every ClientHello (TCP, QUIC, DTLS) read from ``sock``.

    Args:
        sock: a socket from `open_interface`.
        name: the input's name in records and problems, e.g. ``"live:eth0"``.
        deadline: stop at this `time.monotonic` time; None reads until interrupted.
        limits: reassembly bounds (see `Limits`).
    """
    table = FlowTable(name, limits or Limits())
    frame = 0
    while True:
        wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        if wait <= 0:
            return
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            continue
        cls, data, ts = sock.recv_raw()
        if not data:
            continue
        frame += 1
        ts_ns = int((ts if ts is not None else time.time()) * 1e9)
        table.packet(_linktype_of(cls), data, ts_ns, frame)
        out, table.out = table.out, []
        yield from out
