"""The router's server side: listeners, accepting, connection limits, reload and drain.

Embedding::

    router = Router(config)
    await router.start()          # binds every listener
    router.addresses              # [(host, port), ...] as bound (port 0 -> real port)
    router.reload(new_config)     # routes, actions, limits; connections in flight stay
    await router.stop()           # stop accepting, drain up to drain_timeout, then close

Each accepted connection runs as one task (`sniinspect.route.connection.Connection`);
the server owns only what they share: the listeners, the limits and the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from sniinspect.route.backends import Dialer
from sniinspect.route.config import ListenerConfig, RouterConfig
from sniinspect.route.connection import Connection, Services
from sniinspect.route.fastlog import LogBuffer
from sniinspect.route.fastpath import HAVE_FAST_PATH, FastConn, FastPath
from sniinspect.route.observe import ConnectionLog, ConnectionLogWriter, Metrics
from sniinspect.route.quic import QuicProxy
from sniinspect.route.sockets import Timeout, fmt_addr, os_error, plain_ip

if TYPE_CHECKING:
    from sniinspect.route.terminate import CertificateStore

__all__ = ["Router"]

log = logging.getLogger("sniinspect.router")

# Errors from accept() that mean "out of a resource", worth a pause rather than a spin.
_ACCEPT_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_BATCH = 64  # accept() calls per readiness event, so one listener cannot starve others


@dataclass(eq=False)
class _Listener:
    """One listening socket, with its configuration and accept state."""

    config: ListenerConfig
    sock: socket.socket
    address: tuple[str, int]
    accepting: bool = False
    backoff: float = 0.0
    resume: asyncio.TimerHandle | None = None
    label: str = ""  # the address as log lines show it
    family: int = socket.AF_INET


class Router:
    """The SNI router: listeners, route table and every connection in flight.

    Args:
        config: a validated `RouterConfig`.
        log_stream: where connection log lines go (default: ``config.log_file`` or stderr).
        on_log: called with each connection's log dict (tests, embedding).
        registry: a prometheus_client registry for the metrics (default: a new one).
        reuse_port: set SO_REUSEPORT on listeners (for several worker processes).
        worker: this process's worker number, added to each log line (with --workers).
        certificates: the certificates for terminating routes, already loaded (by
            ``--check-config`` or the command); by default `start` loads them.
        quic: serve the configuration's QUIC listeners (with ``--workers``, only one
            worker does: a QUIC connection's datagrams must all reach one process).
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
        certificates: CertificateStore | None = None,
        fast_path: bool = True,
        quic: bool = True,
    ) -> None:
        self.config = config
        self._serve_quic = quic
        self._quic: QuicProxy | None = None
        self._use_fast_path = fast_path
        self._certs = certificates
        self._worker = worker
        self.metrics = Metrics(registry)
        self._log = ConnectionLogWriter(self.metrics, on_log, log_stream)
        self._reuse_port = reuse_port
        self._listeners: list[_Listener] = []
        self._conns: set[Connection] = set()
        # Waiting for their hello, insertion-ordered (oldest first), on either path.
        self._pending: dict[Connection | FastConn, None] = {}
        self._fast: FastPath | None = None
        self._logbuf: LogBuffer | None = None
        self._pending_by_client: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._services: Services | None = None
        self._closing = False
        self._paused_for_limit = False
        self._idle: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listener, in configuration order."""
        return [lst.address for lst in self._listeners]

    @property
    def quic_addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every QUIC (UDP) listener."""
        return self._quic.addresses if self._quic is not None else []

    @property
    def quic(self) -> QuicProxy | None:
        """The QUIC side: its sessions and metrics (None without QUIC listeners)."""
        return self._quic

    def _quic_sessions(self) -> int:
        return self._quic.active_sessions if self._quic is not None else 0

    def _room(self) -> int:
        """How many more connections or QUIC sessions ``max_connections`` allows now."""
        return self.config.max_connections - self.active_connections - self._quic_sessions()

    def _session_done(self) -> None:
        """A QUIC session ended: TCP accepting may resume if it paused at the limit."""
        if self._paused_for_limit and self._room() > 0:
            self._paused_for_limit = False
            for lst in self._listeners:
                self._start_accepting(lst)

    def _start_quic(self, config: RouterConfig) -> None:
        assert self._loop is not None
        self._quic = QuicProxy(
            self._loop,
            config,
            self._log,
            self.metrics.registry,
            worker=self._worker,
            room=self._room,
            on_end=self._session_done,
            dialer=self._services.dialer if self._services is not None else None,
        )
        self._quic.start(reuse_port=self._reuse_port)

    @property
    def active_connections(self) -> int:
        """Connections open now (waiting for a hello, or relaying)."""
        return len(self._conns) + (self._fast.active if self._fast is not None else 0)

    @property
    def fast_connections(self) -> int:
        """Connections accepted so far that started on the fast path."""
        return self._fast.accepted if self._fast is not None else 0

    @property
    def pending_connections(self) -> int:
        """Connections still waiting for their hello."""
        return len(self._pending)

    async def start(self) -> None:
        """Bind every listener and start accepting.

        Raises:
            OSError: a listener cannot be bound (nothing is left bound then).
            CertificateError: a certificate of the configuration cannot be loaded (the
                message names the file); nothing is bound then.
        """
        if self._certs is None and self.config.terminates:
            from sniinspect.route.terminate import CertificateError, load_store

            result = load_store(self.config.tls, self.config.table.routes)
            if result.problems:
                raise CertificateError(result.problems[0][1])
            self._certs = result.store
        self._export_certificates()
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._services = Services(
            self._loop, self.metrics, Dialer(self._loop, self.metrics), self._unpend, self._certs
        )
        self._log.open(self.config.connection_log, self.config.log_file)
        try:
            for lconf in self.config.listeners:
                self._listeners.append(self._bind(lconf))
        except OSError:
            for lst in self._listeners:
                lst.sock.close()
            self._listeners.clear()
            raise
        self._logbuf = LogBuffer(self._loop, self._log, self.metrics, self._worker)
        if self._use_fast_path and HAVE_FAST_PATH:
            self._fast = FastPath(self, self._loop, self._logbuf)
        if self._serve_quic and self.config.quic_listeners:
            try:
                self._start_quic(self.config)
            except OSError:
                for lst in self._listeners:
                    lst.sock.close()
                self._listeners.clear()
                raise
        for lst in self._listeners:
            self._start_accepting(lst)

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
        return _Listener(lconf, sock, (host, port), label=fmt_addr((host, port)), family=family)

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
        if self._serve_quic and self._quic is not None:
            try:
                self._quic.reload(config)
            except OSError:
                for lst in added:
                    lst.sock.close()
                raise
        elif self._serve_quic and config.quic_listeners:
            try:
                self._start_quic(config)
            except OSError:
                for lst in added:
                    lst.sock.close()
                raise
        if config.terminates or self._certs is not None:
            self._reload_certificates(config)
        kept: list[_Listener] = []
        by_key = {(lst.config.host, lst.config.port): lst for lst in added}
        for lconf, key in zip(config.listeners, new_keys, strict=True):
            lst = old.get(key) or by_key[key]
            lst.config = lconf
            kept.append(lst)
        for lst in set(old.values()) - set(kept):
            self._close_listener(lst)
        self._listeners = kept
        if self._logbuf is not None:
            self._logbuf.flush()  # lines of earlier connections go to the old file
        self._log.reopen(config.connection_log, config.log_file)
        self.config = config
        for lst in added:
            self._start_accepting(lst)
        log.info("configuration reloaded: %d routes", len(config.table.routes))

    @property
    def certificates(self) -> CertificateStore | None:
        """The certificates new connections are served from (None: nothing terminates)."""
        return self._certs

    def _reload_certificates(self, config: RouterConfig) -> None:
        """Read every certificate again (globs too); a file that fails keeps its old one."""
        from sniinspect.route.terminate import load_store

        result = load_store(config.tls, config.table.routes, previous=self._certs)
        for path, message in result.problems:
            # Never fatal here: the listener keeps serving what it served before.
            log.error("certificate reload: %s", message)
            self.metrics.certificate_load_errors.labels(path).inc()
        for note in result.notes:
            log.warning("%s", note)
        self._certs = result.store
        if self._services is not None:
            self._services.certs = result.store
        self._export_certificates()

    def _export_certificates(self) -> None:
        gauge = self.metrics.certificate_expiry
        gauge.clear()
        if self._certs is not None:
            for cert in self._certs.all_certificates():
                gauge.labels(cert.path, cert.subject, cert.serial_hex).set(
                    cert.not_after.timestamp()
                )

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
        quic_drained = None
        if self._quic is not None:
            quic_drained = asyncio.ensure_future(self._quic.stop(timeout))
        # Connections still waiting for a hello have nothing to lose: close them now.
        for conn in list(self._pending):
            if isinstance(conn, FastConn):
                assert self._fast is not None
                self._fast.evict(conn)
            elif conn.task is not None:
                conn.task.cancel()
        until = (self._loop.time() if self._loop is not None else 0.0) + timeout
        if self._conns and self._idle is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        if self._fast is not None:
            await self._fast.drain(until)
        tasks = [c.task for c in self._conns if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        if quic_drained is not None:
            await quic_drained
        if self._logbuf is not None:
            self._logbuf.flush()  # every line out before the stream closes
        self._log.close()

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
            if self._room() <= 0:
                self._pause_for_limit()
                return
            try:
                # socket.accept() without its wrapper: accept4(SOCK_CLOEXEC), then a socket
                # object made with the listener's family as an int (no enum conversions).
                fd, peer = lst.sock._accept()  # type: ignore[attr-defined]
                sock = socket.socket(lst.family, socket.SOCK_STREAM, 0, fd)
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
        peer = (plain_ip(peer[0]), peer[1])
        fast = self._fast
        if fast is not None and fast.takes(lst.config):
            fast.accept(lst, sock, peer)
            return
        record = self._record(lst, peer, self._loop.time(), time.perf_counter())
        assert self._services is not None
        conn = Connection(sock, peer, lst.config, record, self._services)
        cfg = self.config
        # A front load balancer speaking PROXY protocol is one address for many
        # clients: the per-client cap would throttle all of them together.
        key = None if lst.config.accept_proxy else peer[0]
        if key is not None and self._pending_by_client.get(key, 0) >= cfg.max_pending_per_client:
            record.outcome, record.reason = "rejected", "client_pending_limit"
            sock.close()
            self._log.finish(conn.record, conn.hello)
            return
        if len(self._pending) >= cfg.max_pending:
            self._evict_oldest()
        conn.pending_key = key or ""
        self._pending[conn] = None
        if key is not None:
            self._pending_by_client[key] = self._pending_by_client.get(key, 0) + 1
        self.metrics.pending.inc()
        self._start_task(conn)

    def _record(
        self, lst: _Listener, peer: tuple[str, int], started: float, clock: float
    ) -> ConnectionLog:
        return ConnectionLog(
            time=time.time() - (time.perf_counter() - clock),
            client=fmt_addr(peer),
            listener=lst.label,
            started=started,
            clock=clock,
            worker=self._worker,
        )

    def _start_task(self, conn: Connection) -> None:
        assert self._loop is not None
        self._conns.add(conn)
        if self._idle is not None:
            self._idle.clear()
        self.metrics.active.inc()
        conn.task = self._loop.create_task(self._handle(conn))

    def _evict_oldest(self) -> None:
        oldest = next(iter(self._pending))
        oldest.evicted = True
        if isinstance(oldest, FastConn):
            assert self._fast is not None
            self._fast.evict(oldest)
            return
        self._unpend(oldest)
        if oldest.task is not None:
            oldest.task.cancel()

    def _reject_at_accept(
        self, lst: _Listener, sock: socket.socket, peer: tuple[str, int], reason: str
    ) -> None:
        """Turn a new connection away at once (the fast path's per-client limit)."""
        assert self._loop is not None
        record = self._record(lst, peer, self._loop.time(), time.perf_counter())
        record.outcome, record.reason = "rejected", reason
        sock.close()
        self._log.finish(record, None)

    def adopt(self, fconn: FastConn) -> None:
        """Take a connection over from the fast path: today's `Connection.serve` from
        the bytes it read (the hello deadline still counts from the accept)."""
        assert self._loop is not None and self._services is not None
        elapsed = time.perf_counter() - fconn.clock
        record = self._record(fconn.lst, fconn.peer, self._loop.time() - elapsed, fconn.clock)
        conn = Connection(
            fconn.sock, fconn.peer, fconn.lst.config, record, self._services, first=fconn.data
        )
        if fconn.pending_key is not None:
            assert self._fast is not None
            self._fast.unpend(fconn)
            conn.pending_key = fconn.peer[0]
            self._pending[conn] = None
            by_client = self._pending_by_client
            by_client[conn.pending_key] = by_client.get(conn.pending_key, 0) + 1
            self.metrics.pending.inc()
        self._start_task(conn)

    def _services_dialer(self) -> Dialer:
        assert self._services is not None
        return self._services.dialer

    def _connection_done(self) -> None:
        """A fast-path connection ended: accepting may resume."""
        if self._paused_for_limit and self._room() > 0:
            self._paused_for_limit = False
            for lst in self._listeners:
                self._start_accepting(lst)

    def _unpend(self, conn: Connection | FastConn) -> None:
        if isinstance(conn, FastConn):
            assert self._fast is not None
            self._fast.unpend(conn)
            return
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

    async def _handle(self, conn: Connection) -> None:
        assert self._loop is not None
        cfg = self.config
        rec = conn.record
        try:
            try:
                await conn.serve(cfg)
            except asyncio.CancelledError:
                if conn.evicted:
                    rec.outcome, rec.reason = "rejected", "pending_limit"
                elif rec.outcome in ("closed", "relaying"):
                    rec.outcome, rec.reason = "aborted", rec.reason or "shutdown"
                if not conn.evicted:
                    raise
            except Timeout:
                rec.outcome, rec.reason = "closed", rec.reason or "idle_timeout"
            except OSError as exc:
                rec.outcome = "error" if rec.outcome == "closed" else rec.outcome
                rec.error = os_error(exc)
            except Exception as exc:  # a bug must cost one connection, never the router
                log.exception("connection from %s failed", rec.client)
                rec.outcome, rec.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            self._unpend(conn)
            if conn.relay is not None:
                conn.relay.close()
                rec.bytes_from_client += conn.relay.up.count
                rec.bytes_to_client += conn.relay.down.count
            if conn.tls is not None:  # terminated: the bytes on the client's wire
                rec.bytes_from_client = conn.tls.raw_in
                rec.bytes_to_client = conn.tls.raw_out
            if conn.backend_sock is not None:
                conn.backend_sock.close()
            conn.sock.close()
            self._conns.discard(conn)
            self.metrics.active.dec()
            if rec.outcome == "relaying":
                rec.outcome = "routed" if rec.reason is None else "fallback"
            if self._logbuf is not None:
                self._logbuf.apply_counts()  # the fast path's earlier ends count first
            self._log.finish(conn.record, conn.hello)
            if not self._conns and self._idle is not None:
                self._idle.set()
            if self._paused_for_limit and self._room() > 0:
                self._paused_for_limit = False
                for lst in self._listeners:
                    self._start_accepting(lst)
