"""The ``sniinspect pcap`` and ``sniinspect live`` commands: options, filters, output, exit codes.

The work is done by the capture engine (`sniinspect.capture`: reading, reassembly,
hello records, live capture) and `sniinspect.output` (formatting); this module only
wires them to the command line.
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

from sniinspect.capture.files import Capture
from sniinspect.capture.live import iter_live, open_interface
from sniinspect.capture.records import CaptureError, HelloRecord, Problem
from sniinspect.output import FORMATS, RecordWriter, Summary, write_summary

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
        sock = open_interface(interface, bpf or None)
    except CaptureError as exc:
        _fail(str(exc))
        sys.exit(1)

    def on_term(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Said once the socket is open, like tcpdump, so scripts can wait for it.
    click.echo(f"listening on {interface} ({bpf or 'all packets'}); Ctrl-C to stop", err=True)
    writer = RecordWriter(sys.stdout, fmt, streaming=True)
    keep = _record_filter(snis, hosts)
    counts = Summary()
    seen = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for rec in iter_live(sock, f"live:{interface}", deadline=deadline):
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
