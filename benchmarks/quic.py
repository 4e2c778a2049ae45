"""QUIC passthrough benchmark: HTTP/3 direct, through `sniinspect route`, through nginx's UDP proxy.

    python benchmarks/quic.py                   # prints a Markdown table
    python benchmarks/router.py --sections quic # the same rows, in the router benchmark's run

One run pushes the same HTTP/3 load along each path to one aioquic HTTP/3 server
(``tests/quic_peer.py serve``, a Python QUIC stack, on 127.0.0.1):

``direct``       client -> server: the ceiling, and the base for "added" handshake time
``nginx-udp``    nginx ``stream { server { listen ... udp; proxy_pass ...; } }``: the nearest
                 C relay; it knows nothing of QUIC or SNI (one upstream, sessions by address)
``ours``         ``sniinspect route --listen-quic``: SNI routing, one connected UDP socket per
                 QUIC connection
``ours-nolog``   the same with ``--no-connection-log``

Loads (clients are aioquic too, ``tests/quic_peer.py load``, in their own process):
``mb1``  one HTTP/3 download (``--size`` MB), MB/s;  ``mb8``  eight in parallel;
``hs``   new connections (handshake + ``GET /`` + close) in a closed loop for ``--duration``
seconds from ``--concurrency`` coroutines: handshakes/s and handshake time p50/p99.

The relay's CPU is read from ``/proc/PID/stat`` of the proxy's process tree around each
load: CPU seconds per GB relayed (mb1 + mb8), split into user and system time, and per
connection (hs). The endpoints are Python, so MB/s and handshakes/s are bounded by them on
this 2-core box; the CPU columns isolate the relay. ``--quic-rounds`` rounds (default 3)
measure every path in turn; the table gives each figure's median, and below it the CPU
per GB of each proxy over nginx's in every round (one round's ratio moves by up to 10-15%
here). Peak RSS is VmHWM of the proxy tree. Loopback only; every process started is
killed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
NAME = "quic.bench"
ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "tests" / "quic_peer.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ("direct", "nginx-udp", "ours", "ours-nolog")


@dataclass
class Row:
    """One path's results."""

    name: str
    port: int
    pid: int | None = None
    results: dict[str, float] = field(default_factory=dict)  # medians over the rounds
    rounds: list[dict[str, float]] = field(default_factory=list)


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                raw = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu(root: int) -> float:
    """utime + stime of the process tree, in seconds."""
    return sum(tree_cpu_split(root))


def tree_cpu_split(root: int) -> tuple[float, float]:
    """(utime, stime) of the process tree, in seconds."""
    user = system = 0
    for pid in _tree(root):
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def tree_rss_mib(root: int) -> float:
    total = 0
    for pid in _tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


