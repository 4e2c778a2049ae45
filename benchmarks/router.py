"""Side-by-side benchmark of `sniinspect route` against HAProxy, nginx and sniproxy.

One run on one machine pushes the same load through every target and writes a markdown table
(``benchmarks/router-results.md`` by default). Targets (``--targets``):

``direct``     client -> backend, no proxy: the ceiling, and the base for "added latency"
``haproxy``    HAProxy ``mode tcp``, ``tcp-request inspect-delay``, ``use_backend`` on
               ``req.ssl_sni``; the reference for every "x HAProxy" ratio
``haproxy-splice``  the same with ``option splice-auto`` (kernel splice, as ours uses)
``nginx``      nginx ``stream`` + ``ssl_preread on`` + ``map $ssl_preread_server_name``
``sniproxy``   sniproxy (``proto tls``, one table)
``ours1``      ``sniinspect route --workers 1``
``ours2``      ``sniinspect route --workers 2``

Sections (``--sections``):

``conn``   new TLS connections per second, closed loop: ``--clients`` client *processes*
           (Python ``ssl``, blocking sockets; the handshake runs in OpenSSL with the GIL released)
           each doing connect, full TLS 1.3 handshake (no tickets, no resumption), ``GET /``,
           read the response to EOF, close, in a loop for ``--duration`` seconds. The backend
           terminates TLS (nginx ``http``, ECDSA P-256 certificate, 1 worker).
``ttfb``   time to first byte at a moderate fixed rate (open loop, ``--rate`` connections/s,
           one client thread scheduling by wall clock): from ``connect()`` to the first byte
           of the HTTP response, i.e. TCP connect + TLS handshake + request + response through
           the proxy. p50/p99 and the p99 added over ``direct``.
``term``   TLS termination by SNI (certificates chosen by name, ECDSA P-256, TLS 1.3, no
           resumption) in front of a plain HTTP backend (nginx, 1 worker): HAProxy ``bind ...
           ssl crt DIR``, nginx ``http`` with one ``server_name`` + ``ssl_certificate`` block per
           name, ours ``terminate = true`` with ``[tls] certificates = ["DIR/*.pem"]``; ``direct``
           is nginx terminating TLS itself, the base for "added TTFB". Handshakes/s (closed loop
           as ``conn``), the proxy's CPU per handshake, TTFB p50/p99 (open loop as ``ttfb``) and
           MB/s of one 64 MB ``GET /bulk`` through the terminated route.
``bulk1``  MB/s of one bulk transfer, ``bulk8`` of 8 parallel ones. The client sends a real
           ClientHello (made by Python ``ssl`` for SNI ``bulk.example``) plus an 8-byte size
           request; a plain-TCP backend reads them and then ``sendfile()``s that many bytes
           and closes. No TLS is terminated anywhere in this path, on purpose: every proxy
           only peeks at the hello and then relays opaque bytes, so encryption would cost the
           same in every row and only hide the relay cost we want to compare. The client
           checks the byte count and reports MB/s = bytes / (connect .. EOF).
``quic``   HTTP/3 through ``--listen-quic`` beside nginx's UDP ``stream`` proxy and direct
           (in ``quic.py``: MB/s for 1 and 8 connections, handshakes/s, CPU per GB)
``cpu``, ``curl1``, ``curl8``, ``calls``  (in ``router_cpu.py``): CPU µs per connection, user and
           system, under h2load (``Connection: close``, full TLS 1.3 handshakes); ``curl`` TLS
           downloads from nginx, one and 8 in parallel, with the ratio to HAProxy per round; and
           Python calls per connection by cProfile, before (``--calls-before`` a source tree,
           e.g. ``git worktree add /tmp/before HEAD~1``) and after. Target ``ours1-nolog`` is
           ``ours1`` with ``--no-connection-log``.

CPU seconds are read from ``/proc/PID/stat`` (utime+stime) of the proxy's whole process tree
(nginx master + workers, our workers) before and after every section; peak memory is the sum of
``VmHWM`` over that tree (an upper bound: pages shared between forked workers count twice).

Everything binds to 127.0.0.1; config files go into a temp dir; every process started is
killed at the end, also on Ctrl-C or an exception.

Setup (Debian/Ubuntu; not part of CI)::

    apt-get install haproxy nginx libnginx-mod-stream sniproxy openssl
    pip install -e .            # provides `sniinspect route`
    pip install py-spy          # optional, to profile the router (see --profile)

Run::

    python benchmarks/router.py                       # full run, about 3-4 minutes
    python benchmarks/router.py --quick               # short run, under a minute
    python benchmarks/router.py --targets direct,haproxy,ours2 --sections conn,bulk1

Peers are configured like an operator would for this job: HAProxy ``nbthread`` and nginx
``worker_processes`` equal to ``--peer-threads`` (default 2, the same cores ``ours2`` may use),
logging off. Our router logs one JSON line per connection by design; it goes to /dev/null.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import quic as quic_bench
import router_cpu

HOST = "127.0.0.1"
TLS_NAME = "bench.example"
BULK_NAME = "bulk.example"
TERM_NAME = "term.example"
TERM_BULK_NAME = "termbulk.example"
ALL_TARGETS = (
    "direct",
    "haproxy",
    "haproxy-splice",
    "nginx",
    "sniproxy",
    "ours1",
    "ours1-nolog",  # --no-connection-log: what the log line costs
    "ours2",
)
TERM_TARGETS = ("direct", "haproxy", "nginx", "ours1", "ours2")
# cpu, curl1, curl8 and calls are in router_cpu.py (CPU per connection, TLS downloads).
ALL_SECTIONS = (
    "conn", "ttfb", "bulk1", "bulk8", "term", "cpu", "curl1", "curl8", "calls", "quic",
)  # fmt: skip
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_CHUNK = 1 << 20
ROUTE_SHIM = "from sniinspect.route.command import route; route(prog_name='sniinspect route')"


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, proc: subprocess.Popen[bytes] | None, what: str, timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with {proc.returncode} before listening"
                ) from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} is not listening on {port} after {timeout}s") from None
            time.sleep(0.05)


class Processes:
    """Every process the benchmark starts, each in its own session so its children die with it."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], *, log: Path, **kw: object) -> subprocess.Popen[bytes]:
        out = open(log, "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(  # type: ignore[call-overload]
            list(argv),
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **kw,
        )
        out.close()
        self.procs.append(proc)
        return proc  # type: ignore[no-any-return]

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Workers that outlived a master in the same session (they share the pgid).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc)


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from 3 (state) on; comm may hold spaces


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(int(st[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu(root: int) -> float:
    """utime+stime of every live process in the tree, plus reaped children of the root."""
    total = 0
    for pid in process_tree(root):
        st = _stat(pid)
        if st is None:
            continue
        total += int(st[11]) + int(st[12])  # utime, stime (fields 14, 15)
        if pid == root:
            total += int(st[13]) + int(st[14])  # cutime, cstime
    return total / CLK_TCK


def tree_peak_rss_mib(root: int) -> float:
    total_kib = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


# ----------------------------------------------------------------------------- backends


def make_cert(tmp: Path) -> tuple[Path, Path]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            f"/CN={TLS_NAME}",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def make_term_certs(tmp: Path) -> Path:
    """A folder of chain+key PEM files, one per terminated name (ECDSA P-256)."""
    folder = tmp / "term-certs"
    folder.mkdir()
    for name in (TERM_NAME, TERM_BULK_NAME):
        pem = folder / f"{name}.pem"
        key = folder / f"{name}.key.tmp"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}", "-days", "2",
                "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(pem),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        pem.write_bytes(pem.read_bytes() + key.read_bytes())
        key.unlink()
    return folder


def start_tls_backend(
    procs: Processes, tmp: Path, port: int, key: Path, cert: Path, plain_port: int = 0
) -> None:
    """nginx http terminating TLS 1.3 and answering every request with a 3-byte body; the
    same over plain HTTP on ``plain_port`` (behind terminating proxies), and ``/bulk``."""
    d = tmp / "backend-nginx"
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {HOST}:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        keepalive_timeout 0;
        location / {{ return 200 "ok\\n"; }}
        location = /bulk {{ alias {tmp}/bulk.bin; }}
        location = /big.bin {{ alias {tmp}/big.bin; }}
    }}
    server {{
        listen {HOST}:{plain_port or free_port()} backlog=4096;
        keepalive_timeout 0;
        sendfile on;
        location / {{ return 200 "ok\\n"; }}
        location = /bulk {{ alias {tmp}/bulk.bin; }}
    }}
}}
""")
    proc = procs.start(
        ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")], log=d / "stdout.log"
    )
    wait_port(port, proc, "backend nginx")


def bulk_backend_main(port: int, src_file: str) -> None:
    """Plain-TCP bulk server: read one TLS record (the hello) and an 8-byte size, then
    sendfile() that many bytes and close."""
    fd = os.open(src_file, os.O_RDONLY)
    file_size = os.fstat(fd).st_size
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((HOST, port))
    srv.listen(1024)

    def recv_exact(conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("peer closed")
            buf += chunk
        return buf

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                header = recv_exact(conn, 5)
                recv_exact(conn, int.from_bytes(header[3:5], "big"))
                (remaining,) = struct.unpack("!Q", recv_exact(conn, 8))
                offset = 0
                while remaining:
                    sent = os.sendfile(
                        conn.fileno(), fd, offset, min(remaining, file_size - offset)
                    )
                    if sent == 0:
                        break
                    remaining -= sent
                    offset = (offset + sent) % file_size
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # wait for the client's close so nothing resets in flight
            except OSError:
                pass

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def start_bulk_backend(procs: Processes, tmp: Path, port: int) -> None:
    src = tmp / "bulk.bin"
    with open(src, "wb") as f:
        f.write(os.urandom(64 << 20))
    # nginx workers (user nobody) serve it as /bulk to the termination section.
    tmp.chmod(0o755)
    src.chmod(0o644)
    proc = procs.start(
        [sys.executable, __file__, "--bulk-backend", str(port), str(src)],
        log=tmp / "bulk-backend.log",
    )
    wait_port(port, proc, "bulk backend")


# ----------------------------------------------------------------------------- proxies


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)
    peak_rss_mib: float | None = None
    note: str = ""
    bulk_port: int | None = None  # direct: the bulk backend is a different port
    term_port: int | None = None  # where TLS is terminated (section "term")
    per_round: list[dict[str, object]] = field(default_factory=list)

    def port_for(self, section: str) -> int:
        return self.bulk_port if self.bulk_port and section.startswith("bulk") else self.port


def start_haproxy(
    procs: Processes,
    tmp: Path,
    port: int,
    tls: int,
    bulk: int,
    threads: int,
    splice: bool,
    term: tuple[int, Path, int] | None = None,
) -> subprocess.Popen[bytes]:
    conf = tmp / "haproxy.cfg"
    term_conf = ""
    if term is not None:
        term_port, certs, plain = term
        term_conf = f"""
