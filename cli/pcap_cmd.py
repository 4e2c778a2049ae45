"""The ``sniinspect pcap`` and ``sniinspect live`` commands: options, filters, output, exit codes.

The work is done by `sniinspect.pcap` (reading, reassembly, hello records) and
`sniinspect.output` (formatting); this module only wires them to the command line.
Exit status: 0 all inputs read, 1 some input unreadable (or capture failed), 2 usage.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

import click

from sniinspect.output import FORMATS, RecordWriter, Summary, write_summary
from sniinspect.pcap import Capture, CaptureError, FlowTable, HelloRecord, Limits, Problem

__all__ = ["pcap", "live"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse_hosts(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[_Network]:
    nets = []
    for value in values:
        try:
            nets.append(ipaddress.ip_network(value.strip("[]"), strict=False))
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an IP address or network") from None
    return nets


def _record_filter(snis: tuple[str, ...], hosts: list[_Network]) -> Callable[[HelloRecord], bool]:
    patterns = [p.lower() for p in snis]

    def keep(rec: HelloRecord) -> bool:
        if patterns:
            name = (rec.sni or "").lower()
            if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                return False
        if hosts:
            addrs = [ipaddress.ip_address(rec.src), ipaddress.ip_address(rec.dst)]
            if not any(a in net for a in addrs for net in hosts):
                return False
        return True

    return keep


class _Progress:
    """A one-line progress indicator on stderr, redrawn at most 10 times a second."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self.stream = stream
        self.name = name
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        if total:
            frac = min(done / total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"\r{self.name} [{bar:<30}] {frac * 100:5.1f}%"
        else:
            text = f"\r{self.name} {done >> 20} MiB read"
        self.stream.write(text)
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False


def _fail(message: str) -> None:
    click.echo(f"sniinspect: {message}", err=True)


_FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people; jsonl/json/csv use the keys ts, src, sport, dst, dport, "
    "transport, sni, alpn, versions, ciphers, extensions, groups, sig_algs, ja3, ja4, error.",
)
_SNI_OPTION = click.option(
    "--sni",
    "snis",
    multiple=True,
    metavar="GLOB",
    help="Only hellos whose SNI matches this glob (case-insensitive; repeatable).",
)
_HOST_OPTION = click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="ADDR",
    callback=_parse_hosts,
    help="Only hellos with this address (or network, e.g. 10.0.0.0/8) at either end.",
)
_SUMMARY_OPTION = click.option(
    "--summary", is_flag=True, help="Print counts per SNI and per client instead of records."
)


@click.command("pcap")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@_FORMAT_OPTION
@_SUMMARY_OPTION
@_SNI_OPTION
@_HOST_OPTION
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar on stderr (default: only when stderr is a terminal).",
)
def pcap(
    files: tuple[str, ...],
    fmt: str,
    summary: bool,
    snis: tuple[str, ...],
    hosts: list[_Network],
    progress: bool | None,
) -> None:
    """List every TLS ClientHello in capture files: who asked for which host, with what client.

    FILE is a pcap or pcapng capture, optionally gzip-compressed, or - for standard
    input (records are printed as they arrive). TCP connections are reassembled, so
    hellos split over segments or records, sent after STARTTLS, HTTP CONNECT or SOCKS,
    or repeated after a HelloRetryRequest are all found, on any port.

    \b
    Examples:
      sniinspect pcap capture.pcapng
      sniinspect pcap --format jsonl day1.pcap.gz day2.pcap.gz > hellos.jsonl
      sniinspect pcap --summary --sni '*.example.com' capture.pcap
      sniinspect pcap --host 10.0.0.0/8 --format csv capture.pcap
      tcpdump -i eth0 -U -w - 'tcp port 443' | sniinspect pcap -

    Exit status: 0 when every input was read, 1 when some input was missing or
    unreadable (said on stderr; the rest is still analysed), 2 for usage errors.
    """
    streaming = "-" in files
    writer = RecordWriter(sys.stdout, fmt, streaming=streaming)
    keep = _record_filter(snis, hosts)
    show_progress = sys.stderr.isatty() if progress is None else progress
    failed = False
    counts = Summary()

    def records() -> Iterator[HelloRecord]:
        nonlocal failed
        for name in files:
            bar = _Progress(sys.stderr, os.path.basename(name)) if show_progress else None
            cap = Capture(name, progress=bar)
            try:
                for rec in cap:
                    if bar is not None:
                        bar.clear()
                    yield rec
            except CaptureError as exc:
                failed = True
                if bar is not None:
                    bar.clear()
                _fail(str(exc))
                continue
            if bar is not None:
                bar.clear()
            failed |= _report(cap.problems)

    try:
        for rec in records():
            if not keep(rec):
                continue
            if summary:
                counts.add(rec)
            else:
                writer.write(rec)
        if summary:
            write_summary(sys.stdout, counts.result(), fmt)
        else:
            writer.close()
    except KeyboardInterrupt:
        if not summary:
            writer.close()
        _fail("interrupted")
        sys.exit(1)
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(1 if failed else 0)
    sys.exit(1 if failed else 0)


