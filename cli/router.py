"""The asyncio router: accept, peek at the ClientHello, pick a backend, replay, relay.

For each connection (one task each)::

    accept ──> [PROXY header] ──> peek: clienthello.Reader ──> route table ──> dial backend
                                    │ not TLS / malformed / too large / timeout │ (round robin)
                                    └──> per-reason action: fallback | alert | close
    replay every byte read, verbatim ──> relay both ways (splice, or recv/send) ──> close

The router works on raw non-blocking sockets with ``loop.add_reader``/``add_writer``
rather than streams or transports, so that after the peek the two sockets can be joined
by the kernel: ``os.splice`` moves bytes socket -> pipe -> socket without copying them
into Python (Linux); elsewhere a recv_into/send loop does the same job. Either way a
direction stops reading while its destination cannot take more (backpressure), an EOF
is passed on as a half-close, and nothing is closed until both directions are done or
the connection has been idle for ``idle_timeout``. A reset is treated like an EOF once
every byte read before it has been passed on (the log keeps the error), and a peer that
can no longer be written to stops only its own direction: an answer it sent before
closing still reaches the client.

Only backends from the configuration are ever dialled, whatever a client sends.

Embedding::

    router = Router(config)
    await router.start()          # binds every listener
    router.addresses              # [(host, port), ...] as bound (port 0 -> real port)
    router.reload(new_config)     # routes, actions, limits; connections in flight stay
    await router.stop()           # stop accepting, drain up to drain_timeout, then close
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import ipaddress
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import clienthello
from sniinspect.config import Action, ListenerConfig, RouterConfig
from sniinspect.routes import Backend, Route

__all__ = ["Router", "alert_record", "ConnectionLog"]

log = logging.getLogger("sniinspect.router")

# RFC 8446 §6: a fatal (2) alert, in a record of content type 21.
ALERT_LEVEL_FATAL = 2
CONTENT_TYPE_ALERT = 0x15
# Bytes moved per splice/recv; 1 MiB pipes make bulk transfers cheap per system call.
PIPE_SIZE = 1 << 20
COPY_CHUNK = 1 << 18
# relay = "auto" starts every direction with a small buffer and moves it to splice once
# a read fills that buffer (bulk data is flowing), as HAProxy's splice-auto does: a
# short exchange (a TLS handshake, an API call) then never pays for two 1 MiB pipes.
AUTO_CHUNK = 1 << 14
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
HAVE_SPLICE = hasattr(os, "splice") and sys.platform.startswith("linux")
# How long to keep reading (and discarding) after answering with an alert, so that the
# client's unread bytes do not turn our close into a reset that destroys the alert.
LINGER_AFTER_ALERT = 1.0
# Errors from accept() that mean "out of a resource", worth a pause rather than a spin.
_ACCEPT_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# A backend that failed a connect is tried last for this long (passive health check).
BACKEND_RETRY_AFTER = 2.0
_ACCEPT_BATCH = 64  # accept() calls per readiness event, so one listener cannot starve others
_HTTP_METHODS = (
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
)


def alert_record(description: int, first_bytes: bytes = b"") -> bytes:
    """A fatal TLS alert record, in the record version the client's hello used.

    The record version mirrors the first record header the client sent (clamped to TLS
    1.0..1.2, RFC 8446 §5.1: 0x0301 for compatibility is allowed before a version is
    negotiated), so that the client, which already wrote that version, can read it.
    Without a TLS record from the client, 0x0301.

    Args:
        description: the AlertDescription (112 unrecognized_name, 50 decode_error, ...).
        first_bytes: what the client sent, to read its record version from.

    Returns:
        ``15 03 0x 00 02 02 <description>``.
    """
    minor = 1
    if len(first_bytes) >= 3 and first_bytes[0] == 0x16 and first_bytes[1] == 3:
        minor = min(max(first_bytes[2], 1), 3)
    return bytes((CONTENT_TYPE_ALERT, 3, minor, 0, 2, ALERT_LEVEL_FATAL, description))


class _Timeout(Exception):
    """A deadline passed while waiting on a socket."""


class _Evicted(Exception):
    """A connection waiting for its hello was pushed out by the pending limit."""


@dataclass
class ConnectionLog:
    """What is known about one connection; becomes one JSON log line at its end."""

    time: float
    client: str
    listener: str
    started: float  # loop.time(), for deadlines
    clock: float  # time.perf_counter(), for the durations logged: uvloop's loop.time()
    # only moves in whole milliseconds
    worker: int | None = None
    proxied_from: str | None = None
    sni: str | None = None
    sni_problems: list[str] | None = None
    alpn: list[str] | None = None
    tls_versions: list[str] | None = None
    ja4: str | None = None
    route: str | None = None
    backend: str | None = None
    outcome: str = "closed"
    reason: str | None = None
    error: str | None = None
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    hello_ms: float | None = None
    connect_ms: float | None = None
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.time))
        out: dict[str, Any] = {"time": f"{stamp}.{int(self.time % 1 * 1000):03d}Z"}
        for key, value in self.__dict__.items():
            if key in ("time", "started", "clock") or value is None:
                continue
            out[key] = value
        return out


class _Metrics:
    """Prometheus metrics of one router (its own registry unless one is given)."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connections = Counter(
            "sniinspect_connections",
            "Connections handled, by outcome and reason",
            ["outcome", "reason"],
            registry=r,
        )
        self.active = Gauge(
            "sniinspect_active_connections",
            "Connections open now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pending = Gauge(
            "sniinspect_pending_connections",
            "Connections still waiting for their hello",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.bytes = Counter("sniinspect_bytes", "Bytes relayed", ["direction"], registry=r)
        self.hello_seconds = Histogram(
            "sniinspect_hello_wait_seconds",
            "Time from accept to a complete ClientHello",
            registry=r,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
        )
        self.connect_seconds = Histogram(
            "sniinspect_backend_connect_seconds",
            "Time to connect to a backend",
            ["backend"],
            registry=r,
            buckets=(0.0002, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )
        self.connect_errors = Counter(
            "sniinspect_backend_connect_errors",
            "Failed connects to a backend",
            ["backend", "error"],
            registry=r,
        )
        self.accept_errors = Counter(
            "sniinspect_accept_errors", "accept() failures", ["errno"], registry=r
        )


@dataclass(eq=False)
class _Listener:
    config: ListenerConfig
    sock: socket.socket
    address: tuple[str, int]
    accepting: bool = False
    backoff: float = 0.0
    resume: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    peer: tuple[str, int]
    listener: _Listener
    record: ConnectionLog
    task: asyncio.Task[None] | None = None
    pending_key: str | None = None
    evicted: bool = False
    backend_sock: socket.socket | None = None
    relay: _Relay | None = field(default=None, repr=False)
    hello: clienthello.ClientHello | None = field(default=None, repr=False)


class Router:
    """The SNI router: listeners, route table and every connection in flight.

    Args:
        config: a validated `RouterConfig`.
        log_stream: where connection log lines go (default: ``config.log_file`` or stderr).
        on_log: called with each connection's log dict (tests, embedding).
        registry: a prometheus_client registry for the metrics (default: a new one).
        reuse_port: set SO_REUSEPORT on listeners (for several worker processes).
        worker: this process's worker number, added to each log line (with --workers).
    """

    def __init__(
        self,
        config: RouterConfig,
        *,
        log_stream: IO[str] | None = None,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        registry: Any = None,
        reuse_port: bool = False,
        worker: int | None = None,
    ) -> None:
        self.config = config
        self._worker = worker
        self.metrics = _Metrics(registry)
        self._on_log = on_log
        self._log_stream = log_stream
        self._own_log = False
        self._reuse_port = reuse_port
        self._listeners: list[_Listener] = []
        self._conns: set[_Conn] = set()
        self._pending: dict[_Conn, None] = {}  # insertion-ordered: oldest first
        self._pending_by_client: dict[str, int] = {}
        self._round_robin: dict[Route, int] = {}
        self._down_until: dict[Backend, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._paused_for_limit = False
        self._idle: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listener, in configuration order."""
        return [lst.address for lst in self._listeners]

    @property
    def active_connections(self) -> int:
        """Connections open now (waiting for a hello, or relaying)."""
        return len(self._conns)

    @property
    def pending_connections(self) -> int:
        """Connections still waiting for their hello."""
        return len(self._pending)

    async def start(self) -> None:
        """Bind every listener and start accepting.

        Raises:
            OSError: a listener cannot be bound (nothing is left bound then).
        """
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        if self._log_stream is None:
            self._open_log(self.config)
        try:
            for lconf in self.config.listeners:
                self._listeners.append(self._bind(lconf))
        except OSError:
            for lst in self._listeners:
                lst.sock.close()
            self._listeners.clear()
            raise
        for lst in self._listeners:
            self._start_accepting(lst)

    def _open_log(self, config: RouterConfig) -> None:
        """Open the connection log the configuration names (or stderr).

        Raises:
            OSError: the file cannot be opened.
        """
        if not config.connection_log:
            return
        if config.log_file and config.log_file != "-":
            self._log_stream = open(config.log_file, "a", buffering=1)  # noqa: SIM115
            self._own_log = True
        else:
            self._log_stream = sys.stderr

    def _bind(self, lconf: ListenerConfig) -> _Listener:
        family = socket.AF_INET6 if ":" in lconf.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # "[::]" means IPv6 only, as nginx does; listen on 0.0.0.0 too for IPv4.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((lconf.host, lconf.port))
            sock.listen(4096)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {lconf.address}: {exc.strerror}") from None
        host, port = sock.getsockname()[:2]
        return _Listener(lconf, sock, (host, port))

    def reload(self, config: RouterConfig) -> None:
        """Use a new configuration from now on; connections in flight are not touched.

        Routes, actions, timeouts and limits apply to connections accepted from now on.
        Listeners are compared by address: new ones are bound, removed ones closed
        (their connections stay), the options of kept ones updated.

        Raises:
            OSError: a new listener cannot be bound (the old configuration stays).
        """
        old: dict[tuple[str, int], _Listener] = {}
        for lst in self._listeners:
            # Known by the port configured and by the port bound (they differ for port 0).
            old[(lst.config.host, lst.address[1])] = lst
            old[(lst.config.host, lst.config.port)] = lst
        new_keys = [(lc.host, lc.port) for lc in config.listeners]
        added: list[_Listener] = []
        try:
            for lconf in config.listeners:
                if (lconf.host, lconf.port) not in old:
                    added.append(self._bind(lconf))
        except OSError:
            for lst in added:
                lst.sock.close()
            raise
        kept: list[_Listener] = []
        by_key = {(lst.config.host, lst.config.port): lst for lst in added}
        for lconf, key in zip(config.listeners, new_keys, strict=True):
            lst = old.get(key) or by_key[key]
            lst.config = lconf
            kept.append(lst)
        for lst in set(old.values()) - set(kept):
            self._close_listener(lst)
        self._listeners = kept
        if self._own_log or self._log_stream is sys.stderr or self._log_stream is None:
            # Reopen the log file, so that SIGHUP after logrotate moves it works as usual.
            old_stream, own = self._log_stream, self._own_log
            self._log_stream, self._own_log = None, False
            try:
                self._open_log(config)
            except OSError as exc:
                log.error("cannot open %s: %s; keeping the old log", config.log_file, exc)
                self._log_stream, self._own_log = old_stream, own
                old_stream = None
            if own and old_stream is not None:
                old_stream.close()
        self.config = config
        for lst in added:
            self._start_accepting(lst)
        log.info("configuration reloaded: %d routes", len(config.table.routes))

    async def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let connections finish for up to ``drain_timeout``, close the rest.

        Args:
            drain_timeout: seconds to wait (default: the configuration's drain_timeout).
        """
        self._closing = True
        for lst in self._listeners:
            self._close_listener(lst)
        self._listeners.clear()
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        # Connections still waiting for a hello have nothing to lose: close them now.
        for conn in list(self._pending):
            if conn.task is not None:
                conn.task.cancel()
        if self._conns and self._idle is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        tasks = [c.task for c in self._conns if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_log and self._log_stream is not None:
            self._log_stream.close()
            self._log_stream = None

    def _close_listener(self, lst: _Listener) -> None:
        self._stop_accepting(lst)
        if lst.resume is not None:
            lst.resume.cancel()
            lst.resume = None
        lst.sock.close()

    # ------------------------------------------------------------------ accepting

    def _start_accepting(self, lst: _Listener) -> None:
        if lst.accepting or self._closing or lst.sock.fileno() < 0:
            return
        assert self._loop is not None
        self._loop.add_reader(lst.sock.fileno(), self._on_accept, lst)
        lst.accepting = True

    def _stop_accepting(self, lst: _Listener) -> None:
        if lst.accepting and self._loop is not None and lst.sock.fileno() >= 0:
            self._loop.remove_reader(lst.sock.fileno())
        lst.accepting = False

    def _on_accept(self, lst: _Listener) -> None:
        for _ in range(_ACCEPT_BATCH):
            if len(self._conns) >= self.config.max_connections:
                self._pause_for_limit()
                return
            try:
                sock, peer = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                lst.backoff = 0.0
                return
            except OSError as exc:
                self._accept_error(lst, exc)
                return
            try:
                self._new_connection(lst, sock, peer)
            except Exception:  # one connection's setup must never stop the listener
                log.exception("setting up a connection from %s failed", peer)
                sock.close()

    def _accept_error(self, lst: _Listener, exc: OSError) -> None:
        self.metrics.accept_errors.labels(errno.errorcode.get(exc.errno or 0, "?")).inc()
        if exc.errno in _ACCEPT_RESOURCE_ERRNOS:
            # Out of descriptors or memory: retrying at once would spin; back off, and let
            # connections that finish meanwhile give the resource back (trio does this).
            lst.backoff = min(max(lst.backoff * 2, 0.05), 1.0)
            log.warning(
                "accept on %s failed: %s; retrying in %.2fs",
                lst.config.address,
                exc.strerror,
                lst.backoff,
            )
            self._stop_accepting(lst)
            assert self._loop is not None
            lst.resume = self._loop.call_later(lst.backoff, self._resume, lst)
        else:
            # ECONNABORTED, EPROTO, EPERM (firewall)...: that one connection is gone.
            log.debug("accept on %s: %s", lst.config.address, exc)

    def _resume(self, lst: _Listener) -> None:
        lst.resume = None
        if lst in self._listeners:
            self._start_accepting(lst)

    def _pause_for_limit(self) -> None:
        # As HAProxy's maxconn: stop accepting, leaving new clients in the kernel's backlog
        # rather than accepting and dropping them.
        if not self._paused_for_limit:
            self._paused_for_limit = True
            log.warning(
                "max_connections (%d) reached; accepting paused", self.config.max_connections
            )
            for lst in self._listeners:
                self._stop_accepting(lst)

    def _new_connection(self, lst: _Listener, sock: socket.socket, peer: Any) -> None:
        assert self._loop is not None
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = (_plain_ip(peer[0]), peer[1])
        now = time.time()
        record = ConnectionLog(
            time=now,
            client=_fmt_addr(peer),
            listener=_fmt_addr(lst.address),
            started=self._loop.time(),
            clock=time.perf_counter(),
            worker=self._worker,
        )
        conn = _Conn(sock, peer, lst, record)
        cfg = self.config
        # A front load balancer speaking PROXY protocol is one address for many
        # clients: the per-client cap would throttle all of them together.
        key = None if lst.config.accept_proxy else peer[0]
        if key is not None and self._pending_by_client.get(key, 0) >= cfg.max_pending_per_client:
            record.outcome, record.reason = "rejected", "client_pending_limit"
            sock.close()
            self._finish_log(conn)
            return
        if len(self._pending) >= cfg.max_pending:
            oldest = next(iter(self._pending))
            oldest.evicted = True
            self._unpend(oldest)
            if oldest.task is not None:
                oldest.task.cancel()
        conn.pending_key = key or ""
        self._pending[conn] = None
        if key is not None:
            self._pending_by_client[key] = self._pending_by_client.get(key, 0) + 1
        self.metrics.pending.inc()
        self._conns.add(conn)
        if self._idle is not None:
            self._idle.clear()
        self.metrics.active.inc()
        conn.task = self._loop.create_task(self._handle(conn))

    def _unpend(self, conn: _Conn) -> None:
        if conn.pending_key is None:
            return
        self._pending.pop(conn, None)
        if conn.pending_key:
            left = self._pending_by_client.get(conn.pending_key, 1) - 1
            if left <= 0:
                self._pending_by_client.pop(conn.pending_key, None)
            else:
                self._pending_by_client[conn.pending_key] = left
        conn.pending_key = None
        self.metrics.pending.dec()

    # ------------------------------------------------------------------ one connection

    async def _handle(self, conn: _Conn) -> None:
        assert self._loop is not None
        cfg = self.config
        rec = conn.record
        try:
            try:
                await self._serve(conn, cfg)
            except asyncio.CancelledError:
                if conn.evicted:
                    rec.outcome, rec.reason = "rejected", "pending_limit"
                elif rec.outcome in ("closed", "relaying"):
                    rec.outcome, rec.reason = "aborted", rec.reason or "shutdown"
                if not conn.evicted:
                    raise
            except _Timeout:
                rec.outcome, rec.reason = "closed", rec.reason or "idle_timeout"
            except OSError as exc:
                rec.outcome = "error" if rec.outcome == "closed" else rec.outcome
                rec.error = _os_error(exc)
            except Exception as exc:  # a bug must cost one connection, never the router
                log.exception("connection from %s failed", rec.client)
                rec.outcome, rec.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            self._unpend(conn)
            if conn.relay is not None:
                conn.relay.close()
                rec.bytes_from_client += conn.relay.up.count
                rec.bytes_to_client += conn.relay.down.count
            if conn.backend_sock is not None:
                conn.backend_sock.close()
            conn.sock.close()
            self._conns.discard(conn)
            self.metrics.active.dec()
            if rec.outcome == "relaying":
                rec.outcome = "routed" if rec.reason is None else "fallback"
            self._finish_log(conn)
            if not self._conns and self._idle is not None:
                self._idle.set()
            if self._paused_for_limit and len(self._conns) < cfg.max_connections:
                self._paused_for_limit = False
                for lst in self._listeners:
                    self._start_accepting(lst)

    async def _serve(self, conn: _Conn, cfg: RouterConfig) -> None:
        assert self._loop is not None
        rec = conn.record
        deadline = rec.started + cfg.hello_timeout
        first = b""
        proxy_dst: tuple[str, int] | None = None
        if conn.listener.config.accept_proxy:
            info = await self._read_proxy_header(conn, deadline)
            if info is None:
                return
            first, proxy_dst = info
        hello, reason, data = await self._peek(conn, cfg, first, deadline)
        rec.hello_ms = round((time.perf_counter() - rec.clock) * 1000, 3)
        rec.bytes_from_client = len(data)
        self._unpend(conn)
        if hello is not None:
            self.metrics.hello_seconds.observe(rec.hello_ms / 1000)
            # Only the name now; the rest of the log fields (JA4 among them) are
            # worked out when the line is written, off the path to the backend.
            rec.sni = hello.server_name
            conn.hello = hello
        if reason == "client_closed":
            rec.outcome, rec.reason = "closed", reason
            return
        route: Route | None = None
        is_http = reason == "http"
        if hello is not None and reason is None:
            found = cfg.table.lookup(hello.server_name, hello.server_name_problems)
            route, reason = found.route, found.reason
        elif reason == "http":
            route, reason = self._route_http(cfg, data, rec)
        if route is None:
            assert reason is not None
            action = cfg.actions.get(reason) or Action("close")
            rec.reason = reason
            if action.kind == "alert" and not is_http:  # a TLS alert means nothing to HTTP
                alert = alert_record(action.alert, data)
                rec.outcome = "alerted"
                await self._answer_alert(conn, alert)
                rec.bytes_to_client = len(alert)
                return
            if action.kind == "close" or action.route is None:
                rec.outcome = "closed"
                await self._close_gently(conn)
                return
            route = action.route
        rec.route = route.label
        backend_sock = await self._connect(conn, route, cfg)
        if backend_sock is None:
            rec.outcome = "failed"
            rec.reason = rec.reason or "backend_unavailable"
            return
        rec.outcome = "relaying"
        if route.proxy_protocol:
            data = self._proxy_header(conn, route, hello, proxy_dst) + data
        await _send_all(self._loop, backend_sock, data, cfg.idle_timeout or None)
        relay = _Relay(self._loop, conn.sock, backend_sock, cfg.relay, cfg.idle_timeout)
        conn.relay = relay
        await relay.run()
        if relay.error is not None:
            rec.error = relay.error
        if relay.timed_out:
            rec.error = "idle_timeout"

    async def _read_proxy_header(
        self, conn: _Conn, deadline: float
    ) -> tuple[bytes, tuple[str, int] | None] | None:
        from sniinspect.proxyproto import ProxyHeaderParser, ProxyProtocolError

        assert self._loop is not None
        parser = ProxyHeaderParser()
        rec = conn.record
        try:
            while True:
                chunk = await _recv(self._loop, conn.sock, deadline)
                info = parser.feed(chunk)
                if info is not None:
                    break
        except ProxyProtocolError as exc:
            rec.outcome, rec.reason, rec.error = "rejected", "bad_proxy_header", str(exc)
            return None
        except _Timeout:
            rec.outcome, rec.reason = "closed", "timeout"
            return None
        rec.proxied_from = rec.client
        if info.command == "PROXY" and info.src is not None:
            rec.client = _fmt_addr((_plain_ip(info.src[0]), info.src[1]))
        dst = info.dst if info.command == "PROXY" else None
        return parser.remainder, dst

    async def _peek(
        self, conn: _Conn, cfg: RouterConfig, first: bytes, deadline: float
    ) -> tuple[clienthello.ClientHello | None, str | None, bytes]:
        """Read until the hello is complete; return (hello, reason, every byte read)."""
        assert self._loop is not None
        reader = clienthello.Reader(max_size=cfg.max_hello_size)
        chunk = first
        try:
            while True:
                if chunk:
                    hello = reader.feed(chunk)
                    if hello is not None:
                        return hello, None, reader.buffered
                chunk = await _recv(self._loop, conn.sock, deadline)
                if not chunk:
                    return None, "client_closed", reader.buffered
        except clienthello.NotTLS:
            data = reader.buffered
            if conn.listener.config.http_host and _maybe_http(data):
                return await self._peek_http(conn, cfg, data, deadline)
            return None, "not_tls", data
        except clienthello.HelloTooLarge:
            return None, "too_large", reader.buffered
        except clienthello.MalformedHello as exc:
            conn.record.error = str(exc)
            return None, "malformed", reader.buffered
        except _Timeout:
            return None, "timeout", reader.buffered

    async def _peek_http(
        self, conn: _Conn, cfg: RouterConfig, data: bytes, deadline: float
    ) -> tuple[None, str | None, bytes]:
        assert self._loop is not None
        if not _maybe_http(data):
            return None, "not_tls", data
        buf = bytearray(data)
        try:
            while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
                if len(buf) > cfg.max_hello_size:
                    return None, "too_large", bytes(buf)
                chunk = await _recv(self._loop, conn.sock, deadline)
                if not chunk:
                    return None, "client_closed", bytes(buf)
                buf += chunk
        except _Timeout:
            return None, "timeout", bytes(buf)
        return None, "http", bytes(buf)

    def _route_http(
        self, cfg: RouterConfig, data: bytes, rec: ConnectionLog
    ) -> tuple[Route | None, str | None]:
        host = _http_host(data)
        rec.sni = host
        if host is None:
            return None, "no_sni"
        found = cfg.table.lookup(host, () if _hostname_ok(host) else ("invalid characters",))
        return found.route, found.reason

    def _describe(self, rec: ConnectionLog, hello: clienthello.ClientHello) -> None:
        rec.sni = hello.server_name
        if hello.server_name_problems:
            rec.sni_problems = list(hello.server_name_problems)
        if hello.alpn_protocols is not None:
            rec.alpn = [p.decode("ascii", "backslashreplace") for p in hello.alpn_protocols]
        versions = hello.supported_versions or (hello.legacy_version,)
        rec.tls_versions = [
            clienthello.version_name(v) for v in versions if not clienthello.is_grease(v)
        ]
        try:
            rec.ja4 = clienthello.ja4(hello)
        except Exception:  # a fingerprint bug must not cost the connection
            log.exception("ja4 failed")

    async def _answer_alert(self, conn: _Conn, alert: bytes) -> None:
        assert self._loop is not None
        with contextlib.suppress(OSError, _Timeout):
            await _send_all(self._loop, conn.sock, alert, 1.0)
        await self._close_gently(conn)

    async def _close_gently(self, conn: _Conn) -> None:
        """Half-close, then read and discard briefly so the close is a FIN, not a reset."""
        assert self._loop is not None
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        deadline = self._loop.time() + LINGER_AFTER_ALERT
        with contextlib.suppress(OSError, _Timeout):
            for _ in range(16):
                if not await _recv(self._loop, conn.sock, deadline):
                    break

    async def _connect(self, conn: _Conn, route: Route, cfg: RouterConfig) -> socket.socket | None:
        """Dial the route's next backend, round robin; skip ones that fail.

        A backend that refused or timed out is passed over for `BACKEND_RETRY_AFTER`
        seconds (tried last, not never: if every backend is down, try them all).
        """
        assert self._loop is not None
        backends = route.backends
        count = len(backends)
        start = self._round_robin.get(route, 0) % count
        now = self._loop.time()
        order = [(start + i) % count for i in range(count)]
        if self._down_until:
            order.sort(key=lambda i: self._down_until.get(backends[i], 0.0) > now)
        rec = conn.record
        for index in order:
            backend = backends[index]
            label = str(backend)
            t0 = time.perf_counter()
            try:
                sock = await _dial(self._loop, backend, cfg.connect_timeout)
            except (OSError, _Timeout) as exc:
                err = "timeout" if isinstance(exc, _Timeout) else _os_error(exc)
                self.metrics.connect_errors.labels(label, err).inc()
                self._down_until[backend] = self._loop.time() + BACKEND_RETRY_AFTER
                rec.error = f"{label}: {err}"
                log.debug("connect to %s failed: %s", label, err)
                continue
            self._down_until.pop(backend, None)
            # The next connection starts after the one that answered, so a dead
            # backend does not double the share of the one listed after it.
            self._round_robin[route] = index + 1
            elapsed = time.perf_counter() - t0
            self.metrics.connect_seconds.labels(label).observe(elapsed)
            rec.connect_ms = round(elapsed * 1000, 3)
            rec.backend = label
            rec.error = None
            conn.backend_sock = sock
            return sock
        return None

    def _proxy_header(
        self,
        conn: _Conn,
        route: Route,
        hello: clienthello.ClientHello | None,
        proxy_dst: tuple[str, int] | None,
    ) -> bytes:
        from sniinspect.proxyproto import build_v1, build_v2

        src = _split_addr(conn.record.client) or conn.peer
        dst = proxy_dst or _local(conn.sock)
        if _is_v4(src[0]) != _is_v4(dst[0]):
            src, dst = (_as_v6(src[0]), src[1]), (_as_v6(dst[0]), dst[1])
        if route.proxy_protocol == 1:
            return build_v1(src, dst)
        sni = hello.server_name if hello is not None else conn.record.sni
        alpn = hello.alpn_protocols[0] if hello is not None and hello.alpn_protocols else None
        return build_v2(src, dst, authority=sni, alpn=alpn)

    def _finish_log(self, conn: _Conn) -> None:
        rec = conn.record
        assert self._loop is not None
        rec.duration_ms = round((time.perf_counter() - rec.clock) * 1000, 3)
        self.metrics.connections.labels(rec.outcome, rec.reason or "").inc()
        if rec.bytes_from_client:
            self.metrics.bytes.labels("from_client").inc(rec.bytes_from_client)
        if rec.bytes_to_client:
            self.metrics.bytes.labels("to_client").inc(rec.bytes_to_client)
        if self._on_log is None and (self._log_stream is None or not self.config.connection_log):
            return
        if conn.hello is not None:
            self._describe(rec, conn.hello)
        line = rec.as_dict()
        if self._on_log is not None:
            self._on_log(line)
        if self._log_stream is not None and self.config.connection_log:
            # A full disk or a closed stream must not stop routing.
            with contextlib.suppress(OSError, ValueError):
                self._log_stream.write(json.dumps(line, separators=(",", ":")) + "\n")


# ---------------------------------------------------------------------- relaying


class _Direction:
    """Bytes one way, src -> dst, with the kernel pipe (splice) or a buffer (copy)."""

    __slots__ = (
        "auto",
        "buf",
        "count",
        "done",
        "dst",
        "dst_sock",
        "end",
        "eof",
        "held",
        "pipe_r",
        "pipe_w",
        "reading",
        "relay",
        "src",
        "start",
        "upgradable",
        "view",
        "writing",
    )

    def __init__(self, relay: _Relay, src: socket.socket, dst: socket.socket, mode: str):
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
        self.held = 0  # bytes in the pipe / buffer not yet written
        self.buf: bytearray | None = None
        self.view: memoryview | None = None
        self.start = self.end = 0
        self.upgradable = mode == "auto"  # may move to splice once bulk data shows
        self.auto = False  # move to splice as soon as the buffer is drained
        if mode == "splice":
            self._open_pipe()
        else:
            self.buf = bytearray(COPY_CHUNK if mode == "copy" else AUTO_CHUNK)
            self.view = memoryview(self.buf)

    def _open_pipe(self) -> None:
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pipe_w, F_SETPIPE_SZ, PIPE_SIZE)

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
                n = os.splice(
                    self.src, self.pipe_w, PIPE_SIZE, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
                )
            else:
                assert self.view is not None
                n = os.readv(self.src, [self.view])
                if n == len(self.view) and self.upgradable:
                    self.auto = True  # a full buffer: bulk data, splice from now on
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # The source reset: pass on everything read from it before, then end this
            # direction as at EOF. The error goes to the log.
            self.relay.error = self.relay.error or _os_error(exc)
            n = 0
        if n == 0:
            self.eof = True
            self._want_read(False)
        else:
            self.held += n
            self.end = n
            self.start = 0
            self.relay.last = self.relay.loop.time()
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
                # The destination is full: stop reading the source until it drains
                # (backpressure), and wait for it to take more.
                self._want_read(False)
                self._want_write(True)
                return
            except OSError as exc:
                self.relay.write_failed(self, exc)
                return
            self.held -= n
            self.count += n
            self.relay.last = self.relay.loop.time()
        if self.auto and not self.eof:
            # The buffer is empty, so bytes stay in order across the switch.
            self.auto = self.upgradable = False
            try:
                self._open_pipe()
            except OSError:  # out of descriptors: stay with the buffer
                self.pipe_r = self.pipe_w = -1
            else:
                self.buf = self.view = None
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

    def stop(self) -> None:
        self._want_read(False)
        self._want_write(False)
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                os.close(fd)
        self.pipe_r = self.pipe_w = -1


class _Relay:
    """Both directions of one connection; `run` returns when both are done."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        backend: socket.socket,
        mode: str,
        idle_timeout: float,
    ) -> None:
        self.loop = loop
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
        self.future: asyncio.Future[None] = loop.create_future()
        self.up = _Direction(self, client, backend, self.mode)
        try:
            self.down = _Direction(self, backend, client, self.mode)
        except OSError:
            self.up.stop()
            raise

    async def run(self) -> None:
        self.up.begin()
        self.down.begin()
        if self.idle:
            self.timer = self.loop.call_later(self.idle, self._check_idle)
        await self.future

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

    def write_failed(self, direction: _Direction, exc: OSError) -> None:
        """The destination of ``direction`` is gone (EPIPE, reset): stop that direction.

        The other direction goes on until its own end, so that an answer the peer sent
        before closing (an HTTP 413 to an upload, a TLS alert) still reaches the client.
        """
        self.error = self.error or _os_error(exc)
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
        if not self.future.done():
            self.future.set_result(None)

    def close(self) -> None:
        self.finished = True
        self.up.stop()
        self.down.stop()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


# ---------------------------------------------------------------------- socket helpers


async def _wait(
    loop: asyncio.AbstractEventLoop, fd: int, write: bool, deadline: float | None
) -> None:
    """Wait until ``fd`` is readable (or writable); raise `_Timeout` at ``deadline``."""
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    def expired() -> None:
        if not fut.done():
            fut.set_exception(_Timeout())

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    timer = loop.call_at(deadline, expired) if deadline is not None else None
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()


async def _recv(loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float) -> bytes:
    while True:
        try:
            return sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            pass
        if loop.time() >= deadline:
            raise _Timeout
        await _wait(loop, sock.fileno(), False, deadline)


async def _send_all(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, timeout: float | None
) -> None:
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view)
        except (BlockingIOError, InterruptedError):
            deadline = loop.time() + timeout if timeout else None
            await _wait(loop, sock.fileno(), True, deadline)
            continue
        view = view[n:]


async def _dial(loop: asyncio.AbstractEventLoop, backend: Backend, timeout: float) -> socket.socket:
    deadline = loop.time() + timeout
    if backend.path is not None:
        targets: list[tuple[int, Any]] = [(socket.AF_UNIX, backend.path)]
    else:
        fam = _ip_family(backend.host)
        if fam is not None:
            targets = [(fam, (backend.host, backend.port))]
        else:
            infos = await loop.getaddrinfo(backend.host, backend.port, type=socket.SOCK_STREAM)
            targets = [(info[0], info[4]) for info in infos]
    last: Exception = OSError(errno.EHOSTUNREACH, "no address")
    for family, address in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(address)
            if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                await _wait(loop, sock.fileno(), True, deadline)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            return sock
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, (OSError, _Timeout)):
                raise
            last = exc
    raise last


@functools.lru_cache(maxsize=1024)
def _ip_family(host: str) -> int | None:
    """AF_INET/AF_INET6 for an IP literal, None for a name to resolve."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _maybe_http(data: bytes) -> bool:
    head = data[:8]
    return any(m.startswith(head[: len(m)]) or head.startswith(m) for m in _HTTP_METHODS) and bool(
        head
    )


def _http_host(data: bytes) -> str | None:
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace")
            if host.startswith("["):
                return host[1 : host.find("]")] if "]" in host else None
            return host.rsplit(":", 1)[0] if ":" in host else host
    return None


def _hostname_ok(host: str) -> bool:
    return bool(host) and all((c.isalnum() and c.isascii()) or c in "-._" for c in host)


def _plain_ip(host: str) -> str:
    """``::ffff:1.2.3.4`` -> ``1.2.3.4``: an IPv4 client on a dual-stack socket."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def _is_v4(host: str) -> bool:
    return ":" not in host


def _as_v6(host: str) -> str:
    return f"::ffff:{host}" if _is_v4(host) else host


def _fmt_addr(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_addr(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _local(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return _plain_ip(name[0]), name[1]


def _os_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__