frontend term
    bind {HOST}:{term_port} ssl crt {certs} ssl-min-ver TLSv1.3
    default_backend plain
backend plain
    server s1 {HOST}:{plain}
"""
    conf.write_text(f"""
global
    nbthread {threads}
    maxconn 4000
defaults
    mode tcp
    {"option splice-auto" if splice else ""}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend sni
    bind {HOST}:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    use_backend tls if {{ req.ssl_sni -i {TLS_NAME} }}
    use_backend bulk if {{ req.ssl_sni -i {BULK_NAME} }}
backend tls
    server s1 {HOST}:{tls}
backend bulk
    server s1 {HOST}:{bulk}
{term_conf}""")
    proc = procs.start(["haproxy", "-db", "-f", str(conf)], log=tmp / "haproxy.log")
    wait_port(port, proc, "haproxy")
    return proc


def start_nginx(
    procs: Processes,
    tmp: Path,
    port: int,
    tls: int,
    bulk: int,
    workers: int,
    term: tuple[int, Path, int] | None = None,
) -> subprocess.Popen[bytes]:
    d = tmp / "nginx-stream"
    http = ""
    if term is not None:
        term_port, certs, plain = term
        blocks = "".join(
            f"""
    server {{
        listen {HOST}:{term_port} ssl{" backlog=4096" if name == TERM_NAME else ""};
        server_name {name};
        ssl_certificate {certs}/{name}.pem;
        ssl_certificate_key {certs}/{name}.pem;
        ssl_protocols TLSv1.3;
        location / {{ proxy_pass http://{HOST}:{plain}; proxy_buffering off; }}
    }}"""
            for name in (TERM_NAME, TERM_BULK_NAME)
        )
        http = f"""
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;{blocks}
}}"""
    d.mkdir(exist_ok=True)
    module = "/usr/lib/nginx/modules/ngx_stream_module.so"
    load = f"load_module {module};" if Path(module).exists() else ""
    conf = d / "nginx.conf"
    conf.write_text(f"""
{load}
worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8000; }}
stream {{
    map $ssl_preread_server_name $upstream {{
        {TLS_NAME} {HOST}:{tls};
        {BULK_NAME} {HOST}:{bulk};
        default {HOST}:9;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        ssl_preread on;
        proxy_pass $upstream;
    }}
}}
{http}
""")
    proc = procs.start(
        ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")], log=d / "stdout.log"
    )
    wait_port(port, proc, "nginx")
    return proc


def start_sniproxy(
    procs: Processes, tmp: Path, port: int, tls: int, bulk: int
) -> subprocess.Popen[bytes]:
    conf = tmp / "sniproxy.conf"
    conf.write_text(f"""
