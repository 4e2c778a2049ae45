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
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import click

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


_TRANSPORTS = ("tcp", "quic", "dtls")


def _parse_transports(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> frozenset[str]:
    if value is None:
        return frozenset(_TRANSPORTS)
    chosen = {v.strip().lower() for v in value.split(",") if v.strip()}
    unknown = sorted(chosen - set(_TRANSPORTS))
    if unknown or not chosen:
        raise click.BadParameter(
            f"{', '.join(unknown) or repr(value)}: choose from {','.join(_TRANSPORTS)}"
        )
    return frozenset(chosen)


def _record_filter(
    snis: tuple[str, ...],
    hosts: list[_Network],
    transports: frozenset[str] = frozenset(_TRANSPORTS),
) -> Callable[[HelloRecord], bool]:
    patterns = [p.lower() for p in snis]
    every_transport = transports >= set(_TRANSPORTS)

    def keep(rec: HelloRecord) -> bool:
        if not every_transport and rec.transport not in transports:
            return False
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
    "transport, sni, alpn, versions, ciphers, extensions, groups, sig_algs, ja3, ja4, error, "
    "after, quic_version.",
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
    "--summary",
    is_flag=True,
    help="Print counts per SNI, per client and per transport instead of records.",
)
_TRANSPORT_OPTION = click.option(
    "--transport",
    "transports",
    metavar="LIST",
    callback=_parse_transports,
    help="Only hellos over these transports: a comma-separated list of tcp, quic, dtls "
    "(default: all).",
)


def _parse_size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if text and text[-1] in units:
            return max(1, int(float(text[:-1]) * units[text[-1]]))
        return max(1, int(text))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size (e.g. 64M)") from None


# Parallel runs and Parquet output (`sniinspect.capture.analysis`, `.parquet`).
_PARALLEL_OPTIONS = (
    click.option(
        "--jobs",
        "-j",
        type=click.IntRange(min=0),
        default=1,
        show_default=True,
        metavar="N",
        help="Worker processes (0: one per core). Files are shared out among them, and a "
        "big file is cut into parts; the output is the same as with one.",
    ),
    click.option(
        "--dask",
        metavar="ADDRESS",
        help="Run on a Dask cluster: its scheduler (tcp://host:8786), or 'local' for a "
        "cluster of this machine's cores on loopback. The workers open the capture files "
        "themselves, so they must see the same paths (a shared file system). Needs "
        "pip install 'sniinspect[dask]'.",
    ),
    click.option(
        "--output",
        "-o",
        metavar="PATH",
        help="Write to PATH instead of standard output. Parquet: a file, or with "
        "--jobs/--dask/--partition-by a directory of part files (created if missing).",
    ),
    click.option(
        "--partition-by",
        type=click.Choice(("date",)),
        help="Parquet: Hive-style folders, e.g. date=2024-05-01/ (UTC).",
    ),
    click.option("--part-size", callback=_parse_size, hidden=True, metavar="SIZE"),
)


