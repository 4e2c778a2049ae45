"""A real QUIC peer for the tests and benchmarks: an aioquic HTTP/3 server and client.

    python tests/quic_peer.py serve --port 0 --cert C --key K [--retry] [--name A]
        prints "listening PORT" once bound; answers GET /N with N bytes (default body:
        the server's --name), until killed
    python tests/quic_peer.py get --port P --server-name NAME [--path /] [--v2]
        [--large-hello] [--timeout S] [--local-port L]
        prints one JSON line: status, length, sha256 of the body, and the QUIC version
    python tests/quic_peer.py load --port P --server-name NAME download --conns N --size S
    python tests/quic_peer.py load --port P --server-name NAME handshakes --duration D
        [--concurrency C]
        the benchmark's load: N parallel downloads of S bytes (MB/s), or new connections
        in a closed loop (handshakes/s and handshake times); prints one JSON line

Run as a separate process so that each side has its own event loop and the tests can
kill it; loopback addresses only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import socket
import sys
import time
from typing import Any, cast

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent
from aioquic.quic.packet import QuicProtocolVersion

CHUNK = 1 << 16
# Flow-control windows: aioquic's 1 MiB default throttles bulk transfers on loopback.
FLOW_WINDOW = 16 << 20


class ServerProtocol(QuicConnectionProtocol):
    """Answers every HTTP/3 GET: /N gives N bytes, anything else the server's name."""

    name = b"ok"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if self._http is None:
            self._http = H3Connection(self._quic)
        for h3_event in self._http.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event: H3Event) -> None:
        if not isinstance(event, HeadersReceived) or self._http is None:
            return
        headers = dict(event.headers)
        path = headers.get(b":path", b"/").decode()
        body = self.name
        size = path.lstrip("/")
        if size.isdigit():
            body = _pattern(int(size))
        self._http.send_headers(
            event.stream_id,
            [(b":status", b"200"), (b"content-length", str(len(body)).encode())],
        )
        self._http.send_data(event.stream_id, body, end_stream=True)
        self.transmit()


def _pattern(size: int) -> bytes:
    """``size`` bytes of a fixed, non-repeating-per-block pattern (checked by SHA-256)."""
    block = hashlib.sha256(b"sniinspect").digest() * (CHUNK // 32)
    return (block * (size // len(block) + 1))[:size]


class ClientProtocol(QuicConnectionProtocol):
    """Sends one GET and collects the answer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.done: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._status = 0
        self._body = bytearray()

    def get(self, authority: str, path: str) -> None:
        stream_id = self._quic.get_next_available_stream_id()
        self.http.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
            end_stream=True,
        )
        self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated) and not self.done.done():
            self.done.set_exception(
                ConnectionError(f"closed: error 0x{event.error_code:x} {event.reason_phrase}")
            )
            return
        for h3_event in self.http.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self._status = int(dict(h3_event.headers).get(b":status", b"0"))
            elif isinstance(h3_event, DataReceived):
                self._body += h3_event.data
                if h3_event.stream_ended and not self.done.done():
                    self.done.set_result((self._status, bytes(self._body)))
            if getattr(h3_event, "stream_ended", False) and not self.done.done():
                self.done.set_result((self._status, bytes(self._body)))


async def _serve(args: argparse.Namespace) -> None:
    config = QuicConfiguration(
        is_client=False,
        alpn_protocols=H3_ALPN,
        max_datagram_size=1350,
        max_data=FLOW_WINDOW,
        max_stream_data=FLOW_WINDOW,
    )
    config.load_cert_chain(args.cert, args.key)
    config.supported_versions = [QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2]
    ServerProtocol.name = args.name.encode()
    server = await serve(
        args.host,
        args.port,
        configuration=config,
        create_protocol=ServerProtocol,
        retry=args.retry,
    )
    port = server._transport.get_extra_info("sockname")[1]
    print(f"listening {port}", flush=True)
    await asyncio.Event().wait()


async def fetch(
    port: int,
    server_name: str | None,
    path: str = "/",
    *,
    host: str = "127.0.0.1",
    v2: bool = False,
    large_hello: bool = False,
    timeout: float = 10.0,
    idle_timeout: float = 2.0,
    local_port: int = 0,
) -> dict[str, Any]:
    """One HTTP/3 GET; the status, the body's length and SHA-256, the QUIC version."""
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name=server_name,
        verify_mode=0,  # ssl.CERT_NONE: the tests' certificates are self-signed
        quantum_readiness_test=large_hello,
        idle_timeout=idle_timeout,
        max_data=FLOW_WINDOW,
        max_stream_data=FLOW_WINDOW,
    )
    if v2:
        config.supported_versions = [QuicProtocolVersion.VERSION_2]
    # Not aioquic's connect(): it sends the host as the server name when none is given,
    # and a test needs a hello without SNI.
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", local_port))
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: ClientProtocol(QuicConnection(configuration=config)), sock=sock
    )
    client = cast(ClientProtocol, protocol)
    try:
        client.connect((host, port))
        connect_started = time.perf_counter()
        try:
            await asyncio.wait_for(client.wait_connected(), timeout)
        except ConnectionError:
            if client.done.done() and client.done.exception() is not None:
                raise client.done.exception() from None  # says why: the error code
            raise
        handshake_s = time.perf_counter() - connect_started
        client.get(server_name or host, path)
        status, body = await asyncio.wait_for(client.done, timeout)
        version = client._quic._version
    finally:
        client.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(client.wait_closed(), 1.0)
        transport.close()
    return {
        "status": status,
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "version": version,
        "body": body[:64].decode("latin-1"),
        "handshake_s": handshake_s,
    }


def expected_sha256(size: int) -> str:
    """The SHA-256 of the body the server sends for ``GET /size``."""
    return hashlib.sha256(_pattern(size)).hexdigest()


async def _download_load(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            fetch(args.port, args.server_name, f"/{args.size}", timeout=300, idle_timeout=30)
            for _ in range(args.conns)
        )
    )
    wall = time.perf_counter() - started
    total = sum(r["length"] for r in results)
    good = all(r["sha256"] == expected_sha256(args.size) for r in results)
    return {"bytes": total, "seconds": wall, "mb_s": total / wall / 1e6, "verified": good}


