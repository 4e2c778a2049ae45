"""The router's fast path: the common connection from accept to close, with no task per connection.

::

    accept ──> FastConn (one slotted object) in an edge-triggered epoll set of our own,
    │          whose one descriptor the event loop watches (loop.add_reader)
    hello in one record, a plain name ──> cached route ──> non-blocking dial ──> replay
    ──> relay through one shared receive buffer ──> close ──> LogBuffer (line, metrics)
      │ anything else: not TLS, no or odd or unknown name, a hello over several records or
      │ reads, PROXY in, HTTP Host, a route with proxy_protocol or terminate, a hello that
      └─> has not come by its deadline ──> Router.adopt: today's `Connection.serve`
    bulk data (a read of at least AUTO_CHUNK bytes) ──> `Relay` (splice), as before

Each socket is added to the epoll set once (edge-triggered, the backend's for reading
and writing), so nothing is re-registered between the peek and the relay, and closing
a socket is its removal. Deadlines (the hello's, a dial's, the idle timeout) wait in one
heap that one timer checks every `TICK` seconds. Counters and histograms count each
connection as it ends; the two gauges (active, pending) move in the `LogBuffer` flush.

The fast path routes on the name found by walking the hello's framing up to the
extensions' end (every extension header is checked, the bodies other than server_name
are not): a hello whose framing is sound but whose, say, supported_groups body is odd
is routed here where the full parse would call it malformed; the log line then carries
the parse error. Linux only (epoll); elsewhere every connection takes the general path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import os
import select
import socket
import time
from typing import TYPE_CHECKING, Any

from sniinspect.route.fastlog import LogBuffer
from sniinspect.route.hellopeek import NEED_MORE, routing_name
from sniinspect.route.relay import AUTO_CHUNK, HAVE_SPLICE, Relay
from sniinspect.route.sockets import os_error, start_connect
from sniinspect.route.table import Backend, Route

if TYPE_CHECKING:
    from sniinspect.route.config import ListenerConfig, RouterConfig
    from sniinspect.route.server import Router

__all__ = ["HAVE_FAST_PATH", "FastConn", "FastPath"]

HAVE_FAST_PATH = hasattr(select, "epoll")
TICK = 0.05  # how often deadlines are checked: timeouts are late by at most this much
CHUNK = 1 << 16  # the shared receive buffer
MAX_HELLO_READS = 4  # a hello still incomplete after this many reads is a slow one
_IN = getattr(select, "EPOLLIN", 1)
_OUT = getattr(select, "EPOLLOUT", 4)
_ET = getattr(select, "EPOLLET", 1 << 31)
_RDHUP = getattr(select, "EPOLLRDHUP", 0x2000)
_HUPS = _RDHUP | getattr(select, "EPOLLHUP", 16) | getattr(select, "EPOLLERR", 8)
_ERRS = getattr(select, "EPOLLHUP", 16) | getattr(select, "EPOLLERR", 8)
_CLIENT_EVENTS = _IN | _RDHUP | _ET
_BOTH_EVENTS = _IN | _OUT | _RDHUP | _ET
_INPROGRESS = (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK)

# States of a FastConn.
HELLO, CONNECTING, RELAY, BULK, DONE = range(5)


class FastConn:
    """One connection on the fast path: every fact the log line wants, and the relay state."""

    # fmt: off
    __slots__ = (
        "attempt", "backend", "bfd", "bsock", "clock", "connect_s", "data", "deadline", "down",
        "down_buf", "down_done", "down_eof", "end", "entry", "error", "evicted", "fd",
        "hello_at", "last", "lst", "name", "order", "out_client", "outcome", "peer",
        "pending_key", "reads", "ready", "reason", "relay", "route", "sock", "state", "t_dial",
        "up", "up_buf", "up_done", "up_eof"
    )
    # fmt: on

    def __init__(self, sock: socket.socket, peer: tuple[str, int], lst: Any, clock: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.lst = lst  # the server's _Listener
        self.clock = clock
        self.state = HELLO
        self.data = b""
        self.reads = 0
        self.deadline = self.entry = self.last = 0.0
        self.pending_key: str | None = None
        self.evicted = False
        self.name = ""
        self.route: Route | None = None
        self.order: list[int] = []
        self.attempt = 0
        self.backend: str | None = None
        self.bsock: socket.socket | None = None
        self.bfd = -1
        self.t_dial = self.hello_at = self.end = 0.0
        self.connect_s: float | None = None
        self.up = self.down = 0
        self.up_buf: bytes | None = None
        self.down_buf: bytes | None = None
        self.up_eof = self.down_eof = self.up_done = self.down_done = False
        self.out_client = False  # the client's socket is in the epoll set for writing too
        self.ready = False  # the client became readable while the backend was dialled
        self.relay: Relay | None = None
        self.outcome = "closed"
        self.reason: str | None = None
        self.error: str | None = None


class FastPath:
    """The fast path of one router: its epoll set, deadline heap, buffer and caches.

    Args:
        router: the `Router` (its limits, pending bookkeeping, dialer and hand-over).
        loop: the running event loop.
        log: the router's `LogBuffer`.
    """

    def __init__(self, router: Router, loop: asyncio.AbstractEventLoop, log: LogBuffer) -> None:
        self.router = router
        self.loop = loop
        self.log = log
        self.ep = select.epoll()
        loop.add_reader(self.ep.fileno(), self._on_events)
        self.fds: dict[int, FastConn] = {}
        self.bulk: set[FastConn] = set()  # handed to a Relay, out of the epoll set
        self.active = 0
        self.accepted = 0  # connections that took the fast path (tests, benchmarks)
        self.buf = bytearray(CHUNK)
        self.view = memoryview(self.buf)
        self.heap: list[tuple[float, int, FastConn]] = []
        self._seq = 0
        self._ticker: asyncio.TimerHandle | None = None
        self.now = time.perf_counter()
        self._config: RouterConfig | None = None
        self._routes: dict[str, Route | None] = {}
        self._addresses: dict[Backend, tuple[int, Any]] = {}
        self._relay_mode = "auto"

    def close(self) -> None:
        """Stop watching the epoll set (every connection is gone by now)."""
        self.loop.remove_reader(self.ep.fileno())
        self.ep.close()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def takes(self, listener: ListenerConfig) -> bool:
        """Whether connections on this listener start on the fast path."""
        return not (listener.accept_proxy or listener.http_host)

    # ------------------------------------------------------------------ accept

    def accept(self, lst: Any, sock: socket.socket, peer: tuple[str, int]) -> None:
        """Take a new connection (the router has checked max_connections)."""
        router = self.router
        cfg = router.config
        key = peer[0]
        by_client = router._pending_by_client
        waiting = by_client.get(key, 0)
        if waiting >= cfg.max_pending_per_client:
            router._reject_at_accept(lst, sock, peer, "client_pending_limit")
            return
        if len(router._pending) >= cfg.max_pending:
            router._evict_oldest()
        clock = time.perf_counter()
        conn = FastConn(sock, peer, lst, clock)
        conn.pending_key = key
        router._pending[conn] = None
        by_client[key] = waiting + 1
        self.active += 1
        self.accepted += 1
        log = self.log
        log.active_delta += 1
        log.pending_delta += 1
        log.arm()
        self.fds[conn.fd] = conn
        self.ep.register(conn.fd, _CLIENT_EVENTS)
        self._arm(conn, clock + cfg.hello_timeout)

    def unpend(self, conn: FastConn) -> None:
        """The connection no longer waits for its hello."""
        key = conn.pending_key
        if key is None:
            return
        router = self.router
        router._pending.pop(conn, None)
        by_client = router._pending_by_client
        left = by_client.get(key, 1) - 1
        if left <= 0:
            by_client.pop(key, None)
        else:
            by_client[key] = left
        conn.pending_key = None
        self.log.pending_delta -= 1

    def evict(self, conn: FastConn) -> None:
        """Close a connection still waiting for its hello (the pending limit, or stop)."""
        self.unpend(conn)
        conn.outcome = "rejected" if conn.evicted else "aborted"
        conn.reason = "pending_limit" if conn.evicted else "shutdown"
        self._finish(conn)

    # ------------------------------------------------------------------ events

    def _on_events(self) -> None:
        try:
            events = self.ep.poll(0, 256)
        except InterruptedError:
            return
        self.now = time.perf_counter()
        fds = self.fds
        for fd, ev in events:
            conn = fds.get(fd)
            if conn is None:
                continue
            state = conn.state
            if state == RELAY:
                if fd == conn.fd:
                    if ev & _OUT and conn.down_buf is not None:
                        self._flush(conn, False)
                    if ev & ~_OUT and conn.state == RELAY:
                        self._pump(conn, True, bool(ev & _HUPS))
                else:
                    if ev & _OUT and conn.up_buf is not None:
                        self._flush(conn, True)
                    if ev & ~_OUT and conn.state == RELAY:
                        self._pump(conn, False, bool(ev & _HUPS))
            elif state == HELLO:
                self._on_hello(conn, ev)
            elif state == CONNECTING:
                if fd == conn.bfd:
                    self._on_connected(conn, ev)
                else:
                    conn.ready = True

    def _on_hello(self, conn: FastConn, ev: int) -> None:
        try:
            n = conn.sock.recv_into(self.view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # as the general path: an error before the hello
            self.unpend(conn)
            conn.outcome, conn.error = "error", os_error(exc)
            self._finish(conn)
            return
        if n == 0:
            if conn.data:  # the general path says what a hello cut short is
                self._hand_over(conn)
                return
            self.unpend(conn)
            conn.hello_at = time.perf_counter()  # hello_ms is logged, without a name
            conn.outcome, conn.reason = "closed", "client_closed"
            self._finish(conn)
            return
        data = conn.data + self.buf[:n] if conn.data else bytes(self.view[:n])
        conn.data = data
        conn.reads += 1
        cfg = self.router.config
        name = routing_name(data)
        if name == NEED_MORE:
            if conn.reads >= MAX_HELLO_READS or len(data) > cfg.max_hello_size:
                self._hand_over(conn)
            return
        if name is None or len(data) > cfg.max_hello_size:
            self._hand_over(conn)
            return
        if cfg is not self._config:
            self._configure(cfg)
        routes = self._routes
        route = routes[name] if name in routes else self._route_for(cfg, name)
        if route is None:
            self._hand_over(conn)
            return
        conn.hello_at = time.perf_counter()
        conn.name = name
        conn.route = route
        # Edge-triggered: a close (or more bytes) that came with the hello has no edge left.
        conn.ready = bool(ev & _HUPS) or n == CHUNK
        self.unpend(conn)
        self._dial(conn)

    def _configure(self, cfg: RouterConfig) -> None:
        self._config = cfg
        self._routes.clear()
        mode = cfg.relay if cfg.relay in ("splice", "copy") else "auto"
        self._relay_mode = mode if HAVE_SPLICE else "copy"

    def _route_for(self, cfg: RouterConfig, name: str) -> Route | None:
        """The route for a plain name, if the fast path can serve it (cached)."""
        found = cfg.table.lookup(name)
        route = found.route
        if route is not None and (
            route.proxy_protocol
            or getattr(route, "terminate", None) is not None
            or any(self._address(b) is None for b in route.backends)
        ):
            route = None
        if len(self._routes) >= 4096:
            self._routes.clear()
        self._routes[name] = route
        return route

    def _address(self, backend: Backend) -> tuple[int, Any] | None:
        hit = self._addresses.get(backend)
        if hit is None:
            if backend.path is not None:
                hit = (socket.AF_UNIX, backend.path)
            else:
                try:
                    family = socket.AF_INET6 if ":" in backend.host else socket.AF_INET
                    socket.inet_pton(family, backend.host)
                except OSError:
                    return None  # a name to resolve: the general path does that
                hit = (family, (backend.host, backend.port))
            self._addresses[backend] = hit
        return hit

    # ------------------------------------------------------------------ dial

    def _dial(self, conn: FastConn) -> None:
        """Start dialling the route's backends in the dialer's round-robin order."""
        route = conn.route
        assert route is not None
        conn.order = self.router._services_dialer().order(route.backends)
        conn.state = CONNECTING
        self._try_next(conn)

    def _try_next(self, conn: FastConn) -> None:
        route = conn.route
        assert route is not None
        cfg = self.router.config
        while conn.attempt < len(conn.order):
            backend = route.backends[conn.order[conn.attempt]]
            conn.attempt += 1
            family, address = self._addresses[backend]
            conn.t_dial = time.perf_counter()
            try:
                sock, err = start_connect(family, address)
            except OSError as exc:
                self._dial_failed(conn, backend, os_error(exc))
                continue
            if err and err not in _INPROGRESS:
                sock.close()
                self._dial_failed(conn, backend, os_error(OSError(err, os.strerror(err))))
                continue
            conn.bsock = sock
            conn.bfd = sock.fileno()
            self.fds[conn.bfd] = conn
            self.ep.register(conn.bfd, _BOTH_EVENTS)
            self._arm(conn, conn.t_dial + cfg.connect_timeout)
            return
        # Every backend failed: as the general path, a failed connection.
        conn.outcome = "failed"
        conn.reason = "backend_unavailable"
        self._finish(conn)

    def _dial_failed(self, conn: FastConn, backend: Backend, err: str) -> None:
        label = str(backend)
        self.router.metrics.connect_errors.labels(label, err).inc()
        self.router._services_dialer().failed(backend)
        conn.error = f"{label}: {err}"

    def _on_connected(self, conn: FastConn, ev: int) -> None:
        sock = conn.bsock
        assert sock is not None and conn.route is not None
        # Writable without an error flag is connected: no getsockopt(SO_ERROR) then.
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if ev & _ERRS else 0
        backend = conn.route.backends[conn.order[conn.attempt - 1]]
        if err == 0 and not ev & _OUT:
            return  # not yet
        if err:
            self._drop_backend(conn)
            self._dial_failed(conn, backend, errno.errorcode.get(err, str(err)))
            self._try_next(conn)
            return
        self.router._services_dialer().answered(conn.route.backends, conn.order[conn.attempt - 1])
        conn.connect_s = time.perf_counter() - conn.t_dial
        conn.backend = str(backend)
        conn.error = None
        conn.state = RELAY
        conn.last = self.now
        cfg = self.router.config
        if cfg.idle_timeout:
            self._arm(conn, self.now + cfg.idle_timeout)
        else:
            conn.deadline = float("inf")
        # Replay the hello; a backend that cannot take a few KiB at once is rare.
        data = conn.data
        conn.up = len(data)
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._write_failed(conn, True, exc)
            return
        if sent < len(data):
            conn.up_buf = data[sent:]
        if self._relay_mode == "splice" and conn.up_buf is None:
            self._to_relay(conn)
            return
        if ev & ~_OUT:
            self._pump(conn, False, True)
        if conn.ready and conn.state == RELAY:
            self._pump(conn, True, True)

    def _drop_backend(self, conn: FastConn) -> None:
        if conn.bsock is not None:
            self.fds.pop(conn.bfd, None)
            conn.bsock.close()
            conn.bsock = None
            conn.bfd = -1

    # ------------------------------------------------------------------ relay

    def _pump(self, conn: FastConn, up: bool, drain: bool) -> None:
        """Move what the source has to the destination (up: client -> backend).

        Edge-triggered: after an event with a hang-up flag, or when resuming after
        backpressure (``drain``), read until the source is empty or closed.
        """
        if up:
            if conn.up_buf is not None or conn.up_eof:
                return
            src, dst = conn.sock, conn.bsock
            assert dst is not None
        else:
            if conn.down_buf is not None or conn.down_eof:
                return
            dst, back = conn.sock, conn.bsock
            assert back is not None
            src = back
        view = self.view
        while True:
            try:
                n = src.recv_into(view)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # A reset: pass on what was read before it, then end as at EOF.
                conn.error = conn.error or os_error(exc)
                n = 0
            if n == 0:
                self._eof(conn, up)
                return
            conn.last = self.now
            try:
                sent = dst.send(view[:n])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._write_failed(conn, up, exc)
                return
            if up:
                conn.up += sent
            else:
                conn.down += sent
            if sent < n:
                self._hold(conn, up, bytes(view[sent:n]))
                return
            if n >= AUTO_CHUNK and self._relay_mode != "copy":
                self._to_relay(conn)
                return
            if n < CHUNK and not drain:
                return

    def _hold(self, conn: FastConn, up: bool, rest: bytes) -> None:
        """The destination is full: keep the rest, stop reading the source until it drains."""
        if up:
            conn.up_buf = rest
        else:
            conn.down_buf = rest
            if not conn.out_client:
                conn.out_client = True
                self.ep.modify(conn.fd, _BOTH_EVENTS)

    def _flush(self, conn: FastConn, up: bool) -> None:
        buf = conn.up_buf if up else conn.down_buf
        dst = conn.bsock if up else conn.sock
        assert buf is not None and dst is not None
        try:
            sent = dst.send(buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._write_failed(conn, up, exc)
            return
        rest = buf[sent:] if sent < len(buf) else None
        if up:
            conn.up += sent
            conn.up_buf = rest
        else:
            conn.down += sent
            conn.down_buf = rest
        if rest is not None:
            return
        if (up and conn.up_eof) or (not up and conn.down_eof):
            self._shut(conn, up)
        else:
            self._pump(conn, up, True)  # the source's edge may have passed meanwhile

    def _eof(self, conn: FastConn, up: bool) -> None:
        if up:
            conn.up_eof = True
            if conn.up_buf is None:
                self._shut(conn, True)
        else:
            conn.down_eof = True
            if conn.down_buf is None:
                self._shut(conn, False)

    def _shut(self, conn: FastConn, up: bool) -> None:
        """One direction is done: pass the half-close on (once)."""
        dst = conn.bsock if up else conn.sock
        if up:
            if conn.up_done:
                return
            conn.up_done = True
        else:
            if conn.down_done:
                return
            conn.down_done = True
        if conn.up_done and conn.down_done:
            self._finish(conn)  # closing is enough: no shutdown first
            return
        assert dst is not None
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _write_failed(self, conn: FastConn, up: bool, exc: OSError) -> None:
        """The destination is gone: stop this direction; the other goes on to its end."""
        conn.error = conn.error or os_error(exc)
        if up:
            conn.up_buf = None
            conn.up_eof = conn.up_done = True
        else:
            conn.down_buf = None
            conn.down_eof = conn.down_done = True
        if conn.up_done and conn.down_done:
            self._finish(conn)

    def _to_relay(self, conn: FastConn) -> None:
        """Bulk data: the splice relay takes both directions over, from the loop."""
        assert conn.bsock is not None
        self.fds.pop(conn.fd, None)
        self.fds.pop(conn.bfd, None)
        self.ep.unregister(conn.fd)
        self.ep.unregister(conn.bfd)
        cfg = self.router.config
        conn.state = BULK
        self.bulk.add(conn)
        try:
            conn.relay = Relay(
                self.loop,
                conn.sock,
                conn.bsock,
                self._relay_mode,
                cfg.idle_timeout,
                on_done=lambda: self._relay_done(conn),
            )
        except OSError as exc:
            conn.error = os_error(exc)
            self._finish(conn)
            return
        conn.relay.start()

    def _relay_done(self, conn: FastConn) -> None:
        relay = conn.relay
        assert relay is not None
        conn.up += relay.up.count
        conn.down += relay.down.count
        if relay.error is not None:
            conn.error = relay.error
        if relay.timed_out:
            conn.error = "idle_timeout"
        self._finish(conn)

    # ------------------------------------------------------------------ the end

    def _finish(self, conn: FastConn) -> None:
        if conn.state == DONE:
            return
        if conn.state in (RELAY, BULK) and conn.outcome == "closed":
            conn.outcome = "routed"
        if conn.state == BULK:
            self.bulk.discard(conn)
        conn.state = DONE
        conn.end = time.perf_counter()
        fds = self.fds
        if conn.relay is not None:
            conn.relay.close()
        fds.pop(conn.fd, None)
        conn.sock.close()
        if conn.bsock is not None:
            fds.pop(conn.bfd, None)
            conn.bsock.close()
        if conn.pending_key is not None:
            self.unpend(conn)
        self.active -= 1
        self.log.active_delta -= 1
        self.log.add_fast(conn)
        self.router._connection_done()

    def _hand_over(self, conn: FastConn) -> None:
        """To the general path, with the bytes read so far (which it reads first)."""
        self.fds.pop(conn.fd, None)
        self.ep.unregister(conn.fd)
        conn.state = DONE
        self.active -= 1
        self.log.active_delta -= 1
        self.router.adopt(conn)

    # ------------------------------------------------------------------ deadlines

    def _arm(self, conn: FastConn, deadline: float) -> None:
        """Set the connection's deadline; a heap entry is added only if it is sooner."""
        conn.deadline = deadline
        if conn.entry and conn.entry <= deadline:
            return
        conn.entry = deadline
        self._seq += 1
        heapq.heappush(self.heap, (deadline, self._seq, conn))
        if self._ticker is None:
            self._ticker = self.loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        now = self.now = time.perf_counter()
        heap = self.heap
        cfg = self.router.config
        while heap and heap[0][0] <= now:
            when, _, conn = heapq.heappop(heap)
            if conn.state == DONE or conn.state == BULK or when != conn.entry:
                continue
            conn.entry = 0.0
            if conn.state == RELAY:
                if cfg.idle_timeout and now - conn.last >= cfg.idle_timeout:
                    conn.error = "idle_timeout"
                    self._finish(conn)
                    continue
                conn.deadline = conn.last + cfg.idle_timeout if cfg.idle_timeout else 0.0
            elif conn.deadline <= now:
                if conn.state == HELLO:
                    self._hand_over(conn)  # the general path applies the timeout action
                    continue
                assert conn.route is not None
                backend = conn.route.backends[conn.order[conn.attempt - 1]]
                self._drop_backend(conn)
                self._dial_failed(conn, backend, "timeout")
                self._try_next(conn)
                continue
            if conn.deadline:
                self._arm(conn, conn.deadline)
        if heap and self._ticker is None:
            self._ticker = self.loop.call_later(TICK, self._tick)

    async def drain(self, until: float) -> None:
        """Wait for the connections to finish until loop time ``until``; close the rest."""
        while self.active and self.loop.time() < until:
            await asyncio.sleep(TICK)
        for conn in [*self.fds.values(), *self.bulk]:
            if conn.state in (RELAY, CONNECTING, BULK):
                conn.outcome, conn.reason = "aborted", "shutdown"
            self._finish(conn)
        for waiting in list(self.router._pending):
            if isinstance(waiting, FastConn):
                self.evict(waiting)
