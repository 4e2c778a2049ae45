"""Capture the ClientHello fixtures in tests/data/ from real TLS clients.

Run from the repository root::

    python tests/data/make_fixtures.py            # every fixture whose tool is present
    python tests/data/make_fixtures.py curl python  # only these

A tiny TCP server on 127.0.0.1 reads until it holds one complete ClientHello (record
headers parsed here: handshake records until the handshake length is met), saves
exactly those bytes and closes the connection, so every client fails its handshake
after sending the hello. The Python client needs no socket (ssl.MemoryBIO). Two
fixtures are lifted from the public corpus (../shared/corpus/public) and one is built
with scapy. The fixtures differ in their random, session id and key shares on every
run, so re-running rewrites them; the tests check only what each client is known to
send, and tests/data/README.md records what the stored ones were made with.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from helpers import CORPUS, corpus_hellos, hello_length  # noqa: E402

LONG_NAME = ".".join(["a" * 60, "b" * 60, "c" * 60, "d" * 50]) + ".long.test"


class HelloCatcher:
    """Accept one connection on 127.0.0.1, keep its ClientHello bytes, then close."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.hello: bytes | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(60)
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(30)
            buf = b""
            while (n := hello_length(buf)) is None:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            self.hello = buf[:n]

    def wait(self, timeout: float = 60) -> bytes:
        self.thread.join(timeout)
        self.sock.close()
        if self.hello is None:
            raise RuntimeError("no ClientHello received")
        return self.hello


def run_client(argv: list[str], **kwargs: object) -> bytes:
    """Start a client against a fresh catcher (PORT in argv is replaced); return its hello."""
    catcher = HelloCatcher()
    argv = [a.replace("PORT", str(catcher.port)) for a in argv]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **kwargs,  # type: ignore[call-overload]
    )
    try:
        return catcher.wait()
    finally:
        proc.kill()
        proc.wait()


def python_bio(server_hostname: str | None, alpn: list[str] | None) -> bytes:
    """The hello Python's ssl module writes to its outgoing MemoryBIO."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello
        obj.do_handshake()
    data = outgoing.read()
    n = hello_length(data)
    if n is None:
        raise RuntimeError("incomplete hello from MemoryBIO")
    return data[:n]


def make_python() -> bytes:
    return python_bio("python.test", ["h2", "http/1.1"])


def make_python_nosni() -> bytes:
    return python_bio(None, None)


def make_python_longsni() -> bytes:
    return python_bio(LONG_NAME, None)


def make_openssl() -> bytes:
    return run_client(
        ["openssl", "s_client", "-connect", "127.0.0.1:PORT", "-servername", "openssl.test"]
    )


def make_curl() -> bytes:
    return run_client(
        ["curl", "-sk", "https://curl.test:PORT/", "--resolve", "curl.test:PORT:127.0.0.1"]
    )


def make_gnutls() -> bytes:
    return run_client(
        ["gnutls-cli", "--insecure", "--sni-hostname", "gnutls.test", "-p", "PORT", "127.0.0.1"]
    )


def make_chromium() -> bytes:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise FileNotFoundError("chromium")
    with tempfile.TemporaryDirectory() as profile:
        return run_client(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--host-resolver-rules=MAP chromium.test 127.0.0.1:PORT",
                "https://chromium.test/",
            ]
        )


def make_tls10_noext() -> bytes:
    """An old-style TLS 1.0 hello with no extensions block at all, built with scapy.

    Modern OpenSSL always adds extensions, so this one is crafted.
    """
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.record import TLS

    hello = TLSClientHello(
        version=0x0301,
        gmt_unix_time=0x4A000000,
        random_bytes=bytes(range(28)),
        ciphers=[0x002F, 0x0035, 0x000A, 0x0005, 0x0004],
        comp=[0],
    )
    return bytes(TLS(type=22, version=0x0301, msg=[hello]))


def _from_corpus(capture: str) -> bytes:
    hellos = corpus_hellos(CORPUS / capture)
    if len(hellos) != 1 or hellos[0].data is None:
        raise RuntimeError(f"expected one TCP hello in {capture}")
    return hellos[0].data


def make_chrome125() -> bytes:
    return _from_corpus("tls-chrome-1250-tls-x25519-kyber.pcap")


def make_sslv2() -> bytes:
    return _from_corpus("sslv2-tls-upgrade-01-ssl-v2-s1.pcap")


MAKERS: dict[str, Callable[[], bytes]] = {
    "python": make_python,
    "python-nosni": make_python_nosni,
    "python-longsni": make_python_longsni,
    "openssl": make_openssl,
    "curl": make_curl,
    "gnutls": make_gnutls,
    "chromium": make_chromium,
    "tls10-noext": make_tls10_noext,
    "chrome125": make_chrome125,
    "sslv2": make_sslv2,
}


def main(names: list[str]) -> int:
    failed = 0
    for name in names or list(MAKERS):
        try:
            data = MAKERS[name]()
        except (OSError, RuntimeError) as exc:
            print(f"{name}: skipped ({exc})", file=sys.stderr)
            failed += 1
            continue
        (HERE / f"{name}.bin").write_bytes(data)
        print(f"{name}.bin: {len(data)} bytes")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
