"""TLS termination by SNI beside passthrough, end to end on loopback.

One listener carries: a route with an explicit certificate, routes whose certificate is
chosen from a directory (exact and wildcard SAN), ALPN, client-certificate and backend-TLS
routes, and a passthrough route. Clients are Python ``ssl``, ``curl --cacert`` and
``openssl s_client -verify_return_error``, each verifying the certificate for the name it
asked for against a throwaway CA (ECDSA P-256, made with `cryptography`). Backends are plain
TCP servers that parse the PROXY v2 header the router sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cryptography")

from test_router import (
    HOST,
    TIMEOUT,
    BioClient,
    RawBackend,
    RouterThread,
    Server,
    hello_bytes,
    raw_exchange,
    tls_backend,
)
from tlscerts import CA, serial_of

from sniinspect.route.config import build_config
from sniinspect.route.proxyproto import (
    PP2_CLIENT_CERT_CONN,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    ProxyHeaderParser,
    ProxyInfo,
)
from sniinspect.route.server import Router
from sniinspect.route.terminate import CertificateError
from sniinspect.router import alert_record

# ---------------------------------------------------------------------- PKI


@dataclass
class PKI:
    """Every certificate of the tests, on disk."""

    folder: Path
    ca: Path  # the CA clients verify the router's certificates with
    explicit: tuple[Path, Path, int]  # chain, key (separate), serial: explicit.test
    exact: int  # serial of pool/exact.pem: exact.pool.test
    wild: int  # serial of pool/wild.pem: *.pool.test
    svc: int  # serial of pool/svc.pem: *.svc.test
    default: tuple[Path, int]
    client_ca: Path
    client: tuple[Path, Path]  # a client certificate from client_ca (CN client-1)
    rogue: tuple[Path, Path]  # a client certificate from another CA
    backend_ca: Path
    passthrough: tuple[str, str]  # pass.test, issued by backend_ca (served by the backend)
    internal: tuple[str, str]  # backend.internal, issued by backend_ca


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    folder = tmp_path_factory.mktemp("pki")
    root, clients, rogue, backends = CA("Test Root"), CA("Client Root"), CA("Rogue"), CA("Back")
    explicit = root.write_pair(folder, "explicit", ["explicit.test"], combined=False)
    pool = folder / "pool"
    exact = root.write_pair(pool, "exact", ["exact.pool.test"])[2]
    wild = root.write_pair(pool, "wild", ["*.pool.test"])[2]
    svc = root.write_pair(pool, "svc", ["*.svc.test"])[2]
    default = root.write_pair(folder, "default", ["default.test"])
    client = clients.write_pair(folder, "client", [], cn="client-1", client=True, combined=False)
    bad = rogue.write_pair(folder, "rogue", [], cn="rogue", client=True, combined=False)
    passthrough = backends.write_pair(folder, "pass", ["pass.test"], combined=False)
    internal = backends.write_pair(folder, "internal", ["backend.internal"], combined=False)
    assert explicit[1] and client[1] and bad[1] and passthrough[1] and internal[1]
    return PKI(
        folder=folder,
        ca=root.write(folder / "ca.pem"),
        explicit=(explicit[0], explicit[1], explicit[2]),
        exact=exact,
        wild=wild,
        svc=svc,
        default=(default[0], default[2]),
        client_ca=clients.write(folder / "client-ca.pem"),
        client=(client[0], client[1]),
        rogue=(bad[0], bad[1]),
        backend_ca=backends.write(folder / "backend-ca.pem"),
        passthrough=(str(passthrough[0]), str(passthrough[1])),
        internal=(str(internal[0]), str(internal[1])),
    )


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def make_router() -> Iterator[Callable[..., RouterThread]]:
    made: list[RouterThread] = []

    def make(config: dict[str, Any]) -> RouterThread:
        rt = RouterThread({"listen": [f"{HOST}:0"], **config})
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.stop()


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(kind: Callable[..., Server], *args: Any, **kwargs: Any) -> Server:
        server = kind(*args, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


# ---------------------------------------------------------------------- backends


class PlainBackend(Server):
    """Plain TCP: reads a PROXY v2 header (if asked), then answers each chunk with
    ``<name>:<chunk>`` (an HTTP request with body ``<name>``); a chunk ending a line ends it."""

    def __init__(self, name: str, proxy: bool = True, **kwargs: Any) -> None:
        self.name = name
        self.proxy = proxy
        self.infos: list[ProxyInfo] = []
        self.requests: list[bytes] = []
        super().__init__(self._handle, **kwargs)

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        if self.proxy:
            parser = ProxyHeaderParser()
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                info = parser.feed(data)
                if info is not None:
                    break
            self.infos.append(info)
            buf = parser.remainder
        while True:
            if not buf:
                buf = conn.recv(65536)
                if not buf:
                    return
            if buf.startswith(b"GET "):
                while b"\r\n\r\n" not in buf and (more := conn.recv(65536)):
                    buf += more
                self.requests.append(buf)
                body = self.name.encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )
                return
            self.requests.append(buf)
            conn.sendall(self.name.encode() + b":" + buf)
            if buf.endswith(b"\n"):
                return
            buf = b""


def bulk_handler(received: list[str], size: int) -> Callable[[socket.socket], None]:
    """Read 8-byte length + that many bytes (hashing them), then send ``size`` bytes."""

    def handle(conn: socket.socket) -> None:
        head = b""
        while len(head) < 8:
            head += conn.recv(8 - len(head))
        left = struct.unpack("!Q", head)[0]
        digest = hashlib.sha256()
        while left:
            data = conn.recv(min(left, 1 << 20))
            if not data:
                break
            digest.update(data)
            left -= len(data)
        received.append(digest.hexdigest())
        conn.sendall(pattern(size))

    return handle


def pattern(size: int) -> bytes:
    return (hashlib.sha256(b"seed").digest() * (size // 32 + 1))[:size]


# ---------------------------------------------------------------------- clients


def verifying(ca: Path, **kwargs: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    for key, value in kwargs.items():
        if key == "alpn":
            ctx.set_alpn_protocols(value)
        elif key == "cert":
            ctx.load_cert_chain(*value)
        else:
            setattr(ctx, key, value)
    return ctx


@dataclass
class Answer:
    data: bytes
    serial: int
    version: str
    alpn: str | None


def talk(port: int, name: str | None, ctx: ssl.SSLContext, payload: bytes = b"ping") -> Answer:
    with (
        socket.create_connection((HOST, port), timeout=TIMEOUT) as sock,
        ctx.wrap_socket(sock, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(payload)
        answer = b""
        while not answer.endswith(payload):
            data = tls.recv(65536)
            if not data:
                break
            answer += data
        return Answer(answer, serial_of(der), tls.version() or "", tls.selected_alpn_protocol())


# ---------------------------------------------------------------------- the one listener


@dataclass
class Setup:
    rt: RouterThread
    backends: dict[str, PlainBackend]
    passthrough: Server
    pki: PKI


def config_for(pki: PKI, b: dict[str, PlainBackend], passthrough: Server) -> dict[str, Any]:
    def to(name: str) -> list[str]:
        return [f"{HOST}:{b[name].port}"]

    return {
        "max_pending_per_client": 1000,
        "tls": {"certificates": [str(pki.folder / "pool" / "*.pem")]},
        "route": [
            {
                "names": ["explicit.test"],
                "backends": to("EXPLICIT"),
                "proxy_protocol": 2,
                "terminate": {"cert": str(pki.explicit[0]), "key": str(pki.explicit[1])},
            },
            {
                "names": [".pool.test"],
                "backends": to("POOL"),
                "proxy_protocol": 2,
                "terminate": True,
                "alpn": ["h2", "http/1.1"],
            },
            {"names": ["h2.svc.test"], "backends": to("H2"), "proxy_protocol": 2,
             "terminate": True, "alpn": ["h2"]},
            {"names": ["mtls.svc.test"], "backends": to("MTLS"), "proxy_protocol": 2,
             "terminate": True, "client_ca": str(pki.client_ca)},
            {"names": ["opt.svc.test"], "backends": to("OPT"), "proxy_protocol": 2,
             "terminate": True, "client_ca": str(pki.client_ca), "client_cert": "optional"},
            {"names": ["nocert.test"], "backends": to("POOL"), "terminate": True},
            {"names": ["pass.test"], "backends": [f"{HOST}:{passthrough.port}"]},
        ],
    }  # fmt: skip


@pytest.fixture
def setup(
    pki: PKI, make_router: Callable[..., RouterThread], servers: Callable[..., Server]
) -> Setup:
    names = ("EXPLICIT", "POOL", "H2", "MTLS", "OPT")
    backends = {n: servers(PlainBackend, n) for n in names}
    passthrough = servers(tls_backend, "PASS", pki.passthrough)
    rt = make_router(config_for(pki, backends, passthrough))
    return Setup(rt, backends, passthrough, pki)


def test_explicit_exact_wildcard_and_passthrough_on_one_listener(setup: Setup) -> None:
    port, pki = setup.rt.port, setup.pki
    ctx = verifying(pki.ca)
    cases = [
        ("explicit.test", pki.explicit[2], "EXPLICIT"),
        ("exact.pool.test", pki.exact, "POOL"),  # the exact SAN beats *.pool.test
        ("other.pool.test", pki.wild, "POOL"),
        ("Other.Pool.Test", pki.wild, "POOL"),  # case does not matter
    ]
    for name, serial, backend in cases:
        answer = talk(port, name, ctx)
        assert answer.data == f"{backend}:ping".encode(), name
        assert answer.serial == serial, name
        assert answer.version == "TLSv1.3"
    # Nor a trailing dot (which Python's own hostname check would not accept).
    answer = talk(port, "Exact.Pool.Test.", verifying(pki.ca, check_hostname=False))
    assert answer.serial == pki.exact
    # Passthrough on the same port: the backend's own certificate, from its own CA.
    answer = talk(port, "pass.test", verifying(pki.backend_ca))
    assert answer.data == b"PASS:ping"
    with pytest.raises(ssl.SSLCertVerificationError):
        talk(port, "pass.test", ctx)  # not ours: the router never saw this handshake
    # The backend behind termination: PROXY v2 with the name as sent, ALPN, TLS facts.
    pool = setup.backends["POOL"]
    info = pool.infos[-1]
    assert info.tlvs[PP2_TYPE_AUTHORITY] == b"Exact.Pool.Test."  # as the client sent it
    assert info.src is not None and info.dst == (HOST, port)
    assert pool.requests[-1] == b"ping"  # plaintext
    assert info.ssl is not None
    assert (info.ssl.version, info.ssl.key_alg) == ("TLSv1.3", "EC256")
    assert info.ssl.cipher and info.ssl.cipher.startswith("TLS_")
    assert not info.ssl.client_verified and info.ssl.client_cn is None
    assert PP2_TYPE_ALPN not in info.tlvs  # Python's client offered no ALPN
    logs = {(line["sni"], line.get("terminated")): line for line in setup.rt.wait_log(7)}
    line = logs[("explicit.test", True)]
    assert line["outcome"] == "routed" and line["route"] == "explicit.test"
    assert line["certificate"] == "CN=explicit.test"
    assert line["certificate_serial"] == f"{pki.explicit[2]:X}"
    assert (line["tls_version"], line["tls_cipher"][:4]) == ("TLSv1.3", "TLS_")
    assert line["handshake_ms"] > 0 and line["bytes_from_client"] > 0
    assert "terminated" not in logs[("pass.test", None)]


def test_alpn_offered_negotiated_and_refused(setup: Setup) -> None:
    port, pki = setup.rt.port, setup.pki
    answer = talk(port, "a.pool.test", verifying(pki.ca, alpn=["h2", "http/1.1"]))
    assert answer.alpn == "h2"
    assert setup.backends["POOL"].infos[-1].tlvs[PP2_TYPE_ALPN] == b"h2"
    answer = talk(port, "a.pool.test", verifying(pki.ca, alpn=["http/1.1", "h3"]))
    assert answer.alpn == "http/1.1"
    assert setup.backends["POOL"].infos[-1].alpn == b"http/1.1"
    assert talk(port, "explicit.test", verifying(pki.ca, alpn=["h2", "http/1.1"])).alpn == (
        "http/1.1"  # the default offer
    )
    assert talk(port, "h2.svc.test", verifying(pki.ca, alpn=["h2"])).alpn == "h2"
    # No protocol in common: alert 120 no_application_protocol (RFC 7301 §3.2).
    with pytest.raises(ssl.SSLError, match=r"(?i)no application protocol"):
        talk(port, "h2.svc.test", verifying(pki.ca, alpn=["http/1.1"]))
    hello = hello_bytes("h2.svc.test", ["http/1.1"])
    assert raw_exchange(port, hello) == alert_record(120, hello)
    assert setup.backends["H2"].accepted == 1


def test_unknown_name_gets_alert_112(setup: Setup) -> None:
    port = setup.rt.port
    for name in ("nocert.test", "nowhere.test"):  # no certificate covers it / no route
        hello = hello_bytes(name)
        assert raw_exchange(port, hello) == alert_record(112, hello)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        talk(port, "nocert.test", verifying(setup.pki.ca))
    logs = setup.rt.wait_log(3)
    assert {line["reason"] for line in logs} == {"unknown_name"}
    assert logs[0]["route"] == "nocert.test" or logs[1]["route"] == "nocert.test"


def test_tls12_only_client(setup: Setup) -> None:
    ctx = verifying(setup.pki.ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    answer = talk(setup.rt.port, "x.pool.test", ctx)
    assert (answer.data, answer.version, answer.serial) == (b"POOL:ping", "TLSv1.2", setup.pki.wild)
    assert setup.backends["POOL"].infos[-1].ssl.version == "TLSv1.2"  # type: ignore[union-attr]
    assert "ECDHE-ECDSA" in setup.rt.wait_log(1)[-1]["tls_cipher"]


def _openssl(port: int, name: str, ca: Path) -> str:
    proc = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", name,
            "-CAfile", str(ca), "-verify_return_error", "-verify_hostname", name, "-ign_eof",
        ],
        input=b"ping\n", capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def _curl(port: int, name: str, ca: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "curl", "-sS", "--http1.1", "--max-time", str(TIMEOUT), "--cacert", str(ca),
            "--resolve", f"{name}:{port}:{HOST}", f"https://{name}:{port}/",
        ],
        capture_output=True, timeout=TIMEOUT + 5,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_verifies_each_name(setup: Setup) -> None:
    port, pki = setup.rt.port, setup.pki
    for name, ca, backend in (
        ("explicit.test", pki.ca, "EXPLICIT"),
        ("exact.pool.test", pki.ca, "POOL"),
        ("wild.pool.test", pki.ca, "POOL"),
        ("pass.test", pki.backend_ca, "PASS"),
    ):
        out = _openssl(port, name, ca)
        assert "Verify return code: 0 (ok)" in out, out
        assert f"{backend}:ping" in out, out
    out = _openssl(port, "wild.pool.test", pki.backend_ca)  # the wrong CA: refused
    assert "Verify return code: 0 (ok)" not in out


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_verifies_each_name(setup: Setup) -> None:
    port, pki = setup.rt.port, setup.pki
    for name, ca, body in (
        ("explicit.test", pki.ca, b"EXPLICIT"),
        ("exact.pool.test", pki.ca, b"POOL"),
        ("w.pool.test", pki.ca, b"POOL"),
        ("pass.test", pki.backend_ca, b"PASS"),
    ):
        done = _curl(port, name, ca)
        assert (done.returncode, done.stdout) == (0, body), done.stderr
    request = setup.backends["POOL"].requests[-1]
    assert request.startswith(b"GET / HTTP/1.1\r\n") and b"Host: w.pool.test" in request
    assert _curl(port, "w.pool.test", pki.backend_ca).returncode != 0


def test_5mb_each_way_sha256(
    pki: PKI, make_router: Callable[..., RouterThread], servers: Callable[..., Server]
) -> None:
    size = 5 * 1024 * 1024
    received: list[str] = []
    bulk = servers(Server, bulk_handler(received, size))
    rt = make_router(
        {
            "route": [
                {
                    "names": ["explicit.test"],
                    "backends": [f"{HOST}:{bulk.port}"],
                    "terminate": {"cert": str(pki.explicit[0]), "key": str(pki.explicit[1])},
                },
            ]
        }
    )
    data = os.urandom(size)
    with (
        socket.create_connection((HOST, rt.port), timeout=TIMEOUT) as sock,
        verifying(pki.ca).wrap_socket(sock, server_hostname="explicit.test") as tls,
    ):
        tls.sendall(struct.pack("!Q", size) + data)
        digest, got = hashlib.sha256(), 0
        while got < size:
            chunk = tls.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            got += len(chunk)
    assert got == size
    assert digest.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()
    assert received == [hashlib.sha256(data).hexdigest()]


def test_half_close_and_close_notify_pass_through(
    pki: PKI, make_router: Callable[..., RouterThread], servers: Callable[..., Server]
) -> None:
    backend = servers(RawBackend, "HC")  # answers when it sees EOF
    rt = make_router(
        {
            "route": [
                {
                    "names": ["explicit.test"],
                    "backends": [f"{HOST}:{backend.port}"],
                    "terminate": {"cert": str(pki.explicit[0]), "key": str(pki.explicit[1])},
                },
            ]
        }
    )
    client = BioClient(rt.port, "explicit.test", lambda s, d: s.sendall(d))
    client.tls.write(b"abc")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.tls.unwrap()  # close_notify: the client's half-close, before any answer
    client._flush()
    answer = b""
    while True:
        try:
            answer += client.tls.read(65536)
        except ssl.SSLWantReadError:
            data = client.sock.recv(65536)
            if not data:
                break
            client.incoming.write(data)
        except ssl.SSLZeroReturnError:  # the router's close_notify after the backend's EOF
            break
    client.close()
    assert answer == b"HC"
    assert backend.received == [b"abc"]


def test_100_concurrent_terminated_connections(setup: Setup) -> None:
    count = 100
    barrier = threading.Barrier(count, timeout=30)
    ctx = verifying(setup.pki.ca)
    results: list[bytes] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with (
                socket.create_connection((HOST, setup.rt.port), timeout=30) as sock,
                ctx.wrap_socket(sock, server_hostname=f"c{i}.pool.test") as tls,
            ):
                barrier.wait()  # all 100 handshakes done and open at once
                tls.sendall(b"n%d" % i)
                results.append(tls.recv(100))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == sorted(b"POOL:n%d" % i for i in range(count))


def test_client_certificates_per_route(setup: Setup) -> None:
    port, pki = setup.rt.port, setup.pki
    mtls = setup.backends["MTLS"]
    # Required: without a certificate the handshake fails (TLS 1.3: after the client's
    # Finished, so the client learns it on its first read) and no backend is dialled.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        answer = talk(port, "mtls.svc.test", verifying(pki.ca))
        assert answer.data == b""  # a close instead of the alert also counts as refused
        raise ConnectionError("refused")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        answer = talk(port, "mtls.svc.test", verifying(pki.ca, cert=pki.rogue))
        assert answer.data == b""
        raise ConnectionError("refused")
    assert mtls.accepted == 0
    answer = talk(port, "mtls.svc.test", verifying(pki.ca, cert=pki.client))
    assert answer.data == b"MTLS:ping"
    info = mtls.infos[-1].ssl
    assert info is not None and info.client_verified and info.client_cn == "client-1"
    assert info.client & PP2_CLIENT_CERT_CONN and info.verify == 0
    # Optional: served either way; the header says whether a verified certificate came.
    opt = setup.backends["OPT"]
    assert talk(port, "opt.svc.test", verifying(pki.ca)).data == b"OPT:ping"
    assert opt.infos[-1].ssl is not None and not opt.infos[-1].ssl.client_verified
    assert talk(port, "opt.svc.test", verifying(pki.ca, cert=pki.client)).data == b"OPT:ping"
    assert opt.infos[-1].ssl is not None and opt.infos[-1].ssl.client_cn == "client-1"
    # Another route on the same listener asks for nothing.
    assert talk(port, "a.pool.test", verifying(pki.ca, cert=pki.client)).data == b"POOL:ping"
    lines = setup.rt.wait_log(6)
    failed = [x for x in lines if x["outcome"] == "failed"]
    assert len(failed) == 2 and {x["reason"] for x in failed} == {"tls_handshake"}
    assert any(x.get("client_certificate") == "CN=client-1" for x in lines)
    text = _metrics(setup.rt)
    failure = 'sniinspect_tls_handshake_failures_total{reason="peer_did_not_return_a_certificate"}'
    assert failure in text


def _metrics(rt: RouterThread) -> str:
    from prometheus_client import generate_latest

    return generate_latest(rt.router.metrics.registry).decode()


def test_backend_tls_with_verification(
    pki: PKI, make_router: Callable[..., RouterThread], servers: Callable[..., Server]
) -> None:
    backend = servers(tls_backend, "INTERNAL", pki.internal)
    explicit = {"cert": str(pki.explicit[0]), "key": str(pki.explicit[1])}
    to = [f"{HOST}:{backend.port}"]
    rt = make_router(
        {
            "route": [
                {
                    "names": ["explicit.test"],
                    "backends": to,
                    "terminate": explicit,
                    "backend_tls": {"ca": str(pki.backend_ca), "server_name": "backend.internal"},
                },
                {
                    "names": ["wrong.test"],
                    "backends": to,
                    "terminate": explicit,
                    "backend_tls": {"ca": str(pki.ca), "server_name": "backend.internal"},
                },
                {
                    "names": ["name.test"],
                    "backends": to,
                    "terminate": explicit,
                    "backend_tls": {"ca": str(pki.backend_ca), "server_name": "other.internal"},
                },
            ]
        }
    )
    ctx = verifying(pki.ca, check_hostname=False)
    assert talk(rt.port, "explicit.test", ctx).data == b"INTERNAL:ping"
    for name in ("wrong.test", "name.test"):  # an untrusted chain, a name that differs
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
            assert talk(rt.port, name, ctx).data == b"INTERNAL:ping"
    lines = [x for x in rt.wait_log(3) if x["outcome"] == "failed"]
    assert [x["reason"] for x in lines] == ["backend_tls", "backend_tls"]
    assert all("certificate_verify_failed" in x["error"] for x in lines)


def test_default_certificate_for_a_hello_without_sni(
    pki: PKI, make_router: Callable[..., RouterThread], servers: Callable[..., Server]
) -> None:
    fallback = servers(PlainBackend, "FALLBACK", proxy=False)
    rt = make_router(
        {
            "tls": {"default": str(pki.default[0])},
            "default": f"{HOST}:{fallback.port}",
            "route": [
                {"names": ["n.test"], "backends": [f"{HOST}:{fallback.port}"], "terminate": True}
            ],
        }
    )
    ctx = verifying(pki.ca, check_hostname=False)
    answer = talk(rt.port, None, ctx)
    assert (answer.data, answer.serial) == (b"FALLBACK:ping", pki.default[1])
    answer = talk(rt.port, "n.test", ctx)  # no file covers it: the default certificate
    assert (answer.data, answer.serial) == (b"FALLBACK:ping", pki.default[1])
    assert fallback.requests == [b"ping", b"ping"]


# ---------------------------------------------------------------------- reload


def test_reload_new_certificate_old_connection_and_broken_file(
    pki: PKI,
    tmp_path: Path,
    make_router: Callable[..., RouterThread],
    servers: Callable[..., Server],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = CA("Reload Root")
    ca = root.write(tmp_path / "ca.pem")
    certs = tmp_path / "certs"
    root.write_pair(certs, "r", ["*.reload.test"], serial=1001)
    backend = servers(PlainBackend, "R")
    config = {
        "tls": {"certificates": [str(certs / "*.pem")]},
        "route": [{"names": [".reload.test"], "backends": [f"{HOST}:{backend.port}"],
                   "proxy_protocol": 2, "terminate": True}],
    }  # fmt: skip
    rt = make_router(config)
    config["listen"] = [f"{HOST}:{rt.port}"]
    ctx = verifying(ca)
    held_sock = socket.create_connection((HOST, rt.port), timeout=TIMEOUT)
    held = ctx.wrap_socket(held_sock, server_hostname="a.reload.test")
    assert serial_of(held.getpeercert(True) or b"") == 1001
    held.sendall(b"one")
    assert held.recv(100) == b"R:one"

    root.write_pair(certs, "r", ["*.reload.test"], serial=1002)  # replaced on disk
    root.write_pair(certs, "new", ["new.reload.test"], serial=1003)  # a new file in the glob
    rt.reload(config)
    assert talk(rt.port, "a.reload.test", ctx).serial == 1002
    assert talk(rt.port, "new.reload.test", ctx).serial == 1003
    held.sendall(b"two")  # in flight across the reload, on the old certificate
    assert held.recv(100) == b"R:two"

    (certs / "r.pem").write_text("-----BEGIN CERTIFICATE-----\nbroken\n")
    with caplog.at_level("ERROR", logger="sniinspect.router"):
        rt.reload(config)
    assert f"{certs / 'r.pem'}" in caplog.text and "keeping the certificate" in caplog.text
    assert talk(rt.port, "b.reload.test", ctx).serial == 1002  # the old one stays
    path = str(certs / "r.pem")
    assert f'sniinspect_certificate_load_errors_total{{file="{path}"}} 1.0' in _metrics(rt)
    held.sendall(b"three")
    assert held.recv(100) == b"R:three"
    held.close()


def test_certificate_that_cannot_be_loaded_stops_the_start(pki: PKI, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    mismatch = tmp_path / "mismatch.pem"
    chain = pki.explicit[0].read_bytes()
    mismatch.write_bytes(chain + (pki.folder / "client.key").read_bytes())
    for path, why in ((broken, "no PEM certificate"), (mismatch, "KEY_VALUES_MISMATCH")):
        cfg = build_config(
            {
                "listen": [f"{HOST}:0"],
                "route": [
                    {
                        "names": ["x.test"],
                        "backends": [f"{HOST}:9"],
                        "terminate": {"cert": str(path)},
                    }
                ],
            }
        )
        router = Router(cfg)
        with pytest.raises(CertificateError) as info:
            asyncio.run(router.start())
        message = str(info.value)
        assert message.startswith(f"{path}: ") and why in message and "\n" not in message
        assert router.addresses == []


# ---------------------------------------------------------------------- as a process


def test_process_sighup_serves_the_new_certificate_and_check_config(
    tmp_path: Path, servers: Callable[..., Server]
) -> None:
    from test_router_cli import RouterProcess, free_port, run

    root = CA("Process Root")
    ca = root.write(tmp_path / "ca.pem")
    certs = tmp_path / "certs"
    root.write_pair(certs, "a", ["a.proc.test", "*.proc.test"], serial=2001)
    root.write_pair(certs, "b", ["b.proc.test"], serial=2002, days=10)  # expires soon
    backend = servers(PlainBackend, "P", proxy=False)
    port = free_port()
    path = tmp_path / "router.toml"
    path.write_text(
        f'listen = "{HOST}:{port}"\n[tls]\ncertificates = ["certs/*.pem"]\n'
        f'[[route]]\nnames = [".proc.test", "other.test"]\nbackends = "{HOST}:{backend.port}"\n'
        "terminate = true\n"
    )
    check = run("--config", str(path), "--check-config")
    assert check.returncode == 0, check.stderr
    assert f"proc.test -> {certs / 'a.pem'}" in check.stdout  # served by the wildcard file
    assert f"*.proc.test -> {certs / 'a.pem'}" in check.stdout
    assert "no certificate covers 'other.test'" in check.stderr
    assert f"certificate {certs / 'b.pem'} expires in 9 days" in check.stderr
    assert "2 certificate(s)" in check.stdout

    proc = RouterProcess(["--config", str(path)], tmp_path)
    try:
        ctx = verifying(ca)
        assert talk(port, "x.proc.test", ctx).serial == 2001
        assert talk(port, "b.proc.test", ctx).serial == 2002
        root.write_pair(certs, "a", ["a.proc.test", "*.proc.test"], serial=2003)
        proc.proc.send_signal(__import__("signal").SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration reloaded" not in proc.text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert talk(port, "x.proc.test", ctx).serial == 2003
    finally:
        proc.close()
    (certs / "a.pem").write_text("garbage")
    done = run("--config", str(path))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"Error: {certs / 'a.pem'}: ")