class Processes:
    """Every process started, each in its own session; all killed at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(argv), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()


def start_backend(procs: Processes, tmp: Path) -> int:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={NAME}"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_udp_port()
    log = tmp / "backend.log"
    procs.start(
        [sys.executable, str(PEER), "serve", "--host", HOST, "--port", str(port),
         "--cert", str(cert), "--key", str(key)],
        log,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while "listening" not in log.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the QUIC backend did not start: {log.read_text()[-500:]}")
        time.sleep(0.1)
    return port


def start_nginx(procs: Processes, tmp: Path, backend: int) -> tuple[int, int]:
    d = tmp / "nginx-udp"
    d.mkdir()
    port = free_udp_port()
    module = "/usr/lib/nginx/modules/ngx_stream_module.so"
    load = f"load_module {module};" if Path(module).exists() else ""
    conf = d / "nginx.conf"
    conf.write_text(f"""
{load}
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8000; }}
stream {{
    server {{
        listen {HOST}:{port} udp;
        proxy_pass {HOST}:{backend};
        proxy_timeout 30s;
    }}
}}
""")
    proc = procs.start(["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                       d / "stdout.log")  # fmt: skip
    time.sleep(0.5)
    if proc.poll() is not None:
        raise RuntimeError(f"nginx exited: {(d / 'error.log').read_text()[-500:]}")
    return port, proc.pid


def start_ours(procs: Processes, tmp: Path, backend: int, log: bool) -> tuple[int, int]:
    port = free_udp_port()
    exe = shutil.which("sniinspect")
    argv = [exe, "route"] if exe else [
        sys.executable, "-c", "from sniinspect.route.command import route; route()"
    ]  # fmt: skip
    argv += ["--listen-quic", f"{HOST}:{port}", "--route", f"{NAME}={HOST}:{backend}",
             "--log-file", os.devnull]  # fmt: skip
    if not log:
        argv.append("--no-connection-log")
    proc = procs.start(argv, tmp / f"ours-{port}.log")
    time.sleep(1.0)  # imports
    if proc.poll() is not None:
        raise RuntimeError(f"sniinspect route exited: {(tmp / f'ours-{port}.log').read_text()}")
    return port, proc.pid


def load(port: int, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(PEER), "load", "--host", HOST, "--port", str(port),
         "--server-name", NAME, *args],
        capture_output=True, text=True, timeout=900, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(row: Row, args: argparse.Namespace) -> dict[str, float]:
    """One round of every load along ``row``'s path: its results."""
    size = args.quic_size * 1_000_000
    cpu = (lambda: tree_cpu_split(row.pid)) if row.pid else (lambda: (0.0, 0.0))
    results: dict[str, float] = {}
    (u0, s0) = cpu()
    one = load(row.port, "download", "--conns", "1", "--size", str(size))
    results["mb1"] = one["mb_s"]
    eight = load(row.port, "download", "--conns", "8", "--size", str(size // 8))
    results["mb8"] = eight["mb_s"]
    relayed = one["bytes"] + eight["bytes"]
    (u1, s1) = cpu()
    hs = load(row.port, "handshakes", "--duration", str(args.quic_duration),
              "--concurrency", str(args.quic_concurrency))  # fmt: skip
    (u2, s2) = cpu()
    results.update(hs_s=hs["per_s"], p50=hs["p50_ms"], p99=hs["p99_ms"])
    if not (one["verified"] and eight["verified"]):
        raise RuntimeError(f"{row.name}: a download's SHA-256 did not match")
    if row.pid:
        gb = relayed / 1e9
        results["cpu_gb"] = (u1 - u0 + s1 - s0) / gb
        results["user_gb"], results["sys_gb"] = (u1 - u0) / gb, (s1 - s0) / gb
        results["cpu_conn_ms"] = (u2 - u1 + s2 - s1) / max(hs["connections"], 1) * 1000
    return results


def combine(row: Row, rounds: list[dict[str, float]]) -> None:
    """Each result of ``row``: the median over the rounds; its peak RSS after them."""
    row.rounds = rounds
    for key in rounds[0]:
        row.results[key] = statistics.median(r[key] for r in rounds)
    if row.pid:
        row.results["rss"] = tree_rss_mib(row.pid)


def render(rows: list[Row]) -> str:
    by = {r.name: r.results for r in rows}
    ref = by.get("nginx-udp", {})
    direct = by.get("direct", {})

    def f(v: float | None, d: int = 1) -> str:
        return "-" if v is None else f"{v:,.{d}f}"

    def x(v: float | None, base: float | None) -> str:
        return "-" if v is None or not base else f"{v / base:.2f}"

    lines = [
        "| path | MB/s 1 conn | x nginx | MB/s 8 conns | x nginx | handshakes/s |"
        " handshake p50 / p99 ms | added p50 / p99 ms | CPU s / GB (user / sys) | x nginx |"
        " CPU ms / conn | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        v = r.results
        added = "-"
        if direct and r.name != "direct":
            added = f"{v['p50'] - direct['p50']:.2f} / {v['p99'] - direct['p99']:.2f}"
        lines.append(
            f"| {r.name} | {f(v['mb1'])} | {x(v['mb1'], ref.get('mb1'))} | {f(v['mb8'])} |"
            f" {x(v['mb8'], ref.get('mb8'))} | {f(v['hs_s'])} |"
            f" {f(v['p50'], 2)} / {f(v['p99'], 2)} | {added} | {cpu_gb(v)} |"
            f" {x(v.get('cpu_gb'), ref.get('cpu_gb'))} | {f(v.get('cpu_conn_ms'), 2)} |"
            f" {f(v.get('rss'))} |"
        )
    count = max(len(r.rounds) for r in rows)
    lines.append("")
    lines.append(f"Medians of {count} round(s); in each round every path in turn.")
    base = next((r for r in rows if r.name == "nginx-udp"), None)
    if base is not None:
        for r in rows:
            if r is base or not r.pid:
                continue
            ratios = [
                f"{mine['cpu_gb'] / theirs['cpu_gb']:.2f}"
                for mine, theirs in zip(r.rounds, base.rounds, strict=True)
                if theirs.get("cpu_gb")
            ]
            lines.append(f"CPU per GB x nginx per round, {r.name}: {', '.join(ratios)}.")
    return "\n".join(lines)


def cpu_gb(v: dict[str, float]) -> str:
    if "cpu_gb" not in v:
        return "-"
    return f"{v['cpu_gb']:.2f} ({v['user_gb']:.2f} / {v['sys_gb']:.2f})"


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    def raise_(_s: int, _f: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, raise_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(args: argparse.Namespace) -> str:
    """Start the backend and every path, measure them in turn for each round, return the table."""
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="sniinspect-quic-bench-") as name, \
            _interrupt_on_sigterm():  # fmt: skip
        tmp = Path(name)
        try:
            backend = start_backend(procs, tmp)
            rows: list[Row] = []
            for target in args.quic_targets.split(","):
                if target == "direct":
                    rows.append(Row("direct", backend))
                elif target == "nginx-udp":
                    rows.append(Row("nginx-udp", *start_nginx(procs, tmp, backend)))
                elif target in ("ours", "ours-nolog"):
                    rows.append(Row(target, *start_ours(procs, tmp, backend, target == "ours")))
                else:
                    raise SystemExit(f"unknown target {target!r}; known: {', '.join(TARGETS)}")
            rounds: dict[str, list[dict[str, float]]] = {row.name: [] for row in rows}
            for number in range(1, (args.quic_rounds or 3) + 1):
                for row in rows:  # in turn, so that drift on a shared box spreads over all
                    rounds[row.name].append(measure(row, args))
                    print(f"  round {number} {row.name}: {rounds[row.name][-1]}", file=sys.stderr)
            for row in rows:
                combine(row, rounds[row.name])
        finally:
            procs.stop_all()
    return render(rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The QUIC options, shared with benchmarks/router.py."""
    p.add_argument("--quic-targets", default=",".join(TARGETS), help=f"comma list of {TARGETS}")
    p.add_argument("--quic-size", type=int, default=40, help="MB per one-connection download")
    p.add_argument("--quic-duration", type=float, default=5.0, help="seconds of handshakes")
    p.add_argument("--quic-concurrency", type=int, default=4, help="concurrent handshakers")
    p.add_argument(
        "--quic-rounds", type=int, default=None,
        help="rounds; the table gives medians (default 3; router.py: its --rounds)",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(p)
    p.add_argument("--write", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    table = run(args)
    print(table)
    if args.write:
        args.write.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