user root
pidfile {tmp}/sniproxy.pid
error_log {{
    filename {tmp}/sniproxy-error.log
    priority warning
}}
listener {HOST}:{port} {{
    protocol tls
    table bench
}}
table bench {{
    ^{TLS_NAME.replace(".", "[.]")}$ {HOST}:{tls}
    ^{BULK_NAME.replace(".", "[.]")}$ {HOST}:{bulk}
}}
""")
    proc = procs.start(["sniproxy", "-f", "-c", str(conf)], log=tmp / "sniproxy.log")
    wait_port(port, proc, "sniproxy")
    return proc


def start_ours(
    procs: Processes,
    tmp: Path,
    port: int,
    tls: int,
    bulk: int,
    workers: int,
    extra: Sequence[str],
    term: tuple[Path, int] | None = None,
) -> subprocess.Popen[bytes]:
    exe = shutil.which("sniinspect")
    if exe and importlib.util.find_spec("sniinspect.main") is not None:
        argv = [exe, "route"]
    else:  # the click group is not there yet: call the subcommand itself
        argv = [sys.executable, "-c", ROUTE_SHIM]
    argv += [
        "--listen",
        f"{HOST}:{port}",
        "--route",
        f"{TLS_NAME}={HOST}:{tls}",
        "--route",
        f"{BULK_NAME}={HOST}:{bulk}",
        "--workers",
        str(workers),
        *extra,
    ]
    if term is not None:  # terminated names on the same listener, beside passthrough
        certs, plain = term
        conf = tmp / f"ours{workers}-term.toml"
        conf.write_text(
            f'[tls]\ncertificates = ["{certs}/*.pem"]\n[[route]]\n'
            f'names = ["{TERM_NAME}", "{TERM_BULK_NAME}"]\nbackends = ["{HOST}:{plain}"]\n'
            "terminate = true\n"
        )
        argv += ["--config", str(conf)]
    log = tmp / f"ours{workers}.log"
    proc = procs.start(argv, log=log)
    # The per-connection JSON log goes to the log file (stderr); it is part of our cost.
    wait_port(port, proc, f"sniinspect route --workers {workers}")
    return proc


def settle(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process tree is idle (workers done importing), so start-up CPU is not
    charged to the first section."""
    deadline = time.monotonic() + timeout
    last = tree_cpu(pid)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = tree_cpu(pid)
        if now - last < 0.01:
            return
        last = now


# ----------------------------------------------------------------------------- load: TLS


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def one_tls_request(ctx: ssl.SSLContext, port: int, name: str = TLS_NAME) -> float:
    """Connect, handshake, GET, read to EOF. Returns seconds from connect() to first byte."""
    start = time.perf_counter()
    raw = socket.create_connection((HOST, port), timeout=10)
    try:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(f"GET / HTTP/1.0\r\nHost: {name}\r\n\r\n".encode())
            first = tls.recv(4096)
            ttfb = time.perf_counter() - start
            if not first.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response {first[:40]!r}")
            while tls.recv(4096):
                pass
    finally:
        raw.close()
    return ttfb


