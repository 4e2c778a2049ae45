"""The router end to end, with real TLS on loopback: Python ssl, openssl s_client and curl
clients; Python ssl backends that say who answered; raw backends that check bytes.

The router runs in a thread with its own event loop (`RouterThread`); every server and
client here is closed by the fixture or test that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import self_signed_cert

from sniinspect.route.config import build_config
from sniinspect.route.proxyproto import ProxyHeaderParser, ProxyInfo, build_v1, build_v2
from sniinspect.router import Router, alert_record

HOST = "127.0.0.1"
TIMEOUT = 10.0  # a bound on any one wait in these tests, never an expectation

# ---------------------------------------------------------------------- certificates


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed P-256 certificate for *.example.com, made once per session."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("cert")
    crt, key = self_signed_cert(folder, "test", "*.example.com", "example.com")
    return str(crt), str(key)


# ---------------------------------------------------------------------- servers


class Server:
    """A threaded stream server; ``handler(conn)`` runs in its own thread per connection."""

    def __init__(
        self,
        handler: Callable[[socket.socket], None],
        family: int = socket.AF_INET,
        address: Any = (HOST, 0),
        backlog: int = 128,
    ) -> None:
        self.handler = handler
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family != socket.AF_UNIX:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)
        self.sock.listen(backlog)
        self.sock.settimeout(0.1)
        self.address = self.sock.getsockname()
        self.accepted = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.address[1])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.settimeout(TIMEOUT)
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)


def tls_backend(name: str, cert: tuple[str, str], **kwargs: Any) -> Server:
    """A TLS server that answers every chunk with ``<name>:<chunk>`` (HTTP: body <name>),
    and closes after a chunk that ends a line."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)

    def handler(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            while True:
                data = tls.recv(65536)
                if not data:
                    return
                if data.startswith(b"GET "):
                    body = name.encode()
                    tls.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close"
                        b"\r\n\r\n%s" % (len(body), body)
                    )
                    return
                tls.sendall(name.encode() + b":" + data)
                if data.endswith(b"\n"):  # a whole line ends the conversation (s_client)
                    return

    return Server(handler, **kwargs)


class RawBackend(Server):
    """A plain TCP server that keeps what it received and answers ``<name>`` after ``expect``
    bytes (or at EOF); optionally parses a PROXY header first."""

    def __init__(self, name: str, expect: int = 0, proxy: bool = False, **kwargs: Any) -> None:
        self.name = name
        self.expect = expect
        self.proxy = proxy
        self.received: list[bytes] = []
        self.proxy_infos: list[ProxyInfo] = []
        super().__init__(self._handle, **kwargs)

    def _handle(self, conn: socket.socket) -> None:
        buf = bytearray()
        info = None
        parser = ProxyHeaderParser() if self.proxy else None
        answered = False
        while True:
            data = conn.recv(65536)
            if parser is not None and info is None:
                info = parser.feed(data)
                if info is None:
                    continue
                self.proxy_infos.append(info)
                data = parser.remainder
            if not data:
                break
            buf += data
            if self.expect and len(buf) >= self.expect and not answered:
                conn.sendall(self.name.encode())
                answered = True
        self.received.append(bytes(buf))
        if not answered:
            conn.sendall(self.name.encode())


# ---------------------------------------------------------------------- the router


class RouterThread:
    """A Router on its own event loop in a thread; ``logs`` holds its connection lines."""

    def __init__(self, config: dict[str, Any], uvloop: bool = False) -> None:
        self.logs: list[dict[str, Any]] = []
        self.stream = io.StringIO()
        if uvloop:
            _uvloop = pytest.importorskip("uvloop")
            self.loop = _uvloop.new_event_loop()
        else:
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.router = Router(build_config(config), on_log=self.logs.append, log_stream=self.stream)
        self.run(self.router.start())

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def wrapper() -> Any:
            return fn()

        return self.run(wrapper())

    @property
    def port(self) -> int:
        return self.router.addresses[0][1]

    def reload(self, config: dict[str, Any]) -> None:
        cfg = build_config(config)
        self.call(lambda: self.router.reload(cfg))

    def wait_log(self, count: int = 1, timeout: float = TIMEOUT) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.logs) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.logs

    def stop(self, drain: float = 0) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self.run(self.router.stop(drain))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def make_router() -> Iterator[Callable[..., RouterThread]]:
    made: list[RouterThread] = []

    def make(config: dict[str, Any], **kwargs: Any) -> RouterThread:
        config = {"listen": [f"{HOST}:0"], **config}
        rt = RouterThread(config, **kwargs)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.stop()


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Factory for servers that are all closed after the test."""
    made: list[Server] = []

    def make(kind: Callable[..., Server], *args: Any, **kwargs: Any) -> Server:
        server = kind(*args, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def abc(servers: Callable[..., Server], cert: tuple[str, str]) -> dict[str, Server]:
    """Three TLS backends named A, B and C."""
    return {name: servers(tls_backend, name, cert) for name in "ABC"}


# ---------------------------------------------------------------------- clients


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_request(port: int, sni: str | None, payload: bytes = b"ping", host: str = HOST) -> bytes:
    """Connect through the router with Python ssl, send payload, return the answer."""
    with (
        socket.create_connection((host, port), timeout=TIMEOUT) as sock,
        client_context().wrap_socket(sock, server_hostname=sni) as tls,
    ):
        tls.sendall(payload)
        answer = b""
        while not answer.endswith(payload):
            data = tls.recv(65536)
            if not data:
                break
            answer += data
        return answer


def hello_bytes(sni: str | None, alpn: list[str] | None = None) -> bytes:
    """A real ClientHello (TLS records) from Python's ssl module."""
    ctx = client_context()
    if alpn:
        ctx.set_alpn_protocols(alpn)
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def reframe(record: bytes, parts: int) -> bytes:
    """The same handshake bytes in ``parts`` TLS records (1 byte each if parts == -1)."""
    version = record[1:3]
    body = record[5 : 5 + struct.unpack("!H", record[3:5])[0]]
    if parts == -1:
        pieces = [body[i : i + 1] for i in range(len(body))]
    else:
        size = -(-len(body) // parts)
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"\x16" + version + struct.pack("!H", len(p)) + p for p in pieces)


