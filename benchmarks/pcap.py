"""Benchmark `sniinspect pcap` against tshark and a plain dpkt loop on one generated capture.

    python benchmarks/pcap.py                    # 1.2M packets, prints a Markdown table
    python benchmarks/pcap.py --packets 3000000 --write benchmarks/pcap-results.md

The capture is generated here with ``struct`` (no scapy per packet): Ethernet/IPv4/TCP
connections to port 443, each with a handshake, a ClientHello (real bytes from
``captures/hellos``, server name rewritten to a unique one; every third hello split
over two TCP segments), a fake server flight, then bulk TLS application data in
1448-byte segments with the client's ACKs; many connections interleaved; plus non-TLS
noise (DNS over UDP, plaintext HTTP on port 80). It lives in a temporary folder.

Timed, each in its own process, wall clock, peak RSS from ``/usr/bin/time -f %M``:

- ``sniinspect pcap --format jsonl FILE``
- ``tshark -r FILE -Y tls.handshake.type==1 -T fields -e ...`` (the record's fields)
- a plain dpkt loop (``dpkt.pcap.Reader`` + ``dpkt.ethernet.Ethernet`` per packet, the
  ja3.py way: no reassembly, ClientHellos parsed from single segments only)
- start-up: ``sniinspect pcap`` on a one-packet file.

The SNI sets of sniinspect and tshark must be equal; the script exits 1 otherwise.

Then, in the same run, a QUIC-heavy capture (``--quic`` datagrams, 300,000 by default;
``--quic 0`` skips it, ``--quic-only`` runs only it): QUIC connections from three
client shapes with 1-RTT bulk and DNS noise, ``sniinspect pcap`` against tshark (same
SNI multiset, else exit 1), and client Initials decoded per second by
`clienthello.quic.InitialReader` beside aioquic. See ``benchmarks/quic_capture.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELLOS = ROOT / "captures" / "hellos"

TSHARK_FIELDS = [
    "frame.time_epoch",
    "ip.src",
    "tcp.srcport",
    "ip.dst",
    "tcp.dstport",
    "tls.handshake.extensions_server_name",
    "tls.handshake.extensions_alpn_str",
    "tls.handshake.extensions.supported_version",
    "tls.handshake.ciphersuite",
    "tls.handshake.extension.type",
    "tls.handshake.extensions_supported_group",
    "tls.handshake.sig_hash_alg",
    "tls.handshake.ja3",
]

DPKT_LOOP = r"""
import sys, dpkt
snis = set()
n = 0
with open(sys.argv[1], "rb") as f:
    for ts, buf in dpkt.pcap.Reader(f):
        n += 1
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        data = ip.data.data
        if len(data) < 6 or data[0] != 22 or data[5] != 1:
            continue
        try:
            records, _ = dpkt.ssl.tls_multi_factory(data)
        except (dpkt.NeedData, dpkt.UnpackError, ValueError):
            continue
        for rec in records:
            if rec.type != 22:
                continue
            try:
                hs = dpkt.ssl.TLSHandshake(rec.data)
            except (dpkt.NeedData, dpkt.UnpackError, ValueError):
                continue
            if not isinstance(hs.data, dpkt.ssl.TLSClientHello):
                continue
            for etype, edata in getattr(hs.data, "extensions", []):
                if etype == 0 and len(edata) > 5:
                    snis.add(edata[5:].decode("ascii", "replace"))
