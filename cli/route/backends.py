"""Which backend next: round robin over a route's backends, passing over ones that just failed."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from sniinspect.route.observe import ConnectionLog, Metrics
from sniinspect.route.sockets import Timeout, dial, os_error
from sniinspect.route.table import Backend, Route

__all__ = ["Dialer", "BACKEND_RETRY_AFTER"]

log = logging.getLogger("sniinspect.router")

# A backend that failed a connect is tried last for this long (passive health check).
BACKEND_RETRY_AFTER = 2.0


class Dialer:
    """Connects to a route's backends in turn; remembers which ones failed lately."""

    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: Metrics) -> None:
        self.loop = loop
        self.metrics = metrics
        self._round_robin: dict[tuple[Backend, ...], int] = {}
        self._down_until: dict[Backend, float] = {}

    def order(self, backends: tuple[Backend, ...]) -> list[int]:
        """Indices of ``backends`` in the order to try them: round robin from the one
        after the last that answered, those that failed lately last (tried, not skipped:
        if every backend is down, all are tried)."""
        count = len(backends)
        start = self._round_robin.get(backends, 0) % count
        order = [(start + i) % count for i in range(count)]
        if self._down_until and count > 1:
            now = self.loop.time()
            down = self._down_until
            order.sort(key=lambda i: down.get(backends[i], 0.0) > now)
        return order

    def failed(self, backend: Backend) -> None:
        """``backend`` refused or timed out: try it last for `BACKEND_RETRY_AFTER` seconds."""
        self._down_until[backend] = self.loop.time() + BACKEND_RETRY_AFTER

    def answered(self, backends: tuple[Backend, ...], index: int) -> None:
        """``backends[index]`` answered: it is up, and the next turn starts after it (so a
        dead backend does not double the share of the one listed after it)."""
        if self._down_until:
            self._down_until.pop(backends[index], None)
        self._round_robin[backends] = index + 1

    async def connect(
        self, route: Route, connect_timeout: float, rec: ConnectionLog
    ) -> socket.socket | None:
        """Dial the route's next backend in `order`; skip ones that fail.

        The outcome (backend, connect time, last error) is noted in ``rec``.

        Returns:
            The connected socket, or None when no backend answered.
        """
        backends = route.backends
        for index in self.order(backends):
            backend = backends[index]
            label = str(backend)
            t0 = time.perf_counter()
            try:
                sock = await dial(self.loop, backend, connect_timeout)
            except (OSError, Timeout) as exc:
                err = "timeout" if isinstance(exc, Timeout) else os_error(exc)
                self.metrics.connect_errors.labels(label, err).inc()
                self.failed(backend)
                rec.error = f"{label}: {err}"
                log.debug("connect to %s failed: %s", label, err)
                continue
            self.answered(backends, index)
            elapsed = time.perf_counter() - t0
            self.metrics.connect_seconds.labels(label).observe(elapsed)
            rec.connect_ms = round(elapsed * 1000, 3)
            rec.backend = label
            rec.error = None
            return sock
        return None