def pad_hello(record: bytes, extra: int) -> bytes:
    """The hello with a padding extension (RFC 7685) of ``extra`` zero bytes added."""
    hs = bytearray(record[5:])
    pos = 4 + 2 + 32
    pos += 1 + hs[pos]  # session id
    pos += 2 + struct.unpack_from("!H", hs, pos)[0]  # cipher suites
    pos += 1 + hs[pos]  # compression methods
    ext_len = struct.unpack_from("!H", hs, pos)[0]
    hs[pos : pos + 2] = struct.pack("!H", ext_len + 4 + extra)
    hs += struct.pack("!HH", 21, extra) + bytes(extra)
    length = len(hs) - 4
    hs[1:4] = length.to_bytes(3, "big")
    return record[:3] + struct.pack("!H", len(hs)) + bytes(hs)


def raw_exchange(port: int, data: bytes, host: str = HOST, shut: bool = False) -> bytes:
    """Send bytes, optionally half-close, and read until the router closes."""
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        out += data
    return bytes(out)


class BioClient:
    """A TLS client over a plain socket, with a hook on how its first flight is sent."""

    def __init__(self, port: int, sni: str, send_hello: Callable[[socket.socket, bytes], None]):
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context().wrap_bio(self.incoming, self.outgoing, server_hostname=sni)
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.do_handshake()
        send_hello(self.sock, self.outgoing.read())
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during handshake") from None
                self.incoming.write(data)
        self._flush()

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.sock.sendall(pending)

    def request(self, payload: bytes) -> bytes:
        self.tls.write(payload)
        self._flush()
        answer = b""
        while not answer.endswith(payload):
            try:
                answer += self.tls.read(65536)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.incoming.write(data)
        return answer

    def close(self) -> None:
        self.sock.close()


def byte_by_byte(sock: socket.socket, data: bytes) -> None:
    for i in range(len(data)):
        sock.send(data[i : i + 1])
        if i % 64 == 0:
            time.sleep(0.0005)  # let some bytes leave in segments of their own


def route(names: list[str], server: Server, **extra: Any) -> dict[str, Any]:
    return {"names": names, "backends": [f"{HOST}:{server.port}"], **extra}


# ====================================================================== routing


def test_exact_wildcard_regex_precedence_with_python_ssl(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    rt = make_router(
        {
            "route": [
                route(["~.*\\.example\\.com", ".example.net"], abc["C"]),  # regex listed first
                route(["*.example.com"], abc["B"]),
                route(["a.example.com"], abc["A"]),
            ]
        }
    )
    cases = {
        "a.example.com": b"A",
        "A.Example.COM": b"A",
        "x.example.com": b"B",
        "y.x.example.com": b"C",
        "example.net": b"C",
        "deep.er.example.net": b"C",
    }
    for name, who in cases.items():
        assert tls_request(rt.port, name) == who + b":ping", name
    logs = rt.wait_log(len(cases))
    assert [line["outcome"] for line in logs] == ["routed"] * len(cases)
    assert logs[0]["sni"] == "a.example.com" and logs[0]["route"] == "a.example.com"
    assert logs[1]["sni"] == "A.Example.COM"


def test_openssl_s_client_and_curl(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    rt = make_router(
        {"route": [route(["a.example.com"], abc["A"]), route(["*.example.com"], abc["B"])]}
    )
    out = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"{HOST}:{rt.port}",
            "-servername",
            "b.example.com",
            "-quiet",
        ],
        input=b"hello-from-s_client\n",
        capture_output=True,
        timeout=30,
    )
    assert b"B:hello-from-s_client" in out.stdout
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "-k",
            "--max-time",
            "20",
            "--resolve",
            f"a.example.com:{rt.port}:{HOST}",
            f"https://a.example.com:{rt.port}/",
        ],
        capture_output=True,
        timeout=30,
    )
    assert out.stdout == b"A", out.stderr
    logs = rt.wait_log(2)
    assert logs[1]["alpn"] == ["h2", "http/1.1"] and logs[1]["backend"] == f"{HOST}:{abc['A'].port}"


