"""QUIC passthrough through the router, end to end with real QUIC on loopback.

Backends are aioquic HTTP/3 servers in their own processes (tests/quic_peer.py), each
answering with its own name (or N bytes for ``GET /N``); clients are aioquic clients in
the test's event loop, beside the router's QUIC side (`sniinspect.route.quic.QuicProxy`).
Nothing is terminated at the router: a client that reaches a backend has done its
handshake with that backend.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

aioquic = pytest.importorskip("aioquic", reason="the QUIC tests need aioquic (test extra)")

from helpers import self_signed_cert  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from quic_peer import expected_sha256, fetch  # noqa: E402

import clienthello  # noqa: E402
from clienthello import quic  # noqa: E402
from sniinspect.route.config import RouterConfig, build_config  # noqa: E402
from sniinspect.route.observe import ConnectionLogWriter, Metrics  # noqa: E402
from sniinspect.route.quic import CLOSED_LINGER, QuicProxy  # noqa: E402

PEER = Path(__file__).with_name("quic_peer.py")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("quic"), "localhost", "*.test")


def _start_backend(
    cert: tuple[Path, Path], name: str, *extra: str
) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(PEER), "serve", "--cert", str(cert[0]), "--key", str(cert[1]),
         "--name", name, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening "):
        proc.kill()
        raise RuntimeError(f"backend {name} did not start: {line!r}")
    return proc, int(line.split()[1])


@pytest.fixture(scope="module")
def backends(cert: tuple[Path, Path]) -> Iterator[dict[str, int]]:
    """Backends A, B and R (R sends a Retry first): name -> UDP port on 127.0.0.1."""
    procs: list[subprocess.Popen[str]] = []
    ports: dict[str, int] = {}
    try:
        for name, extra in (("A", ()), ("B", ()), ("R", ("--retry",))):
            proc, port = _start_backend(cert, name, *extra)
            procs.append(proc)
            ports[name] = port
        yield ports
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def _config(backends: dict[str, int], **extra: Any) -> RouterConfig:
    a, b, r = (f"127.0.0.1:{backends[n]}" for n in "ABR")
    data: dict[str, Any] = {
        "listen_quic": ["127.0.0.1:0"],
        "route": [
            {"names": ["a.test"], "backends": [a]},
            {"names": ["*.b.test"], "backends": [b]},
            {"names": ["~^re-[0-9]+\\.test$"], "backends": [b]},
            {"names": ["retry.test"], "backends": [r]},
            {"names": ["tcp-elsewhere.test"], "backends": ["127.0.0.1:9"], "quic_backends": [a]},
        ],
        "default": b,
        "hello_timeout": 2,
        "quic_idle_timeout": 1,  # the clients say 2 s, which wins
        "actions": {"unknown_name": "alert"},
        **extra,
    }
    return build_config(data)


class Harness:
    """A QuicProxy on the running loop, with its log lines and metrics."""

    def __init__(self, config: RouterConfig) -> None:
        self.lines: list[dict[str, Any]] = []
        self.registry = CollectorRegistry()
        writer = ConnectionLogWriter(Metrics(self.registry), on_log=self.lines.append)
        writer.open(True, None)
        self.proxy = QuicProxy(asyncio.get_running_loop(), config, writer, self.registry)
        self.proxy.start()
        self.port = self.proxy.addresses[0][1]

    def metrics(self) -> str:
        return generate_latest(self.registry).decode()

    async def wait_lines(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.lines


def run(
    backends: dict[str, int],
    test: Callable[[Harness], Awaitable[None]],
    loop: str = "asyncio",
    **cfg: Any,
) -> None:
    """Run ``test`` against a QuicProxy on the standard event loop (batches of reads per
    wake-up) or on uvloop's (one read per wake-up: `reads_per_wakeup`)."""

    async def main() -> None:
        h = Harness(_config(backends, **cfg))
        try:
            await test(h)
        finally:
            await h.proxy.stop(0)

    factory = None
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop", reason="uvloop is not installed").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


