"""Capture real DTLS ClientHellos: openssl s_client -> UDP relay -> openssl s_server -listen.

Run from the repository root: ``python tests/data/dtls/make_dtls_fixtures.py``. The relay
(127.0.0.1 only) writes every client-to-server datagram of one run to
``tests/data/dtls/<name>.dgrams`` as (2-byte big-endian length, datagram) pairs.
``s_server -listen`` answers the first ClientHello with a HelloVerifyRequest, so each
file holds two ClientHellos (message_seq 0 without a cookie, 1 with it); ``-mtu``
makes s_client fragment them over several records and datagrams.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = {
    # name: s_client arguments
    "openssl-dtls12-mtu300": [
        "-dtls1_2",
        "-mtu",
        "300",
        "-cipher",
        "ALL:@SECLEVEL=0",
        "-servername",
        "dtls.test",
    ],
    "openssl-dtls10": ["-dtls1", "-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "dtls10.test"],
    "openssl-dtls12": ["-dtls1_2", "-servername", "dtls12.test", "-alpn", "coap,webrtc"],
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(name: str, client_args: list[str], folder: Path) -> None:
    server_port = free_port()
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 0))
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    relay.settimeout(0.05)
    upstream.settimeout(0.05)
    server = subprocess.Popen(
        ["openssl", "s_server", "-dtls", "-listen", "-accept", str(server_port),
         "-cert", str(folder / "cert.pem"), "-key", str(folder / "key.pem"),
         "-cipher", "DEFAULT:@SECLEVEL=0", "-quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    client = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{relay.getsockname()[1]}", *client_args],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    datagrams: list[bytes] = []
    client_addr = None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            data, client_addr = relay.recvfrom(65535)
            datagrams.append(data)
            upstream.sendto(data, ("127.0.0.1", server_port))
        except TimeoutError:
            pass
        try:
            data, _ = upstream.recvfrom(65535)
            if client_addr is not None:
                relay.sendto(data, client_addr)
        except TimeoutError:
            pass
    for proc in (client, server):
        proc.kill()
        proc.wait()
    relay.close()
    upstream.close()
    out = b"".join(len(d).to_bytes(2, "big") + d for d in datagrams)
    (HERE / f"{name}.dgrams").write_bytes(out)
    print(name, len(datagrams), "datagrams", file=sys.stderr)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=dtls.test", "-keyout", str(folder / "key.pem"),
             "-out", str(folder / "cert.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
        for name, args in RUNS.items():
            run(name, args, folder)


if __name__ == "__main__":
    main()
