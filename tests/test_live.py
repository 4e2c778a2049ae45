"""Real traffic on the loopback interface: real TLS clients, tcpdump, and ``sniinspect live``.

A TLS server (Python ssl, self-signed certificate made with ``openssl req``) listens on
127.0.0.1; Python ssl, ``openssl s_client``, ``curl`` and ``gnutls-cli`` connect with
known server names. Needs root (packet capture) and tcpdump; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import self_signed_cert

from sniinspect.capture import Capture

pytestmark = [
    pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="capture needs root"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
]

LIVE = [sys.executable, "-c", "from sniinspect.capture.command import live; live()"]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A TLS server on 127.0.0.1 answering one HTTP response per connection; its port."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_cert(tmp, "localhost")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError), conn:
            conn.settimeout(10)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                with contextlib.suppress(OSError, ssl.SSLError):
                    tls.recv(4096)
                tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _clients(port: int, tag: str) -> list[str]:
    """Connect with every available client; return the server names they sent."""
    names = []
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    name = f"python-{tag}.example"
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname=name) as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        tls.recv(100)
    names.append(name)
    name = f"openssl-{tag}.example"
    subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
    )
    names.append(name)
    if shutil.which("curl"):
        name = f"curl-{tag}.example"
        subprocess.run(
            [
                "curl",
                "-sk",
                "--max-time",
                "20",
                "--resolve",
                f"{name}:{port}:127.0.0.1",
                f"https://{name}:{port}/",
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        names.append(name)
    if shutil.which("gnutls-cli"):
        name = f"gnutls-{tag}.example"
        subprocess.run(
            ["gnutls-cli", "--insecure", "--sni-hostname", name, "-p", str(port), "127.0.0.1"],
            input=b"",
            capture_output=True,
            timeout=30,
            check=False,
        )
        names.append(name)
    return names


def _wait_for(proc: subprocess.Popen[bytes], text: bytes, timeout: float = 30) -> bytes:
    """Read proc's stderr until ``text`` appears (the tool is ready); return what was read."""
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"not ready: {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"stderr closed: {seen!r}")
            seen += chunk
    return seen


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")
def test_tcpdump_capture_of_real_clients(tls_server: int, tmp_path: Path) -> None:
    pcap_file = tmp_path / "lo.pcap"
    # --immediate-mode: without it tcpdump may lose packets still in the kernel's ring
    # block when it is stopped (seen here: "0 packets captured").
    tcpdump = subprocess.Popen(
        [
            "tcpdump",
            "-i",
            "lo",
            "--immediate-mode",
            "-U",
            "-w",
            str(pcap_file),
            f"tcp port {tls_server}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(tcpdump, b"listening on")
        # "listening on" can come before capture really starts: probe until a packet lands.
        deadline = time.monotonic() + 20
        while pcap_file.stat().st_size <= 24 if pcap_file.exists() else True:
            assert time.monotonic() < deadline, "tcpdump captured nothing"
            socket.create_connection(("127.0.0.1", tls_server), timeout=5).close()
            time.sleep(0.1)
        names = _clients(tls_server, "pcap")
        time.sleep(0.5)  # let the last packets reach the capture file
    finally:
        _stop(tcpdump, signal.SIGTERM)
    records = list(Capture(pcap_file))
    reported = {r.sni for r in records}
    assert set(names) <= reported, (names, reported)
    for r in records:
        assert r.error is None and r.dport == tls_server and r.src == "127.0.0.1"
        assert r.ja3 and r.ja4 and r.ciphers and r.extensions


@pytest.mark.parametrize("iface", ["lo", "any"])
def test_live_until_count(tls_server: int, iface: str) -> None:
    pytest.importorskip("scapy")
    proc = subprocess.Popen(
        [
            *LIVE,
            "-i",
            iface,
            "--bpf",
            f"tcp dst port {tls_server}",
            "--format",
            "jsonl",
            "--count",
            "2",
            "--timeout",
            "120",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(proc, f"listening on {iface}".encode())
        names = _clients(tls_server, f"live-{iface}")
        out, err = proc.communicate(timeout=60)
    finally:
        _stop(proc, signal.SIGKILL)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["sni"] for r in records] == names[:2]
    assert all(r["dport"] == tls_server and r["error"] is None for r in records)
    assert b"Traceback" not in err


def test_live_ctrl_c_exits_0_with_table(tls_server: int) -> None:
    pytest.importorskip("scapy")
    proc = subprocess.Popen(
        [*LIVE, "-i", "lo", "--bpf", f"tcp port {tls_server}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(proc, b"listening on lo")
        names = _clients(tls_server, "ctrlc")
        time.sleep(1)
        code = _stop(proc, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        _stop(proc, signal.SIGKILL)
    assert code == 0, err
    text = out.decode()
    assert text.splitlines()[0].startswith("TIME (UTC)")
    for name in names:
        assert name in text


def test_live_bad_interface_exit_1() -> None:
    pytest.importorskip("scapy")
    proc = subprocess.run([*LIVE, "-i", "no-such-if0"], capture_output=True, timeout=60)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert b"no-such-if0" in proc.stderr
