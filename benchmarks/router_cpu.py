"""CPU per connection, Python calls per connection and TLS downloads through the router.

The sections of ``benchmarks/router.py`` that issue 12 asked for, kept here so that file stays
readable; ``router.py`` calls them (``--sections cpu,curl1,curl8,calls``):

``cpu``     h2load (``--h1``, ``Connection: close``: one request per connection, full TLS 1.3
            handshakes, no resumption) against the TLS-terminating nginx backend through each
            proxy; user and system CPU of the proxy's process tree from ``/proc/PID/stat``,
            divided by the connections made.
``curl1``   ``curl`` downloading one large file over TLS from an nginx backend through the
``curl8``   proxy, one download and 8 in parallel (byte ranges of the same file); MB/s from
            the first byte sent to the last received, and the proxy's CPU per GB.
``calls``   Python-level calls per connection: cProfile around an in-process ``Router``
            (standard asyncio loop and uvloop, connection log on and off) while a client
            process makes a fixed number of connections through it to a raw backend; with
            ``--calls-before DIR`` the same script also runs on another source tree (e.g. a
            ``git worktree`` of the previous revision) for the before/after columns.

Run on its own (only the sections here, HAProxy, nginx, sniproxy and ours side by side)::

    python benchmarks/router_cpu.py --calls-before /tmp/before
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
TLS_NAME = "bench.example"


def tree_cpu_split(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every live process in the tree of ``root``, plus the
    reaped children of the root (what ``router.tree_cpu`` adds up, split in two)."""
    from router import _stat, process_tree

    user = system = 0
    for pid in process_tree(root):
        st = _stat(pid)
        if st is None:
            continue
        user += int(st[11])
        system += int(st[12])
        if pid == root:
            user += int(st[13])
            system += int(st[14])
    return user / CLK_TCK, system / CLK_TCK


def bulk_file(path: Path, size_mb: int) -> None:
    """Write ``size_mb`` MiB of random bytes to ``path`` (the TLS backend's /big.bin)."""
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))


def measure_h2load(port: int, conns: int, clients: int) -> dict[str, object]:
    """``conns`` connections of one request each through ``port`` by h2load."""
    argv = [
        "h2load",
        "--h1",
        "-n",
        str(conns),
        "-c",
        str(clients),
        "-H",
        "Connection: close",
        f"--connect-to={HOST}:{port}",
        f"https://{TLS_NAME}/",
    ]
    start = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded", p.stdout)
    ok = int(m.group(4)) if m else 0
    return {"h2_conns": ok, "h2_errors": conns - ok, "h2_conn_s": ok / wall if wall else 0.0}


def measure_curl(port: int, streams: int, size: int) -> dict[str, object]:
    """``streams`` curl downloads in parallel of ``size // streams`` bytes each (ranges of
    ``/big.bin``), TLS from the nginx backend through ``port``."""
    part = size // streams
    procs = []
    start = time.perf_counter()
    for i in range(streams):
        argv = [
            "curl",
            "-sk",
            "--resolve",
            f"{TLS_NAME}:{port}:{HOST}",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "-r",
            f"{i * part}-{(i + 1) * part - 1}",
            f"https://{TLS_NAME}:{port}/big.bin",
        ]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
    got = 0
    ok = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        n = int(out.strip() or 0)
        got += n
        ok += n == part
    wall = time.perf_counter() - start
    return {"mb_s": got / wall / 1e6, "ok": ok, "streams": streams, "bytes": got}


# ----------------------------------------------------------------------------- calls


