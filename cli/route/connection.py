"""One TCP connection through the router: PROXY header in, peek, decide, dial, replay, relay.

::

    accept ──> [PROXY header] ──> peek: clienthello.Reader ──> route table ──> dial backend
                                    │ not TLS / malformed / too large / timeout │ (round robin)
                                    └──> per-reason action: fallback | alert | close
    replay every byte read, verbatim ──> relay both ways (splice, or recv/send) ──> close

Only backends from the configuration are ever dialled, whatever a client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import clienthello
from sniinspect.route.backends import Dialer
from sniinspect.route.config import Action, ListenerConfig, RouterConfig
from sniinspect.route.httphost import hostname_ok, http_host, maybe_http
from sniinspect.route.observe import ConnectionLog, Metrics
from sniinspect.route.relay import Relay
from sniinspect.route.sockets import (
    Timeout,
    as_v6,
    fmt_addr,
    is_v4,
    local_address,
    plain_ip,
    recv,
    send_all,
    split_addr,
)
from sniinspect.route.table import Route

__all__ = ["Connection", "Services", "alert_record"]

# RFC 8446 §6: a fatal (2) alert, in a record of content type 21.
ALERT_LEVEL_FATAL = 2
CONTENT_TYPE_ALERT = 0x15
# How long to keep reading (and discarding) after answering with an alert, so that the
# client's unread bytes do not turn our close into a reset that destroys the alert.
LINGER_AFTER_ALERT = 1.0

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



@dataclass
class Services:
    """What every connection of one router shares."""

    loop: asyncio.AbstractEventLoop
    metrics: Metrics
    dialer: Dialer
    unpend: Callable[[Connection], None]  # the hello is in: no longer a pending connection


@dataclass(eq=False)
class Connection:
    """One client connection, from accept to close, and what is known about it."""

    sock: socket.socket
    peer: tuple[str, int]
    listener: ListenerConfig
    record: ConnectionLog
    services: Services = field(repr=False)
    task: asyncio.Task[None] | None = None
    pending_key: str | None = None
    evicted: bool = False
    backend_sock: socket.socket | None = None
    relay: Relay | None = field(default=None, repr=False)
    hello: clienthello.ClientHello | None = field(default=None, repr=False)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the connection runs on."""
        return self.services.loop

    async def serve(self, cfg: RouterConfig) -> None:
        """Peek, decide and relay until the connection is done; errors propagate.

        Raises:
            Timeout: a deadline passed (the hello's, or a write's).
            OSError: a socket failed.
        """
        rec = self.record
        deadline = rec.started + cfg.hello_timeout
        first = b""
        proxy_dst: tuple[str, int] | None = None
        if self.listener.accept_proxy:
            info = await self._read_proxy_header(deadline)
            if info is None:
                return
            first, proxy_dst = info
        hello, reason, data = await self._peek(cfg, first, deadline)
        rec.hello_ms = round((time.perf_counter() - rec.clock) * 1000, 3)
        rec.bytes_from_client = len(data)
        self.services.unpend(self)
        if hello is not None:
            self.services.metrics.hello_seconds.observe(rec.hello_ms / 1000)
            # Only the name now; the rest of the log fields (JA4 among them) are
            # worked out when the line is written, off the path to the backend.
            rec.sni = hello.server_name
            self.hello = hello
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
                await self._answer_alert(alert)
                rec.bytes_to_client = len(alert)
                return
            if action.kind == "close" or action.route is None:
                rec.outcome = "closed"
                await self._close_gently()
                return
            route = action.route
        rec.route = route.label
        backend_sock = await self.services.dialer.connect(route, cfg.connect_timeout, rec)
        if backend_sock is None:
            rec.outcome = "failed"
            rec.reason = rec.reason or "backend_unavailable"
            return
        self.backend_sock = backend_sock
        rec.outcome = "relaying"
        if route.proxy_protocol:
            data = self._proxy_header(route, hello, proxy_dst) + data
        await send_all(self.loop, backend_sock, data, cfg.idle_timeout or None)
        relay = Relay(self.loop, self.sock, backend_sock, cfg.relay, cfg.idle_timeout)
        self.relay = relay
        await relay.run()
        if relay.error is not None:
            rec.error = relay.error
        if relay.timed_out:
            rec.error = "idle_timeout"

    async def _read_proxy_header(
        self, deadline: float
    ) -> tuple[bytes, tuple[str, int] | None] | None:
        from sniinspect.route.proxyproto import ProxyHeaderParser, ProxyProtocolError

        parser = ProxyHeaderParser()
        rec = self.record
        try:
            while True:
                chunk = await recv(self.loop, self.sock, deadline)
                info = parser.feed(chunk)
                if info is not None:
                    break
        except ProxyProtocolError as exc:
            rec.outcome, rec.reason, rec.error = "rejected", "bad_proxy_header", str(exc)
            return None
        except Timeout:
            rec.outcome, rec.reason = "closed", "timeout"
            return None
        rec.proxied_from = rec.client
        if info.command == "PROXY" and info.src is not None:
            rec.client = fmt_addr((plain_ip(info.src[0]), info.src[1]))
        dst = info.dst if info.command == "PROXY" else None
        return parser.remainder, dst

    async def _peek(
        self, cfg: RouterConfig, first: bytes, deadline: float
    ) -> tuple[clienthello.ClientHello | None, str | None, bytes]:
        """Read until the hello is complete; return (hello, reason, every byte read)."""
        reader = clienthello.Reader(max_size=cfg.max_hello_size)
        chunk = first
        try:
            while True:
                if chunk:
                    hello = reader.feed(chunk)
                    if hello is not None:
                        return hello, None, reader.buffered
                chunk = await recv(self.loop, self.sock, deadline)
                if not chunk:
                    return None, "client_closed", reader.buffered
        except clienthello.NotTLS:
            data = reader.buffered
            if self.listener.http_host and maybe_http(data):
                return await self._peek_http(cfg, data, deadline)
            return None, "not_tls", data
        except clienthello.HelloTooLarge:
            return None, "too_large", reader.buffered
        except clienthello.MalformedHello as exc:
            self.record.error = str(exc)
            return None, "malformed", reader.buffered
        except Timeout:
            return None, "timeout", reader.buffered

    async def _peek_http(
        self, cfg: RouterConfig, data: bytes, deadline: float
    ) -> tuple[None, str | None, bytes]:
        if not maybe_http(data):
            return None, "not_tls", data
        buf = bytearray(data)
        try:
            while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
                if len(buf) > cfg.max_hello_size:
                    return None, "too_large", bytes(buf)
                chunk = await recv(self.loop, self.sock, deadline)
                if not chunk:
                    return None, "client_closed", bytes(buf)
                buf += chunk
        except Timeout:
            return None, "timeout", bytes(buf)
        return None, "http", bytes(buf)

    def _route_http(
        self, cfg: RouterConfig, data: bytes, rec: ConnectionLog
    ) -> tuple[Route | None, str | None]:
        host = http_host(data)
        rec.sni = host
        if host is None:
            return None, "no_sni"
        found = cfg.table.lookup(host, () if hostname_ok(host) else ("invalid characters",))
        return found.route, found.reason

    async def _answer_alert(self, alert: bytes) -> None:
        with contextlib.suppress(OSError, Timeout):
            await send_all(self.loop, self.sock, alert, 1.0)
        await self._close_gently()

    async def _close_gently(self) -> None:
        """Half-close, then read and discard briefly so the close is a FIN, not a reset."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        deadline = self.loop.time() + LINGER_AFTER_ALERT
        with contextlib.suppress(OSError, Timeout):
            for _ in range(16):
                if not await recv(self.loop, self.sock, deadline):
                    break

    def _proxy_header(
        self,
        route: Route,
        hello: clienthello.ClientHello | None,
        proxy_dst: tuple[str, int] | None,
    ) -> bytes:
        from sniinspect.route.proxyproto import build_v1, build_v2

        src = split_addr(self.record.client) or self.peer
        dst = proxy_dst or local_address(self.sock)
        if is_v4(src[0]) != is_v4(dst[0]):
            src, dst = (as_v6(src[0]), src[1]), (as_v6(dst[0]), dst[1])
        if route.proxy_protocol == 1:
            return build_v1(src, dst)
        sni = hello.server_name if hello is not None else self.record.sni
        alpn = hello.alpn_protocols[0] if hello is not None and hello.alpn_protocols else None
        return build_v2(src, dst, authority=sni, alpn=alpn)