@click.command("pcap")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option(
    "--format",
    "fmt",
    type=click.Choice((*FORMATS, "parquet")),
    default="table",
    show_default=True,
    help="table for people; jsonl/json/csv/parquet use the keys ts, src, sport, dst, dport, "
    "transport, sni, alpn, versions, ciphers, extensions, groups, sig_algs, ja3, ja4, error, "
    "after, quic_version (and frame, file: the packet's number in its file, the path). "
    "parquet needs --output and pip install 'sniinspect[parquet]'.",
)
@_SUMMARY_OPTION
@_SNI_OPTION
@_HOST_OPTION
@_TRANSPORT_OPTION
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar on stderr (default: only when stderr is a terminal), and "
    "at the end the packets, hellos and time.",
)
@_PARALLEL_OPTIONS[0]
@_PARALLEL_OPTIONS[1]
@_PARALLEL_OPTIONS[2]
@_PARALLEL_OPTIONS[3]
@_PARALLEL_OPTIONS[4]
def pcap(
    files: tuple[str, ...],
    fmt: str,
    summary: bool,
    snis: tuple[str, ...],
    hosts: list[_Network],
    transports: frozenset[str],
    progress: bool | None,
    jobs: int,
    dask: str | None,
    output: str | None,
    partition_by: str | None,
    part_size: int | None,
) -> None:
    """List every TLS ClientHello in capture files: who asked for which host, with what client.

    FILE is a pcap or pcapng capture, optionally gzip-compressed, or - for standard
    input (records are printed as they arrive). TCP connections are reassembled, so
    hellos split over segments or records, sent after STARTTLS, HTTP CONNECT or SOCKS,
    or repeated after a HelloRetryRequest are all found, on any port. Over UDP, QUIC
    Initials are decrypted (v1, v2, drafts) and DTLS handshakes reassembled, so
    HTTP/3 and DTLS hellos are listed too (PROTO column, ``transport`` key). A hello
    sent again after a HelloRetryRequest (TCP, QUIC or DTLS), a QUIC Retry or a DTLS
    cookie exchange says so (NOTE, ``after``).

    \b
    Examples:
      sniinspect pcap capture.pcapng
      sniinspect pcap --format jsonl day1.pcap.gz day2.pcap.gz > hellos.jsonl
      sniinspect pcap --summary --sni '*.example.com' capture.pcap
      sniinspect pcap --host 10.0.0.0/8 --format csv capture.pcap
      sniinspect pcap --transport quic,dtls capture.pcapng
      tcpdump -i eth0 -U -w - 'port 443' | sniinspect pcap -
      sniinspect pcap --jobs 0 --format parquet -o hellos/ --partition-by date ring/*.pcap
      sniinspect pcap --dask tcp://scheduler:8786 --summary /shared/captures/*.pcap.gz

    Files are read in the order of their first packet; a file starting where the one
    before it ended (tcpdump -G, dumpcap ring buffers) continues its connections.

    Exit status: 0 when every input was read, 1 when some input was missing or
    unreadable (said on stderr; the rest is still analysed), 2 for usage errors.
    """
    from sniinspect.capture.analysis import run_pcap

    streaming = "-" in files
    if fmt == "parquet" and (output is None or summary):
        raise click.UsageError("--format parquet writes records to --output PATH (no --summary)")
    if partition_by is not None and fmt != "parquet":
        raise click.UsageError("--partition-by is for --format parquet")
    if streaming and (jobs != 1 or dask is not None):
        raise click.UsageError("standard input (-) is read in this process: no --jobs or --dask")
    keep = _record_filter(snis, hosts, transports)
    show_progress = sys.stderr.isatty() if progress is None else progress
    name = os.path.basename(files[0]) if len(files) == 1 else f"{len(files)} files"
    bar = _Progress(sys.stderr, name) if show_progress else None
    counts = Summary() if summary else None
    out = open(output, "w", encoding="utf-8") if output and fmt != "parquet" else sys.stdout  # noqa: SIM115
    writer = None if fmt == "parquet" or summary else RecordWriter(out, fmt, streaming=streaming)

    def said(p: Problem) -> None:
        if bar is not None:
            bar.clear()
        _report([p])

    try:
        analysis = run_pcap(
            list(files),
            keep=keep,
            writer=writer,
            counts=counts,
            parquet=output if fmt == "parquet" else None,
            partition_by=partition_by,
            jobs=jobs,
            dask=dask,
            part_size=part_size,
            progress=bar,
            on_problem=said,
            before_write=None if bar is None else bar.clear,
        )
        if counts is not None:
            write_summary(out, counts.result(), fmt)
        elif writer is not None:
            writer.close()
    except BrokenPipeError:
        _quiet_stdout()
        sys.exit(0)
    except (CaptureError, ImportError, OSError) as exc:
        if bar is not None:
            bar.clear()
        _fail(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        if writer is not None:
            writer.close()
        _fail("interrupted")
        sys.exit(1)
    finally:
        if out is not sys.stdout:
            out.close()
    if bar is not None:
        bar.clear()
        click.echo(
            f"sniinspect: {analysis.packets:,} packets, {analysis.hellos:,} hellos, "
            f"{analysis.seconds:.2f} s",
            err=True,
        )
    sys.exit(1 if analysis.failed else 0)


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
    default="tcp or udp",
    show_default=True,
    metavar="EXPR",
    help="Capture filter (tcpdump syntax), e.g. 'tcp port 443 or udp port 443'.",
)
@_FORMAT_OPTION
@_SUMMARY_OPTION
@_SNI_OPTION
@_HOST_OPTION
@_TRANSPORT_OPTION
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many hellos.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Stop after SECONDS.")
def live(
    interface: str,
    bpf: str,
    fmt: str,
    summary: bool,
    snis: tuple[str, ...],
    hosts: list[_Network],
    transports: frozenset[str],
    count: int | None,
    timeout: float | None,
) -> None:
    """Print TLS ClientHellos seen on a network interface, as they happen, until Ctrl-C.

    Needs root (or CAP_NET_RAW). Records are the same as `sniinspect pcap`'s: TCP,
    QUIC and DTLS hellos (the default filter takes TCP and UDP).

    \b
    Examples:
      sudo sniinspect live -i eth0
      sudo sniinspect live -i any --bpf 'port 443 or tcp port 8443' --format jsonl
      sudo sniinspect live -i eth0 --transport quic --bpf 'udp port 443'
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
    keep = _record_filter(snis, hosts, transports)
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
