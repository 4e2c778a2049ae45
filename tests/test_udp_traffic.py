"""Real QUIC and DTLS traffic on loopback: real clients, tcpdump, ``sniinspect pcap`` and ``live``.

- QUIC: an aioquic HTTP/3 server (tests/quic_peer.py) on 127.0.0.1, one plain and one
  sending a Retry first; aioquic clients with known names: a hello large enough for 2-3
  Initials (``quantum_readiness_test``), one through the Retry, one speaking QUIC v2;
  and Chromium headless forced onto QUIC when /usr/bin/chromium is installed.
- DTLS: ``openssl s_client -dtls1_2 -mtu 300`` (a hello fragmented over several
  records and datagrams) against ``openssl s_server -dtls`` with the cookie exchange
  (OpenSSL's s_server always sends a HelloVerifyRequest for DTLS, and does so
  statelessly with ``-listen``: two hellos each) and without it: a UDP socket that
  never answers, so the client sends its one hello again and again (reported once).

Each name must be reported by `sniinspect.capture` on the capture, with the transport
and the repeat marked. Needs root (packet capture) and tcpdump; skipped otherwise.
Every process started here is killed by the test that started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import self_signed_cert

from sniinspect.capture import Capture, HelloRecord

pytestmark = [
    pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="capture needs root"),
    pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump"),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
]

PEER = Path(__file__).resolve().parent / "quic_peer.py"
LIVE = [sys.executable, "-c", "from sniinspect.capture.command import live; live()"]
CHROMIUM = "/usr/bin/chromium"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _read_until(proc: subprocess.Popen[bytes], text: bytes, stream: str, timeout: float) -> bytes:
    """Read proc's ``stream`` (stdout/stderr) until ``text`` appears; what was read."""
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"not ready: {seen!r}")
        if select.select([pipe.fileno()], [], [], left)[0]:
            chunk = os.read(pipe.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"closed: {seen!r}")
            seen += chunk
    return seen


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _tcpdump(path: Path, bpf: str) -> Iterator[None]:
    """tcpdump writing ``path`` while the block runs, started for real (probed) first."""
    # --immediate-mode: without it packets still in the kernel's ring block can be lost
    # when tcpdump is stopped.
    # The probes (to a port nobody listens on) start with a zero byte: not a hello.
    probe = _free_udp_port()
    proc = subprocess.Popen(
        [
            "tcpdump", "-i", "lo", "--immediate-mode", "-U", "-w", str(path),
            f"({bpf}) or udp dst port {probe}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _read_until(proc, b"listening on", "stderr", 20)
        deadline = time.monotonic() + 20
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while not path.exists() or path.stat().st_size <= 24:
                assert time.monotonic() < deadline, "tcpdump captured nothing"
                s.sendto(b"\x00probe", ("127.0.0.1", probe))
                time.sleep(0.05)
        yield
        time.sleep(0.3)  # the last packets reach the file
    finally:
        _stop(proc)


@contextlib.contextmanager
def _quic_server(cert: Path, key: Path, *, retry: bool = False) -> Iterator[int]:
    args = [sys.executable, str(PEER), "serve", "--cert", str(cert), "--key", str(key)]
    proc = subprocess.Popen(
        [*args, *(["--retry"] if retry else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        line = _read_until(proc, b"\n", "stdout", 30)
        yield int(line.split()[1])
    finally:
        _stop(proc, signal.SIGKILL)


def _quic_get(port: int, name: str, *flags: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, str(PEER), "get", "--port", str(port), "--server-name", name, *flags],
        capture_output=True,
        timeout=30,
        check=False,
    )
    result: dict[str, object] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert result.get("status") == 200, (name, result, proc.stderr[-2000:])
    return result


def _chromium(port: int, name: str, tmp: Path) -> bool:
    """Fetch https://NAME:PORT/ with Chromium forced onto QUIC; False if it cannot run."""
    cmd = [
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-quic",
        f"--origin-to-force-quic-on={name}:{port}",
        f"--host-resolver-rules=MAP {name} 127.0.0.1", "--ignore-certificate-errors",
        f"--user-data-dir={tmp / 'chromium-profile'}", "--dump-dom", f"https://{name}:{port}/",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        return False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # Chromium's helper processes too
        proc.wait()
    return True


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("cert"), "localhost")


def _by_sni(records: list[HelloRecord]) -> dict[str | None, list[HelloRecord]]:
    out: dict[str | None, list[HelloRecord]] = {}
    for r in records:
        out.setdefault(r.sni, []).append(r)
    return out


def test_quic_clients_are_reported(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("aioquic")
    cert, key = certificate
    pcap = tmp_path / "quic.pcap"
    chromium_ran = False
    with (
        _quic_server(cert, key) as port,
        _quic_server(cert, key, retry=True) as retry_port,
        _tcpdump(pcap, f"udp port {port} or udp port {retry_port}"),
    ):
        large = _quic_get(port, "large-hello.quic.test", "--large-hello")
        v2 = _quic_get(port, "v2.quic.test", "--v2")
        _quic_get(retry_port, "retry.quic.test")
        if os.path.exists(CHROMIUM):
            chromium_ran = _chromium(port, "chromium.quic.test", tmp_path)
    assert v2["version"] == 0x6B3343CF
    assert large["status"] == 200
    cap = Capture(pcap)
    records = list(cap)
    assert not [p for p in cap.problems if p.fatal], cap.problems
    found = _by_sni(records)
    for r in records:
        assert r.transport == "quic" and r.error is None, r
        assert r.ja4 is not None and r.ja4.startswith("q13") and r.ja3
        assert r.src == "127.0.0.1" and r.dport in (port, retry_port)
    # The post-quantum test hello does not fit one Initial: it took several datagrams.
    (big,) = found["large-hello.quic.test"]
    assert big.hello is not None and len(big.hello.raw) > 1200
    assert big.quic_version == "v1"
    (second,) = found["v2.quic.test"]
    assert second.quic_version == "v2"
    # The Retry server: the hello before it, then the one after it, marked.
    assert [r.after for r in found["retry.quic.test"]] == [None, "retry"]
    if chromium_ran:
        chrome = found.get("chromium.quic.test", [])
        assert chrome and chrome[0].alpn == ["h3"], records


@contextlib.contextmanager
def _dtls_server(cert: Path, key: Path, port: int, *, cookie: bool) -> Iterator[None]:
    cmd = [
        "openssl", "s_server", "-dtls", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
        "-key", str(key), "-quiet",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [*cmd, *(["-listen"] if cookie else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)  # s_server binds at once; no line to wait for with -quiet
        yield
    finally:
        _stop(proc, signal.SIGKILL)


def _dtls_client(port: int, name: str, timeout: float = 20) -> None:
    cmd = [
        "openssl", "s_client", "-dtls1_2", "-mtu", "300", "-servername", name,
        "-connect", f"127.0.0.1:{port}",
        # Every cipher suite: a hello of over 300 bytes, so MTU 300 must fragment it.
        "-cipher", "ALL:@SECLEVEL=0",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        proc.communicate(b"", timeout=timeout)
    except subprocess.TimeoutExpired:
        pass  # a server that never answers: the client retransmits until killed
    finally:
        _stop(proc, signal.SIGKILL)


def test_dtls_clients_are_reported(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    pcap = tmp_path / "dtls.pcap"
    plain, listen = _free_udp_port(), _free_udp_port()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a server that never answers
    with (
        silent,
        _dtls_server(cert, key, plain, cookie=False),
        _dtls_server(cert, key, listen, cookie=True),
        _tcpdump(pcap, f"udp port {plain} or udp port {listen} or udp port {silent_port(silent)}"),
    ):
        _dtls_client(plain, "plain.dtls.test")
        _dtls_client(listen, "listen.dtls.test")
        _dtls_client(silent_port(silent), "silent.dtls.test", timeout=2.5)
    records = list(Capture(pcap))
    found = _by_sni(records)
    for r in records:
        assert r.transport == "dtls" and r.error is None, r
        assert r.ja4 is not None and r.ja4.startswith("dd2") and r.ja3
    for name in ("plain.dtls.test", "listen.dtls.test"):
        first, second = found[name]
        assert (first.after, second.after) == (None, "hello_verify_request")
        assert first.hello is not None and not first.hello.cookie
        assert second.hello is not None and second.hello.cookie
        # MTU 300: the hello was cut into fragments (a record and datagram each).
        assert len(first.hello.raw) > 300
    # No cookie exchange: one hello, whatever the retransmissions.
    (alone,) = found["silent.dtls.test"]
    assert alone.after is None


def silent_port(sock: socket.socket) -> int:
    """Bind ``sock`` to a free loopback port (once) and return the port."""
    if sock.getsockname()[1] == 0:
        sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    return port


def test_live_sees_quic(certificate: tuple[Path, Path]) -> None:
    pytest.importorskip("aioquic")
    pytest.importorskip("scapy")
    cert, key = certificate
    with _quic_server(cert, key) as port:
        proc = subprocess.Popen(
            [*LIVE, "-i", "lo", "--bpf", f"udp dst port {port}", "--format", "jsonl",
             "--count", "1", "--timeout", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            _read_until(proc, b"listening on lo", "stderr", 30)
            _quic_get(port, "live.quic.test")
            out, err = proc.communicate(timeout=30)
        finally:
            _stop(proc, signal.SIGKILL)
    assert proc.returncode == 0, err
    (rec,) = [json.loads(line) for line in out.splitlines()]
    assert (rec["sni"], rec["transport"], rec["quic_version"]) == ("live.quic.test", "quic", "v1")