async def _handshake_load(args: argparse.Namespace) -> dict[str, Any]:
    times: list[float] = []
    errors = 0
    deadline = time.perf_counter() + args.duration

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            try:
                result = await fetch(args.port, args.server_name, "/", timeout=10)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                errors += 1
                continue
            times.append(result["handshake_s"])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    wall = time.perf_counter() - started
    times.sort()

    def pct(p: float) -> float:
        return times[min(len(times) - 1, int(p * len(times)))] * 1000 if times else 0.0

    return {
        "connections": len(times),
        "errors": errors,
        "seconds": wall,
        "per_s": len(times) / wall,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--retry", action="store_true")
    s.add_argument("--name", default="ok")
    g = sub.add_parser("get")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--server-name", required=True)
    g.add_argument("--path", default="/")
    g.add_argument("--v2", action="store_true")
    g.add_argument("--large-hello", action="store_true")
    g.add_argument("--timeout", type=float, default=10.0)
    g.add_argument("--local-port", type=int, default=0)
    ld = sub.add_parser("load")
    ld.add_argument("--host", default="127.0.0.1")
    ld.add_argument("--port", type=int, required=True)
    ld.add_argument("--server-name", required=True)
    modes = ld.add_subparsers(dest="mode", required=True)
    dl = modes.add_parser("download")
    dl.add_argument("--conns", type=int, default=1)
    dl.add_argument("--size", type=int, default=100 << 20)
    hs = modes.add_parser("handshakes")
    hs.add_argument("--duration", type=float, default=5.0)
    hs.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args))
        return 0
    if args.command == "load":
        load = _download_load if args.mode == "download" else _handshake_load
        print(json.dumps(asyncio.run(load(args))), flush=True)
        return 0
    try:
        result = asyncio.run(
            fetch(
                args.port,
                args.server_name,
                args.path,
                host=args.host,
                v2=args.v2,
                large_hello=args.large_hello,
                timeout=args.timeout,
                local_port=args.local_port,
            )
        )
    except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
        print(json.dumps({"error": str(exc) or type(exc).__name__}), flush=True)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