print(n, len(snis))
"""


def _checksum(hdr: bytes) -> int:
    s: int = sum(struct.unpack("!10H", hdr))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class _Writer:
    """Writes Ethernet/IPv4 packets as little-endian microsecond pcap records."""

    ETH = bytes.fromhex("020000000002020000000001") + b"\x08\x00"

    def __init__(self, f: object) -> None:
        self.f = f
        self.count = 0
        self.ts = 1_700_000_000_000_000  # microseconds
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))  # type: ignore[attr-defined]

    def ip(self, src: bytes, dst: bytes, proto: int, l4: bytes) -> None:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst)
        hdr = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
        frame = self.ETH + hdr + l4
        self.ts += 7
        sec, usec = divmod(self.ts, 1_000_000)
        self.f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)  # type: ignore[attr-defined]
        self.count += 1

    def tcp(
        self,
        src: bytes,
        dst: bytes,
        sp: int,
        dp: int,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes = b"",
    ) -> None:
        seg = struct.pack(
            "!HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0
        )
        self.ip(src, dst, 6, seg + payload)


@dataclass
class _Active:
    """A connection in its bulk-data phase."""

    cli: bytes
    srv: bytes
    cport: int
    cseq: int
    sseq: int
    left: int  # packets still to send


def _named(template: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new)
    return template.replace(old, new, 1)


def generate(path: Path, packets: int, hellos: int, seed: int = 1) -> tuple[set[str], int]:
    """Write the benchmark capture (about ``packets`` long); return (server names, packets)."""
    rng = random.Random(seed)
    python = (HELLOS / "python.bin").read_bytes()
    chromium = (HELLOS / "chromium.bin").read_bytes()
    fake_sh = bytes.fromhex("160303002a020000260303") + bytes(32) + b"\x00\x13\x01\x00"
    app = b"\x17\x03\x03\x05\xa3" + bytes(rng.randrange(256) for _ in range(1443))
    client_fin = b"\x17\x03\x03\x00\x35" + bytes(53)
    ack_only, psh_ack, syn, syn_ack, fin_ack = 0x10, 0x18, 0x02, 0x12, 0x11
    per_flow = max(8, packets // hellos)
    names: set[str] = set()
    with open(path, "wb") as f:
        w = _Writer(f)
        active: list[_Active] = []
        flow_id = 0
        noise = 0
        while w.count < packets:
            while len(active) < 200 and flow_id < hellos:
                flow_id += 1
                cli = bytes([10, 1, flow_id >> 8 & 0xFF, flow_id & 0xFF])
                srv = bytes([192, 0, 2 + (flow_id >> 12 & 0x3), flow_id & 0xFF])
                cport = 20000 + flow_id % 40000
                if flow_id % 3:
                    name = f"s{flow_id:05d}.test".encode()
                    hello = _named(python, b"python.test", name)
                else:
                    name = f"c{flow_id:07d}.test".encode()
                    hello = _named(chromium, b"chromium.test", name)
                names.add(name.decode())
                cseq, sseq = rng.randrange(1 << 32), rng.randrange(1 << 32)
                w.tcp(cli, srv, cport, 443, cseq, 0, syn)
                w.tcp(srv, cli, 443, cport, sseq, cseq + 1, syn_ack)
                w.tcp(cli, srv, cport, 443, cseq + 1, sseq + 1, ack_only)
                if flow_id % 3 == 0:  # split over two segments
                    w.tcp(cli, srv, cport, 443, cseq + 1, sseq + 1, psh_ack, hello[:700])
                    w.tcp(cli, srv, cport, 443, cseq + 701, sseq + 1, psh_ack, hello[700:])
                else:
                    w.tcp(cli, srv, cport, 443, cseq + 1, sseq + 1, psh_ack, hello)
                cseq += 1 + len(hello)
                sseq += 1
                w.tcp(srv, cli, 443, cport, sseq, cseq, psh_ack, fake_sh)
                sseq += len(fake_sh)
                w.tcp(cli, srv, cport, 443, cseq, sseq, psh_ack, client_fin)  # "Finished"
                cseq += len(client_fin)
                active.append(_Active(cli, srv, cport, cseq, sseq, per_flow))
            if not active:  # every hello written: fill up with bulk on old flows
                break
            i = rng.randrange(len(active))
            a = active[i]
            w.tcp(a.srv, a.cli, 443, a.cport, a.sseq, a.cseq, psh_ack, app)
            w.tcp(a.srv, a.cli, 443, a.cport, a.sseq + len(app), a.cseq, psh_ack, app)
            a.sseq += 2 * len(app)
            w.tcp(a.cli, a.srv, a.cport, 443, a.cseq, a.sseq, ack_only)
            a.left -= 3
            if a.left <= 0:
                w.tcp(a.cli, a.srv, a.cport, 443, a.cseq, a.sseq, fin_ack)
                del active[i]
            noise += 1
            if noise % 50 == 0:  # DNS query
                q = (
                    struct.pack("!HHHHHH", noise & 0xFFFF, 0x0100, 1, 0, 0, 0)
                    + b"\x07example\x03com\x00\x00\x01\x00\x01"
                )
                udp = struct.pack("!HHHH", 40000 + noise % 1000, 53, 8 + len(q), 0) + q
                w.ip(b"\x0a\x01\x00\x63", b"\x0a\x00\x00\x35", 17, udp)
            if noise % 200 == 0:  # a plaintext HTTP request, port 80
                req = b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
                w.tcp(
                    b"\x0a\x01\x00\x64",
                    b"\xc6\x33\x64\x50",
                    30000 + noise % 20000,
                    80,
                    noise,
                    1,
                    psh_ack,
                    req,
                )
        # Top up with bulk on a long-lived flow until the packet count is reached.
        cli, srv = b"\x0a\x02\x00\x01", b"\xc0\x00\x02\x01"
        seq = 1
        while w.count < packets:
            w.tcp(srv, cli, 443, 60000, seq, 1, psh_ack, app)
            seq += len(app)
        return names, w.count


def stress_file(path: Path, flows: int) -> int:
    """``flows`` connections that each send the first 1400 bytes of a hello, never the rest:
    the worst case for memory (every direction holds a partial hello)."""
    hello = (HELLOS / "chromium.bin").read_bytes()[:1400]
    with open(path, "wb") as f:
        w = _Writer(f)
        for i in range(flows):
            cli = bytes([10, 3, i >> 8 & 0xFF, i & 0xFF])
            srv = bytes([192, 0, 2, i >> 16 & 0xFF])
            w.tcp(cli, srv, 20000 + i % 40000, 443, 1000, 0, 0x02)
            w.tcp(cli, srv, 20000 + i % 40000, 443, 1001, 1, 0x18, hello)
        return w.count


def one_packet_file(path: Path) -> None:
    with open(path, "wb") as f:
        w = _Writer(f)
        w.tcp(b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02", 1234, 443, 1, 1, 0x18, b"x" * 10)


def _compile_ours() -> None:
    """Write our modules' bytecode caches before timing, as ``pip install`` does.

    An editable install run with ``PYTHONDONTWRITEBYTECODE`` set (as on CI machines)
    would otherwise compile every module from source on every run, about 30 ms that
    no installed copy pays.
    """
    import compileall

    import clienthello
    import sniinspect

    for package in (clienthello, sniinspect):
        compileall.compile_dir(os.path.dirname(package.__file__ or ""), quiet=1)


def timed(cmd: list[str], stdout: Path) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MiB, stderr) of one run of ``cmd``.

    The stderr text ends with a ``CPU=<user+sys seconds>`` line.
    """
    t0 = time.perf_counter()
    with open(stdout, "wb") as out:
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "MAXRSS=%M\nCPU=%U %S", *cmd],
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )
    dt = time.perf_counter() - t0
    err = proc.stderr.decode(errors="replace")
    rss = 0
    for line in err.splitlines():
        if line.startswith("MAXRSS="):
            rss = int(line.split("=")[1]) // 1024
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {err[-2000:]}")
    return dt, rss, err