@pytest.mark.parametrize(
    ("name", "body"),
    [("a.test", "A"), ("x.b.test", "B"), ("re-42.test", "B"), ("tcp-elsewhere.test", "A")],
)
def test_routes_by_name(backends: dict[str, int], name: str, body: str) -> None:
    async def test(h: Harness) -> None:
        got = await fetch(h.port, name)
        assert got["status"] == 200 and got["body"] == body
        await h.proxy.stop(5)
        line = (await h.wait_lines(1))[0]
        assert line["transport"] == "quic" and line["sni"] == name
        assert line["outcome"] == "routed" and line["quic_version"] == "v1"
        assert line["ja4"].startswith("q13d")
        assert line["datagrams_from_client"] >= 2 and line["datagrams_to_client"] >= 2
        assert line["alpn"] == ["h3"]

    run(backends, test)


def test_hello_over_several_initials_and_v2(backends: dict[str, int]) -> None:
    async def test(h: Harness) -> None:
        big = await fetch(h.port, "a.test", large_hello=True)
        assert big["body"] == "A"
        v2 = await fetch(h.port, "x.b.test", v2=True)
        assert v2["body"] == "B" and v2["version"] == 0x6B3343CF
        await h.proxy.stop(5)
        lines = await h.wait_lines(2)
        assert {ln["sni"] for ln in lines} == {"a.test", "x.b.test"}
        assert {ln["quic_version"] for ln in lines} == {"v1", "v2"}

    run(backends, test)


@LOOPS
def test_backend_retry_stays_on_the_same_backend(backends: dict[str, int], loop: str) -> None:
    async def test(h: Harness) -> None:
        got = await fetch(h.port, "retry.test")
        assert got["body"] == "R"
        await h.proxy.stop(5)
        line = (await h.wait_lines(1))[0]
        assert line["retry"] is True and line["outcome"] == "routed"

    run(backends, test, loop)


@LOOPS
def test_download_20mb_and_40_concurrent(backends: dict[str, int], loop: str) -> None:
    size = 20 * 1024 * 1024

    async def test(h: Harness) -> None:
        got = await fetch(h.port, "a.test", f"/{size}", timeout=60)
        assert got["length"] == size and got["sha256"] == expected_sha256(size)
        results = await asyncio.gather(
            *(fetch(h.port, f"c{i}.b.test", "/1000", timeout=30) for i in range(40))
        )
        assert all(r["length"] == 1000 and r["sha256"] == expected_sha256(1000) for r in results)
        assert h.proxy.active_sessions <= 41

    run(backends, test, loop)


def test_unknown_name_gets_connection_close_0x170_at_once(backends: dict[str, int]) -> None:
    async def test(h: Harness) -> None:
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="0x170"):
            await fetch(h.port, "nobody.example", timeout=5)
        assert time.monotonic() - started < 1.0
        line = (await h.wait_lines(1, timeout=5))[0]
        assert line["outcome"] == "alerted" and line["reason"] == "unknown_name"

    run(backends, test)


@LOOPS
def test_backend_not_listening_ends_the_session(backends: dict[str, int], loop: str) -> None:
    # Nothing listens on the backend's UDP port: the kernel answers the held Initial with
    # ICMP port unreachable, which the backend socket reads as ECONNREFUSED.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]

    async def test(h: Harness) -> None:
        with pytest.raises((ConnectionError, asyncio.TimeoutError)):
            await fetch(h.port, "gone.test", timeout=1.5)
        # The client resent its Initial until it gave up: the closed session took the
        # resends (one dial, one line), and ended after lingering.
        lines = await h.wait_lines(1, timeout=CLOSED_LINGER + 3)
        assert [(x["outcome"], x["reason"], x["error"]) for x in lines] == [
            ("failed", "backend_unavailable", "ECONNREFUSED")
        ]
        # The resends swallowed are counted as received.
        assert lines[0]["datagrams_from_client"] >= 2
        assert lines[0]["bytes_from_client"] >= 1200 * lines[0]["datagrams_from_client"]
        assert h.proxy.active_sessions == 0

    run(backends, test, loop, route=[{"names": ["gone.test"], "backends": [f"127.0.0.1:{closed}"]}])