# ====================================================================== no usable name


ALERT_112 = bytes.fromhex("15030100020270")  # fatal unrecognized_name, TLS 1.0 record
ALERT_50 = bytes.fromhex("15030100020232")  # fatal decode_error
ALERT_40 = bytes.fromhex("15030100020228")  # fatal handshake_failure


def test_alert_record_bytes() -> None:
    assert alert_record(112) == ALERT_112
    assert alert_record(112, b"\x16\x03\x03\x00\x10") == bytes.fromhex("15030300020270")
    assert alert_record(50, b"\x16\x03\x07") == bytes.fromhex("15030300020232")
    assert alert_record(40, b"GET / HTTP/1.1") == ALERT_40


@pytest.mark.parametrize("reason", ["unknown_name", "no_sni"])
@pytest.mark.parametrize("action", ["alert", "close", "default"])
def test_unknown_name_and_no_sni_actions(
    make_router: Callable[..., RouterThread],
    abc: dict[str, Server],
    reason: str,
    action: str,
) -> None:
    rt = make_router(
        {
            "route": [route(["a.example.com"], abc["A"])],
            "default": f"{HOST}:{abc['C'].port}",
            "actions": {reason: action},
        }
    )
    sni = "nobody.example.org" if reason == "unknown_name" else None
    if action == "default":
        assert tls_request(rt.port, sni) == b"C:ping"
        outcome = "fallback"
    else:
        hello = hello_bytes(sni)
        assert hello[:3] == b"\x16\x03\x01"  # so the alert record is TLS 1.0 as well
        answer = raw_exchange(rt.port, hello)
        assert answer == (ALERT_112 if action == "alert" else b"")
        outcome = "alerted" if action == "alert" else "closed"
    line = rt.wait_log(1)[0]
    assert (line["outcome"], line["reason"]) == (outcome, reason)
    assert abc["A"].accepted == 0


def test_openssl_s_client_sees_unrecognized_name(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    rt = make_router({"route": [route(["a.example.com"], abc["A"])]})
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"{HOST}:{rt.port}", "-servername", "zzz.invalid"],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    assert b"unrecognized name" in out.stderr + out.stdout


@pytest.mark.parametrize(
    ("action", "expected"), [("close", b""), ("alert", ALERT_50), ("backend", None)]
)
def test_not_tls(
    make_router: Callable[..., RouterThread],
    servers: Callable[..., Server],
    abc: dict[str, Server],
    action: str,
    expected: bytes | None,
) -> None:
    plain = servers(RawBackend, "PLAIN")
    actions = {"not_tls": f"{HOST}:{plain.port}" if action == "backend" else action}
    rt = make_router({"route": [route(["a.example.com"], abc["A"])], "actions": actions})
    request = b"SSH-2.0-OpenSSH_9.2\r\n"
    answer = raw_exchange(rt.port, request, shut=True)
    if expected is None:
        assert answer == b"PLAIN"
        assert plain.received == [request]  # verbatim
    else:
        assert answer == expected
    assert rt.wait_log(1)[0]["reason"] == "not_tls"


def test_plain_http_routed_by_host_header(
    make_router: Callable[..., RouterThread], servers: Callable[..., Server]
) -> None:
    one, two = servers(RawBackend, "ONE"), servers(RawBackend, "TWO")
    rt = make_router(
        {
            "listen": [],
            "listener": [{"address": f"{HOST}:0", "http_host": True}],
            "route": [route(["one.example.com"], one), route(["*.example.com"], two)],
        }
    )
    req = b"GET / HTTP/1.1\r\nUser-Agent: t\r\nhost: One.Example.com:80\r\n\r\n"
    assert raw_exchange(rt.port, req, shut=True) == b"ONE"
    assert one.received[-1] == req
    req2 = b"POST /x HTTP/1.1\r\nHost: z.example.com\r\nContent-Length: 0\r\n\r\n"
    assert raw_exchange(rt.port, req2, shut=True) == b"TWO"
    assert raw_exchange(rt.port, b"GET / HTTP/1.0\r\n\r\n", shut=True) == b""  # no Host
    reasons = [line.get("reason") for line in rt.wait_log(3)]
    assert reasons[-1] == "no_sni"