def timed_rounds(
    commands: dict[str, tuple[list[str], Path]], rounds: int
) -> dict[str, list[tuple[float, int, str]]]:
    """Each command ``rounds`` times, in turn; by name, its `timed` runs, fastest first.

    The fastest run is a tool's figure (as timeit takes it); the others show the spread.
    """
    runs: dict[str, list[tuple[float, int, str]]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, (cmd, out) in commands.items():
            runs[name].append(timed(cmd, out))
    return {name: sorted(r, key=lambda run: run[0]) for name, r in runs.items()}


def spread(runs: list[tuple[float, int, str]]) -> str:
    """The range of a `timed_rounds` entry's times, e.g. ``"0.96-1.01"``."""
    return f"{runs[0][0]:.2f}-{runs[-1][0]:.2f}"


def quic_section(
    args: argparse.Namespace, tmp: Path, ours_cmd: list[str], tshark: str
) -> tuple[str, bool]:
    """The QUIC capture's Markdown section (``benchmarks/quic_capture.py``); SNIs equal?"""
    import quic_capture  # beside this file

    text, ok = quic_capture.run(
        tmp, ours_cmd, tshark, timed_rounds, args.quic, args.quic_connections, args.jobs,
        args.rounds,
    )  # fmt: skip
    version = subprocess.run([tshark, "--version"], capture_output=True, text=True, check=False)
    text += (
        f"Machine: {os.cpu_count()} CPUs, {_interpreter()}, "
        f"{version.stdout.splitlines()[0].rstrip('.') if version.stdout else 'tshark'}.\n"
        f"Command: `python benchmarks/pcap.py --quic {args.quic} "
        f"--quic-connections {args.quic_connections} --jobs {args.jobs} "
        f"--rounds {args.rounds}`\n"
    )
    return text, ok


def _interpreter() -> str:
    """The Python that ran ours, by version and file: two builds of one version (Debian's
    static ``/usr/bin/python3``, pyenv's with a shared libpython) differ by 10-15% here."""
    return f"Python {sys.version.split()[0]} ({os.path.realpath(sys.executable)})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_200_000)
    ap.add_argument("--hellos", type=int, default=4000)
    ap.add_argument("--write", type=Path, help="also write the Markdown table here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument(
        "--quic",
        type=int,
        default=300_000,
        metavar="DATAGRAMS",
        help="datagrams of the QUIC capture timed after the TCP one (0: skip it)",
    )
    ap.add_argument("--quic-connections", type=int, default=5000)
    ap.add_argument("--quic-only", action="store_true", help="only the QUIC capture")
    ap.add_argument(
        "--rounds", type=int, default=3, help="runs of each tool (its fastest is shown)"
    )
    ap.add_argument(
        "--stress",
        type=int,
        metavar="FLOWS",
        help="instead: memory worst case, FLOWS connections each leaving a hello half-sent",
    )
    ap.add_argument(
        "--parallel",
        action="store_true",
        help="instead: --jobs 1 against --jobs N on --packets (8 files, 1 file), Parquet "
        "against jsonl (benchmarks/pcap_parallel.py)",
    )
    ap.add_argument(
        "--jobs", type=int, default=2, help="N for --parallel and the QUIC table's --jobs row"
    )
    args = ap.parse_args(argv)
    tshark = shutil.which("tshark")
    # The console script beside this interpreter: a version manager's shim (pyenv)
    # found first on PATH would add its own start-up time to ours.
    beside = Path(sys.executable).parent / "sniinspect"
    _compile_ours()
    exe = str(beside) if beside.exists() else shutil.which("sniinspect")
    probe = subprocess.run([exe or "false", "pcap", "--help"], capture_output=True, check=False)
    if exe and probe.returncode == 0:
        ours_cmd = [exe]
    else:  # the `sniinspect` group is not installed (yet): call the command module directly
        ours_cmd = [sys.executable, "-c", "import sys; from sniinspect.capture.command "
                    "import pcap; sys.argv[0] = 'sniinspect pcap'; pcap()"]  # fmt: skip
    if args.parallel:
        import pcap_parallel  # beside this file

        tmp = Path(tempfile.mkdtemp(prefix="sniinspect-bench-"))
        try:
            text, ok = pcap_parallel.run(
                tmp, ours_cmd, timed, generate, args.packets, args.hellos, args.jobs
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(text)
        if args.write:
            args.write.write_text("# `sniinspect pcap` in parallel\n\n" + text)
        return 0 if ok else 1
    if not tshark:
        print("needs tshark (apt-get install tshark)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="sniinspect-bench-"))
    if args.stress:
        try:
            cap = tmp / "stress.pcap"
            count = stress_file(cap, args.stress)
            cmd = [*ours_cmd, *(["pcap"] if len(ours_cmd) == 1 else []), "--format", "jsonl"]
            secs, rss, _ = timed([*cmd, str(cap)], tmp / "stress.jsonl")
            lines = len((tmp / "stress.jsonl").read_text().splitlines())
            print(
                f"Memory worst case: {args.stress:,} connections each leaving a 1400-byte "
                f"partial hello ({count:,} packets): peak RSS {rss} MiB, {secs:.1f} s, "
                f"{lines:,} incomplete-hello records.\n"
                f"Command: `python benchmarks/pcap.py --stress {args.stress}`"
            )
            return 0
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        if args.quic_only:
            table, quic_ok = quic_section(args, tmp, ours_cmd, tshark)
            print(table)
            if args.write:
                args.write.write_text("# `sniinspect pcap` benchmark: QUIC\n\n" + table)
            return 0 if quic_ok else 1
        cap = tmp / "bench.pcap"
        t0 = time.perf_counter()
        names, n = generate(cap, args.packets, args.hellos)
        gen_s = time.perf_counter() - t0
        os.sync()  # write the new file back now, not while a tool is timed
        size = cap.stat().st_size
        print(
            f"generated {n} packets, {len(names)} hellos, {size >> 20} MiB in {gen_s:.1f} s",
            file=sys.stderr,
        )

        fields = [a for f in TSHARK_FIELDS for a in ("-e", f)]
        commands = {
            "ours": (
                [*ours_cmd, *(["pcap"] if len(ours_cmd) == 1 else []), "--format", "jsonl",
                 str(cap)],
                tmp / "ours.jsonl",
            ),
            "tshark": (
                [tshark, "-n", "-r", str(cap), "-Y", "tls.handshake.type==1", "-T", "fields",
                 *fields],
                tmp / "tshark.tsv",
            ),
            "dpkt": ([sys.executable, "-c", DPKT_LOOP, str(cap)], tmp / "dpkt.txt"),
        }  # fmt: skip
        runs = timed_rounds(commands, args.rounds)
        (ours_s, ours_rss, _), (ts_s, ts_rss, _), (dp_s, dp_rss, _) = (
            runs[name][0] for name in commands
        )
        ours = {json.loads(line)["sni"] for line in (tmp / "ours.jsonl").read_text().splitlines()}
        theirs = {
            line.split("\t")[5] for line in (tmp / "tshark.tsv").read_text().splitlines() if line
        }
        dpkt_snis = int((tmp / "dpkt.txt").read_text().split()[1])

        one = tmp / "one.pcap"
        one_packet_file(one)
        starts, cpus = [], []
        for _ in range(7):
            s, _rss, err = timed(
                [*ours_cmd, *(["pcap"] if len(ours_cmd) == 1 else []), str(one)], tmp / "one.out"
            )
            starts.append(s)
            user, system = err.strip().splitlines()[-1].removeprefix("CPU=").split()
            cpus.append(float(user) + float(system))
        start_ms = sorted(starts)[len(starts) // 2] * 1000
        start_cpu_ms = sorted(cpus)[len(cpus) // 2] * 1000
        load = os.getloadavg()[0]

        version = subprocess.run([tshark, "--version"], capture_output=True, text=True, check=False)
        tshark_version = version.stdout.splitlines()[0].rstrip(".") if version.stdout else "tshark"
        rows = [
            ("sniinspect pcap --format jsonl", ours_s, spread(runs["ours"]), ours_rss, len(ours)),
            ("tshark -Y tls.handshake.type==1 -T fields", ts_s, spread(runs["tshark"]), ts_rss,
             len(theirs)),
            ("plain dpkt loop (no reassembly)", dp_s, spread(runs["dpkt"]), dp_rss, dpkt_snis),
        ]  # fmt: skip
        lines = [
            f"Capture: {n:,} packets, {size / 2**20:.0f} MiB, {len(names):,} ClientHellos "
            f"(1/3 split over 2 segments), generated by `benchmarks/pcap.py`. Each tool run "
            f"{args.rounds} times in turn; its fastest run is shown, with the range of all.",
            "",
            "| tool | time (s) | all runs (s) | packets/s | vs tshark | peak RSS (MiB) "
            "| SNIs found |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for label, secs, times, rss, found in rows:
            lines.append(
                f"| {label} | {secs:.2f} | {times} | {n / secs:,.0f} | {ts_s / secs:.1f}x | "
                f"{rss} | {found:,} |"
            )
        lines += [
            "",
            f"Start-up (`sniinspect pcap` on a one-packet file, median of 7): {start_ms:.0f} ms "
            f"wall, {start_cpu_ms:.0f} ms CPU (user+sys); load average {load:.1f} at the end.",
            f"SNI set equal to tshark's: {'yes' if ours == theirs else 'NO'} "
            f"({len(ours & theirs):,} common, {len(ours - theirs)} only ours, "
            f"{len(theirs - ours)} only tshark's); all {len(names):,} generated names found: "
            f"{'yes' if ours == names else 'NO'}.",
            "",
            f"Machine: {os.cpu_count()} CPUs, {_interpreter()}, {tshark_version}.",
            f"Command: `python benchmarks/pcap.py --packets {args.packets} --hellos {args.hellos} "
            f"--rounds {args.rounds}`"
            + ("" if len(ours_cmd) == 1 else " (sniinspect run as `python -c ...command.pcap()`)"),
        ]
        table = "\n".join(lines) + "\n"
        quic_ok = True
        if args.quic:
            quic_table, quic_ok = quic_section(args, tmp, ours_cmd, tshark)
            table += "\n## QUIC\n\n" + quic_table
        print(table)
        if args.write:
            args.write.write_text("# `sniinspect pcap` benchmark\n\n" + table)
        return 0 if ours == theirs and quic_ok else 1
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