def test_no_sni_goes_to_the_default(backends: dict[str, int]) -> None:
    async def test(h: Harness) -> None:
        got = await fetch(h.port, None)
        assert got["body"] == "B"

    run(backends, test)


def test_garbage_is_dropped_and_the_next_client_served(backends: dict[str, int]) -> None:
    async def test(h: Harness) -> None:
        real = quic.build_initial(
            1, os.urandom(8), os.urandom(8), [quic.crypto_frame(0, b"\x01\x00\x00")]
        )
        junk = [
            b"",
            b"\x00" * 1200,
            os.urandom(1300),
            bytes([0xC0]) + b"\x00\x00\x00\x01" + b"\x08" * 3,  # truncated long header
            real[:600],  # a cut Initial
            real[:-1] + bytes([real[-1] ^ 1]),  # fails authentication
            bytes([0x40]) + os.urandom(40),  # a short header nobody knows
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in junk:
                s.sendto(data, ("127.0.0.1", h.port))
        got = await fetch(h.port, "a.test")
        assert got["body"] == "A"
        assert h.proxy.active_sessions == 1
        text = h.metrics()
        assert "sniinspect_datagrams_dropped_total" in text

    run(backends, test)


class Rebinder(asyncio.DatagramProtocol):
    """A NAT in front of the client: its outside port changes on demand."""

    def __init__(self, router: tuple[str, int]) -> None:
        self.router = router
        self.client: tuple[str, int] | None = None
        self.inside: asyncio.DatagramTransport | None = None
        self.outside: asyncio.DatagramTransport | None = None
        self.ports: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inside = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client = addr
        assert self.outside is not None
        self.outside.sendto(data, self.router)

    async def rebind(self) -> None:
        loop = asyncio.get_running_loop()
        old = self.outside
        inside = self

        class Outside(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if inside.inside is not None and inside.client is not None:
                    inside.inside.sendto(data, inside.client)

        transport, _ = await loop.create_datagram_endpoint(Outside, local_addr=("127.0.0.1", 0))
        self.outside = transport
        self.ports.append(transport.get_extra_info("sockname")[1])
        if old is not None:
            loop.call_later(0.2, old.close)


@LOOPS
def test_client_rebinding_mid_download_completes(backends: dict[str, int], loop: str) -> None:
    size = 8 * 1024 * 1024

    async def test(h: Harness) -> None:
        loop = asyncio.get_running_loop()
        nat = Rebinder(("127.0.0.1", h.port))
        await nat.rebind()
        inside, _ = await loop.create_datagram_endpoint(lambda: nat, local_addr=("127.0.0.1", 0))
        nat_port = inside.get_extra_info("sockname")[1]
        download = asyncio.create_task(fetch(nat_port, "a.test", f"/{size}", timeout=60))
        await asyncio.sleep(0.3)
        await nat.rebind()
        got = await download
        assert got["length"] == size and got["sha256"] == expected_sha256(size)
        inside.close()
        await h.proxy.stop(5)
        line = (await h.wait_lines(1))[0]
        assert line["rebinds"] >= 1
        assert line["client"].endswith(f":{nat.ports[-1]}")

    run(backends, test, loop)


@LOOPS
def test_reload_keeps_sessions_and_routes_new_ones(backends: dict[str, int], loop: str) -> None:
    size = 4 * 1024 * 1024

    async def test(h: Harness) -> None:
        download = asyncio.create_task(fetch(h.port, "a.test", f"/{size}", timeout=60))
        await asyncio.sleep(0.2)
        # a.test now goes to B; the download in flight stays with A.
        swapped = build_config(
            {
                "listen_quic": [f"127.0.0.1:{h.port}"],
                "route": [{"names": ["a.test"], "backends": [f"127.0.0.1:{backends['B']}"]}],
                "default": f"127.0.0.1:{backends['B']}",
            }
        )
        h.proxy.reload(swapped)
        got = await download
        assert got["sha256"] == expected_sha256(size)
        again = await fetch(h.port, "a.test")
        assert again["body"] == "B"

    run(backends, test, loop)


# ---------------------------------------------------------------------- the whole router


def test_tcp_and_quic_listeners_on_one_port_serve_the_same_routes(
    backends: dict[str, int], cert: tuple[Path, Path]
) -> None:
    from sniinspect.route.server import Router

    async def main() -> None:
        # A TLS backend on the TCP port with the same number as backend A's UDP port,
        # so that one route, a.test=127.0.0.1:PORT, serves both transports.
        port = backends["A"]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert[0], cert[1])

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"TCP-A")
            await writer.drain()
            writer.close()

        tls_backend = await asyncio.start_server(answer, "127.0.0.1", port, ssl=ctx)
        shared = _free_port_for_both()
        config = build_config(
            {
                "listen": [f"127.0.0.1:{shared}"],
                "listen_quic": [f"127.0.0.1:{shared}"],
                "route": [{"names": ["a.test"], "backends": [f"127.0.0.1:{port}"]}],
                "quic_idle_timeout": 1,
            }
        )
        lines: list[dict[str, Any]] = []
        router = Router(config, on_log=lines.append)
        await router.start()
        try:
            assert router.quic_addresses == [("127.0.0.1", shared)]
            got = await fetch(shared, "a.test")
            assert got["body"] == "A"
            client_ctx = ssl.create_default_context()
            client_ctx.check_hostname = False
            client_ctx.verify_mode = ssl.CERT_NONE
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", shared, ssl=client_ctx, server_hostname="a.test"
            )
            assert await reader.read() == b"TCP-A"
            writer.close()
        finally:
            await router.stop(5)
            tls_backend.close()
        transports = sorted(str(line.get("transport", "tcp")) for line in lines)
        assert transports == ["quic", "tcp"]

    asyncio.run(main())


