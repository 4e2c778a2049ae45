"""Plain-HTTP clients on a TLS port: tell them apart and route them by their Host header."""

from __future__ import annotations

__all__ = ["maybe_http", "http_host", "hostname_ok"]

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


def maybe_http(data: bytes) -> bool:
    """Whether the first bytes can be the start of an HTTP/1 request line."""
    head = data[:8]
    return any(m.startswith(head[: len(m)]) or head.startswith(m) for m in _HTTP_METHODS) and bool(
        head
    )


def http_host(data: bytes) -> str | None:
    """The host of the request's Host header, without port or brackets; None if absent."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    for line in head.split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip().decode("ascii", "replace")
            if host.startswith("["):
                return host[1 : host.find("]")] if "]" in host else None
            return host.rsplit(":", 1)[0] if ":" in host else host
    return None


def hostname_ok(host: str) -> bool:
    """Whether a Host value is a plain host name (ASCII letters, digits, ``-._``)."""
    return bool(host) and all((c.isalnum() and c.isascii()) or c in "-._" for c in host)
