"""The byte relay of one routed connection: both directions, copied or spliced, until done.

After the peek the client and backend sockets are joined: ``os.splice`` moves bytes
socket -> pipe -> socket without copying them into Python (Linux); elsewhere a
recv_into/send loop does the same job. Either way a direction stops reading while its
destination cannot take more (backpressure), an EOF is passed on as a half-close, and
nothing is closed until both directions are done or the connection has been idle for
``idle_timeout``. A reset is treated like an EOF once every byte read before it has been
passed on (the log keeps the error), and a peer that can no longer be written to stops
only its own direction: an answer it sent before closing still reaches the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import sys
from collections.abc import Callable

from sniinspect.route.sockets import os_error

__all__ = ["Relay", "Direction", "HAVE_SPLICE"]

# Bytes moved per splice/recv; 1 MiB pipes make bulk transfers cheap per system call.
PIPE_SIZE = 1 << 20
COPY_CHUNK = 1 << 18
# relay = "auto" starts every direction with a small buffer, so that a short exchange (a
# TLS handshake, an API call) never pays for two 1 MiB pipes, and splices once a read
# fills it (bulk data is flowing), as HAProxy's splice-auto does. From then on it judges
# its writes, WINDOW at a time: it splices while its destination keeps up (refused,
# being full, fewer than 1 in FAST_CONSUMER of them) and each write moves at least
# BIG_WRITE bytes on average; it copies while its destination falls behind (refused
# WINDOW / SLOW_CONSUMER times within a window) or writes average under SMALL_WRITE.
# Splice costs us the least CPU, but the consumer receives spliced data as the page
# fragments it arrived in, and a consumer that is the bottleneck (a client decrypting a
# TLS download) gets it faster copied into whole segments. Moves happen with the pipe or
# buffer empty, so bytes stay in order.
AUTO_CHUNK = 1 << 14
WINDOW = 64
SLOW_CONSUMER = 4
FAST_CONSUMER = 64
SMALL_WRITE = 1 << 16
BIG_WRITE = 1 << 17
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
DEFAULT_PIPE_SIZE = 1 << 16  # Linux's, when a bigger one is refused
HAVE_SPLICE = hasattr(os, "splice") and sys.platform.startswith("linux")


class Direction:
    """Bytes one way, src -> dst, with the kernel pipe (splice) or a buffer (copy)."""

    __slots__ = (
        "adaptive",
        "buf",
        "count",
        "done",
        "dst",
        "dst_sock",
        "end",
        "eof",
        "held",
        "judged",
        "judged_bytes",
        "pipe_r",
        "pipe_size",
        "pipe_w",
        "reading",
        "refused",
        "relay",
        "src",
        "start",
        "switch",
        "view",
        "writing",
    )

    def __init__(self, relay: Relay, src: socket.socket, dst: socket.socket, mode: str):
        self.relay = relay
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_sock = dst
        self.count = 0
        self.eof = False
        self.done = False
        self.reading = False
        self.writing = False
        self.pipe_r = self.pipe_w = -1
        self.pipe_size = 0
        self.held = 0  # bytes in the pipe / buffer not yet written
        self.buf: bytearray | None = None
        self.view: memoryview | None = None
        self.start = self.end = 0
        self.adaptive = mode == "auto"  # moves between copy and splice (see AUTO_CHUNK)
        self.switch: str | None = None  # "copy" or "splice": move there once drained
        self.judged = self.judged_bytes = self.refused = 0  # this window's writes
        if mode == "splice":
            self._open_pipe()
        else:
            self.buf = bytearray(COPY_CHUNK if mode == "copy" else AUTO_CHUNK)
            self.view = memoryview(self.buf)

    def _open_pipe(self) -> None:
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pipe_size = DEFAULT_PIPE_SIZE
        with contextlib.suppress(OSError):
            self.pipe_size = fcntl.fcntl(self.pipe_w, F_SETPIPE_SZ, PIPE_SIZE)

    def begin(self) -> None:
        self._want_read(True)

    def _want_read(self, on: bool) -> None:
        loop = self.relay.loop
        if on and not self.reading:
            loop.add_reader(self.src, self.on_readable)
        elif not on and self.reading:
            loop.remove_reader(self.src)
        self.reading = on

    def _want_write(self, on: bool) -> None:
        loop = self.relay.loop
        if on and not self.writing:
            loop.add_writer(self.dst, self.flush)
        elif not on and self.writing:
            loop.remove_writer(self.dst)
        self.writing = on

    def on_readable(self) -> None:
        try:
            if self.pipe_w >= 0:
                # The pipe is this direction's buffer: go on filling it while the
                # destination is full, and pause the source only when the pipe is, so
                # the sender keeps sending while a slower receiver catches up.
                # A move to copy waits for an empty pipe: stop filling it meanwhile.
                room = self.pipe_size - self.held
                if room <= 0 or self.switch is not None:
                    self._want_read(False)
                    return
                n = os.splice(
                    self.src, self.pipe_w, room, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
                )
            else:
                assert self.view is not None
                n = os.readv(self.src, [self.view])
                if n == len(self.view) == AUTO_CHUNK and self.adaptive:
                    self.switch = "splice"  # the first buffer filled: bulk data flows
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # The source reset: pass on everything read from it before, then end this
            # direction as at EOF. The error goes to the log.
            self.relay.error = self.relay.error or os_error(exc)
            n = 0
        if n == 0:
            self.eof = True
            self._want_read(False)
        else:
            self.held += n
            self.end = n
            self.start = 0
            self.relay.last = self.relay.loop.time()
            if self.writing and not self.eof:
                return  # the destination is full: its writable event flushes
        self.flush()

    def flush(self) -> None:
        while self.held:
            try:
                if self.pipe_r >= 0:
                    n = os.splice(
                        self.pipe_r,
                        self.dst,
                        self.held,
                        flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
                    )
                else:
                    assert self.view is not None
                    n = os.write(self.dst, self.view[self.start : self.end])
                    self.start += n
            except (BlockingIOError, InterruptedError):
                # The destination is full: wait for it to take more, and stop reading
                # the source until then (backpressure) unless a pipe has room left.
                self.refused += 1
                if self.adaptive and self.refused * SLOW_CONSUMER >= WINDOW:
                    self._judge()  # slow already, however few writes this window has
                if self.pipe_r < 0 or self.held >= self.pipe_size:
                    self._want_read(False)
                self._want_write(True)
                return
            except OSError as exc:
                self.relay.write_failed(self, exc)
                return
            self.held -= n
            self.count += n
            self.relay.last = self.relay.loop.time()
            if self.adaptive:
                self.judged += 1
                self.judged_bytes += n
                if self.judged >= WINDOW:
                    self._judge()
        if self.switch is not None and not self.eof:
            self._move()
        self._want_write(False)
        if self.eof:
            if not self.done:
                self.done = True
                with contextlib.suppress(OSError):
                    # Pass the half-close on: the other side may still answer.
                    self.dst_sock.shutdown(socket.SHUT_WR)
                self.relay.direction_done()
        elif not self.reading and not self.relay.finished:
            self._want_read(True)

    def _judge(self) -> None:
        """The last WINDOW writes say whether to copy or splice (see AUTO_CHUNK)."""
        refused, writes, size = self.refused, self.judged, self.judged_bytes // WINDOW
        self.judged = self.judged_bytes = self.refused = 0
        if self.pipe_r >= 0:
            if refused * SLOW_CONSUMER >= WINDOW or (writes >= WINDOW and size < SMALL_WRITE):
                self.switch = "copy"
        elif refused * FAST_CONSUMER < WINDOW and size >= BIG_WRITE:
            self.switch = "splice"

    def _move(self) -> None:
        """Switch to the pipe or buffer `switch` names; called with nothing held."""
        to, self.switch = self.switch, None
        try:
            if to == "splice":
                self._open_pipe()
                self.buf = self.view = None
                return
            buf = bytearray(COPY_CHUNK)
        except (OSError, MemoryError):  # out of descriptors or memory: stay as we are
            return
        self._close_pipe()
        self.buf, self.view = buf, memoryview(buf)

    def _close_pipe(self) -> None:
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                os.close(fd)
        self.pipe_r = self.pipe_w = -1

    def stop(self) -> None:
        self._want_read(False)
        self._want_write(False)
        self._close_pipe()


class Relay:
    """Both directions of one connection; `run` returns when both are done."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        backend: socket.socket,
        mode: str,
        idle_timeout: float,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.loop = loop
        self.on_done = on_done  # called when both directions are done (instead of run())
        self.client = client
        self.backend = backend
        if not HAVE_SPLICE:
            mode = "copy"
        self.mode = mode if mode in ("splice", "copy") else "auto"
        self.finished = False
        self.error: str | None = None
        self.timed_out = False
        self.last = loop.time()
        self.idle = idle_timeout
        self.timer: asyncio.TimerHandle | None = None
        self.future: asyncio.Future[None] | None = None
        self.up = Direction(self, client, backend, self.mode)
        try:
            self.down = Direction(self, backend, client, self.mode)
        except OSError:
            self.up.stop()
            raise

    async def run(self) -> None:
        self.future = self.loop.create_future()
        self.start()
        await self.future

    def start(self) -> None:
        """Start both directions; `on_done` (or `run`) learns when they are done."""
        self.up.begin()
        self.down.begin()
        if self.idle:
            self.timer = self.loop.call_later(self.idle, self._check_idle)

    def _check_idle(self) -> None:
        idle_for = self.loop.time() - self.last
        if idle_for >= self.idle:
            self.timed_out = True
            self._finish()
        else:
            self.timer = self.loop.call_later(self.idle - idle_for, self._check_idle)

    def direction_done(self) -> None:
        if self.up.done and self.down.done:
            self._finish()

    def write_failed(self, direction: Direction, exc: OSError) -> None:
        """The destination of ``direction`` is gone (EPIPE, reset): stop that direction.

        The other direction goes on until its own end, so that an answer the peer sent
        before closing (an HTTP 413 to an upload, a TLS alert) still reaches the client.
        """
        self.error = self.error or os_error(exc)
        direction.held = 0
        direction.eof = direction.done = True
        direction._want_read(False)
        direction._want_write(False)
        self.direction_done()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.close()
        if self.future is not None and not self.future.done():
            self.future.set_result(None)
        if self.on_done is not None:
            self.on_done()

    def close(self) -> None:
        self.finished = True
        self.up.stop()
        self.down.stop()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
