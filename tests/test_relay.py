"""The relay on its own: real loopback TCP sockets, a sender and a receiver thread.

`Relay` in "auto" mode moves a direction between splice and copy as its consumer's pace
shows (see `sniinspect.route.relay.AUTO_CHUNK`); whatever it does, every byte arrives
once and in order, and an explicit "splice" or "copy" never moves.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from typing import Any

import pytest

from sniinspect.route import relay as relay_mod
from sniinspect.route.relay import HAVE_SPLICE, Relay

HOST = "127.0.0.1"
pytestmark = pytest.mark.skipif(not HAVE_SPLICE, reason="splice is Linux-only")


def _pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair: (outside end, router end), the router's non-blocking."""
    with socket.create_server((HOST, 0)) as srv:
        outside = socket.create_connection(srv.getsockname())
        inside, _ = srv.accept()
    inside.setblocking(False)
    return outside, inside


def _relay_download(
    mode: str, size: int, consumer_pause: float, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], bytes, bytes, int]:
    """Relay ``size`` bytes backend -> client; (moves made, sent hash, received hash, count)."""
    moves: list[str] = []
    real_move = relay_mod.Direction._move

    def move(self: Any) -> None:
        moves.append(self.switch)
        real_move(self)

    monkeypatch.setattr(relay_mod.Direction, "_move", move)
    client_app, client_side = _pair()
    backend_app, backend_side = _pair()
    sent, got = hashlib.sha256(), hashlib.sha256()
    chunk = bytes(range(256)) * 4096  # 1 MiB

    def send() -> None:
        left = size
        while left:
            piece = chunk[: min(left, len(chunk))]
            backend_app.sendall(piece)
            sent.update(piece)
            left -= len(piece)
        backend_app.shutdown(socket.SHUT_WR)

    def receive() -> None:
        while data := client_app.recv(1 << 16):
            got.update(data)
            if consumer_pause:
                time.sleep(consumer_pause)  # a consumer busy with each piece (decrypting)
        client_app.shutdown(socket.SHUT_WR)

    async def main() -> int:
        relay = Relay(asyncio.get_running_loop(), client_side, backend_side, mode, 30.0)
        await asyncio.wait_for(relay.run(), 60)
        return relay.down.count

    threads = [threading.Thread(target=send), threading.Thread(target=receive)]
    for t in threads:
        t.start()
    try:
        count = asyncio.run(main())
    finally:
        for t in threads:
            t.join(60)
        for s in (client_app, client_side, backend_app, backend_side):
            s.close()
    return moves, sent.digest(), got.digest(), count


def test_auto_copies_for_a_slow_consumer_and_keeps_every_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 1 ms per 64 KiB read: a consumer far slower than the relay, even on a busy machine.
    size = 48 << 20
    moves, sent, got, count = _relay_download("auto", size, 0.001, monkeypatch)
    assert moves[0] == "splice"  # the first buffer filled: bulk data
    assert "copy" in moves  # the consumer fell behind: copied from then on
    assert got == sent and count == size


@pytest.mark.parametrize("mode", ["splice", "copy"])
def test_an_explicit_mode_never_moves(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    size = 8 << 20
    moves, sent, got, count = _relay_download(mode, size, 0.002, monkeypatch)
    assert moves == []
    assert got == sent and count == size
