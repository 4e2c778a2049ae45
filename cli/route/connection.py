"""One TCP connection through the router: PROXY header in, peek, decide, dial, replay, relay.

::

    accept ──> [PROXY header] ──> peek: clienthello.Reader ──> route table ──> dial backend
                                    │ not TLS / malformed / too large / timeout │ (round robin)
                                    └──> per-reason action: fallback | alert | close
    replay every byte read, verbatim ──> relay both ways (splice, or recv/send) ──> close

A route with ``terminate`` takes another way after the decision: the certificate and the
whole `ssl.SSLContext` are chosen from the parsed hello, the handshake starts from the
bytes already read (`sniinspect.route.tls_relay`), and the backend gets the decrypted
stream (after a PROXY v2 header that says which name, protocol and cipher).

Only backends from the configuration are ever dialled, whatever a client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
from sniinspect.route.tlsconfig import Termination

if TYPE_CHECKING:
    from sniinspect.route.proxyproto import SSLInfo
    from sniinspect.route.terminate import Certificate, CertificateStore
    from sniinspect.route.tls_relay import TLSEnd

__all__ = ["Connection", "Services", "alert_record"]

# RFC 8446 §6: a fatal (2) alert, in a record of content type 21.
ALERT_LEVEL_FATAL = 2
CONTENT_TYPE_ALERT = 0x15
# How long to keep reading (and discarding) after answering with an alert, so that the
# client's unread bytes do not turn our close into a reset that destroys the alert.
LINGER_AFTER_ALERT = 1.0
# RFC 7301 §3.2: the client offered ALPN and the server supports none of its protocols.
ALERT_NO_APPLICATION_PROTOCOL = 120
ALERT_INTERNAL_ERROR = 80


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
    certs: CertificateStore | None = None  # replaced on reload; None: nothing terminates


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
    tls: TLSEnd | None = field(default=None, repr=False)  # the client's side, if terminated
    # Bytes the fast path already read from the client before handing the connection over.
    first: bytes = field(default=b"", repr=False)

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
        first = self.first
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
        certs = self.services.certs
        cert: Certificate | None = None
        if route is not None and route.terminate is not None and hello is not None:
            cert = certs.for_route(route, hello.server_name) if certs is not None else None
            if cert is None:  # no certificate covers the name, and no [tls] default
                rec.route, rec.error = route.label, "no certificate for the name"
                route, reason = None, "unknown_name"
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
            if reason == "no_sni" and hello is not None and certs is not None:
                cert = certs.default  # [tls] default: terminate, then to the fallback
        rec.route = route.label
        if cert is not None and hello is not None:
            await self._serve_terminated(cfg, route, cert, hello, data, proxy_dst)
            return
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
        tls: tuple[bytes | None, SSLInfo] | None = None,
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
        if tls is not None:  # terminated: the protocol negotiated, and the TLS facts
            return build_v2(src, dst, authority=sni, alpn=tls[0], ssl=tls[1])
        return build_v2(src, dst, authority=sni, alpn=alpn)

    async def _serve_terminated(
        self,
        cfg: RouterConfig,
        route: Route,
        cert: Certificate,
        hello: clienthello.ClientHello,
        data: bytes,
        proxy_dst: tuple[str, int] | None,
    ) -> None:
        """TLS ends here: handshake from the bytes already read, dial, relay plaintext."""
        from sniinspect.route.tls_relay import TLSEnd

        term = route.terminate or Termination()
        rec = self.record
        metrics = self.services.metrics
        certs = self.services.certs
        assert certs is not None  # a certificate was chosen from it
        offered = hello.alpn_protocols
        ours = {p.encode("ascii") for p in term.policy.alpn}
        if offered and not ours.intersection(offered):
            # Decided from the hello: OpenSSL through Python would just leave ALPN out.
            metrics.tls_handshake_failures.labels("no_application_protocol").inc()
            rec.outcome, rec.reason = "alerted", "no_application_protocol"
            alert = alert_record(ALERT_NO_APPLICATION_PROTOCOL, data)
            await self._answer_alert(alert)
            rec.bytes_to_client = len(alert)
            return
        from sniinspect.route.terminate import CertificateError

        try:
            ctx = certs.server_context(cert, term.policy)
        except CertificateError as exc:
            metrics.tls_handshake_failures.labels("certificate_unusable").inc()
            rec.outcome, rec.reason, rec.error = "failed", "tls_handshake", str(exc)
            await self._answer_alert(alert_record(ALERT_INTERNAL_ERROR, data))
            return
        client = self.tls = TLSEnd(self.loop, self.sock, ctx, server_side=True, first=data)
        rec.certificate, rec.certificate_serial = cert.subject, cert.serial_hex
        started = time.perf_counter()
        try:
            await client.handshake(self.loop.time() + cfg.hello_timeout)
        except (ssl.SSLError, Timeout, OSError) as exc:
            why = _failure(exc)
            metrics.tls_handshake_failures.labels(why).inc()
            rec.outcome, rec.reason, rec.error = "failed", "tls_handshake", why
            if not isinstance(exc, OSError):
                await self._close_gently()
            return
        elapsed = time.perf_counter() - started
        obj = client.obj
        version, cipher = obj.version() or "", (obj.cipher() or ("",))[0]
        selected = obj.selected_alpn_protocol()
        rec.terminated, rec.handshake_ms = True, round(elapsed * 1000, 3)
        rec.tls_version, rec.tls_cipher, rec.alpn_selected = version, cipher, selected
        metrics.tls_handshakes.labels(version, cipher).inc()
        metrics.tls_handshake_seconds.observe(elapsed)
        peer = obj.getpeercert() if term.policy.client_cert != "none" else None
        client_cn = None
        if peer:
            rec.client_certificate, client_cn = _subject(peer)
        backend_sock = await self.services.dialer.connect(route, cfg.connect_timeout, rec)
        if backend_sock is None:
            rec.outcome = "failed"
            rec.reason = rec.reason or "backend_unavailable"
            await client.write_eof(1.0)
            return
        self.backend_sock = backend_sock
        rec.outcome = "relaying"
        await self._relay_terminated(cfg, route, term, hello, proxy_dst, cert, client_cn)

    async def _relay_terminated(
        self,
        cfg: RouterConfig,
        route: Route,
        term: Termination,
        hello: clienthello.ClientHello,
        proxy_dst: tuple[str, int] | None,
        cert: Certificate,
        client_cn: str | None,
    ) -> None:
        from sniinspect.route.proxyproto import (
            PP2_CLIENT_CERT_CONN,
            PP2_CLIENT_CERT_SESS,
            PP2_CLIENT_SSL,
            SSLInfo,
        )
        from sniinspect.route.tls_relay import End, PlainEnd, TLSEnd, TLSRelay

        rec, client, sock = self.record, self.tls, self.backend_sock
        assert client is not None and sock is not None and self.services.certs is not None
        header = b""
        if route.proxy_protocol:
            flags = PP2_CLIENT_SSL
            if client_cn is not None or rec.client_certificate is not None:
                flags |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
            info = SSLInfo(
                client=flags,
                verify=0 if rec.client_certificate is not None else 1,
                version=rec.tls_version,
                cipher=rec.tls_cipher,
                client_cn=client_cn,
                sig_alg=cert.sig_alg,
                key_alg=cert.key_alg,
            )
            alpn = rec.alpn_selected.encode("ascii") if rec.alpn_selected else None
            header = self._proxy_header(route, hello, proxy_dst, (alpn, info))
        timeout = cfg.idle_timeout or None
        backend: End
        if term.backend_tls is None:
            backend = PlainEnd(self.loop, sock)
            if header:
                await backend.write(header, timeout)
        else:
            if header:  # in the clear, before the backend's handshake (as HAProxy sends it)
                await send_all(self.loop, sock, header, timeout)
            settings = term.backend_tls
            ctx = self.services.certs.backend_context(
                settings, [rec.alpn_selected] if rec.alpn_selected else ()
            )
            name = settings.server_name or hello.server_name
            if name is None and rec.backend is not None:
                name = (split_addr(rec.backend) or ("", 0))[0] or None
            backend = TLSEnd(self.loop, sock, ctx, server_side=False, server_hostname=name)
            try:
                await backend.handshake(self.loop.time() + cfg.connect_timeout)
            except (ssl.SSLError, Timeout, OSError) as exc:
                why = _failure(exc)
                self.services.metrics.tls_handshake_failures.labels(f"backend_{why}").inc()
                rec.outcome, rec.reason, rec.error = "failed", "backend_tls", why
                await client.write_eof(1.0)
                return
        relay = TLSRelay(self.loop, client, backend, cfg.idle_timeout)
        await relay.run()
        if relay.error is not None:
            rec.error = relay.error
        if relay.timed_out:
            rec.error = "idle_timeout"


def _failure(exc: BaseException) -> str:
    """A handshake failure as a short metric label: the OpenSSL reason, lower case."""
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or type(exc).__name__).lower()
    if isinstance(exc, Timeout):
        return "timeout"
    if isinstance(exc, ConnectionResetError):
        return "connection_reset"
    return type(exc).__name__.lower()


def _subject(peer: Mapping[str, Any]) -> tuple[str, str | None]:
    """(``CN=...,O=...`` text, the CN) of a certificate as `SSLObject.getpeercert` gives it."""
    parts: list[str] = []
    cn = None
    short = {
        "commonName": "CN",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "localityName": "L",
        "stateOrProvinceName": "ST",
    }
    for rdn in peer.get("subject", ()):
        for attr, value in rdn:
            parts.append(f"{short.get(attr, attr)}={value}")
            if attr == "commonName" and cn is None:
                cn = str(value)
    return ",".join(parts), cn