def _report(problems: Iterable[Problem]) -> bool:
    """Print problems on stderr; True if any was fatal (some input unreadable)."""
    fatal = False
    for p in problems:
        click.echo(f"sniinspect: {'' if p.fatal else 'warning: '}{p}", err=True)
        fatal |= p.fatal
    return fatal


def _quiet_stdout() -> None:
    # stdout's reader went away (e.g. `| head`): stop writing without a traceback at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


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


@click.command("live")
@click.option("-i", "--interface", required=True, metavar="IFACE", help="Interface to listen on.")
@click.option(
    "--bpf",
    default="tcp",
    show_default=True,
    metavar="EXPR",
    help="Capture filter (tcpdump syntax), e.g. 'tcp port 443'.",
)
@_FORMAT_OPTION
@_SUMMARY_OPTION
@_SNI_OPTION
@_HOST_OPTION
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many hellos.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Stop after SECONDS.")
def live(
    interface: str,
    bpf: str,
    fmt: str,
    summary: bool,
    snis: tuple[str, ...],
    hosts: list[_Network],
    count: int | None,
    timeout: float | None,
) -> None:
    """Print TLS ClientHellos seen on a network interface, as they happen, until Ctrl-C.

    Needs root (or CAP_NET_RAW). Records are the same as `sniinspect pcap`'s.

    \b
    Examples:
      sudo sniinspect live -i eth0
      sudo sniinspect live -i any --bpf 'tcp port 443 or tcp port 8443' --format jsonl
      sudo sniinspect live -i lo --sni '*.internal' --count 10

    Exit status: 0 on Ctrl-C, --count or --timeout; 1 if the interface cannot be
    opened; 2 for usage errors.
    """
    try:
        import scapy.arch  # sets conf.L2listen for this platform
        import scapy.layers.l2  # noqa: F401 - registers the link types
        from scapy.config import conf
        from scapy.error import Scapy_Exception
    except ImportError:
        _fail("live capture needs scapy: pip install 'sniinspect[live]'")
        sys.exit(1)
    conf.verb = 0
    try:
        if interface == "any" and sys.platform.startswith("linux"):
            sock: Any = _AnySocket(bpf or None)
        else:
            sock = conf.L2listen(iface=interface, filter=bpf or None)
    except PermissionError:
        _fail(f"cannot capture on {interface}: permission denied (run as root or with CAP_NET_RAW)")
        sys.exit(1)
    except (OSError, ValueError) as exc:
        _fail(f"cannot capture on {interface}: {exc}")
        sys.exit(1)
    except Scapy_Exception as exc:  # unknown interface, bad filter expression
        _fail(f"cannot capture on {interface}: {exc}")
        sys.exit(1)

    import select

    # Frames queued between opening the socket and attaching the filter skipped it:
    # drop them (bounded) before saying we listen, as libpcap does.
    for _ in range(100_000):
        if not select.select([sock], [], [], 0)[0]:
            break
        sock.recv_raw()

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Said once the socket is open, like tcpdump, so scripts can wait for it.
    click.echo(f"listening on {interface} ({bpf or 'all packets'}); Ctrl-C to stop", err=True)
    table = FlowTable(f"live:{interface}", Limits())
    writer = RecordWriter(sys.stdout, fmt, streaming=True)
    keep = _record_filter(snis, hosts)
    counts = Summary()
    seen = 0
    frame = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while count is None or seen < count:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                break
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
            for rec in out:
                if not keep(rec):
                    continue
                seen += 1
                if summary:
                    counts.add(rec)
                else:
                    writer.write(rec)
                if count is not None and seen >= count:
                    break
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(0)
    finally:
        sock.close()
    if summary:
        write_summary(sys.stdout, counts.result(), fmt)
    else:
        writer.close()
    sys.exit(0)