def conn_worker(
    port: int,
    duration: float,
    start_at: float,
    out: mp.Queue[tuple[int, int, float]],
    name: str = TLS_NAME,
) -> None:
    ctx = client_context()
    done = errors = 0
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        try:
            one_tls_request(ctx, port, name)
            done += 1
        except (OSError, RuntimeError):
            errors += 1
    usage = os.times()
    out.put((done, errors, usage.user + usage.system))


def measure_conn(
    port: int, clients: int, duration: float, name: str = TLS_NAME
) -> dict[str, object]:
    ctx = mp.get_context("fork")
    q: mp.Queue[tuple[int, int, float]] = ctx.Queue()
    start_at = time.time() + 0.3
    workers = [
        ctx.Process(target=conn_worker, args=(port, duration, start_at, q, name))
        for _ in range(clients)
    ]
    for w in workers:
        w.start()
    try:
        results = [q.get(timeout=duration + 60) for _ in workers]
    finally:
        for w in workers:
            w.join(5)
            if w.is_alive():
                w.kill()
    done = sum(r[0] for r in results)
    return {
        "conn_s": done / duration,
        "conn_errors": sum(r[1] for r in results),
        "conn_total": done,
        "client_cpu_s": sum(r[2] for r in results),
    }


def measure_ttfb(port: int, rate: float, count: int, name: str = TLS_NAME) -> dict[str, object]:
    ctx = client_context()
    samples: list[float] = []
    errors = late = 0
    t0 = time.perf_counter() + 0.05
    for i in range(count):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.5 / rate:
            late += 1
        try:
            samples.append(one_tls_request(ctx, port, name))
        except (OSError, RuntimeError):
            errors += 1
    return {
        **ttfb_stats(samples),
        "ttfb_samples": samples,
        "ttfb_errors": errors,
        "ttfb_late_starts": late,
    }


def ttfb_stats(samples: list[float]) -> dict[str, object]:
    if not samples:
        return {}
    ordered = sorted(samples)
    return {
        "ttfb_p50_ms": 1000 * statistics.median(ordered),
        "ttfb_p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "ttfb_n": len(ordered),
    }


# ----------------------------------------------------------------------------- load: bulk


def make_bulk_hello() -> bytes:
    """A real ClientHello record from Python's ssl for SNI bulk.example."""
    ctx = client_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=BULK_NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def one_bulk(port: int, hello: bytes, size: int) -> tuple[int, float]:
    buf = bytearray(PAGE_CHUNK)
    view = memoryview(buf)
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=60) as s:
        s.sendall(hello + struct.pack("!Q", size))
        got = 0
        while True:
            n = s.recv_into(view)
            if not n:
                break
            got += n
    return got, time.perf_counter() - start


def measure_bulk(port: int, streams: int, size: int) -> dict[str, object]:
    hello = make_bulk_hello()
    results: list[tuple[int, float] | BaseException] = [ValueError("not run")] * streams

    def run(i: int) -> None:
        try:
            results[i] = one_bulk(port, hello, size)
        except OSError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if isinstance(r, tuple) and r[0] == size]
    total = sum(r[0] for r in results if isinstance(r, tuple))
    return {
        "mb_s": total / wall / 1e6,
        "bulk_ok": len(ok),
        "bulk_streams": streams,
        "bulk_bytes": total,
    }


def one_tls_bulk(port: int) -> tuple[int, float]:
    """``GET /bulk`` (64 MB) over TLS through a terminating proxy; (body bytes, seconds)."""
    buf = bytearray(PAGE_CHUNK)
    view = memoryview(buf)
    start = time.perf_counter()
    raw = socket.create_connection((HOST, port), timeout=60)
    got = 0
    try:
        with client_context().wrap_socket(raw, server_hostname=TERM_BULK_NAME) as tls:
            tls.sendall(f"GET /bulk HTTP/1.0\r\nHost: {TERM_BULK_NAME}\r\n\r\n".encode())
            while True:
                try:
                    n = tls.recv_into(view)
                except ssl.SSLError:  # a ragged close after the body
                    break
                if not n:
                    break
                got += n
    finally:
        raw.close()
    return got, time.perf_counter() - start


def measure_term(t: Target, args: argparse.Namespace) -> tuple[dict[str, object], float]:
    """Section "term": handshakes/s, CPU per handshake, TTFB and bulk through termination."""
    port = t.term_port
    assert port is not None
    pid = t.proc.pid if t.proc else None
    before = tree_cpu(pid) if pid else 0.0
    conn = measure_conn(port, args.clients, args.duration, TERM_NAME)
    hs_cpu = tree_cpu(pid) - before if pid else 0.0
    ttfb = measure_ttfb(port, args.rate, args.ttfb_count, TERM_NAME)
    before = tree_cpu(pid) if pid else 0.0
    got, seconds = one_tls_bulk(port)
    bulk_cpu = tree_cpu(pid) - before if pid else 0.0
    total = int(conn["conn_total"])  # type: ignore[call-overload]
    out: dict[str, object] = {
        "term_hs_s": conn["conn_s"],
        "term_hs_total": total,
        "term_hs_errors": conn["conn_errors"],
        "term_ttfb_p50_ms": ttfb.get("ttfb_p50_ms"),
        "term_ttfb_p99_ms": ttfb.get("ttfb_p99_ms"),
        "term_ttfb_errors": ttfb.get("ttfb_errors"),
        "term_mb_s": got / seconds / 1e6,
        "term_bulk_bytes": got,
    }
    if pid:
        out["term_cpu_ms_per_hs"] = 1000 * hs_cpu / total if total else None
        out["term_cpu_s_per_gb"] = bulk_cpu / (got / 1e9) if got else None
    return out, hs_cpu + bulk_cpu


