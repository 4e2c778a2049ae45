"""The router's fast path (`sniinspect.route.fastpath`) on both event loops, its name
check, its template log lines against the general path's, and the log flush at stop.

Everything else about routing is in test_router.py, whose tests run through the fast
path wherever it applies.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
import threading
from typing import Any

import pytest
from test_router import (  # noqa: F401 - fixtures used by name
    HOST,
    TIMEOUT,
    RawBackend,
    RouterThread,
    hello_bytes,
    raw_exchange,
    read_all,
    reframe,
    route,
    servers,
)

from sniinspect.route.config import build_config
from sniinspect.route.connection import alert_record
from sniinspect.route.fastlog import LogBuffer
from sniinspect.route.fastpath import HAVE_FAST_PATH, FastConn
from sniinspect.route.hellopeek import hello_shape, routing_name
from sniinspect.route.observe import ConnectionLogWriter, Metrics
from sniinspect.route.server import Router

pytestmark = pytest.mark.skipif(not HAVE_FAST_PATH, reason="the fast path needs epoll")
LOOPS = ["asyncio", "uvloop"]


def test_routing_name_takes_only_the_plain_case() -> None:
    hello = hello_bytes("a.example.com")
    assert routing_name(hello) == "a.example.com"
    assert routing_name(hello_bytes("A.Example.COM")) == "A.Example.COM"
    for cut in (1, 5, 9, 60, len(hello) - 1):
        assert routing_name(hello[:cut]) == ""  # the record is not all here yet
    assert routing_name(hello + b"more") == "a.example.com"  # bytes after the hello
    assert routing_name(hello_bytes("a.example.com.")) is None  # trailing dot
    assert routing_name(hello_bytes(None)) is None
    odd = hello.replace(b"a.example.com", b"\xe4.example.com")
    assert routing_name(odd) is None
    assert routing_name(reframe(hello, 2)) is None  # several records: general path
    assert routing_name(b"GET / HTTP/1.1\r\n\r\n") is None
    broken = bytearray(hello)
    broken[-1 - 4 : -1] = b"\xff\xff\xff\xff"  # an extension header past the end
    assert routing_name(bytes(broken)) in (None, "a.example.com")


def test_hello_shape_ignores_per_connection_bytes() -> None:
    a, b = hello_bytes("a.example.com"), hello_bytes("b.example.com")
    assert a != b
    assert hello_shape(a) == hello_shape(b) is not None
    assert hello_shape(a) != hello_shape(hello_bytes("a.example.com", alpn=["h2"]))


@pytest.mark.parametrize("loop", LOOPS)
def test_fast_path_routes_replays_and_logs_on_both_loops(loop: str, servers: Any) -> None:  # noqa: F811
    backend = servers(RawBackend, "FAST")
    rt = RouterThread(
        {"listen": [f"{HOST}:0"], "route": [route(["f.example.com"], backend)]},
        uvloop=loop == "uvloop",
    )
    try:
        hellos = [hello_bytes("f.example.com", alpn=["h2"]) for _ in range(5)]
        for hello in hellos:
            assert raw_exchange(rt.port, hello, shut=True) == b"FAST"
        logs = rt.wait_log(5)
        assert backend.received == hellos  # verbatim
        assert rt.call(lambda: rt.router.fast_connections) == 5
        assert {line["outcome"] for line in logs} == {"routed"}
        assert all(line["ja4"].startswith("t13d") and line["alpn"] == ["h2"] for line in logs)
        lines = [json.loads(x) for x in rt.stream.getvalue().splitlines()]
        assert lines == logs  # the stream has each line the callback saw
        # A name the table does not know goes to the general path: today's alert.
        other = hello_bytes("x.example.com")
        assert raw_exchange(rt.port, other) == alert_record(112, other)
        assert rt.wait_log(6)[5]["reason"] == "unknown_name"
        assert rt.call(lambda: rt.router.active_connections) == 0
    finally:
        rt.stop()


@pytest.mark.parametrize("loop", LOOPS)
def test_bulk_moves_to_the_splice_relay_on_both_loops(loop: str, servers: Any) -> None:  # noqa: F811
    payload = bytes(range(256)) * 8192  # 2 MiB
    hello = hello_bytes("bulk.example.com")

    def handler(conn: socket.socket) -> None:
        got = b""
        while len(got) < len(hello) + len(payload):
            data = conn.recv(1 << 16)
            if not data:
                break
            got += data
        conn.sendall(hashlib.sha256(got[len(hello) :]).digest() + payload)

    from test_router import Server

    backend = servers(Server, handler)
    rt = RouterThread(
        {"listen": [f"{HOST}:0"], "route": [route(["bulk.example.com"], backend)]},
        uvloop=loop == "uvloop",
    )
    try:
        with socket.create_connection((HOST, rt.port), timeout=TIMEOUT) as sock:
            sender = threading.Thread(target=lambda: sock.sendall(hello + payload))
            sender.start()
            answer = read_all(sock)
            sender.join(TIMEOUT)
        assert answer[:32] == hashlib.sha256(payload).digest()
        assert answer[32:] == payload
        line = rt.wait_log(1)[0]
        assert line["outcome"] == "routed"
        assert line["bytes_to_client"] == len(answer)
        assert line["bytes_from_client"] == len(hello) + len(payload)
    finally:
        rt.stop()


def test_template_line_equals_the_general_lines_fields() -> None:
    loop = asyncio.new_event_loop()
    try:
        metrics = Metrics()
        stream = io.StringIO()
        writer = ConnectionLogWriter(metrics, None, stream)
        buf = LogBuffer(loop, writer, metrics, worker=3)

        class Listener:
            label = "127.0.0.1:443"

        conn = FastConn(socket.socket(), ("127.0.0.1", 5555), Listener(), 100.0)
        conn.sock.close()
        conn.data = hello_bytes("t.example.com", alpn=["h2", "http/1.1"])
        conn.name = "t.example.com"
        conn.hello_at, conn.end, conn.connect_s = 100.001, 100.25, 0.0002
        conn.route = build_config(
            {
                "listen": ["127.0.0.1:0"],
                "route": [{"names": ["t.example.com"], "backends": "1.2.3.4:5"}],
            }
        ).table.routes[0]
        conn.backend, conn.outcome, conn.up, conn.down = "1.2.3.4:5", "routed", 517, 4000
        text = buf._fast_line(conn, 1_700_000_000.0)
        assert text.endswith("\n")
        line = json.loads(text)
        general = buf._fast_dict(conn)
        line.pop("time"), general.pop("time")
        assert line == general
        assert list(line) == list(general)  # the same order of keys too
    finally:
        loop.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_lines_are_flushed_at_stop(loop: str, servers: Any) -> None:  # noqa: F811
    backend = servers(RawBackend, "S")
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        ev = uvloop.new_event_loop()
    else:
        ev = asyncio.new_event_loop()
    stream = io.StringIO()
    config = build_config({"listen": [f"{HOST}:0"], "route": [route(["s.example.com"], backend)]})
    router = Router(config, log_stream=stream)

    async def main() -> None:
        await router.start()
        port = router.addresses[0][1]
        answer = await asyncio.to_thread(
            raw_exchange, port, hello_bytes("s.example.com"), HOST, True
        )
        assert answer == b"S"
        while router.active_connections:
            await asyncio.sleep(0.001)
        await router.stop(0)  # before the 50 ms flush timer

    try:
        ev.run_until_complete(main())
    finally:
        ev.close()
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [line["outcome"] for line in lines] == ["routed"]
