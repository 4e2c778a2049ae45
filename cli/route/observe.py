"""What the router tells its operator: one JSON line per connection, and Prometheus metrics.

The line is written when the connection ends; the fields that cost something to work
out (JA4, version names) are filled in only then, off the path to the backend.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import clienthello

__all__ = ["ConnectionLog", "Metrics", "QuicMetrics", "ConnectionLogWriter", "describe"]

log = logging.getLogger("sniinspect.router")


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
    # TLS ended at the router: the certificate served, what was negotiated, and how long
    # the handshake took (None on passthrough connections).
    terminated: bool | None = None
    certificate: str | None = None
    certificate_serial: str | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    alpn_selected: str | None = None
    client_certificate: str | None = None
    handshake_ms: float | None = None
    backend: str | None = None
    outcome: str = "closed"
    reason: str | None = None
    error: str | None = None
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    hello_ms: float | None = None
    connect_ms: float | None = None
    duration_ms: float = 0.0
    # QUIC sessions (transport "quic"; None on TCP connections).
    transport: str | None = None
    quic_version: str | None = None
    retry: bool | None = None
    datagrams_from_client: int | None = None
    datagrams_to_client: int | None = None
    rebinds: int | None = None

    def as_dict(self) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.time))
        out: dict[str, Any] = {"time": f"{stamp}.{int(self.time % 1 * 1000):03d}Z"}
        for key, value in self.__dict__.items():
            if key in ("time", "started", "clock") or value is None:
                continue
            out[key] = value
        return out


class Metrics:
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
        self.tls_handshakes = Counter(
            "sniinspect_tls_handshakes",
            "TLS handshakes completed at the router (terminated connections)",
            ["version", "cipher"],
            registry=r,
        )
        self.tls_handshake_seconds = Histogram(
            "sniinspect_tls_handshake_seconds",
            "Time from a complete ClientHello to the end of the TLS handshake",
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )
        self.tls_handshake_failures = Counter(
            "sniinspect_tls_handshake_failures",
            "TLS handshakes at the router that failed, by reason",
            ["reason"],
            registry=r,
        )
        self.certificate_load_errors = Counter(
            "sniinspect_certificate_load_errors",
            "Certificate, key or CA files that could not be loaded (start or reload)",
            ["file"],
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "sniinspect_certificate_not_after_seconds",
            "End of validity (Unix time) of each certificate loaded",
            ["file", "subject", "serial"],
            registry=r,
            multiprocess_mode="max",
        )


def describe(rec: ConnectionLog, hello: clienthello.ClientHello) -> None:
    """Fill the log fields that come from the hello: name, ALPN, versions, JA4."""
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


class ConnectionLogWriter:
    """Where finished connections go: the metrics, a callback, and the JSON log stream.

    Args:
        metrics: the router's metrics, counted for every connection.
        on_log: called with each connection's log dict (tests, embedding).
        stream: where log lines go; None to open ``log_file`` from the configuration.
    """

    def __init__(
        self,
        metrics: Metrics,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        self.metrics = metrics
        self.on_log = on_log
        self.stream = stream
        self.enabled = True
        self._own = False
        # Set by the router's LogBuffer: lines are then queued and written in batches.
        self.defer: Callable[[ConnectionLog, clienthello.ClientHello | None], None] | None = None

    def open(self, connection_log: bool, log_file: str | None) -> None:
        """Open the connection log the configuration names (or stderr), unless given one.

        Raises:
            OSError: the file cannot be opened.
        """
        self.enabled = connection_log
        if self.stream is not None or not connection_log:
            return
        if log_file and log_file != "-":
            self.stream = open(log_file, "a", buffering=1)  # noqa: SIM115
            self._own = True
        else:
            self.stream = sys.stderr

    def reopen(self, connection_log: bool, log_file: str | None) -> None:
        """Reopen the log file (SIGHUP after logrotate); on failure keep the old one."""
        if not (self._own or self.stream is sys.stderr or self.stream is None):
            self.enabled = connection_log  # a stream given by the embedder stays
            return
        old_stream, own = self.stream, self._own
        self.stream, self._own = None, False
        try:
            self.open(connection_log, log_file)
        except OSError as exc:
            log.error("cannot open %s: %s; keeping the old log", log_file, exc)
            self.stream, self._own = old_stream, own
            old_stream = None
        if own and old_stream is not None:
            old_stream.close()

    def close(self) -> None:
        """Close the log file if this writer opened it."""
        if self._own and self.stream is not None:
            self.stream.close()
            self.stream = None

    def finish(self, rec: ConnectionLog, hello: clienthello.ClientHello | None) -> None:
        """Count a finished connection and write its line."""
        rec.duration_ms = round((time.perf_counter() - rec.clock) * 1000, 3)
        self.metrics.connections.labels(rec.outcome, rec.reason or "").inc()
        if rec.bytes_from_client:
            self.metrics.bytes.labels("from_client").inc(rec.bytes_from_client)
        if rec.bytes_to_client:
            self.metrics.bytes.labels("to_client").inc(rec.bytes_to_client)
        self.write(rec, hello)

    def write(self, rec: ConnectionLog, hello: clienthello.ClientHello | None) -> None:
        """Write a finished connection's line; the caller has counted it."""
        if self.on_log is None and (self.stream is None or not self.enabled):
            return
        if self.defer is not None:
            self.defer(rec, hello)
            return
        line = self.render(rec, hello)
        if self.on_log is not None:
            self.on_log(line)
        if self.stream is not None and self.enabled:
            # A full disk or a closed stream must not stop routing.
            with contextlib.suppress(OSError, ValueError):
                self.stream.write(json.dumps(line, separators=(",", ":")) + "\n")

    def render(self, rec: ConnectionLog, hello: clienthello.ClientHello | None) -> dict[str, Any]:
        """The log dict of a finished connection (the hello's fields filled in)."""
        if hello is not None:
            describe(rec, hello)
        return rec.as_dict()


class QuicMetrics:
    """Prometheus metrics of the QUIC side, each with a ``transport`` label."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.sessions = Counter(
            "sniinspect_udp_sessions",
            "UDP sessions (QUIC connections) handled, by outcome and reason",
            ["transport", "outcome", "reason"],
            registry=registry,
        )
        self.active = Gauge(
            "sniinspect_udp_active_sessions",
            "UDP sessions open now",
            ["transport"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.datagrams = Counter(
            "sniinspect_datagrams",
            "Datagrams relayed, by direction",
            ["transport", "direction"],
            registry=registry,
        )
        self.bytes = Counter(
            "sniinspect_datagram_bytes",
            "Bytes of datagrams relayed, by direction",
            ["transport", "direction"],
            registry=registry,
        )
        self.dropped = Counter(
            "sniinspect_datagrams_dropped",
            "Datagrams dropped, by reason",
            ["transport", "reason"],
            registry=registry,
        )
        self.rebinds = Counter(
            "sniinspect_quic_rebinds",
            "Sessions found again from a new client address",
            ["transport"],
            registry=registry,
        )