CALLS_SCRIPT = textwrap.dedent(
    r"""
    import asyncio, cProfile, json, os, pstats, socket, ssl, sys, time, contextlib
    import multiprocessing as mp

    N, LOOP, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "log"
    WARM = 200

    def hello():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(i, o, server_hostname="bench.example")
        with contextlib.suppress(ssl.SSLWantReadError):
            obj.do_handshake()
        return o.read()

    def backend(sock):
        import threading
        def one(c):
            with c:
                buf = b""
                while len(buf) < 5 or len(buf) < 5 + int.from_bytes(buf[3:5], "big"):
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                c.sendall(b"HTTP/1.0 200 OK\r\n\r\nok\n")
        while True:
            c, _ = sock.accept()
            one(c)

    def client(port, data, n, go, done):
        go.wait()
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(data)
                while s.recv(65536):
                    pass
        done.set()

    def main():
        from sniinspect.route.config import build_config
        from sniinspect.route.server import Router
        bsock = socket.socket()
        bsock.bind(("127.0.0.1", 0))
        bsock.listen(1024)
        bport = bsock.getsockname()[1]
        ctx = mp.get_context("fork")
        bp = ctx.Process(target=backend, args=(bsock,), daemon=True)
        bp.start()
        if LOOP == "uvloop":
            import uvloop
            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        cfg = build_config({"listen": ["127.0.0.1:0"], "connection_log": LOG,
                            "route": [{"names": ["bench.example"],
                                       "backends": [f"127.0.0.1:{bport}"]}]})
        sink = open(os.devnull, "w")
        router = Router(cfg, log_stream=sink if LOG else None)
        loop.run_until_complete(router.start())
        port = router.addresses[0][1]
        data = hello()
        prof = cProfile.Profile()

        async def run(n, profile):
            go, done = ctx.Event(), ctx.Event()
            cp = ctx.Process(target=client, args=(port, data, n, go, done), daemon=True)
            cp.start()
            go.set()
            while not done.is_set():
                await asyncio.sleep(0.01)
            while router.active_connections:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the log writer's flush
            cp.join()

        loop.run_until_complete(run(WARM, False))
        prof.enable()
        loop.run_until_complete(run(N, True))
        prof.disable()
        loop.run_until_complete(router.stop(0))
        bp.kill()
        st = pstats.Stats(prof)
        col = 2 if os.environ.get("BY_TIME") else 1  # by own time, else by calls
        rows = sorted(st.stats.items(), key=lambda kv: -kv[1][col])[:25]
        top = [[f"{k[0].rsplit('/', 1)[-1]}:{k[1]}({k[2]})", v[1] / N, v[2] / N * 1e6]
               for k, v in rows]
        print(json.dumps({"calls": st.total_calls / N, "top": top}))

    main()
    """
)


def python_path_for(tree: Path) -> str:
    """A directory whose ``sniinspect`` and ``clienthello`` are those of source ``tree``."""
    link_dir = Path(tempfile.mkdtemp(prefix="sniinspect-src-"))
    (link_dir / "sniinspect").symlink_to(tree / "cli")
    (link_dir / "clienthello").symlink_to(tree / "clienthello")
    return str(link_dir)


def count_calls(tree: Path, conns: int, loop: str, log: bool) -> dict[str, Any]:
    """Python calls per connection of the router in source ``tree`` (cProfile)."""
    env = {**os.environ, "PYTHONPATH": python_path_for(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [sys.executable, "-c", CALLS_SCRIPT, str(conns), loop, "log" if log else "nolog"]
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, cwd="/")
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1:]}
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def calls_table(before: Path | None, after: Path, conns: int) -> list[str]:
    """Markdown rows: calls per connection before and after, per loop and log setting."""
    lines = [
        f"Python-level calls per connection (cProfile, {conns:,} connections through an "
        "in-process `Router`, hello + 24-byte answer; client and backend in other processes):",
        "",
        "| loop | connection log | before | after |",
        "|---|---|---:|---:|",
    ]
    loops = ["asyncio"]
    try:
        import uvloop  # noqa: F401

        loops.append("uvloop")
    except ImportError:
        pass
    for loop in loops:
        for log in (True, False):
            row = []
            for tree in (before, after):
                if tree is None:
                    row.append("-")
                    continue
                res = count_calls(tree, conns, loop, log)
                row.append(f"{res['calls']:.0f}" if "calls" in res else f"error {res['error']}")
            lines.append(f"| {loop} | {'on' if log else 'off'} | {row[0]} | {row[1]} |")
    return lines


# ----------------------------------------------------------------------------- router.py hooks

SECTIONS = ("cpu", "curl1", "curl8")


