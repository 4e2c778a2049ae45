"""QUIC passthrough: UDP sessions routed by the SNI of the client's Initial packets.

For each new QUIC connection::

    client Initials ──> decrypt (public Initial keys), join CRYPTO ──> hello ──> route table
      (held, verbatim)     │ not QUIC: dropped and counted       │ per-reason action:
                           │ garbage / not decryptable: ignored  │   alert: CONNECTION_CLOSE
                                                                 │   close: drop silently
    one connected UDP socket to the backend ──> held datagrams, in order ──> relay both ways

Nothing is decrypted after the hello and nothing is terminated: the backend holds the
keys. A session is found by the client's address and by connection ID: the router
learns the backend's connection IDs from the source CID of its long-header packets, so a
short-header packet from a new client address whose destination CID is known (NAT
rebinding) finds its session. The router then talks to the backend from a new socket as
well, so that the backend sees the path change and validates the new address itself
(RFC 9000 §9): the router relays the backend's packets and never sends anything of its
own but one small CONNECTION_CLOSE in answer to a full-sized client Initial, so it
amplifies nothing. A client Initial with a new original DCID from an address that has a
session starts a new connection (Chromium reuses a 4-tuple), unless it answers the
backend's Retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import clienthello
from clienthello import quic
from sniinspect.route.backends import Dialer
from sniinspect.route.config import Action, RouterConfig
from sniinspect.route.observe import ConnectionLog, ConnectionLogWriter, QuicMetrics
from sniinspect.route.quicrelay import MAX_DATAGRAM, BackendRelay, reads_per_wakeup, relay_backend
from sniinspect.route.quicsession import CLOSED, HELLO, RELAYING, Listener, Session, idle_timeout
from sniinspect.route.sockets import fmt_addr, plain_ip
from sniinspect.route.table import Route
from sniinspect.route.udp import bind_udp, errno_name, udp_socket_to

__all__ = ["QuicProxy", "MIN_INITIAL_DATAGRAM"]

log = logging.getLogger("sniinspect.router")

# RFC 9000 §14.1: a server discards a client Initial in a datagram under 1200 bytes; the
# router does too, which also keeps its CONNECTION_CLOSE answer smaller than the question.
MIN_INITIAL_DATAGRAM = 1200
# The connection IDs remembered per session (each the key to find it after a rebind).
MAX_CIDS_PER_SESSION = 16
# How long a session that was closed or refused keeps swallowing its retransmissions.
CLOSED_LINGER = 3.0
# Sessions are swept for hello and idle deadlines this often (one timer for all).
_SWEEP_INTERVAL = 0.25

_INITIAL = quic.PacketType.INITIAL
_RETRY = quic.PacketType.RETRY


class QuicProxy:
    """Every QUIC listener of one router and the sessions through them.

    Args:
        loop: the running event loop.
        config: the router's configuration (its ``quic_listeners`` are bound).
        log_writer: where finished sessions are counted and logged.
        registry: the prometheus_client registry for `QuicMetrics`.
        worker: this process's worker number, for the log lines.
        room: how many more sessions the router may hold now (``max_connections``
            shared with the TCP side); called for each new session.
        on_end: called after each session ends (the TCP side may resume accepting).
        dialer: the router's backend chooser, so that round robin and the backends that
            failed lately are shared with TCP (default: one of its own).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: RouterConfig,
        log_writer: ConnectionLogWriter,
        registry: Any,
        *,
        worker: int | None = None,
        room: Callable[[], int] | None = None,
        on_end: Callable[[], None] | None = None,
        dialer: Dialer | None = None,
    ) -> None:
        self.loop = loop
        self.config = config
        self.metrics = QuicMetrics(registry)
        self._log = log_writer
        self._worker = worker
        self._room = room or (lambda: self.config.max_connections - len(self._sessions))
        self._on_end = on_end
        self._listeners: list[Listener] = []
        self._sessions: set[Session] = set()
        self._by_cid: dict[bytes, Session] = {}
        self._relays: dict[socket.socket, BackendRelay] = {}  # backend socket -> its reader
        self._cid_lengths: dict[int, int] = {}  # length -> sessions using it
        self._pending = 0
        self._pending_by_client: dict[str, int] = {}
        self._dialer = dialer or Dialer(loop, log_writer.metrics)
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False
        self._reads = reads_per_wakeup(loop)  # client datagrams per wake-up of a listener

    # ------------------------------------------------------------------ lifecycle

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every QUIC listener."""
        return [lst.address for lst in self._listeners]

    @property
    def active_sessions(self) -> int:
        """QUIC sessions open now (collecting a hello, or relaying)."""
        return len(self._sessions)

    @property
    def pending_sessions(self) -> int:
        """Sessions still collecting their hello."""
        return self._pending

    def start(self, reuse_port: bool = False) -> None:
        """Bind every QUIC listener of the configuration and start reading.

        Raises:
            OSError: a listener cannot be bound (nothing is left bound then).
        """
        try:
            for host, port in self.config.quic_listeners:
                self._listeners.append(Listener(host, port, *bind_udp(host, port, reuse_port)))
        except OSError:
            for lst in self._listeners:
                lst.sock.close()
            self._listeners.clear()
            raise
        for lst in self._listeners:
            self.loop.add_reader(lst.sock.fileno(), self._on_client_readable, lst)
        self._sweeper = self.loop.call_later(_SWEEP_INTERVAL, self._sweep)

    def reload(self, config: RouterConfig) -> None:
        """Use a new configuration for new sessions; sessions in flight keep theirs.

        Listeners are compared by address: new ones are bound, removed ones closed
        (their sessions end, as their socket is gone).

        Raises:
            OSError: a new listener cannot be bound (the old configuration stays).
        """
        old = {(lst.host, lst.port): lst for lst in self._listeners}
        for lst in self._listeners:
            old.setdefault((lst.host, lst.address[1]), lst)
        added: list[Listener] = []
        try:
            for host, port in config.quic_listeners:
                if (host, port) not in old:
                    added.append(Listener(host, port, *bind_udp(host, port, False)))
        except OSError:
            for lst in added:
                lst.sock.close()
            raise
        wanted = set(config.quic_listeners)
        kept = [
            lst
            for lst in self._listeners
            if (lst.host, lst.port) in wanted or (lst.host, lst.address[1]) in wanted
        ]
        for lst in self._listeners:
            if lst not in kept:
                self._close_listener(lst)
        self._listeners = kept + added
        for lst in added:
            self.loop.add_reader(lst.sock.fileno(), self._on_client_readable, lst)
        self.config = config

    async def stop(self, drain_timeout: float) -> None:
        """Stop taking new sessions, let relaying ones go on up to ``drain_timeout``, close."""
        self._closing = True
        for session in [s for s in self._sessions if s.state == HELLO]:
            session.record.outcome, session.record.reason = "aborted", "shutdown"
            self._end(session)
        deadline = self.loop.time() + drain_timeout
        while self._sessions and self.loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - self.loop.time())))
        for session in list(self._sessions):
            if session.record.outcome == "relaying":
                session.record.outcome, session.record.reason = "aborted", "shutdown"
            self._end(session)
        for lst in self._listeners:
            self._close_listener(lst)
        self._listeners.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _close_listener(self, lst: Listener) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(lst.sock.fileno())
        for session in [s for s in self._sessions if s.listener is lst]:
            self._end(session)
        lst.sock.close()

    # ------------------------------------------------------------------ client side

    def _on_client_readable(self, lst: Listener) -> None:
        recvfrom = lst.sock.recvfrom
        sessions = lst.sessions
        for _ in range(self._reads):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier send: not ours to act on
                log.debug("recvfrom on %s: %s", fmt_addr(lst.address), exc)
                continue
            if len(addr) != 2:  # IPv6: (host, port, flowinfo, scope_id)
                addr = (addr[0], addr[1])
            session = sessions.get(addr)
            # The common case, a short-header packet of a relaying session: forward it.
            if session is not None and session.state == RELAYING and data and data[0] < 0x80:
                session.datagrams_in += 1
                session.record.bytes_from_client += len(data)
                try:
                    session.backend_socks[-1].send(data)
                except (BlockingIOError, InterruptedError):
                    self._drop("backend_busy")  # UDP: a full buffer loses the datagram
                except OSError as exc:
                    session.record.error = session.record.error or errno_name(exc)
                continue
            self._from_client(lst, data, (plain_ip(addr[0]), addr[1]))

    def _from_client(self, lst: Listener, data: bytes, addr: tuple[str, int]) -> None:
        if not data:
            return
        session = lst.sessions.get(addr)
        first = data[0]
        if not first & 0x40:  # the fixed bit: every QUIC v1/v2 packet has it (RFC 9000 §17)
            self._drop("not_quic")
            return
        if first & 0x80:
            try:
                header = quic.pull_quic_header(data)
            except clienthello.ClientHelloError:
                self._drop("not_quic")
                return
            dcid = header.destination_cid
            if session is not None and (dcid in session.cids or header.packet_type != _INITIAL):
                self._deliver(session, data)
                return
            known = self._by_cid.get(dcid)
            if known is not None:
                # A known connection from a new address (rebinding during the handshake,
                # or the answer to a Retry sent from another port).
                self._rebind(known, lst, addr)
                self._deliver(known, data)
                return
            if header.packet_type != _INITIAL:
                self._drop("unknown_connection")
                return
            self._new_session(lst, addr, data, header)
            return
        # A short header: the session by address, else by the destination CID.
        if session is not None:
            self._deliver(session, data)
            return
        for length in self._cid_lengths:
            known = self._by_cid.get(data[1 : 1 + length])
            if known is not None:
                self._rebind(known, lst, addr)
                self._deliver(known, data)
                return
        self._drop("unknown_connection")

    def _new_session(self, lst: Listener, addr: tuple[str, int], data: bytes, header: Any) -> None:
        cfg = self.config
        if self._closing:
            self._drop("shutting_down")
            return
        if len(data) < MIN_INITIAL_DATAGRAM:
            self._drop("short_initial")
            return
        if self._room() <= 0:
            self._drop("max_connections")
            return
        key = addr[0]
        if self._pending_by_client.get(key, 0) >= cfg.max_pending_per_client:
            self._drop("client_pending_limit")
            return
        if self._pending >= cfg.max_pending:
            self._drop("pending_limit")
            return
        reader = quic.InitialReader(max_crypto_bytes=cfg.max_hello_size)
        try:
            hello = reader.feed(data)
        except clienthello.NotTLS:
            self._drop("not_quic")
            return
        except clienthello.HelloTooLarge:
            hello = None
            reason: str | None = "too_large"
        except clienthello.MalformedHello as exc:
            # Not decryptable with the Initial keys: noise or a forgery, not a client.
            self._drop("undecryptable" if "decrypt" in exc.reason else "malformed")
            return
        else:
            reason = None
        now = self.loop.time()
        record = ConnectionLog(
            time=time.time(),
            client=fmt_addr(addr),
            listener=fmt_addr(lst.address),
            started=now,
            clock=time.perf_counter(),
            worker=self._worker,
        )
        record.transport = "quic"
        record.quic_version = quic.version_name(header.version)  # as the analyzer names it
        session = Session(lst, addr, header.destination_cid, record, reader, now, cfg.hello_timeout)
        session.version = header.version
        if header.source_cid:
            session.cids.add(header.source_cid)
        session.held.append(data)
        session.datagrams_in = 1
        record.bytes_from_client = len(data)
        old = lst.sessions.get(addr)
        lst.sessions[addr] = session  # the newest connection owns the 4-tuple
        if old is not None:
            log.debug("new QUIC connection from %s replaces an older one", record.client)
        for cid in session.cids:
            self._add_cid(session, cid)
        self._sessions.add(session)
        self.metrics.active.labels("quic").inc()
        session.pending_key = key
        self._pending += 1
        self._pending_by_client[key] = self._pending_by_client.get(key, 0) + 1
        if reason is not None:
            self._decide(session, None, reason)
        elif hello is not None:
            self._hello_done(session, hello)

    def _deliver(self, session: Session, data: bytes) -> None:
        rec = session.record
        if session.state == RELAYING:
            session.datagrams_in += 1
            rec.bytes_from_client += len(data)
            try:
                session.backend_socks[-1].send(data)
            except (BlockingIOError, InterruptedError):
                self._drop("backend_busy")  # UDP: a full buffer loses the datagram
            except OSError as exc:
                rec.error = rec.error or errno_name(exc)
            return
        if session.state == CLOSED:  # retransmissions after a refusal: counted, swallowed
            session.datagrams_in += 1
            rec.bytes_from_client += len(data)
            return
        if sum(map(len, session.held)) + len(data) > 4 * self.config.max_hello_size + 65536:
            self._decide(session, None, "too_large")
            return
        try:
            hello = session.reader.feed(data)
        except clienthello.HelloTooLarge:
            self._decide(session, None, "too_large")
            return
        except clienthello.NotTLS:
            self._drop("not_quic")  # a stray packet on this address: the session waits on
            return
        except clienthello.MalformedHello as exc:
            if "decrypt" in exc.reason:
                self._drop("undecryptable")
                return
            session.record.error = str(exc)
            self._decide(session, None, "malformed")
            return
        session.held.append(data)
        session.datagrams_in += 1
        rec.bytes_from_client += len(data)
        if hello is not None:
            self._hello_done(session, hello)

    # ------------------------------------------------------------------ deciding

    def _hello_done(self, session: Session, result: Any) -> None:
        hello: clienthello.ClientHello = result.hello
        rec = session.record
        rec.hello_ms = round((time.perf_counter() - rec.clock) * 1000, 3)
        rec.sni = hello.server_name
        if hello.server_name_problems:
            rec.sni_problems = list(hello.server_name_problems)
        session.idle = idle_timeout(self.config.quic_idle_timeout, hello)
        found = self.config.table.lookup(hello.server_name, hello.server_name_problems)
        self._describe(session, hello)
        self._decide(session, found.route, found.reason)

    def _describe(self, session: Session, hello: clienthello.ClientHello) -> None:
        rec = session.record
        if hello.alpn_protocols is not None:
            rec.alpn = [p.decode("ascii", "backslashreplace") for p in hello.alpn_protocols]
        try:
            rec.ja4 = clienthello.ja4(hello, transport="quic")
        except Exception:  # a fingerprint bug must not cost the session
            log.exception("ja4 failed")

    def _decide(self, session: Session, route: Route | None, reason: str | None) -> None:
        self._unpend(session)
        rec = session.record
        if route is None:
            assert reason is not None
            rec.reason = reason
            action = self.config.actions.get(reason) or Action("close")
            if action.kind == "alert":
                self._answer_close(session, action.alert)
                return
            if action.kind == "close" or action.route is None:
                rec.outcome = "closed"
                self._close(session)
                return
            route = action.route
        rec.route = route.label
        self._connect(session, route)

    def _answer_close(self, session: Session, alert: int) -> None:
        """CONNECTION_CLOSE with the TLS alert as a crypto error, in a server Initial."""
        rec = session.record
        rec.outcome = "alerted"
        client_scid = b""
        if session.held:
            with contextlib.suppress(clienthello.ClientHelloError):
                client_scid = quic.pull_quic_header(session.held[0]).source_cid
        try:
            packet = quic.build_connection_close(
                session.version,
                session.original_dcid,
                client_scid,
                session.original_dcid[:8] or b"\x00" * 8,
                0x100 + alert,
            )
        except (ValueError, clienthello.ClientHelloError) as exc:
            rec.error = f"cannot build CONNECTION_CLOSE: {exc}"
            self._close(session)
            return
        received = rec.bytes_from_client
        if len(packet) <= received:  # never more than the client sent (no amplification)
            with contextlib.suppress(OSError):
                session.listener.sock.sendto(packet, session.client)
                rec.bytes_to_client += len(packet)
                session.datagrams_out += 1
        self._close(session)

    def _close(self, session: Session) -> None:
        """Refused: keep the session a moment to swallow its retransmissions, then end."""
        session.state = CLOSED
        session.closed_at = self.loop.time()
        session.held.clear()
        session.reader = None

    def _connect(self, session: Session, route: Route) -> None:
        rec = session.record
        backends = route.quic_backends or route.backends
        for index in self._dialer.order(backends):
            backend = backends[index]
            if backend.path is not None:
                continue  # a unix socket takes no datagrams; config warns about it
            try:
                sock = udp_socket_to(backend)
            except OSError as exc:
                rec.error = f"{backend}: {errno_name(exc)}"
                self._dialer.failed(backend)
                continue
            self._dialer.answered(backends, index)
            session.backend = backend
            rec.backend = str(backend)
            self._use_backend_socket(session, sock)
            rec.outcome = "relaying"
            for data in session.held:
                with contextlib.suppress(OSError):
                    sock.send(data)
            session.held.clear()
            session.reader = None
            session.state = RELAYING
            session.last = self.loop.time()
            session.seen = session.datagrams_in + session.datagrams_out
            return
        rec.outcome, rec.reason = "failed", rec.reason or "backend_unavailable"
        self._close(session)

    def _use_backend_socket(self, session: Session, sock: socket.socket) -> None:
        session.backend_socks.append(sock)
        self._relays[sock] = relay_backend(
            self.loop, sock, session, self._learn, self._drop, self._backend_error
        )

    def _rebind(self, session: Session, lst: Listener, addr: tuple[str, int]) -> None:
        """The connection now comes from ``addr``: follow it, and let the backend see it."""
        if session.client == addr and session.listener is lst:
            return
        if session.listener.sessions.get(session.client) is session:
            del session.listener.sessions[session.client]
        session.client = addr
        session.listener = lst
        lst.sessions[addr] = session
        session.rebinds += 1
        session.record.client = fmt_addr(addr)
        self.metrics.rebinds.labels("quic").inc()
        if session.state == RELAYING and session.backend is not None:
            # A new path towards the backend too, so that it validates the new address
            # (RFC 9000 §9) and applies its own amplification limit until then.
            try:
                sock = udp_socket_to(session.backend)
            except OSError as exc:
                session.record.error = errno_name(exc)
                return
            self._use_backend_socket(session, sock)
            while len(session.backend_socks) > 2:  # the previous path may still deliver
                self._drop_backend_socket(session, session.backend_socks[0])

    # ------------------------------------------------------------------ backend side

    def _backend_error(self, session: Session, exc: OSError) -> bool:
        """A read error on a backend socket; True if it closed the session's sockets."""
        rec = session.record
        rec.error = rec.error or errno_name(exc)
        if exc.errno == errno.ECONNREFUSED and session.datagrams_out == 0:
            # ICMP port unreachable before any answer: the backend is not there. Closed,
            # the session swallows the client's resent Initials (no new dial for each).
            rec.outcome, rec.reason = "failed", "backend_unavailable"
            for sock in list(session.backend_socks):
                self._drop_backend_socket(session, sock)
            self._close(session)
            return True
        return False

    def _learn(self, session: Session, data: bytes) -> None:
        """Remember the backend's connection IDs from its long-header packets."""
        offset = 0
        while offset < len(data) and data[offset] & 0x80:
            try:
                header = quic.pull_quic_header(data, offset)
            except clienthello.ClientHelloError:
                return
            cid = header.source_cid
            if cid and cid not in session.cids and len(session.cids) < MAX_CIDS_PER_SESSION:
                session.cids.add(cid)
                self._add_cid(session, cid)
            if header.packet_type == _RETRY:
                session.retry_cid = cid
                session.record.retry = True
                return
            end = header.end
            if end <= offset:
                return
            offset = end

    def _add_cid(self, session: Session, cid: bytes) -> None:
        """Find ``session`` by ``cid`` from now on (unless another session has it)."""
        if self._by_cid.setdefault(cid, session) is session:
            # Counted per CID held, so that a length stays tried while any session uses it.
            self._cid_lengths[len(cid)] = self._cid_lengths.get(len(cid), 0) + 1

    def _drop_backend_socket(self, session: Session, sock: socket.socket) -> None:
        session.backend_socks.remove(sock)
        relay = self._relays.pop(sock, None)
        if relay is not None:
            relay.close()  # it closes the socket
        else:
            sock.close()

    # ------------------------------------------------------------------ ending

    def _sweep(self) -> None:
        now = self.loop.time()
        for session in list(self._sessions):
            if session.state == HELLO and now >= session.deadline:
                self._decide(session, None, "timeout")
                if session.state == RELAYING:
                    continue
            if session.state == CLOSED and now - session.closed_at >= CLOSED_LINGER:
                self._end(session)
            elif session.state == RELAYING:
                # Activity is read from the counters here, not from a clock per datagram.
                seen = session.datagrams_in + session.datagrams_out
                if seen != session.seen:
                    session.seen, session.last = seen, now
                elif now - session.last >= session.idle:
                    # QUIC closes inside encryption: silence is how a session ends.
                    self._end(session)
        self._sweeper = self.loop.call_later(_SWEEP_INTERVAL, self._sweep)

    def _unpend(self, session: Session) -> None:
        key = session.pending_key
        if key is None:
            return
        session.pending_key = None
        self._pending -= 1
        left = self._pending_by_client.get(key, 1) - 1
        if left <= 0:
            self._pending_by_client.pop(key, None)
        else:
            self._pending_by_client[key] = left

    def _end(self, session: Session) -> None:
        if session not in self._sessions:
            return
        self._unpend(session)
        self._sessions.discard(session)
        self.metrics.active.labels("quic").dec()
        for sock in list(session.backend_socks):
            self._drop_backend_socket(session, sock)
        if session.listener.sessions.get(session.client) is session:
            del session.listener.sessions[session.client]
        for cid in session.cids:
            if self._by_cid.get(cid) is session:
                del self._by_cid[cid]
                n = self._cid_lengths.get(len(cid), 0) - 1
                if n <= 0:
                    self._cid_lengths.pop(len(cid), None)
                else:
                    self._cid_lengths[len(cid)] = n
        rec = session.record
        if rec.outcome == "relaying":
            rec.outcome = "routed" if rec.reason is None else "fallback"
        elif rec.outcome == "closed" and rec.reason is None and session.state == HELLO:
            rec.reason = "timeout"
        rec.datagrams_from_client = session.datagrams_in
        rec.datagrams_to_client = session.datagrams_out
        rec.rebinds = session.rebinds
        m = self.metrics
        m.sessions.labels("quic", rec.outcome, rec.reason or "").inc()
        if session.datagrams_in:
            m.datagrams.labels("quic", "from_client").inc(session.datagrams_in)
            m.bytes.labels("quic", "from_client").inc(rec.bytes_from_client)
        if session.datagrams_out:
            m.datagrams.labels("quic", "to_client").inc(session.datagrams_out)
            m.bytes.labels("quic", "to_client").inc(rec.bytes_to_client)
        rec.duration_ms = round((time.perf_counter() - rec.clock) * 1000, 3)
        self._log.write(rec, None)
        if self._on_end is not None:
            self._on_end()

    def _drop(self, reason: str) -> None:
        self.metrics.dropped.labels("quic", reason).inc()
