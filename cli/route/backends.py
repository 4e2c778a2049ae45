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
        self._round_robin: dict[Route, int] = {}
        self._down_until: dict[Backend, float] = {}

    async def connect(
        self, route: Route, connect_timeout: float, rec: ConnectionLog
    ) -> socket.socket | None:
        """Dial the route's next backend, round robin; skip ones that fail.

        A backend that refused or timed out is passed over for `BACKEND_RETRY_AFTER`
        seconds (tried last, not never: if every backend is down, try them all).
        The outcome (backend, connect time, last error) is noted in ``rec``.

        Returns:
            The connected socket, or None when no backend answered.
        """
        backends = route.backends
        count = len(backends)
        start = self._round_robin.get(route, 0) % count
        now = self.loop.time()
        order = [(start + i) % count for i in range(count)]
        if self._down_until:
            order.sort(key=lambda i: self._down_until.get(backends[i], 0.0) > now)
        for index in order:
            backend = backends[index]
            label = str(backend)
            t0 = time.perf_counter()
            try:
                sock = await dial(self.loop, backend, connect_timeout)
            except (OSError, Timeout) as exc:
                err = "timeout" if isinstance(exc, Timeout) else os_error(exc)
                self.metrics.connect_errors.labels(label, err).inc()
                self._down_until[backend] = self.loop.time() + BACKEND_RETRY_AFTER
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
            return sock
        return None