def test_malformed_hello_gets_decode_error(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    rt = make_router({"route": [route(["a.example.com"], abc["A"])]})
    hello = bytearray(hello_bytes("a.example.com"))
    at = 5 + 4 + 2 + 32
    at += 1 + hello[at]  # past the session id: the cipher_suites length
    hello[at + 1] |= 1  # odd: an inner length that cannot be right
    assert raw_exchange(rt.port, bytes(hello)) == ALERT_50
    assert rt.wait_log(1)[0]["reason"] == "malformed"
    assert abc["A"].accepted == 0


# ====================================================================== peeking


def test_silent_client_is_closed_at_the_timeout_and_others_are_served(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    rt = make_router({"route": [route(["a.example.com"], abc["A"])], "hello_timeout": 0.5})
    with socket.create_connection((HOST, rt.port), timeout=TIMEOUT) as silent:
        for _ in range(5):
            assert tls_request(rt.port, "a.example.com") == b"A:ping"
        assert read_all(silent) == b""  # closed by the router, not by our timeout
    logs = rt.wait_log(6)
    timeouts = [line for line in logs if line.get("reason") == "timeout"]
    assert len(timeouts) == 1 and timeouts[0]["outcome"] == "closed"


@pytest.mark.parametrize("how", ["1-byte segments", "5 records", "1-byte records", "both"])
def test_split_hello_routed_and_handshake_completes(
    make_router: Callable[..., RouterThread], abc: dict[str, Server], how: str
) -> None:
    rt = make_router(
        {"route": [route(["a.example.com"], abc["A"]), route(["b.example.com"], abc["B"])]}
    )

    def send(sock: socket.socket, hello: bytes) -> None:
        if how == "1-byte segments":
            byte_by_byte(sock, hello)
        elif how == "5 records":
            data = reframe(hello, 5)
            assert data.count(b"\x16\x03\x01") >= 5
            sock.sendall(data)
        elif how == "1-byte records":
            sock.sendall(reframe(hello, -1))
        else:
            byte_by_byte(sock, reframe(hello, 7))

    client = BioClient(rt.port, "b.example.com", send)
    try:
        assert client.request(b"split") == b"B:split"
    finally:
        client.close()
    assert rt.wait_log(1)[0]["sni"] == "b.example.com"


def test_3kb_hello_routed_and_replayed_verbatim(
    make_router: Callable[..., RouterThread], servers: Callable[..., Server]
) -> None:
    big = pad_hello(hello_bytes("pq.example.com", ["h2"]), 2600)
    assert 3000 < len(big) < 16384
    raws = {name: servers(RawBackend, name, expect=len(big)) for name in ("PQ", "OTHER")}
    rt = make_router(
        {"route": [route(["pq.example.com"], raws["PQ"]), route(["*.example.com"], raws["OTHER"])]}
    )
    for data in (big, reframe(big, 2)):
        assert raw_exchange(rt.port, data, shut=True) == b"PQ"
        assert raws["PQ"].received[-1] == data
    assert raws["OTHER"].accepted == 0


def test_hello_over_the_size_limit(
    make_router: Callable[..., RouterThread], servers: Callable[..., Server]
) -> None:
    raw = servers(RawBackend, "X")
    rt = make_router({"route": [route(["pq.example.com"], raw)], "max_hello_size": 2048})
    big = pad_hello(hello_bytes("pq.example.com"), 2600)
    assert raw_exchange(rt.port, big) == ALERT_40
    line = rt.wait_log(1)[0]
    assert (line["outcome"], line["reason"]) == ("alerted", "too_large")
    assert raw.accepted == 0


# ====================================================================== relaying


@pytest.mark.parametrize("relay", ["auto", "splice", "copy"])
def test_half_close_passes_through(
    make_router: Callable[..., RouterThread], servers: Callable[..., Server], relay: str
) -> None:
    answer = os.urandom(1 << 20)

    def handler(conn: socket.socket) -> None:
        got = read_all(conn)  # only returns once the client's FIN came through
        conn.sendall(hashlib.sha256(got).digest() + answer)

    backend = servers(Server, handler)
    rt = make_router({"route": [route(["h.example.com"], backend)], "relay": relay})
    request = hello_bytes("h.example.com") + os.urandom(50000)
    reply = raw_exchange(rt.port, request, shut=True)
    assert reply[:32] == hashlib.sha256(request).digest()
    assert reply[32:] == answer


@pytest.mark.parametrize(("relay", "uvloop"), [("auto", True), ("splice", False), ("copy", True)])
def test_100mb_each_way_sha256(
    make_router: Callable[..., RouterThread],
    servers: Callable[..., Server],
    relay: str,
    uvloop: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sniinspect.route.relay

    pipes_opened = []
    open_pipe = sniinspect.route.relay.Direction._open_pipe

    def counting_open_pipe(self: Any) -> None:
        pipes_opened.append(self)
        open_pipe(self)

    monkeypatch.setattr(sniinspect.route.relay.Direction, "_open_pipe", counting_open_pipe)
    size = 100 * 1024 * 1024
    blocks = [os.urandom(1 << 20) for _ in range(4)]
    hello = hello_bytes("bulk.example.com")
    results: dict[str, str] = {}

    def send_bulk(sock: socket.socket, key: str) -> None:
        digest = hashlib.sha256()
        for i in range(size >> 20):
            block = blocks[(i * 7 + len(key)) % 4]
            sock.sendall(block)
            digest.update(block)
        sock.shutdown(socket.SHUT_WR)
        results[key] = digest.hexdigest()

    def recv_hash(sock: socket.socket, key: str, skip: int = 0) -> None:
        digest = hashlib.sha256()
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        total = 0
        while True:
            n = sock.recv_into(buf)
            if not n:
                break
            total += n
            if skip:
                cut = min(skip, n)
                skip -= cut
                digest.update(view[cut:n])
            else:
                digest.update(view[:n])
        results[key] = digest.hexdigest()
        results[key + "_n"] = str(total)

    backend_done = threading.Event()

    def handler(conn: socket.socket) -> None:
        t = threading.Thread(target=send_bulk, args=(conn, "down_sent"))
        t.start()
        try:
            recv_hash(conn, "up_received", skip=len(hello))
        finally:
            t.join()
            backend_done.set()

    backend = servers(Server, handler)
    rt = make_router(
        {"route": [route(["bulk.example.com"], backend)], "relay": relay}, uvloop=uvloop
    )
    with socket.create_connection((HOST, rt.port), timeout=60) as sock:
        sock.sendall(hello)
        t = threading.Thread(target=send_bulk, args=(sock, "up_sent"))
        t.start()
        recv_hash(sock, "down_received")
        t.join()
    assert backend_done.wait(60)
    assert results["up_received"] == results["up_sent"]
    assert results["down_received"] == results["down_sent"]
    assert int(results["down_received_n"]) == size
    line = rt.wait_log(1)[0]
    assert line["bytes_from_client"] == size + len(hello)
    assert line["bytes_to_client"] == size
    # splice pipes: one per direction from the start (splice), none (copy); with auto,
    # each direction splices once bulk data flows, and may move to copy and back as its
    # receiver's pace changes (a new pipe each time): both directions, at least once.
    if relay == "splice":
        assert len(pipes_opened) == 2
    elif relay == "copy":
        assert pipes_opened == []
    else:
        assert len({id(d) for d in pipes_opened}) == 2


def test_auto_relay_keeps_short_exchanges_off_splice(
    make_router: Callable[..., RouterThread],
    abc: dict[str, Server],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sniinspect.route.relay

    pipes_opened = []
    monkeypatch.setattr(
        sniinspect.route.relay.Direction, "_open_pipe", lambda self: pipes_opened.append(self)
    )
    rt = make_router({"route": [route(["a.example.com"], abc["A"])], "relay": "auto"})
    for _ in range(3):
        assert tls_request(rt.port, "a.example.com") == b"A:ping"
    rt.wait_log(3)
    assert pipes_opened == []  # a TLS handshake and a short answer never fill the buffer


def test_idle_timeout_closes_a_quiet_connection(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    rt = make_router(
        {"route": [route(["a.example.com"], abc["A"])], "idle_timeout": 0.5, "hello_timeout": 0.4}
    )
    client = BioClient(rt.port, "a.example.com", lambda s, d: s.sendall(d))
    try:
        assert client.request(b"x") == b"A:x"
        assert read_all(client.sock) == b""  # the router closed it, idle
    finally:
        client.close()
    assert rt.wait_log(1)[0]["error"] == "idle_timeout"


# ====================================================================== backends


def test_round_robin_skips_a_backend_that_refuses(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    dead = socket.socket()
    dead.bind((HOST, 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: connection refused
    rt = make_router(
        {
            "route": [
                {
                    "names": ["rr.example.com"],
                    "backends": [
                        f"{HOST}:{dead_port}",
                        f"{HOST}:{abc['A'].port}",
                        f"{HOST}:{abc['B'].port}",
                    ],
                }
            ]
        }
    )
    answers = [tls_request(rt.port, "rr.example.com") for _ in range(6)]
    assert answers == [b"A:ping", b"B:ping"] * 3
    text = _metrics_text(rt)
    # Tried once, then passed over for a while rather than dialled on every connection.
    labels = f'backend="{HOST}:{dead_port}",error="ECONNREFUSED"'
    assert f"sniinspect_backend_connect_errors_total{{{labels}}} 1.0" in text


def test_connect_timeout_moves_on(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    # A listener whose accept queue is full drops SYNs: connecting to it hangs.
    full = socket.socket()
    full.bind((HOST, 0))
    full.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(full.getsockname())
        fillers.append(s)
    time.sleep(0.1)
    try:
        rt = make_router(
            {
                "connect_timeout": 0.3,
                "route": [
                    {
                        "names": ["t.example.com"],
                        "backends": [f"{HOST}:{full.getsockname()[1]}", f"{HOST}:{abc['A'].port}"],
                    }
                ],
            }
        )
        assert tls_request(rt.port, "t.example.com") == b"A:ping"
        assert "sniinspect_backend_connect_errors_total" in _metrics_text(rt)
    finally:
        for s in fillers:
            s.close()
        full.close()


def test_all_backends_down_is_a_failed_connection(
    make_router: Callable[..., RouterThread],
) -> None:
    dead = socket.socket()
    dead.bind((HOST, 0))
    port = dead.getsockname()[1]
    dead.close()
    rt = make_router({"route": [{"names": ["d.example.com"], "backends": f"{HOST}:{port}"}]})
    assert raw_exchange(rt.port, hello_bytes("d.example.com")) == b""
    line = rt.wait_log(1)[0]
    assert line["outcome"] == "failed" and "ECONNREFUSED" in line["error"]


def test_ipv6_listener_and_ipv6_and_unix_backends(
    make_router: Callable[..., RouterThread],
    servers: Callable[..., Server],
    cert: tuple[str, str],
    tmp_path: Path,
) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        v6 = servers(tls_backend, "V6", cert, family=socket.AF_INET6, address=("::1", 0))
    except OSError:
        pytest.skip("::1 is not available")
    path = str(tmp_path / "b.sock")
    unix = servers(tls_backend, "UNIX", cert, family=socket.AF_UNIX, address=path)
    rt = make_router(
        {
            "listen": ["[::1]:0"],
            "route": [
                {"names": ["v6.example.com"], "backends": f"[::1]:{v6.port}"},
                {"names": ["unix.example.com"], "backends": f"unix:{path}"},
            ],
        }
    )
    assert tls_request(rt.port, "v6.example.com", host="::1") == b"V6:ping"
    assert tls_request(rt.port, "unix.example.com", host="::1") == b"UNIX:ping"
    assert unix.accepted == 1
    assert rt.wait_log(1)[0]["client"].startswith("[::1]:")


# ====================================================================== PROXY protocol


def test_proxy_protocol_v1_and_v2_towards_backends(
    make_router: Callable[..., RouterThread], servers: Callable[..., Server]
) -> None:
    v1 = servers(RawBackend, "V1", proxy=True)
    v2 = servers(RawBackend, "V2", proxy=True)
    rt = make_router(
        {
            "route": [
                route(["one.example.com"], v1, proxy_protocol=1),
                route(["two.example.com"], v2, proxy_protocol=2),
            ]
        }
    )
    for name, backend, version in (("one", v1, 1), ("two", v2, 2)):
        hello = hello_bytes(f"{name}.example.com", ["h2", "http/1.1"])
        with socket.create_connection((HOST, rt.port), timeout=TIMEOUT) as sock:
            sock.sendall(hello)
            sock.shutdown(socket.SHUT_WR)
            local = sock.getsockname()
            assert read_all(sock) == backend.name.encode()
        info = backend.proxy_infos[-1]
        assert (info.version, info.command) == (version, "PROXY")
        assert info.src == (local[0], local[1])
        assert info.dst == (HOST, rt.port)
        assert backend.received[-1] == hello  # the hello follows the header, verbatim
        if version == 2:
            assert info.tlvs[0x02] == b"two.example.com"  # PP2_TYPE_AUTHORITY
            assert info.tlvs[0x01] == b"h2"  # PP2_TYPE_ALPN: the client's first choice


def test_accept_proxy_on_a_listener(
    make_router: Callable[..., RouterThread], servers: Callable[..., Server]
) -> None:
    backend = servers(RawBackend, "BK", proxy=True)
    rt = make_router(
        {
            "listen": [],
            "listener": [{"address": f"{HOST}:0", "accept_proxy": True}],
            "route": [route(["p.example.com"], backend, proxy_protocol=2)],
        }
    )
    hello = hello_bytes("p.example.com")
    for header in (
        build_v1(("203.0.113.7", 5555), ("198.51.100.1", 443)),
        build_v2(("203.0.113.7", 5555), ("198.51.100.1", 443)),
    ):
        # One byte at a time: the header and the hello may share segments any way.
        with socket.create_connection((HOST, rt.port), timeout=TIMEOUT) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            byte_by_byte(sock, header + hello)
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b"BK"
        info = backend.proxy_infos[-1]
        assert info.src == ("203.0.113.7", 5555) and info.dst == ("198.51.100.1", 443)
        assert backend.received[-1] == hello
    # Strict: a bad header, or none, is closed and nothing is dialled.
    for bad in (
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n" + hello,
        hello,
        b"PROXY TCP4 1.2.3.4\r\n",
    ):
        assert raw_exchange(rt.port, bad) == b""
    assert backend.accepted == 2
    logs = rt.wait_log(5)
    assert logs[0]["client"] == "203.0.113.7:5555" and logs[0]["proxied_from"].startswith(HOST)
    assert [line["reason"] for line in logs[2:]] == ["bad_proxy_header"] * 3


# ====================================================================== operations


def test_reload_under_load_drops_nothing(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    base = {"route": [route(["r.example.com"], abc["A"])]}
    rt = make_router(base)
    long_lived = BioClient(rt.port, "r.example.com", lambda s, d: s.sendall(d))
    assert long_lived.request(b"before") == b"A:before"
    stop = threading.Event()
    answers: list[bytes] = []
    errors: list[BaseException] = []

    def hammer() -> None:
        while not stop.is_set():
            try:
                answers.append(tls_request(rt.port, "r.example.com"))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        for i in range(6):
            target = "B" if i % 2 == 0 else "A"
            rt.reload(
                {"listen": [f"{HOST}:{rt.port}"], "route": [route(["r.example.com"], abc[target])]}
            )
            time.sleep(0.1)
        rt.reload({"listen": [f"{HOST}:{rt.port}"], "route": [route(["r.example.com"], abc["C"])]})
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert len(answers) > 20
    assert set(answers) == {b"A:ping", b"B:ping", b"C:ping"}
    assert answers[-1] == b"C:ping"
    assert long_lived.request(b"after") == b"A:after"  # in flight across every reload
    long_lived.close()


def test_stop_drains_connections_in_flight(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    rt = make_router({"route": [route(["a.example.com"], abc["A"])]})
    client = BioClient(rt.port, "a.example.com", lambda s, d: s.sendall(d))
    port = rt.port
    future = asyncio.run_coroutine_threadsafe(rt.router.stop(5), rt.loop)
    time.sleep(0.2)
    assert not future.done()  # waiting for our connection
    with pytest.raises(OSError):
        socket.create_connection((HOST, port), timeout=2).close()
    assert client.request(b"still here") == b"A:still here"
    client.close()
    future.result(10)
    assert rt.router.active_connections == 0


def test_thousand_concurrent_connections(
    make_router: Callable[..., RouterThread], servers: Callable[..., Server]
) -> None:
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n * 10 + 200
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    hello = hello_bytes("many.example.com")

    # An asyncio backend in a thread: 1000 threads would be the slow part otherwise.
    ready = threading.Event()
    state: dict[str, Any] = {"served": 0}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.readexactly(len(hello))
            writer.write(b"OK" if data == hello else b"BAD")
            state["served"] += 1
            await reader.read()  # until the client goes
        finally:
            writer.close()

    def backend_thread() -> None:
        loop = asyncio.new_event_loop()
        state["loop"] = loop
        server = loop.run_until_complete(asyncio.start_server(serve, HOST, 0, backlog=2048))
        state["port"] = server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    bt = threading.Thread(target=backend_thread)
    bt.start()
    ready.wait(10)
    clients: list[socket.socket] = []
    try:
        rt = make_router(
            {
                "route": [{"names": ["many.example.com"], "backends": f"{HOST}:{state['port']}"}],
                "max_pending_per_client": 2 * n,
                "max_pending": 2 * n,
            }
        )
        for _ in range(n):
            s = socket.create_connection((HOST, rt.port), timeout=TIMEOUT)
            s.sendall(hello)
            clients.append(s)
        answers = [s.recv(16) for s in clients]
        assert answers.count(b"OK") == n
        assert rt.call(lambda: rt.router.active_connections) == n  # all open at once
        for s in clients:
            s.close()
        assert len(rt.wait_log(n)) == n  # each closed through to the backend
    finally:
        for s in clients:
            s.close()
        state["loop"].call_soon_threadsafe(state["loop"].stop)
        bt.join(10)
    assert {line["outcome"] for line in rt.logs} == {"routed"}


def test_pending_limits_per_client_and_global(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    rt = make_router(
        {
            "route": [route(["a.example.com"], abc["A"])],
            "max_pending_per_client": 3,
            "max_pending": 100,
        }
    )
    silent = [socket.create_connection((HOST, rt.port), timeout=TIMEOUT) for _ in range(3)]
    try:
        with socket.create_connection((HOST, rt.port), timeout=TIMEOUT) as fourth:
            assert read_all(fourth) == b""  # turned away at once, not at hello_timeout
        line = rt.wait_log(1)[0]
        assert (line["outcome"], line["reason"]) == ("rejected", "client_pending_limit")
    finally:
        for s in silent:
            s.close()
    rt.wait_log(4)

    rt2 = make_router({"route": [route(["a.example.com"], abc["A"])], "max_pending": 2})
    first = socket.create_connection((HOST, rt2.port), timeout=TIMEOUT)
    second = socket.create_connection((HOST, rt2.port), timeout=TIMEOUT)
    try:
        time.sleep(0.1)
        assert tls_request(rt2.port, "a.example.com") == b"A:ping"  # evicts the oldest
        assert read_all(first) == b""
        line = rt2.wait_log(1)[0]
        assert (line["outcome"], line["reason"]) == ("rejected", "pending_limit")
    finally:
        first.close()
        second.close()


def test_max_connections_pauses_accepting(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    rt = make_router({"route": [route(["a.example.com"], abc["A"])], "max_connections": 2})
    held = [BioClient(rt.port, "a.example.com", lambda s, d: s.sendall(d)) for _ in range(2)]
    result: list[bytes] = []
    t = threading.Thread(target=lambda: result.append(tls_request(rt.port, "a.example.com")))
    t.start()
    time.sleep(0.3)
    assert result == []  # waiting in the backlog, not refused
    held[0].close()
    t.join(TIMEOUT)
    assert result == [b"A:ping"]
    held[1].close()


def test_json_log_line_and_metrics(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    rt = make_router({"route": [route(["a.example.com"], abc["A"])]})
    assert tls_request(rt.port, "a.example.com") == b"A:ping"
    raw_exchange(rt.port, hello_bytes("other.example.com"))
    rt.wait_log(2)
    lines = [json.loads(x) for x in rt.stream.getvalue().splitlines()]
    # Lines are written as connections end, which need not be the order they began.
    by_sni = {line["sni"]: line for line in lines}
    first = by_sni["a.example.com"]
    for key in (
        "time",
        "client",
        "listener",
        "sni",
        "tls_versions",
        "ja4",
        "backend",
        "outcome",
        "bytes_from_client",
        "bytes_to_client",
        "hello_ms",
        "duration_ms",
    ):
        assert key in first, key
    assert first["tls_versions"][0] == "TLS 1.3" and first["ja4"].startswith("t13d")
    assert first["bytes_from_client"] > 0 and first["bytes_to_client"] > 0
    assert by_sni["other.example.com"]["reason"] == "unknown_name"
    text = _metrics_text(rt)
    assert 'sniinspect_connections_total{outcome="routed",reason=""} 1.0' in text
    assert 'sniinspect_connections_total{outcome="alerted",reason="unknown_name"} 1.0' in text
    assert "sniinspect_hello_wait_seconds_count 2.0" in text
    assert "sniinspect_active_connections 0.0" in text
    assert 'sniinspect_bytes_total{direction="to_client"}' in text


def _metrics_text(rt: RouterThread) -> str:
    from prometheus_client import generate_latest

    return generate_latest(rt.router.metrics.registry).decode()


def test_odd_server_name_is_never_matched(
    make_router: Callable[..., RouterThread], abc: dict[str, Server]
) -> None:
    # Even a rule that matches every name does not take a name the parser flagged.
    rt = make_router({"route": [route(["~.*"], abc["A"])]})
    hello = hello_bytes("a.example.com").replace(b"a.example.com", b"\xe4.example.com")
    assert raw_exchange(rt.port, hello) == ALERT_112
    line = rt.wait_log(1)[0]
    assert (line["outcome"], line["reason"]) == ("alerted", "unknown_name")
    assert "non-ascii" in line["sni_problems"]
    assert abc["A"].accepted == 0
    assert tls_request(rt.port, "a.example.com.") == b"A:ping"  # a trailing dot is fine


@pytest.mark.parametrize("relay", ["auto", "splice", "copy"])
def test_answer_of_a_backend_that_closes_early_reaches_the_client(
    make_router: Callable[..., RouterThread], servers: Callable[..., Server], relay: str
) -> None:
    # The backend answers and closes while the client is still uploading (HTTP 413 style):
    # its close resets the connection, yet its answer must still reach the client.
    hello = hello_bytes("early.example.com")

    def handler(conn: socket.socket) -> None:
        got = b""
        while len(got) < len(hello):
            got += conn.recv(65536)
        conn.sendall(b"NO: too large")
        # close() with unread bytes makes the kernel send a reset, not a FIN.

    backend = servers(Server, handler)
    rt = make_router({"route": [route(["early.example.com"], backend)], "relay": relay})
    with socket.create_connection((HOST, rt.port), timeout=TIMEOUT) as sock:
        sock.sendall(hello)

        def upload() -> None:
            with contextlib.suppress(OSError):
                for _ in range(200):
                    sock.sendall(bytes(65536))

        t = threading.Thread(target=upload)
        t.start()
        answer = read_all(sock)
        t.join(TIMEOUT)
    assert answer == b"NO: too large"