def _free_port_for_both() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no port free for both TCP and UDP")


ROUTE = [sys.executable, "-c", "from sniinspect.route.command import route; route()"]


def test_check_config_covers_the_quic_keys(tmp_path: Path) -> None:
    conf = tmp_path / "router.toml"
    conf.write_text(
        'listen_quic = ["127.0.0.1:4433", "[::1]:4433"]\n'
        "quic_idle_timeout = 45\n"
        "[[route]]\n"
        'names = ["a.test"]\n'
        'backends = ["unix:/run/a.sock"]\n'
        "[[route]]\n"
        'names = ["b.test"]\n'
        'backends = ["unix:/run/b.sock"]\n'
        'quic_backends = ["127.0.0.1:4444"]\n'
    )
    out = subprocess.run(
        [*ROUTE, "--config", str(conf), "--check-config"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "2 QUIC listener(s)" in out.stdout
    assert "route 'a.test': only unix backends and no quic_backends" in out.stderr
    assert "b.test" not in out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'listen_quic = ["127.0.0.1:4433"]\n[[route]]\nnames = ["a.test"]\n'
        'backends = ["127.0.0.1:1"]\nquic_backends = ["unix:/run/x.sock"]\n'
    )
    out = subprocess.run(
        [*ROUTE, "--config", str(bad), "--check-config"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "quic_backends" in out.stderr and "Traceback" not in out.stderr


def test_command_with_workers_sighup_and_sigterm(backends: dict[str, int], tmp_path: Path) -> None:
    port = _free_port_for_both()
    log = tmp_path / "router.log"
    conf = tmp_path / "router.toml"
    conf.write_text(
        f'listen_quic = ["127.0.0.1:{port}"]\nquic_idle_timeout = 1\n'
        f'[[route]]\nnames = ["a.test"]\nbackends = ["127.0.0.1:{backends["A"]}"]\n'
    )
    proc = subprocess.Popen(
        [*ROUTE, "--config", str(conf), "--workers", "2", "--log-file", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        size = 6 * 1024 * 1024

        async def main() -> None:
            deadline = time.monotonic() + 20
            while True:  # until the workers listen
                try:
                    got = await fetch(port, "a.test", timeout=2)
                    break
                except (ConnectionError, OSError, asyncio.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert got["body"] == "A"
            for _ in range(6):  # whichever worker the kernel would pick: worker 0 serves
                assert (await fetch(port, "a.test"))["body"] == "A"
            # SIGHUP mid-download: the session stays, a.test then goes to B.
            download = asyncio.create_task(fetch(port, "a.test", f"/{size}", timeout=60))
            await asyncio.sleep(0.2)
            conf.write_text(
                f'listen_quic = ["127.0.0.1:{port}"]\nquic_idle_timeout = 1\n'
                f'[[route]]\nnames = ["a.test"]\nbackends = ["127.0.0.1:{backends["B"]}"]\n'
            )
            proc.send_signal(signal.SIGHUP)
            got = await download
            assert got["sha256"] == expected_sha256(size)
            await asyncio.sleep(0.5)
            assert (await fetch(port, "a.test"))["body"] == "B"
            # SIGTERM mid-download: the session is drained, not cut.
            download = asyncio.create_task(fetch(port, "a.test", f"/{size}", timeout=60))
            await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            got = await download
            assert got["sha256"] == expected_sha256(size)

        asyncio.run(main())
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    quic_lines = [x for x in lines if x.get("transport") == "quic"]
    assert len(quic_lines) >= 9
    assert {x.get("worker") for x in quic_lines} == {0}


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _spki_hash(cert: Path) -> str:
    """The base64 SHA-256 of the certificate's public key, for Chromium's trust flag."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_chromium_forced_onto_quic_through_the_router(
    backends: dict[str, int], cert: tuple[Path, Path], tmp_path: Path
) -> None:
    """Chromium's hello: post-quantum key share over two Initials, CRYPTO frames shuffled."""

    async def test(h: Harness) -> None:
        assert CHROMIUM is not None
        origin = f"a.test:{h.port}"
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-quic",
            f"--origin-to-force-quic-on={origin}",
            "--host-resolver-rules=MAP a.test 127.0.0.1",
            f"--ignore-certificate-errors-spki-list={_spki_hash(cert[0])}",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom", f"https://{origin}/",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert b">A</pre>" in out
        await h.proxy.stop(0)  # Chromium's idle timeout is 30 s: do not wait for it
        line = next(x for x in await h.wait_lines(1) if x.get("sni") == "a.test")
        assert line["backend"] == f"127.0.0.1:{backends['A']}"
        assert line["ja4"].startswith("q13d") and line["datagrams_to_client"] > 0

    run(backends, test)


def test_pending_caps_and_max_connections_count_quic_sessions(backends: dict[str, int]) -> None:
    """Hellos that never finish hold pending slots; past the caps new ones are dropped."""

    def first_initial() -> bytes:
        # A real Initial of a hello that never completes: CRYPTO bytes 0..100 of 4,000.
        hello_start = b"\x01\x00\x0f\x9c" + os.urandom(96)
        return quic.build_initial(
            1, os.urandom(8), os.urandom(8), [quic.crypto_frame(0, hello_start)]
        )

    def sender(count: int) -> Callable[[Harness], Awaitable[None]]:
        async def test(h: Harness) -> None:
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
            try:
                for s in socks:  # three connections from 127.0.0.1, three ports
                    s.sendto(first_initial(), ("127.0.0.1", h.port))
                await asyncio.sleep(0.3)
                assert h.proxy.pending_sessions == h.proxy.active_sessions == count
                # The hello timeout applies its action (close) and frees the slots.
                await h.wait_lines(count, timeout=5)
                assert [line["reason"] for line in h.lines] == ["timeout"] * count
                assert h.proxy.pending_sessions == 0
                seen.append(h.metrics())
            finally:
                for s in socks:
                    s.close()

        return test

    seen: list[str] = []
    run(backends, sender(1), max_pending_per_client=1, hello_timeout=0.5)
    assert 'reason="client_pending_limit"' in seen[-1]
    run(backends, sender(2), max_connections=2, hello_timeout=0.5)
    assert 'reason="max_connections"' in seen[-1]


def test_idle_timeout_is_never_shorter_than_the_clients() -> None:
    from sniinspect.route.quicsession import idle_timeout as _idle_timeout

    hello = clienthello.parse_handshake(
        (Path(__file__).parent / "data" / "quic" / "aioquic-1.7.2.hs").read_bytes()
    )
    assert hello.max_idle_timeout == 60000
    assert _idle_timeout(30.0, hello) == 60.0
    assert _idle_timeout(90.0, hello) == 90.0
    assert (
        _idle_timeout(
            30.0,
            clienthello.parse_handshake(
                clienthello.parse(
                    (
                        Path(__file__).parent.parent / "captures" / "hellos" / "python.bin"
                    ).read_bytes()
                ).raw
            ),
        )
        == 30.0
    )


def test_a_cid_length_stays_known_while_any_session_uses_it(backends: dict[str, int]) -> None:
    """Ending one session must not hide the others from short-header lookups."""
    import time as _time

    from sniinspect.route.observe import ConnectionLog
    from sniinspect.route.quicsession import RELAYING, Session

    async def test(h: Harness) -> None:
        proxy = h.proxy
        lst = proxy._listeners[0]
        sessions = []
        for n in (1, 2):
            rec = ConnectionLog(_time.time(), f"127.0.0.1:{n}", "x", 0.0, _time.perf_counter())
            s = Session(lst, ("127.0.0.1", n), bytes([n]) * 8, rec, None, 0.0, 1.0)
            s.state = RELAYING
            proxy._sessions.add(s)
            proxy._add_cid(s, s.original_dcid)  # the client's original DCID: 8 bytes
            s.cids.add(bytes([0x40 + n]) * 8)  # a server CID: 8 bytes too
            proxy._add_cid(s, bytes([0x40 + n]) * 8)
            sessions.append(s)
        proxy._end(sessions[0])
        assert proxy._cid_lengths == {8: 2}
        short = bytes([0x40]) + bytes([0x42]) * 8 + b"payload"
        assert proxy._by_cid.get(short[1:9]) is sessions[1]
        proxy._end(sessions[1])
        assert proxy._cid_lengths == {} and proxy._by_cid == {}

    run(backends, test)


class _Echo(asyncio.DatagramProtocol):
    """A UDP "backend" that sends every datagram back, for tests of the relay itself."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


@LOOPS
def test_idle_timeout_ends_a_quiet_session_not_a_talking_one(
    backends: dict[str, int], loop: str
) -> None:
    """Activity is what relayed datagrams count: a session that keeps talking lives on."""
    from helpers import build_handshake, server_name_body

    async def test(h: Harness) -> None:
        echo, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            _Echo, local_addr=("127.0.0.1", 0)
        )
        port = echo.get_extra_info("sockname")[1]
        h.proxy.reload(_config(backends, route=[
            {"names": ["idle.test"], "backends": [f"127.0.0.1:{port}"]},
        ]))  # fmt: skip
        hello = build_handshake(extensions=[(0, server_name_body(b"idle.test"))])
        dcid = os.urandom(8)
        initial = quic.build_initial(1, dcid, os.urandom(8), [quic.crypto_frame(0, hello)])
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)

        async def recv() -> bytes:
            return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 2048), 2)

        try:
            client.sendto(initial, ("127.0.0.1", h.port))
            assert await recv() == initial  # relayed to the echo and back
            # A hello without transport parameters states no idle timeout: 1 s applies.
            # Talk for 2.5 s, a datagram every 0.2 s: the session must outlive it.
            for i in range(12):
                await asyncio.sleep(0.2)
                short = bytes([0x40]) + dcid + i.to_bytes(2, "big") + bytes(20)
                client.sendto(short, ("127.0.0.1", h.port))
                assert await recv() == short
            quiet = time.monotonic()
            assert h.lines == [] and h.proxy.active_sessions == 1
            lines = await h.wait_lines(1, timeout=4)
            # Ended after 1 s of silence, seen by sweeps (every 0.25 s): at most ~0.5 s late.
            assert 1.0 <= time.monotonic() - quiet < 2.0
        finally:
            client.close()
            echo.close()
        assert lines[0]["outcome"] == "routed" and lines[0]["sni"] == "idle.test"
        assert lines[0]["datagrams_from_client"] == 13 == lines[0]["datagrams_to_client"]

    run(backends, test, loop)
