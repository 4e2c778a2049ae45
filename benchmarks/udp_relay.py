"""CPU per datagram of five ways to relay UDP in Python, measured alone, side by side.

    python benchmarks/udp_relay.py                 # 3 rounds, 60,000 datagrams each

The QUIC router spends most of its CPU per datagram relayed (``benchmarks/quic.py``);
this isolates that cost from the QUIC endpoints. A paced sender (one 1,200-byte datagram
every ``--gap`` microseconds, the way a Python QUIC server's packets arrive) sends to a
relay process, which forwards every datagram to a sink process. The relay's user and
system CPU per datagram, from ``getrusage`` between its first and its last datagram:

``reader``        ``loop.add_reader`` and a ``recv`` loop until BlockingIOError, then
                  ``sendto`` the client: the router's way on the standard asyncio loop
``transport``     uvloop's datagram transport (its read loop is C), ``sendto``
``connected``     the transport, and ``send`` on a socket connected to the client
``one``           ``loop.add_reader`` and one ``recv`` per readiness event, ``sendto``:
                  the router's way with uvloop
``one-connected`` the same, and ``send`` on a socket connected to the client

Rounds run the styles in turn, so drift on a shared machine spreads over all of them.
Loopback only; every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

STYLES = ("reader", "transport", "connected", "one", "one-connected")


def relay(style: str, port: int, client_port: int) -> None:
    """The relay process: forwards what arrives on ``port`` to ``client_port``."""
    import asyncio

    import uvloop

    client = ("127.0.0.1", client_port)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setblocking(False)
    if style.endswith("connected"):
        out.connect(client)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", port))
    loop = uvloop.new_event_loop()
    count = 0
    start: resource.struct_rusage | None = None
    sendto, send = out.sendto, out.send

    def first() -> None:
        nonlocal start
        if start is None:
            start = resource.getrusage(resource.RUSAGE_SELF)

    if style == "reader":
        recv = sock.recv

        def readable() -> None:
            nonlocal count
            first()
            batch = []
            for _ in range(64):
                try:
                    batch.append(recv(65535))
                except (BlockingIOError, InterruptedError):
                    break
            count += len(batch)
            for data in batch:
                sendto(data, client)

        loop.add_reader(sock.fileno(), readable)
    elif style.startswith("one"):
        recv = sock.recv
        conn = style == "one-connected"

        def read_one() -> None:
            nonlocal count
            first()
            try:
                data = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            count += 1
            if conn:
                send(data)
            else:
                sendto(data, client)

        loop.add_reader(sock.fileno(), read_one)
    else:

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                nonlocal count
                first()
                count += 1
                if style == "connected":
                    send(data)
                else:
                    sendto(data, client)

        loop.run_until_complete(loop.create_datagram_endpoint(Protocol, sock=sock))

    def stop() -> None:
        end = resource.getrusage(resource.RUSAGE_SELF)
        user = end.ru_utime - (start.ru_utime if start else end.ru_utime)
        system = end.ru_stime - (start.ru_stime if start else end.ru_stime)
        print(f"{count} {user} {system}", flush=True)
        loop.stop()

    loop.add_signal_handler(signal.SIGTERM, stop)
    print("ready", flush=True)
    loop.run_forever()


def sink(port: int) -> None:
    """The client: reads and drops, so that the relay's sends find room."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", port))
    print("ready", flush=True)
    while True:
        sock.recv(65535)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{args[0]} did not start")
    return proc


def one_round(style: str, datagrams: int, gap_us: float) -> tuple[float, float]:
    """(user, system) microseconds of relay CPU per datagram for one run of ``style``."""
    relay_port, sink_port = _free_udp_port(), _free_udp_port()
    procs = []
    try:
        procs.append(_start("--sink", str(sink_port)))
        relay_proc = _start("--relay", style, str(relay_port), str(sink_port))
        procs.append(relay_proc)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        payload = b"\x41" + os.urandom(1199)  # a QUIC short-header packet's first byte
        dest = ("127.0.0.1", relay_port)
        clock = time.perf_counter
        due, step = clock(), gap_us / 1e6
        for _ in range(datagrams):
            sender.sendto(payload, dest)
            due += step
            while clock() < due:  # paced: a sleep is far coarser than the gap
                pass
        sender.close()
        time.sleep(0.3)
        relay_proc.send_signal(signal.SIGTERM)
        out, _ = relay_proc.communicate(timeout=10)
        count, user, system = out.split()
        n = max(int(count), 1)
        return float(user) / n * 1e6, float(system) / n * 1e6
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--relay":
        relay(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--sink":
        sink(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--datagrams", type=int, default=60_000)
    parser.add_argument("--gap", type=float, default=40.0, help="microseconds between sends")
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float]]] = {s: [] for s in STYLES}
    for _ in range(args.rounds):
        for style in STYLES:
            runs[style].append(one_round(style, args.datagrams, args.gap))
    print(
        f"| relay ({args.datagrams:,} datagrams of 1,200 bytes, {args.gap:g} us apart) "
        "| user us | system us | total us (median) | all runs (total us) | x reader |"
    )
    print("|---|---:|---:|---:|---|---:|")
    base = statistics.median(u + s for u, s in runs["reader"])
    for style in STYLES:
        totals = [u + s for u, s in runs[style]]
        med = statistics.median(totals)
        user = statistics.median(u for u, _ in runs[style])
        system = statistics.median(s for _, s in runs[style])
        all_runs = ", ".join(f"{t:.1f}" for t in totals)
        print(
            f"| {style} | {user:.1f} | {system:.1f} | {med:.1f} | {all_runs} | {med / base:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