def run_section(section: str, port: int, proc_pid: int | None, args: Any) -> dict[str, object]:
    """One of this module's sections against a started target (called by router.py)."""
    if section == "cpu":
        before = tree_cpu_split(proc_pid) if proc_pid else (0.0, 0.0)
        res = measure_h2load(port, args.cpu_conns, args.h2load_clients)
        if proc_pid and res["h2_conns"]:
            after = tree_cpu_split(proc_pid)
            n = float(res["h2_conns"])  # type: ignore[arg-type]
            res["cpu_user_us"] = (after[0] - before[0]) / n * 1e6
            res["cpu_sys_us"] = (after[1] - before[1]) / n * 1e6
        return res
    streams = 1 if section == "curl1" else 8
    raw = measure_curl(port, streams, args.curl_mb << 20)
    return {f"{section}_{k}": v for k, v in raw.items()}


def _per_round_ratios(t: Any, hap: Any, key: str) -> str:
    ratios = []
    for mine, theirs in zip(t.per_round, hap.per_round if hap else [], strict=False):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            ratios.append(f"{a / b:.2f}")
    return " / ".join(ratios) or "-"


def render(targets: list[Any], args: Any) -> list[str]:
    """The markdown of this module's sections, for router.py's report."""
    by = {t.name: t for t in targets}
    hap = by.get("haproxy")
    lines: list[str] = []
    if "cpu" in args.sections:
        base = None
        if hap is not None and isinstance(hap.results.get("cpu_user_us"), float):
            base = hap.results["cpu_user_us"] + hap.results["cpu_sys_us"]
        lines += [
            "",
            f"CPU per connection: h2load `--h1 -H 'Connection: close'` (one request per "
            f"connection, full TLS 1.3 handshakes, no resumption), {args.cpu_conns:,} connections "
            f"from {args.h2load_clients} clients per round, through each proxy to the nginx TLS "
            "backend; user and system CPU of the proxy's process tree from /proc/PID/stat "
            "(medians over rounds):",
            "",
            "| target | user µs/conn | sys µs/conn | total µs/conn | x HAProxy | h2load conn/s |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for t in targets:
            user, sys_ = t.results.get("cpu_user_us"), t.results.get("cpu_sys_us")
            if not isinstance(user, float) or not isinstance(sys_, float):
                if "h2_conn_s" in t.results:
                    lines.append(f"| {t.name} | - | - | - | - | {t.results['h2_conn_s']:,.0f} |")
                continue
            total = user + sys_
            x = f"{total / base:.2f}" if base else "-"
            lines.append(
                f"| {t.name} | {user:.0f} | {sys_:.0f} | {total:.0f} | {x} "
                f"| {t.results.get('h2_conn_s', 0):,.0f} |"
            )
    if "curl1" in args.sections or "curl8" in args.sections:
        lines += [
            "",
            f"TLS downloads: `curl` fetching {args.curl_mb} MiB over TLS 1.3 from nginx through "
            "each proxy, one download and 8 in parallel (8 byte ranges of the same file); MB/s "
            "from start to the last byte of the last download, medians over rounds, and the ratio "
            "to HAProxy's in each round:",
            "",
            "| target | MB/s 1 | x HAProxy | x HAProxy per round | MB/s 8 | x HAProxy "
            "| x HAProxy per round | CPU s / GB |",
            "|---|---:|---:|---|---:|---:|---|---:|",
        ]
        for t in targets:
            cells = [t.name]
            for key in ("curl1_mb_s", "curl8_mb_s"):
                value, ref = t.results.get(key), hap.results.get(key) if hap else None
                cells.append(f"{value:,.0f}" if isinstance(value, float) else "-")
                ok = isinstance(value, float) and isinstance(ref, float) and ref
                cells.append(f"{value / ref:.2f}" if ok else "-")  # type: ignore[operator]
                cells.append(_per_round_ratios(t, hap, key))
            gb = (
                sum(
                    float(v)
                    for k in ("curl1_bytes", "curl8_bytes")
                    if isinstance(v := t.results.get(k), (int, float))
                )
                / 1e9
            )
            cpu = t.cpu.get("curl1", 0.0) + t.cpu.get("curl8", 0.0)
            cells.append(f"{cpu / gb:.2f}" if gb and t.proc else "-")
            lines.append("| " + " | ".join(cells) + " |")
    if getattr(args, "calls", 0) and "calls" in args.sections:
        here = Path(__file__).resolve().parent.parent
        lines += ["", *calls_table(args.calls_before, here, args.calls)]
    return lines


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--calls-before", type=Path, default=None)
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args()
    print("\n".join(calls_table(a.calls_before, Path(__file__).resolve().parent.parent, a.calls)))
