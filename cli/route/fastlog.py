"""The connection log off the connection path: buffered lines, a JA4 cache, batched metrics.

Finished connections are queued, not written: every `FLUSH_INTERVAL` (and at stop) one
timer callback counts the fast path's gauge moves into the Prometheus metrics, builds
the JSON lines and writes them to the stream in one ``write``, and only then hands the
dicts to ``on_log`` (so whoever saw a dict can also read its line). A line of the fast
path is built from a template; the fields that cost a full parse (JA4, versions, ALPN)
are worked out once per hello *shape* (the hello without its random, session id, key
shares, padding and other per-connection bytes) and cached, since many clients send
the same fingerprint.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import clienthello
from sniinspect.route.hellopeek import hello_shape
from sniinspect.route.observe import ConnectionLog, ConnectionLogWriter, Metrics, describe
from sniinspect.route.sockets import fmt_addr

if TYPE_CHECKING:
    from sniinspect.route.fastpath import FastConn

__all__ = ["FLUSH_INTERVAL", "LogBuffer"]

_CACHE_LIMIT = 4096  # shapes and JSON strings kept; cleared when full
FLUSH_INTERVAL = 0.05  # the bound: a line is written at most 50 ms after its end


class _Batch:
    """Observations of one histogram, added up per bucket and applied in one go."""

    __slots__ = ("bounds", "counts", "hist", "total")

    def __init__(self, hist: Any) -> None:
        self.hist = hist
        # prometheus_client's Histogram keeps its upper bounds and one value per bucket.
        self.bounds: list[float] | None = getattr(hist, "_upper_bounds", None)
        self.counts = [0] * (len(self.bounds) if self.bounds is not None else 0)
        self.total: float | list[float] = 0.0 if self.bounds is not None else []

    def add(self, value: float) -> None:
        if self.bounds is None:
            assert isinstance(self.total, list)
            self.total.append(value)
            return
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value  # type: ignore[operator]

    def apply(self) -> None:
        if isinstance(self.total, list):  # an unknown Histogram: one observe each
            for value in self.total:
                self.hist.observe(value)
            self.total.clear()
            return
        if not self.total and not any(self.counts):
            return
        for i, count in enumerate(self.counts):
            if count:
                self.hist._buckets[i].inc(count)
                self.counts[i] = 0
        self.hist._sum.inc(self.total)
        self.total = 0.0


class LogBuffer:
    """Queued connection ends, flushed every `FLUSH_INTERVAL` seconds by one timer.

    Args:
        loop: the router's event loop.
        writer: the router's log writer (stream, ``on_log``, enabled).
        metrics: the router's metrics (the fast path's counts go in at each flush).
        worker: this process's worker number, for the fast path's lines.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        writer: ConnectionLogWriter,
        metrics: Metrics,
        worker: int | None,
    ) -> None:
        self.loop = loop
        self.writer = writer
        self.metrics = metrics
        self.worker = worker
        self._general: list[tuple[ConnectionLog, clienthello.ClientHello | None]] = []
        self._fast: list[FastConn] = []
        self._timer: asyncio.TimerHandle | None = None
        # Gauge moves of the fast path, applied at the next flush.
        self.active_delta = 0
        self.pending_delta = 0
        self._shapes: dict[bytes, tuple[str, dict[str, Any], str | None]] = {}
        self._stamps: dict[int, str] = {}
        self._json: dict[str, str] = {}
        writer.defer = self.add_general
        self._outcomes: dict[tuple[str, str | None], int] = {}
        self._up = self._down = 0
        self._hello = _Batch(metrics.hello_seconds)
        self._connect: dict[str, _Batch] = {}
        self._from_client = metrics.bytes.labels("from_client")
        self._to_client = metrics.bytes.labels("to_client")

    # ------------------------------------------------------------------ queueing

    def add_general(self, rec: ConnectionLog, hello: clienthello.ClientHello | None) -> None:
        """Queue the line of a connection of the general path (already counted)."""
        self._general.append((rec, hello))
        if self._timer is None:
            self._timer = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def add_fast(self, conn: FastConn) -> None:
        """Count a finished fast-path connection and queue its line."""
        self.count(conn)
        if self.writer.on_log is None and (self.writer.stream is None or not self.writer.enabled):
            return
        self._fast.append(conn)
        if self._timer is None:
            self._timer = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    def arm(self) -> None:
        """Make sure a flush comes (the gauges moved)."""
        if self._timer is None:
            self._timer = self.loop.call_later(FLUSH_INTERVAL, self.flush)

    # ------------------------------------------------------------------ flushing

    def flush(self) -> None:
        """Count, build and write everything queued; then call ``on_log``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        fast, self._fast = self._fast, []
        general, self._general = self._general, []
        self.apply_counts()
        writer = self.writer
        on_log = writer.on_log
        stream = writer.stream if writer.enabled else None
        if on_log is None and stream is None:
            return
        texts: list[str] = []
        dicts: list[dict[str, Any]] = []
        for rec, hello in general:
            line = writer.render(rec, hello)
            dicts.append(line)
            if stream is not None:
                texts.append(json.dumps(line, separators=(",", ":")) + "\n")
        if fast:
            if on_log is not None:
                for conn in fast:
                    line = self._fast_dict(conn)
                    dicts.append(line)
                    if stream is not None:
                        texts.append(json.dumps(line, separators=(",", ":")) + "\n")
            else:
                offset = time.time() - time.perf_counter()
                texts.extend(self._fast_line(conn, offset) for conn in fast)
        if stream is not None and texts:
            # A full disk or a closed stream must not stop routing.
            with contextlib.suppress(OSError, ValueError):
                stream.write("".join(texts))
                stream.flush()
        if on_log is not None:
            for line in dicts:
                on_log(line)

    def count(self, conn: FastConn) -> None:
        """Count a finished fast-path connection: into plain ints, applied at the flush."""
        key = (conn.outcome, conn.reason)
        outcomes = self._outcomes
        outcomes[key] = outcomes.get(key, 0) + 1
        self._up += conn.up
        self._down += conn.down
        if conn.name:
            self._hello.add(conn.hello_at - conn.clock)
        if conn.connect_s is not None and conn.backend is not None:
            hist = self._connect.get(conn.backend)
            if hist is None:
                hist = self._connect[conn.backend] = _Batch(
                    self.metrics.connect_seconds.labels(conn.backend)
                )
            hist.add(conn.connect_s)

    def apply_counts(self) -> None:
        """Put the counts gathered since the last flush into the Prometheus metrics."""
        m = self.metrics
        if self.active_delta:
            m.active.inc(self.active_delta)
            self.active_delta = 0
        if self.pending_delta:
            m.pending.inc(self.pending_delta)
            self.pending_delta = 0
        if self._outcomes:
            for (outcome, reason), count in self._outcomes.items():
                m.connections.labels(outcome, reason or "").inc(count)
            self._outcomes.clear()
        if self._up:
            self._from_client.inc(self._up)
            self._up = 0
        if self._down:
            self._to_client.inc(self._down)
            self._down = 0
        self._hello.apply()
        for hist in self._connect.values():
            hist.apply()

    # ------------------------------------------------------------------ lines

    def _record(self, conn: FastConn, wall: float) -> ConnectionLog:
        rec = ConnectionLog(
            time=wall,
            client=fmt_addr(conn.peer),
            listener=conn.lst.label,
            started=0.0,
            clock=conn.clock,
            worker=self.worker,
        )
        if conn.name:
            rec.sni = conn.name
        if conn.hello_at:
            rec.hello_ms = round((conn.hello_at - conn.clock) * 1000, 3)
        rec.route = conn.route.label if conn.route is not None else None
        rec.backend = conn.backend
        rec.outcome, rec.reason, rec.error = conn.outcome, conn.reason, conn.error
        rec.bytes_from_client, rec.bytes_to_client = conn.up, conn.down
        if conn.connect_s is not None:
            rec.connect_ms = round(conn.connect_s * 1000, 3)
        rec.duration_ms = round((conn.end - conn.clock) * 1000, 3)
        return rec

    def _fast_dict(self, conn: FastConn) -> dict[str, Any]:
        """The line as the general path builds it (for ``on_log``)."""
        rec = self._record(conn, time.time() - (time.perf_counter() - conn.clock))
        if conn.name:
            try:
                describe(rec, clienthello.parse(conn.data))
            except clienthello.ClientHelloError as exc:
                rec.error = rec.error or str(exc)
        return rec.as_dict()

    def _describe(self, data: bytes) -> tuple[str, dict[str, Any], str | None]:
        """JSON fragment, fields and parse error of a hello, cached by shape."""
        shape = hello_shape(data)
        hit = self._shapes.get(shape) if shape is not None else None
        if hit is not None:
            return hit
        rec = ConnectionLog(0.0, "", "", 0.0, 0.0)
        error = None
        try:
            describe(rec, clienthello.parse(data))
        except clienthello.ClientHelloError as exc:  # malformed after the name
            error = str(exc)
        fields = {
            k: v for k in ("alpn", "tls_versions", "ja4") if (v := getattr(rec, k)) is not None
        }
        frag = "".join(f',"{k}":{json.dumps(v, separators=(",", ":"))}' for k, v in fields.items())
        hit = (frag, fields, error)
        if shape is not None:
            if len(self._shapes) >= _CACHE_LIMIT:
                self._shapes.clear()
            self._shapes[shape] = hit
        return hit

    def _text(self, value: str) -> str:
        out = self._json.get(value)
        if out is None:
            if len(self._json) >= _CACHE_LIMIT:
                self._json.clear()
            out = self._json[value] = json.dumps(value)
        return out

    def _fast_line(self, conn: FastConn, offset: float) -> str:
        """The JSON line of a fast-path connection, from a template."""
        wall = conn.clock + offset
        second = int(wall)
        stamp = self._stamps.get(second)
        if stamp is None:
            if len(self._stamps) > 4:
                self._stamps.clear()
            stamp = self._stamps[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
        head = (
            f'{{"time":"{stamp}.{int(wall % 1 * 1000):03d}Z","client":"{fmt_addr(conn.peer)}",'
            f'"listener":{self._text(conn.lst.label)}'
        )
        if self.worker is not None:
            head += f',"worker":{self.worker}'
        error = conn.error
        middle = ""
        if conn.name:
            frag, _, parse_error = self._describe(conn.data)
            error = error or parse_error
            # The fast path takes only plain names: nothing to escape.
            middle = f',"sni":"{conn.name}"{frag}'
        if conn.route is not None:
            middle += f',"route":{self._text(conn.route.label)}'
        if conn.backend is not None:
            middle += f',"backend":{self._text(conn.backend)}'
        middle += f',"outcome":"{conn.outcome}"'
        if conn.reason is not None:
            middle += f',"reason":"{conn.reason}"'
        if error is not None:
            middle += f',"error":{json.dumps(error)}'
        tail = f',"bytes_from_client":{conn.up},"bytes_to_client":{conn.down}'
        if conn.hello_at:
            tail += f',"hello_ms":{round((conn.hello_at - conn.clock) * 1000, 3)}'
        if conn.connect_s is not None:
            tail += f',"connect_ms":{round(conn.connect_s * 1000, 3)}'
        tail += f',"duration_ms":{round((conn.end - conn.clock) * 1000, 3)}}}\n'
        return head + middle + tail