def render_term(targets: list[Target]) -> list[str]:
    """The termination table (section "term")."""
    by = {t.name: t for t in targets}
    hap, direct = by.get("haproxy"), by.get("direct")
    rows = [t for t in targets if "term_hs_s" in t.results]
    if not rows:
        return []

    def v(t: Target | None, key: str) -> object:
        return t.results.get(key) if t is not None else None

    def minus(a: object, b: object) -> str:
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return fmt(float(a) - float(b), 2)
        return "-"

    lines = [
        "",
        "## TLS termination by SNI",
        "",
        "Certificates chosen by name (ECDSA P-256), TLS 1.3, new connections without "
        "resumption, a plain HTTP backend behind; `direct` is nginx terminating TLS itself.",
        "",
        "| target | handshakes/s | x HAProxy | proxy CPU ms / handshake | x HAProxy "
        "| TTFB p50 ms | TTFB p99 ms | added p50 / p99 ms vs direct | bulk MB/s | x HAProxy "
        "| CPU s / GB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in rows:
        is_direct = t.name == "direct"
        lines.append(
            "| "
            + " | ".join(
                [
                    t.name,
                    fmt(v(t, "term_hs_s"), 0),
                    ratio(v(t, "term_hs_s"), v(hap, "term_hs_s")),
                    "-" if is_direct else fmt(v(t, "term_cpu_ms_per_hs"), 2),
                    "-" if is_direct else ratio(
                        v(t, "term_cpu_ms_per_hs"), v(hap, "term_cpu_ms_per_hs")
                    ),
                    fmt(v(t, "term_ttfb_p50_ms"), 2),
                    fmt(v(t, "term_ttfb_p99_ms"), 2),
                    "-" if is_direct else (
                        f"{minus(v(t, 'term_ttfb_p50_ms'), v(direct, 'term_ttfb_p50_ms'))} / "
                        f"{minus(v(t, 'term_ttfb_p99_ms'), v(direct, 'term_ttfb_p99_ms'))}"
                    ),
                    fmt(v(t, "term_mb_s"), 0),
                    ratio(v(t, "term_mb_s"), v(hap, "term_mb_s")),
                    "-" if is_direct else fmt(v(t, "term_cpu_s_per_gb"), 2),
                ]
            )
            + " |"
        )  # fmt: skip
    lines += [
        "",
        "- Targets: CPU per handshake at most 2x HAProxy's; bulk MB/s at least 0.7x HAProxy's.",
        "- Peers: HAProxy `bind ... ssl crt DIR ssl-min-ver TLSv1.3` (mode tcp), nginx `http` "
        "with one `server_name` + `ssl_certificate` block per name and `proxy_pass` (so nginx "
        "also parses HTTP); ours `terminate = true` with `[tls] certificates` on the listener "
        "that also passes other names through. Session tickets are each server's default.",
    ]
    return lines


# ----------------------------------------------------------------------------- report


def fmt(value: object, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def ratio(value: object, base: object) -> str:
    if isinstance(value, (int, float)) and isinstance(base, (int, float)) and base:
        return f"{value / base:.2f}"
    return "-"


def render(
    targets: list[Target], args: argparse.Namespace, command: str, env: dict[str, str]
) -> str:
    by = {t.name: t for t in targets}
    hap = by.get("haproxy")
    direct = by.get("direct")

    def r(t: Target, key: str) -> object:
        return t.results.get(key)

    def num(t: Target, key: str) -> float | None:
        value = t.results.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    lines = [
        "# `sniinspect route` vs HAProxy, nginx, sniproxy: measured side by side",
        "",
        f"Measured {env['date']} on {env['cpu']} ({env['nproc']} CPUs), Linux {env['kernel']}, "
        f"Python {env['python']}. Versions: {env['versions']}.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        "| target | conn/s | x HAProxy | TTFB p50 ms | TTFB p99 ms | added p50 / p99 ms vs direct "
        "| MB/s 1 stream | x HAProxy | MB/s 8 streams | x HAProxy | proxy CPU s / round "
        "| CPU ms / 1k conn | CPU s / GB | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in targets:
        added = added50 = None
        if (
            direct is not None
            and isinstance(r(t, "ttfb_p99_ms"), float)
            and isinstance(r(direct, "ttfb_p99_ms"), float)
        ):
            added = r(t, "ttfb_p99_ms") - r(direct, "ttfb_p99_ms")  # type: ignore[operator]
            added50 = r(t, "ttfb_p50_ms") - r(direct, "ttfb_p50_ms")  # type: ignore[operator]
        cpu_conn = None
        if "conn" in t.cpu and r(t, "conn_total"):
            cpu_conn = 1000 * t.cpu["conn"] / (r(t, "conn_total") / 1000)  # type: ignore[operator]
        gb = sum(num(t, f"{s}_bytes") or 0.0 for s in ("bulk1", "bulk8")) / 1e9
        cpu_gb = (t.cpu.get("bulk1", 0) + t.cpu.get("bulk8", 0)) / gb if gb and t.proc else None
        is_direct = t.name == "direct"
        lines.append(
            "| "
            + " | ".join(
                [
                    t.name + (f" ({t.note})" if t.note else ""),
                    fmt(r(t, "conn_s"), 0),
                    ratio(r(t, "conn_s"), r(hap, "conn_s") if hap else None),
                    fmt(r(t, "ttfb_p50_ms"), 2),
                    fmt(r(t, "ttfb_p99_ms"), 2),
                    "-" if is_direct else f"{fmt(added50, 2)} / {fmt(added, 2)}",
                    fmt(r(t, "bulk1_mb_s"), 0),
                    ratio(r(t, "bulk1_mb_s"), r(hap, "bulk1_mb_s") if hap else None),
                    fmt(r(t, "bulk8_mb_s"), 0),
                    ratio(r(t, "bulk8_mb_s"), r(hap, "bulk8_mb_s") if hap else None),
                    "-" if is_direct else fmt(sum(t.cpu.values()), 2),
                    "-" if is_direct else fmt(cpu_conn, 1),
                    "-" if is_direct else fmt(cpu_gb, 2),
                    "-" if is_direct else fmt(t.peak_rss_mib, 1),
                ]
            )
            + " |"
        )
    errors = []
    for t in targets:
        e = {k: v for k, v in t.results.items() if k.endswith(("errors", "late_starts")) and v}
        bad = [
            s
            for s in ("bulk1", "bulk8")
            if s + "_ok" in t.results and t.results[s + "_ok"] != t.results[s + "_streams"]
        ]
        if e or bad:
            errors.append(
                f"- {t.name}: {e} {'incomplete bulk streams in ' + ', '.join(bad) if bad else ''}"
            )
    client_ms = "?"
    if direct is not None and num(direct, "client_cpu_s") and num(direct, "conn_total"):
        client_ms = f"{1000 * num(direct, 'client_cpu_s') / num(direct, 'conn_total'):.2f}"  # type: ignore[operator]
    lines += [
        "",
        "How each column is measured (see the module docstring of benchmarks/router.py):",
        "",
        f"- conn/s: {args.clients} client processes (Python `ssl`, blocking), each looping "
        "connect + full "
        f"TLS 1.3 handshake (X25519, ECDSA P-256, no tickets) + `GET /` + read to EOF for "
        f"{args.duration:g} s; the backend is nginx `http` (1 worker) terminating TLS. Client, "
        "proxy and backend share the same CPUs, so this is a saturation figure for this box, "
        "not for the proxy alone; `direct` is the ceiling. The client costs "
        f"{client_ms} ms CPU per connection (direct row; `openssl s_time -new`, which cannot "
        "send SNI, measured 0.68 ms user CPU per connection on this box), so Python is not "
        "what limits it; the 2 shared cores are. CPU ms / 1k conn is the figure that "
        "isolates the proxy.",
        f"- TTFB: {args.ttfb_count} connections per round at {args.rate:g}/s "
        "(open loop, one client thread), "
        "connect() to first response byte, same TLS backend; percentiles over the samples of "
        "all rounds pooled. "
        "Added p99 = p99(target) - p99(direct).",
        f"- MB/s: one stream of {args.bulk_mb} MB, and 8 parallel streams of "
        f"{args.bulk_mb // 8} MB each: a real ClientHello (SNI bulk.example) plus an 8-byte "
        "size, then the plain-TCP backend "
        "`sendfile()`s the bytes and closes. Only the relay is measured; no TLS crypto anywhere.",
        "- proxy CPU s / round: utime+stime of the proxy's process tree over all sections of one "
        "round; CPU ms / 1k conn over the conn section; CPU s / GB over both bulk sections.",
        f"- Every figure is the median over {args.rounds} round(s); in each round every target is "
        "started fresh and measured in turn, so drift on a shared machine spreads over all rows.",
        "- peak RSS: sum of VmHWM over the proxy's processes at the end of the run (upper bound).",
        f"- Peers: HAProxy nbthread {args.peer_threads}, nginx worker_processes "
        f"{args.peer_threads}, "
        "sniproxy (single process), logging off; ours logs one JSON line per connection to a file.",
    ]
    lines += [
        "",
        "Spread over rounds (min - max of the per-round figures; the machine is shared, so "
        "read the medians above with this in mind):",
        "",
        "| target | conn/s | TTFB p50 ms | MB/s 1 stream | MB/s 8 streams |",
        "|---|---|---|---|---|",
    ]
    for t in targets:
        cells = []
        for key, digits in (
            ("conn_s", 0),
            ("ttfb_p50_ms", 2),
            ("bulk1_mb_s", 0),
            ("bulk8_mb_s", 0),
        ):
            vals = [float(v) for r in t.per_round if isinstance(v := r.get(key), (int, float))]
            cells.append(f"{min(vals):,.{digits}f} - {max(vals):,.{digits}f}" if vals else "-")
        lines.append(f"| {t.name} | " + " | ".join(cells) + " |")
    lines += render_term(targets)
    lines += router_cpu.render(targets, args)
    lines += ["", f"Load average before / after the run: {env['load_before']} / {load_average()}."]
    if errors:
        lines += ["", "Errors / anomalies:", "", *errors]
    lines.append("")
    return "\n".join(lines)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def environment() -> dict[str, str]:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            return "absent"
        text = (p.stdout + p.stderr).strip().splitlines()
        return text[0] if text else "?"

    versions = "; ".join(
        [
            version(["haproxy", "-v"]).split(" - ")[0],
            version(["nginx", "-v"]),
            version(["sniproxy", "-V"]),
            ssl.OPENSSL_VERSION,
        ]
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "load_before": load_average(),
    }


# ----------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="short run (about a minute)")
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help=f"comma list of {ALL_TARGETS}")
    p.add_argument(
        "--sections", default=",".join(ALL_SECTIONS), help=f"comma list of {ALL_SECTIONS}"
    )
    p.add_argument("--clients", type=int, default=4, help="client processes for conn/s")
    p.add_argument("--duration", type=float, default=None, help="seconds per conn/s run")
    p.add_argument("--rate", type=float, default=100.0, help="connections/s for TTFB")
    p.add_argument("--ttfb-count", type=int, default=None, help="connections for TTFB")
    p.add_argument("--bulk-mb", type=int, default=None, help="MB per single bulk stream")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (median)")
    p.add_argument("--peer-threads", type=int, default=2, help="HAProxy nbthread / nginx workers")
    p.add_argument(
        "--ours-arg", action="append", default=[], help="extra argument for sniinspect route"
    )
    p.add_argument("--output", type=Path, default=Path(__file__).with_name("router-results.md"))
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        default=None,
        help="record py-spy collapsed stacks (flamegraph.pl input) of our router into DIR",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    p.add_argument("--cpu-conns", type=int, default=None, help="h2load connections (cpu)")
    p.add_argument("--h2load-clients", type=int, default=16, help="h2load -c (cpu)")
    p.add_argument("--curl-mb", type=int, default=None, help="MiB per curl round (curl1/8)")
    p.add_argument("--calls", type=int, default=2000, help="connections profiled (calls)")
    p.add_argument(
        "--calls-before",
        type=Path,
        default=None,
        help="source tree of the previous revision (git worktree) for the calls section",
    )
    quic_bench.add_arguments(p)
    args = p.parse_args(argv)
    args.cpu_conns = args.cpu_conns or (1000 if args.quick else 5000)
    args.curl_mb = args.curl_mb or (256 if args.quick else 1024)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.quic_rounds = args.quic_rounds or args.rounds
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    args.ttfb_count = args.ttfb_count or (200 if args.quick else 1000)
    args.bulk_mb = args.bulk_mb or (256 if args.quick else 2048)
    args.targets = [t for t in args.targets.split(",") if t]
    args.sections = [s for s in args.sections.split(",") if s]
    for t in args.targets:
        if t not in ALL_TARGETS:
            p.error(f"unknown target {t!r}")
    for s in args.sections:
        if s not in ALL_SECTIONS:
            p.error(f"unknown section {s!r}")
    return args


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_sections(
    t: Target, args: argparse.Namespace, log: Callable[[str], None]
) -> tuple[dict[str, object], dict[str, float]]:
    """One round of every selected section against a started target."""
    size1 = args.bulk_mb * 1_000_000
    results: dict[str, object] = {}
    cpu: dict[str, float] = {}
    for section in args.sections:
        before = tree_cpu(t.proc.pid) if t.proc else 0.0
        port = t.port_for(section)
        if section == "term":
            if t.term_port is None:
                continue
            res, cpu[section] = measure_term(t, args)
            results.update(res)
            shown_term = {k: round(x, 3) if isinstance(x, float) else x for k, x in res.items()}
            log(f"  {t.name} term: {json.dumps(shown_term)}")
            continue
        if section in ("calls", "quic"):
            continue  # once: calls after the rounds (render), quic on its own paths
        if section in router_cpu.SECTIONS:
            res = router_cpu.run_section(section, t.port, t.proc.pid if t.proc else None, args)
        elif section == "conn":
            res = measure_conn(port, args.clients, args.duration)
        elif section == "ttfb":
            res = measure_ttfb(port, args.rate, args.ttfb_count)
        else:
            streams = 1 if section == "bulk1" else 8
            raw = measure_bulk(port, streams, size1 // streams)
            res = {f"{section}_{k.removeprefix('bulk_')}": v for k, v in raw.items()}
        results.update(res)
        shown = {
            k: round(v, 3) if isinstance(v, float) else v
            for k, v in res.items()
            if k != "ttfb_samples"
        }
        if t.proc:
            cpu[section] = tree_cpu(t.proc.pid) - before
            shown["proxy_cpu_s"] = round(cpu[section], 3)
        log(f"  {t.name} {section}: {json.dumps(shown)}")
    return results, cpu


def median_merge(rounds: list[dict[str, object]]) -> dict[str, object]:
    """Per key: the median over rounds for numbers (errors: the sum), else the last value."""
    merged: dict[str, object] = {}
    for key in {k for r in rounds for k in r}:
        values = [r[key] for r in rounds if key in r]
        if key == "ttfb_samples":  # latency percentiles come from the pooled samples
            pooled = [x for v in values if isinstance(v, list) for x in v]
            merged.update(ttfb_stats(pooled))
            continue
        if key in ("ttfb_p50_ms", "ttfb_p99_ms", "ttfb_n"):
            continue
        if all(isinstance(v, (int, float)) for v in values):
            nums = [float(v) for v in values]  # type: ignore[arg-type]
            if key.endswith(("errors", "late_starts")):
                merged[key] = int(sum(nums))
            elif key.endswith(("_ok", "_streams", "_n")):
                merged[key] = int(sum(nums))  # counts add up over rounds
            else:
                merged[key] = statistics.median(nums)
        else:
            merged[key] = values[-1]
    return merged


def start_target(
    t: Target, procs: Processes, tmp: Path, tls_port: int, bulk_port: int, args: argparse.Namespace
) -> None:
    name, port = t.name, t.port
    term = "term" in args.sections and name in TERM_TARGETS
    t.term_port = free_port() if term else None
    if name == "direct":
        t.port, t.bulk_port = tls_port, bulk_port
        t.term_port = tls_port if term else None
    elif name in ("haproxy", "haproxy-splice"):
        t.proc = start_haproxy(
            procs,
            tmp,
            port,
            tls_port,
            bulk_port,
            args.peer_threads,
            name == "haproxy-splice",
            (t.term_port, args.term_certs, args.plain_port) if t.term_port else None,
        )
    elif name == "nginx":
        t.proc = start_nginx(
            procs,
            tmp,
            port,
            tls_port,
            bulk_port,
            args.peer_threads,
            (t.term_port, args.term_certs, args.plain_port) if t.term_port else None,
        )
    elif name == "sniproxy":
        t.proc = start_sniproxy(procs, tmp, port, tls_port, bulk_port)
    else:
        workers = int(name.removeprefix("ours").removesuffix("-nolog"))
        extra = (
            [*args.ours_arg, "--no-connection-log"] if name.endswith("-nolog") else args.ours_arg
        )
        t.proc = start_ours(
            procs,
            tmp,
            port,
            tls_port,
            bulk_port,
            workers,
            extra,
            (args.term_certs, args.plain_port) if t.term_port else None,
        )
        t.term_port = port if t.term_port else None


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--bulk-backend":
        bulk_backend_main(int(sys.argv[2]), sys.argv[3])
        return 0
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if not shutil.which("nginx"):
        log("nginx is required for the TLS backend: apt-get install nginx libnginx-mod-stream")
        return 1
    needs = {
        "haproxy": "haproxy",
        "haproxy-splice": "haproxy",
        "nginx": "nginx",
        "sniproxy": "sniproxy",
    }
    missing = [t for t in args.targets if t in needs and not shutil.which(needs[t])]
    if missing:
        log(f"not installed, skipped: {', '.join(missing)}")
        args.targets = [t for t in args.targets if t not in missing]

    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="sniinspect-bench-"))
    targets = {name: Target(name, 0) for name in args.targets}
    rounds: dict[str, list[tuple[dict[str, object], dict[str, float]]]] = {
        n: [] for n in args.targets
    }
    command = " ".join(["python benchmarks/router.py", *(sys.argv[1:] if argv is None else argv)])
    env = environment()
    try:
        with sigterm_as_interrupt():
            key, cert = make_cert(tmp)
            if "curl1" in args.sections or "curl8" in args.sections:
                router_cpu.bulk_file(tmp / "big.bin", args.curl_mb)
            tls_port, bulk_port = free_port(), free_port()
            args.plain_port = free_port()
            args.term_certs = make_term_certs(tmp)
            start_tls_backend(procs, tmp, tls_port, key, cert, args.plain_port)
            start_bulk_backend(procs, tmp, bulk_port)
            log(f"backends: TLS nginx on {tls_port}, bulk on {bulk_port}; temp dir {tmp}")
            # Rounds interleave the targets so drift on a shared machine hits all of them alike.
            for round_no in range(1, args.rounds + 1):
                log(f"round {round_no}/{args.rounds}")
                for name, t in targets.items():
                    if t.note:
                        continue
                    t.port, t.proc = free_port(), None
                    try:
                        start_target(t, procs, tmp, tls_port, bulk_port, args)
                    except (RuntimeError, OSError) as exc:
                        log(f"{name}: could not start: {exc}")
                        t.note = f"not run: {exc}"[:120]
                        continue
                    if t.proc is not None:
                        settle(t.proc.pid)
                    profiler = None
                    if args.profile and t.proc and name.startswith("ours"):
                        profiler = start_profiler(args.profile, name, round_no, t.proc.pid, log)
                    try:
                        rounds[name].append(run_sections(t, args, log))
                        if t.proc:
                            rss = tree_peak_rss_mib(t.proc.pid)
                            t.peak_rss_mib = max(t.peak_rss_mib or 0.0, rss)
                    finally:
                        if profiler is not None:
                            stop_profiler(profiler)
                        if t.proc is not None:
                            procs.stop(t.proc)
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        return 130
    finally:
        procs.stop_all()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for name, t in targets.items():
        if rounds[name]:
            t.results = median_merge([r for r, _ in rounds[name]])
            cpu_rounds: list[dict[str, object]] = [dict(c) for _, c in rounds[name]]
            t.cpu = {k: float(v) for k, v in median_merge(cpu_rounds).items()}  # type: ignore[arg-type]
            t.results["rounds"] = len(rounds[name])
            t.per_round = [r for r, _ in rounds[name]]
    table = render(list(targets.values()), args, command, env)
    if "quic" in args.sections:
        # QUIC has its own paths (direct, nginx's UDP proxy, ours) and HTTP/3 load; the
        # same run, after the TCP rounds so neither load disturbs the other.
        log("quic: HTTP/3 direct, through nginx's UDP proxy and through ours")
        try:
            quic_table = quic_bench.run(args)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            quic_table = f"QUIC section not run: {exc}"
        table += "\n\n## QUIC passthrough (`benchmarks/quic.py`)\n\n" + quic_table + "\n"
    print(table)
    if not args.no_write:
        args.output.write_text(table)
        log(f"written to {args.output}")
    return 0


def start_profiler(
    directory: Path, name: str, round_no: int, pid: int, log: Callable[[str], None]
) -> subprocess.Popen[bytes] | None:
    if not shutil.which("py-spy"):
        log("py-spy not installed (pip install py-spy): no profile")
        return None
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name}-round{round_no}.collapsed.txt"
    log(f"  profiling {name} into {out}")
    return subprocess.Popen(
        [
            "py-spy",
            "record",
            "--subprocesses",
            "--nonblocking",
            "--rate",
            "400",
            "--format",
            "raw",
            "--pid",
            str(pid),
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    sys.exit(main())
